package pool

import (
	"errors"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// TestFlushFailureIsSticky: once a flush of the pool's device fails, a
// write acknowledged before it may be lost even if a later device flush
// succeeds, so every replica's Flush keeps failing, and metadata changes
// stop, until the pool is imported again.
func TestFlushFailureIsSticky(t *testing.T) {
	mem := newMalloc(t, 8*mib)
	fd := faulty.New(noClose{mem}, 7)
	p := mustCreate(t, fd, CreateOptions{})
	mustReplica(t, p, "a", mib, false)
	mustReplica(t, p, "b", mib, false)
	a, b := mustOpen(t, p, "a"), mustOpen(t, p, "b")
	buf := make([]byte, 4*kib)
	fill(buf, 1)
	if _, err := a.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	rule := fd.AddRule(faulty.Rule{Ops: faulty.OpFlush, Count: 1})
	if err := a.Flush(); !errors.Is(err, faulty.ErrInjected) || fd.Fired(rule) != 1 {
		t.Fatalf("Flush with a failing device: %v (fired %d)", err, fd.Fired(rule))
	}
	// The device would flush fine now; the pool must not say so.
	for _, h := range []*Replica{a, b, a} {
		if err := h.Flush(); !errors.Is(err, faulty.ErrInjected) {
			t.Fatalf("replica %s Flush after a failed device flush: %v, want the earlier failure", h.Name(), err)
		}
	}
	if _, err := p.CreateReplica(ReplicaOptions{Name: "c", Size: mib, Thin: true}); err == nil {
		t.Fatal("a metadata change was acknowledged after a failed device flush")
	}
	_ = a.Close()
	_ = b.Close()
	_ = p.Close()
	q := mustImport(t, noClose{mem})
	defer q.Close()
	h := mustOpen(t, q, "a")
	defer h.Close()
	if err := h.Flush(); err != nil {
		t.Fatalf("Flush after importing again: %v", err)
	}
}
