package pool

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// noClose lets a test reuse a device after the pool closes it, the way a
// disk outlives the process that had it open.
type noClose struct{ bdev.Device }

func (noClose) Close() error { return nil }

func newMalloc(t testing.TB, size int64) *bdev.Malloc {
	t.Helper()
	m, err := bdev.NewMalloc(size, 512)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func newFile(t testing.TB, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := bdev.OpenFile(path, bdev.FileOptions{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func openFile(t testing.TB, path string) *bdev.File {
	t.Helper()
	f, err := bdev.OpenFile(path, bdev.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func mustCreate(t testing.TB, dev bdev.Device, opts CreateOptions) *Pool {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "p0"
	}
	if opts.ClusterSize == 0 {
		opts.ClusterSize = 64 * kib
	}
	p, err := Create(dev, opts)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return p
}

func mustImport(t testing.TB, dev bdev.Device) *Pool {
	t.Helper()
	p, err := Import(dev)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if err := p.Check(); err != nil {
		t.Fatalf("Check after import: %v", err)
	}
	return p
}

func mustReplica(t testing.TB, p *Pool, name string, size int64, thin bool) ReplicaInfo {
	t.Helper()
	ri, err := p.CreateReplica(ReplicaOptions{Name: name, Size: size, Thin: thin})
	if err != nil {
		t.Fatalf("CreateReplica %s: %v", name, err)
	}
	return ri
}

func mustOpen(t testing.TB, p *Pool, name string) *Replica {
	t.Helper()
	h, err := p.OpenReplica(name)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func check(t testing.TB, p *Pool) {
	t.Helper()
	if err := p.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

func fill(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64() | 1
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
}

func TestConformanceThinAndThick(t *testing.T) {
	for _, thin := range []bool{true, false} {
		for _, backing := range []string{"malloc", "malloc-4k", "file"} {
			name := map[bool]string{true: "thin", false: "thick"}[thin] + "/" + backing
			t.Run(name, func(t *testing.T) {
				var dev bdev.Device
				switch backing {
				case "malloc":
					dev = newMalloc(t, 16*mib)
				case "malloc-4k":
					m, err := bdev.NewMalloc(16*mib, 4096)
					if err != nil {
						t.Fatal(err)
					}
					dev = m
				default:
					dev = openFile(t, newFile(t, 16*mib))
				}
				p := mustCreate(t, dev, CreateOptions{})
				defer p.Close()
				mustReplica(t, p, "r", 4*mib, thin)
				h := mustOpen(t, p, "r")
				if err := bdevtest.TestDevice(h); err != nil {
					t.Fatal(err)
				}
				check(t, p)
				// The suite closed the handle, so the replica can go.
				if err := p.DestroyReplica("r"); err != nil {
					t.Fatal(err)
				}
				check(t, p)
				if st := p.Stats(); st.FreeClusters != st.TotalClusters || st.Allocated != 0 || st.Committed != 0 {
					t.Fatalf("stats after destroying the only replica: %+v", st)
				}
			})
		}
	}
}

func TestCreateImportRoundTrip(t *testing.T) {
	path := newFile(t, 32*mib)
	p := mustCreate(t, openFile(t, path), CreateOptions{Name: "pool-a", UUID: "2c7d2b4e-8a3f-4f1e-9d2a-1b2c3d4e5f60"})
	if p.Name() != "pool-a" || p.UUID() != "2c7d2b4e-8a3f-4f1e-9d2a-1b2c3d4e5f60" {
		t.Fatalf("name %q uuid %q", p.Name(), p.UUID())
	}
	st := p.Stats()
	mustReplica(t, p, "thin", 8*mib, true)
	mustReplica(t, p, "thick", 3*mib+512, false)
	h := mustOpen(t, p, "thin")
	data := make([]byte, 192*kib)
	fill(data, 1)
	if _, err := h.WriteAt(data, 100*kib); err != nil {
		t.Fatal(err)
	}
	h2 := mustOpen(t, p, "thick")
	if _, err := h2.WriteAt(data[:64*kib], 3*mib-64*kib); err != nil {
		t.Fatal(err)
	}
	_ = h.Close()
	_ = h2.Close()
	want := p.Replicas()
	wantStats := p.Stats()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateReplica(ReplicaOptions{Name: "x", Size: mib}); !errors.Is(err, ErrClosed) {
		t.Fatalf("CreateReplica after Close: %v, want ErrClosed", err)
	}

	probeDev := openFile(t, path)
	info, err := Probe(probeDev)
	probeDev.Close()
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "pool-a" || info.UUID != p.UUID() || info.ClusterSize != 64*kib || info.Capacity != st.Capacity || info.FormatVersion != FormatVersion {
		t.Fatalf("Probe: %+v", info)
	}
	for range 2 { // import twice: the second sees the checkpoint the first wrote
		q := mustImport(t, openFile(t, path))
		if got := q.Replicas(); !equalInfos(got, want) {
			t.Fatalf("replicas after import:\n got %+v\nwant %+v", got, want)
		}
		if got := q.Stats(); got != wantStats {
			t.Fatalf("stats after import: got %+v want %+v", got, wantStats)
		}
		for _, ri := range want {
			if got, err := q.ReplicaByUUID(ri.UUID); err != nil || got != ri {
				t.Fatalf("ReplicaByUUID(%s): %+v, %v", ri.UUID, got, err)
			}
		}
		if _, err := q.ReplicaByUUID("2c7d2b4e-8a3f-4f1e-9d2a-1b2c3d4e5f61"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("ReplicaByUUID of an unknown UUID: %v", err)
		}
		h := mustOpen(t, q, "thin")
		got := make([]byte, len(data))
		if _, err := h.ReadAt(got, 100*kib); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("thin data after import: %v", err)
		}
		h2 := mustOpen(t, q, "thick")
		if _, err := h2.ReadAt(got[:64*kib], 3*mib-64*kib); err != nil || !bytes.Equal(got[:64*kib], data[:64*kib]) {
			t.Fatalf("thick data after import: %v", err)
		}
		_ = h.Close()
		_ = h2.Close()
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func equalInfos(a, b []ReplicaInfo) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAccounting(t *testing.T) {
	dev := newMalloc(t, 16*mib)
	p := mustCreate(t, dev, CreateOptions{})
	defer p.Close()
	st := p.Stats()
	total := st.TotalClusters
	if st.Capacity != total*64*kib || st.FreeClusters != total || st.Allocated != 0 || st.Replicas != 0 {
		t.Fatalf("fresh pool stats %+v", st)
	}
	want := func(free, allocClusters, committed int64, replicas int) {
		t.Helper()
		st := p.Stats()
		if st.FreeClusters != free || st.Allocated != allocClusters*64*kib || st.Committed != committed || st.Replicas != replicas {
			t.Fatalf("stats %+v, want free %d allocated %d clusters committed %d replicas %d", st, free, allocClusters, committed, replicas)
		}
		check(t, p)
	}
	mustReplica(t, p, "thick", 1*mib+512, false) // 17 clusters
	want(total-17, 17, mib+512, 1)
	mustReplica(t, p, "thin", 4*mib, true)
	want(total-17, 17, 5*mib+512, 2)
	h := mustOpen(t, p, "thin")
	buf := make([]byte, 4*kib)
	fill(buf, 2)
	for _, off := range []int64{0, 4 * kib, 64 * kib, 3 * mib} { // 3 clusters
		if _, err := h.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	want(total-20, 20, 5*mib+512, 2)
	if ri, _ := p.ReplicaInfo("thin"); ri.ClusterCount != 3 || ri.Allocated != 3*64*kib || !ri.Thin {
		t.Fatalf("thin info %+v", ri)
	}
	if err := p.ResizeReplica("thick", 2*mib); err != nil { // 32 clusters
		t.Fatal(err)
	}
	want(total-35, 35, 6*mib, 2)
	if err := p.ResizeReplica("thin", 8*mib); err != nil {
		t.Fatal(err)
	}
	want(total-35, 35, 10*mib, 2)
	if err := p.ResizeReplica("thin", 4*mib); !errors.Is(err, ErrInvalid) {
		t.Fatalf("shrink: %v, want ErrInvalid", err)
	}
	// Unmapping a whole cluster frees it; a partial one only zeroes.
	if err := h.Unmap(64*kib, 64*kib); err != nil {
		t.Fatal(err)
	}
	if err := h.WriteZeroes(0, 4*kib); err != nil {
		t.Fatal(err)
	}
	want(total-34, 34, 10*mib, 2)
	got := make([]byte, 4*kib)
	for _, off := range []int64{0, 64 * kib} {
		if _, err := h.ReadAt(got, off); err != nil || !bytes.Equal(got, make([]byte, 4*kib)) {
			t.Fatalf("read at %d after zeroing: %v", off, err)
		}
	}
	if _, err := h.ReadAt(got, 4*kib); err != nil || !bytes.Equal(got, buf) {
		t.Fatalf("read beside the zeroed range: %v", err)
	}
	if err := p.DestroyReplica("thin"); !errors.Is(err, ErrBusy) {
		t.Fatalf("destroy with an open handle: %v, want ErrBusy", err)
	}
	_ = h.Close()
	if err := p.DestroyReplica("thin"); err != nil {
		t.Fatal(err)
	}
	want(total-32, 32, 2*mib, 1)
	if err := p.DestroyReplica("thin"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second destroy: %v", err)
	}
	if _, err := p.ReplicaInfo("thin"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("info of destroyed: %v", err)
	}
	if err := p.DestroyReplica("thick"); err != nil {
		t.Fatal(err)
	}
	want(total, 0, 0, 0)
}

func TestThickNoSpaceChangesNothing(t *testing.T) {
	path := newFile(t, 8*mib)
	p := mustCreate(t, openFile(t, path), CreateOptions{})
	mustReplica(t, p, "a", 2*mib, false)
	before, beforeStats := p.Replicas(), p.Stats()
	_, err := p.CreateReplica(ReplicaOptions{Name: "big", Size: beforeStats.Capacity, Thin: false})
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("thick larger than free space: %v, want ErrNoSpace", err)
	}
	if !strings.Contains(err.Error(), `"big"`) {
		t.Fatalf("error does not name the replica: %v", err)
	}
	if err := p.ResizeReplica("a", beforeStats.Capacity+64*kib); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("thick grow beyond free space: %v, want ErrNoSpace", err)
	}
	if got := p.Replicas(); !equalInfos(got, before) || p.Stats() != beforeStats {
		t.Fatalf("state changed: %+v %+v", got, p.Stats())
	}
	check(t, p)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	q := mustImport(t, openFile(t, path))
	defer q.Close()
	if got := q.Replicas(); !equalInfos(got, before) || q.Stats() != beforeStats {
		t.Fatalf("state on disk changed: %+v %+v", got, q.Stats())
	}
	// A thick replica that fits exactly still works.
	mustReplica(t, q, "rest", beforeStats.FreeClusters*64*kib, false)
	if st := q.Stats(); st.FreeClusters != 0 {
		t.Fatalf("free after filling: %+v", st)
	}
}

func TestBadInput(t *testing.T) {
	dev := newMalloc(t, 8*mib)
	p := mustCreate(t, dev, CreateOptions{})
	defer p.Close()
	mustReplica(t, p, "r1", mib, true)
	ri, _ := p.ReplicaInfo("r1")
	before := p.Stats()
	cases := []struct {
		opts ReplicaOptions
		want error
		text string
	}{
		{ReplicaOptions{Name: "r1", Size: mib}, ErrExists, `"r1" already exists`},
		{ReplicaOptions{Name: "r2", Size: mib, UUID: ri.UUID}, ErrExists, ri.UUID},
		{ReplicaOptions{Name: "r2", Size: 1000}, ErrInvalid, "multiple of the 512-byte block size"},
		{ReplicaOptions{Name: "r2", Size: 0}, ErrInvalid, "size 0"},
		{ReplicaOptions{Name: "r2", Size: -512}, ErrInvalid, "size -512"},
		{ReplicaOptions{Name: "", Size: mib}, ErrInvalid, "empty name"},
		{ReplicaOptions{Name: "a/b", Size: mib}, ErrInvalid, "'/'"},
		{ReplicaOptions{Name: strings.Repeat("x", MaxNameLen+1), Size: mib}, ErrInvalid, "longer than"},
		{ReplicaOptions{Name: "r2", Size: mib, UUID: "nope"}, ErrInvalid, "canonical form"},
		{ReplicaOptions{Name: "r2", Size: 1 << 50, Thin: true}, ErrInvalid, "exceeds"},
	}
	for _, c := range cases {
		_, err := p.CreateReplica(c.opts)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) || !strings.Contains(err.Error(), `pool "p0"`) {
			t.Errorf("CreateReplica(%+v): %v, want %v mentioning %q", c.opts, err, c.want, c.text)
		}
	}
	if err := p.ResizeReplica("r1", mib+100); !errors.Is(err, ErrInvalid) {
		t.Errorf("unaligned resize: %v", err)
	}
	if err := p.ResizeReplica("nope", 2*mib); !errors.Is(err, ErrNotFound) {
		t.Errorf("resize of a missing replica: %v", err)
	}
	if _, err := p.OpenReplica("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("open of a missing replica: %v", err)
	}
	if p.Stats() != before || len(p.Replicas()) != 1 {
		t.Fatalf("bad input changed the pool: %+v", p.Stats())
	}
	check(t, p)

	for _, opts := range []CreateOptions{
		{Name: "x", ClusterSize: 1000, Force: true},
		{Name: "x", ClusterSize: 32 * kib, Force: true},
		{Name: "x", MetadataSize: 4097, Force: true},
		{Name: "x", MetadataSize: 4096, Force: true},
		{Name: "", Force: true},
		{Name: "x", UUID: "zz", Force: true},
	} {
		if _, err := Create(newMalloc(t, 8*mib), opts); !errors.Is(err, ErrInvalid) {
			t.Errorf("Create(%+v): %v, want ErrInvalid", opts, err)
		}
	}
}

func TestTooSmall(t *testing.T) {
	for _, size := range []int64{8 * kib, 64 * kib, 512 * kib} {
		dev := newMalloc(t, size)
		_, err := Create(dev, CreateOptions{Name: "p", ClusterSize: 4 * mib})
		if !errors.Is(err, ErrTooSmall) {
			t.Fatalf("Create on %d bytes: %v, want ErrTooSmall", size, err)
		}
		if _, err := Probe(dev); !errors.Is(err, ErrNotPool) {
			t.Fatalf("Probe after refused Create: %v, want ErrNotPool", err)
		}
	}
	// The smallest device that fits has exactly one cluster.
	dev := newMalloc(t, 4*mib)
	p, err := Create(dev, CreateOptions{Name: "p", ClusterSize: 64 * kib})
	if err != nil {
		t.Fatal(err)
	}
	if p.Stats().TotalClusters < 1 {
		t.Fatalf("stats %+v", p.Stats())
	}
	_ = p.Close()
}

func TestCreateRefusesExistingPool(t *testing.T) {
	path := newFile(t, 8*mib)
	p := mustCreate(t, openFile(t, path), CreateOptions{Name: "old"})
	mustReplica(t, p, "keep", mib, false)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	dev := openFile(t, path)
	if _, err := Create(dev, CreateOptions{Name: "new"}); !errors.Is(err, ErrHasPool) || !strings.Contains(err.Error(), `"old"`) {
		t.Fatalf("Create over a pool: %v, want ErrHasPool naming it", err)
	}
	_ = dev.Close()
	q := mustImport(t, openFile(t, path))
	if q.Name() != "old" || len(q.Replicas()) != 1 {
		t.Fatalf("old pool after refused Create: %q %+v", q.Name(), q.Replicas())
	}
	_ = q.Close()
	// With Force the old pool is gone.
	r := mustCreate(t, openFile(t, path), CreateOptions{Name: "new", Force: true})
	if len(r.Replicas()) != 0 {
		t.Fatalf("forced pool has replicas %+v", r.Replicas())
	}
	_ = r.Close()
	s := mustImport(t, openFile(t, path))
	if s.Name() != "new" || len(s.Replicas()) != 0 {
		t.Fatalf("after forced create: %q %+v", s.Name(), s.Replicas())
	}
	if err := s.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := Import(openFile(t, path)); !errors.Is(err, ErrNotPool) {
		t.Fatalf("Import after Destroy: %v, want ErrNotPool", err)
	}
}

func TestCorruptSuperblock(t *testing.T) {
	dev := newMalloc(t, 8*mib)
	p := mustCreate(t, noClose{dev}, CreateOptions{})
	mustReplica(t, p, "r", mib, true)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	good := make([]byte, 4096)
	if _, err := dev.ReadAt(good, 0); err != nil {
		t.Fatal(err)
	}
	for copyNo := range 2 {
		garbage := make([]byte, 512)
		copy(garbage, good)
		garbage[100] ^= 0xff // inside the name: checksum breaks
		if _, err := dev.WriteAt(garbage, int64(copyNo)*4096); err != nil {
			t.Fatal(err)
		}
		q := mustImport(t, noClose{dev})
		if len(q.Replicas()) != 1 {
			t.Fatalf("replicas %+v", q.Replicas())
		}
		_ = q.Close()
		// Import repaired the bad copy.
		got := make([]byte, 4096)
		if _, err := dev.ReadAt(got, int64(copyNo)*4096); err != nil || !bytes.Equal(got, good) {
			t.Fatalf("copy %d not repaired: %v", copyNo, err)
		}
	}
	// Both copies bad: a clear error naming the damage.
	for copyNo := range 2 {
		b := make([]byte, 512)
		copy(b, good)
		b[40] ^= 1
		if _, err := dev.WriteAt(b, int64(copyNo)*4096); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Import(noClose{dev})
	var ce *CorruptError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || !strings.Contains(err.Error(), "both superblock copies") {
		t.Fatalf("Import with both copies bad: %v", err)
	}
	if _, err := Probe(dev); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Probe with both copies bad: %v", err)
	}
	// Create without Force still refuses: the magic is there.
	if _, err := Create(noClose{dev}, CreateOptions{Name: "x"}); !errors.Is(err, ErrHasPool) {
		t.Fatalf("Create over a damaged pool: %v, want ErrHasPool", err)
	}
	// Nothing at all: not a pool.
	if _, err := Import(newMalloc(t, 8*mib)); !errors.Is(err, ErrNotPool) {
		t.Fatalf("Import of a blank disk: %v", err)
	}
}

func TestThinOutOfSpace(t *testing.T) {
	path := newFile(t, 4*mib)
	p := mustCreate(t, openFile(t, path), CreateOptions{})
	total := p.Stats().TotalClusters
	mustReplica(t, p, "big", 2*total*64*kib, true)
	h := mustOpen(t, p, "big")
	buf := make([]byte, 64*kib)
	var written int64
	var lastErr error
	for i := int64(0); i < 2*total; i++ {
		fill(buf, uint64(i))
		if _, err := h.WriteAt(buf, i*64*kib); err != nil {
			lastErr = err
			break
		}
		written++
	}
	if !errors.Is(lastErr, ErrNoSpace) || !errors.Is(lastErr, bdev.ErrNoSpace) || written != total {
		t.Fatalf("after %d of %d clusters: %v, want ErrNoSpace (and bdev.ErrNoSpace) after exactly %d", written, 2*total, lastErr, total)
	}
	check(t, p)
	if st := p.Stats(); st.FreeClusters != 0 || st.Allocated != total*64*kib {
		t.Fatalf("stats %+v", st)
	}
	// Overwrites of allocated clusters still work; data is intact.
	for i := int64(0); i < written; i++ {
		if _, err := h.ReadAt(buf, i*64*kib); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, len(buf))
		fill(want, uint64(i))
		if !bytes.Equal(buf, want) {
			t.Fatalf("cluster %d corrupted", i)
		}
	}
	if _, err := h.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	// Freeing one cluster makes room for one more.
	if err := h.Unmap(0, 64*kib); err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(buf, written*64*kib); err != nil {
		t.Fatalf("write after unmap: %v", err)
	}
	_ = h.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	q := mustImport(t, openFile(t, path))
	defer q.Close()
	if st := q.Stats(); st.FreeClusters != 0 {
		t.Fatalf("stats after import %+v", st)
	}
}

// TestNoLeakBetweenReplicas: a cluster freed by one replica and reused by
// another reads as zeroes outside what the new owner wrote.
func TestNoLeakBetweenReplicas(t *testing.T) {
	dev := newMalloc(t, 4*mib)
	p := mustCreate(t, dev, CreateOptions{})
	defer p.Close()
	total := p.Stats().TotalClusters
	mustReplica(t, p, "a", total*64*kib, true)
	h := mustOpen(t, p, "a")
	buf := make([]byte, 64*kib)
	fill(buf, 7)
	for i := range total {
		if _, err := h.WriteAt(buf, i*64*kib); err != nil {
			t.Fatal(err)
		}
	}
	_ = h.Close()
	if err := p.DestroyReplica("a"); err != nil {
		t.Fatal(err)
	}
	mustReplica(t, p, "b", total*64*kib, true)
	mustReplica(t, p, "c", mib, false)
	hb, hc := mustOpen(t, p, "b"), mustOpen(t, p, "c")
	defer hb.Close()
	defer hc.Close()
	small := make([]byte, 512)
	fill(small, 8)
	zero := make([]byte, 64*kib)
	got := make([]byte, 64*kib)
	for i := range total - 16 {
		if _, err := hb.WriteAt(small, i*64*kib+1024); err != nil {
			t.Fatal(err)
		}
		if _, err := hb.ReadAt(got, i*64*kib); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:1024], zero[:1024]) || !bytes.Equal(got[1024:1536], small) || !bytes.Equal(got[1536:], zero[1536:]) {
			t.Fatalf("cluster %d of b leaks old data", i)
		}
	}
	for i := range int64(16) {
		if _, err := hc.ReadAt(got, i*64*kib); err != nil || !bytes.Equal(got, zero) {
			t.Fatalf("thick cluster %d leaks old data: %v", i, err)
		}
	}
}

// TestConcurrentFirstWrites: many goroutines writing disjoint blocks of the
// same fresh clusters allocate each cluster once and lose no data.
func TestConcurrentFirstWrites(t *testing.T) {
	dev := newMalloc(t, 16*mib)
	p := mustCreate(t, dev, CreateOptions{})
	defer p.Close()
	mustReplica(t, p, "r", 2*mib, true)
	h := mustOpen(t, p, "r")
	defer h.Close()
	const workers = 16
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4*kib)
			// Worker w writes block w of every 64 KiB cluster.
			for c := int64(0); c < 32; c++ {
				fill(buf, uint64(c*workers+int64(w)))
				if _, err := h.WriteAt(buf, c*64*kib+int64(w)*4*kib); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	check(t, p)
	if ri, _ := p.ReplicaInfo("r"); ri.ClusterCount != 32 {
		t.Fatalf("allocated %d clusters, want 32", ri.ClusterCount)
	}
	buf, want := make([]byte, 4*kib), make([]byte, 4*kib)
	for c := int64(0); c < 32; c++ {
		for w := range int64(workers) {
			fill(want, uint64(c*workers+w))
			if _, err := h.ReadAt(buf, c*64*kib+w*4*kib); err != nil || !bytes.Equal(buf, want) {
				t.Fatalf("cluster %d block %d lost: %v", c, w, err)
			}
		}
	}
}

// TestLogWrapsIntoCheckpoints allocates and frees clusters until the small
// log has wrapped several times; the final state survives import without a
// clean Close.
func TestLogWrapsIntoCheckpoints(t *testing.T) {
	dev := newMalloc(t, 16*mib)
	p := mustCreate(t, noClose{dev}, CreateOptions{MetadataSize: 256 * kib})
	logBlocks := p.sb.logSize() / 512
	const clusters = 64
	mustReplica(t, p, "r", clusters*64*kib, true)
	h := mustOpen(t, p, "r")
	buf := make([]byte, 512)
	seeds := make([]uint64, clusters) // 0: unallocated
	for k := uint64(1); k <= uint64(3*logBlocks); k++ {
		c := int64(k % clusters)
		if seeds[c] != 0 {
			if err := h.Unmap(c*64*kib, 64*kib); err != nil {
				t.Fatal(err)
			}
			seeds[c] = 0
			continue
		}
		fill(buf, k)
		if _, err := h.WriteAt(buf, c*64*kib+512*int64(k%4)); err != nil {
			t.Fatal(err)
		}
		seeds[c] = k
	}
	if p.epoch < 3 {
		t.Fatalf("log of %d blocks wrapped %d times", logBlocks, p.epoch-1)
	}
	check(t, p)
	_ = h.Close()
	// No Close: import must replay from the last checkpoint and log.
	q := mustImport(t, noClose{dev})
	defer q.Close()
	h = mustOpen(t, q, "r")
	defer h.Close()
	got := make([]byte, 64*kib)
	allocated := 0
	for c := range int64(clusters) {
		want := make([]byte, 64*kib)
		if k := seeds[c]; k != 0 {
			fill(want[512*(k%4):512*(k%4)+512], k)
			allocated++
		}
		if _, err := h.ReadAt(got, c*64*kib); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("cluster %d after import: %v", c, err)
		}
	}
	if ri, _ := q.ReplicaInfo("r"); ri.ClusterCount != allocated {
		t.Fatalf("%d clusters allocated after import, want %d", ri.ClusterCount, allocated)
	}
}

func TestMain(m *testing.M) {
	if os.Getenv("NEXSTOR_POOL_TEST_LOG") == "" {
		slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	}
	os.Exit(m.Run())
}

// TestConcurrentEverything runs writers, readers and unmaps on one thin
// replica while it grows and other replicas come and go, with Stats and
// Check polled throughout; each writer verifies its own region as it goes.
func TestConcurrentEverything(t *testing.T) {
	dev := newMalloc(t, 32*mib)
	p := mustCreate(t, noClose{dev}, CreateOptions{})
	mustReplica(t, p, "a", 4*mib, true)
	const writers, region = 4, mib
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for w := range int64(writers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := p.OpenReplica("a")
			if err != nil {
				errc <- err
				return
			}
			defer h.Close()
			rng := rand.New(rand.NewPCG(uint64(w), 5))
			model := make([]uint64, region/(4*kib)) // per 4 KiB block: seed of its content, 0 = zeroes
			buf, got, want := make([]byte, 4*kib), make([]byte, 4*kib), make([]byte, 4*kib)
			for i := range 300 {
				b := rng.Int64N(int64(len(model)))
				off := w*region + b*4*kib
				switch rng.IntN(10) {
				case 0:
					// Unmap the whole cluster around b.
					c := b / 16 * 16
					if err := h.Unmap(w*region+c*4*kib, 64*kib); err != nil {
						errc <- err
						return
					}
					clear(model[c : c+16])
				default:
					seed := uint64(w)<<32 | uint64(i+1)
					fill(buf, seed)
					if _, err := h.WriteAt(buf, off); err != nil {
						errc <- err
						return
					}
					model[b] = seed
				}
				b = rng.Int64N(int64(len(model)))
				if _, err := h.ReadAt(got, w*region+b*4*kib); err != nil {
					errc <- err
					return
				}
				clear(want)
				if model[b] != 0 {
					fill(want, model[b])
				}
				if !bytes.Equal(got, want) {
					errc <- fmt.Errorf("writer %d block %d: content differs from the last write", w, b)
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(3)
	go func() { // grow the replica being written
		defer bg.Done()
		size := int64(4 * mib)
		for range 100 {
			select {
			case <-stop:
				return
			default:
			}
			size += 64 * kib
			if err := p.ResizeReplica("a", size); err != nil {
				errc <- err
				return
			}
		}
	}()
	go func() { // replicas come and go
		defer bg.Done()
		for i := range 100 {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("t%d", i)
			if _, err := p.CreateReplica(ReplicaOptions{Name: name, Size: 256 * kib, Thin: i%2 == 0}); err != nil {
				errc <- err
				return
			}
			if err := p.DestroyReplica(name); err != nil {
				errc <- err
				return
			}
		}
	}()
	go func() { // observers
		defer bg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = p.Stats()
			_ = p.Replicas()
			if err := p.Check(); err != nil {
				errc <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	close(stop)
	bg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	check(t, p)
	want := p.Stats()
	// The metadata on disk says the same: import without a clean close.
	q := mustImport(t, noClose{dev})
	if got := q.Stats(); got.Allocated != want.Allocated || got.Committed != want.Committed || got.Replicas != want.Replicas {
		t.Fatalf("after import %+v, before %+v", got, want)
	}
	_ = q.Close()
}

// TestCorruptCheckpoints: with both checkpoint slots damaged, import fails
// with a CorruptError naming them and writes nothing, not even the repair of
// a bad superblock copy.
func TestCorruptCheckpoints(t *testing.T) {
	dev := newMalloc(t, 8*mib)
	p := mustCreate(t, noClose{dev}, CreateOptions{})
	mustReplica(t, p, "r", mib, false)
	sb := p.sb
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 512)
	fill(junk, 3)
	for _, off := range []int64{0, int64(sb.MDOff), int64(sb.MDOff + sb.CPSize)} {
		if _, err := dev.WriteAt(junk, off); err != nil {
			t.Fatal(err)
		}
	}
	before := make([]byte, dev.Size())
	if _, err := dev.ReadAt(before, 0); err != nil {
		t.Fatal(err)
	}
	_, err := Import(noClose{dev})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "both checkpoint slots") || !strings.Contains(err.Error(), `pool "p0"`) {
		t.Fatalf("Import with both checkpoints bad: %v", err)
	}
	after := make([]byte, dev.Size())
	if _, err := dev.ReadAt(after, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("a failed import wrote to the disk")
	}
}

// TestMultiClusterWriteCommitsOnce: a write over many fresh clusters makes
// one metadata commit per maxClaims clusters, not one per cluster, and a
// write mixing allocated and fresh clusters lands intact.
func TestMultiClusterWriteCommitsOnce(t *testing.T) {
	dev := newMalloc(t, 32*mib)
	p := mustCreate(t, noClose{dev}, CreateOptions{})
	mustReplica(t, p, "r", 16*mib, true)
	h := mustOpen(t, p, "r")
	seq := func() uint64 {
		p.logMu.Lock()
		defer p.logMu.Unlock()
		return p.seq
	}
	data := make([]byte, (maxClaims+36)*64*kib)
	fill(data, 11)
	// Pre-allocate one cluster in the middle of the range.
	if _, err := h.WriteAt(data[:4*kib], 10*64*kib+4*kib); err != nil {
		t.Fatal(err)
	}
	before := seq()
	off := int64(8 * kib) // unaligned to clusters: first and last are partial
	if _, err := h.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if got := seq() - before; got != 2 {
		t.Fatalf("a write over %d fresh clusters made %d commits, want 2", maxClaims+36, got)
	}
	check(t, p)
	ri, _ := p.ReplicaInfo("r")
	if want := (off + int64(len(data)) + 64*kib - 1) / (64 * kib); int64(ri.ClusterCount) != want {
		t.Fatalf("%d clusters allocated, want %d", ri.ClusterCount, want)
	}
	got := make([]byte, len(data)+int(off))
	if _, err := h.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:off], make([]byte, off)) || !bytes.Equal(got[off:], data) {
		t.Fatal("data differs after a multi-cluster write")
	}
	_ = h.Close()
	q := mustImport(t, noClose{dev})
	defer q.Close()
	h = mustOpen(t, q, "r")
	defer h.Close()
	if _, err := h.ReadAt(got, 0); err != nil || !bytes.Equal(got[off:], data) {
		t.Fatalf("data differs after import: %v", err)
	}
}
