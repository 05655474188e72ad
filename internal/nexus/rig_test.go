package nexus

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// unit is the granularity of the verified workload: every unit written
// carries its offset and a version.
const unit = 4096

// testOpener hands out registered devices by URI. Devices are wrapped so
// that the nexus closing a child does not destroy the backing (a child can
// be reopened, as a replica can).
type testOpener struct {
	mu    sync.Mutex
	devs  map[string]bdev.Device
	opens map[string]func() bdev.Device
	local map[string]bool
	fail  map[string]error
}

func newTestOpener() *testOpener {
	return &testOpener{devs: map[string]bdev.Device{}, opens: map[string]func() bdev.Device{},
		local: map[string]bool{}, fail: map[string]error{}}
}

// addOpen registers a device that open returns a new handle of each time
// (a fake replica's unclaimed handle, say), replacing any earlier one.
func (o *testOpener) addOpen(uri string, open func() bdev.Device) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.devs, uri)
	o.opens[uri] = open
}

func quietLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.Default()
	}
	return slog.New(slog.DiscardHandler)
}

func (o *testOpener) add(uri string, d bdev.Device) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.devs[uri] = d
}

// setFail makes opening uri fail with err from now on (nil: succeed).
func (o *testOpener) setFail(uri string, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err == nil {
		delete(o.fail, uri)
		return
	}
	o.fail[uri] = err
}

func (o *testOpener) Open(_ context.Context, uri string) (bdev.Device, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.fail[uri]; err != nil {
		return nil, err
	}
	if open := o.opens[uri]; open != nil {
		return open(), nil
	}
	d, ok := o.devs[uri]
	if !ok {
		return nil, fmt.Errorf("no device %q", uri)
	}
	return &handle{Device: d}, nil
}

func (o *testOpener) IsLocal(uri string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.local[uri]
}

// handle is one open of a shared device: closing it closes only the handle.
type handle struct {
	bdev.Device
	closed atomic.Bool
}

func (h *handle) check() error {
	if h.closed.Load() {
		return bdev.ErrClosed
	}
	return nil
}
func (h *handle) ReadAt(p []byte, off int64) (int, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	return h.Device.ReadAt(p, off)
}
func (h *handle) WriteAt(p []byte, off int64) (int, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	return h.Device.WriteAt(p, off)
}
func (h *handle) Close() error {
	if h.closed.Swap(true) {
		return bdev.ErrClosed
	}
	return nil
}

// rig is a nexus over faulty-wrapped malloc children.
type rig struct {
	t      testing.TB
	size   int64
	opener *testOpener
	store  HealthStore
	mem    map[string]*bdev.Malloc
	faults map[string]*faulty.Device
	uris   []string
	nx     *Nexus
}

func childURI(i int) string { return fmt.Sprintf("bdev:///replica-%d", i) }

func newRig(t testing.TB, children int, size int64, cfg Config) *rig {
	t.Helper()
	r := &rig{t: t, size: size, opener: newTestOpener(), store: cfg.Store,
		mem: map[string]*bdev.Malloc{}, faults: map[string]*faulty.Device{}}
	if r.store == nil {
		r.store = NewMemStore()
	}
	for i := range children {
		r.uris = append(r.uris, r.addDevice(i))
	}
	cfg.UUID = "nexus-under-test"
	if cfg.Logger == nil && !testing.Verbose() {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Name = "nx"
	cfg.Size = size
	cfg.Children = r.uris
	cfg.Store = r.store
	cfg.Opener = r.opener
	seedRecord(t, r.store, cfg.UUID, r.uris)
	nx, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r.nx = nx
	t.Cleanup(func() { nx.Close() })
	return r
}

// seedRecord saves a clean health record that has every child online, as a
// nexus over children known to be in sync (fresh zeroed devices) would have
// left, unless the store has a record already. Without a record, a nexus
// serves one child and rebuilds the others from it.
func seedRecord(t testing.TB, store HealthStore, id string, uris []string) {
	t.Helper()
	if _, err := store.Load(context.Background(), id); !errors.Is(err, ErrNoRecord) {
		return
	}
	rec := HealthRecord{NexusUUID: id, Generation: 1, SegmentSize: DefaultRebuildSegment, Clean: true}
	for _, u := range uris {
		rec.Children = append(rec.Children, ChildHealth{URI: u, State: StateOnline})
	}
	if err := store.Save(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
}

// addDevice registers a new malloc+faulty device as child i and returns its URI.
func (r *rig) addDevice(i int) string {
	m, err := bdev.NewMalloc(r.size, 512)
	if err != nil {
		r.t.Fatal(err)
	}
	f := faulty.New(m, int64(i)+1)
	u := childURI(i)
	r.mem[u], r.faults[u] = m, f
	r.opener.add(u, f)
	return u
}

func (r *rig) state(uri string) ChildStatus {
	for _, c := range r.nx.Children() {
		if c.URI == uri {
			return c
		}
	}
	r.t.Fatalf("child %s not in nexus", uri)
	return ChildStatus{}
}

func (r *rig) storedState(uri string) ChildHealth {
	rec, err := r.store.Load(context.Background(), r.nx.UUID())
	if err != nil {
		r.t.Fatalf("store load: %v", err)
	}
	for _, h := range rec.Children {
		if h.URI == uri {
			return h
		}
	}
	r.t.Fatalf("child %s not in the stored record", uri)
	return ChildHealth{}
}

// onlineDevices returns the backing devices of the nexus's online children.
func (r *rig) onlineDevices() map[string]bdev.Device {
	out := map[string]bdev.Device{}
	for _, c := range r.nx.Children() {
		if c.State == StateOnline {
			out[c.URI] = r.mem[c.URI]
		}
	}
	return out
}

// stamp fills p (whole units starting at offset off) with version ver.
func stamp(p []byte, off int64, ver uint64) {
	for u := 0; u < len(p); u += unit {
		b := p[u : u+unit]
		o := uint64(off) + uint64(u)
		binary.LittleEndian.PutUint64(b[0:], o)
		binary.LittleEndian.PutUint64(b[8:], ver)
		seed := byte(o>>12) ^ byte(ver*31)
		for i := 16; i < unit; i++ {
			b[i] = seed + byte(i)
		}
	}
}

// model is the last acknowledged version of every unit.
type model struct {
	vers []atomic.Uint64
}

func newModel(size int64) *model { return &model{vers: make([]atomic.Uint64, size/unit)} }

// workload runs writers, each owning a disjoint region and writing 1..4
// units at random offsets in it, recording acknowledged versions. Every
// error is reported. It stops when stop is closed and returns the number of
// writes acknowledged.
type workload struct {
	dev     bdev.Device
	m       *model
	writers int
	stop    chan struct{}
	wg      sync.WaitGroup
	acked   atomic.Int64
	errs    chan error
	reads   bool
	started chan struct{}
}

func startWorkload(t testing.TB, dev bdev.Device, m *model, writers int, reads bool) *workload {
	w := &workload{dev: dev, m: m, writers: writers, stop: make(chan struct{}), errs: make(chan error, writers), reads: reads}
	region := int64(len(m.vers)) / int64(writers)
	for i := range writers {
		w.wg.Add(1)
		go func(id int) {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(id), 7))
			buf := make([]byte, 4*unit)
			rbuf := make([]byte, 4*unit)
			var ver uint64 = uint64(id) << 40
			for {
				select {
				case <-w.stop:
					return
				default:
				}
				n := int64(1 + rng.IntN(4))
				first := int64(id)*region + rng.Int64N(region-n+1)
				off := first * unit
				if w.reads && rng.IntN(3) == 0 {
					p := rbuf[:n*unit]
					if _, err := dev.ReadAt(p, off); err != nil {
						w.errs <- fmt.Errorf("read at %d: %w", off, err)
						return
					}
					if err := m.checkUnits(p, off); err != nil {
						w.errs <- fmt.Errorf("read through the nexus: %w", err)
						return
					}
					continue
				}
				ver++
				p := buf[:n*unit]
				stamp(p, off, ver)
				if _, err := dev.WriteAt(p, off); err != nil {
					w.errs <- fmt.Errorf("write at %d: %w", off, err)
					return
				}
				for k := int64(0); k < n; k++ {
					m.vers[first+k].Store(ver)
				}
				w.acked.Add(1)
			}
		}(i)
	}
	return w
}

// finish stops the workload and fails the test on any error it saw.
func (w *workload) finish(t testing.TB) int64 {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	close(w.errs)
	for err := range w.errs {
		t.Errorf("workload: %v", err)
	}
	return w.acked.Load()
}

// checkUnits checks that p, read at off, holds the modelled versions.
func (m *model) checkUnits(p []byte, off int64) error {
	want := make([]byte, unit)
	for u := int64(0); u < int64(len(p)); u += unit {
		o := off + u
		ver := m.vers[o/unit].Load()
		if ver == 0 {
			clear(want)
		} else {
			stamp(want, o, ver)
		}
		got := p[u : u+unit]
		if !bytes.Equal(got, want) {
			return fmt.Errorf("unit at %d: got offset %d version %d, want version %d",
				o, binary.LittleEndian.Uint64(got[0:]), binary.LittleEndian.Uint64(got[8:]), ver)
		}
	}
	return nil
}

// checkDevice reads the whole device and checks it against the model.
func (m *model) checkDevice(d bdev.Device) error {
	buf := make([]byte, 256*unit)
	size := int64(len(m.vers)) * unit
	for off := int64(0); off < size; off += int64(len(buf)) {
		p := buf[:min(int64(len(buf)), size-off)]
		if _, err := d.ReadAt(p, off); err != nil {
			return fmt.Errorf("read at %d: %w", off, err)
		}
		if err := m.checkUnits(p, off); err != nil {
			return err
		}
	}
	return nil
}

// checkAll checks the nexus and every online child's backing against the model.
func (r *rig) checkAll(m *model) {
	r.t.Helper()
	if err := m.checkDevice(r.nx); err != nil {
		r.t.Errorf("through the nexus: %v", err)
	}
	for u, d := range r.onlineDevices() {
		if err := m.checkDevice(d); err != nil {
			r.t.Errorf("child %s: %v", u, err)
		}
	}
}

// failingStore wraps a store and fails Save once armed.
type failingStore struct {
	HealthStore
	armed atomic.Bool
	saves atomic.Int64
}

var errStoreDown = errors.New("store unreachable")

func (s *failingStore) Save(ctx context.Context, rec HealthRecord) error {
	if s.armed.Load() {
		return errStoreDown
	}
	s.saves.Add(1)
	return s.HealthStore.Save(ctx, rec)
}
