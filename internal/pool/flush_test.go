package pool

import (
	"bytes"
	"errors"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
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

// TestIOAfterDestroyChangesNothing: an I/O that passed its handle's checks
// just before the handle was closed and the replica destroyed, and takes
// the replica's I/O lock only afterwards, fails; it neither writes into the
// freed clusters nor commits a record for the destroyed replica (which
// would not apply and would stop all metadata changes).
func TestIOAfterDestroyChangesNothing(t *testing.T) {
	mem := newMalloc(t, 8*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	defer p.Close()
	mustReplica(t, p, "doomed", mib, true)
	h := mustOpen(t, p, "doomed")
	buf := make([]byte, 4*kib)
	fill(buf, 5)
	if _, err := h.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	// A handle struct that has not seen the Close: what an I/O racing with
	// Close holds once it is past check.
	stale := &Replica{p: p, r: h.r}
	_ = h.Close()
	if err := p.DestroyReplica("doomed"); err != nil {
		t.Fatal(err)
	}
	before := p.Stats()
	_, werr := stale.WriteAt(buf, 0)
	_, aerr := stale.WriteAt(buf, 128*kib)
	uerr := stale.Unmap(0, mib)
	if got := p.Stats(); got != before {
		t.Fatalf("stats %+v after I/O to a destroyed replica, want %+v", got, before)
	}
	check(t, p)
	mustReplica(t, p, "next", mib, true)
	for _, err := range []error{werr, aerr, uerr} {
		if !errors.Is(err, bdev.ErrClosed) {
			t.Fatalf("I/O to a destroyed replica: %v, want bdev.ErrClosed", err)
		}
	}
}

// TestUnmapFragmentedRange: discarding a range whose allocated clusters
// form more runs than one metadata record can hold in the log still
// succeeds (in several records) and frees every cluster.
func TestUnmapFragmentedRange(t *testing.T) {
	const clusters = 2048
	mem := newMalloc(t, (clusters+64)*64*kib)
	// The smallest log a pool may have, so that one record of every other
	// cluster's run does not fit.
	auto, err := layout(mem.Size(), 512, 64*kib, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := mustCreate(t, noClose{mem}, CreateOptions{MetadataSize: int64(2*auto.CPSize) + minLogBlocks*sbArea(512)})
	defer p.Close()
	if runs := int64(clusters / 2); recHeaderLen+entryFixed+runs*runLen <= p.sb.logSize() {
		t.Fatalf("log of %d bytes holds %d runs; the test needs more", p.sb.logSize(), runs)
	}
	mustReplica(t, p, "r", clusters*64*kib, true)
	h := mustOpen(t, p, "r")
	defer h.Close()
	buf := make([]byte, 512)
	for c := int64(0); c < clusters; c += 2 {
		fill(buf, uint64(c))
		if _, err := h.WriteAt(buf, c*64*kib); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Unmap(0, clusters*64*kib); err != nil {
		t.Fatalf("Unmap of %d scattered clusters: %v", clusters/2, err)
	}
	if ri, _ := p.ReplicaInfo("r"); ri.ClusterCount != 0 {
		t.Fatalf("%d clusters still allocated after Unmap", ri.ClusterCount)
	}
	check(t, p)
	got := make([]byte, 512)
	if _, err := h.ReadAt(got, 0); err != nil || !bytes.Equal(got, make([]byte, 512)) {
		t.Fatalf("read after Unmap: %v", err)
	}
}
