package initiator

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// ErrNotClaimable is returned by ClaimState and Claim for a namespace whose
// target does not take claims for it (a device without claims, or a target
// that does not implement them).
var ErrNotClaimable = errors.New("nvmf initiator: namespace does not take claims")

// errSuperseded fails I/O on a ClaimedNamespace that a later Claim or a
// Release of the same Controller superseded. Made once: refusing allocates
// nothing.
var errSuperseded = fmt.Errorf("nvmf initiator: %w: a later claim or release through this controller superseded the handle", bdev.ErrFenced)

// errHandleClosed fails calls on a closed ClaimedNamespace.
var errHandleClosed = fmt.Errorf("nvmf initiator: claimed namespace handle: %w", bdev.ErrClosed)

// claimState is what a Controller knows of its claim of one namespace; the
// Namespace values of that NSID share it.
type claimState struct {
	// gen is bumped by every Claim and Release: a ClaimedNamespace of an
	// older generation is superseded.
	gen atomic.Uint64
	// claimable: the target reported a claim state for the namespace, so
	// claim commands may be sent to it.
	claimable atomic.Bool

	// Under Controller.mu, changed under Controller.claimMu too:
	// held is the claim the target confirmed, restored on every new
	// association (nil: none); pending is a claim whose command is in
	// flight or was lost with its connection, tried first when restoring.
	held, pending *bdev.Claim
}

// claimState returns the shared claim state of namespace nsid.
func (c *Controller) claimState(nsid uint32) *claimState {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.claims == nil {
		c.claims = make(map[uint32]*claimState)
	}
	cs := c.claims[nsid]
	if cs == nil {
		cs = &claimState{}
		c.claims[nsid] = cs
	}
	return cs
}

// claimed reports whether the controller holds (or is taking) a claim of
// the namespace.
func (c *Controller) claimed(cs *claimState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return cs.held != nil || cs.pending != nil
}

// sendClaim sends one claim command on an admin queue.
func sendClaim(q *hqueue, nsid uint32, cmd nvme.ClaimCommand) error {
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminSetFeatures)
	sqe.SetNSID(nsid)
	sqe.SetCDW(10, nvme.FeatClaim)
	data := make([]byte, nvme.ClaimCommandLen)
	cmd.Marshal(data)
	_, err := q.submit(&sqe, data, true)
	return err
}

// claimOp runs a claim operation of namespace nsid until the target answers
// it, through reconnects, within the command timeout. next is the claim the
// controller holds once the operation succeeded (nil after a release). On
// success it bumps cs's generation when bump is set, and returns the new
// generation. An error that is an nvme.Status is the target's answer: the
// device did not change. Any other error leaves the outcome unknown, and
// the next association restores next if the device accepts it, else the
// claim held before.
func (c *Controller) claimOp(ctx context.Context, nsid uint32, cs *claimState, cmd nvme.ClaimCommand, next *bdev.Claim, bump bool) (uint64, error) {
	deadline := time.Now().Add(c.opts.CommandTimeout)
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		s, err := c.session()
		if err != nil {
			return 0, err
		}
		c.claimMu.Lock()
		c.mu.Lock()
		if c.cur != s {
			// Reconnected since: that association's claims were
			// restored without this operation. Go again on it.
			c.mu.Unlock()
			c.claimMu.Unlock()
			continue
		}
		if next != nil {
			cs.pending = next
		}
		c.mu.Unlock()
		err = sendClaim(s.admin, nsid, cmd)
		var st nvme.Status
		answered := err == nil || errors.As(err, &st)
		var gen uint64
		c.mu.Lock()
		if answered {
			cs.pending = nil
		}
		if err == nil {
			cs.held = next
			if bump {
				gen = cs.gen.Add(1)
			}
		}
		c.mu.Unlock()
		c.claimMu.Unlock()
		if answered {
			return gen, err
		}
		if time.Now().After(deadline) {
			return 0, err
		}
	}
}

// reclaim restores the controller's claims on a new association, before
// anything else may use it; the caller holds claimMu. A claim whose command
// was lost (pending) is tried first, then the one held before. It returns an
// error wrapping bdev.ErrFenced when the target refused every claim it could
// restore for a namespace (the controller must not be used any more), or
// another error when the association failed.
func (c *Controller) reclaim(s *session) error {
	c.mu.Lock()
	type todo struct {
		nsid       uint32
		cs         *claimState
		candidates []*bdev.Claim
	}
	var work []todo
	for nsid, cs := range c.claims {
		var cands []*bdev.Claim
		if cs.pending != nil {
			cands = append(cands, cs.pending)
		}
		if cs.held != nil && (cs.pending == nil || *cs.held != *cs.pending) {
			cands = append(cands, cs.held)
		}
		if len(cands) > 0 {
			work = append(work, todo{nsid, cs, cands})
		}
	}
	c.mu.Unlock()
	for _, w := range work {
		var refused error
		restored := false
		for _, cl := range w.candidates {
			err := sendClaim(s.admin, w.nsid, nvme.ClaimCommand{Op: nvme.ClaimOpClaim, Owner: cl.Owner, Epoch: cl.Epoch})
			var st nvme.Status
			if err != nil && !errors.As(err, &st) {
				return err // the new association failed too
			}
			if err != nil {
				refused = fmt.Errorf("claim for owner %s at epoch %d refused: %w", cl.Owner, cl.Epoch, err)
				continue
			}
			c.mu.Lock()
			w.cs.held, w.cs.pending = cl, nil
			c.mu.Unlock()
			restored = true
			break
		}
		if !restored {
			return fmt.Errorf("nvmf initiator: %s %s namespace %d: %w: the claim could not be restored after reconnecting (%w); the controller is fenced for good, connect anew after claiming with a newer epoch",
				c.addr, c.subNQN, w.nsid, bdev.ErrFenced, refused)
		}
	}
	return nil
}

// ClaimState reads the namespace's identity and claim from the target's
// claim state log page. It fails with an error wrapping ErrNotClaimable when
// the target takes no claims for the namespace. ctx is checked before the
// command is sent; the command itself is bounded by the command timeout.
func (n *Namespace) ClaimState(ctx context.Context) (bdev.ClaimState, error) {
	if n.closed.Load() {
		return bdev.ClaimState{}, ErrClosed
	}
	return n.claimState(ctx)
}

func (n *Namespace) claimState(ctx context.Context) (bdev.ClaimState, error) {
	if err := ctx.Err(); err != nil {
		return bdev.ClaimState{}, err
	}
	var sqe pdu.SQE
	numd := uint32(nvme.ClaimLogLen/4 - 1)
	sqe.SetOpcode(nvme.AdminGetLogPage)
	sqe.SetNSID(n.nsid)
	sqe.SetCDW(10, nvme.LogClaim|numd<<16)
	page := make([]byte, nvme.ClaimLogLen)
	if _, err := n.c.admin(&sqe, page, false); err != nil {
		var st nvme.Status
		if errors.As(err, &st) && (st.SCT() == nvme.SCTGeneric && st.SC() == nvme.StatusInvalidField.SC() ||
			st.SCT() == nvme.SCTSpecific && st.SC() == nvme.StatusInvalidLogPage.SC()) {
			return bdev.ClaimState{}, fmt.Errorf("nvmf %s nsid %d: claim state: %w (%w)", n.c.subNQN, n.nsid, ErrNotClaimable, err)
		}
		return bdev.ClaimState{}, fmt.Errorf("nvmf %s nsid %d: claim state: %w", n.c.subNQN, n.nsid, err)
	}
	l, ok := nvme.UnmarshalClaimLog(page)
	if !ok {
		return bdev.ClaimState{}, fmt.Errorf("nvmf %s nsid %d: claim state: %w: the target's log page %#x is not a claim state", n.c.subNQN, n.nsid, ErrNotClaimable, nvme.LogClaim)
	}
	n.cs.claimable.Store(true)
	return bdev.ClaimState{
		Identity: bdev.Identity{UUID: l.UUID, NGUID: l.NGUID},
		Owner:    l.Owner,
		Epoch:    l.Epoch,
		Blank:    l.Blank,
	}, nil
}

// Claim claims the namespace for cl.Owner at cl.Epoch on the target, per the
// bdev.Claimer contract, and returns the handle to do I/O through. The
// claim belongs to the Controller: every I/O of the Controller to the
// namespace runs under it, and it is restored on every reconnect (see the
// package documentation). A refusal is an *bdev.OwnedError naming the owner,
// or a *bdev.StaleEpochError with the epochs, or wraps bdev.ErrFenced.
// Earlier handles of this Controller's namespace are superseded. ctx is
// checked before each attempt; the whole claim is bounded by the command
// timeout.
func (n *Namespace) Claim(ctx context.Context, cl bdev.Claim) (bdev.Claimed, error) {
	if n.closed.Load() {
		return nil, ErrClosed
	}
	h, err := n.claim(ctx, cl)
	if err != nil {
		return nil, err
	}
	return h, nil
}

func (n *Namespace) claim(ctx context.Context, cl bdev.Claim) (*ClaimedNamespace, error) {
	what := fmt.Sprintf("nvmf %s nsid %d: claim for owner %s at epoch %d", n.c.subNQN, n.nsid, cl.Owner, cl.Epoch)
	if cl.Owner == uuid.Nil {
		return nil, fmt.Errorf("%s: no owner: claim with the owning nexus's UUID", what)
	}
	// Claim commands go only to a target that reported a claim state: a
	// vendor command of the same identifier may mean anything elsewhere.
	if !n.cs.claimable.Load() {
		if _, err := n.claimState(ctx); err != nil {
			return nil, err
		}
	}
	next := cl
	gen, err := n.c.claimOp(ctx, n.nsid, n.cs, nvme.ClaimCommand{Op: nvme.ClaimOpClaim, Owner: cl.Owner, Epoch: cl.Epoch}, &next, true)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, n.claimRefused(ctx, cl, err))
	}
	return &ClaimedNamespace{n: n, gen: gen}, nil
}

// claimRefused turns a refused claim into the contract's errors, reading
// the claim state to name the owner or the epochs.
func (n *Namespace) claimRefused(ctx context.Context, cl bdev.Claim, err error) error {
	if !isStatus(err, nvme.StatusReservationConflict) {
		return err
	}
	if st, serr := n.claimState(ctx); serr == nil {
		if st.Owner != uuid.Nil && st.Owner != cl.Owner {
			return &bdev.OwnedError{Owner: st.Owner}
		}
		if cl.Epoch < st.Epoch {
			return &bdev.StaleEpochError{Epoch: cl.Epoch, Current: st.Epoch}
		}
	}
	return fmt.Errorf("%w (%w)", bdev.ErrFenced, err)
}

// isStatus reports whether err is the NVMe status want, whatever its DNR
// and retry bits.
func isStatus(err error, want nvme.Status) bool {
	var st nvme.Status
	return errors.As(err, &st) && st.SCT() == want.SCT() && st.SC() == want.SC()
}

// ioError maps the statuses of the claim extension to the bdev errors they
// stand for: Reservation Conflict to bdev.ErrFenced when the controller
// holds a claim of the namespace (a newer claim superseded it) and to
// bdev.ErrOwned when it does not (another nexus owns the namespace);
// Capacity Exceeded to bdev.ErrNoSpace. It runs only on errors.
func (n *Namespace) ioError(err error) error {
	switch {
	case isStatus(err, nvme.StatusReservationConflict):
		if n.c.claimed(n.cs) {
			return fmt.Errorf("%w (%w)", bdev.ErrFenced, err)
		}
		return fmt.Errorf("%w (%w)", bdev.ErrOwned, err)
	case isStatus(err, nvme.StatusCapacityExceeded):
		return fmt.Errorf("%w (%w)", bdev.ErrNoSpace, err)
	}
	return err
}

// ClaimedNamespace is a Namespace bound to a claim: a bdev.Claimed. Its I/O
// fails with an error wrapping bdev.ErrFenced once a later Claim or a Release
// through the same Controller superseded it (checked locally, without a
// command), or once the target refuses it because another host's newer
// claim superseded the Controller's. Closing it keeps the claim and leaves
// the Namespace open. Methods are safe for concurrent use.
type ClaimedNamespace struct {
	n      *Namespace
	gen    uint64
	closed atomic.Bool
}

var _ bdev.Claimed = (*ClaimedNamespace)(nil)

// check fails a call on a closed or superseded handle; it allocates nothing.
func (h *ClaimedNamespace) check() error {
	if h.closed.Load() {
		return errHandleClosed
	}
	if h.n.cs.gen.Load() != h.gen {
		return errSuperseded
	}
	return nil
}

// Namespace returns the namespace the handle was claimed from.
func (h *ClaimedNamespace) Namespace() *Namespace { return h.n }

// ReadAt reads len(p) bytes at off under the claim.
func (h *ClaimedNamespace) ReadAt(p []byte, off int64) (int, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	return h.n.rw("read", nvme.CmdRead, p, off)
}

// WriteAt writes p at off under the claim; acknowledged (not necessarily
// durable) when it returns nil.
func (h *ClaimedNamespace) WriteAt(p []byte, off int64) (int, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	return h.n.rw("write", nvme.CmdWrite, p, off)
}

var _ bdev.WriteStarter = (*ClaimedNamespace)(nil)

// StartWrite implements bdev.WriteStarter: WriteAt, sent now and waited
// for later.
func (h *ClaimedNamespace) StartWrite(p []byte, off int64) (bdev.Pending, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	return h.n.startWrite(p, off)
}

// Flush makes every acknowledged write durable, under the claim.
func (h *ClaimedNamespace) Flush() error {
	if err := h.check(); err != nil {
		return err
	}
	return h.n.flush()
}

// Unmap deallocates the range under the claim (see Namespace.Unmap).
func (h *ClaimedNamespace) Unmap(off, length int64) error {
	if err := h.check(); err != nil {
		return err
	}
	return h.n.zero("unmap", off, length, true)
}

// WriteZeroes zeroes the range under the claim.
func (h *ClaimedNamespace) WriteZeroes(off, length int64) error {
	if err := h.check(); err != nil {
		return err
	}
	return h.n.zero("write-zeroes", off, length, false)
}

// Size is the capacity in bytes.
func (h *ClaimedNamespace) Size() int64 { return h.n.size.Load() }

// BlockSize is the logical block size in bytes.
func (h *ClaimedNamespace) BlockSize() int { return h.n.bs }

// Close closes the handle; the claim and the Namespace stay. Idempotent.
func (h *ClaimedNamespace) Close() error {
	h.closed.Store(true)
	return nil
}

// Raise moves the claim to a higher epoch on the target, without
// superseding the handle; a lower or equal epoch changes nothing there. It
// fails with an error wrapping bdev.ErrFenced when the handle was
// superseded. Later reconnects restore the raised claim.
func (h *ClaimedNamespace) Raise(ctx context.Context, epoch uint64) error {
	if err := h.check(); err != nil {
		return err
	}
	n := h.n
	c := n.c
	c.mu.Lock()
	held := n.cs.held
	c.mu.Unlock()
	if held == nil {
		return fmt.Errorf("nvmf %s nsid %d: raise to epoch %d: %w", c.subNQN, n.nsid, epoch, errSuperseded)
	}
	next := *held
	next.Epoch = max(next.Epoch, epoch)
	if _, err := c.claimOp(ctx, n.nsid, n.cs, nvme.ClaimCommand{Op: nvme.ClaimOpRaise, Epoch: epoch}, &next, false); err != nil {
		return fmt.Errorf("nvmf %s nsid %d: raise to epoch %d: %w", c.subNQN, n.nsid, epoch, n.ioError(err))
	}
	// A claim or release that superseded the handle meanwhile wins: its
	// state is what the target holds now.
	if err := h.check(); err != nil {
		return err
	}
	return nil
}

// Release gives up the ownership on the target, durably (the device keeps
// its epoch); this handle and every other of the Controller's namespace are
// fenced afterwards, and the Controller's I/O to the namespace runs
// unclaimed again. Releasing a superseded handle fails with an error
// wrapping bdev.ErrFenced and changes nothing.
func (h *ClaimedNamespace) Release(ctx context.Context) error {
	if err := h.check(); err != nil {
		return err
	}
	n := h.n
	c := n.c
	if _, err := c.claimOp(ctx, n.nsid, n.cs, nvme.ClaimCommand{Op: nvme.ClaimOpRelease}, nil, true); err != nil {
		return fmt.Errorf("nvmf %s nsid %d: release: %w", c.subNQN, n.nsid, n.ioError(err))
	}
	return nil
}
