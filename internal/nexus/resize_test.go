package nexus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
)

const (
	resizeSeg  = 256 << 10 // segments of the tests below
	resizeFrom = 4 << 20   // the nexus's size before
	resizeTo   = 10<<20 + 512*3
	resizeDev  = 12 << 20 // the children's
)

// sizedDevice reports a size that Revalidate updates from the device's
// real one, as a remote namespace whose replica grew does.
type sizedDevice struct {
	bdev.Device
	reported    atomic.Int64
	revalidated atomic.Int64
}

func (d *sizedDevice) Size() int64 { return d.reported.Load() }

func (d *sizedDevice) Close() error { return nil }

func (d *sizedDevice) Revalidate(context.Context) error {
	d.revalidated.Add(1)
	d.reported.Store(d.Device.Size())
	return nil
}

// blockedWrites holds the writes (and write-zeroes) of a device until
// released: a rebuild target whose copy cannot finish.
type blockedWrites struct {
	bdev.Device
	release chan struct{}
}

func (d *blockedWrites) WriteAt(p []byte, off int64) (int, error) {
	<-d.release
	return d.Device.WriteAt(p, off)
}

func (d *blockedWrites) WriteZeroes(off, length int64) error {
	<-d.release
	return d.Device.WriteZeroes(off, length)
}

// resizeRig is a nexus of resizeFrom bytes over children of resizeDev
// bytes (malloc), the last of them reporting a stale size until
// revalidated.
type resizeRig struct {
	opener *testOpener
	store  *MemStore
	mem    map[string]*bdev.Malloc
	sized  *sizedDevice
	uris   []string
	nx     *Nexus
}

func newResizeRig(t *testing.T, children int) *resizeRig {
	t.Helper()
	r := &resizeRig{opener: newTestOpener(), store: NewMemStore(), mem: map[string]*bdev.Malloc{}}
	for i := range children {
		m, err := bdev.NewMalloc(resizeDev, 512)
		if err != nil {
			t.Fatal(err)
		}
		u := childURI(i)
		r.mem[u] = m
		r.uris = append(r.uris, u)
		if i == children-1 {
			// Handed out as is (the opener's handles would hide
			// Revalidate); its Close keeps the memory for a reopen.
			r.sized = &sizedDevice{Device: m}
			r.sized.reported.Store(resizeFrom)
			r.opener.addOpen(u, func() bdev.Device { return r.sized })
			continue
		}
		r.opener.add(u, m)
	}
	seedRecord(t, r.store, "resize-under-test", r.uris)
	nx, err := New(context.Background(), Config{Name: "nx", UUID: "resize-under-test", Size: resizeFrom, Children: r.uris,
		Store: r.store, Opener: r.opener, RebuildSegment: resizeSeg, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	r.nx = nx
	t.Cleanup(func() { nx.Close() })
	return r
}

func (r *resizeRig) record(t *testing.T) HealthRecord {
	t.Helper()
	rec, err := r.store.Load(context.Background(), r.nx.UUID())
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestResizeUnderWrites grows a nexus while writers keep writing over its
// whole current size (and beyond it, which must fail until the resize is
// done), with one child offline: every acknowledged write is on every
// online child, the offline child's bitmap grows with the new segments
// (stored first), and once it is back every child holds the same data.
func TestResizeUnderWrites(t *testing.T) {
	r := newResizeRig(t, 3)
	nx := r.nx
	ctx := context.Background()
	offline := r.uris[1]
	if err := nx.OfflineChild(ctx, offline); err != nil {
		t.Fatal(err)
	}
	before := r.record(t)

	m := newModel(resizeDev)
	const writers = 6
	var stop atomic.Bool
	var wg sync.WaitGroup
	var newArea, acked atomic.Int64
	errs := make(chan error, writers)
	for id := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(id), 11))
			buf := make([]byte, unit)
			ver := uint64(id) << 40
			for !stop.Load() {
				size := nx.Size()
				// Units of this writer only (index mod writers), so
				// writers never overlap and the model is exact; one in
				// eight tries past the size seen.
				limit := size / unit
				if rng.IntN(8) == 0 {
					limit = resizeTo / unit
				}
				k := int64(rng.IntN(int(limit/writers)))*writers + int64(id)
				if k >= limit {
					continue
				}
				off := k * unit
				ver++
				stamp(buf, off, ver)
				_, err := nx.WriteAt(buf, off)
				switch {
				case err == nil:
					m.vers[k].Store(ver)
					acked.Add(1)
					if off >= resizeFrom {
						newArea.Add(1)
					}
				case errors.As(err, new(*bdev.RangeError)) && off+unit > size:
					// Past the size (which only grows), refused: right.
				default:
					errs <- fmt.Errorf("write at %d (size %d): %w", off, nx.Size(), err)
					return
				}
			}
		}()
	}
	waitFor(t, "writes before the resize", func() bool { return acked.Load() > 200 })

	var persisted int64 = -1
	err := nx.ResizeWith(ctx, resizeTo, func(context.Context) error {
		persisted = nx.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if persisted != resizeFrom {
		t.Fatalf("persist saw size %d, want the old size %d: it runs before the new size is served", persisted, resizeFrom)
	}
	if nx.Size() != resizeTo {
		t.Fatalf("size %d after the resize, want %d", nx.Size(), resizeTo)
	}
	if r.sized.revalidated.Load() == 0 {
		t.Fatal("the child with a stale size was not revalidated")
	}
	after := acked.Load()
	waitFor(t, "writes after the resize, in the new area too", func() bool {
		return acked.Load() > after+200 && newArea.Load() > 50
	})
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// The stored record: one generation later (at least), the offline
	// child's bitmap covering the new segment count with every new
	// segment dirty, and its old bits kept.
	rec := r.record(t)
	if rec.Generation <= before.Generation {
		t.Fatalf("generation %d after the resize, %d before", rec.Generation, before.Generation)
	}
	nseg := int64((resizeTo + resizeSeg - 1) / resizeSeg)
	var bm []byte
	for _, h := range rec.Children {
		if h.URI == offline {
			bm = h.Bitmap
		}
	}
	if int64(len(bm)) != (nseg+7)/8 {
		t.Fatalf("offline bitmap of %d bytes, want %d for %d segments", len(bm), (nseg+7)/8, nseg)
	}
	for s := int64(resizeFrom / resizeSeg); s < nseg; s++ {
		if bm[s/8]&(1<<(s%8)) == 0 {
			t.Fatalf("new segment %d is not in the offline child's bitmap", s)
		}
	}
	for _, c := range nx.Children() {
		if c.URI == offline && c.DirtyBytes < nseg*resizeSeg-resizeFrom {
			t.Fatalf("offline child reports %d dirty bytes, less than the new area", c.DirtyBytes)
		}
	}

	// Bring the offline child back: the partial rebuild copies what it
	// missed, new area included, and every child agrees.
	if err := nx.OnlineChild(ctx, offline); err != nil {
		t.Fatal(err)
	}
	if st, err := nx.WaitRebuild(ctx, offline); err != nil || st.State != RebuildCompleted {
		t.Fatalf("rebuild %+v %v", st, err)
	}
	rep, err := nx.Verify(ctx)
	if err != nil || len(rep.Mismatches) != 0 || rep.Segments != nseg {
		t.Fatalf("verify %+v %v", rep, err)
	}
	mm := newModel(resizeTo - resizeTo%unit)
	for i := range mm.vers {
		mm.vers[i].Store(m.vers[i].Load())
	}
	if err := mm.checkDevice(nx); err != nil {
		t.Fatalf("through the nexus: %v", err)
	}
	for u, d := range r.mem {
		if err := mm.checkDevice(d); err != nil {
			t.Fatalf("child %s: %v", u, err)
		}
	}
	t.Logf("%d writes acknowledged, %d of them past the old size", acked.Load(), newArea.Load())

	// A nexus recreated from the store over the same children comes back
	// at the new size when asked for it (the engine remembers it), with
	// every child online.
	if err := nx.Close(); err != nil {
		t.Fatal(err)
	}
	nx2, err := New(ctx, Config{Name: "nx", UUID: "resize-under-test", Size: resizeTo, Children: r.uris,
		Store: r.store, Opener: r.opener, RebuildSegment: resizeSeg, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer nx2.Close()
	for _, c := range nx2.Children() {
		if c.State != StateOnline {
			t.Fatalf("child %s is %s after the restart", c.URI, c.State)
		}
	}
	if err := mm.checkDevice(nx2); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
}

// TestResizeRefusals: shrinking, a size off the block size, a child too
// small, a rebuild in progress and a failing persist are all refused with
// nothing changed; the same size is a harmless repeat.
func TestResizeRefusals(t *testing.T) {
	ctx := context.Background()
	r := newResizeRig(t, 2)
	nx := r.nx
	gen := nx.Generation()

	if err := nx.Resize(ctx, resizeFrom-512); !errors.Is(err, ErrShrink) {
		t.Fatalf("shrink: %v", err)
	}
	if err := nx.Resize(ctx, resizeFrom+100); !errors.Is(err, ErrInvalidSize) {
		t.Fatalf("unaligned: %v", err)
	}
	if err := nx.Resize(ctx, resizeFrom); err != nil {
		t.Fatalf("same size: %v", err)
	}
	err := nx.Resize(ctx, resizeDev+512)
	if !errors.Is(err, ErrChildTooSmall) || !strings.Contains(err.Error(), r.uris[0]) {
		t.Fatalf("child too small: %v", err)
	}
	boom := errors.New("state file unwritable")
	if err := nx.ResizeWith(ctx, 8<<20, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("persist failure: %v", err)
	}
	if nx.Size() != resizeFrom || nx.Generation() != gen || nx.Failed() {
		t.Fatalf("after the refusals: size %d generation %d (was %d) failed %v", nx.Size(), nx.Generation(), gen, nx.Failed())
	}

	// A rebuild in progress: refused until it is done.
	m, err := bdev.NewMalloc(resizeDev, 512)
	if err != nil {
		t.Fatal(err)
	}
	slow := &blockedWrites{Device: m, release: make(chan struct{})}
	r.opener.add("bdev:///new", slow)
	if err := nx.AddChild(ctx, "bdev:///new"); err != nil {
		t.Fatal(err)
	}
	err = nx.Resize(ctx, 8<<20)
	if !errors.Is(err, ErrRebuilding) || !strings.Contains(err.Error(), "bdev:///new") {
		t.Fatalf("during a rebuild: %v", err)
	}
	close(slow.release)
	if st, err := nx.WaitRebuild(ctx, "bdev:///new"); err != nil || st.State != RebuildCompleted {
		t.Fatalf("rebuild %+v %v", st, err)
	}
	if err := nx.Resize(ctx, 8<<20); err != nil {
		t.Fatal(err)
	}
	if nx.Size() != 8<<20 {
		t.Fatalf("size %d", nx.Size())
	}
	buf := make([]byte, 4096)
	stamp(buf, 8<<20-4096, 1)
	if _, err := nx.WriteAt(buf, 8<<20-4096); err != nil {
		t.Fatalf("write at the new end: %v", err)
	}
	if _, err := nx.WriteAt(buf, 8<<20); !errors.As(err, new(*bdev.RangeError)) {
		t.Fatalf("write past the new end: %v", err)
	}
}

// TestResizeStoreFailureStopsNexus: a save the store refuses during a
// resize fails the nexus, and Err says why.
func TestResizeStoreFailureStopsNexus(t *testing.T) {
	r := newResizeRig(t, 2)
	fs := &failingStore{HealthStore: r.store}
	r.nx.store = fs
	fs.armed.Store(true)
	err := r.nx.Resize(context.Background(), 8<<20)
	if !errors.Is(err, ErrNexusFailed) || !errors.Is(err, errStoreDown) {
		t.Fatalf("resize with the store down: %v", err)
	}
	if !r.nx.Failed() || !errors.Is(r.nx.Err(), errStoreDown) {
		t.Fatalf("failed %v, err %v", r.nx.Failed(), r.nx.Err())
	}
	if r.nx.Size() != resizeFrom {
		t.Fatalf("size %d after a failed resize", r.nx.Size())
	}
	// Destroyed, it leaves the record: the store refused it, and it may
	// be another instance's now.
	before := r.record(t)
	if err := r.nx.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	if after := r.record(t); after.Generation != before.Generation {
		t.Fatalf("record changed by the destroy: generation %d, was %d", after.Generation, before.Generation)
	}
}

func TestUnflushedGrown(t *testing.T) {
	u := newUnflushed(10000) // 3 segments a region
	u.mark(4, 4)
	old := u.flip()
	u.mark(9999, 9999)
	g := u.grown(50000) // 13 segments a region
	u.clear(old)        // a flush of the old tracking ends: the copy keeps its bits
	b := newBitmap(50000)
	g.addTo(b)
	for _, s := range []int64{3, 4, 5, 9999} {
		if !b.test(s) {
			t.Fatalf("segment %d lost in the copy", s)
		}
	}
	if b.count() > 2*13 {
		t.Fatalf("%d segments marked, want at most two regions", b.count())
	}
}
