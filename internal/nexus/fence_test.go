package nexus

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// The fake replica itself follows the claim contract the nexus relies on.
func TestFakeReplicaContract(t *testing.T) {
	ctx := context.Background()
	m, _ := bdev.NewMalloc(1<<20, 512)
	r := newFakeReplica(uuid.New(), m)
	h := r.open()
	a, b := uuid.New(), uuid.New()
	buf := make([]byte, 512)
	if st, _ := h.ClaimState(ctx); !st.Blank || st.Owner != (uuid.UUID{}) || st.Identity.IsZero() {
		t.Fatalf("fresh state %+v", st)
	}
	c1, err := h.Claim(ctx, bdev.Claim{Owner: a, Epoch: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(buf, 0); !errors.Is(err, bdev.ErrOwned) {
		t.Fatalf("unclaimed write on an owned replica: %v", err)
	}
	if _, err := h.Claim(ctx, bdev.Claim{Owner: b, Epoch: 9}); !errors.Is(err, bdev.ErrOwned) {
		t.Fatalf("claim by another owner: %v", err)
	}
	if _, err := h.Claim(ctx, bdev.Claim{Owner: a, Epoch: 2}); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("claim below the epoch: %v", err)
	}
	if err := c1.Raise(ctx, 5); err != nil {
		t.Fatal(err)
	}
	c2, err := h.Claim(ctx, bdev.Claim{Owner: a, Epoch: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.WriteAt(buf, 0); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("superseded handle wrote: %v", err)
	}
	if err := c1.Release(ctx); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("release through a superseded handle: %v", err)
	}
	if _, err := c2.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := c2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if st := r.state(); st.Owner != (uuid.UUID{}) || st.Epoch != 5 || st.Blank {
		t.Fatalf("after release %+v", st)
	}
	if _, err := c2.ReadAt(buf, 0); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("released handle read: %v", err)
	}
}

func storedRecord(t *testing.T, s HealthStore, id string) HealthRecord {
	t.Helper()
	rec, err := s.Load(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// A child records its identity when first admitted; a device under the same
// URI with another identity (destroyed and created again) is refused by New
// as stale, even forced.
func TestIdentityChangedRefusedAtNew(t *testing.T) {
	r := newClaimRig(t, 2, testSize, Config{})
	for i, h := range storedRecord(t, r.store, r.id).Children {
		if want := r.reps[r.uris[i]].id.String(); h.Identity != want || want == "" {
			t.Fatalf("child %d recorded identity %q, want %q", i, h.Identity, want)
		}
	}
	if cs := r.nx.Children(); cs[0].Identity != r.reps[r.uris[0]].id.String() {
		t.Fatalf("status %+v", cs)
	}
	r.nx.Close()
	before := storedRecord(t, r.store, r.id)
	recorded := r.reps[r.uris[1]].id.String()
	r.addReplica(1) // destroyed and created again: another NGUID
	for _, force := range []bool{false, true} {
		_, err := New(context.Background(), r.config(Config{Force: force}))
		var se *StaleChildError
		if !errors.Is(err, ErrStaleChild) || !errors.As(err, &se) || len(se.Children) != 1 {
			t.Fatalf("force=%v: New over a replaced child: %v", force, err)
		}
		c := se.Children[0]
		if c.URI != r.uris[1] || c.State != StateIdentityChanged || c.Reason != ReasonIdentityChanged ||
			c.Recorded != recorded || c.Current != r.reps[r.uris[1]].id.String() {
			t.Fatalf("stale child %+v", c)
		}
		if !strings.Contains(err.Error(), "destroyed and created again") {
			t.Fatalf("error %q does not say what happened", err)
		}
	}
	if after := storedRecord(t, r.store, r.id); after.Generation != before.Generation {
		t.Fatalf("a refused New wrote the record: %+v", after)
	}
	// Left out, the other child serves.
	nx := r.create(Config{Children: r.uris[:1]})
	if cs := nx.Children(); len(cs) != 1 || cs[0].State != StateOnline {
		t.Fatalf("children %+v", cs)
	}
}

// OnlineChild refuses a replica that is not the one that went offline: a
// partial rebuild would leave it with holes. AddChild rebuilds it in full and
// records its identity.
func TestIdentityChangedAtOnlineChild(t *testing.T) {
	ctx := context.Background()
	r := newClaimRig(t, 3, testSize, Config{RebuildSegment: 64 << 10})
	m := newModel(testSize)
	w := startWorkload(t, r.nx, m, 4, false)
	waitAcked(t, w, 100)
	victim := r.uris[2]
	if err := r.nx.OfflineChild(ctx, victim); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, w, 100)
	r.addReplica(2)
	err := r.nx.OnlineChild(ctx, victim)
	if !errors.Is(err, ErrIdentityChanged) || !strings.Contains(err.Error(), "full rebuild") {
		t.Fatalf("OnlineChild over a replaced replica: %v", err)
	}
	if c := r.state(victim); c.State != StateFaulted || c.Reason != ReasonIdentityChanged {
		t.Fatalf("child %+v", c)
	}
	if h := r.storedState(victim); h.State != StateFaulted || h.Reason != ReasonIdentityChanged {
		t.Fatalf("stored %+v", h)
	}
	if err := r.nx.AddChild(ctx, victim); err != nil {
		t.Fatal(err)
	}
	st := waitRebuild(t, r.nx, victim)
	w.finish(t)
	if st.State != RebuildCompleted || st.Partial || st.Total != testSize {
		t.Fatalf("rebuild %+v", st)
	}
	if h := r.storedState(victim); h.State != StateOnline || h.Identity != r.reps[victim].id.String() {
		t.Fatalf("stored %+v, want the new identity", h)
	}
	verifyClean(t, r.nx, 3)
	r.checkAll(m)
}

// epochOf returns the epoch the fake replica of uri accepted last.
func (r *claimRig) epochOf(uri string) uint64 { return r.reps[uri].state().Epoch }

// The epoch rules: after New the record's epoch is above every child's
// earlier one and the children hold it; a child that leaves keeps its epoch
// while the others are raised; a rebuild target stays below the nexus's
// epoch until its copy is complete.
func TestEpochRules(t *testing.T) {
	ctx := context.Background()
	r := newClaimRig(t, 3, testSize, Config{UUID: "-"})
	r.reps[r.uris[1]].epoch = 7 // an earlier life
	nx := r.create(Config{RebuildSegment: 32 << 10, RebuildConcurrency: 2})
	r.nx = nx
	e := nx.Epoch()
	if e != 8 || storedRecord(t, r.store, r.id).Epoch != 8 {
		t.Fatalf("epoch %d, record %+v; want 8 (one above the highest child's)", e, storedRecord(t, r.store, r.id))
	}
	for _, u := range r.uris {
		if got := r.epochOf(u); got != e {
			t.Fatalf("child %s at epoch %d, want %d", u, got, e)
		}
	}
	// Leaving: faulted, then offline.
	if err := nx.FaultChild(ctx, r.uris[0], ""); err != nil {
		t.Fatal(err)
	}
	if nx.Epoch() != e+1 || storedRecord(t, r.store, r.id).Epoch != e+1 || r.epochOf(r.uris[0]) != e ||
		r.epochOf(r.uris[1]) != e+1 || r.epochOf(r.uris[2]) != e+1 {
		t.Fatalf("after a fault: nexus %d, children %d %d %d", nx.Epoch(), r.epochOf(r.uris[0]), r.epochOf(r.uris[1]), r.epochOf(r.uris[2]))
	}
	if err := nx.OfflineChild(ctx, r.uris[1]); err != nil {
		t.Fatal(err)
	}
	if nx.Epoch() != e+2 || r.epochOf(r.uris[1]) != e+1 || r.epochOf(r.uris[2]) != e+2 {
		t.Fatalf("after offline: nexus %d, children %d %d", nx.Epoch(), r.epochOf(r.uris[1]), r.epochOf(r.uris[2]))
	}
	// A rebuild: the target is claimed at the nexus's epoch of then, and
	// the nexus moves one above it.
	r.faults[r.uris[0]].AddRule(faulty.Rule{Ops: faulty.OpWrite | faulty.OpWriteZeroes, Latency: 2 * time.Millisecond})
	if err := nx.AddChild(ctx, r.uris[0]); err != nil {
		t.Fatal(err)
	}
	if err := nx.Rebuild(r.uris[0], RebuildPause); err != nil {
		t.Fatal(err)
	}
	if nx.Epoch() != e+3 || r.epochOf(r.uris[0]) != e+2 || r.epochOf(r.uris[2]) != e+3 {
		t.Fatalf("rebuilding: nexus %d, target %d, online %d", nx.Epoch(), r.epochOf(r.uris[0]), r.epochOf(r.uris[2]))
	}
	if cs := nx.Children(); cs[0].State != StateRebuilding || cs[0].Epoch != e+2 || cs[2].Epoch != e+3 {
		t.Fatalf("status %+v", cs)
	}
	r.faults[r.uris[0]].ClearRules()
	if err := nx.Rebuild(r.uris[0], RebuildResume); err != nil {
		t.Fatal(err)
	}
	if st := waitRebuild(t, nx, r.uris[0]); st.State != RebuildCompleted {
		t.Fatalf("rebuild %+v", st)
	}
	if r.epochOf(r.uris[0]) != nx.Epoch() || storedRecord(t, r.store, r.id).Epoch != nx.Epoch() {
		t.Fatalf("rebuilt child at %d, nexus at %d", r.epochOf(r.uris[0]), nx.Epoch())
	}
	// A child that cannot be raised leaves too.
	r.reps[r.uris[2]].mu.Lock()
	r.reps[r.uris[2]].failRaise = errors.New("pool metadata write failed")
	r.reps[r.uris[2]].mu.Unlock()
	if err := nx.OnlineChild(ctx, r.uris[1]); err != nil {
		t.Fatal(err)
	}
	if c := r.state(r.uris[2]); c.State != StateOffline || c.Reason != ReasonIOError || !strings.Contains(c.LastError, "fencing epoch") {
		t.Fatalf("child that failed its raise: %+v", c)
	}
	if r.epochOf(r.uris[2]) >= nx.Epoch() || r.epochOf(r.uris[0]) != nx.Epoch() {
		t.Fatalf("epochs: nexus %d, left %d, online %d", nx.Epoch(), r.epochOf(r.uris[2]), r.epochOf(r.uris[0]))
	}
	if st := waitRebuild(t, nx, r.uris[1]); st.State != RebuildCompleted || r.epochOf(r.uris[1]) != nx.Epoch() {
		t.Fatalf("rebuild %+v, child at %d, nexus at %d", st, r.epochOf(r.uris[1]), nx.Epoch())
	}
}

// countingStore counts saves.
type countingStore struct {
	HealthStore
	saves atomic.Int64
}

func (s *countingStore) Save(ctx context.Context, rec HealthRecord) error {
	s.saves.Add(1)
	return s.HealthStore.Save(ctx, rec)
}

// A second instance of the nexus (created elsewhere after a partition, say)
// claims the children at a higher epoch: the first one's writes fail, it
// stops serving, and it never writes the store again, which holds the
// second's record.
func TestFencedNexusStops(t *testing.T) {
	ctx := context.Background()
	store := &countingStore{HealthStore: NewMemStore()}
	r := newClaimRig(t, 2, testSize, Config{Store: store})
	old := r.nx
	buf := make([]byte, 4096)
	stamp(buf, 0, 1)
	if _, err := old.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	nx := r.create(Config{Force: true})
	if nx.Epoch() <= old.Epoch() {
		t.Fatalf("new instance at epoch %d, old at %d", nx.Epoch(), old.Epoch())
	}
	saves := store.saves.Load()
	want := storedRecord(t, store, r.id)
	if want.Generation != nx.Generation() || want.Epoch != nx.Epoch() {
		t.Fatalf("record %+v is not the new instance's", want)
	}

	stamp(buf, 0, 2)
	_, err := old.WriteAt(buf, 0)
	// Superseded too: a frontend sends the host to its other paths.
	if !errors.Is(err, ErrFencedNexus) || !errors.Is(err, bdev.ErrFenced) || !errors.Is(err, bdev.ErrSuperseded) {
		t.Fatalf("write through the fenced instance: %v", err)
	}
	if !old.Fenced() || !old.Failed() {
		t.Fatal("the fenced instance does not say so")
	}
	if _, err := old.ReadAt(buf, 0); !errors.Is(err, ErrFencedNexus) || !errors.Is(err, bdev.ErrSuperseded) {
		t.Fatalf("later read: %v", err)
	}
	if err := old.Flush(); !errors.Is(err, ErrFencedNexus) {
		t.Fatalf("later flush: %v", err)
	}
	if err := old.FaultChild(ctx, r.uris[1], ""); !errors.Is(err, ErrFencedNexus) {
		t.Fatalf("later fault: %v", err)
	}
	if err := old.Destroy(ctx); !errors.Is(err, ErrFencedNexus) {
		t.Fatalf("destroying the fenced instance: %v", err)
	}
	if store.saves.Load() != saves {
		t.Fatalf("the fenced instance saved %d records", store.saves.Load()-saves)
	}
	if got := storedRecord(t, store, r.id); got.Generation != want.Generation || got.Epoch != want.Epoch || got.Clean {
		t.Fatalf("record %+v, want the new instance's %+v", got, want)
	}
	// Its destroy released nothing: the new instance still serves, and
	// the write the old one failed never landed.
	if st := r.reps[r.uris[0]].state(); st.Owner != nx.owner {
		t.Fatalf("owner %s", st.Owner)
	}
	got := make([]byte, 4096)
	if _, err := nx.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	stamp(buf, 0, 1)
	if !bytes.Equal(got, buf) {
		t.Fatal("the fenced write landed")
	}
	stamp(buf, 0, 3)
	if _, err := nx.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
}

// A child that another nexus owns is refused, naming the owner; nothing is
// saved for a nexus that could not be created.
func TestOwnedChildRefused(t *testing.T) {
	r := newClaimRig(t, 2, testSize, Config{UUID: "-"})
	other := uuid.MustParse("0f0e0d0c-0b0a-4909-8807-060504030201")
	r.reps[r.uris[1]].owner = other
	_, err := New(context.Background(), r.config(Config{}))
	if !errors.Is(err, bdev.ErrOwned) || !strings.Contains(err.Error(), r.uris[1]) || !strings.Contains(err.Error(), other.String()) {
		t.Fatalf("New over an owned child: %v", err)
	}
	if _, err := r.store.Load(context.Background(), r.id); !errors.Is(err, ErrNoRecord) {
		t.Fatalf("record after a refused New: %v", err)
	}
	if st := r.reps[r.uris[0]].state(); st.Owner != (uuid.UUID{}) {
		t.Fatalf("the free child was claimed by a New that failed: %+v", st)
	}
	// Owned between the look and the claim: New gives up what it
	// claimed and the record it saved.
	r.reps[r.uris[1]].owner = uuid.UUID{}
	r.reps[r.uris[1]].failClaim = &bdev.OwnedError{Owner: other}
	_, err = New(context.Background(), r.config(Config{}))
	if !errors.Is(err, bdev.ErrOwned) || !strings.Contains(err.Error(), other.String()) {
		t.Fatalf("New losing a claim race: %v", err)
	}
	if _, err := r.store.Load(context.Background(), r.id); !errors.Is(err, ErrNoRecord) {
		t.Fatalf("record after a New that lost a claim: %v", err)
	}
	if st := r.reps[r.uris[0]].state(); st.Owner != (uuid.UUID{}) || r.reps[r.uris[0]].releases.Load() != 1 {
		t.Fatalf("the child claimed by a New that failed was not released: %+v", st)
	}
	r.reps[r.uris[1]].failClaim = nil
	r.reps[r.uris[1]].owner = other
	// AddChild refuses it too.
	nx := r.create(Config{Children: r.uris[:1]})
	if err := nx.AddChild(context.Background(), r.uris[1]); !errors.Is(err, bdev.ErrOwned) || !strings.Contains(err.Error(), other.String()) {
		t.Fatalf("AddChild of an owned child: %v", err)
	}
	if len(nx.Children()) != 1 {
		t.Fatalf("children %+v", nx.Children())
	}
}

func TestNexusUUIDMustParseForClaimableChildren(t *testing.T) {
	r := newClaimRig(t, 1, testSize, Config{UUID: "-"})
	cfg := r.config(Config{})
	cfg.UUID = "nexus-under-test"
	if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "not a UUID") {
		t.Fatalf("New with a UUID that is not one: %v", err)
	}
}

// Destroy releases every claim, the away children's too, and deletes the
// record; RemoveChild releases the removed child. Close keeps the claims.
func TestDestroyReleasesClaims(t *testing.T) {
	ctx := context.Background()
	r := newClaimRig(t, 4, testSize, Config{})
	if err := r.nx.RemoveChild(ctx, r.uris[3]); err != nil {
		t.Fatal(err)
	}
	if st := r.reps[r.uris[3]].state(); st.Owner != (uuid.UUID{}) {
		t.Fatalf("removed child still owned: %+v", st)
	}
	if err := r.nx.OfflineChild(ctx, r.uris[2]); err != nil {
		t.Fatal(err)
	}
	r.nx.Close()
	for _, u := range r.uris[:3] {
		if st := r.reps[u].state(); st.Owner != r.nx.owner {
			t.Fatalf("Close gave up the claim of %s: %+v", u, st)
		}
	}
	nx := r.create(Config{Children: r.uris[:3]})
	if err := nx.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	for _, u := range r.uris {
		if st := r.reps[u].state(); st.Owner != (uuid.UUID{}) {
			t.Fatalf("child %s still owned after Destroy: %+v", u, st)
		}
	}
	if _, err := r.store.Load(ctx, r.id); !errors.Is(err, ErrNoRecord) {
		t.Fatalf("record after Destroy: %v", err)
	}
	if err := nx.Close(); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("Close after Destroy: %v", err)
	}
	// Another nexus can have them now.
	r.id = "4a7d1c3e-9b2f-4e6a-8c5d-1f0e9d8c7b6a"
	r.create(Config{Children: r.uris})
}

// The nexus over claimed children is a conforming device.
func TestConformanceClaimed(t *testing.T) {
	r := newClaimRig(t, 3, testSize, Config{RebuildSegment: 64 << 10})
	if err := bdevtest.TestDevice(r.nx); err != nil {
		t.Fatal(err)
	}
}
