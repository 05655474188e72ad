package nexus

// The I/O path: admission, the fan-out of writes and flushes to the
// writable children, reads with retry, and what a failing child costs.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

// enter admits an I/O; exit must follow when it returns nil.
func (n *Nexus) enter() error {
	n.inflight.Add(1)
	if n.closed.Load() {
		n.exit()
		return bdev.ErrClosed
	}
	if n.failed.Load() || n.fenced.Load() {
		n.exit()
		return n.stoppedErr()
	}
	return nil
}

// exit ends an I/O admitted by enter. The last one to leave a closed nexus
// lets Close go on.
func (n *Nexus) exit() {
	if n.inflight.Add(-1) == 0 && n.closed.Load() {
		n.signalIdle()
	}
}

func (n *Nexus) signalIdle() { n.idleOnce.Do(func() { close(n.idle) }) }

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
	// pend holds the writes started on children that are
	// bdev.WriteStarters, until the submitter waited for them.
	pend []bdev.Pending
	// done receives one token per child I/O a worker ran; its capacity
	// covers every queued one, so a worker never blocks on it.
	done chan struct{}
	// refs counts the submitter and every queued child I/O; the last to
	// let go returns the op to the free list.
	refs atomic.Int32
}

// run issues child i's I/O (see runChild).
func (o *fanOp) run(i int) error { return runChild(o.members[i], o.kind, o.p, o.off, o.length) }

// costSample: one child I/O in costSample, at random, is timed and folded
// into the child's cost. The cost only picks inline or handed-off issue and
// follows a change of the child's speed within a few hundred I/Os either
// way, while two clock reads per child I/O were a tenth of a 3-way RAM
// mirror's CPU.
const costSample = 8

// runChild issues c's part of an I/O and, unless it is a flush, now and
// then folds its service time into c's cost (see costSample); always while
// c is not measured yet, so that a slow new child is known as such after
// its first I/O.
func runChild(c *child, kind opKind, p []byte, off, length int64) error {
	if kind == opFlush || c.cost.Load() != 0 && rand.Uint32()%costSample != 0 {
		return issueChild(c.dev, kind, p, off, length)
	}
	start := time.Now()
	err := issueChild(c.dev, kind, p, off, length)
	c.observe(time.Since(start))
	return err
}

func issueChild(d bdev.Device, kind opKind, p []byte, off, length int64) error {
	switch kind {
	case opWrite:
		_, err := d.WriteAt(p, off)
		return err
	case opZeroes:
		return d.WriteZeroes(off, length)
	case opUnmap:
		return d.Unmap(off, length)
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
// fails it is retired (offline, persisted first) and the read is retried on
// another. Rebuilding children are never read.
func (n *Nexus) ReadAt(p []byte, off int64) (int, error) {
	if err := n.enter(); err != nil {
		return 0, err
	}
	defer n.exit()
	if err := bdev.CheckRange("read", off, int64(len(p)), n.size.Load(), n.bs); err != nil {
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
// retry on another child. A fenced child stops the nexus.
func (n *Nexus) retireForRead(c *child, cause error) error {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if err := n.stoppedErr(); err != nil {
		return err
	}
	if !n.memberLocked(c) {
		return nil // removed or reopened meanwhile: its old handle may be fenced
	}
	if errors.Is(cause, bdev.ErrFenced) {
		return n.fence(fmt.Errorf("child %s: read: %w", c.uri, cause))
	}
	if c.st() != StateOnline {
		return nil
	}
	if n.onlineCountLocked() <= 1 {
		return fmt.Errorf("nexus %s: read failed on the last online child %s: %w", n.name, c.uri, cause)
	}
	n.retireLocked(c, reasonFor(cause), cause, 0, 0)
	return n.commitLocked(nil, true)
}

// faultLocked takes c out of service for good (until it is added again):
// an administrative fault, or a rebuild target that failed.
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
	n.log.Warn("child faulted", "child", c.uri, "reason", reason, "err", cause)
}

// WriteAt implements io.WriterAt: the write reaches every online and
// rebuilding child and is acknowledged once they all completed it; a child
// that failed it is retired and persisted first. While a child is offline,
// the write's segments are in its write-intent bitmap, saved, before the
// write is issued.
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

// flushGroup lets concurrent Flush calls share flushes of the children. A
// call needs a flush issued after it was called (one already running may
// have been issued before the writes it must cover completed): a call that
// finds none running issues one; one that finds a flush running waits for
// it to end and for the next, which one of the waiters issues for all of
// them. Waiting does not allocate.
type flushGroup struct {
	mu      sync.Mutex
	cond    sync.Cond
	running bool
	started uint64 // flushes issued
	done    uint64 // the last flush that ended
	err     error  // its result
	waiting int    // calls waiting for a flush to end
}

// Flush implements bdev.Device: it fans out to every online and rebuilding
// child; one that fails is retired (offline, with the segments not known to
// be flushed on it in its bitmap), and the flush succeeds when an online
// child that survives it succeeded. Concurrent calls share flushes.
func (n *Nexus) Flush() error {
	if err := n.enter(); err != nil {
		return err
	}
	defer n.exit()
	g := &n.fg
	g.mu.Lock()
	want := g.started + 1
	for g.done < want {
		if g.running {
			g.waiting++
			g.cond.Wait()
			g.waiting--
			continue
		}
		g.running = true
		g.started++
		my := g.started
		g.mu.Unlock()
		err := n.flushChildren()
		g.mu.Lock()
		g.running, g.done, g.err = false, my, err
		g.cond.Broadcast()
	}
	err := g.err
	g.mu.Unlock()
	return err
}

// flushChildren issues one flush to the writable children. Writes that
// completed before it are durable on every child it succeeded on, so the
// unflushed regions they marked are forgotten once it succeeded.
func (n *Nexus) flushChildren() error {
	// One generation set for the whole flush: a Resize that replaced it
	// meanwhile copied its bits, which the new one then keeps until the
	// next flush (conservative).
	uf := n.uf.Load()
	old := uf.flip()
	err := n.fanOut(n.view.Load(), opFlush, nil, 0, 0)
	if err == nil {
		uf.clear(old)
	}
	return err
}

func (n *Nexus) mutate(kind opKind, p []byte, off, length int64) error {
	if err := n.enter(); err != nil {
		return err
	}
	defer n.exit()
	if err := bdev.CheckRange(kind.String(), off, length, n.size.Load(), n.bs); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	e := n.locks.lockWrite(off, length)
	defer n.locks.unlock(e)
	if err := n.stoppedErr(); err != nil {
		return err
	}
	// The view is loaded under the range lock: a rebuild copy of this
	// range, which needs the same lock, either completed before (and the
	// view already has the child rebuilding) or starts after this write.
	v := n.view.Load()
	if len(v.offline) > 0 {
		if err := n.markDirty(v, off, length); err != nil {
			return err
		}
		// Loaded again now that the bits are set: a child brought
		// back since then is in it, and one brought back later copies
		// these segments after this write (the copy needs this lock).
		v = n.view.Load()
	}
	return n.fanOut(v, kind, p, off, length)
}

// markDirty makes sure every offline child has the bits of the segments
// [off, off+length) set and saved before the write is issued, so that a
// crash after the write reached the online children still leaves the
// segment in the bitmap. Only the first write to a segment pays a store
// write, and concurrent ones share it (dirtyCommit).
func (n *Nexus) markDirty(v *view, off, length int64) error {
	first, last := off/n.seg, (off+length-1)/n.seg
	for _, c := range v.offline {
		if !c.dirty.allSet(first, last) {
			return n.commitDirty(first, last)
		}
	}
	return nil
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
		o.pend = make([]bdev.Pending, k)
		o.done = make(chan struct{}, k)
	}
	o.errs, o.claimed, o.pend = o.errs[:k], o.claimed[:k], o.pend[:k]
	return o
}

// maxInlineFan is the most writable children a fan-out issues without an
// op from the free list, when every one is quick (see fanOutInline).
const maxInlineFan = 4

func (n *Nexus) fanOut(v *view, kind opKind, p []byte, off, length int64) error {
	w := v.writable
	if len(v.online) == 0 {
		return fmt.Errorf("nexus %s: %s at %d: %w", n.name, kind, off, ErrNoHealthyChild)
	}
	if kind != opFlush && len(w) <= maxInlineFan {
		inline := true
		for _, c := range w[1:] {
			if !c.quick() {
				inline = false
				break
			}
		}
		if inline {
			return n.fanOutInline(w, kind, p, off, length)
		}
	}
	o := n.getOp(len(w))
	o.kind, o.p, o.off, o.length, o.members = kind, p, off, length, w
	// Writes to children that can send them and wait later (remote ones,
	// see bdev.WriteStarter) are sent first, from here, and waited for
	// last: each is a round trip to another node, which then overlaps the
	// rest without a hand-off to a worker and the wake-ups that costs.
	// sent has bit i set for each (view.starters). Once a submitter holds
	// started writes it only waits for other children's room in the order
	// that keeps submitters from waiting on each other (see the starts
	// below): every WriteStarter is started whatever its speed (their
	// service time is not sampled here), its worker hand-offs are queued
	// before the starts, and with more than 64 children nothing is
	// started.
	//
	// Quick children (see quickChild) are not queued either: they are
	// claimed here and issued inline, one after the other, after the first
	// child; inline has bit i set for each. Flushes are always handed off:
	// a child quick to write (a buffered file) may be slow to flush, and
	// flushes are where parallel issue matters most.
	var sent, inline uint64
	if kind == opWrite {
		sent = v.startMask
	}
	queued := 0
	for i := range w {
		if i < 64 && sent&(1<<i) != 0 {
			o.claimed[i].Store(true)
			continue
		}
		if i == 0 {
			continue // issued here
		}
		q := kind != opFlush && i < 64 && w[i].quick()
		o.claimed[i].Store(q)
		if q {
			inline |= 1 << i
		} else {
			queued++
		}
	}
	o.refs.Store(int32(1 + queued))
	own := sent | inline // issued here, never by a worker
	for i := 1; queued > 0 && i < len(w); i++ {
		if i >= 64 || own&(1<<i) == 0 {
			n.queue <- childIO{op: o, i: i}
		}
	}
	// pending has bit i set while child i's started write awaits Wait.
	pending := sent
	if sent != 0 {
		// StartWrite may wait for a command slot of its child while this
		// submitter holds slots of the children it started before. Every
		// submitter starts them in the order of child.seq, whatever its
		// view, so none waits for a slot held by one that waits for its;
		// after the starts it only issues children that are no
		// WriteStarter (no slots) and waits for its own commands, which
		// complete whatever other submitters do.
		for _, st := range v.starters {
			pend, err := st.ws.StartWrite(p, off)
			if pend == nil { // over already
				o.errs[st.i] = err
				pending &^= 1 << st.i
			} else {
				o.pend[st.i] = pend
			}
		}
	}
	if sent&1 == 0 {
		o.errs[0] = o.run(0)
	}
	for i := 1; inline != 0 && i < len(w) && i < 64; i++ {
		if inline&(1<<i) != 0 {
			o.errs[i] = o.run(i)
		}
	}
	// Then take back what no worker has started yet (after the inline
	// ones, which gives the workers the most time to start theirs).
	running := 0
	for i := 1; i < len(w); i++ {
		if i < 64 && own&(1<<i) != 0 {
			continue
		}
		if o.claimed[i].CompareAndSwap(false, true) {
			o.errs[i] = o.run(i)
		} else {
			running++
		}
	}
	for i := 0; pending>>i != 0; i++ {
		if pending&(1<<i) != 0 {
			o.errs[i] = o.pend[i].Wait()
			o.pend[i] = nil
		}
	}
	for ; running > 0; running-- {
		<-o.done
	}
	err := n.finish(w, o.errs, kind, off, length)
	n.release(o)
	return err
}

// fanOutInline is fanOut when every child is quick: the submitting
// goroutine issues each child's I/O in turn, so nothing is shared with a
// worker and the op, its errors included, lives on the stack, with no trip
// through the free list. len(w) <= maxInlineFan; kind is not a flush.
func (n *Nexus) fanOutInline(w []*child, kind opKind, p []byte, off, length int64) error {
	var buf [maxInlineFan]error
	errs := buf[:len(w)]
	for i, c := range w {
		errs[i] = runChild(c, kind, p, off, length)
	}
	return n.finish(w, errs, kind, off, length)
}

// finish ends a fan-out whose child I/Os all returned, errs[i] being
// w[i]'s result: it marks a write's segments unflushed and settles it when
// needed.
func (n *Nexus) finish(w []*child, errs []error, kind opKind, off, length int64) error {
	if kind != opFlush {
		// Even a failed write may have landed on some children.
		n.uf.Load().mark(off/n.seg, (off+length-1)/n.seg)
	}
	// A child that failed it, or that left while it was in flight
	// (checked after the mark above: see retireLocked), needs settling
	// before the write is acknowledged.
	for i, c := range w {
		if errs[i] != nil || kind != opFlush && c.st() == StateOffline {
			return n.settle(w, errs, kind, off, length)
		}
	}
	return nil
}

// settle decides the fate of an I/O that failed on some children, or that
// was in flight to a child that left. It is acknowledged only if an online
// child that survives this decision completed it; then every online child
// that failed it is retired (offline, with the I/O's range in its bitmap),
// and the new health set is persisted before returning. Otherwise the I/O
// fails and the online children that failed it stay (nobody is known to be
// better), while rebuilding children that failed it are faulted since they
// no longer match. A child already offline gets the I/O's range in its
// bitmap, saved, whatever the I/O did on it. A fenced child stops the nexus
// and fails the I/O.
func (n *Nexus) settle(members []*child, errs []error, kind opKind, off, length int64) error {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if err := n.stoppedErr(); err != nil {
		return err
	}
	for i, c := range members {
		if errs[i] != nil && errors.Is(errs[i], bdev.ErrFenced) && n.memberLocked(c) {
			return n.fence(fmt.Errorf("child %s: %s at %d: %w", c.uri, kind, off, errs[i]))
		}
	}
	if kind == opFlush {
		off, length = 0, 0
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
	var first, last int64
	if length > 0 {
		first, last = off/n.seg, (off+length-1)/n.seg
	}
	changed, leave := false, false
	var add []*child
	for i, c := range members {
		switch st := c.st(); {
		case errs[i] != nil && st == StateRebuilding:
			n.faultLocked(c, ReasonIOError, errs[i])
			changed = true
		case errs[i] != nil && st == StateOnline && ok:
			n.retireLocked(c, reasonFor(errs[i]), errs[i], off, length)
			changed, leave = true, true
		case st == StateOffline && length > 0 && !c.dirty.allSet(first, last):
			add = append(add, c)
		}
	}
	if changed || len(add) > 0 {
		if leave {
			n.epoch++
		}
		// As in saveDirty, added bits go live only once saved.
		err := n.saveLocked(nil, func(rec *HealthRecord) {
			for i, c := range n.children {
				if contains(add, c) {
					for s := first; s <= last; s++ {
						rec.Children[i].Bitmap[s/8] |= 1 << (s % 8)
					}
				}
			}
		})
		if err != nil {
			return err
		}
		for _, c := range add {
			c.dirty.setRange(first, last)
		}
		n.publishLocked()
		if leave {
			if err := n.raiseOnlineLocked(nil); err != nil {
				return err
			}
		}
	}
	if !ok {
		return fmt.Errorf("nexus %s: %s at %d failed on every online child: %w", n.name, kind, off, firstErr)
	}
	return nil
}
