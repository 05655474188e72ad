package target

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
)

// nsClaim is one controller's claimed handle of one namespace. In-flight
// I/O holds a reference, so that closing the handle (controller torn down,
// namespace removed, claim replaced or released) waits for the commands
// already executing on it instead of pulling the device from under them.
type nsClaim struct {
	ns   *namespace
	h    bdev.Claimed
	refs atomic.Int64 // commands using h, plus claimClosed once closing
	once sync.Once
	log  func(msg string, args ...any)
}

// claimClosed marks an nsClaim that takes no new references.
const claimClosed = 1 << 62

// get takes a reference; false once the claim is closing.
func (cl *nsClaim) get() bool {
	for {
		v := cl.refs.Load()
		if v&claimClosed != 0 {
			return false
		}
		if cl.refs.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

// put drops a reference; the last one out of a closing claim closes the
// handle.
func (cl *nsClaim) put() {
	if cl.refs.Add(-1) == claimClosed {
		cl.closeHandle()
	}
}

// close stops new references and closes the handle once the commands using
// it are done. Closing the handle keeps the device's claim.
func (cl *nsClaim) close() {
	for {
		v := cl.refs.Load()
		if v&claimClosed != 0 {
			return
		}
		if cl.refs.CompareAndSwap(v, v|claimClosed) {
			if v == 0 {
				cl.closeHandle()
			}
			return
		}
	}
}

func (cl *nsClaim) closeHandle() {
	cl.once.Do(func() {
		if err := cl.h.Close(); err != nil {
			cl.log("nvmf: closing a claimed namespace handle", "nsid", cl.ns.id, "err", err)
		}
	})
}

// device returns the device this controller's I/O to ns goes through: the
// controller's claimed handle of ns when it holds one, else ns's own device.
// A non-nil claim must be released with put. It fails (Namespace Not Ready)
// when the controller's claim is closing: the controller is being torn
// down, and the I/O must not run outside the claim. It allocates nothing.
func (c *controller) device(ns *namespace) (bdev.Device, *nsClaim, nvme.Status) {
	for {
		m := c.claims.Load()
		if m == nil {
			return ns.dev, nil, nvme.StatusSuccess
		}
		cl := (*m)[ns.id]
		if cl == nil || cl.ns != ns {
			return ns.dev, nil, nvme.StatusSuccess
		}
		if cl.get() {
			return cl.h, cl, nvme.StatusSuccess
		}
		if c.claims.Load() == m {
			return nil, nil, nvme.StatusNamespaceNotReady
		}
		// Replaced meanwhile (a new claim or a release): look again.
	}
}

// claimOf returns the controller's claim of ns, or nil.
func (c *controller) claimOf(ns *namespace) *nsClaim {
	if m := c.claims.Load(); m != nil {
		if cl := (*m)[ns.id]; cl != nil && cl.ns == ns {
			return cl
		}
	}
	return nil
}

// setClaim makes cl the controller's claim of its namespace, copying the map
// so that the I/O path reads it without a lock, and closes the claim it
// replaces.
func (c *controller) setClaim(cl *nsClaim) {
	c.updateClaims(func(m map[uint32]*nsClaim) { m[cl.ns.id] = cl })
}

// dropClaim removes cl from the controller's claims, if it is still there,
// and closes it.
func (c *controller) dropClaim(cl *nsClaim) {
	c.updateClaims(func(m map[uint32]*nsClaim) {
		if m[cl.ns.id] == cl {
			delete(m, cl.ns.id)
		}
	})
	cl.close()
}

// updateClaims applies change to a copy of the claims map and publishes it,
// then closes the claims the change removed.
func (c *controller) updateClaims(change func(map[uint32]*nsClaim)) {
	for {
		old := c.claims.Load()
		m := make(map[uint32]*nsClaim, 1)
		if old != nil {
			for k, v := range *old {
				m[k] = v
			}
		}
		change(m)
		if !c.claims.CompareAndSwap(old, &m) {
			continue
		}
		if old != nil {
			for k, v := range *old {
				if m[k] != v {
					v.close()
				}
			}
		}
		return
	}
}

// closeClaims closes every claim of a dead controller. Entries stay in the
// map: I/O still executing finds them closing and fails rather than fall
// back to the unclaimed device.
func (c *controller) closeClaims() {
	if m := c.claims.Load(); m != nil {
		for _, cl := range *m {
			cl.close()
		}
	}
}

// namespaceRemoved closes the controller's claim of a removed namespace.
func (c *controller) namespaceRemoved(ns *namespace) {
	if cl := c.claimOf(ns); cl != nil {
		c.dropClaim(cl)
	}
}

// claimFeature executes a claim Set Features (nvme.FeatClaim) in an admin
// worker: claim, raise or release the namespace for this controller.
func (c *controller) claimFeature(r *request) {
	if c.discovery {
		r.status = nvme.StatusInvalidField
		return
	}
	cmd, ok := nvme.UnmarshalClaimCommand(r.buf)
	if !ok {
		r.status = nvme.StatusInvalidField
		return
	}
	ns := c.sub.namespace(r.sqe.NSID())
	if ns == nil {
		r.status = nvme.StatusInvalidNS
		return
	}
	if ns.claimer == nil {
		r.status = nvme.StatusInvalidField
		return
	}
	// One claim operation at a time per controller, so that the device
	// sees them in the order the host sent them.
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	var err error
	switch cmd.Op {
	case nvme.ClaimOpClaim:
		if cmd.Owner == uuid.Nil {
			r.status = nvme.StatusInvalidField
			return
		}
		err = c.claim(ns, bdev.Claim{Owner: cmd.Owner, Epoch: cmd.Epoch})
	case nvme.ClaimOpRaise, nvme.ClaimOpRelease:
		cl := c.claimOf(ns)
		if cl == nil || !cl.get() {
			r.status = nvme.StatusCommandSequence // no claim to raise or release
			return
		}
		if cmd.Op == nvme.ClaimOpRaise {
			err = cl.h.Raise(c.ctx, cmd.Epoch)
		} else if err = cl.h.Release(c.ctx); err == nil {
			// The handle is fenced now; the controller's I/O goes to
			// the unclaimed device again, as a host that never claimed.
			c.dropClaim(cl)
		}
		cl.put()
	}
	if err != nil {
		c.t.log.Info("nvmf: claim operation refused", "cntlid", c.id, "host", c.hostNQN, "nsid", ns.id, "op", cmd.Op, "epoch", cmd.Epoch, "err", err)
		r.status = devStatus(err, nvme.StatusInternal)
	}
}

// claim claims ns for this controller and installs the handle.
func (c *controller) claim(ns *namespace, cl bdev.Claim) error {
	h, err := ns.claimer.Claim(c.ctx, cl)
	if err != nil {
		return err
	}
	nc := &nsClaim{ns: ns, h: h, log: c.t.log.Warn}
	c.setClaim(nc)
	// Installed after the checks of a concurrent teardown or removal
	// could see it: look again, or the handle would stay open for good.
	if c.isDead() {
		nc.close()
		return errors.New("controller torn down")
	}
	if c.sub.namespace(ns.id) != ns {
		c.dropClaim(nc)
		return errors.New("namespace removed")
	}
	c.t.log.Debug("nvmf: namespace claimed", "cntlid", c.id, "host", c.hostNQN, "nsid", ns.id, "owner", cl.Owner, "epoch", cl.Epoch)
	return nil
}

func (c *controller) isDead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// claimLog builds the claim state log page of namespace nsid.
func (c *controller) claimLog(nsid uint32) ([]byte, nvme.Status) {
	ns := c.sub.namespace(nsid)
	if ns == nil {
		return nil, nvme.StatusInvalidNS
	}
	if ns.claimer == nil {
		return nil, nvme.StatusInvalidField
	}
	st, err := ns.claimer.ClaimState(c.ctx)
	if err != nil {
		c.t.log.Warn("nvmf: reading a namespace's claim state", "nsid", nsid, "err", err)
		return nil, devStatus(err, nvme.StatusInternal)
	}
	l := nvme.ClaimLog{UUID: st.Identity.UUID, NGUID: st.Identity.NGUID, Owner: st.Owner, Epoch: st.Epoch, Blank: st.Blank}
	page := make([]byte, nvme.ClaimLogLen)
	l.Marshal(page)
	return page, nvme.StatusSuccess
}
