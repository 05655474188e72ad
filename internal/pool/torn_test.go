package pool

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// fragment allocates n clusters to a thin replica "frag" and frees every
// other one, so that a later thick allocation needs n/2+1 runs and its
// record spans several log blocks.
func fragment(t *testing.T, p *Pool, n int64) {
	t.Helper()
	mustReplica(t, p, "frag", n*64*kib, true)
	h := mustOpen(t, p, "frag")
	defer h.Close()
	buf := make([]byte, 512)
	for c := range n {
		fill(buf, uint64(c))
		if _, err := h.WriteAt(buf, c*64*kib); err != nil {
			t.Fatal(err)
		}
	}
	for c := int64(0); c < n; c += 2 {
		if err := h.Unmap(c*64*kib, 64*kib); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTornLogRecord: a metadata record whose write tears (its first block
// lands, the rest does not) fails its operation; import ignores the torn
// record, keeps every acknowledged change and checks clean.
func TestTornLogRecord(t *testing.T) {
	mem := newMalloc(t, 16*mib)
	fd := faulty.New(noClose{mem}, 1)
	p := mustCreate(t, fd, CreateOptions{})
	fragment(t, p, 80)
	mustReplica(t, p, "keep", mib, true)
	h := mustOpen(t, p, "keep")
	data := make([]byte, 128*kib)
	fill(data, 42)
	if _, err := h.WriteAt(data, 64*kib); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
	wantReplicas, wantStats := p.Replicas(), p.Stats()

	rule := fd.AddRule(faulty.Rule{Ops: faulty.OpWrite, Off: p.sb.logOff(), Len: p.sb.logSize(), Torn: true, TornBytes: 512, Count: 1})
	_, err := p.CreateReplica(ReplicaOptions{Name: "victim", Size: 50 * 64 * kib})
	if !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("CreateReplica with a torn log write: %v, want the injected error", err)
	}
	if fd.Fired(rule) != 1 {
		t.Fatalf("torn rule fired %d times", fd.Fired(rule))
	}
	// The record's fate is unknown until import: metadata changes stop.
	if _, err := p.CreateReplica(ReplicaOptions{Name: "other", Size: mib, Thin: true}); !errors.Is(err, ErrClosed) {
		t.Fatalf("CreateReplica after a failed metadata write: %v, want ErrClosed", err)
	}
	// Data I/O to allocated clusters goes on.
	got := make([]byte, len(data))
	if _, err := h.ReadAt(got, 64*kib); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after the failure: %v", err)
	}
	_ = h.Close()
	_ = p.Close()

	q := mustImport(t, noClose{mem})
	defer q.Close()
	if got := q.Replicas(); !equalInfos(got, wantReplicas) {
		t.Fatalf("replicas after import:\n got %+v\nwant %+v", got, wantReplicas)
	}
	if got := q.Stats(); got != wantStats {
		t.Fatalf("stats after import %+v, want %+v", got, wantStats)
	}
	h = mustOpen(t, q, "keep")
	defer h.Close()
	if _, err := h.ReadAt(got, 64*kib); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("acknowledged data after import: %v", err)
	}
	// The pool works normally again.
	mustReplica(t, q, "victim", 50*64*kib, false)
	check(t, q)
}

// TestTornCheckpoint: a checkpoint write that tears (at Close, or when the
// log wraps) leaves the previous checkpoint and its log in charge.
func TestTornCheckpoint(t *testing.T) {
	t.Run("close", func(t *testing.T) {
		mem := newMalloc(t, 16*mib)
		fd := faulty.New(noClose{mem}, 2)
		p := mustCreate(t, fd, CreateOptions{})
		for i := range 12 { // enough replicas for a checkpoint of several blocks
			mustReplica(t, p, fmt.Sprintf("replica-with-a-long-name-%02d-%0100d", i, i), mib, i%2 == 0)
		}
		want, wantStats := p.Replicas(), p.Stats()
		rule := fd.AddRule(faulty.Rule{Ops: faulty.OpWrite, Off: int64(p.sb.MDOff), Len: 2 * int64(p.sb.CPSize), Torn: true, Count: 1})
		if err := p.Close(); !errors.Is(err, faulty.ErrInjected) || fd.Fired(rule) != 1 {
			t.Fatalf("Close with a torn checkpoint: %v (fired %d)", err, fd.Fired(rule))
		}
		q := mustImport(t, noClose{mem})
		defer q.Close()
		if got := q.Replicas(); !equalInfos(got, want) || q.Stats() != wantStats {
			t.Fatalf("after import: %+v %+v", got, q.Stats())
		}
	})
	t.Run("log-wrap", func(t *testing.T) {
		mem := newMalloc(t, 16*mib)
		fd := faulty.New(noClose{mem}, 3)
		p := mustCreate(t, fd, CreateOptions{})
		for i := range 12 {
			mustReplica(t, p, fmt.Sprintf("replica-with-a-long-name-%02d-%0100d", i, i), mib, true)
		}
		mustReplica(t, p, "r", 8*mib, true)
		h := mustOpen(t, p, "r")
		rule := fd.AddRule(faulty.Rule{Ops: faulty.OpWrite, Off: int64(p.sb.MDOff), Len: 2 * int64(p.sb.CPSize), Torn: true, Count: 1})
		buf := make([]byte, 512)
		var acked int64
		var err error
		for ; acked < 128; acked++ { // one record per cluster; the log holds fewer
			fill(buf, uint64(acked))
			if _, err = h.WriteAt(buf, acked*64*kib); err != nil {
				break
			}
		}
		if !errors.Is(err, faulty.ErrInjected) || fd.Fired(rule) != 1 {
			t.Fatalf("after %d allocations: %v (fired %d), want the torn checkpoint to fail one", acked, err, fd.Fired(rule))
		}
		_ = h.Close()
		_ = p.Close()
		q := mustImport(t, noClose{mem})
		defer q.Close()
		h = mustOpen(t, q, "r")
		defer h.Close()
		got := make([]byte, 512)
		for c := range acked {
			fill(buf, uint64(c))
			if _, err := h.ReadAt(got, c*64*kib); err != nil || !bytes.Equal(got, buf) {
				t.Fatalf("acknowledged allocation %d lost after import: %v", c, err)
			}
		}
		if ri, _ := q.ReplicaInfo("r"); int64(ri.ClusterCount) != acked {
			t.Fatalf("%d clusters after import, want %d", ri.ClusterCount, acked)
		}
	})
}

// TestFailedAllocationReleasesCluster: when zeroing or writing a new
// cluster fails, the write fails, the cluster returns to the free pool and
// the pool checks clean; the next write allocates normally.
func TestFailedAllocationReleasesCluster(t *testing.T) {
	mem := newMalloc(t, 8*mib)
	fd := faulty.New(noClose{mem}, 4)
	p := mustCreate(t, fd, CreateOptions{})
	defer p.Close()
	mustReplica(t, p, "r", 2*mib, true)
	h := mustOpen(t, p, "r")
	defer h.Close()
	before := p.Stats()
	data := make([]byte, 4*kib)
	fill(data, 9)
	dataOff := int64(p.sb.DataOff)
	for _, op := range []faulty.Op{faulty.OpWriteZeroes, faulty.OpWrite} {
		rule := fd.AddRule(faulty.Rule{Ops: op, Off: dataOff, Len: mem.Size() - dataOff, Count: 1})
		if _, err := h.WriteAt(data, 8*kib); !errors.Is(err, faulty.ErrInjected) || fd.Fired(rule) != 1 {
			t.Fatalf("%v failure: %v (fired %d)", op, err, fd.Fired(rule))
		}
		if st := p.Stats(); st != before {
			t.Fatalf("stats after a failed allocation %+v, want %+v", st, before)
		}
		check(t, p)
	}
	if _, err := h.WriteAt(data, 8*kib); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 16*kib)
	if _, err := h.ReadAt(got, 0); err != nil || !bytes.Equal(got[8*kib:12*kib], data) || !bytes.Equal(got[:8*kib], make([]byte, 8*kib)) {
		t.Fatalf("read after recovery: %v", err)
	}
	check(t, p)
}
