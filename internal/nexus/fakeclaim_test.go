package nexus

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// fakeReplica is an in-memory claimable replica with the semantics of
// internal/bdev/claim.go: an identity, at most one owner, the highest epoch
// accepted, and a session that every claim (and release) advances, fencing
// the handles of earlier claims. Its data lives in inner, typically a
// faulty device over a malloc device, so faults compose with claims.
type fakeReplica struct {
	inner bdev.Device

	mu    sync.Mutex
	id    bdev.Identity
	owner uuid.UUID
	epoch uint64
	// failRaise, when set, fails every Raise; failClaim every Claim.
	failRaise, failClaim error

	session  atomic.Uint64
	written  atomic.Bool // not Blank
	claims   atomic.Int64
	raises   atomic.Int64
	releases atomic.Int64
}

func newFakeReplica(id uuid.UUID, inner bdev.Device) *fakeReplica {
	r := &fakeReplica{inner: inner, id: bdev.Identity{UUID: id}}
	rand.Read(r.id.NGUID[:])
	return r
}

// state returns the replica's claim state as the device would report it.
func (r *fakeReplica) state() bdev.ClaimState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bdev.ClaimState{Identity: r.id, Owner: r.owner, Epoch: r.epoch, Blank: !r.written.Load()}
}

// open is what an opener hands out: an unclaimed handle.
func (r *fakeReplica) open() *fakeOpen { return &fakeOpen{r: r} }

// fakeOpen is an unclaimed handle: it may read; it may write only while
// the replica has no owner.
type fakeOpen struct {
	r      *fakeReplica
	closed atomic.Bool
}

var (
	_ bdev.Claimer = (*fakeOpen)(nil)
	_ bdev.Claimed = (*fakeClaimed)(nil)
)

func (h *fakeOpen) check(write bool) error {
	if h.closed.Load() {
		return bdev.ErrClosed
	}
	if write {
		h.r.mu.Lock()
		owner := h.r.owner
		h.r.mu.Unlock()
		if owner != (uuid.UUID{}) {
			return &bdev.OwnedError{Owner: owner}
		}
	}
	return nil
}

func (h *fakeOpen) ReadAt(p []byte, off int64) (int, error) {
	if err := h.check(false); err != nil {
		return 0, err
	}
	return h.r.inner.ReadAt(p, off)
}

func (h *fakeOpen) WriteAt(p []byte, off int64) (int, error) {
	if err := h.check(true); err != nil {
		return 0, err
	}
	h.r.written.Store(true)
	return h.r.inner.WriteAt(p, off)
}

func (h *fakeOpen) Flush() error {
	if err := h.check(true); err != nil {
		return err
	}
	return h.r.inner.Flush()
}

func (h *fakeOpen) Unmap(off, length int64) error {
	if err := h.check(true); err != nil {
		return err
	}
	return h.r.inner.Unmap(off, length)
}

func (h *fakeOpen) WriteZeroes(off, length int64) error {
	if err := h.check(true); err != nil {
		return err
	}
	return h.r.inner.WriteZeroes(off, length)
}

func (h *fakeOpen) Size() int64    { return h.r.inner.Size() }
func (h *fakeOpen) BlockSize() int { return h.r.inner.BlockSize() }
func (h *fakeOpen) Close() error {
	if h.closed.Swap(true) {
		return bdev.ErrClosed
	}
	return nil
}

func (h *fakeOpen) ClaimState(context.Context) (bdev.ClaimState, error) {
	if h.closed.Load() {
		return bdev.ClaimState{}, bdev.ErrClosed
	}
	return h.r.state(), nil
}

func (h *fakeOpen) Claim(_ context.Context, c bdev.Claim) (bdev.Claimed, error) {
	if h.closed.Load() {
		return nil, bdev.ErrClosed
	}
	r := h.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failClaim != nil {
		return nil, r.failClaim
	}
	if r.owner != (uuid.UUID{}) && r.owner != c.Owner {
		return nil, &bdev.OwnedError{Owner: r.owner}
	}
	if c.Epoch < r.epoch {
		return nil, &bdev.StaleEpochError{Epoch: c.Epoch, Current: r.epoch}
	}
	r.owner, r.epoch = c.Owner, c.Epoch
	r.claims.Add(1)
	return &fakeClaimed{r: r, session: r.session.Add(1)}, nil
}

// fakeClaimed is a handle bound to one claim: every operation fails with
// bdev.ErrFenced once a later claim (or a release) superseded it.
type fakeClaimed struct {
	r       *fakeReplica
	session uint64
	closed  atomic.Bool
}

func (h *fakeClaimed) check() error {
	if h.closed.Load() {
		return bdev.ErrClosed
	}
	if h.r.session.Load() != h.session {
		return fmt.Errorf("fake replica %s: %w", h.r.id.UUID, bdev.ErrFenced)
	}
	return nil
}

func (h *fakeClaimed) ReadAt(p []byte, off int64) (int, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	return h.r.inner.ReadAt(p, off)
}

func (h *fakeClaimed) WriteAt(p []byte, off int64) (int, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	h.r.written.Store(true)
	return h.r.inner.WriteAt(p, off)
}

func (h *fakeClaimed) Flush() error {
	if err := h.check(); err != nil {
		return err
	}
	return h.r.inner.Flush()
}

func (h *fakeClaimed) Unmap(off, length int64) error {
	if err := h.check(); err != nil {
		return err
	}
	return h.r.inner.Unmap(off, length)
}

func (h *fakeClaimed) WriteZeroes(off, length int64) error {
	if err := h.check(); err != nil {
		return err
	}
	return h.r.inner.WriteZeroes(off, length)
}

func (h *fakeClaimed) Size() int64    { return h.r.inner.Size() }
func (h *fakeClaimed) BlockSize() int { return h.r.inner.BlockSize() }
func (h *fakeClaimed) Close() error {
	if h.closed.Swap(true) {
		return bdev.ErrClosed
	}
	return nil
}

func (h *fakeClaimed) Raise(_ context.Context, epoch uint64) error {
	if err := h.check(); err != nil {
		return err
	}
	r := h.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failRaise != nil {
		return r.failRaise
	}
	if epoch > r.epoch {
		r.epoch = epoch
	}
	r.raises.Add(1)
	return nil
}

func (h *fakeClaimed) Release(context.Context) error {
	if err := h.check(); err != nil {
		return err
	}
	r := h.r
	r.mu.Lock()
	defer r.mu.Unlock()
	r.owner = uuid.UUID{}
	r.session.Add(1)
	r.releases.Add(1)
	return nil
}

// claimRig is a rig whose children are fake replicas over faulty-wrapped
// malloc devices; the nexus has a real UUID.
type claimRig struct {
	*rig
	reps map[string]*fakeReplica
	id   string
}

const claimNexusUUID = "5b1e4a52-7c0d-4b8e-9a3f-2d6c8e1f0a47"

// newClaimRig creates k fake replicas (registered in the opener) and, unless
// cfg.UUID is "-", a nexus over them with cfg (no record is seeded: with
// blank replicas the nexus starts with every child online).
func newClaimRig(t *testing.T, k int, size int64, cfg Config) *claimRig {
	t.Helper()
	r := &claimRig{rig: &rig{t: t, size: size, opener: newTestOpener(), store: cfg.Store,
		mem: map[string]*bdev.Malloc{}, faults: map[string]*faulty.Device{}},
		reps: map[string]*fakeReplica{}, id: claimNexusUUID}
	if r.store == nil {
		r.store = NewMemStore()
	}
	for i := range k {
		r.uris = append(r.uris, r.addReplica(i))
	}
	if cfg.UUID == "-" {
		return r
	}
	r.nx = r.create(cfg)
	return r
}

// create makes a nexus over the rig's children with the rig's UUID.
func (r *claimRig) create(cfg Config) *Nexus {
	r.t.Helper()
	nx, err := New(context.Background(), r.config(cfg))
	if err != nil {
		r.t.Fatalf("New: %v", err)
	}
	r.t.Cleanup(func() { nx.Close() })
	return nx
}

func (r *claimRig) config(cfg Config) Config {
	cfg.UUID = r.id
	cfg.Name = "nx"
	if cfg.Size == 0 {
		cfg.Size = r.size
	}
	if cfg.Children == nil {
		cfg.Children = r.uris
	}
	cfg.Store = r.store
	cfg.Opener = r.opener
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	return cfg
}

// addReplica registers fake replica i (a new incarnation if one exists) and
// returns its URI.
func (r *claimRig) addReplica(i int) string {
	m, err := bdev.NewMalloc(r.size, 512)
	if err != nil {
		r.t.Fatal(err)
	}
	f := faulty.New(m, int64(i)+1)
	u := childURI(i)
	id := uuid.NewSHA1(uuid.NameSpaceURL, []byte(u))
	rep := newFakeReplica(id, f)
	r.mem[u], r.faults[u], r.reps[u] = m, f, rep
	r.opener.addOpen(u, func() bdev.Device { return rep.open() })
	return u
}
