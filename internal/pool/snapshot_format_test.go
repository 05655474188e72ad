package pool

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// sbIncompat returns the incompatible feature bits and generation of both
// superblock copies on dev (4 KiB areas).
func sbIncompat(t *testing.T, dev bdev.Device) (bits [2]uint32, gen [2]uint64) {
	t.Helper()
	buf := make([]byte, 4096)
	for c := range 2 {
		if _, err := dev.ReadAt(buf, int64(c)*4096); err != nil {
			t.Fatal(err)
		}
		sb, err := decodeSuperblock(buf)
		if err != nil {
			t.Fatalf("superblock copy %d: %v", c, err)
		}
		bits[c], gen[c] = sb.Incompat, sb.Generation
	}
	return bits, gen
}

// TestSnapshotUpgradesV1Fixture: a version 1 pool imports and is upgraded
// to version 2 without the snapshots bit; the first snapshot sets the bit
// in both superblock copies (generation incremented), after which a build
// that does not know the bit refuses the pool, naming it; the data and the
// snapshot survive an export and import.
func TestSnapshotUpgradesV1Fixture(t *testing.T) {
	mem := loadV1Fixture(t)
	p := mustImport(t, noClose{mem})
	checkV1FixtureContent(t, p)
	bits, gen := sbIncompat(t, mem)
	if bits != [2]uint32{0, 0} || p.snapshotsOn() {
		t.Fatalf("upgraded pool has incompatible bits %v before any snapshot", bits)
	}
	if _, err := p.CreateSnapshot("thick-b", SnapshotOptions{Name: "no"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("snapshot of the thick replica: %v", err)
	}
	if b, _ := sbIncompat(t, mem); b != bits {
		t.Fatal("a refused snapshot set the feature bit")
	}
	mustSnapshot(t, p, "thin-a", "snap")
	bits2, gen2 := sbIncompat(t, mem)
	if bits2 != [2]uint32{incompatSnapshots, incompatSnapshots} || gen2[0] != gen[0]+1 || gen2[1] != gen2[0] {
		t.Fatalf("after the first snapshot: bits %v generations %v (before %v)", bits2, gen2, gen)
	}
	d := snapDigest(t, p, "snap")
	h := mustOpen(t, p, "thin-a")
	buf := make([]byte, 64*kib)
	fill(buf, 7)
	if _, err := h.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	h.Close()
	mustSnapshot(t, p, "thin-a", "snap2")
	if _, g := sbIncompat(t, mem); g != gen2 {
		t.Fatalf("a second snapshot rewrote the superblock: generations %v, want %v", g, gen2)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// A build without snapshot support (it knows no incompatible bit).
	sbuf := make([]byte, 4096)
	if _, err := mem.ReadAt(sbuf, 0); err != nil {
		t.Fatal(err)
	}
	var un *unsupportedError
	if _, err := decodeSuperblockKnown(sbuf, 0); !errors.As(err, &un) || !strings.Contains(err.Error(), "bit 0") {
		t.Fatalf("an older build decodes the snapshots pool's superblock: %v, want it unsupported naming bit 0", err)
	}
	q := mustImport(t, noClose{mem})
	defer q.Close()
	if snapDigest(t, q, "snap") != d {
		t.Fatal("snapshot content changed across import")
	}
	if len(q.Snapshots()) != 2 {
		t.Fatalf("snapshots %+v", q.Snapshots())
	}
}

// TestUnknownIncompatibleBitNamesTheFix: a pool with a feature this build
// does not know (bit 1, the next one) is refused with ErrUnsupported, a
// fault code, naming the bit and what to do, and nothing is written.
func TestUnknownIncompatibleBitNamesTheFix(t *testing.T) {
	mem := newMalloc(t, 8*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{Name: "newer"})
	mustReplica(t, p, "r", mib, true)
	mustSnapshot(t, p, "r", "s")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for c := range 2 {
		setSuperblock(t, mem, c, func(s *superblock) { s.Incompat |= 1 << 1 })
	}
	before := snapshot(t, mem)
	_, err := Import(noClose{mem})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "bit 1") ||
		!strings.Contains(err.Error(), "import it with a Nexstor release that reads it") {
		t.Fatalf("Import: %v, want ErrUnsupported naming bit 1 and the fix", err)
	}
	if !bytes.Equal(before, snapshot(t, mem)) {
		t.Fatal("a refused import wrote to the disk")
	}
}

// TestSnapshotFeatureBitWriteFails: the superblock write that sets the
// snapshots bit fails at copy 0 or at copy 1; either way the
// snapshot fails, metadata changes stop, and import finds a pool with the
// same replicas and data, without the bit (copy 0 torn) or with it and no
// snapshot (copy 1 failed), that checks clean and takes snapshots again.
func TestSnapshotFeatureBitWriteFails(t *testing.T) {
	for c, wantBit := range []bool{false, true} {
		mem := newMalloc(t, 8*mib)
		fd := faulty.New(noClose{mem}, int64(c))
		p := mustCreate(t, fd, CreateOptions{})
		mustReplica(t, p, "r", mib, true)
		h := mustOpen(t, p, "r")
		data := make([]byte, 256*kib)
		fill(data, 11)
		if _, err := h.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		h.Close()
		// The write fails without landing (a superblock copy sits in one
		// sector, so it lands whole or not at all).
		rule := fd.AddRule(faulty.Rule{Ops: faulty.OpWrite, Off: int64(c) * 4096, Len: 4096, Count: 1})
		if _, err := p.CreateSnapshot("r", SnapshotOptions{Name: "s"}); !errors.Is(err, faulty.ErrInjected) || fd.Fired(rule) != 1 {
			t.Fatalf("copy %d: snapshot with a failing superblock write: %v (fired %d)", c, err, fd.Fired(rule))
		}
		if _, err := p.CreateReplica(ReplicaOptions{Name: "x", Size: mib, Thin: true}); !errors.Is(err, ErrClosed) {
			t.Fatalf("copy %d: metadata change after the failure: %v, want ErrClosed", c, err)
		}
		_ = p.Close()
		q := mustImport(t, noClose{mem})
		if q.snapshotsOn() != wantBit || len(q.Snapshots()) != 0 {
			t.Fatalf("copy %d failed: snapshots feature %v, snapshots %+v", c, q.snapshotsOn(), q.Snapshots())
		}
		if bits, _ := sbIncompat(t, mem); (bits[0] != 0) != wantBit || bits[0] != bits[1] {
			t.Fatalf("copy %d failed: superblock bits after import %v", c, bits)
		}
		h = mustOpen(t, q, "r")
		got := make([]byte, len(data))
		if _, err := h.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("copy %d failed: data after import: %v", c, err)
		}
		h.Close()
		mustSnapshot(t, q, "r", "s")
		check(t, q)
		_ = q.Close()
	}
}

// TestTornSnapshotRecords: the log write carrying a snapshot, clone or cow
// record tears (nothing or only part of it lands). The operation fails;
// import drops the record; every snapshot keeps its content, the replica
// its acknowledged data, and Check passes (the cluster a torn
// copy-on-write took is free again).
func TestTornSnapshotRecords(t *testing.T) {
	for _, what := range []string{"snapshot", "clone", "cow", "cow-batch"} {
		t.Run(what, func(t *testing.T) {
			mem := newMalloc(t, 16*mib)
			fd := faulty.New(noClose{mem}, 9)
			p := mustCreate(t, fd, CreateOptions{})
			mustReplica(t, p, "r", 2*mib, true)
			h := mustOpen(t, p, "r")
			data := make([]byte, 2*mib)
			fill(data, 12)
			if _, err := h.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			mustSnapshot(t, p, "r", "base")
			h.Close()
			d0 := snapDigest(t, p, "base")
			stats := p.Stats()
			var torn int64 // nothing of a one-block write lands
			if what == "cow-batch" {
				torn = 512 // the first block of several lands
			}
			rule := fd.AddRule(faulty.Rule{Ops: faulty.OpWrite, Off: p.sb.logOff(), Len: p.sb.logSize(), Torn: true, TornBytes: torn, Count: 1})
			var err error
			w := make([]byte, 4*kib)
			fill(w, 13)
			switch what {
			case "snapshot":
				_, err = p.CreateSnapshot("r", SnapshotOptions{Name: "s2"})
			case "clone":
				_, err = p.CloneSnapshot("base", ReplicaOptions{Name: "c"})
			case "cow":
				h = mustOpen(t, p, "r")
				_, err = h.WriteAt(w, 64*kib+512)
				h.Close()
			case "cow-batch":
				// One write over 24 shared clusters: a cow record of 24
				// runs, several blocks long, of which the first lands.
				big := make([]byte, 24*64*kib+kib)
				fill(big, 14)
				h = mustOpen(t, p, "r")
				_, err = h.WriteAt(big, 100*kib)
				h.Close()
			}
			if !errors.Is(err, faulty.ErrInjected) || fd.Fired(rule) != 1 {
				t.Fatalf("%s with a torn log write: %v (fired %d)", what, err, fd.Fired(rule))
			}
			_ = p.Close()
			q := mustImport(t, noClose{mem})
			defer q.Close()
			if got := q.Stats(); got != stats {
				t.Fatalf("stats after import %+v, before the torn operation %+v", got, stats)
			}
			if len(q.Snapshots()) != 1 || snapDigest(t, q, "base") != d0 {
				t.Fatalf("snapshots after import %+v, or the snapshot changed", q.Snapshots())
			}
			if _, err := q.ReplicaInfo("c"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("torn clone exists after import: %v", err)
			}
			h = mustOpen(t, q, "r")
			if got := readAll(t, h); sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatalf("replica content after import differs at byte %d", firstDiff(got, data))
			}
			// The copy-on-write works after import.
			if _, err := h.WriteAt(w, 64*kib+512); err != nil {
				t.Fatal(err)
			}
			h.Close()
			if snapDigest(t, q, "base") != d0 {
				t.Fatal("snapshot changed by a write after import")
			}
			check(t, q)
		})
	}
}
