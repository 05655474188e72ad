package pool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
)

var fuzzPoolUUID = [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

func seedEntry() entry {
	return entry{UUID: [16]byte{9, 9, 9}, Size: 1 << 20, Thin: true, Name: "r1",
		Runs: []run{{Logical: 0, Phys: 3, Count: 2}, {Logical: 5, Phys: 9, Count: 1}}}
}

// seedIdentEntry is seedEntry with an identity block, as version 2 create
// records and checkpoint entries carry it.
func seedIdentEntry() entry {
	e := seedEntry()
	e.HasID, e.ID = true, ident{NGUID: [16]byte{0xee, 1}, Owner: [16]byte{0x0a, 2}, Epoch: 7}
	return e
}

// seedSnapEntry is the entry of a snapshot (flags 0x0f) as snapshot
// records carry it (no runs) and checkpoints (with runs).
func seedSnapEntry(runs bool) entry {
	e := seedIdentEntry()
	e.ID.Owner, e.ID.Epoch = [16]byte{}, 0
	e.Snapshot, e.HasOrigin, e.Origin, e.Name = true, true, origin{UUID: [16]byte{9, 9, 9}, Created: 1_700_000_000_000_000_000}, "s1"
	if !runs {
		e.Runs = nil
	}
	return e
}

// seedClaim is the payload of a claim record.
func seedClaim(u [16]byte, nguid [16]byte, owner [16]byte, epoch uint64) entry {
	return entry{UUID: u, HasID: true, ID: ident{NGUID: nguid, Owner: owner, Epoch: epoch}}
}

// FuzzDecodeRecord: the log record decoder never panics, allocates no more
// than the input justifies, and what it accepts re-encodes to the input.
// With fix set, the length and checksum are corrected first, so the fuzzer
// reaches the payload parser.
func FuzzDecodeRecord(f *testing.F) {
	for typ := uint8(recCreate); typ <= recUnmap; typ++ {
		f.Add(appendRecord(nil, fuzzPoolUUID, 7, &record{Seq: 3, Type: typ, E: seedEntry()}), false)
	}
	// Version 2: a create with its identity block, and claims.
	f.Add(appendRecord(nil, fuzzPoolUUID, 7, &record{Seq: 4, Type: recCreate, E: seedIdentEntry()}), false)
	f.Add(appendRecord(nil, fuzzPoolUUID, 7, &record{Seq: 5, Type: recClaim, E: seedClaim([16]byte{9, 9, 9}, [16]byte{0xee, 1}, [16]byte{0x0b}, 12)}), false)
	f.Add(appendRecord(nil, fuzzPoolUUID, 7, &record{Seq: 6, Idx: 1, Type: recClaim, E: seedClaim([16]byte{9, 9, 9}, [16]byte{0xee, 1}, [16]byte{}, 12)}), false)
	// Snapshots: snapshot, clone and cow records.
	f.Add(appendRecord(nil, fuzzPoolUUID, 7, &record{Seq: 7, Type: recSnap, E: seedSnapEntry(false)}), false)
	clone := seedSnapEntry(false)
	clone.Snapshot, clone.Name = false, "c1"
	f.Add(appendRecord(nil, fuzzPoolUUID, 7, &record{Seq: 8, Type: recClone, E: clone}), false)
	f.Add(appendRecord(nil, fuzzPoolUUID, 7, &record{Seq: 8, Type: recCOW, E: entry{UUID: [16]byte{9, 9, 9}, Runs: []run{{Logical: 1, Phys: 40, Count: 1}}}}), false)
	// A record that is not the first of its batch.
	f.Add(appendRecord(nil, fuzzPoolUUID, 7, &record{Seq: 9, Idx: 2, Type: recMap, E: seedEntry()}), false)
	f.Add(make([]byte, recHeaderLen), true)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix && len(b) >= recHeaderLen {
			binary.LittleEndian.PutUint32(b, uint32(len(b)-recHeaderLen))
			binary.LittleEndian.PutUint32(b[4:], recordCRC(fuzzPoolUUID, 7, b[8:]))
		}
		r, err := decodeRecord(b, fuzzPoolUUID, 7)
		if err != nil {
			return
		}
		if len(r.E.Runs)*runLen > len(b) || len(r.E.Name) > MaxNameLen {
			t.Fatalf("decoded %d runs and a %d-byte name from %d bytes", len(r.E.Runs), len(r.E.Name), len(b))
		}
		if again := appendRecord(nil, fuzzPoolUUID, 7, &r); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b)
		}
		if _, err := decodeRecord(b, fuzzPoolUUID, 8); err == nil {
			t.Fatal("record validated under another epoch")
		}
	})
}

// FuzzDecodeCheckpoint: the checkpoint decoder never panics, bounds what it
// allocates by the input, and round-trips what it accepts.
func FuzzDecodeCheckpoint(f *testing.F) {
	cp := checkpoint{Epoch: 4, LastSeq: 99, Replicas: []entry{seedEntry(), {UUID: [16]byte{7}, Size: 4096, Name: "thick"}}}
	f.Add(encodeCheckpoint(nil, fuzzPoolUUID, &cp), false)
	cp2 := checkpoint{Epoch: 5, LastSeq: 100, Replicas: []entry{seedIdentEntry(),
		{UUID: [16]byte{7}, Size: 4096, Name: "thick", HasID: true, ID: ident{NGUID: [16]byte{3}}}}}
	f.Add(encodeCheckpoint(nil, fuzzPoolUUID, &cp2), false)
	cp3 := checkpoint{Epoch: 6, LastSeq: 101, Replicas: []entry{seedIdentEntry(), seedSnapEntry(true)}}
	f.Add(encodeCheckpoint(nil, fuzzPoolUUID, &cp3), false)
	f.Add(encodeCheckpoint(nil, fuzzPoolUUID, &checkpoint{Epoch: 1}), false)
	f.Add(make([]byte, cpHeaderLen+4), true)
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix && len(b) >= cpHeaderLen {
			copy(b, cpMagic)
			copy(b[32:48], fuzzPoolUUID[:])
			binary.LittleEndian.PutUint64(b[24:], uint64(len(b)-cpHeaderLen))
			c := crc32.Update(0, castagnoli, b[:48])
			c = crc32.Update(c, castagnoli, b[cpHeaderLen:])
			binary.LittleEndian.PutUint32(b[48:], c)
		}
		cp, err := decodeCheckpoint(b, fuzzPoolUUID, maxMaxReplicas)
		if err != nil {
			return
		}
		runs := 0
		for _, e := range cp.Replicas {
			runs += len(e.Runs)
		}
		if len(cp.Replicas)*entryFixed+runs*runLen > len(b) {
			t.Fatalf("decoded %d replicas and %d runs from %d bytes", len(cp.Replicas), runs, len(b))
		}
		for _, e := range cp.Replicas {
			if e.encodedLen() > maxEntryLenOrigin+len(e.Runs)*runLen {
				t.Fatalf("entry of %d bytes beyond the bound of %d plus runs", e.encodedLen(), maxEntryLenOrigin)
			}
		}
		again := encodeCheckpoint(nil, fuzzPoolUUID, &cp)
		// The reserved header bytes are not carried; compare the rest.
		if !bytes.Equal(again[:52], b[:52]) || !bytes.Equal(again[cpHeaderLen:], b[cpHeaderLen:]) {
			t.Fatalf("re-encoding differs")
		}
	})
}

// FuzzDecodeSuperblock: the superblock decoder never panics and what it
// accepts has a geometry whose arithmetic cannot overflow.
func FuzzDecodeSuperblock(f *testing.F) {
	sb, err := layout(64<<20, 512, 1<<20, 0)
	if err != nil {
		f.Fatal(err)
	}
	sb.Name, sb.UUID, sb.Generation, sb.Overcommit = "pool", fuzzPoolUUID, 3, 300
	buf := make([]byte, sbEncLen)
	sb.encode(buf)
	f.Add(buf, false)
	// Unknown compatible features and reserved bytes, kept on re-encoding.
	sb.Compat, sb.Reserved = 0x80000001, [16]byte{15: 0xaa}
	buf = make([]byte, sbEncLen)
	sb.encode(buf)
	f.Add(buf, false)
	// An unknown incompatible feature: refused.
	sb.Incompat = 1 << 3
	buf = make([]byte, sbEncLen)
	sb.encode(buf)
	f.Add(buf, false)
	// Version 1, as the previous release wrote it.
	v1, err := layout(64<<20, 512, 1<<20, 0)
	if err != nil {
		f.Fatal(err)
	}
	v1.Version, v1.Name, v1.UUID, v1.Generation = formatV1, "old", fuzzPoolUUID, 9
	buf = make([]byte, sbEncLen)
	v1.encode(buf)
	f.Add(buf, false)
	f.Add(make([]byte, sbEncLen), true)
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix && len(b) >= sbEncLen {
			copy(b, sbMagic)
			binary.LittleEndian.PutUint32(b[252:], crc32.Checksum(b[:252], castagnoli))
		}
		s, err := decodeSuperblock(b)
		if err != nil {
			return
		}
		if s.logSize() <= 0 || s.logOff() < int64(s.MDOff) || s.DataOff < s.MDOff+s.MDSize {
			t.Fatalf("accepted geometry %+v", s)
		}
		if s.Incompat&^incompatKnown != 0 || (s.Version != formatV1 && s.Version != FormatVersion) {
			t.Fatalf("accepted version %d with incompatible features %#x", s.Version, s.Incompat)
		}
		if o := s.overcommit(); o < MinOvercommit || o > MaxOvercommit {
			t.Fatalf("accepted over-commit limit %d%%", o)
		}
		again := make([]byte, sbEncLen)
		s.encode(again)
		if !bytes.Equal(again[:96+len(s.Name)], b[:96+len(s.Name)]) {
			t.Fatalf("re-encoding differs")
		}
		// Version 2 keeps the feature words and the reserved bytes as read.
		if s.Version == FormatVersion && !bytes.Equal(again[224:252], b[224:252]) {
			t.Fatalf("re-encoding changed bytes 224..251: %x, read %x", again[224:252], b[224:252])
		}
	})
}

// FuzzReplay writes checksummed but arbitrary records into the log of a
// fresh pool: import never panics, and when it succeeds the pool checks
// clean. Each record is encoded from the input as a type byte, a two-byte
// length and that many payload bytes.
func FuzzReplay(f *testing.F) {
	for _, b := range replaySeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzReplay(t, data, false) })
}

// FuzzReplaySnapshots is FuzzReplay on a pool with the snapshots feature,
// whose log may hold snapshot, clone and cow records and whose clusters
// may be shared.
func FuzzReplaySnapshots(f *testing.F) {
	for _, b := range replaySeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzReplay(t, data, true) })
}

// fuzzReplayMustImport makes fuzzReplay fail on an import error (for the
// seeds that are valid logs).
var fuzzReplayMustImport bool

// TestReplaySnapshotSeedImports: the snapshot seed of FuzzReplaySnapshots
// is a valid log (so the fuzzer starts from records that apply).
func TestReplaySnapshotSeedImports(t *testing.T) {
	fuzzReplayMustImport = true
	defer func() { fuzzReplayMustImport = false }()
	fuzzReplay(t, replaySeeds()[0], true)
}

func replaySeeds() [][]byte {
	var out [][]byte
	seed := func(recs ...record) []byte {
		var b []byte
		for _, r := range recs {
			var e []byte
			e = r.E.appendTo(e)
			b = append(b, r.Type, byte(len(e)), byte(len(e)>>8))
			b = append(b, e...)
		}
		return b
	}
	u, n := [16]byte{5}, [16]byte{0x11}
	id := ident{NGUID: n}
	f := struct{ Add func([]byte) }{func(b []byte) { out = append(out, b) }}
	create := record{Type: recCreate, E: entry{UUID: u, Size: 1 << 20, Thin: true, Name: "a", HasID: true, ID: id}}
	snap := record{Type: recSnap, E: entry{UUID: [16]byte{6}, Size: 1 << 20, Thin: true, Snapshot: true, Name: "s", HasID: true,
		ID: ident{NGUID: [16]byte{0x12}}, HasOrigin: true, Origin: origin{UUID: u, Created: 1}}}
	clone := record{Type: recClone, E: entry{UUID: [16]byte{7}, Size: 1 << 20, Thin: true, Name: "c", HasID: true,
		ID: ident{NGUID: [16]byte{0x13}}, HasOrigin: true, Origin: origin{UUID: [16]byte{6}, Created: 2}}}
	// Snapshot, copy-on-write, clone, writes and unmaps of shared
	// clusters, deletes in either order.
	f.Add(seed(create,
		record{Type: recMap, E: entry{UUID: u, Runs: []run{{Logical: 0, Phys: 7, Count: 4}}}},
		snap,
		record{Type: recCOW, E: entry{UUID: u, Runs: []run{{Logical: 1, Phys: 20, Count: 1}}}},
		clone,
		record{Type: recCOW, E: entry{UUID: [16]byte{7}, Runs: []run{{Logical: 0, Phys: 21, Count: 2}}}},
		record{Type: recUnmap, E: entry{UUID: u, Runs: []run{{Logical: 3, Count: 1}}}},
		record{Type: recDestroy, E: entry{UUID: [16]byte{6}}},
		record{Type: recDestroy, E: entry{UUID: u}}))
	f.Add(seed(record{Type: recCreate, E: entry{UUID: u, Size: 1 << 20, Thin: true, Name: "a", HasID: true, ID: id}},
		record{Type: recMap, E: entry{UUID: u, Runs: []run{{Logical: 2, Phys: 7, Count: 3}}}},
		record{Type: recUnmap, E: entry{UUID: u, Runs: []run{{Logical: 3, Count: 1}}}},
		record{Type: recResize, E: entry{UUID: u, Size: 2 << 20}}))
	f.Add(seed(record{Type: recCreate, E: entry{UUID: u, Size: 192 << 10, Name: "t", Runs: []run{{Logical: 0, Phys: 0, Count: 3}}, HasID: true, ID: id}},
		record{Type: recDestroy, E: entry{UUID: u}}))
	f.Add(seed(record{Type: recCreate, E: entry{UUID: u, Size: 1 << 20, Thin: true, Name: "a", HasID: true, ID: id}},
		record{Type: recMap, E: entry{UUID: u, Runs: []run{{Logical: 0, Phys: 1, Count: 1}, {Logical: 1, Phys: 1, Count: 1}}}}))
	// Claims: taken, raised, released; then one going back in epoch.
	f.Add(seed(record{Type: recCreate, E: entry{UUID: u, Size: 1 << 20, Thin: true, Name: "a", HasID: true, ID: id}},
		record{Type: recClaim, E: seedClaim(u, n, [16]byte{0xa}, 3)},
		record{Type: recClaim, E: seedClaim(u, n, [16]byte{0xa}, 5)},
		record{Type: recClaim, E: seedClaim(u, n, [16]byte{}, 5)},
		record{Type: recClaim, E: seedClaim(u, n, [16]byte{0xb}, 4)}))
	return out
}

func fuzzReplay(t *testing.T, data []byte, snaps bool) {
	{
		mem, err := newFuzzMalloc()
		if err != nil {
			t.Fatal(err)
		}
		p, err := Create(noClose{mem}, CreateOptions{Name: "f", ClusterSize: 64 << 10, MetadataSize: 0})
		if err != nil {
			t.Fatal(err)
		}
		if snaps {
			if err := p.setSnapshotsFeature(); err != nil {
				t.Fatal(err)
			}
		}
		sb, epoch := p.sb, p.epoch
		_ = p.Close() // writes checkpoint epoch+1
		epoch++
		var log []byte
		seq := uint64(1)
		for len(data) >= 3 && len(log) < int(sb.logSize())-recHeaderLen-(1<<16) {
			typ, n := data[0], int(data[1])|int(data[2])<<8
			data = data[3:]
			n = min(n, len(data))
			payload := data[:n]
			data = data[n:]
			h := make([]byte, recHeaderLen, recHeaderLen+len(payload))
			binary.LittleEndian.PutUint32(h, uint32(len(payload)))
			binary.LittleEndian.PutUint64(h[8:], seq)
			h[16] = typ
			h = append(h, payload...)
			binary.LittleEndian.PutUint32(h[4:], recordCRC(sb.UUID, epoch, h[8:]))
			log = append(log, h...)
			seq++
		}
		for len(log)%512 != 0 {
			log = append(log, 0)
		}
		if len(log) > 0 {
			if _, err := mem.WriteAt(log, sb.logOff()); err != nil {
				t.Fatal(err)
			}
		}
		q, err := Import(noClose{mem})
		if err != nil {
			if fuzzReplayMustImport {
				t.Fatalf("seed does not import: %v", err)
			}
			return
		}
		if err := q.Check(); err != nil {
			t.Fatalf("imported pool fails Check: %v", err)
		}
		_ = q.Close()
	}
}

func newFuzzMalloc() (*bdev.Malloc, error) { return bdev.NewMalloc(4<<20, 512) }

// TestReplayRejectsContradictions: a record with a valid checksum that
// contradicts the state fails import with a CorruptError naming it.
func TestReplayRejectsContradictions(t *testing.T) {
	u, n := [16]byte{5}, [16]byte{0x11}
	create := record{Type: recCreate, E: entry{UUID: u, Size: 1 << 20, Thin: true, Name: "a", HasID: true, ID: ident{NGUID: n}}}
	cases := []struct {
		name string
		recs []record
		want string
	}{
		{"owned twice", []record{create, {Type: recMap, E: entry{UUID: u, Runs: []run{{Logical: 0, Phys: 1, Count: 1}, {Logical: 1, Phys: 1, Count: 1}}}}}, "repeated"},
		{"unknown replica", []record{{Type: recMap, E: entry{UUID: u, Runs: []run{{Logical: 0, Phys: 1, Count: 1}}}}}, "unknown"},
		{"beyond the pool", []record{create, {Type: recMap, E: entry{UUID: u, Runs: []run{{Logical: 0, Phys: 1 << 40, Count: 1}}}}}, "outside the pool"},
		{"shrink", []record{create, {Type: recResize, E: entry{UUID: u, Size: 512}}}, "shrink"},
		{"duplicate", []record{create, create}, "exists"},
		{"huge runs", []record{create, {Type: recUnmap, E: entry{UUID: u, Runs: []run{{Logical: 0, Count: 1 << 31}, {Logical: 0, Count: 1 << 31}}}}}, "more than"},
		{"create without identity", []record{{Type: recCreate, E: entry{UUID: u, Size: 1 << 20, Thin: true, Name: "a"}}}, "no identity block"},
		{"zero NGUID", []record{{Type: recCreate, E: entry{UUID: u, Size: 1 << 20, Thin: true, Name: "a", HasID: true}}}, "zero NGUID"},
		{"identity on a map", []record{create, {Type: recMap, E: entry{UUID: u, HasID: true, ID: ident{NGUID: n}, Runs: []run{{Logical: 0, Phys: 1, Count: 1}}}}}, "carries an identity block"},
		{"claim of another incarnation", []record{create, {Type: recClaim, E: seedClaim(u, [16]byte{0x12}, [16]byte{1}, 1)}}, "NGUID"},
		{"claim going back in epoch", []record{create, {Type: recClaim, E: seedClaim(u, n, [16]byte{1}, 5)}, {Type: recClaim, E: seedClaim(u, n, [16]byte{1}, 4)}}, "lower than the accepted 5"},
		{"claim with runs", []record{create, {Type: recClaim, E: entry{UUID: u, HasID: true, ID: ident{NGUID: n}, Runs: []run{{Logical: 0, Phys: 1, Count: 1}}}}}, "malformed"},
		{"claim of an unknown replica", []record{{Type: recClaim, E: seedClaim(u, n, [16]byte{1}, 1)}}, "unknown"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mem, err := newFuzzMalloc()
			if err != nil {
				t.Fatal(err)
			}
			p, err := Create(noClose{mem}, CreateOptions{Name: "f", ClusterSize: 64 << 10})
			if err != nil {
				t.Fatal(err)
			}
			sb := p.sb
			_ = p.Close() // the log now belongs to epoch 2
			var log []byte
			for i, r := range c.recs {
				r.Seq = uint64(i + 1)
				log = appendRecord(log, sb.UUID, 2, &r)
			}
			for len(log)%512 != 0 {
				log = append(log, 0)
			}
			if _, err := mem.WriteAt(log, sb.logOff()); err != nil {
				t.Fatal(err)
			}
			_, err = Import(noClose{mem})
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "log record") {
				t.Fatalf("Import: %v, want a CorruptError about %q", err, c.want)
			}
		})
	}
}
