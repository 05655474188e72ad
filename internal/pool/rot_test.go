package pool

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
)

// snapshot returns the whole content of dev.
func snapshot(t *testing.T, dev bdev.Device) []byte {
	t.Helper()
	b := make([]byte, dev.Size())
	if _, err := dev.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// flipByte inverts one byte of dev at off (read-modify-write of its block),
// the way bit rot damages a sector after it was written.
func flipByte(t *testing.T, dev bdev.Device, off int64) {
	t.Helper()
	bs := int64(dev.BlockSize())
	blk := make([]byte, bs)
	if _, err := dev.ReadAt(blk, off/bs*bs); err != nil {
		t.Fatal(err)
	}
	blk[off%bs] ^= 0xff
	if _, err := dev.WriteAt(blk, off/bs*bs); err != nil {
		t.Fatal(err)
	}
}

// wantCorruptUnchanged imports dev, expecting a CorruptError whose message
// contains want, and checks that the failed import wrote nothing.
func wantCorruptUnchanged(t *testing.T, dev bdev.Device, want string) {
	t.Helper()
	before := snapshot(t, dev)
	_, err := Import(noClose{dev})
	var ce *CorruptError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Import: %v, want a CorruptError about %q", err, want)
	}
	if !bytes.Equal(before, snapshot(t, dev)) {
		t.Fatal("a failed import wrote to the disk")
	}
}

// TestMidLogDamageFailsImport: a record damaged after it was acknowledged,
// with later batches intact behind it, is corruption, not a torn tail:
// import refuses with a CorruptError instead of silently dropping the
// record and everything after it.
func TestMidLogDamageFailsImport(t *testing.T) {
	mem := newMalloc(t, 16*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	mustReplica(t, p, "r", 4*mib, true)
	h := mustOpen(t, p, "r")
	buf := make([]byte, 512)
	// One allocation at a time: each commits its own batch of one record,
	// in a block of its own.
	for c := range int64(6) {
		fill(buf, uint64(c))
		if _, err := h.WriteAt(buf, c*64*kib); err != nil {
			t.Fatal(err)
		}
	}
	if p.logPos != 7*512 || p.seq != 7 {
		t.Fatalf("log at %d after %d records, want 7 one-block batches", p.logPos, p.seq)
	}
	// The pool is abandoned here, as by a crash: no closing checkpoint.
	// Rot hits the third batch (the second allocation) afterwards.
	flipByte(t, mem, p.sb.logOff()+2*512+recHeaderLen+3)
	wantCorruptUnchanged(t, mem, "later batch of the log is intact")
}

// buildLog writes batches of records into the log of a freshly closed pool
// (epoch 2), each batch from a block boundary and each record of a batch
// padded to start a block of its own, and returns the pool's superblock and
// the log offset where each batch's records start.
func buildLog(t *testing.T, mem bdev.Device, batches [][]record) (superblock, [][]int64) {
	t.Helper()
	p := mustCreate(t, noClose{mem}, CreateOptions{ClusterSize: 64 * kib})
	sb := p.sb
	if err := p.Close(); err != nil { // the log now belongs to epoch 2
		t.Fatal(err)
	}
	var log []byte
	var offs [][]int64
	seq := uint64(1)
	for _, batch := range batches {
		var o []int64
		for i, r := range batch {
			r.Seq, r.Idx = seq, uint32(i)
			seq++
			o = append(o, int64(len(log)))
			log = appendRecord(log, sb.UUID, 2, &r)
			for len(log)%512 != 0 {
				log = append(log, 0)
			}
		}
		offs = append(offs, o)
	}
	if _, err := mem.WriteAt(log, sb.logOff()); err != nil {
		t.Fatal(err)
	}
	return sb, offs
}

// TestTornLastBatchStillImports: records of the last batch that landed
// behind a torn one are not mistaken for a later batch; import keeps what
// came before and drops the unacknowledged batch.
func TestTornLastBatchStillImports(t *testing.T) {
	u := [16]byte{5}
	create := record{Type: recCreate, E: entry{UUID: u, Size: mib, Thin: true, Name: "a", HasID: true, ID: ident{NGUID: [16]byte{0xa}}}}
	mapc := func(l, ph uint64) record {
		return record{Type: recMap, E: entry{UUID: u, Runs: []run{{Logical: l, Phys: ph, Count: 1}}}}
	}
	batches := [][]record{{create}, {mapc(0, 0)}, {mapc(1, 1), mapc(2, 2), mapc(3, 3)}}

	t.Run("torn last batch", func(t *testing.T) {
		mem := newMalloc(t, 8*mib)
		sb, offs := buildLog(t, mem, batches)
		// The first block of the last batch did not land; its other blocks did.
		flipByte(t, mem, sb.logOff()+offs[2][0]+recHeaderLen+1)
		q := mustImport(t, noClose{mem})
		defer q.Close()
		if ri, err := q.ReplicaInfo("a"); err != nil || ri.ClusterCount != 1 {
			t.Fatalf("after import: %+v %v, want replica a with the one cluster of the complete batches", ri, err)
		}
	})
	t.Run("damaged earlier batch", func(t *testing.T) {
		mem := newMalloc(t, 8*mib)
		sb, offs := buildLog(t, mem, batches)
		flipByte(t, mem, sb.logOff()+offs[1][0]+recHeaderLen+1)
		wantCorruptUnchanged(t, mem, "log record 2 at offset")
	})
	t.Run("damaged first record of a batch, zeroed", func(t *testing.T) {
		// A block that reads back as zeroes looks like the end of the log;
		// the intact batch behind it says otherwise.
		mem := newMalloc(t, 8*mib)
		sb, offs := buildLog(t, mem, batches)
		if _, err := mem.WriteAt(make([]byte, 512), sb.logOff()+offs[1][0]); err != nil {
			t.Fatal(err)
		}
		wantCorruptUnchanged(t, mem, "later batch of the log is intact")
	})
}

// TestDamagedNewestCheckpointFailsImport: when the newest checkpoint is
// damaged but the log holds records of its epoch, it was durable (records
// follow their checkpoint's flush); falling back to the older checkpoint
// would lose every change since, so import refuses. A checkpoint torn by a
// crash has no records after it and falls back losslessly.
func TestDamagedNewestCheckpointFailsImport(t *testing.T) {
	mem := newMalloc(t, 8*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	mustReplica(t, p, "old", mib, true)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	q := mustImport(t, noClose{mem})
	mustReplica(t, q, "new", mib, true)
	slot := q.epoch % 2
	sb := q.sb
	// q is abandoned, as by a crash: "new" lives only in the log.

	// Without damage, import finds both replicas.
	snap := snapshot(t, mem)
	r := mustImport(t, noClose{mem})
	if len(r.Replicas()) != 2 {
		t.Fatalf("replicas %+v, want old and new", r.Replicas())
	}
	if _, err := mem.WriteAt(snap, 0); err != nil { // undo r's import checkpoint
		t.Fatal(err)
	}

	flipByte(t, mem, int64(sb.MDOff+slot*sb.CPSize)+cpHeaderLen+2)
	wantCorruptUnchanged(t, mem, "would lose acknowledged metadata changes")
}

// TestRecreateSameUUIDForgetsOldLog: a pool created with force over an
// earlier pool of the same UUID never sees the earlier pool's records,
// although they would checksum under the new pool's epochs.
func TestRecreateSameUUIDForgetsOldLog(t *testing.T) {
	const id = "4b1c6f3e-2d7a-4e55-9b0c-7f1e2a3b4c5d"
	mem := newMalloc(t, 16*mib)
	writeClusters := func(p *Pool, name string, n int64) {
		t.Helper()
		mustReplica(t, p, name, 4*mib, true)
		h := mustOpen(t, p, name)
		buf := make([]byte, 512)
		for c := range n {
			fill(buf, uint64(c))
			if _, err := h.WriteAt(buf, c*64*kib); err != nil {
				t.Fatal(err)
			}
		}
	}
	old := mustCreate(t, noClose{mem}, CreateOptions{UUID: id})
	writeClusters(old, "old", 20)
	// old is abandoned without a checkpoint: its log is full of records.
	p := mustCreate(t, noClose{mem}, CreateOptions{UUID: id, Force: true})
	writeClusters(p, "new", 2)
	// p is abandoned too; import must find exactly its state.
	q := mustImport(t, noClose{mem})
	defer q.Close()
	got := q.Replicas()
	if len(got) != 1 || got[0].Name != "new" || got[0].ClusterCount != 2 {
		t.Fatalf("replicas after import %+v, want only new with 2 clusters", got)
	}
}
