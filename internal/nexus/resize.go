package nexus

// Growing a nexus online.

import (
	"context"
	"errors"
	"fmt"
	"math"
)

// Errors of Resize; the errors it returns wrap them.
var (
	// ErrShrink refuses a size below the current one: the data there
	// would be cut off under the hosts that use it.
	ErrShrink = errors.New("nexus: a nexus can only grow")
	// ErrInvalidSize refuses a size that is not a multiple of the block
	// size.
	ErrInvalidSize = errors.New("nexus: the size must be a multiple of the block size")
	// ErrChildTooSmall refuses a size that an online child cannot hold:
	// grow its replica first.
	ErrChildTooSmall = errors.New("nexus: a child is smaller than the size asked for")
	// ErrRebuilding refuses a resize while a rebuild or the resync after
	// an unclean shutdown is pending: they copy the segments of the size
	// they started with. Retry when it has finished (or stop the rebuild).
	ErrRebuilding = errors.New("nexus: a rebuild or resync is in progress")
)

// Revalidator is implemented by child devices whose size can change under
// an open handle because the device lives elsewhere (a remote namespace
// whose replica grew): Revalidate asks it again, so that Size reports the
// current capacity. Resize revalidates the devices of its online children
// before it compares their sizes.
type Revalidator interface {
	Revalidate(ctx context.Context) error
}

// Resize grows the nexus to size bytes while I/O continues; see ResizeWith.
func (n *Nexus) Resize(ctx context.Context, size int64) error { return n.ResizeWith(ctx, size, nil) }

// ResizeWith grows the nexus to size bytes, a multiple of the block size,
// while I/O continues. Resizing to the current size does nothing and
// returns nil (a repeat is harmless); a smaller size fails with ErrShrink.
// Every online child must already hold size bytes (ErrChildTooSmall names
// the one that does not; devices that implement Revalidator are asked for
// their size again first). It is refused with ErrRebuilding while a
// rebuild (running or paused) or the resync after an unclean shutdown is
// pending.
//
// Offline children get the new segments in their write-intent bitmap: what
// they hold past the old size was never written through the nexus, so
// OnlineChild copies it to them (and refuses them until their replica is
// grown). Faulted children need a full rebuild anyway.
//
// Writes, rebuild copies and other administrative changes wait while it
// runs (it holds a range lock over every offset); reads go on. persist,
// when not nil, is called once the resize is known to be possible, with
// the writes held, before anything changes: the caller records the new
// size there (so that a nexus recreated after a crash is never smaller
// than what hosts may have written to), and an error from it cancels the
// resize, changing nothing. Then the health record, with the grown
// bitmaps, is saved; a failed save fails the nexus, as any failed save
// does. Reads and writes up to the new size are accepted once ResizeWith
// returns nil; exports learn the size from Size.
func (n *Nexus) ResizeWith(ctx context.Context, size int64, persist func(context.Context) error) error {
	if n.closed.Load() {
		return fmt.Errorf("nexus %s: resize: %w", n.name, errClosed)
	}
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	if n.closed.Load() {
		return fmt.Errorf("nexus %s: resize: %w", n.name, errClosed)
	}
	if err := n.stoppedErr(); err != nil {
		return err
	}
	cur := n.size.Load()
	switch {
	case size == cur:
		return nil
	case size < cur:
		return fmt.Errorf("nexus %s: resize to %d bytes: %w (it has %d bytes)", n.name, size, ErrShrink, cur)
	case size%int64(n.bs) != 0:
		return fmt.Errorf("nexus %s: resize to %d bytes: %w (%d bytes)", n.name, size, ErrInvalidSize, n.bs)
	}
	n.stateMu.Lock()
	var busy string
	for c := range n.jobs {
		busy = "the rebuild of child " + c.uri
	}
	if busy == "" && n.Resyncing() {
		busy = "the resync after an unclean shutdown"
	}
	online := n.view.Load().online
	n.stateMu.Unlock()
	if busy != "" {
		return fmt.Errorf("nexus %s: resize: %w: %s; retry when it has finished", n.name, ErrRebuilding, busy)
	}
	// No child comes online while adminMu is held (rebuilds start under
	// it and none runs), so these are all the children that must fit.
	for _, c := range online {
		if rv, ok := c.base.(Revalidator); ok {
			if err := rv.Revalidate(ctx); err != nil {
				return fmt.Errorf("nexus %s: resize: child %s: reading its size: %w", n.name, c.uri, err)
			}
		}
		if have := c.dev.Size(); have < size {
			return fmt.Errorf("nexus %s: resize to %d bytes: child %s has %d bytes: %w; grow its replica first",
				n.name, size, c.uri, have, ErrChildTooSmall)
		}
	}

	e := n.locks.lock(0, math.MaxInt64)
	defer n.locks.unlock(e)
	if err := n.stoppedErr(); err != nil {
		return err
	}
	if persist != nil {
		if err := persist(ctx); err != nil {
			return fmt.Errorf("nexus %s: resize to %d bytes: %w", n.name, size, err)
		}
	}
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if err := n.stoppedErr(); err != nil {
		return err
	}
	nseg := (size + n.seg - 1) / n.seg
	first := cur / n.seg // the first segment that holds new bytes
	grown := map[*child]*bitmap{}
	for _, c := range n.children {
		if c.st() != StateOffline {
			continue
		}
		b := newBitmap(nseg)
		if c.dirty != nil {
			b = resizeBitmap(c.dirty, nseg)
		}
		b.setRange(first, nseg-1)
		grown[c] = b
	}
	err := n.saveLocked(ctx, func(rec *HealthRecord) {
		for i, c := range n.children {
			if b := grown[c]; b != nil {
				rec.Children[i].Bitmap = b.bytes()
			}
		}
	})
	if err != nil {
		return err
	}
	for c, b := range grown {
		c.dirty = b
	}
	n.uf.Store(n.uf.Load().grown(nseg))
	n.nseg.Store(nseg)
	n.size.Store(size)
	n.log.Info("nexus resized", "from", cur, "to", size, "generation", n.gen)
	return nil
}
