package pool

import (
	"fmt"
	"sync/atomic"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/iobuf"
)

// Replica is an open handle to a replica; it implements bdev.Device with the
// pool's block size. Reads of clusters a thin replica has never written
// return zeroes. The first write to a cluster of a thin replica allocates
// it: the cluster is zeroed around the data, the data written, and the
// allocation made durable before WriteAt returns; concurrent first writes to
// one cluster allocate it once, and concurrent allocations share one
// metadata flush. Writes to allocated clusters and reads go straight to the
// pool's device without taking any lock that serializes I/O. Flush flushes
// the pool's device. WriteAt returns an error wrapping ErrNoSpace and
// bdev.ErrNoSpace when the pool has no free cluster; the pool stays
// consistent.
//
// A Replica from OpenReplica is unclaimed: while the replica has an owner
// (see Claim) it reads, but its writes, flushes, unmaps and write-zeroes
// fail with an error wrapping *bdev.OwnedError, so that a share of an owned
// replica cannot change it behind its nexus's back.
//
// Methods are safe for concurrent use. Close closes only this handle.
type Replica struct {
	p      *Pool
	r      *replica
	closed atomic.Bool
	// session is 0 for an unclaimed handle, else the replica's session
	// when the claim that made this handle was taken.
	session uint64
}

var (
	errHandleClosed = fmt.Errorf("replica handle is closed: %w", bdev.ErrClosed)
	errPoolClosedIO = fmt.Errorf("pool is closed: %w (%w)", ErrClosed, bdev.ErrClosed)
)

var _ bdev.Device = (*Replica)(nil)

// Name returns the replica's name.
func (h *Replica) Name() string { return h.r.name }

// UUID returns the replica's UUID in canonical text form.
func (h *Replica) UUID() string { return h.r.uuidStr }

// Size returns the replica's size in bytes; it changes when the replica is resized.
func (h *Replica) Size() int64 { return h.r.size.Load() }

// BlockSize returns the pool's block size.
func (h *Replica) BlockSize() int { return int(h.p.bs) }

func (h *Replica) check(op string, off, n int64) error {
	if h.closed.Load() {
		return errHandleClosed
	}
	if h.p.closed.Load() {
		return errPoolClosedIO
	}
	return bdev.CheckRange(op, off, n, h.r.size.Load(), int(h.p.bs))
}

// lockIO takes r.io shared for one I/O. It fails when the replica was
// destroyed (or the handle closed) after check passed: DestroyReplica waits
// for I/O that holds r.io, but an I/O that takes it only afterwards must
// not touch clusters that are free now, nor commit records for a replica
// that no longer exists. It fails, too, when a later claim superseded this
// handle, or, for a change (write) through an unclaimed handle, when the
// replica has an owner: claims change both with r.io held exclusively, so
// no I/O that passed these checks is in flight when a claim returns.
func (h *Replica) lockIO(op string, write bool) error {
	h.r.io.RLock()
	if err := h.admitLocked(op, write); err != nil {
		h.r.io.RUnlock()
		return err
	}
	return nil
}

// admitLocked checks that I/O through h may run now. Must hold r.io (either
// way).
func (h *Replica) admitLocked(op string, write bool) error {
	r := h.r
	if r.gone.Load() || h.closed.Load() {
		return errHandleClosed
	}
	if write && r.snap {
		return fmt.Errorf("pool %q: snapshot %q is read-only: %s refused: %w", h.p.sb.Name, r.name, op, bdev.ErrReadOnly)
	}
	if h.session != 0 {
		if r.session.Load() != h.session {
			return h.fenced(op)
		}
	} else if write {
		if c := r.claim.Load(); c.owner != (uuid.UUID{}) {
			return h.owned(op, c.owner)
		}
	}
	return nil
}

func (h *Replica) ioError(op string, off int64, err error) error {
	return fmt.Errorf("pool %q: replica %q: %s at offset %d: %w", h.p.sb.Name, h.r.name, op, off, err)
}

// segment returns, for the byte at pos of a request ending at end, the
// mapping entry of its cluster and how many bytes from pos share the same
// state (all unallocated, or physically contiguous), so that contiguous
// clusters become one device I/O.
func (h *Replica) segment(pos, end int64) (v uint64, n int64) {
	p, m := h.p, h.r.m
	lc := pos >> p.csShift
	v = m[lc].Load()
	n = min(end-pos, p.cs-pos&(p.cs-1))
	for last := v; pos+n < end; {
		lc++
		next := m[lc].Load()
		if (last == 0) != (next == 0) || (last != 0 && next != last+1) {
			break
		}
		last = next
		n += min(end-pos-n, p.cs)
	}
	return v, n
}

// exclusiveSpan returns how many of the n bytes from pos (a segment whose
// first cluster maps to entry v) lie in clusters that only this replica
// holds, which may be written in place; the rest must be copied first
// (copy-on-write). The count is read before the map entry is read again: a
// cow record's apply changes the entry before it drops the old cluster's
// reference, so a count of 1 read for a cluster the entry still names
// means this replica is its only holder, and only a snapshot of this
// replica, which waits for the I/O holding r.io, could add another. Must
// hold r.io shared.
func (h *Replica) exclusiveSpan(pos, n int64, v uint64) int64 {
	p, m := h.p, h.r.m
	if !p.snapOn.Load() {
		return n
	}
	lc := pos >> p.csShift
	var done int64
	for done < n {
		if p.refs[v-1].Load() != 1 || m[lc].Load() != v {
			break
		}
		done += min(n-done, p.cs-(pos+done)&(p.cs-1))
		lc++
		v++
	}
	return done
}

// exclusive reports whether logical cluster lc, mapped to entry v, may be
// written in place (see exclusiveSpan).
func (h *Replica) exclusive(lc, v uint64) bool {
	return !h.p.snapOn.Load() || (h.p.refs[v-1].Load() == 1 && h.r.m[lc].Load() == v)
}

// ReadAt reads len(b) bytes at off. Unallocated clusters read as zeroes.
func (h *Replica) ReadAt(b []byte, off int64) (int, error) {
	if err := h.check("read", off, int64(len(b))); err != nil {
		return 0, err
	}
	p, r := h.p, h.r
	if err := h.lockIO("read", false); err != nil {
		return 0, err
	}
	defer r.io.RUnlock()
	end := off + int64(len(b))
	for pos := off; pos < end; {
		v, n := h.segment(pos, end)
		seg := b[pos-off : pos-off+n]
		if v == 0 {
			clear(seg)
		} else if _, err := p.dev.ReadAt(seg, p.physOff(v-1)+pos&(p.cs-1)); err != nil {
			return int(pos - off), h.ioError("read", pos, err)
		}
		pos += n
	}
	return len(b), nil
}

// WriteAt writes b at off. See Replica for allocation and durability.
func (h *Replica) WriteAt(b []byte, off int64) (int, error) {
	if err := h.check("write", off, int64(len(b))); err != nil {
		return 0, err
	}
	p, r := h.p, h.r
	if err := h.lockIO("write", true); err != nil {
		return 0, err
	}
	defer r.io.RUnlock()
	end := off + int64(len(b))
	for pos := off; pos < end; {
		v, n := h.segment(pos, end)
		if v != 0 {
			n = h.exclusiveSpan(pos, n, v)
		}
		if v == 0 || n == 0 {
			// The rest of the write needs at least one new cluster, or a
			// copy of a shared one.
			if at, err := h.allocWriteRange(pos, b[pos-off:]); err != nil {
				return int(pos - off), h.ioError("write", at, err)
			}
			return len(b), nil
		} else if _, err := p.dev.WriteAt(b[pos-off:pos-off+n], p.physOff(v-1)+pos&(p.cs-1)); err != nil {
			return int(pos - off), h.ioError("write", pos, err)
		}
		pos += n
	}
	return len(b), nil
}

// allocWrite writes data at in within logical cluster lc, allocating it
// when it is unallocated, copying it when it is shared. Concurrent callers
// for the same cluster wait for the first one's allocation or copy and then
// write to the cluster it leaves. Must hold r.io shared.
func (h *Replica) allocWrite(lc uint64, in int64, data []byte) error {
	p, r := h.p, h.r
	for {
		r.allocMu.Lock()
		v := r.m[lc].Load()
		if v != 0 && h.exclusive(lc, v) {
			r.allocMu.Unlock()
			_, err := p.dev.WriteAt(data, p.physOff(v-1)+in)
			return err
		}
		if c := r.inflight[lc]; c != nil {
			r.allocMu.Unlock()
			<-c.done
			continue // allocated now, or failed: then try ourselves
		}
		c := &allocCall{done: make(chan struct{})}
		r.inflight[lc] = c
		r.allocMu.Unlock()
		err := p.allocateMany(r, []claim{{lc: lc, in: in, data: data, old: v}})
		r.allocMu.Lock()
		delete(r.inflight, lc)
		r.allocMu.Unlock()
		c.err = err
		close(c.done)
		return err
	}
}

// claim is one cluster of a write being allocated.
type claim struct {
	lc   uint64
	in   int64 // offset of data within the cluster
	data []byte
	call *allocCall
	ph   uint64
	old  uint64 // map entry of the shared cluster to copy; 0: unallocated
}

// maxClaims bounds the clusters one metadata record allocates, so a huge
// write over a small log still commits (in several records).
const maxClaims = 64

// allocWriteRange writes data at pos, allocating every unallocated cluster
// it covers with one metadata commit (per maxClaims clusters) rather than
// one per cluster. Clusters another writer is already allocating are
// written once that allocation completes. On error it returns the offset
// that failed. Must hold r.io shared.
func (h *Replica) allocWriteRange(pos int64, data []byte) (int64, error) {
	p, r := h.p, h.r
	end := pos + int64(len(data))
	var claims, later []claim
	type direct struct {
		at   int64
		data []byte
	}
	var directs []direct
	for cur := pos; cur < end; {
		lc, in := uint64(cur>>p.csShift), cur&(p.cs-1)
		n := min(end-cur, p.cs-in)
		seg := data[cur-pos : cur-pos+n]
		r.allocMu.Lock()
		if v := r.m[lc].Load(); v != 0 && h.exclusive(lc, v) {
			r.allocMu.Unlock()
			directs = append(directs, direct{p.physOff(v-1) + in, seg})
		} else if r.inflight[lc] != nil {
			r.allocMu.Unlock()
			later = append(later, claim{lc: lc, in: in, data: seg})
		} else {
			c := &allocCall{done: make(chan struct{})}
			r.inflight[lc] = c
			r.allocMu.Unlock()
			claims = append(claims, claim{lc: lc, in: in, data: seg, call: c, old: v})
		}
		cur += n
	}
	var err error
	var at int64
	for _, d := range directs {
		if _, err = p.dev.WriteAt(d.data, d.at); err != nil {
			at = pos
			break
		}
	}
	for i := 0; i < len(claims); i += maxClaims {
		chunk := claims[i:min(i+maxClaims, len(claims))]
		if err == nil {
			if err = p.allocateMany(r, chunk); err != nil {
				at = int64(chunk[0].lc)<<p.csShift + chunk[0].in
			}
		}
		r.allocMu.Lock()
		for _, c := range chunk {
			delete(r.inflight, c.lc)
		}
		r.allocMu.Unlock()
		for _, c := range chunk {
			c.call.err = err
			close(c.call.done)
		}
	}
	if err != nil {
		return at, err
	}
	for _, c := range later {
		if err := h.allocWrite(c.lc, c.in, c.data); err != nil {
			return int64(c.lc)<<p.csShift + c.in, err
		}
	}
	return 0, nil
}

// allocateMany takes a free cluster for each claim, fills it (zeroes
// around the claim's data for an unallocated cluster, the shared cluster's
// content around it for a copy-on-write), writes the data, and commits the
// new mappings: one map record for the unallocated clusters, one cow record
// for the copies. On failure every cluster taken and not committed is
// released.
func (p *Pool) allocateMany(r *replica, claims []claim) error {
	p.mu.Lock()
	if err := p.usableLocked(); err != nil {
		p.mu.Unlock()
		return err
	}
	if p.byUUID[r.uuid] != r {
		// Destroyed: a map record for it would not apply.
		p.mu.Unlock()
		return p.errf("replica %q was destroyed: %w", r.name, ErrNotFound)
	}
	if free := p.sb.ClusterCount - p.owned - p.reserved; uint64(len(claims)) > free {
		p.mu.Unlock()
		return fmt.Errorf("pool %q has %d free clusters, the write needs %d; free space by destroying replicas, deleting snapshots or unmapping data: %w (%w)",
			p.sb.Name, free, len(claims), ErrNoSpace, bdev.ErrNoSpace)
	}
	mapRec := &record{Type: recMap, E: entry{UUID: r.uuid}}
	cowRec := &record{Type: recCOW, E: entry{UUID: r.uuid}}
	for i := range claims {
		ph, _ := p.bm.take() // cannot fail: enough clusters are free
		claims[i].ph = ph
		rec := mapRec
		if claims[i].old != 0 {
			rec = cowRec
		}
		rec.E.Runs = append(rec.E.Runs, run{Logical: claims[i].lc, Phys: ph, Count: 1})
	}
	p.reserved += uint64(len(claims))
	p.mu.Unlock()
	var pending []*record // not committed yet: released on failure
	if len(mapRec.E.Runs) > 0 {
		pending = append(pending, mapRec)
	}
	if len(cowRec.E.Runs) > 0 {
		pending = append(pending, cowRec)
	}
	err := func() error {
		for _, c := range claims {
			base := p.physOff(c.ph)
			e := c.in + int64(len(c.data))
			if c.old != 0 {
				// Copy what the write does not cover; the shared cluster
				// itself is never written.
				if err := p.copyRange(c.old-1, c.ph, 0, c.in); err != nil {
					return err
				}
				if err := p.copyRange(c.old-1, c.ph, e, p.cs); err != nil {
					return err
				}
			} else {
				// A reused cluster holds another replica's old data: zero
				// what the write does not cover, so nothing leaks.
				if c.in > 0 {
					if err := p.dev.WriteZeroes(base, c.in); err != nil {
						return err
					}
				}
				if e < p.cs {
					if err := p.dev.WriteZeroes(base+e, p.cs-e); err != nil {
						return err
					}
				}
			}
			if _, err := p.dev.WriteAt(c.data, base+c.in); err != nil {
				return err
			}
		}
		for len(pending) > 0 {
			if err := p.commit(pending[0]); err != nil {
				return err
			}
			pending = pending[1:]
		}
		return nil
	}()
	for _, rec := range pending {
		if err != nil {
			p.releaseRuns(rec.E.Runs)
		}
	}
	return err
}

// copyBufSize is the size of the buffers (from package iobuf) that
// copy-on-write copies through.
const copyBufSize = 1 << 20

// copyRange copies bytes [start, end) of physical cluster from to the same
// place in physical cluster to.
func (p *Pool) copyRange(from, to uint64, start, end int64) error {
	if start >= end {
		return nil
	}
	bp := iobuf.Get(copyBufSize)
	defer iobuf.Put(bp)
	buf := *bp
	for off := start; off < end; {
		n := min(int64(len(buf)), end-off)
		if _, err := p.dev.ReadAt(buf[:n], p.physOff(from)+off); err != nil {
			return fmt.Errorf("copy-on-write: reading cluster %d: %w", from, err)
		}
		if _, err := p.dev.WriteAt(buf[:n], p.physOff(to)+off); err != nil {
			return fmt.Errorf("copy-on-write: writing cluster %d: %w", to, err)
		}
		off += n
	}
	return nil
}

// Flush makes every acknowledged write durable: allocations already are, so
// this flushes the pool's device. Once a flush of the pool's device has
// failed (here, for another replica, or for metadata), every later Flush
// fails: writes acknowledged before the failure may be lost.
func (h *Replica) Flush() error {
	if err := h.check("flush", 0, 0); err != nil {
		return err
	}
	// A flush changes no data, so it need not wait for r.io: a claim that
	// returns while a superseded handle's flush runs loses nothing.
	if h.session != 0 {
		if h.r.session.Load() != h.session {
			return h.fenced("flush")
		}
	} else if c := h.r.claim.Load(); c.owner != (uuid.UUID{}) {
		return h.owned("flush", c.owner)
	}
	if err := h.p.flushDev(); err != nil {
		return h.ioError("flush", 0, err)
	}
	return nil
}

// Unmap discards the range: later reads return zeroes. A thin replica
// releases the whole clusters in the range back to the pool (durably, before
// returning) and zeroes partial ones; a thick replica keeps its clusters and
// unmaps the range on the device.
func (h *Replica) Unmap(off, length int64) error { return h.discard("unmap", off, length, true) }

// WriteZeroes sets the range to zeroes. Like Unmap, a thin replica releases
// the whole clusters in the range.
func (h *Replica) WriteZeroes(off, length int64) error {
	return h.discard("write-zeroes", off, length, false)
}

func (h *Replica) discard(op string, off, length int64, unmap bool) error {
	if err := h.check(op, off, length); err != nil {
		return err
	}
	p, r := h.p, h.r
	end := off + length
	whole := false
	err := func() error {
		if err := h.lockIO(op, true); err != nil {
			return err
		}
		defer r.io.RUnlock()
		for pos := off; pos < end; {
			v, n := h.segment(pos, end)
			if v == 0 {
				pos += n
				continue
			}
			if r.thin {
				n = min(end-pos, p.cs-pos&(p.cs-1))
				if n == p.cs {
					whole = true
					pos += n
					continue
				}
				if h.exclusiveSpan(pos, n, v) < n {
					// A shared cluster: zero a copy of it instead.
					if at, err := h.allocWriteRange(pos, make([]byte, n)); err != nil {
						return h.ioError(op, at, err)
					}
					pos += n
					continue
				}
			}
			at := p.physOff(v-1) + pos&(p.cs-1)
			var err error
			if unmap && !r.thin {
				err = p.dev.Unmap(at, n)
			} else {
				err = p.dev.WriteZeroes(at, n)
			}
			if err != nil {
				return h.ioError(op, pos, err)
			}
			pos += n
		}
		return nil
	}()
	if err != nil || !whole {
		return err
	}
	// Release whole clusters with I/O to the replica paused, so none is
	// freed under a read or write in flight.
	r.io.Lock()
	defer r.io.Unlock()
	// A claim may have come between the two phases.
	if err := h.admitLocked(op, true); err != nil {
		return err
	}
	e := entry{UUID: r.uuid}
	first := (off + p.cs - 1) >> p.csShift
	for lc := first; (lc+1)<<p.csShift <= end; lc++ {
		if r.m[lc].Load() == 0 {
			continue
		}
		if n := len(e.Runs); n > 0 && e.Runs[n-1].Logical+uint64(e.Runs[n-1].Count) == uint64(lc) {
			e.Runs[n-1].Count++
		} else {
			e.Runs = append(e.Runs, run{Logical: uint64(lc), Count: 1})
		}
	}
	// Several records when the clusters are scattered, so that each fits
	// even the smallest log; a discard need not be atomic.
	for len(e.Runs) > 0 {
		n := min(len(e.Runs), maxUnmapRuns)
		if err := p.commit(&record{Type: recUnmap, E: entry{UUID: r.uuid, Runs: e.Runs[:n]}}); err != nil {
			return h.ioError(op, off, err)
		}
		e.Runs = e.Runs[n:]
	}
	return nil
}

// maxUnmapRuns bounds the runs of one unmap record: about 5 KiB, a third of
// the smallest log.
const maxUnmapRuns = 256

// Close closes this handle; other handles and the replica stay.
func (h *Replica) Close() error {
	if h.closed.Swap(true) {
		return errHandleClosed
	}
	h.p.mu.Lock()
	h.r.opens--
	h.p.mu.Unlock()
	return nil
}
