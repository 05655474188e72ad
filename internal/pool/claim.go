package pool

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
)

// claimState is a replica's owner and epoch as last made durable. A value
// is never changed once published; a claim publishes a new one.
type claimState struct {
	owner uuid.UUID // zero: unowned
	epoch uint64
}

var (
	_ bdev.Claimer = (*Replica)(nil)
	_ bdev.Claimed = (*ClaimedReplica)(nil)
)

// claimRecord is the log record that sets r's owner and epoch.
func claimRecord(r *replica, owner uuid.UUID, epoch uint64) *record {
	return &record{Type: recClaim, E: entry{UUID: r.uuid, HasID: true, ID: ident{NGUID: r.nguid, Owner: owner, Epoch: epoch}}}
}

// supersede fences every claimed handle of r made so far and returns the
// session of the next one. It waits for the I/O in flight (which holds r.io
// shared and checks the session under it), so when it returns none of a
// superseded handle's I/O is running and every later one fails.
func (r *replica) supersede() uint64 {
	r.io.Lock()
	s := r.session.Add(1)
	r.io.Unlock()
	return s
}

// ClaimState reports the replica's identity (UUID and NGUID), its owner and
// highest accepted epoch as made durable, and whether it is blank: a thin
// replica with no cluster allocated, which reads as zeroes everywhere (a
// thick replica is never blank). It writes nothing.
func (h *Replica) ClaimState(ctx context.Context) (bdev.ClaimState, error) {
	if err := ctx.Err(); err != nil {
		return bdev.ClaimState{}, err
	}
	if h.closed.Load() {
		return bdev.ClaimState{}, errHandleClosed
	}
	p, r := h.p, h.r
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.gone.Load() {
		return bdev.ClaimState{}, p.errf("replica %q was destroyed: %w", r.name, ErrNotFound)
	}
	c := r.claim.Load()
	return bdev.ClaimState{
		Identity: bdev.Identity{UUID: r.uuid, NGUID: r.nguid},
		Owner:    c.owner,
		Epoch:    c.epoch,
		Blank:    r.thin && r.owned == 0,
	}, nil
}

// Claim makes c the replica's claim and returns a new handle bound to it
// (see bdev.Claimer). It fails, changing nothing, with an error wrapping a
// *bdev.OwnedError when another owner holds the replica, and one wrapping a
// *bdev.StaleEpochError (errors.Is bdev.ErrFenced) when c.Epoch is lower
// than the replica's epoch. Otherwise it commits a claim record when the
// owner or epoch changes (durable before Claim returns), fences every
// earlier claimed handle of the replica, and returns the new one.
//
// The returned *ClaimedReplica is an independent handle: it counts as open
// (DestroyReplica and Destroy refuse while it is), and closing it, or the
// handle Claim was called on, leaves the other open. Closing it keeps the
// claim; Release gives it up.
func (h *Replica) Claim(ctx context.Context, c bdev.Claim) (bdev.Claimed, error) {
	cr, err := h.ClaimReplica(ctx, c)
	if err != nil {
		return nil, err
	}
	return cr, nil
}

// ClaimReplica is Claim returning the concrete handle type.
func (h *Replica) ClaimReplica(ctx context.Context, c bdev.Claim) (*ClaimedReplica, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, r := h.p, h.r
	if c.Owner == (uuid.UUID{}) {
		return nil, p.errf("replica %q: claim with the nil owner UUID; claim with the nexus UUID: %w", r.name, ErrInvalid)
	}
	if h.closed.Load() {
		return nil, errHandleClosed
	}
	if r.snap {
		return nil, p.errf("snapshot %q is read-only and cannot be claimed; clone it for a writable replica: %w", r.name, ErrInvalid)
	}
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	p.mu.Lock()
	if err := p.usableLocked(); err != nil {
		p.mu.Unlock()
		return nil, err
	}
	if r.gone.Load() || r.destroying {
		p.mu.Unlock()
		return nil, p.errf("replica %q was destroyed: %w", r.name, ErrNotFound)
	}
	cur := r.claim.Load()
	if cur.owner != (uuid.UUID{}) && cur.owner != c.Owner {
		p.mu.Unlock()
		return nil, p.errf("replica %q: claim by nexus %s refused: %w; release it there, or disown it (forced) first", r.name, c.Owner, &bdev.OwnedError{Owner: cur.owner})
	}
	if c.Epoch < cur.epoch {
		p.mu.Unlock()
		return nil, p.errf("replica %q: claim by nexus %s refused: %w", r.name, c.Owner, &bdev.StaleEpochError{Epoch: c.Epoch, Current: cur.epoch})
	}
	// Counted open from here, so that the pool's destroy stays refused.
	r.opens++
	p.mu.Unlock()
	if cur.owner != c.Owner || cur.epoch != c.Epoch {
		if err := p.commit(claimRecord(r, c.Owner, c.Epoch)); err != nil {
			p.mu.Lock()
			r.opens--
			p.mu.Unlock()
			return nil, p.errf("replica %q: claim by nexus %s at epoch %d: %w", r.name, c.Owner, c.Epoch, err)
		}
		slog.Info("replica claimed", "pool", p.sb.Name, "replica", r.name, "owner", c.Owner.String(), "epoch", c.Epoch)
	}
	return &ClaimedReplica{Replica: Replica{p: p, r: r, session: r.supersede()}}, nil
}

// ClaimedReplica is a replica handle bound to a claim (bdev.Claimed). Its
// I/O works like a Replica's until a later claim, a Release or a Disown
// supersedes it; from then on reads, writes, flushes, unmaps and
// write-zeroes fail with an error wrapping bdev.ErrFenced. The check is one
// atomic load under the lock every I/O holds anyway: no allocation, no
// extra lock.
type ClaimedReplica struct {
	Replica
}

// current returns nil when h is still the replica's current claim, else an
// error wrapping bdev.ErrFenced. Must hold r.claimMu.
func (h *ClaimedReplica) current(op string) error {
	if h.closed.Load() {
		return errHandleClosed
	}
	if h.r.session.Load() != h.session {
		return h.fenced(op)
	}
	return nil
}

// Raise moves the claim to a higher epoch, durably, keeping this handle
// valid; a lower or equal epoch is a no-op. It fails with bdev.ErrFenced
// when the handle was superseded.
func (h *ClaimedReplica) Raise(ctx context.Context, epoch uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, r := h.p, h.r
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	if err := h.current("raise"); err != nil {
		return err
	}
	cur := r.claim.Load()
	if epoch <= cur.epoch {
		return nil
	}
	if err := p.commit(claimRecord(r, cur.owner, epoch)); err != nil {
		return p.errf("replica %q: raise to epoch %d: %w", r.name, epoch, err)
	}
	return nil
}

// Release gives up the ownership durably (the epoch is kept) and fences
// this handle. Releasing a superseded handle fails with bdev.ErrFenced and
// changes nothing. The handle still has to be closed.
func (h *ClaimedReplica) Release(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, r := h.p, h.r
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	if err := h.current("release"); err != nil {
		return err
	}
	cur := r.claim.Load()
	if cur.owner != (uuid.UUID{}) {
		if err := p.commit(claimRecord(r, uuid.UUID{}, cur.epoch)); err != nil {
			return p.errf("replica %q: release: %w", r.name, err)
		}
	}
	r.supersede()
	slog.Info("replica released", "pool", p.sb.Name, "replica", r.name, "owner", cur.owner.String(), "epoch", cur.epoch)
	return nil
}

// fenced is the error of an operation on a superseded claimed handle.
func (h *Replica) fenced(op string) error {
	return fmt.Errorf("pool %q: replica %q: %s: a newer claim superseded this handle: %w", h.p.sb.Name, h.r.name, op, bdev.ErrFenced)
}

// owned is the error of a change through an unclaimed handle while the
// replica has an owner.
func (h *Replica) owned(op string, owner uuid.UUID) error {
	return fmt.Errorf("pool %q: replica %q: %s through an unclaimed handle refused: %w; do I/O through the owner's claim, or disown the replica first",
		h.p.sb.Name, h.r.name, op, &bdev.OwnedError{Owner: owner})
}
