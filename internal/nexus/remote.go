package nexus

import (
	"context"
	"fmt"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
)

// NVMfRemote returns a Router.Remote resolver that connects to the
// subsystem over NVMe/TCP with the initiator and returns namespace 1. Each
// child gets its own controller, closed with the child.
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
		return &remoteChild{Namespace: ns, ctrl: ctrl}, nil
	}
}

// remoteChild is a remote namespace that owns its controller.
type remoteChild struct {
	*initiator.Namespace
	ctrl *initiator.Controller
}

// Close closes the namespace and disconnects its controller.
func (r *remoteChild) Close() error {
	r.Namespace.Close()
	return r.ctrl.Close()
}
