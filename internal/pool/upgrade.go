package pool

import (
	"fmt"
	"log/slog"
)

// v2ReplicaLimit is the replica limit a version 1 pool gets when upgraded:
// the most replicas whose version 2 entries (with identity blocks), with a
// run for every cluster, fit the checkpoint slot that was sized for version
// 1 entries; never more than the version 1 limit.
func v2ReplicaLimit(sb *superblock) uint64 {
	fixed := uint64(cpHeaderLen+4) + sb.ClusterCount*runLen
	if sb.CPSize < fixed {
		return 0
	}
	return min((sb.CPSize-fixed)/maxEntryLen, uint64(sb.MaxReplicas))
}

// upgrade turns the freshly loaded version 1 pool p into a version 2 pool,
// in the order docs/pool-format.md argues crash-safe: check that the
// checkpoint slot can hold version 2 entries (before anything is written),
// draw an NGUID for every replica without one, write the checkpoint of the
// next epoch with identity blocks, then rewrite superblock copy 0 and copy
// 1 as version 2, each flushed. Every step up to the second superblock copy
// leaves a pool that imports with the same replicas (and the next import
// upgrades it again); NGUIDs become visible only once the whole upgrade is
// durable.
func (p *Pool) upgrade() error {
	name := p.sb.Name
	limit := v2ReplicaLimit(&p.sb)
	if uint64(len(p.byName)) > limit || limit == 0 {
		return fmt.Errorf("pool %q: format version 1 pool holds %d replicas, but its %d-byte checkpoint slots hold at most %d in format version 2 "+
			"(which records each replica's identity); import it with the previous Nexstor release and destroy %d replicas, or move them to another pool (nothing was written): %w",
			name, len(p.byName), p.sb.CPSize, limit, uint64(len(p.byName))-min(limit, uint64(len(p.byName))), ErrUnsupported)
	}
	p.mu.Lock()
	drawn := 0
	for _, r := range p.byName {
		if r.nguid != ([16]byte{}) {
			continue // a checkpoint of an interrupted upgrade kept it
		}
		n, err := p.newNGUIDLocked()
		if err != nil {
			p.mu.Unlock()
			return fmt.Errorf("pool %q: upgrading to format version %d: %w", name, FormatVersion, err)
		}
		r.nguid = n
		drawn++
	}
	p.mu.Unlock()
	p.logMu.Lock()
	err := p.checkpointLocked()
	p.logMu.Unlock()
	if err != nil {
		return fmt.Errorf("pool %q: upgrading to format version %d: writing the checkpoint: %w", name, FormatVersion, err)
	}
	sb := p.sb
	sb.Version = FormatVersion
	sb.Generation++
	sb.MaxReplicas = uint32(limit)
	sb.Incompat, sb.Compat, sb.Overcommit, sb.Reserved = 0, 0, DefaultOvercommit, [16]byte{}
	if err := sb.validate(); err != nil {
		return fmt.Errorf("pool %q: upgrading to format version %d: the new superblock is invalid (a bug; nothing of it was written): %v", name, FormatVersion, err)
	}
	if err := p.writeSuperblocks(&sb); err != nil {
		return fmt.Errorf("pool %q: upgrading to format version %d: %w; the next import completes the upgrade", name, FormatVersion, err)
	}
	p.sb = sb
	slog.Info("pool upgraded", "pool", name, "from_version", formatV1, "to_version", FormatVersion,
		"nguids_drawn", drawn, "replica_limit", limit)
	return nil
}
