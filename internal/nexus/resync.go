package nexus

import (
	"bytes"
	"context"
	"fmt"
)

// Resync after an unclean shutdown. A write in flight when the previous
// instance died was never acknowledged, but it may have reached some
// children and not others. Left alone, such a range would read differently
// depending on the child serving it. So a nexus that finds its record not
// clean picks one online child as the authority (the local one when there
// is one), serves reads of not yet resynced ranges from it, and walks the
// device segment by segment under the range lock, copying the authority's
// data over every online child that differs. This is not a silent repair
// of acknowledged data: the differing ranges hold only unacknowledged
// writes, where either content is correct as long as every child agrees.

func (n *Nexus) startResync() {
	n.resyncDone = make(chan struct{})
	v := n.view.Load()
	if !n.unclean || len(v.online) < 2 {
		close(n.resyncDone)
		return
	}
	a := v.local
	if a == nil {
		a = v.online[0]
	}
	n.resyncFrom.Store(a)
	n.log.Warn("the previous instance was not closed; resyncing the children from one of them", "authority", a.uri)
	n.jobsWG.Add(1)
	go n.resync()
}

func (n *Nexus) resync() {
	defer n.jobsWG.Done()
	defer close(n.resyncDone)
	bufA, bufB := make([]byte, n.seg), make([]byte, n.seg)
	for s := int64(0); s < n.nseg.Load(); s++ {
		if n.ctx.Err() != nil {
			return // closing: the record stays unclean, the next instance resyncs
		}
		off, l := s*n.seg, n.segLen(s)
		if err := n.resyncSegment(off, l, bufA[:l], bufB[:l]); err != nil {
			// Reads keep preferring the authority and Close will not
			// record a clean shutdown: the next instance resyncs again.
			n.log.Error("resync stopped", "offset", off, "err", err)
			n.resyncErr = err
			return
		}
		n.resyncPos.Store(off + l)
	}
	n.resyncFrom.Store(nil)
	n.log.Info("resync completed", "repaired_bytes", n.resyncRepaired.Load())
}

func (n *Nexus) resyncSegment(off, l int64, bufA, bufB []byte) error {
	// A repair is a write to online children: lockWrite lists it for a
	// child that leaves meanwhile, and it marks its region unflushed.
	e := n.locks.lockWrite(off, l)
	defer n.locks.unlock(e)
	for {
		v := n.view.Load()
		a := n.resyncFrom.Load()
		if a.st() != StateOnline {
			// The authority was retired: the segments before this one
			// agree on every child, so any online child can take over.
			if a = v.local; a == nil && len(v.online) > 0 {
				a = v.online[0]
			}
			if a == nil {
				return ErrNoHealthyChild
			}
			n.resyncFrom.Store(a)
		}
		if _, err := a.dev.ReadAt(bufA, off); err != nil {
			if rerr := n.retireForRead(a, err); rerr != nil {
				return rerr
			}
			continue
		}
		for _, c := range v.online {
			if c == a {
				continue
			}
			_, err := c.dev.ReadAt(bufB, off)
			if err == nil && !bytes.Equal(bufA, bufB) {
				_, err = c.dev.WriteAt(bufA, off)
				n.uf.Load().mark(off/n.seg, (off+l-1)/n.seg)
				if err == nil {
					n.resyncRepaired.Add(l)
				}
			}
			if err != nil {
				if rerr := n.retireForRead(c, err); rerr != nil {
					return rerr
				}
			}
		}
		return nil
	}
}

// Resyncing reports whether a resync after an unclean shutdown is still
// pending (running, or stopped by an error until the next instance).
func (n *Nexus) Resyncing() bool { return n.resyncFrom.Load() != nil }

// WaitResync waits until the resync after an unclean shutdown (if any) has
// ended and returns its error, if it failed.
func (n *Nexus) WaitResync(ctx context.Context) error {
	select {
	case <-n.resyncDone:
	case <-ctx.Done():
		return ctx.Err()
	}
	if n.resyncErr != nil {
		return fmt.Errorf("nexus %s: resync: %w", n.name, n.resyncErr)
	}
	return nil
}
