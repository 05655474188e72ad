package pool

import (
	"math/bits"
)

// Check verifies the pool's invariants against a recount of the cluster
// maps of all replicas, clones and snapshots: every cluster's reference
// count equals the number of maps holding it, no map holds one cluster at
// two logical positions, a cluster is marked in use exactly when it is
// held or reserved (nothing leaked, nothing freed while held), owned +
// reserved + free = total, the shared references (extra) and the sharing
// budget agree with the recount, thick replicas are fully allocated,
// snapshots are thin, read-only and have an origin, and Stats equal the
// recount; and against the identities: every replica and snapshot has a
// non-zero NGUID, no two the same, and a claim state. It returns a
// *CorruptError describing the first violation. It takes Pool.mu only, so
// it can run alongside I/O.
func (p *Pool) Check() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.sb.ClusterCount
	count := make([]uint32, n)
	// last[ph] is 1 + the index of the last map counted as holding ph, to
	// find a map holding one cluster twice.
	last := make([]uint32, n)
	var committed, entryBytes uint64
	nguids := make(map[[16]byte]string, len(p.byName))
	idx := uint32(0)
	for name, r := range p.byName {
		idx++
		if p.byUUID[r.uuid] != r {
			return corruptf("replica %q missing from the UUID index", name)
		}
		if r.nguid == ([16]byte{}) {
			return corruptf("replica %q has no NGUID", name)
		}
		if other, dup := nguids[r.nguid]; dup {
			return corruptf("replicas %q and %q have the same NGUID %x", other, name, r.nguid)
		}
		nguids[r.nguid] = name
		if r.claim.Load() == nil {
			return corruptf("replica %q has no claim state", name)
		}
		if r.snap && (!r.thin || !r.hasOrigin || r.claim.Load().owner != ([16]byte{})) {
			return corruptf("snapshot %q is thick, owned or has no origin", name)
		}
		if (r.snap || r.hasOrigin) && !p.snapshotsOn() {
			return corruptf("snapshot or clone %q in a pool without the snapshots feature", name)
		}
		var mine uint64
		for l := range r.m {
			v := r.m[l].Load()
			if v == 0 {
				if !r.thin && uint64(l) < clustersFor(uint64(r.size.Load()), uint64(p.cs)) {
					return corruptf("thick replica %q: logical cluster %d unallocated", name, l)
				}
				continue
			}
			ph := v - 1
			if ph >= n {
				return corruptf("replica %q: logical cluster %d maps to cluster %d beyond the %d in the pool", name, l, ph, n)
			}
			if last[ph] == idx {
				return corruptf("replica %q holds cluster %d twice (again at logical cluster %d)", name, ph, l)
			}
			last[ph] = idx
			if count[ph] > 0 && !p.snapshotsOn() {
				return corruptf("cluster %d owned twice (second owner replica %q, logical cluster %d)", ph, name, l)
			}
			if !p.bm.get(ph) {
				return corruptf("cluster %d held by replica %q but marked free", ph, name)
			}
			count[ph]++
			mine++
		}
		if mine != r.owned {
			return corruptf("replica %q holds %d clusters, accounted %d", name, mine, r.owned)
		}
		if !r.snap {
			committed += uint64(r.size.Load())
		}
		entryBytes += r.entryBound()
	}
	if len(p.byUUID) != len(p.byName) {
		return corruptf("%d replicas by UUID, %d by name", len(p.byUUID), len(p.byName))
	}
	var owned, extra, unheld uint64
	for ph := range n {
		c, want := p.refs[ph].Load(), count[ph]
		if c != want {
			return corruptf("cluster %d has reference count %d, but %d maps hold it", ph, c, want)
		}
		switch {
		case c > 0:
			owned++
			extra += uint64(c - 1)
		case p.bm.get(ph):
			unheld++ // reserved by an operation in flight, or leaked
		}
	}
	var inUse uint64
	for _, w := range p.bm.words {
		inUse += uint64(bits.OnesCount64(w))
	}
	if owned != p.owned || committed != p.committed || extra != p.extra || entryBytes != p.entryBytes {
		return corruptf("recount: %d clusters held, %d shared references, %d bytes committed, %d entry bytes; accounted %d, %d, %d and %d",
			owned, extra, committed, entryBytes, p.owned, p.extra, p.committed, p.entryBytes)
	}
	if inUse != owned+p.reserved || unheld != p.reserved {
		return corruptf("%d clusters marked in use (%d held by no map), but %d held and %d reserved", inUse, unheld, owned, p.reserved)
	}
	if p.extra > 0 {
		if need := p.checkpointNeedLocked(0, 0); need > p.sb.CPSize {
			return corruptf("checkpoint bound %d bytes exceeds the %d-byte slot", need, p.sb.CPSize)
		}
	}
	st := p.statsLocked()
	if st.FreeClusters+int64(owned)+int64(p.reserved) != int64(n) || st.Allocated != int64(owned)*p.cs || st.FreeClusters < 0 {
		return corruptf("stats %+v disagree with the recount (%d owned, %d reserved)", st, owned, p.reserved)
	}
	return nil
}
