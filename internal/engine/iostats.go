package engine

import (
	"github.com/nexstor/nexstor/internal/bdev/stats"
)

// Kinds of devices in DeviceIO.
const (
	DeviceNexus   = "nexus"
	DeviceReplica = "replica"
)

// DeviceIO are the I/O counters of one device the engine serves to hosts:
// a serving nexus or a shared replica. They are counted by a stats wrapper
// between the frontends (NBD, NVMe/TCP) and the device, so they cover what
// hosts asked for, not the nexus's own rebuild, resync or verify traffic.
type DeviceIO struct {
	// Kind is DeviceNexus or DeviceReplica.
	Kind string
	// Name is the nexus or replica name.
	Name string
	// Pool is the replica's pool; "" for a nexus.
	Pool string
	// Protocol is the replica share's protocol (a replica shared over nbd
	// and nvmf has one DeviceIO per protocol); "" for a nexus, whose
	// counters outlive its publications.
	Protocol string
	// Stats are cumulative since the nexus was created or restored, or the
	// share was made, in this process: a scraper sees a counter reset
	// after a restart, as for any Prometheus counter.
	Stats stats.Snapshot
}

// IOStats returns the I/O counters of every serving nexus (published or
// not) and every restored replica share, nexuses first, each sorted by
// name (then protocol). It reads atomics only and does no I/O, so it is
// cheap enough for every metrics scrape; safe for concurrent use.
func (e *Engine) IOStats() []DeviceIO {
	type replicaDev struct {
		name, pool, protocol string
		dev                  *stats.Device
	}
	e.mu.Lock()
	var nexuses []DeviceIO
	var devs []*stats.Device
	for _, name := range sortedKeys(e.nexuses) {
		if ne := e.nexuses[name]; ne.io != nil {
			nexuses = append(nexuses, DeviceIO{Kind: DeviceNexus, Name: name})
			devs = append(devs, ne.io)
		}
	}
	var reps []replicaDev
	for _, k := range sortedKeys(e.shares) {
		s := e.shares[k]
		// export always serves a *stats.Device; a share that was not
		// restored has no device.
		if d, ok := s.dev.(*stats.Device); ok {
			reps = append(reps, replicaDev{s.replica, e.replicas[s.replica], s.protocol, d})
		}
	}
	e.mu.Unlock()
	out := make([]DeviceIO, 0, len(nexuses)+len(reps))
	for i, d := range nexuses {
		d.Stats = devs[i].Snapshot()
		out = append(out, d)
	}
	for _, r := range reps {
		out = append(out, DeviceIO{Kind: DeviceReplica, Name: r.name, Pool: r.pool, Protocol: r.protocol,
			Stats: r.dev.Snapshot()})
	}
	return out
}
