package main

import (
	"context"
	"fmt"
	"net"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/engine"
	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/nvmf/target"
)

// With -remote every child is reached over NVMe/TCP, as a volume's remote
// children are: an NVMe/TCP target in this process serves the replicas of
// children 0..2 on loopback (one subsystem each, as a replica's share), and
// the nexuses connect to them with the initiator and the engine's options
// (engine.DefaultNexusRemote). "replica" is then child 0's replica through
// the initiator, with no nexus, and "3 replicas, no nexus" the three remote
// replicas written in turn. Target and initiators share this process, and
// its CPU column counts both: three servers on one host.

// remoteRig is the target that serves the children's replicas.
type remoteRig struct {
	tgt    *target.Target
	addr   string
	nqns   []string      // of children 0..2
	shares []bdev.Device // the replicas the target holds open
	cancel context.CancelFunc
	served chan error
}

func remoteNQN(i int) string { return fmt.Sprintf("nqn.2026-12.io.nexstor:nexusbench-child%d", i) }

// serveRemote shares the replicas of children 0..2 over NVMe/TCP on a free
// loopback port. On failure it leaves nothing open and r.remote unset.
func (r *rig) serveRemote(ctx context.Context) (err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("-remote: listen on loopback: %w", err)
	}
	rr := &remoteRig{tgt: target.New(quiet), addr: l.Addr().String(), served: make(chan error, 1)}
	defer func() {
		if err != nil {
			l.Close()
			rr.tgt.Close()
			rr.closeShares()
		}
	}()
	for i := range 3 {
		d, err := r.pools[i].OpenReplica("r")
		if err != nil {
			return err
		}
		rr.shares = append(rr.shares, d)
		sub, err := rr.tgt.AddSubsystem(remoteNQN(i), target.SubsystemOptions{AllowAnyHost: true})
		if err != nil {
			return err
		}
		if _, err := sub.AddNamespace(d, target.NamespaceOptions{}); err != nil {
			return err
		}
		rr.nqns = append(rr.nqns, remoteNQN(i))
	}
	sctx, cancel := context.WithCancel(ctx)
	rr.cancel = cancel
	go func() { rr.served <- rr.tgt.Serve(sctx, l) }()
	r.remote = rr
	return nil
}

// close stops the target and closes the shares.
func (rr *remoteRig) close() {
	rr.cancel()
	rr.tgt.Close()
	<-rr.served
	rr.closeShares()
}

func (rr *remoteRig) closeShares() {
	for _, d := range rr.shares {
		d.Close()
	}
}

// childURI is child i's URI for a nexus.
func (r *rig) childURI(i int) string {
	if r.remote != nil {
		return "nvmf://" + r.remote.addr + "/" + r.remote.nqns[i]
	}
	return "bdev:///" + r.uuids[i]
}

// openChild opens child i's replica without a nexus: the pool's replica,
// or with -remote the remote namespace.
func (r *rig) openChild(ctx context.Context, i int) (bdev.Device, error) {
	if r.remote == nil {
		return r.pools[i].OpenReplica("r")
	}
	return remoteOpener()(ctx, r.remote.addr, r.remote.nqns[i])
}

// remoteOpener connects to a remote child as a nexus of the engine does.
func remoteOpener() func(context.Context, string, string) (bdev.Device, error) {
	opts := engine.DefaultNexusRemote
	opts.HostNQN = "nqn.2026-12.io.nexstor:nexusbench-host"
	return nexus.NVMfRemote(opts)
}
