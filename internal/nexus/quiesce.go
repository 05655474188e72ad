package nexus

// Quiescing a nexus for a snapshot of its volume.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
)

// HoldFunc is called by Quiesce while the nexus holds its writes. online
// lists the URIs of the children that hold every write the nexus has
// acknowledged, durably (each was flushed after the last of them). It
// returns the children among them whose part failed (their snapshot was
// not taken): Quiesce faults them before writes resume. An error from
// HoldFunc is returned by Quiesce; the children it names are faulted all
// the same.
type HoldFunc func(ctx context.Context, online []string) (failed []string, err error)

// Quiesce takes a consistent point of the nexus for a snapshot of its
// volume: it stops new writes, write-zeroes and unmaps (they wait, they do
// not fail), waits for those in flight, flushes the writable children (a
// child whose flush fails goes offline with its bitmap, as on any failed
// flush), and calls hold with the online children. Writes resume when hold
// returns. Reads go on throughout; rebuilds and administrative changes
// wait.
//
// The pause is bounded by ctx: hold gets ctx and must return when it is
// done (the engine gives it a deadline, so that a caller that vanishes
// cannot hold a volume's writes). Quiesce fails without calling hold when
// ctx ends before the writes in flight have drained, or when no child is
// online. The children hold names as failed are faulted with
// ReasonSnapshotFailed and persisted before writes resume, except the
// last online child, which keeps serving (the snapshot then has no copy
// on it, and the caller says so). Not idempotent: each call takes a new
// point.
func (n *Nexus) Quiesce(ctx context.Context, hold HoldFunc) error {
	if n.closed.Load() {
		return fmt.Errorf("nexus %s: quiesce: %w", n.name, errClosed)
	}
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	if err := n.stoppedErr(); err != nil {
		return err
	}
	// Every offset: new writes queue behind this entry, and it is granted
	// once the writes holding locks have completed.
	got := make(chan *rlEntry, 1)
	go func() { got <- n.locks.lock(0, math.MaxInt64) }()
	var e *rlEntry
	select {
	case e = <-got:
	case <-ctx.Done():
		// Release the lock once it is granted; the writes behind it
		// then go on.
		go func() { n.locks.unlock(<-got) }()
		return fmt.Errorf("nexus %s: quiesce: waiting for the writes in flight: %w", n.name, context.Cause(ctx))
	}
	defer n.locks.unlock(e)
	if err := n.stoppedErr(); err != nil {
		return err
	}
	if err := n.Flush(); err != nil && !errors.Is(err, ErrNoHealthyChild) {
		// A child that failed the flush went offline; the others
		// hold every acknowledged write.
		n.log.Warn("quiesce: flush failed on a child", "err", err)
	}
	online := n.view.Load().online
	uris := make([]string, 0, len(online))
	for _, c := range online {
		uris = append(uris, c.uri)
	}
	if len(uris) == 0 {
		return fmt.Errorf("nexus %s: quiesce: %w", n.name, ErrNoHealthyChild)
	}
	failed, herr := hold(ctx, uris)
	if ferr := n.faultFailed(ctx, uris, failed); ferr != nil {
		return errors.Join(herr, ferr)
	}
	return herr
}

// faultFailed faults the children of failed that were online at the
// quiesce (ReasonSnapshotFailed), never the last online one; the caller
// holds adminMu and the whole range.
func (n *Nexus) faultFailed(ctx context.Context, online, failed []string) error {
	if len(failed) == 0 {
		return nil
	}
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if err := n.stoppedErr(); err != nil {
		return err
	}
	changed := false
	for _, uri := range failed {
		if !slices.Contains(online, uri) {
			continue
		}
		_, c := n.findLocked(uri)
		if c == nil || c.st() != StateOnline {
			continue
		}
		if n.onlineCountLocked() <= 1 {
			n.log.Warn("quiesce: the last online child failed its part; it keeps serving", "child", uri)
			continue
		}
		n.faultLocked(c, ReasonSnapshotFailed, nil)
		changed = true
	}
	if !changed {
		return nil
	}
	return n.commitLocked(ctx, true)
}
