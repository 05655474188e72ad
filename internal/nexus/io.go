package nexus

import (
	"fmt"
	"sync/atomic"

	"github.com/nexstor/nexstor/internal/bdev"
)

// enter admits an I/O; exit must follow when it returns nil.
func (n *Nexus) enter() error {
	n.inflight.Add(1)
	if n.closed.Load() {
		n.inflight.Add(-1)
		return bdev.ErrClosed
	}
	if n.failed.Load() {
		n.inflight.Add(-1)
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	return nil
}

func (n *Nexus) exit() { n.inflight.Add(-1) }

type opKind uint8

const (
	opWrite opKind = iota
	opZeroes
	opUnmap
	opFlush
)

var opNames = [...]string{"write", "write-zeroes", "unmap", "flush"}

func (k opKind) String() string { return opNames[k] }

// fanOp is one I/O fanned out to the writable children of a view. It is
// recycled through a free list: the fan-out does not allocate.
//
// The submitting goroutine hands the children after the first to the
// workers, does the first itself, and then takes back (claims) any child I/O
// no worker has started yet: when every CPU is busy, a woken worker would only
// run after the submitter blocks, so doing the work inline saves two
// context switches per child, while idle workers still give parallelism.
type fanOp struct {
	kind    opKind
	p       []byte
	off     int64
	length  int64
	members []*child
	errs    []error
	claimed []atomic.Bool
	// done receives one token per child I/O a worker ran; its capacity
	// covers every queued one, so a worker never blocks on it.
	done chan struct{}
	// refs counts the submitter and every queued child I/O; the last to
	// let go returns the op to the free list.
	refs atomic.Int32
}

func (o *fanOp) run(i int) error {
	d := o.members[i].dev
	switch o.kind {
	case opWrite:
		_, err := d.WriteAt(o.p, o.off)
		return err
	case opZeroes:
		return d.WriteZeroes(o.off, o.length)
	case opUnmap:
		return d.Unmap(o.off, o.length)
	default:
		return d.Flush()
	}
}

// childIO is the I/O of one child of a fanOp, queued for the workers.
type childIO struct {
	op *fanOp
	i  int
}

func (n *Nexus) worker() {
	defer n.wgWk.Done()
	for t := range n.queue {
		o := t.op
		if o.claimed[t.i].CompareAndSwap(false, true) {
			o.errs[t.i] = o.run(t.i)
			o.done <- struct{}{}
		}
		n.release(o)
	}
}

func (n *Nexus) release(o *fanOp) {
	if o.refs.Add(-1) == 0 {
		clear(o.errs)
		o.p, o.members = nil, nil
		select {
		case n.ops <- o:
		default:
		}
	}
}

// ReadAt implements io.ReaderAt. The read goes to the local online child
// when there is one, else round-robin over online children; a child that
// fails it is retired (persisted first) and the read is retried on
// another. Rebuilding children are never read.
func (n *Nexus) ReadAt(p []byte, off int64) (int, error) {
	if err := n.enter(); err != nil {
		return 0, err
	}
	defer n.exit()
	if err := bdev.CheckRange("read", off, int64(len(p)), n.size, n.bs); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var triedBuf [8]*child
	tried := triedBuf[:0]
	var lastErr error
	for {
		c := n.pickReader(n.view.Load(), tried, off, int64(len(p)))
		if c == nil {
			if lastErr != nil {
				return 0, fmt.Errorf("nexus %s: read at %d: every online child failed: %w", n.name, off, lastErr)
			}
			return 0, fmt.Errorf("nexus %s: read at %d: %w", n.name, off, ErrNoHealthyChild)
		}
		_, err := c.dev.ReadAt(p, off)
		if err == nil {
			return len(p), nil
		}
		lastErr = fmt.Errorf("child %s: %w", c.uri, err)
		if rerr := n.retireForRead(c, err); rerr != nil {
			return 0, rerr
		}
		n.readRetries.Add(1)
		tried = append(tried, c)
	}
}

// pickReader chooses the child to read [off, off+length) from: the resync
// authority while that range is not resynced, else the local online child,
// else the next online child round-robin; never one in tried.
func (n *Nexus) pickReader(v *view, tried []*child, off, length int64) *child {
	if a := n.resyncFrom.Load(); a != nil && off+length > n.resyncPos.Load() && a.st() == StateOnline && !contains(tried, a) {
		return a
	}
	if v.local != nil && !contains(tried, v.local) {
		return v.local
	}
	k := len(v.online)
	if k == 0 {
		return nil
	}
	start := int(n.rr.Add(1) % uint64(k))
	for i := 0; i < k; i++ {
		c := v.online[(start+i)%k]
		if !contains(tried, c) {
			return c
		}
	}
	return nil
}

func contains(s []*child, c *child) bool {
	for _, x := range s {
		if x == c {
			return true
		}
	}
	return false
}

// retireForRead retires c after it failed a read, unless it is no longer
// online (then there is nothing to do) or it is the last online child (then
// the read fails with the child's error and the child stays: retiring it
// would leave nothing to serve from). It returns nil when the caller may
// retry on another child.
func (n *Nexus) retireForRead(c *child, cause error) error {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if n.failed.Load() {
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	if c.st() != StateOnline {
		return nil
	}
	if n.onlineCountLocked() <= 1 {
		return fmt.Errorf("nexus %s: read failed on the last online child %s: %w", n.name, c.uri, cause)
	}
	n.faultLocked(c, ReasonIOError, cause)
	if err := n.saveLocked(nil, nil); err != nil {
		return err
	}
	n.publishLocked()
	return nil
}

func (n *Nexus) faultLocked(c *child, reason FaultReason, cause error) {
	c.state.Store(int32(StateFaulted))
	c.reason = reason
	if cause != nil {
		c.lastErr = cause.Error()
	}
	if reason == ReasonIOError {
		n.retired.Add(1)
	}
	if j := n.jobs[c]; j != nil {
		j.wake() // a paused rebuild of c ends now
	}
	n.log.Warn("child retired", "child", c.uri, "reason", reason, "err", cause)
}

// WriteAt implements io.WriterAt: the write reaches every online and
// rebuilding child and is acknowledged once they all completed it; a child
// that failed it is retired and persisted first.
func (n *Nexus) WriteAt(p []byte, off int64) (int, error) {
	if err := n.mutate(opWrite, p, off, int64(len(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteZeroes implements bdev.Device with the semantics of WriteAt.
func (n *Nexus) WriteZeroes(off, length int64) error {
	return n.mutate(opZeroes, nil, off, length)
}

// Unmap implements bdev.Device with the semantics of WriteAt: every child
// discards the range, so they keep reading back the same zeroes.
func (n *Nexus) Unmap(off, length int64) error {
	return n.mutate(opUnmap, nil, off, length)
}

// Flush implements bdev.Device: it fans out to every online and rebuilding
// child; one that fails is retired, and the flush succeeds when an online
// child that survives it succeeded.
func (n *Nexus) Flush() error {
	if err := n.enter(); err != nil {
		return err
	}
	defer n.exit()
	return n.fanOut(n.view.Load(), opFlush, nil, 0, 0)
}

func (n *Nexus) mutate(kind opKind, p []byte, off, length int64) error {
	if err := n.enter(); err != nil {
		return err
	}
	defer n.exit()
	if err := bdev.CheckRange(kind.String(), off, length, n.size, n.bs); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	e := n.locks.lock(off, length)
	defer n.locks.unlock(e)
	if n.failed.Load() {
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	// The view is loaded under the range lock: a rebuild copy of this
	// range, which needs the same lock, either completed before (and the
	// view already has the child rebuilding) or starts after this write.
	v := n.view.Load()
	if len(v.offline) > 0 {
		var err error
		if v, err = n.markDirty(v, off, length); err != nil {
			return err
		}
	}
	return n.fanOut(v, kind, p, off, length)
}

// markDirty makes sure every offline child has the bits of the segments
// [off, off+length) set and persisted before the write is issued, so that a
// crash after the write reached the online children still leaves the
// segment in the bitmap. Only the first write to a segment pays a store
// write. It returns the view to write with, loaded under stateMu so that it
// agrees with the bits (a child brought online meanwhile is in it).
func (n *Nexus) markDirty(v *view, off, length int64) (*view, error) {
	first, last := off/n.seg, (off+length-1)/n.seg
	need := false
	for _, c := range v.offline {
		if !c.dirty.allSet(first, last) {
			need = true
			break
		}
	}
	if !need {
		return v, nil
	}
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	var pending []*child
	for _, c := range n.children {
		if c.st() == StateOffline && !c.dirty.allSet(first, last) {
			pending = append(pending, c)
		}
	}
	if len(pending) > 0 {
		// Bits go live (visible to the lock-free check above) only after
		// the store has them: a concurrent write to the same segment
		// must not skip the store on a bit that is not yet durable.
		err := n.saveLocked(nil, func(rec *HealthRecord) {
			for i, c := range n.children {
				if contains(pending, c) {
					bm := rec.Children[i].Bitmap
					for s := first; s <= last; s++ {
						bm[s/8] |= 1 << (s % 8)
					}
				}
			}
		})
		if err != nil {
			return nil, err
		}
		for _, c := range pending {
			for s := first; s <= last; s++ {
				c.dirty.set(s)
			}
		}
	}
	return n.view.Load(), nil
}

func (n *Nexus) getOp(k int) *fanOp {
	var o *fanOp
	select {
	case o = <-n.ops:
	default:
		o = &fanOp{}
	}
	if cap(o.errs) < k {
		o.errs = make([]error, k)
		o.claimed = make([]atomic.Bool, k)
		o.done = make(chan struct{}, k)
	}
	o.errs, o.claimed = o.errs[:k], o.claimed[:k]
	return o
}

func (n *Nexus) fanOut(v *view, kind opKind, p []byte, off, length int64) error {
	w := v.writable
	if len(v.online) == 0 {
		return fmt.Errorf("nexus %s: %s at %d: %w", n.name, kind, off, ErrNoHealthyChild)
	}
	o := n.getOp(len(w))
	o.kind, o.p, o.off, o.length, o.members = kind, p, off, length, w
	o.refs.Store(int32(len(w)))
	for i := 1; i < len(w); i++ {
		o.claimed[i].Store(false)
		n.queue <- childIO{op: o, i: i}
	}
	o.errs[0] = o.run(0)
	running := 0
	for i := 1; i < len(w); i++ {
		if o.claimed[i].CompareAndSwap(false, true) {
			o.errs[i] = o.run(i)
		} else {
			running++
		}
	}
	for ; running > 0; running-- {
		<-o.done
	}
	var err error
	for _, e := range o.errs {
		if e != nil {
			err = n.handleFailures(w, o.errs, kind, off)
			break
		}
	}
	n.release(o)
	return err
}

// handleFailures decides the fate of an I/O that failed on some children.
// It is acknowledged only if an online child that survives this decision
// completed it; then every child that failed it is retired, and the new
// health set is persisted before returning. Otherwise the I/O fails and the
// online children that failed it stay (nobody is known to be better), while
// rebuilding children that failed it are retired since they no longer match.
func (n *Nexus) handleFailures(members []*child, errs []error, kind opKind, off int64) error {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if n.failed.Load() {
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	ok := false
	var firstErr error
	for i, c := range members {
		if errs[i] == nil && c.st() == StateOnline {
			ok = true
		}
		if errs[i] != nil && firstErr == nil {
			firstErr = fmt.Errorf("child %s: %w", c.uri, errs[i])
		}
	}
	changed := false
	for i, c := range members {
		if errs[i] == nil {
			continue
		}
		switch st := c.st(); {
		case st == StateRebuilding, st == StateOnline && ok:
			n.faultLocked(c, ReasonIOError, errs[i])
			changed = true
		}
	}
	if changed {
		if err := n.saveLocked(nil, nil); err != nil {
			return err
		}
		n.publishLocked()
	}
	if !ok {
		return fmt.Errorf("nexus %s: %s at %d failed on every online child: %w", n.name, kind, off, firstErr)
	}
	return nil
}
