package nexus

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// TestQuiesceTakesAConsistentPoint quiesces a 3-way nexus under a running
// workload of writes and reads: while hold runs, every online child holds
// the same bytes (no write half-way through the fan-out), every write
// acknowledged before Quiesce was called is on each of them, reads through
// the nexus are served, and a write issued meanwhile waits until hold
// returns. Afterwards the workload goes on and every child matches it.
func TestQuiesceTakesAConsistentPoint(t *testing.T) {
	r := newRig(t, 3, testSize, Config{RebuildSegment: 64 << 10})
	m := newModel(testSize)
	w := startWorkload(t, r.nx, m, 6, true)
	for round := range 5 {
		if err := quiesceRound(t, r, m, w, round); err != nil {
			w.finish(t)
			t.Fatal(err)
		}
	}
	w.finish(t)
	// The held writes went to the last unit, which the workload's writers
	// may share: give it the model's view of it.
	buf := make([]byte, unit)
	last := len(m.vers) - 1
	if v := m.vers[last].Load(); v != 0 {
		stamp(buf, int64(last)*unit, v)
	}
	if _, err := r.nx.WriteAt(buf, int64(last)*unit); err != nil {
		t.Fatal(err)
	}
	if err := r.nx.Flush(); err != nil {
		t.Fatal(err)
	}
	r.checkAll(m)
}

// quiesceRound is one quiesce of TestQuiesceTakesAConsistentPoint.
func quiesceRound(t *testing.T, r *rig, m *model, w *workload, round int) error {
	{
		waitAcked(t, w, 200)
		pre := make([]uint64, len(m.vers))
		for i := range m.vers {
			pre[i] = m.vers[i].Load()
		}
		late := make(chan error, 1)
		var images [][]byte
		err := r.nx.Quiesce(context.Background(), func(ctx context.Context, online []string) ([]string, error) {
			if len(online) != 3 {
				t.Errorf("round %d: online children %v, want 3", round, online)
			}
			for _, u := range online {
				img := make([]byte, testSize)
				if _, err := r.mem[u].ReadAt(img, 0); err != nil {
					return nil, err
				}
				images = append(images, img)
			}
			// Reads are served while writes are held.
			p := make([]byte, unit)
			if _, err := r.nx.ReadAt(p, 0); err != nil {
				t.Errorf("round %d: read while quiesced: %v", round, err)
			}
			go func() {
				buf := make([]byte, unit)
				stamp(buf, testSize-unit, 1<<62+uint64(round))
				_, err := r.nx.WriteAt(buf, testSize-unit)
				late <- err
			}()
			time.Sleep(20 * time.Millisecond)
			select {
			case err := <-late:
				t.Errorf("round %d: a write completed while the nexus was quiesced (err %v)", round, err)
				late <- err
			default:
			}
			return nil, nil
		})
		if err != nil {
			return fmt.Errorf("round %d: quiesce: %w", round, err)
		}
		if err := <-late; err != nil {
			return fmt.Errorf("round %d: the held write failed: %w", round, err)
		}
		for i := 1; i < len(images); i++ {
			if !bytes.Equal(images[0], images[i]) {
				return fmt.Errorf("round %d: children differ at the quiesced point", round)
			}
		}
		img := images[0]
		for u := range pre[:len(pre)-1] { // the last unit is the held write's
			got := img[u*unit : (u+1)*unit]
			ver := binary.LittleEndian.Uint64(got[8:])
			if pre[u] != 0 && (binary.LittleEndian.Uint64(got[0:]) != uint64(u*unit) || ver < pre[u]) {
				return fmt.Errorf("round %d: unit %d holds version %d at the quiesced point; version %d was acknowledged before", round, u, ver, pre[u])
			}
		}
	}
	return nil
}

// TestQuiesceFaultsFailedChildren: the children hold reports failed are
// faulted (snapshot-failed) and persisted before writes resume; when every
// child failed, the last online one keeps serving.
func TestQuiesceFaultsFailedChildren(t *testing.T) {
	r := newRig(t, 3, testSize, Config{})
	herr := errors.New("snapshot refused")
	err := r.nx.Quiesce(context.Background(), func(_ context.Context, online []string) ([]string, error) {
		return online[1:2], herr
	})
	if !errors.Is(err, herr) {
		t.Fatalf("quiesce returned %v, want hold's error", err)
	}
	if st := r.state(r.uris[1]); st.State != StateFaulted || st.Reason != ReasonSnapshotFailed {
		t.Fatalf("child 1 after a failed snapshot: %+v", st)
	}
	if h := r.storedState(r.uris[1]); h.State != StateFaulted {
		t.Fatalf("child 1 stored as %+v, want faulted", h)
	}
	// Everyone fails: one is left online.
	if err := r.nx.Quiesce(context.Background(), func(_ context.Context, online []string) ([]string, error) {
		if len(online) != 2 {
			t.Errorf("online %v, want 2 children", online)
		}
		return online, nil
	}); err != nil {
		t.Fatal(err)
	}
	online := 0
	for _, c := range r.nx.Children() {
		if c.State == StateOnline {
			online++
		}
	}
	if online != 1 {
		t.Fatalf("%d children online after every one failed, want the last one kept: %+v", online, r.nx.Children())
	}
	buf := make([]byte, unit)
	if _, err := r.nx.WriteAt(buf, 0); err != nil {
		t.Fatalf("write after the quiesce: %v", err)
	}
}

// TestQuiesceBoundedByContext: a write stuck in a child keeps Quiesce from
// draining; when its context ends Quiesce fails without calling hold, and
// the writes behind it go on once the stuck one completes.
func TestQuiesceBoundedByContext(t *testing.T) {
	r := newRig(t, 2, testSize, Config{})
	r.faults[r.uris[0]].AddRule(faulty.Rule{Ops: faulty.OpWrite, Latency: 500 * time.Millisecond, Probability: 1, Count: 1})
	stuck := make(chan error, 1)
	go func() {
		_, err := r.nx.WriteAt(make([]byte, unit), 0)
		stuck <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the write reach the child
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	called := false
	err := r.nx.Quiesce(ctx, func(context.Context, []string) ([]string, error) { called = true; return nil, nil })
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || called {
		t.Fatalf("quiesce with a write stuck: err %v, hold called %v; want the deadline and no hold", err, called)
	}
	if err := <-stuck; err != nil {
		t.Fatalf("stuck write: %v", err)
	}
	if _, err := r.nx.WriteAt(make([]byte, unit), unit); err != nil {
		t.Fatalf("write after the abandoned quiesce: %v", err)
	}
}
