package nexus

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/nexstor/nexstor/internal/bdev"
)

// Opener opens the Device behind a child URI.
type Opener interface {
	Open(ctx context.Context, uri string) (bdev.Device, error)
}

// LocalityOpener is implemented by Openers that know which children live on
// this node; the nexus prefers local children for reads.
type LocalityOpener interface {
	Opener
	IsLocal(uri string) bool
}

// Router opens children by URI scheme:
//
//	bdev:///<replica-uuid>       a local replica, resolved by Local (direct calls)
//	nvmf://host:port/<subnqn>    a remote namespace 1 over NVMe/TCP, via Remote
//
// A nil resolver makes its scheme an error naming what is missing.
type Router struct {
	// Local resolves a local replica UUID to its Device.
	Local func(ctx context.Context, replicaUUID string) (bdev.Device, error)
	// Remote connects to addr ("host:port") and returns namespace 1 of
	// the subsystem nqn.
	Remote func(ctx context.Context, addr, nqn string) (bdev.Device, error)
}

// ChildURI is a parsed child URI.
type ChildURI struct {
	Scheme string // "bdev" or "nvmf"
	Name   string // replica UUID (bdev) or subsystem NQN (nvmf)
	Addr   string // host:port (nvmf only)
}

// ParseChildURI parses and validates a child URI.
func ParseChildURI(uri string) (ChildURI, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return ChildURI{}, fmt.Errorf("child URI %q: %w", uri, err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "bdev":
		if u.Host != "" || name == "" || strings.Contains(name, "/") {
			return ChildURI{}, fmt.Errorf("child URI %q: want bdev:///<replica-uuid>", uri)
		}
		return ChildURI{Scheme: "bdev", Name: name}, nil
	case "nvmf":
		if u.Host == "" || name == "" {
			return ChildURI{}, fmt.Errorf("child URI %q: want nvmf://host:port/<subsystem-nqn>", uri)
		}
		addr := u.Host
		if u.Port() == "" {
			addr += ":4420"
		}
		return ChildURI{Scheme: "nvmf", Name: name, Addr: addr}, nil
	default:
		return ChildURI{}, fmt.Errorf("child URI %q: unsupported scheme %q: use bdev:///<replica-uuid> or nvmf://host:port/<nqn>", uri, u.Scheme)
	}
}

// Open implements Opener.
func (r *Router) Open(ctx context.Context, uri string) (bdev.Device, error) {
	cu, err := ParseChildURI(uri)
	if err != nil {
		return nil, err
	}
	switch cu.Scheme {
	case "bdev":
		if r.Local == nil {
			return nil, fmt.Errorf("child %s: no local replica resolver configured", uri)
		}
		d, err := r.Local(ctx, cu.Name)
		if err != nil {
			return nil, fmt.Errorf("child %s: %w", uri, err)
		}
		return d, nil
	default:
		if r.Remote == nil {
			return nil, fmt.Errorf("child %s: no NVMe/TCP initiator configured", uri)
		}
		d, err := r.Remote(ctx, cu.Addr, cu.Name)
		if err != nil {
			return nil, fmt.Errorf("child %s: %w", uri, err)
		}
		return d, nil
	}
}

// IsLocal implements LocalityOpener: bdev:// children are local.
func (r *Router) IsLocal(uri string) bool { return strings.HasPrefix(uri, "bdev:") }
