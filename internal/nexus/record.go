package nexus

// The health record: building it from the children, saving it, and
// converting stored bitmaps.

import (
	"context"
	"fmt"
)

// recordLocked builds the health record of the current state.
func (n *Nexus) recordLocked() HealthRecord {
	rec := HealthRecord{NexusUUID: n.uuid, Generation: n.gen + 1, SegmentSize: n.seg, Clean: n.cleanClose, Epoch: n.epoch}
	for _, c := range n.children {
		h := ChildHealth{URI: c.uri, State: c.st(), Identity: c.identity}
		if h.State == StateFaulted || h.State == StateOffline {
			h.Reason = c.reason
		}
		if h.State == StateOffline && c.dirty != nil {
			h.Bitmap = c.dirty.bytes()
		}
		rec.Children = append(rec.Children, h)
	}
	return rec
}

// saveLocked persists the current state (with patch applied to the record
// first, when given). On failure the nexus is failed for good: memory and
// store no longer agree, and serving on could acknowledge a write that a
// recreated nexus would not find. A fenced nexus never saves: the record
// belongs to the newer instance that fenced it.
func (n *Nexus) saveLocked(ctx context.Context, patch func(*HealthRecord)) error {
	if err := n.stoppedErr(); err != nil {
		return err
	}
	rec := n.recordLocked()
	if patch != nil {
		patch(&rec)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if err := n.store.Save(sctx, rec); err != nil {
		n.failCause.CompareAndSwap(nil, &err)
		n.failed.Store(true)
		n.log.Error("health store write failed; the nexus stops serving I/O", "err", err)
		return fmt.Errorf("nexus %s: %w: %w", n.name, ErrNexusFailed, err)
	}
	n.gen = rec.Generation
	return nil
}

// remapBitmap converts a stored bitmap of oldSeg-sized segments to newSeg
// segments, conservatively (every new segment touching a dirty old one is
// dirty).
func remapBitmap(p []byte, oldSeg, newSeg int64) *bitmap {
	if oldSeg <= 0 || oldSeg == newSeg {
		return bitmapFromBytes(int64(len(p))*8, p)
	}
	old := bitmapFromBytes(int64(len(p))*8, p)
	out := newBitmap((int64(len(p))*8*oldSeg + newSeg - 1) / newSeg)
	for i := int64(0); i < old.n; i++ {
		if old.test(i) {
			for s := i * oldSeg / newSeg; s <= ((i+1)*oldSeg-1)/newSeg && s < out.n; s++ {
				out.set(s)
			}
		}
	}
	return out
}

// resizeBitmap returns b with exactly bits bits (extra bits dropped).
func resizeBitmap(b *bitmap, bits int64) *bitmap {
	out := newBitmap(bits)
	for i := int64(0); i < bits && i < b.n; i++ {
		if b.test(i) {
			out.set(i)
		}
	}
	return out
}
