package pool

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
)

// bitmap tracks which physical clusters are taken (owned by a replica or
// reserved by an allocation in flight). Guarded by Pool.mu.
type bitmap struct {
	words []uint64
	n     uint64
	hint  uint64 // next-fit search start, so fresh clusters are handed out in order
}

func newBitmap(n uint64) bitmap { return bitmap{words: make([]uint64, (n+63)/64), n: n} }

func (b *bitmap) get(i uint64) bool { return b.words[i/64]&(1<<(i%64)) != 0 }
func (b *bitmap) set(i uint64)      { b.words[i/64] |= 1 << (i % 64) }
func (b *bitmap) clr(i uint64)      { b.words[i/64] &^= 1 << (i % 64) }

// take finds a clear bit at or after the hint (wrapping), sets it and returns
// it; ok is false when every cluster is taken.
func (b *bitmap) take() (uint64, bool) {
	nw := uint64(len(b.words))
	start := b.hint / 64
	for k := uint64(0); k <= nw; k++ {
		w := (start + k) % nw
		free := ^b.words[w]
		if w == start && k == 0 {
			free &^= (1 << (b.hint % 64)) - 1 // only bits >= hint in the first word
		}
		for free != 0 {
			i := w*64 + uint64(bits.TrailingZeros64(free))
			if i >= b.n {
				break
			}
			b.set(i)
			b.hint = i + 1
			if b.hint >= b.n {
				b.hint = 0
			}
			return i, true
		}
	}
	return 0, false
}

// takeRuns takes k clusters as runs of consecutive physical clusters mapped
// to logical clusters from first onwards. The caller has checked that k
// clusters are free.
func (b *bitmap) takeRuns(first, k uint64) []run {
	var runs []run
	logical := first
	for i := uint64(0); i < b.n && k > 0; i++ {
		if b.words[i/64] == ^uint64(0) && i%64 == 0 {
			i += 63
			continue
		}
		if b.get(i) {
			continue
		}
		b.set(i)
		if n := len(runs); n > 0 && runs[n-1].Phys+uint64(runs[n-1].Count) == i && runs[n-1].Count < 1<<31 {
			runs[n-1].Count++
		} else {
			runs = append(runs, run{Logical: logical, Phys: i, Count: 1})
		}
		logical++
		k--
	}
	return runs
}

// replica is the shared state of one replica; handles point at it.
type replica struct {
	name    string
	uuid    [16]byte
	uuidStr string
	thin    bool
	size    atomic.Int64
	// nguid is the replica's identity, fixed when it is created (zero only
	// while a version 1 pool is being upgraded).
	nguid [16]byte

	// claim is the owner and epoch last made durable; replaced (under
	// Pool.mu, by the claim record's apply), never nil.
	claim atomic.Pointer[claimState]
	// session counts the claims, releases and disowns of the replica, in
	// memory only; a claimed handle works while it still equals the value
	// the handle was made with. Changed only with io held exclusively.
	session atomic.Uint64
	// claimMu serializes Claim, Raise, Release, Disown and destroy of this
	// replica, across their commits.
	claimMu sync.Mutex

	// io is held shared by every I/O for its whole duration and exclusively
	// by whatever changes the cluster map's shape or frees clusters (resize,
	// unmap of whole clusters), so a cluster is never freed under an I/O.
	io sync.RWMutex
	// m maps logical cluster -> physical cluster + 1 (0 = unallocated).
	// Entries are atomics so allocation can publish them while I/O reads;
	// the slice itself changes only under io held exclusively and Pool.mu.
	m []atomic.Uint64

	allocMu  sync.Mutex
	inflight map[uint64]*allocCall // first writes in progress, per logical cluster

	// gone is set when the replica's destroy record is applied (with io
	// held exclusively); I/O that takes io afterwards fails.
	gone atomic.Bool

	// snap marks a read-only snapshot; origin is set for snapshots (the
	// replica it was taken of) and clones (the snapshot they were made
	// from). Fixed at creation.
	snap      bool
	hasOrigin bool
	origin    origin

	// Guarded by Pool.mu.
	owned      uint64 // clusters mapped (shared ones included)
	opens      int    // open handles
	destroying bool
}

// entryBound is the most bytes r's checkpoint entry takes besides its runs.
func (r *replica) entryBound() uint64 {
	if r.hasOrigin {
		return maxEntryLenOrigin
	}
	return maxEntryLen
}

type allocCall struct {
	done chan struct{}
	err  error
}

func clustersFor(size uint64, cs uint64) uint64 { return (size + cs - 1) / cs }

// grow extends the cluster map to cover size bytes.
func (r *replica) grow(size, cs uint64) {
	n := clustersFor(size, cs)
	if n <= uint64(len(r.m)) {
		return
	}
	m := make([]atomic.Uint64, n)
	for i := range r.m {
		m[i].Store(r.m[i].Load())
	}
	r.m = m
}

// runs returns the replica's mapping as runs, for a checkpoint.
func (r *replica) runs() []run {
	var out []run
	for i := range r.m {
		e := r.m[i].Load()
		if e == 0 {
			continue
		}
		phys := e - 1
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.Logical+uint64(last.Count) == uint64(i) && last.Phys+uint64(last.Count) == phys && last.Count < 1<<31 {
				last.Count++
				continue
			}
		}
		out = append(out, run{Logical: uint64(i), Phys: phys, Count: 1})
	}
	return out
}

// apply applies one record to the state. live is true for records this
// process just made durable: their clusters were reserved (bits already set,
// counted in reserved). On replay (live false) the clusters must be free.
// A record that contradicts the state returns an error; replay reports it
// as corruption, a live record as a bug. Must hold p.mu.
func (p *Pool) apply(rec *record, live bool) error {
	e := &rec.E
	cs := uint64(p.cs)
	r := p.byUUID[e.UUID]
	if e.HasID && rec.Type != recCreate && rec.Type != recClaim && rec.Type != recSnap && rec.Type != recClone {
		return fmt.Errorf("record type %d carries an identity block", rec.Type)
	}
	if !p.snapshotsOn() && (rec.Type >= recSnap || e.Snapshot || e.HasOrigin) {
		return fmt.Errorf("record type %d (entry flags snapshot %v, origin %v) in a pool without the snapshots feature", rec.Type, e.Snapshot, e.HasOrigin)
	}
	if (e.Snapshot || e.HasOrigin) && rec.Type != recSnap && rec.Type != recClone {
		return fmt.Errorf("record type %d carries snapshot or origin flags", rec.Type)
	}
	if r != nil && r.snap {
		switch rec.Type {
		case recResize, recMap, recUnmap, recClaim, recCOW:
			return fmt.Errorf("record type %d changes snapshot %q", rec.Type, r.name)
		}
	}
	switch rec.Type {
	case recCreate:
		mode := mapReplay
		if live {
			mode = mapLive
		}
		if err := p.addObject(e, mode, nil); err != nil {
			return fmt.Errorf("create: %w", err)
		}
	case recSnap, recClone:
		what := "snapshot"
		if rec.Type == recClone {
			what = "clone"
		}
		src := p.byUUID[e.Origin.UUID]
		switch {
		case !e.HasOrigin || !e.HasID || !e.Thin || len(e.Runs) != 0 || e.Snapshot != (rec.Type == recSnap):
			return fmt.Errorf("%s %q: malformed (flags or runs)", what, e.Name)
		case src == nil:
			return fmt.Errorf("%s %q: origin %s unknown", what, e.Name, fmtUUID(e.Origin.UUID))
		case src.snap != (rec.Type == recClone) || !src.thin:
			return fmt.Errorf("%s %q: origin %q is not a thin %s", what, e.Name, src.name, map[bool]string{true: "snapshot", false: "replica"}[rec.Type == recClone])
		case uint64(src.size.Load()) != e.Size:
			return fmt.Errorf("%s %q: size %d, its origin %q has %d", what, e.Name, e.Size, src.name, src.size.Load())
		}
		if err := p.addObject(e, mapShare, src); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	case recCOW:
		if r == nil {
			return fmt.Errorf("cow: replica %s unknown", fmtUUID(e.UUID))
		}
		if err := p.cowRuns(r, e.Runs, live); err != nil {
			return fmt.Errorf("cow %q: %w", r.name, err)
		}
	case recResize:
		if r == nil {
			return fmt.Errorf("resize: replica %s unknown", fmtUUID(e.UUID))
		}
		old := uint64(r.size.Load())
		if e.Size < old {
			return fmt.Errorf("resize %q: shrink from %d to %d", r.name, old, e.Size)
		}
		if err := p.checkSize(e.Size); err != nil {
			return fmt.Errorf("resize %q: %w", r.name, err)
		}
		if p.spanned+clustersFor(e.Size, cs)-clustersFor(old, cs) > maxSpannedClusters {
			return fmt.Errorf("resize %q: replicas would span more than %d clusters", r.name, maxSpannedClusters)
		}
		r.grow(e.Size, cs)
		if err := p.mapRuns(r, e.Runs, liveMode(live)); err != nil {
			return fmt.Errorf("resize %q: %w", r.name, err)
		}
		r.size.Store(int64(e.Size))
		p.spanned += clustersFor(e.Size, cs) - clustersFor(old, cs)
		p.committed += e.Size - old
	case recDestroy:
		if r == nil {
			return fmt.Errorf("destroy: replica %s unknown", fmtUUID(e.UUID))
		}
		for i := range r.m {
			if v := r.m[i].Load(); v != 0 {
				r.m[i].Store(0)
				p.dropRef(v - 1)
			}
		}
		if !r.snap {
			p.committed -= uint64(r.size.Load())
		}
		p.spanned -= clustersFor(uint64(r.size.Load()), cs)
		p.entryBytes -= r.entryBound()
		r.owned = 0
		r.gone.Store(true)
		delete(p.byUUID, e.UUID)
		delete(p.byName, r.name)
	case recMap:
		if r == nil {
			return fmt.Errorf("map: replica %s unknown", fmtUUID(e.UUID))
		}
		if err := p.mapRuns(r, e.Runs, liveMode(live)); err != nil {
			return fmt.Errorf("map %q: %w", r.name, err)
		}
	case recUnmap:
		if r == nil {
			return fmt.Errorf("unmap: replica %s unknown", fmtUUID(e.UUID))
		}
		if _, err := sumRuns(e.Runs, uint64(len(r.m))); err != nil {
			return fmt.Errorf("unmap %q: %w", r.name, err)
		}
		for _, u := range e.Runs {
			if u.Count == 0 || u.Logical >= uint64(len(r.m)) || uint64(u.Count) > uint64(len(r.m))-u.Logical {
				return fmt.Errorf("unmap %q: run %d+%d outside the replica", r.name, u.Logical, u.Count)
			}
			for l := u.Logical; l < u.Logical+uint64(u.Count); l++ {
				if r.m[l].Load() == 0 {
					return fmt.Errorf("unmap %q: logical cluster %d not mapped", r.name, l)
				}
			}
		}
		for _, u := range e.Runs {
			for l := u.Logical; l < u.Logical+uint64(u.Count); l++ {
				v := r.m[l].Load()
				r.m[l].Store(0)
				p.dropRef(v - 1)
				r.owned--
			}
		}
	case recClaim:
		if p.sb.Version == formatV1 {
			return errors.New("claim record in a format version 1 pool")
		}
		if r == nil {
			return fmt.Errorf("claim: replica %s unknown", fmtUUID(e.UUID))
		}
		if !e.HasID || e.Size != 0 || e.Thin || e.Name != "" || len(e.Runs) != 0 {
			return fmt.Errorf("claim %q: malformed (flags, size, name or runs)", r.name)
		}
		if e.ID.NGUID != r.nguid {
			return fmt.Errorf("claim %q: NGUID %x, the replica's is %x", r.name, e.ID.NGUID, r.nguid)
		}
		if cur := r.claim.Load(); e.ID.Epoch < cur.epoch {
			return fmt.Errorf("claim %q: epoch %d lower than the accepted %d", r.name, e.ID.Epoch, cur.epoch)
		}
		r.claim.Store(&claimState{owner: e.ID.Owner, epoch: e.ID.Epoch})
	default:
		return fmt.Errorf("record type %d unknown", rec.Type)
	}
	return nil
}

// checkpointEntry returns r as a checkpoint entry: name, size, flags, its
// identity block and its whole map. Must hold p.mu.
func (r *replica) checkpointEntry() entry {
	e := entry{UUID: r.uuid, Size: uint64(r.size.Load()), Thin: r.thin, Name: r.name, Runs: r.runs(),
		Snapshot: r.snap, HasOrigin: r.hasOrigin, Origin: r.origin}
	if r.nguid != ([16]byte{}) {
		c := r.claim.Load()
		e.HasID, e.ID = true, ident{NGUID: r.nguid, Owner: c.owner, Epoch: c.epoch}
	}
	return e
}

// sumRuns returns the clusters runs cover, or an error when that exceeds
// limit; it bounds the work a hostile record can cause before any loop
// over clusters.
func sumRuns(runs []run, limit uint64) (uint64, error) {
	var total uint64
	for _, u := range runs {
		total += uint64(u.Count)
		if total > limit {
			return 0, fmt.Errorf("runs cover more than %d clusters", limit)
		}
	}
	return total, nil
}

// mapMode says what mapRuns may assume of the clusters it maps.
type mapMode int

const (
	// mapLive: a record this process made durable; its clusters were
	// reserved (marked in use, no reference, counted in reserved).
	mapLive mapMode = iota
	// mapReplay: a record or checkpoint entry on import; its clusters must
	// be free.
	mapReplay
	// mapShare: a checkpoint entry of a pool with the snapshots feature;
	// its clusters may be held by other maps already.
	mapShare
)

func liveMode(live bool) mapMode {
	if live {
		return mapLive
	}
	return mapReplay
}

// refCluster adds a reference to physical cluster ph. In mapLive mode the
// cluster was reserved: it stays marked and leaves the reservation count
// (the caller settles reserved). Must hold p.mu.
func (p *Pool) refCluster(ph uint64, mode mapMode) {
	v := p.refs[ph].Load()
	if v == 0 {
		if mode != mapLive {
			p.bm.set(ph)
		}
		p.owned++
	} else {
		p.extra++
	}
	p.refs[ph].Store(v + 1)
}

// unrefCluster undoes refCluster(ph, mode). Must hold p.mu.
func (p *Pool) unrefCluster(ph uint64, mode mapMode) {
	v := p.refs[ph].Load() - 1
	p.refs[ph].Store(v)
	if v == 0 {
		if mode != mapLive {
			p.bm.clr(ph)
		}
		p.owned--
	} else {
		p.extra--
	}
}

// dropRef removes a map's reference to ph; the last one frees it. Must
// hold p.mu, and the map entry that held ph must already be changed (the
// write path checks the entry after the count; see Replica.exclusiveSpan).
func (p *Pool) dropRef(ph uint64) {
	v := p.refs[ph].Load() - 1
	p.refs[ph].Store(v)
	if v == 0 {
		p.bm.clr(ph)
		p.owned--
	} else {
		p.extra--
	}
}

// mapRuns validates runs against r and the cluster state, then maps them.
// Nothing changes when validation fails.
func (p *Pool) mapRuns(r *replica, runs []run, mode mapMode) error {
	if _, err := sumRuns(runs, uint64(len(r.m))); err != nil {
		return err
	}
	var total uint64
	for _, u := range runs {
		if u.Count == 0 || u.Logical >= uint64(len(r.m)) || uint64(u.Count) > uint64(len(r.m))-u.Logical {
			return fmt.Errorf("run %d+%d outside the replica's %d clusters", u.Logical, u.Count, len(r.m))
		}
		if u.Phys >= p.sb.ClusterCount || uint64(u.Count) > p.sb.ClusterCount-u.Phys {
			return fmt.Errorf("run at physical cluster %d+%d outside the pool's %d clusters", u.Phys, u.Count, p.sb.ClusterCount)
		}
		for i := range uint64(u.Count) {
			ph := u.Phys + i
			if r.m[u.Logical+i].Load() != 0 {
				return fmt.Errorf("logical cluster %d mapped twice", u.Logical+i)
			}
			switch held := p.refs[ph].Load() != 0; mode {
			case mapLive:
				if !p.bm.get(ph) || held {
					return fmt.Errorf("physical cluster %d was not reserved", ph)
				}
			case mapReplay:
				if p.bm.get(ph) {
					return fmt.Errorf("physical cluster %d owned twice", ph)
				}
			case mapShare:
				if !held && p.bm.get(ph) {
					return fmt.Errorf("physical cluster %d in use but held by no map", ph)
				}
			}
		}
		total += uint64(u.Count)
	}
	if mode == mapLive && total > p.reserved {
		return fmt.Errorf("%d clusters mapped but only %d reserved", total, p.reserved)
	}
	// Second pass: a run may repeat a cluster of an earlier run of the same
	// record (a logical one, or, except where clusters are shared, a
	// physical one); mark as we go and undo on conflict.
	done := 0
	for _, u := range runs {
		for i := range uint64(u.Count) {
			l, ph := u.Logical+i, u.Phys+i
			if r.m[l].Load() != 0 || (mode != mapShare && p.refs[ph].Load() != 0) {
				p.unmapPrefix(r, runs, done, mode)
				return fmt.Errorf("cluster %d (logical %d) repeated in one record", ph, l)
			}
			p.refCluster(ph, mode)
			r.m[l].Store(ph + 1)
			done++
		}
	}
	if mode == mapLive {
		p.reserved -= total
	}
	r.owned += total
	return nil
}

// unmapPrefix undoes the first n cluster mappings mapRuns made.
func (p *Pool) unmapPrefix(r *replica, runs []run, n int, mode mapMode) {
	for _, u := range runs {
		for i := range uint64(u.Count) {
			if n == 0 {
				return
			}
			r.m[u.Logical+i].Store(0)
			p.unrefCluster(u.Phys+i, mode)
			n--
		}
	}
}

// addObject adds the replica, clone or snapshot e describes: from a create
// record or a checkpoint entry (src nil; its runs are its map), or from a
// snapshot or clone record (src its origin, whose map it copies, sharing
// every cluster). Nothing changes when it fails. Must hold p.mu.
func (p *Pool) addObject(e *entry, mode mapMode, src *replica) error {
	cs := uint64(p.cs)
	if p.byUUID[e.UUID] != nil {
		return fmt.Errorf("replica %s exists", fmtUUID(e.UUID))
	}
	if err := validName(e.Name); err != nil {
		return err
	}
	if p.byName[e.Name] != nil {
		return fmt.Errorf("replica name %q exists", e.Name)
	}
	if uint64(len(p.byName)) >= uint64(p.sb.MaxReplicas) {
		return fmt.Errorf("more than %d replicas and snapshots", p.sb.MaxReplicas)
	}
	if err := p.checkSize(e.Size); err != nil {
		return err
	}
	if p.spanned+clustersFor(e.Size, cs) > maxSpannedClusters {
		return fmt.Errorf("replicas would span more than %d clusters", maxSpannedClusters)
	}
	// Version 1 entries have no identity; the upgrade draws one. A
	// version 2 pool has one for every replica.
	if !e.HasID && p.sb.Version != formatV1 {
		return fmt.Errorf("%q: no identity block", e.Name)
	}
	if e.HasID && e.ID.NGUID == ([16]byte{}) {
		return fmt.Errorf("%q: zero NGUID", e.Name)
	}
	if e.Snapshot && (!e.HasOrigin || !e.Thin || e.ID.Owner != ([16]byte{})) {
		return fmt.Errorf("snapshot %q: without origin, thick or owned", e.Name)
	}
	if (e.Snapshot || e.HasOrigin) && !e.Thin {
		return fmt.Errorf("%q: a snapshot or clone must be thin", e.Name)
	}
	r := &replica{name: e.Name, uuid: e.UUID, uuidStr: fmtUUID(e.UUID), thin: e.Thin, inflight: map[uint64]*allocCall{},
		nguid: e.ID.NGUID, snap: e.Snapshot, hasOrigin: e.HasOrigin, origin: e.Origin}
	r.claim.Store(&claimState{owner: e.ID.Owner, epoch: e.ID.Epoch})
	r.grow(e.Size, cs)
	if src != nil {
		for i := range src.m {
			if v := src.m[i].Load(); v != 0 {
				p.refCluster(v-1, mapShare)
				r.m[i].Store(v)
			}
		}
		r.owned = src.owned
	} else {
		if mode == mapReplay && p.snapshotsOn() {
			mode = mapShare
		}
		if err := p.mapRuns(r, e.Runs, mode); err != nil {
			return fmt.Errorf("%q: %w", e.Name, err)
		}
	}
	r.size.Store(int64(e.Size))
	p.spanned += clustersFor(e.Size, cs)
	p.byUUID[e.UUID] = r
	p.byName[e.Name] = r
	if !r.snap {
		p.committed += e.Size
	}
	p.entryBytes += r.entryBound()
	return nil
}

// cowRuns moves each logical cluster the runs name to the new physical
// cluster they give, and drops the map's reference to the old one (freeing
// it when it was the last). The new clusters were reserved (live) or must
// be free (replay). The map entry changes before the old reference drops,
// so a writer that finds the old cluster exclusive also finds the entry
// changed (see Replica.exclusiveSpan). A record that fails part way fails
// import (replay) or stops metadata changes (live), so the part applied is
// never used. Must hold p.mu.
func (p *Pool) cowRuns(r *replica, runs []run, live bool) error {
	if _, err := sumRuns(runs, uint64(len(r.m))); err != nil {
		return err
	}
	var total, next uint64
	for _, u := range runs {
		if u.Count == 0 || u.Logical >= uint64(len(r.m)) || uint64(u.Count) > uint64(len(r.m))-u.Logical || u.Logical < next {
			return fmt.Errorf("run %d+%d outside the replica's %d clusters or out of order", u.Logical, u.Count, len(r.m))
		}
		if u.Phys >= p.sb.ClusterCount || uint64(u.Count) > p.sb.ClusterCount-u.Phys {
			return fmt.Errorf("run at physical cluster %d+%d outside the pool's %d clusters", u.Phys, u.Count, p.sb.ClusterCount)
		}
		for i := range uint64(u.Count) {
			if r.m[u.Logical+i].Load() == 0 {
				return fmt.Errorf("logical cluster %d not mapped", u.Logical+i)
			}
		}
		next = u.Logical + uint64(u.Count)
		total += uint64(u.Count)
	}
	if live && total > p.reserved {
		return fmt.Errorf("%d clusters moved but only %d reserved", total, p.reserved)
	}
	mode := liveMode(live)
	for _, u := range runs {
		for i := range uint64(u.Count) {
			ph := u.Phys + i
			if p.refs[ph].Load() != 0 || p.bm.get(ph) != live {
				return fmt.Errorf("new physical cluster %d is not free", ph)
			}
			old := r.m[u.Logical+i].Load() - 1
			p.refCluster(ph, mode)
			r.m[u.Logical+i].Store(ph + 1)
			p.dropRef(old)
		}
	}
	if live {
		p.reserved -= total
	}
	return nil
}

// checkSize validates a replica size from a record.
func (p *Pool) checkSize(size uint64) error {
	if size == 0 || size%uint64(p.bs) != 0 {
		return fmt.Errorf("size %d is not a positive multiple of the %d-byte block size", size, p.bs)
	}
	if clustersFor(size, uint64(p.cs)) > MaxReplicaClusters {
		return fmt.Errorf("size %d spans more than %d clusters", size, MaxReplicaClusters)
	}
	return nil
}

func fmtUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
