package csi

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Target is where, and as whom, a node attaches a volume: what
// ControllerPublishVolume put in the publish context, with the volume's
// ID. It is kept in the node's state so that unstaging finds it again.
type Target struct {
	// VolumeID is the volume's UUID; the namespace's UUID must be it.
	VolumeID string `json:"volume_id"`
	// URI is nvmf://host:port/<nqn> of the volume's nexus.
	URI string `json:"uri"`
	// NQN is the nexus's subsystem NQN.
	NQN string `json:"nqn"`
	// HostNQN is the host NQN to connect as; "" means the node's own.
	HostNQN string `json:"host_nqn,omitempty"`
	// Capacity is the volume's size in bytes when it was published, 0
	// when unknown.
	Capacity int64 `json:"capacity,omitempty"`
}

// targetFromContext reads a Target from a publish context.
func targetFromContext(volumeID string, pc map[string]string) (Target, error) {
	t := Target{VolumeID: volumeID, URI: pc[PublishURI], NQN: pc[PublishNQN], HostNQN: pc[PublishHostNQN]}
	if t.URI == "" || t.NQN == "" {
		return t, badRequest("volume %s: the publish context has no %s and %s: publish the volume with this driver's controller first",
			volumeID, PublishURI, PublishNQN)
	}
	if _, _, nqn, err := parseNVMfURI(t.URI); err != nil {
		return t, err
	} else if nqn != t.NQN {
		return t, badRequest("volume %s: publish context: URI %s names subsystem %s, not %s", volumeID, t.URI, nqn, t.NQN)
	}
	if c := pc[PublishCapacity]; c != "" {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n < 0 {
			return t, badRequest("volume %s: publish context: %s=%q is not a byte count", volumeID, PublishCapacity, c)
		}
		t.Capacity = n
	}
	return t, nil
}

// parseNVMfURI splits nvmf://host:port/<nqn>.
func parseNVMfURI(s string) (host, port, nqn string, err error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "nvmf" || u.Hostname() == "" || u.Port() == "" {
		return "", "", "", badRequest("URI %q: want nvmf://host:port/<subsystem NQN>", s)
	}
	nqn = strings.TrimPrefix(u.Path, "/")
	if nqn == "" || strings.Contains(nqn, "/") {
		return "", "", "", badRequest("URI %q: want nvmf://host:port/<subsystem NQN>", s)
	}
	return u.Hostname(), u.Port(), nqn, nil
}

// Path is one connection of the host to a volume (an NVMe controller).
type Path struct {
	// Name is the kernel's name for it (nvme3, loop2).
	Name string
	// State is the kernel's state of it (live, connecting, resetting...).
	State string
	// Live: I/O can go through it now.
	Live bool
}

func (p Path) String() string { return fmt.Sprintf("%s %s", p.Name, p.State) }

// Transport attaches volumes to this host as block devices. NVMe attaches
// over NVMe/TCP through the kernel's initiator; Loop backs each volume by
// a file through a loop device, for hosts whose kernel has no NVMe/TCP
// (tests). Implementations are safe for concurrent use on different
// volumes; the node serialises calls for one volume.
type Transport interface {
	// Attach connects the volume, or finds the connection that exists,
	// and returns its block device (/dev/...) once the kernel shows it,
	// its identity checked against t.VolumeID. Idempotent.
	Attach(ctx context.Context, t Target) (string, error)
	// Device returns the volume's block device, "" when it is not
	// attached.
	Device(ctx context.Context, t Target) (string, error)
	// Detach disconnects every path to the volume and returns once the
	// kernel removed them. Idempotent: a volume not attached is no
	// error.
	Detach(ctx context.Context, t Target) error
	// Paths reports the host's connections to the volume.
	Paths(ctx context.Context, t Target) ([]Path, error)
	// Grow makes the host see the volume, grown by the controller, at
	// size bytes or more, and returns once its block device has that
	// size. size 0 only asks the host to look again.
	Grow(ctx context.Context, t Target, size int64) error
}
