package nexus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

const offSeg = 64 << 10 // segment of the tests below: 64 per 4 MiB device

// dirtySegments returns the segments set in the stored bitmap of uri.
func (r *rig) dirtySegments(uri string) map[int64]bool {
	r.t.Helper()
	h := r.storedState(uri)
	out := map[int64]bool{}
	for i, b := range h.Bitmap {
		for k := range 8 {
			if b&(1<<k) != 0 {
				out[int64(i*8+k)] = true
			}
		}
	}
	return out
}

// waitFor waits (bounded) until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A child that fails a write, read or flush, or runs out of space, goes
// offline with a write-intent bitmap (not faulted), persisted before the I/O
// is acknowledged, and OnlineChild brings it back with a partial rebuild.
func TestOfflineOnError(t *testing.T) {
	noSpace := fmt.Errorf("pool p1: %w", bdev.ErrNoSpace)
	cases := []struct {
		name   string
		rule   faulty.Rule
		op     func(nx *Nexus) error
		reason FaultReason
		seg    int64 // a segment that must be in the bitmap; -1 for none
	}{
		{"write-error", faulty.Rule{Ops: faulty.OpWrite}, func(nx *Nexus) error {
			_, err := nx.WriteAt(make([]byte, 4096), 40*offSeg)
			return err
		}, ReasonIOError, 40},
		{"read-error", faulty.Rule{Ops: faulty.OpRead}, func(nx *Nexus) error {
			buf := make([]byte, 4096)
			for range 4 { // round-robin reaches the victim
				if _, err := nx.ReadAt(buf, 0); err != nil {
					return err
				}
			}
			return nil
		}, ReasonIOError, -1},
		{"flush-error", faulty.Rule{Ops: faulty.OpFlush}, func(nx *Nexus) error { return nx.Flush() }, ReasonIOError, -1},
		{"no-space", faulty.Rule{Ops: faulty.OpWrite, Err: noSpace}, func(nx *Nexus) error {
			_, err := nx.WriteAt(make([]byte, 4096), 41*offSeg)
			return err
		}, ReasonNoSpace, 41},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 3, testSize, Config{RebuildSegment: offSeg})
			victim := r.uris[1]
			// Unflushed data on the victim before it leaves.
			buf := make([]byte, 4096)
			stamp(buf, 7*offSeg, 1)
			if _, err := r.nx.WriteAt(buf, 7*offSeg); err != nil {
				t.Fatal(err)
			}
			id := r.faults[victim].AddRule(tc.rule)
			if err := tc.op(r.nx); err != nil {
				t.Fatalf("the client saw %v", err)
			}
			if r.faults[victim].Fired(id) == 0 {
				t.Fatal("the fault never fired")
			}
			r.faults[victim].ClearRules()
			c := r.state(victim)
			if c.State != StateOffline || c.Reason != tc.reason || c.DirtyBytes == 0 {
				t.Fatalf("victim %+v, want offline %s with a bitmap", c, tc.reason)
			}
			h := r.storedState(victim)
			if h.State != StateOffline || h.Reason != tc.reason {
				t.Fatalf("stored %+v", h)
			}
			dirty := r.dirtySegments(victim)
			if !dirty[7] || tc.seg >= 0 && !dirty[tc.seg] {
				t.Fatalf("bitmap %v lacks the unflushed segment 7 or the failed write's %d", dirty, tc.seg)
			}
			if err := r.nx.OnlineChild(context.Background(), victim); err != nil {
				t.Fatal(err)
			}
			st := waitRebuild(t, r.nx, victim)
			if st.State != RebuildCompleted || !st.Partial || st.Total != int64(len(dirty))*offSeg {
				t.Fatalf("partial rebuild %+v of %d segments", st, len(dirty))
			}
			verifyClean(t, r.nx, 3)
		})
	}
}

// The bitmap of a child that leaves holds what it may lack, and no more:
// the write that failed on it, the writes still in flight to it (which may
// fail on it after it left), and every segment written since the last flush
// that succeeded on it; not what was flushed before. OnlineChild copies
// exactly those segments.
func TestRetiredChildBitmap(t *testing.T) {
	r := newRig(t, 3, testSize, Config{RebuildSegment: offSeg})
	victim := r.uris[1]
	m := newModel(testSize)
	write := func(s int64, ver uint64) error {
		buf := make([]byte, 4096)
		stamp(buf, s*offSeg, ver)
		if _, err := r.nx.WriteAt(buf, s*offSeg); err != nil {
			return err
		}
		m.vers[s*offSeg/unit].Store(ver)
		return nil
	}
	if err := write(5, 1); err != nil { // flushed below: not needed
		t.Fatal(err)
	}
	if err := r.nx.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := write(9, 1); err != nil { // not flushed
		t.Fatal(err)
	}
	// A write in flight to the victim that fails there later.
	slow := r.faults[victim].AddRule(faulty.Rule{Ops: faulty.OpWrite, Off: 20 * offSeg, Len: offSeg, Latency: 100 * time.Millisecond, Err: errors.New("timed out")})
	inflight := make(chan error, 1)
	go func() { inflight <- write(20, 1) }()
	waitFor(t, "the slow write to reach the victim", func() bool { return r.faults[victim].Fired(slow) == 1 })
	// Another write fails on the victim at once: it leaves.
	r.faults[victim].AddRule(faulty.Rule{Ops: faulty.OpWrite, Off: 30 * offSeg, Len: offSeg})
	if err := write(30, 1); err != nil {
		t.Fatal(err)
	}
	if c := r.state(victim); c.State != StateOffline {
		t.Fatalf("victim %+v", c)
	}
	if err := <-inflight; err != nil {
		t.Fatalf("the write in flight to the child that left: %v", err)
	}
	want := map[int64]bool{9: true, 20: true, 30: true}
	got := r.dirtySegments(victim)
	if len(got) != len(want) || !got[9] || !got[20] || !got[30] {
		t.Fatalf("bitmap %v, want %v", got, want)
	}
	// Written while away: in the bitmap too.
	if err := write(50, 2); err != nil {
		t.Fatal(err)
	}
	if !r.dirtySegments(victim)[50] {
		t.Fatal("a write while away is not in the bitmap")
	}
	r.faults[victim].ClearRules()
	before := r.nx.Stats().RebuildBytes
	if err := r.nx.OnlineChild(context.Background(), victim); err != nil {
		t.Fatal(err)
	}
	if st := waitRebuild(t, r.nx, victim); st.State != RebuildCompleted {
		t.Fatalf("rebuild %+v", st)
	}
	if copied := r.nx.Stats().RebuildBytes - before; copied != 4*offSeg {
		t.Fatalf("the partial rebuild copied %d bytes, want the 4 segments", copied)
	}
	r.checkAll(m)
	verifyClean(t, r.nx, 3)
}

// blockingStore holds saves while gate is armed, counting them.
type blockingStore struct {
	HealthStore
	mu    sync.Mutex
	gate  chan struct{} // nil: no hold
	saves atomic.Int64
	held  atomic.Int64 // saves waiting at the gate
}

func (s *blockingStore) Save(ctx context.Context, rec HealthRecord) error {
	s.mu.Lock()
	g := s.gate
	s.mu.Unlock()
	if g != nil {
		s.held.Add(1)
		<-g
		s.held.Add(-1)
	}
	s.saves.Add(1)
	return s.HealthStore.Save(ctx, rec)
}

func (s *blockingStore) hold() {
	s.mu.Lock()
	s.gate = make(chan struct{})
	s.mu.Unlock()
}

func (s *blockingStore) release() {
	s.mu.Lock()
	close(s.gate)
	s.gate = nil
	s.mu.Unlock()
}

// Writers to clean segments while a child is away share the saves of
// their write-intent bits: while one save is in progress, every writer that
// needs a bit waits for the next, which saves all their bits at once.
func TestDirtyBitsGroupCommit(t *testing.T) {
	store := &blockingStore{HealthStore: NewMemStore()}
	r := newRig(t, 2, testSize, Config{Store: store, RebuildSegment: offSeg})
	away := r.uris[1]
	if err := r.nx.OfflineChild(context.Background(), away); err != nil {
		t.Fatal(err)
	}
	saves := store.saves.Load()
	store.hold()
	const writers = 16
	errs := make(chan error, writers)
	write := func(s int64) {
		buf := make([]byte, 4096)
		_, err := r.nx.WriteAt(buf, s*offSeg)
		errs <- err
	}
	go write(0)
	waitFor(t, "the first save", func() bool { return store.held.Load() == 1 })
	for s := int64(1); s < writers; s++ {
		go write(s)
	}
	waitFor(t, "the other writers to queue", func() bool {
		r.nx.dc.mu.Lock()
		defer r.nx.dc.mu.Unlock()
		return len(r.nx.dc.queued) == writers-1
	})
	store.release()
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := store.saves.Load() - saves; got != 2 {
		t.Fatalf("%d saves for %d writers to clean segments, want 2 (one in progress, one for the rest)", got, writers)
	}
	dirty := r.dirtySegments(away)
	for s := range int64(writers) {
		if !dirty[s] {
			t.Fatalf("segment %d missing from the stored bitmap %v", s, dirty)
		}
	}
	if c := r.state(away); c.DirtyBytes != writers*offSeg {
		t.Fatalf("child %+v", c)
	}
}

// gatedDevice holds its flushes while gate is armed, counting them.
type gatedDevice struct {
	bdev.Device
	gate    chan struct{}
	flushes atomic.Int64
	held    atomic.Int64
}

func (d *gatedDevice) Flush() error {
	d.flushes.Add(1)
	d.held.Add(1)
	<-d.gate
	d.held.Add(-1)
	return d.Device.Flush()
}

// Concurrent Flush calls share flushes of the children: the calls made
// while one flush runs are all covered by the next one.
func TestConcurrentFlushesShared(t *testing.T) {
	m, _ := bdev.NewMalloc(testSize, 512)
	d := &gatedDevice{Device: m, gate: make(chan struct{})}
	o := newTestOpener()
	o.add(childURI(0), d)
	store := NewMemStore()
	seedRecord(t, store, "flush", []string{childURI(0)})
	nx, err := New(context.Background(), Config{UUID: "flush", Children: []string{childURI(0)}, Store: store, Opener: o, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer nx.Close()
	errs := make(chan error, 11)
	go func() { errs <- nx.Flush() }()
	waitFor(t, "the first flush", func() bool { return d.held.Load() == 1 })
	for range 10 {
		go func() { errs <- nx.Flush() }()
	}
	waitFor(t, "the other flushes to wait", func() bool {
		nx.fg.mu.Lock()
		defer nx.fg.mu.Unlock()
		return nx.fg.waiting == 10
	})
	close(d.gate)
	for range 11 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if f := d.flushes.Load(); f != 2 {
		t.Fatalf("%d child flushes for 11 calls, want 2", f)
	}
}

func TestUnflushedGenerations(t *testing.T) {
	u := newUnflushed(10000) // more segments than regions: 3 segments a region
	if u.regSegs != 3 || u.nreg != 3334 || len(u.gens[0]) != 53 {
		t.Fatalf("regions of %d segments, %d regions, %d words", u.regSegs, u.nreg, len(u.gens[0]))
	}
	u.mark(4, 4)
	old := u.flip()
	u.mark(9999, 9999)
	b := newBitmap(10000)
	u.addTo(b)
	if b.count() != 4 || !b.test(3) || !b.test(5) || !b.test(9999) || b.test(2) {
		t.Fatalf("bits %d", b.count())
	}
	u.clear(old) // a flush issued after the flip succeeded
	b = newBitmap(10000)
	u.addTo(b)
	if b.count() != 1 || !b.test(9999) {
		t.Fatalf("after the flush: %d bits", b.count())
	}
}

func TestRangeLockListsWrites(t *testing.T) {
	var l rangeLock
	a := l.lockWrite(0, 10)
	b := l.lock(20, 10)
	c := l.lockWrite(40, 5)
	var got [][2]int64
	l.writes(func(off, end int64) { got = append(got, [2]int64{off, end}) })
	if len(got) != 2 || got[0] != [2]int64{0, 10} || got[1] != [2]int64{40, 45} {
		t.Fatalf("writes %v", got)
	}
	l.unlock(a)
	l.unlock(b)
	l.unlock(c)
	got = nil
	l.writes(func(off, end int64) { got = append(got, [2]int64{off, end}) })
	if len(got) != 0 {
		t.Fatalf("writes after unlock %v", got)
	}
}
