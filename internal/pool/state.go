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

	// Guarded by Pool.mu.
	owned      uint64 // clusters mapped
	opens      int    // open handles
	destroying bool
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
	if e.HasID && rec.Type != recCreate && rec.Type != recClaim {
		return fmt.Errorf("record type %d carries an identity block", rec.Type)
	}
	switch rec.Type {
	case recCreate:
		if r != nil {
			return fmt.Errorf("create: replica %s exists", fmtUUID(e.UUID))
		}
		if err := validName(e.Name); err != nil {
			return fmt.Errorf("create: %w", err)
		}
		if p.byName[e.Name] != nil {
			return fmt.Errorf("create: replica name %q exists", e.Name)
		}
		if uint64(len(p.byName)) >= uint64(p.sb.MaxReplicas) {
			return fmt.Errorf("create: more than %d replicas", p.sb.MaxReplicas)
		}
		if err := p.checkSize(e.Size); err != nil {
			return fmt.Errorf("create: %w", err)
		}
		if p.spanned+clustersFor(e.Size, cs) > maxSpannedClusters {
			return fmt.Errorf("create: replicas would span more than %d clusters", maxSpannedClusters)
		}
		// Version 1 entries have no identity; the upgrade draws one. A
		// version 2 pool has one for every replica.
		if !e.HasID && p.sb.Version != formatV1 {
			return fmt.Errorf("create %q: no identity block", e.Name)
		}
		if e.HasID && e.ID.NGUID == ([16]byte{}) {
			return fmt.Errorf("create %q: zero NGUID", e.Name)
		}
		r = &replica{name: e.Name, uuid: e.UUID, uuidStr: fmtUUID(e.UUID), thin: e.Thin, inflight: map[uint64]*allocCall{},
			nguid: e.ID.NGUID}
		r.claim.Store(&claimState{owner: e.ID.Owner, epoch: e.ID.Epoch})
		r.grow(e.Size, cs)
		if err := p.mapRuns(r, e.Runs, live); err != nil {
			return fmt.Errorf("create %q: %w", e.Name, err)
		}
		r.size.Store(int64(e.Size))
		p.spanned += clustersFor(e.Size, cs)
		p.byUUID[e.UUID] = r
		p.byName[e.Name] = r
		p.committed += e.Size
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
		if err := p.mapRuns(r, e.Runs, live); err != nil {
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
				p.bm.clr(v - 1)
				r.m[i].Store(0)
			}
		}
		p.owned -= r.owned
		p.committed -= uint64(r.size.Load())
		p.spanned -= clustersFor(uint64(r.size.Load()), cs)
		r.owned = 0
		r.gone.Store(true)
		delete(p.byUUID, e.UUID)
		delete(p.byName, r.name)
	case recMap:
		if r == nil {
			return fmt.Errorf("map: replica %s unknown", fmtUUID(e.UUID))
		}
		if err := p.mapRuns(r, e.Runs, live); err != nil {
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
				p.bm.clr(r.m[l].Load() - 1)
				r.m[l].Store(0)
				r.owned--
				p.owned--
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
	e := entry{UUID: r.uuid, Size: uint64(r.size.Load()), Thin: r.thin, Name: r.name, Runs: r.runs()}
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

// mapRuns validates runs against r and the bitmap, then maps them. Nothing
// changes when validation fails.
func (p *Pool) mapRuns(r *replica, runs []run, live bool) error {
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
			if r.m[u.Logical+i].Load() != 0 {
				return fmt.Errorf("logical cluster %d mapped twice", u.Logical+i)
			}
			if p.bm.get(u.Phys+i) != live {
				if live {
					return fmt.Errorf("physical cluster %d was not reserved", u.Phys+i)
				}
				return fmt.Errorf("physical cluster %d owned twice", u.Phys+i)
			}
		}
		total += uint64(u.Count)
	}
	if live && total > p.reserved {
		return fmt.Errorf("%d clusters mapped but only %d reserved", total, p.reserved)
	}
	// Second pass: a run may repeat a cluster of an earlier run of the same
	// record; mark as we go and undo on conflict.
	done := 0
	for _, u := range runs {
		for i := range uint64(u.Count) {
			l, ph := u.Logical+i, u.Phys+i
			if r.m[l].Load() != 0 || (!live && p.bm.get(ph)) {
				p.unmapPrefix(r, runs, done, live)
				return fmt.Errorf("cluster %d (logical %d) repeated in one record", ph, l)
			}
			if !live {
				p.bm.set(ph)
			}
			r.m[l].Store(ph + 1)
			done++
		}
	}
	if live {
		p.reserved -= total
	}
	r.owned += total
	p.owned += total
	return nil
}

// unmapPrefix undoes the first n cluster mappings mapRuns made.
func (p *Pool) unmapPrefix(r *replica, runs []run, n int, live bool) {
	for _, u := range runs {
		for i := range uint64(u.Count) {
			if n == 0 {
				return
			}
			if !live {
				p.bm.clr(u.Phys + i)
			}
			r.m[u.Logical+i].Store(0)
			n--
		}
	}
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
