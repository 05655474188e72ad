package nexus

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// waitAcked lets the workload acknowledge at least n more writes.
func waitAcked(t *testing.T, w *workload, n int64) {
	t.Helper()
	target := w.acked.Load() + n
	deadline := time.Now().Add(30 * time.Second)
	for w.acked.Load() < target {
		if time.Now().After(deadline) {
			t.Fatalf("workload stalled at %d acknowledged writes", w.acked.Load())
		}
		select {
		case err := <-w.errs:
			t.Fatalf("workload: %v", err)
		default:
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFaultMatrix injects one kind of fault into one child of a 3-child
// nexus under a verified read/write workload. The client must see no error,
// the child must be retired (offline, with a write-intent bitmap) with the
// store saying so, and every acknowledged write must read back from the
// nexus and every online child; brought back, the child is resynced.
func TestFaultMatrix(t *testing.T) {
	cases := []struct {
		name    string
		inject  func(r *rig, victim string)
		retired bool
	}{
		{"write-error", func(r *rig, v string) {
			r.faults[v].AddRule(faulty.Rule{Ops: faulty.OpWrite, After: 20, Count: 1})
		}, true},
		{"read-error", func(r *rig, v string) {
			r.faults[v].AddRule(faulty.Rule{Ops: faulty.OpRead, After: 5})
		}, true},
		{"latency-spikes", func(r *rig, v string) {
			r.faults[v].AddRule(faulty.Rule{Latency: 5 * time.Millisecond, Probability: 0.05})
		}, false},
		{"torn-write", func(r *rig, v string) {
			r.faults[v].AddRule(faulty.Rule{Torn: true, After: 20, Count: 1})
		}, true},
		{"backing-gone", func(r *rig, v string) {
			r.mem[v].Close()
		}, true},
		{"flush-error", func(r *rig, v string) {
			r.faults[v].AddRule(faulty.Rule{Ops: faulty.OpFlush})
		}, true},
		{"unmap-error", func(r *rig, v string) {
			r.faults[v].AddRule(faulty.Rule{Ops: faulty.OpUnmap | faulty.OpWriteZeroes})
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 3, testSize, Config{})
			m := newModel(testSize)
			w := startWorkload(t, r.nx, m, 6, true)
			waitAcked(t, w, 100)
			victim := r.uris[1]
			tc.inject(r, victim)
			waitAcked(t, w, 200)
			// Flushes, unmaps and zeroes go through the fault too.
			if err := r.nx.Flush(); err != nil {
				t.Errorf("flush: %v", err)
			}
			last := int64(len(m.vers)-1) * unit
			if err := r.nx.WriteZeroes(last, unit); err != nil {
				t.Errorf("write-zeroes: %v", err)
			}
			if err := r.nx.Unmap(last, unit); err != nil {
				t.Errorf("unmap: %v", err)
			}
			w.finish(t)
			st := r.state(victim)
			if tc.retired {
				if st.State != StateOffline || st.Reason != ReasonIOError || st.DirtyBytes == 0 {
					t.Fatalf("victim %+v, want offline io-error with a bitmap", st)
				}
				if h := r.storedState(victim); h.State != StateOffline || h.Reason != ReasonIOError || len(h.Bitmap) == 0 {
					t.Fatalf("store says %+v, want offline io-error", h)
				}
				if len(r.onlineDevices()) != 2 {
					t.Fatalf("children %+v", r.nx.Children())
				}
			} else if st.State != StateOnline {
				t.Fatalf("victim %+v, want online", st)
			}
			for _, u := range r.uris {
				r.faults[u].ClearRules()
			}
			r.checkAll(m)
			rep, err := r.nx.Verify(context.Background())
			if err != nil || len(rep.Mismatches) != 0 {
				t.Fatalf("verify: %+v %v", rep, err)
			}
			if !tc.retired || tc.name == "backing-gone" {
				return // a device that lost its data is not brought back
			}
			if err := r.nx.OnlineChild(context.Background(), victim); err != nil {
				t.Fatal(err)
			}
			if rs := waitRebuild(t, r.nx, victim); rs.State != RebuildCompleted || !rs.Partial {
				t.Fatalf("resync %+v", rs)
			}
			r.checkAll(m)
			verifyClean(t, r.nx, 3)
		})
	}
}

// When every child fails a write, the write fails, and the children stay:
// none is known to be better than another.
func TestWriteFailingEverywhere(t *testing.T) {
	r := newRig(t, 2, testSize, Config{})
	for _, u := range r.uris {
		r.faults[u].AddRule(faulty.Rule{Ops: faulty.OpWrite, Count: 1})
	}
	buf := make([]byte, 4096)
	if _, err := r.nx.WriteAt(buf, 0); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("write: %v", err)
	}
	if len(r.onlineDevices()) != 2 {
		t.Fatalf("children %+v", r.nx.Children())
	}
	if _, err := r.nx.WriteAt(buf, 0); err != nil {
		t.Fatalf("retry: %v", err)
	}
}

func TestReadFailureOnLastChild(t *testing.T) {
	r := newRig(t, 1, testSize, Config{})
	id := r.faults[r.uris[0]].AddRule(faulty.Rule{Ops: faulty.OpRead, Count: 1})
	buf := make([]byte, 4096)
	if _, err := r.nx.ReadAt(buf, 0); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("read: %v", err)
	}
	if r.faults[r.uris[0]].Fired(id) != 1 || r.state(r.uris[0]).State != StateOnline {
		t.Fatalf("the last child was retired: %+v", r.nx.Children())
	}
}

// A store that cannot be written stops the nexus: the write that needed the
// store is not acknowledged and every later I/O fails.
func TestStoreFailureStopsNexus(t *testing.T) {
	fs := &failingStore{HealthStore: NewMemStore()}
	r := newRig(t, 3, testSize, Config{Store: fs})
	buf := make([]byte, 4096)
	stamp(buf, 0, 1)
	if _, err := r.nx.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	before, _ := fs.HealthStore.Load(context.Background(), r.nx.UUID())
	fs.armed.Store(true)
	r.faults[r.uris[2]].AddRule(faulty.Rule{Ops: faulty.OpWrite})
	stamp(buf, 0, 2)
	if _, err := r.nx.WriteAt(buf, 0); !errors.Is(err, ErrNexusFailed) {
		t.Fatalf("write needing the store: %v, want ErrNexusFailed", err)
	}
	if !r.nx.Failed() {
		t.Fatal("nexus not failed")
	}
	if _, err := r.nx.ReadAt(buf, 0); !errors.Is(err, ErrNexusFailed) {
		t.Fatalf("later read: %v", err)
	}
	if _, err := r.nx.WriteAt(buf, 4096); !errors.Is(err, ErrNexusFailed) {
		t.Fatalf("later write: %v", err)
	}
	if err := r.nx.Flush(); !errors.Is(err, ErrNexusFailed) {
		t.Fatalf("later flush: %v", err)
	}
	after, _ := fs.HealthStore.Load(context.Background(), r.nx.UUID())
	if after.Generation != before.Generation || after.Children[2].State != StateOnline {
		t.Fatalf("record changed: %+v", after)
	}
	// The store still says all three are current, so a recreated nexus
	// would read child 2, which missed version 2: that is why version 2
	// must not have been acknowledged, and was not.
}

// supersededStore refuses every save, once armed, as a store that holds
// a newer instance's record does.
type supersededStore struct {
	HealthStore
	armed atomic.Bool
}

func (s *supersededStore) Save(ctx context.Context, rec HealthRecord) error {
	if s.armed.Load() {
		return fmt.Errorf("a newer nexus saved: %w", bdev.ErrSuperseded)
	}
	return s.HealthStore.Save(ctx, rec)
}

// A store that names a newer instance (bdev.ErrSuperseded) stops the nexus
// as any store failure does, and its I/O errors, later ones too, say
// superseded (a frontend sends the host to its other paths); a store that
// is only down does not say so.
func TestSupersededStoreSaysSo(t *testing.T) {
	for _, superseded := range []bool{true, false} {
		ss := &supersededStore{HealthStore: NewMemStore()}
		fs := &failingStore{HealthStore: NewMemStore()}
		var st HealthStore = fs
		if superseded {
			st = ss
		}
		r := newRig(t, 2, testSize, Config{Store: st})
		ss.armed.Store(true)
		fs.armed.Store(true)
		r.faults[r.uris[1]].AddRule(faulty.Rule{Ops: faulty.OpWrite})
		buf := make([]byte, 4096)
		_, err := r.nx.WriteAt(buf, 0)
		if !errors.Is(err, ErrNexusFailed) || errors.Is(err, bdev.ErrSuperseded) != superseded {
			t.Fatalf("superseded %v: write needing the store: %v", superseded, err)
		}
		_, err = r.nx.ReadAt(buf, 0)
		if !errors.Is(err, ErrNexusFailed) || errors.Is(err, bdev.ErrSuperseded) != superseded {
			t.Fatalf("superseded %v: later read: %v", superseded, err)
		}
	}
}

// A read failure needs the store too before the data is served.
func TestStoreFailureOnReadRetirement(t *testing.T) {
	fs := &failingStore{HealthStore: NewMemStore()}
	r := newRig(t, 2, testSize, Config{Store: fs})
	fs.armed.Store(true)
	for _, u := range r.uris[:1] {
		r.faults[u].AddRule(faulty.Rule{Ops: faulty.OpRead})
	}
	buf := make([]byte, 4096)
	var err error
	for range 4 { // round-robin reaches child 0 within two reads
		if _, err = r.nx.ReadAt(buf, 0); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrNexusFailed) {
		t.Fatalf("read: %v", err)
	}
}

var _ bdev.Device = (*Nexus)(nil)
