package nexus

import (
	"sync"
	"sync/atomic"
)

// What a child that leaves may lack, and how the nexus knows it.
//
// A child that leaves on an error (offline, with a write-intent bitmap) may
// lack, besides what is written while it is away:
//
//   - the writes in flight to it when it left: they may have failed on it,
//     or landed on it while the online children never got them (a crash
//     before they were acknowledged);
//   - every write it completed since the last flush that succeeded on it:
//     its node may have lost its volatile cache with them.
//
// Its bitmap therefore starts as the union of the ranges that hold a write
// lock (rangeLock.writes: every write in flight, since a write holds its
// range lock from before it loads the view until after it has settled) and
// of the unflushed regions below, and the write that retired it adds its own
// range. Writes still in flight to it afterwards find it offline when they
// settle and add theirs before they are acknowledged.

// unflushedRegions bounds the regions unflushed tracks, so that a flush
// clears a fixed, small number of words whatever the volume's size.
const unflushedRegions = 4096

// unflushed tracks, at a coarse fixed granularity (regions of whole
// segments), what was written since the last flush that completed. There
// are two generations: writes set bits in the current one after they
// completed on the children and before they are acknowledged; a flush makes
// the other one current before it issues, and clears the one it retired
// once it succeeded, since it covered every write completed before it was
// issued. A write that loads the generation after the switch marks the new
// one, which only keeps its bits longer. Marking is an atomic load (and an
// atomic or the first time a region is written); nothing is allocated.
type unflushed struct {
	regSegs int64 // segments per region
	nreg    int64
	cur     atomic.Uint32
	gens    [2][]atomic.Uint64
}

// newUnflushed returns the tracking of a device of nseg segments, with
// nothing marked.
func newUnflushed(nseg int64) *unflushed {
	u := &unflushed{}
	u.regSegs = max(1, (nseg+unflushedRegions-1)/unflushedRegions)
	u.nreg = (nseg + u.regSegs - 1) / u.regSegs
	for g := range u.gens {
		u.gens[g] = make([]atomic.Uint64, (u.nreg+63)/64)
	}
	return u
}

// grown returns the tracking of a device grown to nseg segments, with every
// segment marked in u (either generation) marked in its current one. The
// caller keeps writes out while it copies (Resize holds a range lock over
// everything); a flush that retired a generation of u meanwhile clears it
// in u only, so the copy keeps those bits until the next flush, which is
// conservative.
func (u *unflushed) grown(nseg int64) *unflushed {
	g := newUnflushed(nseg)
	for r := int64(0); r < u.nreg; r++ {
		bit := uint64(1) << (r % 64)
		if u.gens[0][r/64].Load()&bit == 0 && u.gens[1][r/64].Load()&bit == 0 {
			continue
		}
		g.mark(r*u.regSegs, min((r+1)*u.regSegs, nseg)-1)
	}
	return g
}

// mark records that segments [first, last] were written.
func (u *unflushed) mark(first, last int64) {
	g := u.gens[u.cur.Load()]
	for r := first / u.regSegs; r <= last/u.regSegs; r++ {
		w, bit := &g[r/64], uint64(1)<<(r%64)
		if w.Load()&bit == 0 {
			w.Or(bit)
		}
	}
}

// flip makes the other generation current and returns the retired one.
func (u *unflushed) flip() uint32 {
	old := u.cur.Load()
	u.cur.Store(old ^ 1)
	return old
}

// clear forgets generation g: a flush issued after it was retired succeeded.
func (u *unflushed) clear(g uint32) {
	for i := range u.gens[g] {
		u.gens[g][i].Store(0)
	}
}

// addTo sets in b (one bit per segment) every segment of a region marked in
// either generation.
func (u *unflushed) addTo(b *bitmap) {
	for r := int64(0); r < u.nreg; r++ {
		bit := uint64(1) << (r % 64)
		if u.gens[0][r/64].Load()&bit == 0 && u.gens[1][r/64].Load()&bit == 0 {
			continue
		}
		for s := r * u.regSegs; s < (r+1)*u.regSegs && s < b.n; s++ {
			b.set(s)
		}
	}
}

// segSpan is a range of segments, [first, last].
type segSpan struct{ first, last int64 }

// dirtyCommit group-commits write-intent bits: while a child is offline, the
// first write to each of its clean segments must have the segment's bit
// saved before it is issued. Writers queue their span; whoever finds no save
// in progress becomes the leader and saves every queued span in one record
// (then lets the next waiter lead), so concurrent writers share saves
// instead of paying one each, in turn. Waiting does not allocate.
type dirtyCommit struct {
	mu      sync.Mutex
	cond    sync.Cond
	leading bool
	queued  []segSpan
	spare   []segSpan
	ticket  uint64 // spans queued so far
	saved   uint64 // every ticket up to this one was saved (or failed)
	// failFrom is the first ticket of the first batch whose save failed
	// (0: none). A failed save fails the nexus, so every later one fails
	// too.
	failFrom uint64
	failErr  error
}

// commit makes sure that every offline child has the bits of the segments
// [first, last] saved, and set, before it returns nil.
func (n *Nexus) commitDirty(first, last int64) error {
	d := &n.dc
	d.mu.Lock()
	d.queued = append(d.queued, segSpan{first, last})
	d.ticket++
	t := d.ticket
	for d.saved < t {
		if d.leading {
			d.cond.Wait()
			continue
		}
		d.leading = true
		batch, hi, lo := d.queued, d.ticket, d.saved+1
		d.queued = d.spare[:0]
		d.mu.Unlock()
		err := n.saveDirty(batch)
		d.mu.Lock()
		d.spare = batch[:0]
		d.saved = hi
		if err != nil && d.failFrom == 0 {
			d.failFrom, d.failErr = lo, err
		}
		d.leading = false
		d.cond.Broadcast()
	}
	var err error
	if d.failFrom != 0 && t >= d.failFrom {
		err = d.failErr
	}
	d.mu.Unlock()
	return err
}

// saveDirty saves the bits of spans for every offline child that lacks
// them, and sets them once saved: a bit goes live (visible to the lock-free
// check of the write path) only when it is durable, so that no write skips
// the store on a bit that a crash would lose.
func (n *Nexus) saveDirty(spans []segSpan) error {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if err := n.stoppedErr(); err != nil {
		return err
	}
	need := false
	for _, c := range n.children {
		if c.st() != StateOffline {
			continue
		}
		for _, sp := range spans {
			if !c.dirty.allSet(sp.first, sp.last) {
				need = true
			}
		}
	}
	if !need {
		return nil
	}
	err := n.saveLocked(nil, func(rec *HealthRecord) {
		for i, c := range n.children {
			if c.st() != StateOffline {
				continue
			}
			bm := rec.Children[i].Bitmap
			for _, sp := range spans {
				for s := sp.first; s <= sp.last; s++ {
					bm[s/8] |= 1 << (s % 8)
				}
			}
		}
	})
	if err != nil {
		return err
	}
	for _, c := range n.children {
		if c.st() != StateOffline {
			continue
		}
		for _, sp := range spans {
			for s := sp.first; s <= sp.last; s++ {
				c.dirty.set(s)
			}
		}
	}
	return nil
}
