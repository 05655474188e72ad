package nexus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

// drain waits until every write that may still use a view older than the
// current one has completed: they all hold range locks taken before.
func (n *Nexus) drain() {
	e := n.locks.lock(0, n.size)
	n.locks.unlock(e)
}

// closeChild drains and closes the device of a child that is out of every
// view. Reads still in flight on it fail and are retried elsewhere.
func (n *Nexus) closeChild(c *child) {
	n.stateMu.Lock()
	if c.dev == nil || c.closed {
		n.stateMu.Unlock()
		return
	}
	c.closed = true
	n.stateMu.Unlock()
	n.drain()
	if err := c.dev.Close(); err != nil && !errors.Is(err, bdev.ErrClosed) {
		n.log.Warn("closing child", "child", c.uri, "err", err)
	}
}

// FaultChild takes an online or rebuilding child out of service with the
// given reason (ReasonAdmin when empty), persisted before it returns. The
// last online child cannot be faulted (ErrLastChild).
func (n *Nexus) FaultChild(ctx context.Context, uri string, reason FaultReason) error {
	if reason == "" {
		reason = ReasonAdmin
	}
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	_, c := n.findLocked(uri)
	if c == nil {
		return fmt.Errorf("nexus %s: fault %s: %w", n.name, uri, ErrUnknownChild)
	}
	switch c.st() {
	case StateOnline:
		if n.onlineCountLocked() <= 1 {
			return fmt.Errorf("nexus %s: fault %s: %w", n.name, uri, ErrLastChild)
		}
	case StateRebuilding:
	default:
		return fmt.Errorf("nexus %s: fault %s: the child is %s already", n.name, uri, c.st())
	}
	n.faultLocked(c, reason, nil)
	if err := n.saveLocked(ctx, nil); err != nil {
		return err
	}
	n.publishLocked()
	return nil
}

// OfflineChild takes an online child out of service temporarily: its
// device is closed, and the segments written from now on are recorded (and
// persisted) in a write-intent bitmap so that OnlineChild can bring it back
// by copying only those. The last online child cannot go offline.
func (n *Nexus) OfflineChild(ctx context.Context, uri string) error {
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	n.stateMu.Lock()
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
	c.dirty = newBitmap(n.nseg)
	c.reason = ReasonAdmin
	c.state.Store(int32(StateOffline))
	if err := n.saveLocked(ctx, nil); err != nil {
		n.stateMu.Unlock()
		return err
	}
	n.publishLocked()
	n.stateMu.Unlock()
	n.log.Info("child offline", "child", uri)
	n.closeChild(c)
	return nil
}

// RemoveChild stops any rebuild of the child, removes it from the nexus
// (persisted) and closes it. The last online child cannot be removed.
func (n *Nexus) RemoveChild(ctx context.Context, uri string) error {
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	n.stateMu.Lock()
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
	n.children = append(n.children[:i:i], n.children[i+1:]...)
	if err := n.saveLocked(ctx, nil); err != nil {
		n.stateMu.Unlock()
		return err
	}
	n.publishLocked()
	n.stateMu.Unlock()
	n.log.Info("child removed", "child", uri)
	n.closeChild(c)
	return nil
}

// Close stops rebuilds (their children stay recorded as rebuilding, hence
// stale for a recreated nexus), waits for in-flight I/O, records the clean
// shutdown in the store and closes every child. The health record is kept;
// destroy it with HealthStore.Delete. An error means the clean shutdown
// could not be recorded; the nexus is closed all the same.
func (n *Nexus) Close() error {
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
	for n.inflight.Load() > 0 {
		time.Sleep(time.Millisecond)
	}
	close(n.queue)
	n.wgWk.Wait()
	// A clean record tells the next instance that its online children
	// agree. Their volatile caches must be on stable storage first: a
	// child whose node crashed after this close would otherwise have lost
	// a tail the others kept.
	flushErrs := n.flushOnline()
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	var err error
	if !n.failed.Load() {
		// Clean only when the children agree: a resync cut short by
		// Close must run again in the next instance.
		n.cleanClose = !n.Resyncing()
		for c, ferr := range flushErrs {
			if c.st() != StateOnline {
				continue
			}
			if n.onlineCountLocked() > 1 {
				n.faultLocked(c, ReasonIOError, fmt.Errorf("flush at close: %w", ferr))
			} else {
				n.cleanClose = false // the next instance resyncs
			}
		}
		err = n.saveLocked(nil, nil)
	}
	n.closeAll()
	n.log.Info("nexus closed")
	return err
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
