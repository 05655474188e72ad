package nexus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

const testSize = 4 << 20

func TestConformance(t *testing.T) {
	for _, k := range []int{1, 2, 3} {
		t.Run(string(rune('0'+k))+"-children", func(t *testing.T) {
			r := newRig(t, k, testSize, Config{RebuildSegment: 64 << 10})
			if err := bdevtest.TestDevice(r.nx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestMirrorWritesReachEveryChild(t *testing.T) {
	r := newRig(t, 3, testSize, Config{})
	m := newModel(testSize)
	w := startWorkload(t, r.nx, m, 8, true)
	waitAcked(t, w, 500)
	w.finish(t)
	if err := r.nx.Flush(); err != nil {
		t.Fatal(err)
	}
	r.checkAll(m)
	if len(r.onlineDevices()) != 3 {
		t.Fatalf("children: %+v", r.nx.Children())
	}
	rep, err := r.nx.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Mismatches) != 0 || rep.Segments != testSize/DefaultRebuildSegment || len(rep.Children) != 3 {
		t.Fatalf("verify: %+v", rep)
	}
}

// Overlapping writes from many goroutines must land in the same order on
// every child: after them the children are identical.
func TestOverlappingWritesConverge(t *testing.T) {
	r := newRig(t, 3, 1<<20, Config{RebuildSegment: 64 << 10})
	// Latency on different children makes unordered fan-outs diverge.
	r.faults[r.uris[1]].AddRule(faulty.Rule{Ops: faulty.OpWrite, Latency: 200 * time.Microsecond, Probability: 0.3})
	r.faults[r.uris[2]].AddRule(faulty.Rule{Ops: faulty.OpWrite, Latency: 200 * time.Microsecond, Probability: 0.3})
	done := make(chan error, 8)
	for g := range 8 {
		go func() {
			buf := make([]byte, 16<<10)
			for i := range 200 {
				for k := range buf {
					buf[k] = byte(g*31 + i)
				}
				off := int64((g*7+i*13)%48) * 4096
				if _, err := r.nx.WriteAt(buf, off); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	rep, err := r.nx.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Mismatches) != 0 {
		t.Fatalf("children diverged: %+v", rep.Mismatches)
	}
}

func TestVerifyReportsDifferences(t *testing.T) {
	r := newRig(t, 2, testSize, Config{RebuildSegment: 64 << 10})
	buf := make([]byte, 4096)
	buf[0] = 1
	// Write behind the nexus's back into child 1 only, in two adjacent
	// segments and a third one apart.
	for _, off := range []int64{64 << 10, 128 << 10, 1 << 20} {
		if _, err := r.mem[r.uris[1]].WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := r.nx.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []Range{{64 << 10, 128 << 10}, {1 << 20, 64 << 10}}
	if len(rep.Mismatches) != 2 || rep.Mismatches[0] != want[0] || rep.Mismatches[1] != want[1] {
		t.Fatalf("mismatches %+v, want %+v", rep.Mismatches, want)
	}
	// Never fixed silently.
	got := make([]byte, 4096)
	r.mem[r.uris[0]].ReadAt(got, 64<<10)
	if got[0] != 0 {
		t.Fatal("verify changed a child")
	}
}

func TestReadsPreferLocalChild(t *testing.T) {
	store := NewMemStore()
	r := &rig{t: t, size: testSize, opener: newTestOpener(), store: store, mem: map[string]*bdev.Malloc{}, faults: map[string]*faulty.Device{}}
	r.uris = []string{r.addDevice(0), r.addDevice(1)}
	r.opener.local[r.uris[1]] = true
	nx, err := New(context.Background(), Config{UUID: "u", Size: testSize, Children: r.uris, Store: store, Opener: r.opener})
	if err != nil {
		t.Fatal(err)
	}
	defer nx.Close()
	id := r.faults[r.uris[0]].AddRule(faulty.Rule{Ops: faulty.OpRead, Latency: time.Nanosecond})
	buf := make([]byte, 4096)
	for range 50 {
		if _, err := nx.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
	}
	if f := r.faults[r.uris[0]].Fired(id); f != 0 {
		t.Fatalf("the remote child served %d reads while a local one is online", f)
	}
}

func TestStaleChildrenRefused(t *testing.T) {
	store := NewMemStore()
	r := newRig(t, 3, testSize, Config{Store: store})
	if err := r.nx.FaultChild(context.Background(), r.uris[2], ""); err != nil {
		t.Fatal(err)
	}
	if h := r.storedState(r.uris[2]); h.State != StateFaulted || h.Reason != ReasonAdmin {
		t.Fatalf("stored %+v", h)
	}
	gen := r.nx.Generation()
	r.nx.Close()

	cfg := Config{UUID: r.nx.UUID(), Size: testSize, Children: r.uris, Store: store, Opener: r.opener}
	_, err := New(context.Background(), cfg)
	var se *StaleChildError
	if !errors.Is(err, ErrStaleChild) || !errors.As(err, &se) || len(se.Children) != 1 || se.Children[0].URI != r.uris[2] {
		t.Fatalf("New over a faulted child: %v", err)
	}
	// A child the record does not know is refused too.
	r.addDevice(9)
	cfg.Children = []string{r.uris[0], childURI(9)}
	if _, err := New(context.Background(), cfg); !errors.Is(err, ErrStaleChild) {
		t.Fatalf("New over an unknown child: %v", err)
	}
	cfg.Children = r.uris[:2]
	nx, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if nx.UncleanShutdown() {
		t.Fatal("a cleanly closed nexus is reported as crashed")
	}
	if nx.Generation() <= gen {
		t.Fatalf("generation %d did not advance past %d", nx.Generation(), gen)
	}
	nx.Close()
	cfg.Children, cfg.Force = r.uris, true
	nx, err = New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New with Force: %v", err)
	}
	if len(nx.Children()) != 3 {
		t.Fatalf("children %+v", nx.Children())
	}
	nx.Close()
}

func TestAdminLimits(t *testing.T) {
	r := newRig(t, 2, testSize, Config{})
	ctx := context.Background()
	if err := r.nx.FaultChild(ctx, "bdev:///nope", ""); !errors.Is(err, ErrUnknownChild) {
		t.Fatalf("fault unknown: %v", err)
	}
	if err := r.nx.RemoveChild(ctx, r.uris[0]); err != nil {
		t.Fatal(err)
	}
	if err := r.nx.RemoveChild(ctx, r.uris[1]); !errors.Is(err, ErrLastChild) {
		t.Fatalf("remove last: %v", err)
	}
	if err := r.nx.FaultChild(ctx, r.uris[1], ""); !errors.Is(err, ErrLastChild) {
		t.Fatalf("fault last: %v", err)
	}
	if err := r.nx.OfflineChild(ctx, r.uris[1]); !errors.Is(err, ErrLastChild) {
		t.Fatalf("offline last: %v", err)
	}
	if err := r.nx.AddChild(ctx, r.uris[1]); err == nil {
		t.Fatal("adding an online child succeeded")
	}
	rec, _ := r.store.Load(ctx, r.nx.UUID())
	if len(rec.Children) != 1 || rec.Children[0].URI != r.uris[1] {
		t.Fatalf("record after remove: %+v", rec)
	}
}

func TestOpenFailureRecordedFaulted(t *testing.T) {
	store := NewMemStore()
	o := newTestOpener()
	for i := range 2 {
		m, _ := bdev.NewMalloc(testSize, 512)
		o.add(childURI(i), m)
	}
	o.fail[childURI(1)] = errors.New("connection refused")
	nx, err := New(context.Background(), Config{UUID: "u", Children: []string{childURI(0), childURI(1)}, Store: store, Opener: o})
	if err != nil {
		t.Fatal(err)
	}
	defer nx.Close()
	if nx.Size() != testSize {
		t.Fatalf("size %d", nx.Size())
	}
	cs := nx.Children()
	if cs[1].State != StateFaulted || cs[1].Reason != ReasonOpenFailed {
		t.Fatalf("children %+v", cs)
	}
}

func TestFanOutDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	r := newRig(t, 3, testSize, Config{})
	buf := make([]byte, 4096)
	// Warm the free lists: ops finish on worker goroutines, which run
	// late when AllocsPerRun pins GOMAXPROCS to 1.
	for range 2000 {
		if _, err := r.nx.WriteAt(buf, 8192); err != nil {
			t.Fatal(err)
		}
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := r.nx.WriteAt(buf, 8192); err != nil {
			t.Fatal(err)
		}
		if _, err := r.nx.ReadAt(buf, 8192); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per write+read", allocs)
	}
}

// TestUnreachableChildWaitsOfflineAfterCleanClose: recreated after a clean
// close, a nexus whose child cannot be opened (its node not up yet) keeps
// it offline rather than faulted; once it can be opened, OnlineChild copies
// only what was written meanwhile. After an unclean close the same child is
// faulted: it may have missed writes no bitmap recorded.
func TestUnreachableChildWaitsOfflineAfterCleanClose(t *testing.T) {
	ctx := context.Background()
	store := NewMemStore()
	r := newRig(t, 2, testSize, Config{Store: store, RebuildSegment: 64 << 10})
	buf := make([]byte, 64<<10)
	stamp(buf, 0, 1)
	if _, err := r.nx.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.nx.Close(); err != nil {
		t.Fatal(err)
	}
	gone := r.uris[1]
	r.opener.setFail(gone, errors.New("connection refused"))
	cfg := Config{Name: "nx", UUID: "nexus-under-test", Size: testSize, Children: r.uris, Store: store, Opener: r.opener, RebuildSegment: 64 << 10}
	nx, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer nx.Close()
	r.nx = nx
	if c := r.state(gone); c.State != StateOffline || c.Reason != ReasonOpenFailed {
		t.Fatalf("unreachable child after a clean close: %+v", c)
	}
	if h := r.storedState(gone); h.State != StateOffline || h.Reason != ReasonOpenFailed {
		t.Fatalf("stored %+v", h)
	}
	stamp(buf, 1<<20, 2)
	if _, err := nx.WriteAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	if c := r.state(gone); c.DirtyBytes != 64<<10 {
		t.Fatalf("dirty bytes %d, want one 64 KiB segment", c.DirtyBytes)
	}
	r.opener.setFail(gone, nil)
	before := nx.Stats().RebuildBytes
	if err := nx.OnlineChild(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if st := waitRebuild(t, nx, gone); st.State != RebuildCompleted {
		t.Fatalf("rebuild %+v", st)
	}
	if copied := nx.Stats().RebuildBytes - before; copied != 64<<10 {
		t.Fatalf("partial rebuild copied %d bytes, want 64 KiB", copied)
	}
	verifyClean(t, nx, 2)

	// Unclean: the process dies (no Close), the child is unreachable.
	r.opener.setFail(gone, errors.New("connection refused"))
	if _, err := nx.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	nx2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer nx2.Close()
	r.nx = nx2
	if c := r.state(gone); c.State != StateFaulted || c.Reason != ReasonOpenFailed {
		t.Fatalf("unreachable child after an unclean close: %+v", c)
	}
}

// TestCloseFlushesChildren: a clean record promises that the online
// children agree on stable storage, so Close flushes them first. A child
// whose flush fails is offline (io-error) in that record; when it is the last online
// child, the record is not clean and the next instance resyncs.
func TestCloseFlushesChildren(t *testing.T) {
	r := newRig(t, 2, testSize, Config{})
	ok := r.faults[r.uris[0]].AddRule(faulty.Rule{Ops: faulty.OpFlush, Latency: time.Nanosecond})
	r.faults[r.uris[1]].AddRule(faulty.Rule{Ops: faulty.OpFlush, Err: errors.New("cache lost")})
	if err := r.nx.Close(); err != nil {
		t.Fatal(err)
	}
	if r.faults[r.uris[0]].Fired(ok) == 0 {
		t.Fatal("Close did not flush the online child")
	}
	rec, err := r.store.Load(context.Background(), r.nx.UUID())
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Clean || rec.Children[0].State != StateOnline || rec.Children[1].State != StateOffline || rec.Children[1].Reason != ReasonIOError {
		t.Fatalf("record after a failed flush at close: %+v", rec)
	}

	one := newRig(t, 1, testSize, Config{})
	one.faults[one.uris[0]].AddRule(faulty.Rule{Ops: faulty.OpFlush, Err: errors.New("cache lost")})
	if err := one.nx.Close(); err != nil {
		t.Fatal(err)
	}
	if rec, err := one.store.Load(context.Background(), one.nx.UUID()); err != nil || rec.Clean || rec.Children[0].State != StateOnline {
		t.Fatalf("record after the last child failed its flush at close: %+v %v", rec, err)
	}
}
