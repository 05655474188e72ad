package nexus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

func waitRebuild(t *testing.T, nx *Nexus, uri string) RebuildStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := nx.WaitRebuild(ctx, uri)
	if err != nil {
		t.Fatalf("wait rebuild %s: %v", uri, err)
	}
	return st
}

// waitInSync waits for every rebuild running in nx (a nexus created without
// a health record rebuilds all children but one) to complete.
func waitInSync(t *testing.T, nx *Nexus) {
	t.Helper()
	for _, r := range nx.Rebuilds() {
		if st := waitRebuild(t, nx, r.Child); st.State != RebuildCompleted {
			t.Fatalf("rebuild %+v", st)
		}
	}
}

func verifyClean(t *testing.T, nx *Nexus, children int) {
	t.Helper()
	rep, err := nx.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Mismatches) != 0 || len(rep.Children) != children {
		t.Fatalf("verify: %+v", rep)
	}
}

// Full rebuild under a verified write load: a child is faulted, a new one
// is added and rebuilt while writes continue; afterwards the children are
// identical and every acknowledged write reads back from each of them.
func TestRebuildUnderLoad(t *testing.T) {
	const size = 8 << 20
	r := newRig(t, 3, size, Config{RebuildSegment: 128 << 10, RebuildConcurrency: 3})
	m := newModel(size)
	w := startWorkload(t, r.nx, m, 6, true)
	waitAcked(t, w, 200)
	if err := r.nx.FaultChild(context.Background(), r.uris[0], ""); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, w, 100)
	fresh := r.addDevice(3)
	// Slow the new child a little so the rebuild overlaps many writes.
	r.faults[fresh].AddRule(faulty.Rule{Ops: faulty.OpWrite, Latency: 100 * time.Microsecond, Probability: 0.5})
	if err := r.nx.AddChild(context.Background(), fresh); err != nil {
		t.Fatal(err)
	}
	if st := r.state(fresh); st.State != StateRebuilding {
		t.Fatalf("new child %+v", st)
	}
	if h := r.storedState(fresh); h.State != StateRebuilding {
		t.Fatalf("stored %+v", h)
	}
	st := waitRebuild(t, r.nx, fresh)
	waitAcked(t, w, 100)
	w.finish(t)
	if st.State != RebuildCompleted || st.Done != size || st.Total != size || st.Percent != 100 || st.Err != "" {
		t.Fatalf("rebuild status %+v", st)
	}
	if st.Rate <= 0 || st.Finished.Before(st.Started) {
		t.Fatalf("rebuild rate/times %+v", st)
	}
	if c := r.state(fresh); c.State != StateOnline {
		t.Fatalf("rebuilt child %+v", c)
	}
	if h := r.storedState(fresh); h.State != StateOnline {
		t.Fatalf("stored %+v", h)
	}
	if r.nx.Stats().RebuildBytes != size {
		t.Fatalf("stats %+v", r.nx.Stats())
	}
	if hist := r.nx.RebuildHistory(); len(hist) != 1 || hist[0].Child != fresh {
		t.Fatalf("history %+v", hist)
	}
	verifyClean(t, r.nx, 3)
	r.checkAll(m)
}

// Partial rebuild: an offline child misses writes, which are recorded in
// its bitmap (persisted); bringing it back copies only those segments.
func TestPartialRebuildUnderLoad(t *testing.T) {
	const size = 8 << 20
	const seg = 64 << 10
	r := newRig(t, 3, size, Config{RebuildSegment: seg})
	m := newModel(size)
	// Writers confined to the first quarter of the device, so the bitmap
	// stays partial.
	w := startWorkload(t, r.nx, newModelView(m, size/4), 4, false)
	waitAcked(t, w, 100)
	victim := r.uris[2]
	if err := r.nx.OfflineChild(context.Background(), victim); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, w, 300)
	st := r.state(victim)
	h := r.storedState(victim)
	if st.State != StateOffline || st.DirtyBytes == 0 || st.DirtyBytes > size/4 || h.State != StateOffline || len(h.Bitmap) == 0 {
		t.Fatalf("offline child %+v, stored %+v", st, h)
	}
	if err := r.nx.OnlineChild(context.Background(), victim); err != nil {
		t.Fatal(err)
	}
	rs := waitRebuild(t, r.nx, victim)
	waitAcked(t, w, 100)
	w.finish(t)
	if rs.State != RebuildCompleted || !rs.Partial || rs.Done != rs.Total || rs.Total < st.DirtyBytes {
		t.Fatalf("partial rebuild %+v (dirty %d)", rs, st.DirtyBytes)
	}
	copied := r.nx.Stats().RebuildBytes
	if copied >= size || copied != rs.Done {
		t.Fatalf("partial rebuild copied %d bytes of a %d-byte nexus", copied, size)
	}
	t.Logf("partial rebuild copied %d of %d bytes", copied, size)
	if c := r.state(victim); c.State != StateOnline {
		t.Fatalf("child %+v", c)
	}
	verifyClean(t, r.nx, 3)
	r.checkAll(m)
}

// newModelView restricts a workload to the first size bytes of a model.
func newModelView(m *model, size int64) *model {
	return &model{vers: m.vers[:size/unit]}
}

// The bitmap survives a recreation of the nexus: an offline child is kept
// offline with its bitmap and can be brought back partially.
func TestOfflineBitmapPersisted(t *testing.T) {
	store := NewMemStore()
	const seg = 64 << 10
	r := newRig(t, 2, testSize, Config{Store: store, RebuildSegment: seg})
	ctx := context.Background()
	if err := r.nx.OfflineChild(ctx, r.uris[1]); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	gen := r.nx.Generation()
	for i := range 10 {
		stamp(buf, seg*5+int64(i)*4096, 1)
		if _, err := r.nx.WriteAt(buf, seg*5+int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	// Ten writes in one segment: one store write.
	if g := r.nx.Generation(); g != gen+1 {
		t.Fatalf("generation went from %d to %d for writes to one segment", gen, g)
	}
	r.nx.Close()
	nx, err := New(ctx, Config{UUID: r.nx.UUID(), Children: r.uris, Store: store, Opener: r.opener, RebuildSegment: seg})
	if err != nil {
		t.Fatal(err)
	}
	defer nx.Close()
	cs := nx.Children()
	if cs[1].State != StateOffline || cs[1].DirtyBytes != seg {
		t.Fatalf("children after recreation %+v", cs)
	}
	if err := nx.OnlineChild(ctx, r.uris[1]); err != nil {
		t.Fatal(err)
	}
	st := waitRebuild(t, nx, r.uris[1])
	if st.State != RebuildCompleted || st.Done != seg {
		t.Fatalf("rebuild %+v", st)
	}
	verifyClean(t, nx, 2)
}

// pausedRebuild adds a fresh child to a 1-child nexus and pauses its
// rebuild. 128 segments at >= 5ms each, two at a time: the rebuild lasts
// long enough to be controlled, and it is only ever resumed for an instant.
func pausedRebuild(t *testing.T) (*rig, string) {
	t.Helper()
	r := newRig(t, 1, testSize, Config{RebuildSegment: 32 << 10, RebuildConcurrency: 2})
	fresh := r.addDevice(1)
	r.faults[fresh].AddRule(faulty.Rule{Ops: faulty.OpWrite, Latency: 5 * time.Millisecond})
	if err := r.nx.AddChild(context.Background(), fresh); err != nil {
		t.Fatal(err)
	}
	if err := r.nx.Rebuild(fresh, RebuildPause); err != nil {
		t.Fatal(err)
	}
	return r, fresh
}

func TestRebuildControls(t *testing.T) {
	r, fresh := pausedRebuild(t)
	ctx := context.Background()
	st, err := r.nx.RebuildStatus(fresh)
	if err != nil || st.State != RebuildPaused {
		t.Fatalf("status %+v %v", st, err)
	}
	if len(r.nx.Rebuilds()) != 1 {
		t.Fatalf("rebuilds %+v", r.nx.Rebuilds())
	}
	// Writes continue while paused and reach the rebuilding child.
	buf := make([]byte, 4096)
	buf[0] = 7
	if _, err := r.nx.WriteAt(buf, testSize-4096); err != nil {
		t.Fatal(err)
	}
	if err := r.nx.Rebuild(fresh, RebuildResume); err != nil {
		t.Fatal(err)
	}
	if err := r.nx.Rebuild(fresh, RebuildPause); err != nil {
		t.Fatal(err)
	}
	if err := r.nx.Rebuild(fresh, RebuildStop); err != nil {
		t.Fatal(err)
	}
	st = waitRebuild(t, r.nx, fresh)
	if st.State != RebuildStopped || st.Done >= st.Total {
		t.Fatalf("stopped rebuild %+v", st)
	}
	if c := r.state(fresh); c.State != StateFaulted || c.Reason != ReasonOutOfSync {
		t.Fatalf("child after stop %+v", c)
	}
	if h := r.storedState(fresh); h.State != StateFaulted {
		t.Fatalf("stored %+v", h)
	}
	if err := r.nx.Rebuild(fresh, RebuildPause); !errors.Is(err, ErrNoRebuild) {
		t.Fatalf("pause after stop: %v", err)
	}
	// Adding it again rebuilds it from scratch.
	r.faults[fresh].ClearRules()
	if err := r.nx.AddChild(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if st = waitRebuild(t, r.nx, fresh); st.State != RebuildCompleted {
		t.Fatalf("second rebuild %+v", st)
	}
	if h := r.nx.RebuildHistory(); len(h) != 2 {
		t.Fatalf("history %+v", h)
	}
	verifyClean(t, r.nx, 2)
}

// A paused rebuild ends when its child is retired: nothing would resume it,
// and waiting for it must not hang. Adding the child again starts one
// rebuild, the one that status and controls then act on.
func TestPausedRebuildEndsWhenChildRetired(t *testing.T) {
	r, fresh := pausedRebuild(t)
	ctx := context.Background()
	if err := r.nx.FaultChild(ctx, fresh, ""); err != nil {
		t.Fatal(err)
	}
	st := waitRebuild(t, r.nx, fresh)
	if st.State != RebuildFailed || st.Done >= st.Total {
		t.Fatalf("paused rebuild of a retired child: %+v", st)
	}
	if n := len(r.nx.Rebuilds()); n != 0 {
		t.Fatalf("%d rebuilds still listed after the child was retired: %+v", n, r.nx.Rebuilds())
	}
	r.faults[fresh].ClearRules()
	if err := r.nx.AddChild(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if st = waitRebuild(t, r.nx, fresh); st.State != RebuildCompleted {
		t.Fatalf("second rebuild %+v", st)
	}
	if h := r.nx.RebuildHistory(); len(h) != 2 || h[0].State != RebuildFailed || h[1].State != RebuildCompleted {
		t.Fatalf("history %+v, want the failed rebuild then the completed one", h)
	}
	if n := len(r.nx.Rebuilds()); n != 0 {
		t.Fatalf("%d rebuilds still running after both ended: %+v", n, r.nx.Rebuilds())
	}
	verifyClean(t, r.nx, 2)
}

// AddChild waiting behind Close must not start a rebuild on the closed
// nexus (it would leave the child's device open and write the store after
// Close's last, clean record).
func TestAddChildWaitingBehindClose(t *testing.T) {
	r := newRig(t, 2, testSize, Config{RebuildSegment: 64 << 10})
	fresh := r.addDevice(2)
	r.nx.adminMu.Lock() // an administrative call in progress
	closed := make(chan struct{})
	go func() { r.nx.Close(); close(closed) }()
	time.Sleep(10 * time.Millisecond) // Close queues first, usually
	added := make(chan error, 1)
	go func() { added <- r.nx.AddChild(context.Background(), fresh) }()
	time.Sleep(10 * time.Millisecond)
	r.nx.adminMu.Unlock()
	<-closed
	err := <-added
	if err == nil {
		// AddChild ran before Close, which must then have stopped the
		// rebuild and closed the child's device.
		r.nx.stateMu.Lock()
		_, c := r.nx.findLocked(fresh)
		r.nx.stateMu.Unlock()
		if c == nil || !c.dev.(*handle).closed.Load() {
			t.Fatal("a child added around Close was left open after Close returned")
		}
		return
	}
	if !errors.Is(err, errClosed) {
		t.Fatalf("AddChild on a closing nexus: %v", err)
	}
	if rec, lerr := r.store.Load(context.Background(), r.nx.UUID()); lerr != nil || !rec.Clean {
		t.Fatalf("stored record after Close: %+v %v", rec, lerr)
	}
}

// A rebuild whose new child fails a write ends failed with the child faulted.
func TestRebuildTargetFailure(t *testing.T) {
	r := newRig(t, 2, testSize, Config{RebuildSegment: 64 << 10})
	fresh := r.addDevice(2)
	// The source is zeroes: the rebuild writes zeroes.
	r.faults[fresh].AddRule(faulty.Rule{Ops: faulty.OpWrite | faulty.OpWriteZeroes, After: 10})
	if err := r.nx.AddChild(context.Background(), fresh); err != nil {
		t.Fatal(err)
	}
	st := waitRebuild(t, r.nx, fresh)
	if st.State != RebuildFailed || st.Err == "" {
		t.Fatalf("rebuild %+v", st)
	}
	if c := r.state(fresh); c.State != StateFaulted || c.Reason != ReasonIOError {
		t.Fatalf("child %+v", c)
	}
}

// A source that fails a read during the rebuild is retired and the copy
// goes on from another online child.
func TestRebuildSourceFailure(t *testing.T) {
	r := newRig(t, 2, testSize, Config{RebuildSegment: 64 << 10})
	m := newModel(testSize)
	w := startWorkload(t, r.nx, m, 2, false)
	waitAcked(t, w, 100)
	w.finish(t)
	r.faults[r.uris[0]].AddRule(faulty.Rule{Ops: faulty.OpRead, After: 3})
	r.faults[r.uris[1]].AddRule(faulty.Rule{Ops: faulty.OpRead, After: 3})
	fresh := r.addDevice(2)
	if err := r.nx.AddChild(context.Background(), fresh); err != nil {
		t.Fatal(err)
	}
	st := waitRebuild(t, r.nx, fresh)
	// Both sources fail eventually: the first is retired, the second is
	// the last online child and is kept, so the rebuild fails.
	if st.State != RebuildFailed || len(r.onlineDevices()) != 1 {
		t.Fatalf("rebuild %+v children %+v", st, r.nx.Children())
	}
	for _, u := range r.uris {
		r.faults[u].ClearRules()
	}
	r.checkAll(m)
}

func TestRemoveRebuildingChild(t *testing.T) {
	r := newRig(t, 1, testSize, Config{RebuildSegment: 32 << 10})
	fresh := r.addDevice(1)
	r.faults[fresh].AddRule(faulty.Rule{Ops: faulty.OpWrite, Latency: 5 * time.Millisecond})
	if err := r.nx.AddChild(context.Background(), fresh); err != nil {
		t.Fatal(err)
	}
	if err := r.nx.Rebuild(fresh, RebuildPause); err != nil {
		t.Fatal(err)
	}
	if err := r.nx.RemoveChild(context.Background(), fresh); err != nil {
		t.Fatal(err)
	}
	if cs := r.nx.Children(); len(cs) != 1 || cs[0].URI != r.uris[0] {
		t.Fatalf("children %+v", cs)
	}
	h := r.nx.RebuildHistory()
	if len(h) != 1 || h[0].State != RebuildStopped {
		t.Fatalf("history %+v", h)
	}
	rec, _ := r.store.Load(context.Background(), r.nx.UUID())
	if len(rec.Children) != 1 {
		t.Fatalf("record %+v", rec)
	}
}

func TestBitmapRemap(t *testing.T) {
	const mib = 1 << 20
	old := []byte{0b1001} // segments 0 and 3 of 1 MiB
	finer := remapBitmap(old, mib, mib/4)
	for s := int64(0); s < finer.n; s++ {
		want := s < 4 || (s >= 12 && s < 16)
		if finer.test(s) != want {
			t.Fatalf("256 KiB segment %d: %v", s, finer.test(s))
		}
	}
	coarser := remapBitmap(old, mib, 2*mib)
	if !coarser.test(0) || !coarser.test(1) || coarser.test(2) {
		t.Fatalf("2 MiB segments %08b", coarser.bytes())
	}
	if b := resizeBitmap(coarser, 1); b.n != 1 || !b.test(0) {
		t.Fatal("resize")
	}
}
