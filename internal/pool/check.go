package pool

import (
	"math/bits"
)

// Check verifies the pool's invariants against a recount of the cluster
// maps: no cluster owned twice, every owned cluster marked in use, owned +
// reserved + free = total, thick replicas fully allocated, and Stats equal
// to the recount; and against the identities: every replica has a non-zero
// NGUID, no two the same, and a claim state. It returns a *CorruptError
// describing the first violation. It takes Pool.mu only, so it can run
// alongside I/O.
func (p *Pool) Check() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.sb.ClusterCount
	seen := newBitmap(n)
	var owned, committed uint64
	nguids := make(map[[16]byte]string, len(p.byName))
	for name, r := range p.byName {
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
			if seen.get(ph) {
				return corruptf("cluster %d owned twice (second owner replica %q, logical cluster %d)", ph, name, l)
			}
			if !p.bm.get(ph) {
				return corruptf("cluster %d owned by replica %q but marked free", ph, name)
			}
			seen.set(ph)
			mine++
		}
		if mine != r.owned {
			return corruptf("replica %q owns %d clusters, accounted %d", name, mine, r.owned)
		}
		owned += mine
		committed += uint64(r.size.Load())
	}
	if len(p.byUUID) != len(p.byName) {
		return corruptf("%d replicas by UUID, %d by name", len(p.byUUID), len(p.byName))
	}
	var inUse uint64
	for _, w := range p.bm.words {
		inUse += uint64(bits.OnesCount64(w))
	}
	if owned != p.owned || committed != p.committed {
		return corruptf("recount: %d clusters owned and %d bytes committed, accounted %d and %d", owned, committed, p.owned, p.committed)
	}
	if inUse != owned+p.reserved {
		return corruptf("%d clusters marked in use, but %d owned and %d reserved", inUse, owned, p.reserved)
	}
	st := p.statsLocked()
	if st.FreeClusters+int64(owned)+int64(p.reserved) != int64(n) || st.Allocated != int64(owned)*p.cs || st.FreeClusters < 0 {
		return corruptf("stats %+v disagree with the recount (%d owned, %d reserved)", st, owned, p.reserved)
	}
	return nil
}
