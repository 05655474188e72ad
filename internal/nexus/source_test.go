package nexus

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// fill writes p's pattern (byte v everywhere) over the whole backing of
// child uri, behind the nexus's back, as a replica with data would hold.
func (r *claimRig) fill(uri string, v byte) {
	r.t.Helper()
	buf := bytes.Repeat([]byte{v}, int(r.size))
	if _, err := r.mem[uri].WriteAt(buf, 0); err != nil {
		r.t.Fatal(err)
	}
	r.reps[uri].written.Store(true)
}

// holds reports whether d holds v in every byte.
func holds(t *testing.T, d bdev.Device, v byte) bool {
	t.Helper()
	buf := make([]byte, d.Size())
	if _, err := d.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	return bytes.Count(buf, []byte{v}) == len(buf)
}

// A nexus with no health record does not know which children are current:
// it serves one source and rebuilds the others from it, never reading them
// before; children that are all blank, or that VerifyInSync finds
// identical, are all in sync at once.
func TestNoRecordSource(t *testing.T) {
	cases := []struct {
		name   string
		fill   []byte   // per child; 0 leaves it blank
		epochs []uint64 // per child
		local  int      // index of the local child, -1 for none
		cfg    func(r *claimRig) Config
		source int // -1: every child in sync without a copy
	}{
		{"highest-epoch", []byte{1, 2, 3}, []uint64{3, 5, 4}, -1, nil, 1},
		{"blank-is-never-the-source", []byte{1, 0, 3}, []uint64{3, 9, 4}, -1, nil, 2},
		{"tie-goes-to-the-local-child", []byte{1, 2, 3}, []uint64{5, 5, 5}, 2, nil, 2},
		{"tie-goes-to-the-first-listed", []byte{1, 2, 3}, []uint64{5, 5, 5}, -1, nil, 0},
		{"named-source", []byte{1, 2, 3}, []uint64{3, 5, 4}, -1, func(r *claimRig) Config { return Config{Source: r.uris[2]} }, 2},
		{"all-blank", []byte{0, 0, 0}, []uint64{3, 5, 4}, -1, nil, -1},
		{"verify-identical", []byte{7, 7, 7}, []uint64{3, 5, 4}, -1, func(*claimRig) Config { return Config{VerifyInSync: true} }, -1},
		{"verify-different", []byte{7, 7, 8}, []uint64{3, 5, 4}, -1, func(*claimRig) Config { return Config{VerifyInSync: true} }, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newClaimRig(t, 3, testSize, Config{UUID: "-"})
			for i, u := range r.uris {
				if tc.fill[i] != 0 {
					r.fill(u, tc.fill[i])
				}
				r.reps[u].epoch = tc.epochs[i]
				if i == tc.local {
					r.opener.local[u] = true
				}
			}
			var cfg Config
			if tc.cfg != nil {
				cfg = tc.cfg(r)
			}
			cfg.RebuildSegment = 64 << 10
			if tc.source >= 0 {
				// Slow copies, so that the nexus serves while they run;
				// reads of the targets are counted.
				for i, u := range r.uris {
					if i != tc.source {
						r.faults[u].AddRule(faulty.Rule{Ops: faulty.OpWrite | faulty.OpWriteZeroes, Latency: 2 * time.Millisecond})
					}
				}
			}
			nx := r.create(cfg)
			r.nx = nx
			// Counted from now on: VerifyInSync reads every child
			// before serving.
			reads := map[string]int{}
			for i, u := range r.uris {
				if i != tc.source {
					reads[u] = r.faults[u].AddRule(faulty.Rule{Ops: faulty.OpRead, Latency: time.Nanosecond})
				}
			}
			if tc.source < 0 {
				if len(nx.Rebuilds()) != 0 || nx.Stats().RebuildBytes != 0 {
					t.Fatalf("children in sync were copied: %+v", nx.Rebuilds())
				}
				for _, c := range nx.Children() {
					if c.State != StateOnline {
						t.Fatalf("children %+v", nx.Children())
					}
				}
				verifyClean(t, nx, 3)
				return
			}
			src := r.uris[tc.source]
			want := tc.fill[tc.source]
			// Paused (each copy is slow, so they are far from done),
			// the targets stay rebuilding while the nexus serves.
			for u := range reads {
				if err := nx.Rebuild(u, RebuildPause); err != nil {
					t.Fatal(err)
				}
			}
			for i, c := range nx.Children() {
				if i == tc.source && c.State != StateOnline || i != tc.source && c.State != StateRebuilding {
					t.Fatalf("source %s: children %+v", src, nx.Children())
				}
				if h := r.storedState(c.URI); h.State != c.State {
					t.Fatalf("stored %+v for %+v", h, c)
				}
			}
			// The targets are claimed below the nexus's epoch until rebuilt.
			for i, u := range r.uris {
				if i != tc.source && r.epochOf(u) >= nx.Epoch() || i == tc.source && r.epochOf(u) != nx.Epoch() {
					t.Fatalf("child %s at epoch %d, nexus at %d", u, r.epochOf(u), nx.Epoch())
				}
			}
			// Served while the copies run: only the source's data.
			if !holds(t, nx, want) {
				t.Fatal("the nexus served data that is not the source's")
			}
			for u, id := range reads {
				if f := r.faults[u].Fired(id); f != 0 {
					t.Fatalf("child %s was read %d times before its rebuild", u, f)
				}
			}
			for u := range reads {
				r.faults[u].ClearRules()
				if err := nx.Rebuild(u, RebuildResume); err != nil {
					t.Fatal(err)
				}
			}
			waitInSync(t, nx)
			for _, u := range r.uris {
				if !holds(t, r.mem[u], want) || r.epochOf(u) != nx.Epoch() {
					t.Fatalf("child %s after the rebuilds: not a copy of the source, or at epoch %d of %d", u, r.epochOf(u), nx.Epoch())
				}
			}
			verifyClean(t, nx, 3)
		})
	}
}

// Children that are not claimable have no epoch: without a record the first
// listed is the source, a local one preferred.
func TestNoRecordSourceNotClaimable(t *testing.T) {
	for _, local := range []int{-1, 2} {
		o := newTestOpener()
		var uris []string
		var mems []*bdev.Malloc
		for i := range 3 {
			m, _ := bdev.NewMalloc(testSize, 512)
			m.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, testSize), 0)
			o.add(childURI(i), m)
			uris = append(uris, childURI(i))
			mems = append(mems, m)
		}
		want := 0
		if local >= 0 {
			o.local[uris[local]] = true
			want = local
		}
		nx, err := New(context.Background(), Config{UUID: "plain", Children: uris, Store: NewMemStore(), Opener: o,
			Force: true, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range nx.Children() {
			if (i == want) != (c.State == StateOnline) {
				t.Fatalf("local %d: children %+v", local, nx.Children())
			}
		}
		waitInSync(t, nx)
		for i, m := range mems {
			if !holds(t, m, byte(want+1)) {
				t.Fatalf("local %d: child %d is not a copy of child %d", local, i, want)
			}
		}
		nx.Close()
	}
}

// A rebuild writes a zero segment of the source as write-zeroes, which a
// thin target does not allocate for.
func TestRebuildZeroSegmentsAsWriteZeroes(t *testing.T) {
	const seg = 64 << 10
	r := newRig(t, 1, testSize, Config{RebuildSegment: seg})
	buf := bytes.Repeat([]byte{9}, 4096)
	if _, err := r.nx.WriteAt(buf, 3*seg+4096); err != nil {
		t.Fatal(err)
	}
	fresh := r.addDevice(1)
	writes := r.faults[fresh].AddRule(faulty.Rule{Ops: faulty.OpWrite, Latency: time.Nanosecond})
	zeroes := r.faults[fresh].AddRule(faulty.Rule{Ops: faulty.OpWriteZeroes, Latency: time.Nanosecond})
	if err := r.nx.AddChild(context.Background(), fresh); err != nil {
		t.Fatal(err)
	}
	if st := waitRebuild(t, r.nx, fresh); st.State != RebuildCompleted || st.Done != testSize {
		t.Fatalf("rebuild %+v", st)
	}
	if w, z := r.faults[fresh].Fired(writes), r.faults[fresh].Fired(zeroes); w != 1 || z != testSize/seg-1 {
		t.Fatalf("%d data writes and %d write-zeroes, want 1 and %d", w, z, testSize/seg-1)
	}
	verifyClean(t, r.nx, 2)
}
