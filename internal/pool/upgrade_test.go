package pool

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

// The version 1 fixture, testdata/v1-pool.img.gz, is the 8 MiB disk image
// (512-byte blocks) of a pool that the format version 1 code (before
// replica identities) wrote, left without a clean close so that its log
// holds records as well as a checkpoint:
//
//	pool "v1pool" 5a1e0000-0000-4000-8000-000000000001, 64 KiB clusters
//	thin-a  ...0a  thin 1 MiB, grown to 1.5 MiB after the checkpoint;
//	               1 KiB of fill(100) at 0, fill(102) at 200 KiB,
//	               fill(103) at 900 KiB, fill(104) at 1400 KiB (after the
//	               checkpoint); fill(101) at 64 KiB was unmapped (whole cluster)
//	thick-b ...0b  thick 256 KiB; fill(200) at 128 KiB
//	late    ...0c  thin 512 KiB, created after the checkpoint; fill(300) at 320 KiB
//	gone           created and destroyed before the checkpoint

type fixtureData struct {
	off  int64
	seed uint64
}

var v1Fixture = map[string]struct {
	uuid string
	size int64
	thin bool
	data []fixtureData
}{
	"thin-a":  {"5a1e0000-0000-4000-8000-00000000000a", mib + 512*kib, true, []fixtureData{{0, 100}, {200 * kib, 102}, {900 * kib, 103}, {1400 * kib, 104}}},
	"thick-b": {"5a1e0000-0000-4000-8000-00000000000b", 256 * kib, false, []fixtureData{{128 * kib, 200}}},
	"late":    {"5a1e0000-0000-4000-8000-00000000000c", 512 * kib, true, []fixtureData{{320 * kib, 300}}},
}

// loadV1Fixture returns a RAM device holding the version 1 fixture.
func loadV1Fixture(t testing.TB) *bdev.Malloc {
	t.Helper()
	f, err := os.Open("testdata/v1-pool.img.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	img, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	mem := newMalloc(t, int64(len(img)))
	if _, err := mem.WriteAt(img, 0); err != nil {
		t.Fatal(err)
	}
	return mem
}

// checkV1FixtureContent checks that p holds the fixture's replicas and data,
// with identities, and returns their NGUIDs by name.
func checkV1FixtureContent(t *testing.T, p *Pool) map[string][16]byte {
	t.Helper()
	check(t, p)
	infos := p.Replicas()
	if len(infos) != len(v1Fixture) {
		t.Fatalf("replicas %+v, want %d", infos, len(v1Fixture))
	}
	nguids := map[string][16]byte{}
	for _, ri := range infos {
		want, ok := v1Fixture[ri.Name]
		if !ok || ri.UUID != want.uuid || ri.Size != want.size || ri.Thin != want.thin {
			t.Fatalf("replica %+v, want %+v", ri, want)
		}
		if ri.NGUID == ([16]byte{}) || ri.Owner != ([16]byte{}) || ri.Epoch != 0 {
			t.Fatalf("replica %s identity after the upgrade: NGUID %x owner %s epoch %d", ri.Name, ri.NGUID, ri.Owner, ri.Epoch)
		}
		nguids[ri.Name] = ri.NGUID
		h := mustOpen(t, p, ri.Name)
		got := make([]byte, ri.Size)
		if _, err := h.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		h.Close()
		exp := make([]byte, ri.Size)
		for _, d := range want.data {
			fill(exp[d.off:d.off+kib], d.seed)
		}
		if !bytes.Equal(got, exp) {
			t.Fatalf("replica %s: data differs after the upgrade", ri.Name)
		}
	}
	if nguids["thin-a"] == nguids["thick-b"] || nguids["thin-a"] == nguids["late"] || nguids["thick-b"] == nguids["late"] {
		t.Fatalf("NGUIDs not distinct: %x", nguids)
	}
	return nguids
}

func sbVersions(t *testing.T, dev bdev.Device) [2]uint32 {
	t.Helper()
	var v [2]uint32
	buf := make([]byte, 512)
	for c := range 2 {
		if _, err := dev.ReadAt(buf, int64(c)*4096); err != nil {
			t.Fatal(err)
		}
		v[c] = le.Uint32(buf[8:])
	}
	return v
}

// TestUpgradeV1Fixture: a pool written by the version 1 code imports, is
// upgraded in place (NGUIDs drawn and durable, both superblock copies
// version 2, which version 1 code refuses), keeps every replica and every
// byte, and keeps the same NGUIDs from then on. Probe reads it without
// writing.
func TestUpgradeV1Fixture(t *testing.T) {
	mem := loadV1Fixture(t)
	before := snapshot(t, mem)
	info, err := Probe(mem)
	if err != nil || info.FormatVersion != formatV1 || info.Name != "v1pool" || info.Overcommit != DefaultOvercommit {
		t.Fatalf("Probe of the version 1 pool: %+v, %v", info, err)
	}
	if !bytes.Equal(before, snapshot(t, mem)) {
		t.Fatal("Probe wrote to the disk")
	}
	v1sb, _, err := readSuperblocks(mem)
	if err != nil {
		t.Fatal(err)
	}
	p := mustImport(t, noClose{mem})
	if p.sb.Version != FormatVersion || p.sb.Generation != v1sb.Generation+1 {
		t.Fatalf("superblock after the upgrade: %+v", p.sb)
	}
	if v := sbVersions(t, mem); v != [2]uint32{FormatVersion, FormatVersion} {
		// Version 1 code accepts only version 1 superblocks: with both
		// copies at 2 it fails loudly instead of misreading the pool.
		t.Fatalf("superblock copies of versions %v after the upgrade", v)
	}
	if lim := v2ReplicaLimit(&v1sb); uint64(p.sb.MaxReplicas) != lim || lim > uint64(v1sb.MaxReplicas) {
		t.Fatalf("replica limit %d after the upgrade (version 1: %d), want %d", p.sb.MaxReplicas, v1sb.MaxReplicas, lim)
	}
	if p.sb.CPSize < checkpointBound(p.sb.ClusterCount, p.sb.MaxReplicas, 4096, maxEntryLen) {
		t.Fatalf("checkpoint slot %d too small for the new limit", p.sb.CPSize)
	}
	if st := p.Stats(); st.Overcommit != DefaultOvercommit {
		t.Fatalf("over-commit limit %d%% after the upgrade", st.Overcommit)
	}
	nguids := checkV1FixtureContent(t, p)
	// The pool is a normal version 2 pool: claims work and persist.
	h := mustOpen(t, p, "late")
	c, err := h.Claim(t.Context(), bdev.Claim{Owner: [16]byte{1}, Epoch: 3})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	h.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	info, err = Probe(mem)
	if err != nil || info.FormatVersion != FormatVersion {
		t.Fatalf("Probe after the upgrade: %+v, %v", info, err)
	}
	q := mustImport(t, noClose{mem})
	defer q.Close()
	for name, n := range nguids {
		ri, err := q.ReplicaInfo(name)
		if err != nil || ri.NGUID != n {
			t.Fatalf("replica %s: NGUID %x after another import, was %x (%v)", name, ri.NGUID, n, err)
		}
	}
	if ri, _ := q.ReplicaInfo("late"); ri.Owner != ([16]byte{1}) || ri.Epoch != 3 {
		t.Fatalf("claim after the upgrade lost: %+v", ri)
	}
}

// TestUpgradeCrashPoints interrupts the upgrade at each of its writes and
// flushes, by a torn write or a failed flush through faulty: the
// interrupted import fails, and the next one completes the upgrade with
// every replica and byte intact. The NGUIDs the finished upgrade hands out
// stay the same on later imports.
func TestUpgradeCrashPoints(t *testing.T) {
	for _, mode := range []struct {
		name string
		rule func(n int) faulty.Rule
	}{
		{"torn-write", func(n int) faulty.Rule { return faulty.Rule{Ops: faulty.OpWrite, After: n, Count: 1, Torn: true} }},
		{"failed-write", func(n int) faulty.Rule { return faulty.Rule{Ops: faulty.OpWrite, After: n, Count: 1} }},
		{"failed-flush", func(n int) faulty.Rule { return faulty.Rule{Ops: faulty.OpFlush, After: n, Count: 1} }},
	} {
		t.Run(mode.name, func(t *testing.T) {
			points := 0
			for n := 0; ; n++ {
				mem := loadV1Fixture(t)
				fd := faulty.New(noClose{mem}, int64(n))
				rule := fd.AddRule(mode.rule(n))
				p, err := Import(fd)
				if fd.Fired(rule) == 0 {
					// Past the last write: the upgrade ran to the end.
					if err != nil {
						t.Fatalf("import without a fault: %v", err)
					}
					checkV1FixtureContent(t, p)
					break
				}
				points++
				if err == nil {
					t.Fatalf("point %d: import succeeded although its write or flush failed", n)
				}
				versions := sbVersions(t, mem)
				q, err := Import(noClose{mem})
				if err != nil {
					t.Fatalf("point %d (superblocks %v): import after the interrupted upgrade: %v", n, versions, err)
				}
				nguids := checkV1FixtureContent(t, q)
				if err := q.Close(); err != nil {
					t.Fatal(err)
				}
				r := mustImport(t, noClose{mem})
				for name, g := range nguids {
					if ri, _ := r.ReplicaInfo(name); ri.NGUID != g {
						t.Fatalf("point %d: replica %s NGUID changed from %x to %x between imports", n, name, g, ri.NGUID)
					}
				}
				if r.sb.Version != FormatVersion || sbVersions(t, mem) != [2]uint32{FormatVersion, FormatVersion} {
					t.Fatalf("point %d: not upgraded: %v", n, sbVersions(t, mem))
				}
				_ = r.Close()
			}
			// Checkpoint, superblock copy 0 and copy 1 at least.
			if points < 3 {
				t.Fatalf("only %d points of failure exercised", points)
			}
		})
	}
}

// TestUpgradeKeepsIdentitiesOfInterruptedUpgrade: when an upgrade stops
// after its checkpoint is durable but before the superblock says version
// 2, the next import keeps the NGUIDs that checkpoint recorded rather than
// drawing new ones.
func TestUpgradeKeepsIdentitiesOfInterruptedUpgrade(t *testing.T) {
	mem := loadV1Fixture(t)
	fd := faulty.New(noClose{mem}, 1)
	// Fail the first write of superblock copy 0.
	fd.AddRule(faulty.Rule{Ops: faulty.OpWrite, Off: 0, Len: 512, Count: 1})
	if _, err := Import(fd); err == nil {
		t.Fatal("import succeeded with the superblock write failing")
	}
	if v := sbVersions(t, mem); v != [2]uint32{formatV1, formatV1} {
		t.Fatalf("superblocks %v after the failed upgrade", v)
	}
	// Read the newest checkpoint the failed upgrade left.
	sb, _, err := readSuperblocks(mem)
	if err != nil {
		t.Fatal(err)
	}
	probe := newPool(noClose{mem}, sb)
	var newest checkpoint
	for s := range 2 {
		if cp, err := probe.readCheckpoint(s); err == nil && cp.Epoch > newest.Epoch {
			newest = cp
		}
	}
	recorded := map[string][16]byte{}
	for _, e := range newest.Replicas {
		if !e.HasID {
			t.Fatalf("checkpoint %d: replica %s without identity", newest.Epoch, e.Name)
		}
		recorded[e.Name] = e.ID.NGUID
	}
	p := mustImport(t, noClose{mem})
	defer p.Close()
	got := checkV1FixtureContent(t, p)
	for name, n := range recorded {
		if got[name] != n {
			t.Fatalf("replica %s: NGUID %x, the interrupted upgrade's checkpoint recorded %x", name, got[name], n)
		}
	}
}

// downgradeToV1 rewrites the closed pool on dev as format version 1 wrote
// it: superblock version 1 (bytes 224..251 zero), checkpoint entries
// without identity blocks, the log zeroed. cpSize, when not 0, shrinks the
// checkpoint slots to that size (the log grows by as much), as version 1
// sized them for entries of 158 bytes.
func downgradeToV1(t *testing.T, dev bdev.Device, cpSize uint64) {
	t.Helper()
	sb, _, err := readSuperblocks(dev)
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(noClose{dev}, sb)
	var cp checkpoint
	for s := range 2 {
		if c, err := p.readCheckpoint(s); err == nil && c.Epoch > cp.Epoch {
			cp = c
		}
	}
	if cp.Epoch == 0 {
		t.Fatal("no checkpoint to downgrade")
	}
	for i := range cp.Replicas {
		cp.Replicas[i].HasID, cp.Replicas[i].ID = false, ident{}
	}
	sb.Version, sb.Generation = formatV1, sb.Generation+1
	sb.Incompat, sb.Compat, sb.Overcommit, sb.Reserved = 0, 0, 0, [16]byte{}
	if cpSize != 0 {
		sb.CPSize = cpSize
	}
	if err := sb.validate(); err != nil {
		t.Fatalf("version 1 superblock: %v", err)
	}
	if err := dev.WriteZeroes(int64(sb.MDOff), int64(sb.MDSize)); err != nil {
		t.Fatal(err)
	}
	img := encodeCheckpoint(nil, sb.UUID, &cp)
	if uint64(len(img)) > sb.CPSize {
		t.Fatalf("version 1 checkpoint of %d bytes does not fit %d", len(img), sb.CPSize)
	}
	for len(img)%int(sb.BlockSize) != 0 {
		img = append(img, 0)
	}
	if _, err := dev.WriteAt(img, int64(sb.MDOff)+int64(cp.Epoch%2)*int64(sb.CPSize)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, sbArea(int(sb.BlockSize)))
	sb.encode(buf)
	for c := range int64(2) {
		if _, err := dev.WriteAt(buf, c*int64(len(buf))); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUpgradeDowngradedPool: the test helper that turns a pool back into
// format version 1 produces what import upgrades, with the same state.
func TestUpgradeDowngradedPool(t *testing.T) {
	mem := newMalloc(t, 8*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	mustReplica(t, p, "a", mib, true)
	mustReplica(t, p, "b", mib, false)
	h := mustOpen(t, p, "a")
	data := make([]byte, 4*kib)
	fill(data, 5)
	if _, err := h.WriteAt(data, 300*kib); err != nil {
		t.Fatal(err)
	}
	h.Close()
	old, _ := p.ReplicaInfo("a")
	wantStats := p.Stats()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	downgradeToV1(t, mem, 0)
	if info, err := Probe(mem); err != nil || info.FormatVersion != formatV1 {
		t.Fatalf("Probe of the downgraded pool: %+v %v", info, err)
	}
	q := mustImport(t, noClose{mem})
	defer q.Close()
	if st := q.Stats(); st != wantStats {
		t.Fatalf("stats after the upgrade %+v, want %+v", st, wantStats)
	}
	ri, _ := q.ReplicaInfo("a")
	if ri.NGUID == ([16]byte{}) || ri.NGUID == old.NGUID {
		t.Fatalf("NGUID after the upgrade %x (before the downgrade %x): want a new one", ri.NGUID, old.NGUID)
	}
	h = mustOpen(t, q, "a")
	defer h.Close()
	got := make([]byte, len(data))
	if _, err := h.ReadAt(got, 300*kib); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after the upgrade: %v", err)
	}
}

// TestUpgradeRefusesTooManyReplicas: a version 1 pool whose checkpoint
// slots, sized for version 1 entries, cannot hold its replicas' version 2
// entries is refused with ErrUnsupported, naming the numbers, and nothing
// is written.
func TestUpgradeRefusesTooManyReplicas(t *testing.T) {
	mem := newMalloc(t, 4*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	maxRep := int(p.sb.MaxReplicas)
	for i := range maxRep {
		mustReplica(t, p, strings.Repeat("r", 100)+string(rune('A'+i/26))+string(rune('a'+i%26)), 64*kib, true)
	}
	sb := p.sb
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	v1CP := checkpointBound(sb.ClusterCount, sb.MaxReplicas, sbArea(int(sb.BlockSize)), maxEntryLenV1)
	downgradeToV1(t, mem, v1CP)
	limit := v2ReplicaLimit(&superblock{Version: formatV1, CPSize: v1CP, ClusterCount: sb.ClusterCount, MaxReplicas: sb.MaxReplicas})
	if limit >= uint64(maxRep) {
		t.Fatalf("test setup: version 2 limit %d not below the %d replicas", limit, maxRep)
	}
	before := snapshot(t, mem)
	_, err := Import(noClose{mem})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "holds 64 replicas") || !strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("Import: %v, want ErrUnsupported naming the replica count", err)
	}
	if !bytes.Equal(before, snapshot(t, mem)) {
		t.Fatal("the refused upgrade wrote to the disk")
	}
}

// setSuperblock rewrites copy c of the superblock on dev through change.
func setSuperblock(t *testing.T, dev bdev.Device, c int, change func(*superblock)) {
	t.Helper()
	buf := make([]byte, 4096)
	if _, err := dev.ReadAt(buf, int64(c)*4096); err != nil {
		t.Fatal(err)
	}
	sb, err := decodeSuperblock(buf)
	if err != nil {
		t.Fatal(err)
	}
	change(&sb)
	sb.encode(buf)
	if _, err := dev.WriteAt(buf, int64(c)*4096); err != nil {
		t.Fatal(err)
	}
}

// TestUnsupportedFormatRefused: a newest superblock copy of an unknown
// version or with unknown incompatible features makes import and probe fail
// with ErrUnsupported naming it, without writing, even where the other copy
// is an older one this build could read. An older unsupported copy behind
// a newer supported one is only stale.
func TestUnsupportedFormatRefused(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(*superblock)
		want   string
	}{
		{"incompatible feature", func(s *superblock) { s.Incompat = 1<<3 | 1<<30 }, "incompatible feature bits 0x40000008 (bit 3, bit 30)"},
		{"future version", func(s *superblock) { s.Version = 3 }, "format version 3"},
	} {
		t.Run(c.name, func(t *testing.T) {
			mem := newMalloc(t, 8*mib)
			p := mustCreate(t, noClose{mem}, CreateOptions{Name: "future"})
			mustReplica(t, p, "r", mib, true)
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			// Copy 0 newer and unsupported, copy 1 older and fine.
			setSuperblock(t, mem, 0, func(s *superblock) { c.change(s); s.Generation++ })
			before := snapshot(t, mem)
			for what, err := range map[string]error{
				"Import": func() error { _, err := Import(noClose{mem}); return err }(),
				"Probe":  func() error { _, err := Probe(mem); return err }(),
			} {
				if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `"future"`) {
					t.Fatalf("%s: %v, want ErrUnsupported naming %q", what, err, c.want)
				}
			}
			if !bytes.Equal(before, snapshot(t, mem)) {
				t.Fatal("a refused import wrote to the disk")
			}
			// The same copy older than the other: the newer one rules and
			// import repairs the stale copy.
			setSuperblock(t, mem, 1, func(s *superblock) { s.Generation += 2 })
			q := mustImport(t, noClose{mem})
			if len(q.Replicas()) != 1 {
				t.Fatalf("replicas %+v", q.Replicas())
			}
			_ = q.Close()
			if v := sbVersions(t, mem); v != [2]uint32{FormatVersion, FormatVersion} {
				t.Fatalf("stale copy not repaired: versions %v", v)
			}
		})
	}
}

// TestUnknownCompatFeaturesKept: unknown compatible feature bits and the
// reserved bytes are ignored, and kept when the superblock is rewritten.
func TestUnknownCompatFeaturesKept(t *testing.T) {
	mem := newMalloc(t, 8*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for c := range 2 {
		setSuperblock(t, mem, c, func(s *superblock) { s.Compat = 1<<7 | 1<<31; s.Reserved = [16]byte{0: 1, 15: 0xfe} })
	}
	q := mustImport(t, noClose{mem})
	mustReplica(t, q, "r", mib, true)
	if err := q.SetOvercommit(400); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	for c := range 2 {
		buf := make([]byte, 512)
		if _, err := mem.ReadAt(buf, int64(c)*4096); err != nil {
			t.Fatal(err)
		}
		sb, err := decodeSuperblock(buf)
		if err != nil {
			t.Fatal(err)
		}
		if sb.Compat != 1<<7|1<<31 || sb.Reserved != ([16]byte{0: 1, 15: 0xfe}) || sb.Overcommit != 400 {
			t.Fatalf("copy %d after a rewrite: compat %#x reserved %x over-commit %d", c, sb.Compat, sb.Reserved, sb.Overcommit)
		}
	}
}
