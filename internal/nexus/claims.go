package nexus

// Claims, fencing epochs and retirements (see the package documentation).

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
)

// opened is a child device just opened, with its claim state when it is
// claimable.
type opened struct {
	dev bdev.Device
	cl  bdev.Claimer // nil: not claimable
	st  bdev.ClaimState
}

// openChild opens uri and reads its claim state when it is claimable. An
// error means the child could not be opened (or asked).
func (n *Nexus) openChild(ctx context.Context, uri string) (opened, error) {
	dev, err := n.open.Open(ctx, uri)
	if err != nil {
		return opened{}, err
	}
	o := opened{dev: dev}
	if cl, ok := dev.(bdev.Claimer); ok {
		st, err := cl.ClaimState(ctx)
		if err != nil {
			dev.Close()
			return opened{}, fmt.Errorf("child %s: reading its claim state: %w", uri, err)
		}
		o.cl, o.st = cl, st
	}
	return o, nil
}

// checkClaimable refuses a claimable child that this nexus cannot claim:
// its UUID is not a UUID, or another nexus owns the child.
func (n *Nexus) checkClaimable(uri string, st bdev.ClaimState) error {
	if n.ownerErr != nil {
		return fmt.Errorf("nexus %s: child %s is claimable, and claims carry the nexus's UUID, but %q is not a UUID (%v): create the nexus with a UUID",
			n.name, uri, n.uuid, n.ownerErr)
	}
	if st.Owner != (uuid.UUID{}) && st.Owner != n.owner {
		return n.ownedError(uri, &bdev.OwnedError{Owner: st.Owner})
	}
	return nil
}

// ownedError says which nexus owns the child, wrapping err (an
// *bdev.OwnedError).
func (n *Nexus) ownedError(uri string, err error) error {
	owner := "another nexus"
	var oe *bdev.OwnedError
	if errors.As(err, &oe) {
		owner = "nexus " + oe.Owner.String()
	}
	return fmt.Errorf("nexus %s: child %s is owned by %s: destroy that nexus first (that releases its children), or disown the replica if that nexus is gone for good: %w",
		n.name, uri, owner, err)
}

// claim claims the device of c (opened, not yet published) at epoch e, and
// makes the claimed handle the one c's I/O goes through.
func (n *Nexus) claim(ctx context.Context, c *child, e uint64) error {
	h, err := c.base.(bdev.Claimer).Claim(ctx, bdev.Claim{Owner: n.owner, Epoch: e})
	switch {
	case errors.Is(err, bdev.ErrOwned):
		return n.ownedError(c.uri, err)
	case err != nil:
		return fmt.Errorf("claiming child %s at epoch %d: %w", c.uri, e, err)
	}
	c.claimed, c.dev, c.epoch = h, h, e
	return nil
}

// fence stops the nexus for good after cause, an error matching
// bdev.ErrFenced from a child: a newer instance claimed it. From now on
// every I/O fails and the health store is never written again (the record
// is the newer instance's). It returns the error to fail the operation
// with.
func (n *Nexus) fence(cause error) error {
	if !n.fenced.Swap(true) {
		n.log.Error("a newer instance of this nexus claimed its children; this one stops serving and no longer writes the health store", "err", cause)
	}
	return n.fencedErr()
}

func (n *Nexus) fencedErr() error {
	return fmt.Errorf("nexus %s: %w: %w: %w", n.name, ErrFencedNexus, bdev.ErrFenced, bdev.ErrSuperseded)
}

// stoppedErr is the error of every operation once the nexus stopped serving
// (fenced, or failed on the store); nil while it serves.
func (n *Nexus) stoppedErr() error {
	if n.fenced.Load() {
		return n.fencedErr()
	}
	if n.failed.Load() {
		// A store that named a newer instance (bdev.ErrSuperseded) stays
		// in the error: a frontend sends the host to its other paths.
		if p := n.failCause.Load(); p != nil && errors.Is(*p, bdev.ErrSuperseded) {
			return fmt.Errorf("nexus %s: %w: %w", n.name, ErrNexusFailed, *p)
		}
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	return nil
}

// memberLocked reports whether c is still a child of the nexus: not
// removed, nor replaced by a new open of its URI. Only a member's fencing
// fences the nexus; the handle of a child that was released or reopened is
// fenced by this very nexus.
func (n *Nexus) memberLocked(c *child) bool {
	_, cur := n.findLocked(c.uri)
	return cur == c
}

// reasonFor is the reason a child that failed with err leaves.
func reasonFor(err error) FaultReason {
	if errors.Is(err, bdev.ErrNoSpace) {
		return ReasonNoSpace
	}
	return ReasonIOError
}

// retireLocked takes the online child c out of service after cause: it goes
// offline with a write-intent bitmap of what it may lack (dirty.go): every
// write in flight, every region written since the last completed flush
// (except for ReasonAdmin: OfflineChild flushes the child instead), and
// [off, off+length), the write that failed on it (length 0: none). The
// caller saves the change with commitLocked(ctx, true).
func (n *Nexus) retireLocked(c *child, reason FaultReason, cause error, off, length int64) {
	// The state changes before the unflushed regions are read: a write
	// that marked its regions before this load finds them here, and one
	// that marks them later finds c offline when it settles.
	c.state.Store(int32(StateOffline))
	c.reason = reason
	if cause != nil {
		c.lastErr = cause.Error()
	}
	b := newBitmap(n.nseg.Load())
	if reason != ReasonAdmin {
		n.uf.Load().addTo(b)
	}
	n.locks.writes(func(o, e int64) { b.setRange(o/n.seg, (e-1)/n.seg) })
	if length > 0 {
		b.setRange(off/n.seg, (off+length-1)/n.seg)
	}
	c.dirty = b
	if reason != ReasonAdmin {
		n.retired.Add(1)
	}
	n.log.Warn("child offline", "child", c.uri, "reason", reason, "dirty_bytes", b.count()*n.seg, "err", cause)
}

// commitLocked saves the current state and publishes it. leave says that
// online children left: the epoch goes up in the same record, and the online
// children that remain are raised to it afterwards, so that the ones that
// left hold a lower epoch than the ones that stayed.
func (n *Nexus) commitLocked(ctx context.Context, leave bool) error {
	if leave {
		n.epoch++
	}
	if err := n.saveLocked(ctx, nil); err != nil {
		return err
	}
	n.publishLocked()
	if leave {
		return n.raiseOnlineLocked(ctx)
	}
	return nil
}

// raiseOnlineLocked raises every online claimed child to the nexus's epoch.
// A child whose raise fails leaves (offline, io-error), which raises the
// epoch again, unless it is the last online child: that one stays, since
// nothing better is left to serve from. It returns an error only when the
// nexus stopped (fenced, or the store failed).
func (n *Nexus) raiseOnlineLocked(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	for {
		left := false
		for _, c := range n.children {
			if c.st() != StateOnline || c.claimed == nil || c.epoch >= n.epoch {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, storeTimeout)
			err := c.claimed.Raise(rctx, n.epoch)
			cancel()
			switch {
			case err == nil:
				c.epoch = n.epoch
			case errors.Is(err, bdev.ErrFenced):
				return n.fence(fmt.Errorf("raising child %s to epoch %d: %w", c.uri, n.epoch, err))
			case n.onlineCountLocked() > 1:
				n.retireLocked(c, ReasonIOError, fmt.Errorf("raising its fencing epoch to %d: %w", n.epoch, err), 0, 0)
				left = true
			default:
				n.log.Error("the last online child failed to raise its fencing epoch; it stays online", "child", c.uri, "epoch", n.epoch, "err", err)
			}
		}
		if !left {
			return nil
		}
		n.epoch++
		if err := n.saveLocked(ctx, nil); err != nil {
			return err
		}
		n.publishLocked()
	}
}

// releaseClaim gives up this nexus's claim on c, durably: through its open
// handle, or else by opening the child and claiming it again to release it
// (a child that is away). A child that this nexus does not own is left as
// it is.
func (n *Nexus) releaseClaim(ctx context.Context, c *child) error {
	if c.claimed != nil && !c.closed {
		if err := c.claimed.Release(ctx); err != nil {
			return fmt.Errorf("releasing child %s: %w", c.uri, err)
		}
		return nil
	}
	o, err := n.openChild(ctx, c.uri)
	if err != nil {
		return fmt.Errorf("releasing child %s: %w", c.uri, err)
	}
	defer o.dev.Close()
	if o.cl == nil || n.ownerErr != nil || o.st.Owner != n.owner {
		return nil
	}
	h, err := o.cl.Claim(ctx, bdev.Claim{Owner: n.owner, Epoch: o.st.Epoch})
	if err == nil {
		err = h.Release(ctx)
		h.Close()
	}
	if err != nil {
		return fmt.Errorf("releasing child %s: %w", c.uri, err)
	}
	return nil
}
