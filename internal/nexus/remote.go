package nexus

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
)

// NVMfRemote returns a Router.Remote resolver that connects to the
// subsystem over NVMe/TCP with the initiator and returns namespace 1. Each
// child gets its own controller.
//
// When the target takes claims for the namespace (a replica's share), the
// device returned is a bdev.Claimer, used exactly as a local replica: its
// ClaimState and Claim go to the target in-band, and the Claimed handle's
// I/O runs under the claim, which the initiator restores whenever it
// reconnects. Otherwise (a device without claims) it is a plain
// bdev.Device.
//
// The controller is disconnected when the last Claimed handle from the
// device is closed, or when the device is closed while no Claimed handle is
// open: the device and its handles are independent, as a local replica's
// are, and a child that closes only its handle disconnects too.
//
// The options decide how fast a vanished server turns into a retired child:
// every I/O waits for a reconnect up to CommandTimeout, so a nexus wants a
// CommandTimeout of seconds, not the initiator's default 30s, and a bounded
// MaxReconnect.
func NVMfRemote(opts initiator.Options) func(ctx context.Context, addr, nqn string) (bdev.Device, error) {
	return func(ctx context.Context, addr, nqn string) (bdev.Device, error) {
		ctrl, err := initiator.Connect(ctx, addr, nqn, opts)
		if err != nil {
			return nil, err
		}
		ns, err := ctrl.Namespace(1)
		if err != nil {
			ctrl.Close()
			return nil, fmt.Errorf("%s %s: %w", addr, nqn, err)
		}
		r := &remoteChild{Device: ns, ns: ns, ctrl: ctrl}
		switch _, err := ns.ClaimState(ctx); {
		case err == nil:
			return &claimableRemote{r}, nil
		case errors.Is(err, initiator.ErrNotClaimable):
			return r, nil
		default:
			ctrl.Close()
			return nil, fmt.Errorf("%s %s: %w", addr, nqn, err)
		}
	}
}

// remoteChild is a remote namespace that owns its controller. It embeds the
// namespace as a bdev.Device only, so that it is not a bdev.Claimer unless
// the target takes claims (claimableRemote).
type remoteChild struct {
	bdev.Device
	ns   *initiator.Namespace
	ctrl *initiator.Controller

	mu       sync.Mutex
	closed   bool // the device itself
	handles  int  // Claimed handles not closed
	released bool // the controller was closed
}

// Close closes the namespace, and disconnects the controller unless a
// Claimed handle from it is still open.
func (r *remoteChild) Close() error {
	r.ns.Close()
	r.mu.Lock()
	r.closed = true
	disconnect := r.handles == 0 && !r.released
	r.released = r.released || disconnect
	r.mu.Unlock()
	if disconnect {
		return r.ctrl.Close()
	}
	return nil
}

// Revalidate implements Revalidator: the namespace is identified again, so
// that the child (and its Claimed handles) report the size of a replica
// that grew since it was connected.
func (r *remoteChild) Revalidate(ctx context.Context) error { return r.ns.Revalidate(ctx) }

var _ Revalidator = (*remoteChild)(nil)

var _ bdev.WriteStarter = (*remoteChild)(nil)

// StartWrite implements bdev.WriteStarter: the namespace's.
func (r *remoteChild) StartWrite(p []byte, off int64) (bdev.Pending, error) {
	return r.ns.StartWrite(p, off)
}

// handleClosed accounts for a closed Claimed handle (handle false: a claim
// that failed and made none). The last handle disconnects the controller, as
// does a failed claim once the device is closed.
func (r *remoteChild) handleClosed(handle bool) error {
	r.mu.Lock()
	r.handles--
	disconnect := r.handles == 0 && !r.released && (handle || r.closed)
	r.released = r.released || disconnect
	r.mu.Unlock()
	if disconnect {
		return r.ctrl.Close()
	}
	return nil
}

// claimableRemote is a remoteChild whose target takes claims.
type claimableRemote struct {
	*remoteChild
}

var _ bdev.Claimer = (*claimableRemote)(nil)

// ClaimState reads the replica's identity and claim from its target.
func (r *claimableRemote) ClaimState(ctx context.Context) (bdev.ClaimState, error) {
	return r.ns.ClaimState(ctx)
}

// Claim claims the replica on its target and returns the handle to do I/O
// through; see initiator.Namespace.Claim.
func (r *claimableRemote) Claim(ctx context.Context, c bdev.Claim) (bdev.Claimed, error) {
	r.mu.Lock()
	if r.released {
		r.mu.Unlock()
		return nil, fmt.Errorf("claim of a closed remote child: %w", bdev.ErrClosed)
	}
	r.handles++
	r.mu.Unlock()
	h, err := r.ns.Claim(ctx, c)
	if err != nil {
		r.handleClosed(false)
		return nil, err
	}
	return &remoteClaimed{Claimed: h, child: r.remoteChild}, nil
}

// remoteClaimed is a Claimed handle of a remote child.
type remoteClaimed struct {
	bdev.Claimed
	child *remoteChild
	once  sync.Once
}

var _ bdev.WriteStarter = (*remoteClaimed)(nil)

// StartWrite implements bdev.WriteStarter: the claimed namespace's, which
// is one.
func (h *remoteClaimed) StartWrite(p []byte, off int64) (bdev.Pending, error) {
	if ws, ok := h.Claimed.(bdev.WriteStarter); ok {
		return ws.StartWrite(p, off)
	}
	_, err := h.Claimed.WriteAt(p, off)
	return nil, err
}

// Close closes the handle (the claim stays on the replica) and, when it is
// the last open handle of the child, disconnects the controller: the child
// device is unusable from then on.
func (h *remoteClaimed) Close() error {
	var err error
	h.once.Do(func() {
		h.Claimed.Close()
		err = h.child.handleClosed(true)
	})
	return err
}
