package nexus

// Administrative changes of the children, Close and Destroy.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/nexstor/nexstor/internal/bdev"
)

// drain waits until every write that may still use a view older than the
// current one has completed: they all hold range locks taken before. The
// lock spans every offset, whatever the size is now (see Resize).
func (n *Nexus) drain() {
	e := n.locks.lock(0, math.MaxInt64)
	n.locks.unlock(e)
}

// closeChild drains and closes the device of a child that is out of every
// view (its claim stays). Reads still in flight on it fail and are retried
// elsewhere.
func (n *Nexus) closeChild(c *child) {
	n.stateMu.Lock()
	if c.dev == nil || c.closed {
		n.stateMu.Unlock()
		return
	}
	c.closed = true
	n.stateMu.Unlock()
	n.drain()
	if err := c.closeDevs(); err != nil && !errors.Is(err, bdev.ErrClosed) {
		n.log.Warn("closing child", "child", c.uri, "err", err)
	}
}

// FaultChild takes an online or rebuilding child out of service with the
// given reason (ReasonAdmin when empty), persisted before it returns; it
// must be added again (a full rebuild) to return. The last online child
// cannot be faulted (ErrLastChild).
func (n *Nexus) FaultChild(ctx context.Context, uri string, reason FaultReason) error {
	if reason == "" {
		reason = ReasonAdmin
	}
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if err := n.stoppedErr(); err != nil {
		return err
	}
	_, c := n.findLocked(uri)
	if c == nil {
		return fmt.Errorf("nexus %s: fault %s: %w", n.name, uri, ErrUnknownChild)
	}
	leave := false
	switch c.st() {
	case StateOnline:
		if n.onlineCountLocked() <= 1 {
			return fmt.Errorf("nexus %s: fault %s: %w", n.name, uri, ErrLastChild)
		}
		leave = true
	case StateRebuilding:
	default:
		return fmt.Errorf("nexus %s: fault %s: the child is %s already", n.name, uri, c.st())
	}
	n.faultLocked(c, reason, nil)
	return n.commitLocked(ctx, leave)
}

// OfflineChild takes an online child out of service temporarily: it is
// flushed and closed (its claim stays), and what it may lack is recorded
// (and persisted) in a write-intent bitmap, so that OnlineChild can bring it
// back by copying only that: the segments written from now on, and, if its
// flush fails, those written but not flushed on it before. The last online
// child cannot go offline.
func (n *Nexus) OfflineChild(ctx context.Context, uri string) error {
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	n.stateMu.Lock()
	if err := n.stoppedErr(); err != nil {
		n.stateMu.Unlock()
		return err
	}
	_, c := n.findLocked(uri)
	switch {
	case c == nil:
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: offline %s: %w", n.name, uri, ErrUnknownChild)
	case c.st() != StateOnline:
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: offline %s: the child is %s; only an online child can go offline", n.name, uri, c.st())
	case n.onlineCountLocked() <= 1:
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: offline %s: %w", n.name, uri, ErrLastChild)
	}
	n.retireLocked(c, ReasonAdmin, nil, 0, 0)
	unflushed := newBitmap(n.nseg.Load())
	n.uf.Load().addTo(unflushed)
	if err := n.commitLocked(ctx, true); err != nil {
		n.stateMu.Unlock()
		return err
	}
	n.stateMu.Unlock()
	n.log.Info("child offline", "child", uri)
	// What was written to it is on stable storage once the writes in
	// flight ended and it flushed; otherwise its node may still lose it.
	n.drain()
	if ferr := c.dev.Flush(); ferr != nil {
		if err := n.addBits(ctx, c, unflushed, fmt.Errorf("flush when going offline: %w", ferr)); err != nil {
			n.closeChild(c)
			return err
		}
	}
	n.closeChild(c)
	return nil
}

// addBits adds the bits of b to the bitmap of the offline child c, saved
// before they are set, after cause (logged; a fenced child stops the nexus).
func (n *Nexus) addBits(ctx context.Context, c *child, b *bitmap, cause error) error {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if err := n.stoppedErr(); err != nil {
		return err
	}
	if !n.memberLocked(c) || c.st() != StateOffline {
		return nil
	}
	if errors.Is(cause, bdev.ErrFenced) {
		return n.fence(fmt.Errorf("child %s: %w", c.uri, cause))
	}
	c.lastErr = cause.Error()
	n.log.Warn("offline child lost what it did not flush; it will be copied when it is back", "child", c.uri, "err", cause)
	err := n.saveLocked(ctx, func(rec *HealthRecord) {
		for i, x := range n.children {
			if x == c {
				for s := int64(0); s < b.n; s++ {
					if b.test(s) {
						rec.Children[i].Bitmap[s/8] |= 1 << (s % 8)
					}
				}
			}
		}
	})
	if err != nil {
		return err
	}
	for s := int64(0); s < b.n; s++ {
		if b.test(s) {
			c.dirty.set(s)
		}
	}
	return nil
}

// RemoveChild stops any rebuild of the child, removes it from the nexus
// (persisted), releases this nexus's claim on it and closes it. The last
// online child cannot be removed. A claim that cannot be released (the
// child is unreachable) is logged; the child is removed all the same.
func (n *Nexus) RemoveChild(ctx context.Context, uri string) error {
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	n.stateMu.Lock()
	if err := n.stoppedErr(); err != nil {
		n.stateMu.Unlock()
		return err
	}
	i, c := n.findLocked(uri)
	if c == nil {
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: remove %s: %w", n.name, uri, ErrUnknownChild)
	}
	if c.st() == StateOnline && n.onlineCountLocked() <= 1 {
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: remove %s: %w", n.name, uri, ErrLastChild)
	}
	job := n.jobs[c]
	n.stateMu.Unlock()
	if job != nil {
		job.control(RebuildStop)
		<-job.doneCh
	}
	n.stateMu.Lock()
	if i, c = n.findLocked(uri); c == nil {
		n.stateMu.Unlock()
		return nil
	}
	leave := c.st() == StateOnline
	n.children = append(n.children[:i:i], n.children[i+1:]...)
	if err := n.commitLocked(ctx, leave); err != nil {
		n.stateMu.Unlock()
		return err
	}
	n.stateMu.Unlock()
	n.log.Info("child removed", "child", uri)
	// Writes still in flight to it end before its claim goes.
	n.drain()
	if err := n.releaseClaim(ctx, c); err != nil {
		n.log.Warn("the removed child keeps this nexus's claim; disown the replica to use it elsewhere", "child", uri, "err", err)
	}
	n.closeChild(c)
	return nil
}

// Close stops rebuilds (their children stay recorded as rebuilding, hence
// stale for a recreated nexus), waits for in-flight I/O, flushes the online
// children, records the clean shutdown in the store and closes every child.
// The health record and the claims on the children are kept, so that the
// nexus can be created again over them; Destroy gives them up. An error
// means the clean shutdown could not be recorded; the nexus is closed all
// the same.
func (n *Nexus) Close() error { return n.shutdown(context.Background(), false) }

// Destroy ends the nexus for good: it stops as Close does, then releases
// this nexus's claim on every child (opening the children that are away to
// do so) and deletes the health record, so that the children can be used
// by another nexus. The children's data is not touched. A fenced nexus
// releases nothing and keeps the record, which belong to the newer
// instance; Destroy then returns an error matching ErrFencedNexus. A nexus
// that failed on its store (ErrNexusFailed) may have a newer instance it
// does not know of: the store refused its saves, maybe because that one
// saved its own. It releases only the claims of the handles it holds open
// (a newer claim has fenced those, and then they release nothing), never
// by claiming a child anew, and keeps the record, which must not be
// deleted. Claims
// that could not be released are reported in the error (the nexus is
// destroyed all the same); disown those replicas to reuse them.
func (n *Nexus) Destroy(ctx context.Context) error { return n.shutdown(ctx, true) }

func (n *Nexus) shutdown(ctx context.Context, destroy bool) error {
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	if n.closed.Swap(true) {
		return bdev.ErrClosed
	}
	n.cancel()
	n.stateMu.Lock()
	for _, j := range n.jobs {
		j.wake()
	}
	n.stateMu.Unlock()
	n.jobsWG.Wait()
	if n.inflight.Load() == 0 {
		n.signalIdle()
	}
	<-n.idle
	close(n.queue)
	n.wgWk.Wait()
	var flushErrs map[*child]error
	if n.stoppedErr() == nil {
		// A clean record tells the next instance that its online
		// children agree. Their volatile caches must be on stable
		// storage first: a child whose node crashed after this close
		// would otherwise have lost a tail the others kept.
		flushErrs = n.flushOnline()
	}
	n.stateMu.Lock()
	var err error
	if n.stoppedErr() == nil {
		// Clean only when the children agree: a resync cut short by
		// Close must run again in the next instance.
		n.cleanClose = !n.Resyncing()
		leave := false
		for c, ferr := range flushErrs {
			if errors.Is(ferr, bdev.ErrFenced) {
				n.fence(fmt.Errorf("child %s: flush at close: %w", c.uri, ferr))
				break
			}
			if c.st() != StateOnline {
				continue
			}
			if n.onlineCountLocked() > 1 {
				n.retireLocked(c, reasonFor(ferr), fmt.Errorf("flush at close: %w", ferr), 0, 0)
				leave = true
			} else {
				n.cleanClose = false // the next instance resyncs
			}
		}
		if !destroy && n.stoppedErr() == nil {
			err = n.commitLocked(nil, leave)
		}
	}
	fenced := n.fenced.Load()
	n.stateMu.Unlock()
	if destroy {
		err = n.destroy(ctx, fenced)
	}
	n.stateMu.Lock()
	n.closeAll()
	n.stateMu.Unlock()
	n.log.Info("nexus closed", "destroyed", destroy)
	return err
}

// destroy releases the claims and deletes the record, unless fenced.
func (n *Nexus) destroy(ctx context.Context, fenced bool) error {
	if fenced {
		return fmt.Errorf("%w: its claims and health record belong to the newer instance and were left alone", n.fencedErr())
	}
	n.stateMu.Lock()
	children := append([]*child(nil), n.children...)
	n.stateMu.Unlock()
	failed := n.failed.Load()
	var errs []error
	for _, c := range children {
		if failed && (c.claimed == nil || c.closed) {
			continue
		}
		if err := n.releaseClaim(ctx, c); err != nil {
			errs = append(errs, err)
		}
	}
	if failed {
		n.log.Warn("the health record is left in the store: it refused this nexus's saves, and may hold another instance's record")
	} else if err := n.store.Delete(ctx, n.uuid); err != nil {
		errs = append(errs, fmt.Errorf("deleting the health record: %w", err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("nexus %s: destroyed, but: %w (disown those replicas to use them in another nexus)", n.name, errors.Join(errs...))
	}
	return nil
}

// flushOnline flushes the online children in parallel and returns the
// failures by child.
func (n *Nexus) flushOnline() map[*child]error {
	online := n.view.Load().online
	errs := make([]error, len(online))
	var wg sync.WaitGroup
	for i, c := range online {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.dev.Flush()
		}()
	}
	wg.Wait()
	out := map[*child]error{}
	for i, err := range errs {
		if err != nil {
			out[online[i]] = err
		}
	}
	return out
}
