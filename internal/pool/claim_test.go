package pool

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
)

var (
	nexusA = uuid.MustParse("aaaaaaaa-0000-4000-8000-000000000001")
	nexusB = uuid.MustParse("bbbbbbbb-0000-4000-8000-000000000002")
)

func mustClaim(t testing.TB, h *Replica, owner uuid.UUID, epoch uint64) *ClaimedReplica {
	t.Helper()
	c, err := h.Claim(context.Background(), bdev.Claim{Owner: owner, Epoch: epoch})
	if err != nil {
		t.Fatalf("Claim(%s, %d): %v", owner, epoch, err)
	}
	return c.(*ClaimedReplica)
}

func stateOf(t testing.TB, h *Replica) bdev.ClaimState {
	t.Helper()
	st, err := h.ClaimState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// ioErrors runs every kind of I/O through d and returns their errors.
func ioErrors(d bdev.Device) map[string]error {
	buf := make([]byte, 4096)
	_, rerr := d.ReadAt(buf, 0)
	_, werr := d.WriteAt(buf, 0)
	return map[string]error{
		"read": rerr, "write": werr, "flush": d.Flush(),
		"unmap": d.Unmap(0, 64*kib), "write-zeroes": d.WriteZeroes(0, 4096),
	}
}

func wantFenced(t *testing.T, what string, d bdev.Device) {
	t.Helper()
	for op, err := range ioErrors(d) {
		if !errors.Is(err, bdev.ErrFenced) {
			t.Fatalf("%s: %s: %v, want ErrFenced", what, op, err)
		}
	}
}

func wantIOWorks(t *testing.T, what string, d bdev.Device) {
	t.Helper()
	for op, err := range ioErrors(d) {
		if err != nil {
			t.Fatalf("%s: %s: %v", what, op, err)
		}
	}
}

// wantOwnedWrites checks that an unclaimed handle still reads but every
// change through it is refused naming the owner.
func wantOwnedWrites(t *testing.T, what string, d bdev.Device, owner uuid.UUID) {
	t.Helper()
	for op, err := range ioErrors(d) {
		if op == "read" {
			if err != nil {
				t.Fatalf("%s: read: %v", what, err)
			}
			continue
		}
		var oe *bdev.OwnedError
		if !errors.As(err, &oe) || oe.Owner != owner || !errors.Is(err, bdev.ErrOwned) || !strings.Contains(err.Error(), owner.String()) {
			t.Fatalf("%s: %s: %v, want an OwnedError naming %s", what, op, err, owner)
		}
	}
}

// TestClaimSemantics walks one replica through claims, supersession,
// raises, a stale claim, another owner's claim, release and disown.
func TestClaimSemantics(t *testing.T) {
	ctx := context.Background()
	p := mustCreate(t, newMalloc(t, 8*mib), CreateOptions{})
	defer p.Close()
	ri := mustReplica(t, p, "r", mib, true)
	h := mustOpen(t, p, "r")
	defer h.Close()

	st := stateOf(t, h)
	if st.Identity.UUID.String() != ri.UUID || st.Identity.NGUID != ri.NGUID || st.Identity.NGUID == ([16]byte{}) ||
		st.Owner != (uuid.UUID{}) || st.Epoch != 0 || !st.Blank {
		t.Fatalf("fresh replica: %+v (info %+v)", st, ri)
	}
	// Unowned: the unclaimed handle works as ever.
	wantIOWorks(t, "unclaimed handle of an unowned replica", h)

	c1 := mustClaim(t, h, nexusA, 5)
	defer c1.Close()
	data := make([]byte, 4096)
	fill(data, 1)
	if _, err := c1.WriteAt(data, 128*kib); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(t, h); st.Owner != nexusA || st.Epoch != 5 || st.Blank {
		t.Fatalf("after the claim and a write: %+v", st)
	}
	if ri, _ := p.ReplicaInfo("r"); ri.Owner != nexusA || ri.Epoch != 5 {
		t.Fatalf("ReplicaInfo after the claim: %+v", ri)
	}
	wantOwnedWrites(t, "unclaimed handle of an owned replica", h, nexusA)

	// Another owner is refused, whatever its epoch; so is a stale epoch.
	_, err := h.Claim(ctx, bdev.Claim{Owner: nexusB, Epoch: 100})
	var oe *bdev.OwnedError
	if !errors.As(err, &oe) || oe.Owner != nexusA {
		t.Fatalf("claim by another owner: %v, want an OwnedError naming %s", err, nexusA)
	}
	_, err = h.Claim(ctx, bdev.Claim{Owner: nexusA, Epoch: 4})
	var se *bdev.StaleEpochError
	if !errors.Is(err, bdev.ErrFenced) || !errors.As(err, &se) || se.Epoch != 4 || se.Current != 5 {
		t.Fatalf("claim at a stale epoch: %v, want a StaleEpochError 4 < 5", err)
	}
	if _, err := h.Claim(ctx, bdev.Claim{Epoch: 9}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("claim without an owner: %v, want ErrInvalid", err)
	}
	// The refused claims left c1 in charge.
	if _, err := c1.ReadAt(data, 128*kib); err != nil {
		t.Fatalf("read after refused claims: %v", err)
	}

	// The same owner again (same epoch: nothing written) supersedes c1.
	seq := p.seq
	c2 := mustClaim(t, h, nexusA, 5)
	defer c2.Close()
	if p.seq != seq {
		t.Fatalf("a claim changing nothing wrote %d records", p.seq-seq)
	}
	wantFenced(t, "handle superseded by a claim", c1)
	if err := c1.Raise(ctx, 9); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("Raise through a superseded handle: %v", err)
	}
	if err := c1.Release(ctx); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("Release through a superseded handle: %v", err)
	}
	if st := stateOf(t, h); st.Owner != nexusA || st.Epoch != 5 {
		t.Fatalf("a superseded handle changed the claim: %+v", st)
	}
	got := make([]byte, 4096)
	if _, err := c2.ReadAt(got, 128*kib); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read through the new handle: %v", err)
	}

	// Raise keeps the handle; a lower epoch is a no-op.
	if err := c2.Raise(ctx, 7); err != nil {
		t.Fatal(err)
	}
	if err := c2.Raise(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(t, h); st.Owner != nexusA || st.Epoch != 7 {
		t.Fatalf("after raises: %+v", st)
	}
	wantIOWorks(t, "raised handle", c2)

	// Release: unowned, epoch kept, the handle fenced, unclaimed writes
	// allowed again.
	if err := c2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(t, h); st.Owner != (uuid.UUID{}) || st.Epoch != 7 {
		t.Fatalf("after release: %+v", st)
	}
	wantFenced(t, "released handle", c2)
	wantIOWorks(t, "unclaimed handle after the release", h)
	if _, err := h.Claim(ctx, bdev.Claim{Owner: nexusB, Epoch: 6}); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("claim below the kept epoch: %v", err)
	}
	c3 := mustClaim(t, h, nexusB, 7)
	defer c3.Close()

	// Disown (forced): owner cleared, epoch kept, the handle fenced.
	if err := p.Disown("r"); err != nil {
		t.Fatal(err)
	}
	if ri, _ := p.ReplicaInfo("r"); ri.Owner != (uuid.UUID{}) || ri.Epoch != 7 {
		t.Fatalf("after Disown: %+v", ri)
	}
	wantFenced(t, "disowned handle", c3)
	wantIOWorks(t, "unclaimed handle after Disown", h)
	if err := p.Disown("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Disown of a missing replica: %v", err)
	}
	check(t, p)
}

// TestClaimedHandlesAreIndependent: a claimed handle stays open when the
// handle it was claimed through closes; it counts as open for destroy.
func TestClaimedHandlesAreIndependent(t *testing.T) {
	p := mustCreate(t, newMalloc(t, 8*mib), CreateOptions{})
	defer p.Close()
	mustReplica(t, p, "r", mib, false)
	h := mustOpen(t, p, "r")
	if st := stateOf(t, h); st.Blank {
		t.Fatal("a thick replica reports blank")
	}
	c := mustClaim(t, h, nexusA, 1)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	wantIOWorks(t, "claimed handle after its claimer closed", c)
	if err := p.DestroyReplica("r"); !errors.Is(err, ErrBusy) {
		t.Fatalf("destroy with a claimed handle open: %v, want ErrBusy", err)
	}
	if err := p.Destroy(); !errors.Is(err, ErrBusy) {
		t.Fatalf("pool destroy with a claimed handle open: %v, want ErrBusy", err)
	}
	// Closing a fenced handle still releases it.
	if err := p.Disown("r"); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("read through a closed claimed handle: %v", err)
	}
	if err := p.DestroyReplica("r"); err != nil {
		t.Fatal(err)
	}
}

// TestClaimDurable: owner and epoch survive a clean export and import, and
// a crash (import without Close); NGUIDs too. A replica destroyed and
// created again under the same UUID is another incarnation: another NGUID,
// no owner, epoch 0.
func TestClaimDurable(t *testing.T) {
	ctx := context.Background()
	mem := newMalloc(t, 8*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	a := mustReplica(t, p, "a", mib, true)
	b := mustReplica(t, p, "b", mib, false)
	ha, hb := mustOpen(t, p, "a"), mustOpen(t, p, "b")
	ca := mustClaim(t, ha, nexusA, 3)
	if err := ca.Raise(ctx, 8); err != nil {
		t.Fatal(err)
	}
	cb := mustClaim(t, hb, nexusB, 2)
	if err := cb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	for _, h := range []bdev.Device{ha, hb, ca, cb} {
		h.Close()
	}
	want := map[string]ReplicaInfo{"a": a, "b": b}
	checkClaims := func(q *Pool, stage string) {
		t.Helper()
		ri, _ := q.ReplicaInfo("a")
		if ri.NGUID != want["a"].NGUID || ri.Owner != nexusA || ri.Epoch != 8 {
			t.Fatalf("%s: a %+v", stage, ri)
		}
		ri, _ = q.ReplicaInfo("b")
		if ri.NGUID != want["b"].NGUID || ri.Owner != (uuid.UUID{}) || ri.Epoch != 2 {
			t.Fatalf("%s: b %+v", stage, ri)
		}
		h := mustOpen(t, q, "a")
		defer h.Close()
		if _, err := h.Claim(ctx, bdev.Claim{Owner: nexusA, Epoch: 7}); !errors.Is(err, bdev.ErrFenced) {
			t.Fatalf("%s: stale claim: %v", stage, err)
		}
		if _, err := h.Claim(ctx, bdev.Claim{Owner: nexusB, Epoch: 9}); !errors.Is(err, bdev.ErrOwned) {
			t.Fatalf("%s: claim by another owner: %v", stage, err)
		}
		wantOwnedWrites(t, stage+": unclaimed handle", h, nexusA)
	}
	// A crash: the claims are in the log only.
	q := mustImport(t, noClose{mem})
	checkClaims(q, "import without close")
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	// From the checkpoint Close wrote.
	r := mustImport(t, noClose{mem})
	checkClaims(r, "import after close")

	if err := r.DestroyReplica("a"); err != nil {
		t.Fatal(err)
	}
	again, err := r.CreateReplica(ReplicaOptions{Name: "a2", UUID: a.UUID, Size: mib, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	if again.NGUID == a.NGUID || again.NGUID == ([16]byte{}) || again.Owner != (uuid.UUID{}) || again.Epoch != 0 {
		t.Fatalf("recreated under the same UUID: %+v, first incarnation NGUID %x", again, a.NGUID)
	}
	h := mustOpen(t, r, "a2")
	st := stateOf(t, h)
	if st.Identity.UUID.String() != a.UUID || st.Identity.NGUID != again.NGUID {
		t.Fatalf("identity of the second incarnation %+v", st.Identity)
	}
	h.Close()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	s := mustImport(t, noClose{mem})
	defer s.Close()
	if ri, _ := s.ReplicaByUUID(a.UUID); ri.NGUID != again.NGUID || ri.Name != "a2" {
		t.Fatalf("after import: %+v", ri)
	}
}

// TestClaimFencesInFlightWrites: when Claim returns, no write of the
// handle it superseded is in flight, and none lands later: the new owner's
// write is never overwritten by the old one's.
func TestClaimFencesInFlightWrites(t *testing.T) {
	p := mustCreate(t, newMalloc(t, 16*mib), CreateOptions{})
	defer p.Close()
	mustReplica(t, p, "r", 4*mib, true)
	h := mustOpen(t, p, "r")
	defer h.Close()
	oldData, newData := make([]byte, 64*kib), make([]byte, 64*kib)
	fill(oldData, 1)
	fill(newData, 2)
	got := make([]byte, 64*kib)
	for round := range 50 {
		old := mustClaim(t, h, nexusA, uint64(2*round+1))
		off := int64(round%64) * 64 * kib
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					if _, err := old.WriteAt(oldData, off); err != nil {
						if !errors.Is(err, bdev.ErrFenced) {
							t.Errorf("old handle: %v", err)
						}
						return
					}
				}
			}()
		}
		// Let the old writers run, then claim over them.
		if _, err := old.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		cur := mustClaim(t, h, nexusA, uint64(2*round+2))
		if _, err := cur.WriteAt(newData, off); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if _, err := cur.ReadAt(got, off); err != nil || !bytes.Equal(got, newData) {
			t.Fatalf("round %d: a write of the superseded handle landed after the claim (%v)", round, err)
		}
		old.Close()
		cur.Close()
	}
}

// TestConcurrentClaimsOneWinner: of concurrent claims by different owners
// on an unowned replica exactly one wins; the others see its owner.
func TestConcurrentClaimsOneWinner(t *testing.T) {
	p := mustCreate(t, newMalloc(t, 8*mib), CreateOptions{})
	defer p.Close()
	mustReplica(t, p, "r", mib, true)
	for round := range 20 {
		h := mustOpen(t, p, "r")
		owners := make([]uuid.UUID, 6)
		for i := range owners {
			owners[i] = uuid.New()
		}
		var wg sync.WaitGroup
		results := make([]error, len(owners))
		handles := make([]bdev.Claimed, len(owners))
		for i, o := range owners {
			wg.Add(1)
			go func() {
				defer wg.Done()
				handles[i], results[i] = h.Claim(context.Background(), bdev.Claim{Owner: o, Epoch: uint64(round)})
			}()
		}
		wg.Wait()
		winner := -1
		for i, err := range results {
			if err == nil {
				if winner >= 0 {
					t.Fatalf("round %d: owners %d and %d both won", round, winner, i)
				}
				winner = i
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no claim won: %v", round, results)
		}
		for i, err := range results {
			var oe *bdev.OwnedError
			if i != winner && (!errors.As(err, &oe) || oe.Owner != owners[winner]) {
				t.Fatalf("round %d: loser %d: %v, want an OwnedError naming the winner", round, i, err)
			}
		}
		if st := stateOf(t, h); st.Owner != owners[winner] {
			t.Fatalf("round %d: owner %s, winner %s", round, st.Owner, owners[winner])
		}
		if err := handles[winner].Release(context.Background()); err != nil {
			t.Fatal(err)
		}
		handles[winner].Close()
		h.Close()
	}
	check(t, p)
}

// TestClaimOnClosedPoolOrDestroyedReplica: claims fail cleanly when there
// is nothing to claim, and change nothing.
func TestClaimOnClosedPoolOrDestroyedReplica(t *testing.T) {
	ctx := context.Background()
	mem := newMalloc(t, 8*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	mustReplica(t, p, "r", mib, true)
	h := mustOpen(t, p, "r")
	c := mustClaim(t, h, nexusA, 1)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Claim(ctx, bdev.Claim{Owner: nexusA, Epoch: 2}); !errors.Is(err, ErrClosed) {
		t.Fatalf("claim on a closed pool: %v", err)
	}
	if err := c.Raise(ctx, 5); !errors.Is(err, ErrClosed) {
		t.Fatalf("raise on a closed pool: %v", err)
	}
	if _, err := c.WriteAt(make([]byte, 512), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("write on a closed pool: %v", err)
	}
	q := mustImport(t, noClose{mem})
	defer q.Close()
	if ri, _ := q.ReplicaInfo("r"); ri.Owner != nexusA || ri.Epoch != 1 {
		t.Fatalf("after refused claims: %+v", ri)
	}
	h = mustOpen(t, q, "r")
	h.Close()
	if _, err := h.Claim(ctx, bdev.Claim{Owner: nexusA, Epoch: 2}); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("claim through a closed handle: %v", err)
	}
	if _, err := h.ClaimState(ctx); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("claim state through a closed handle: %v", err)
	}
}

// TestCheckIdentities: Check reports a replica without an NGUID and two
// replicas sharing one.
func TestCheckIdentities(t *testing.T) {
	p := mustCreate(t, newMalloc(t, 8*mib), CreateOptions{})
	defer p.Close()
	mustReplica(t, p, "a", mib, true)
	mustReplica(t, p, "b", mib, true)
	check(t, p)
	a, b := p.byName["a"], p.byName["b"]
	saved := b.nguid
	b.nguid = a.nguid
	if err := p.Check(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "same NGUID") {
		t.Fatalf("Check with a shared NGUID: %v", err)
	}
	b.nguid = [16]byte{}
	if err := p.Check(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "no NGUID") {
		t.Fatalf("Check with a missing NGUID: %v", err)
	}
	b.nguid = saved
	check(t, p)
}

// TestCreateOwned: a replica created with an owner is owned from its create
// record on, at epoch 0, across a crash and a clean close: only that owner
// may claim it, and an unclaimed handle cannot change it.
func TestCreateOwned(t *testing.T) {
	ctx := context.Background()
	mem := newMalloc(t, 8*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	ri, err := p.CreateReplica(ReplicaOptions{Name: "o", Size: mib, Thin: true, Owner: nexusA})
	if err != nil {
		t.Fatal(err)
	}
	if ri.Owner != nexusA || ri.Epoch != 0 {
		t.Fatalf("created %+v", ri)
	}
	check := func(q *Pool, stage string) {
		t.Helper()
		ri, err := q.ReplicaInfo("o")
		if err != nil || ri.Owner != nexusA || ri.Epoch != 0 {
			t.Fatalf("%s: %+v %v", stage, ri, err)
		}
		h := mustOpen(t, q, "o")
		defer h.Close()
		if st := stateOf(t, h); st.Owner != nexusA || st.Epoch != 0 || !st.Blank {
			t.Fatalf("%s: claim state %+v", stage, st)
		}
		wantOwnedWrites(t, stage+": unclaimed handle", h, nexusA)
		if _, err := h.Claim(ctx, bdev.Claim{Owner: nexusB, Epoch: 5}); !errors.Is(err, bdev.ErrOwned) {
			t.Fatalf("%s: claim by another owner: %v", stage, err)
		}
		c := mustClaim(t, h, nexusA, 0)
		wantIOWorks(t, stage+": the owner's claim", c)
		c.Close()
	}
	check(p, "created")
	// A crash: the owner is in the create record of the log.
	q := mustImport(t, noClose{mem})
	check(q, "import without close")
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	r := mustImport(t, noClose{mem})
	defer r.Close()
	check(r, "import after close")
}
