package pool

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
)

func mustSnapshot(t testing.TB, p *Pool, replica, name string) SnapshotInfo {
	t.Helper()
	si, err := p.CreateSnapshot(replica, SnapshotOptions{Name: name})
	if err != nil {
		t.Fatalf("CreateSnapshot %s of %s: %v", name, replica, err)
	}
	return si
}

func mustClone(t testing.TB, p *Pool, snap, name string) ReplicaInfo {
	t.Helper()
	ri, err := p.CloneSnapshot(snap, ReplicaOptions{Name: name})
	if err != nil {
		t.Fatalf("CloneSnapshot %s of %s: %v", name, snap, err)
	}
	return ri
}

// readAll returns the whole content of a replica or snapshot handle.
func readAll(t testing.TB, h *Replica) []byte {
	t.Helper()
	b := make([]byte, h.Size())
	if _, err := h.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func snapDigest(t testing.TB, p *Pool, name string) [32]byte {
	t.Helper()
	h, err := p.OpenSnapshot(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	return sha256.Sum256(readAll(t, h))
}

// TestSnapshotCopyOnWrite: a snapshot keeps the content it was taken with
// while its replica is overwritten (whole and partial clusters, unmaps,
// write-zeroes), a clone starts with it and diverges, and the accounting
// counts shared clusters once and gives each holder's exclusive bytes.
func TestSnapshotCopyOnWrite(t *testing.T) {
	mem := newMalloc(t, 16*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	mustReplica(t, p, "r", 1*mib, true)
	h := mustOpen(t, p, "r")
	defer h.Close()
	orig := make([]byte, 1*mib)
	fill(orig[:768*kib], 1) // 12 of 16 clusters written
	if _, err := h.WriteAt(orig[:768*kib], 0); err != nil {
		t.Fatal(err)
	}
	if p.snapshotsOn() {
		t.Fatal("snapshots feature on before the first snapshot")
	}
	before := p.Stats()
	si := mustSnapshot(t, p, "r", "s1")
	if !p.snapshotsOn() {
		t.Fatal("snapshots feature off after the first snapshot")
	}
	if si.Referenced != 768*kib || si.Exclusive != 0 || si.OriginName != "r" || si.Size != 1*mib {
		t.Fatalf("snapshot info %+v", si)
	}
	if st := p.Stats(); st.FreeClusters != before.FreeClusters || st.Allocated != before.Allocated {
		t.Fatalf("a snapshot allocated: %+v, before %+v", st, before)
	}
	check(t, p)

	// Overwrite: a partial cluster, a whole cluster, an unmap of a whole
	// cluster, a partial write-zeroes, and a write to a fresh cluster.
	cur := bytes.Clone(orig)
	w := make([]byte, 8*kib)
	fill(w, 2)
	if _, err := h.WriteAt(w, 4*kib); err != nil {
		t.Fatal(err)
	}
	copy(cur[4*kib:], w)
	whole := make([]byte, 64*kib)
	fill(whole, 3)
	if _, err := h.WriteAt(whole, 128*kib); err != nil {
		t.Fatal(err)
	}
	copy(cur[128*kib:], whole)
	if err := h.Unmap(256*kib, 64*kib); err != nil {
		t.Fatal(err)
	}
	clear(cur[256*kib : 320*kib])
	if err := h.WriteZeroes(400*kib, 4*kib); err != nil {
		t.Fatal(err)
	}
	clear(cur[400*kib : 404*kib])
	if _, err := h.WriteAt(whole, 896*kib); err != nil {
		t.Fatal(err)
	}
	copy(cur[896*kib:], whole)
	if got := readAll(t, h); !bytes.Equal(got, cur) {
		t.Fatalf("replica content wrong at byte %d", firstDiff(got, cur))
	}
	sh, err := p.OpenSnapshot("s1")
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, sh); !bytes.Equal(got, orig) {
		t.Fatalf("snapshot content changed at byte %d", firstDiff(got, orig))
	}
	if _, err := sh.WriteAt(w, 0); !errors.Is(err, bdev.ErrReadOnly) {
		t.Fatalf("write to a snapshot: %v, want ErrReadOnly", err)
	}
	if err := sh.Unmap(0, 64*kib); !errors.Is(err, bdev.ErrReadOnly) {
		t.Fatalf("unmap of a snapshot: %v, want ErrReadOnly", err)
	}
	if err := p.DeleteSnapshot("s1"); !errors.Is(err, ErrBusy) {
		t.Fatalf("delete of an open snapshot: %v, want ErrBusy", err)
	}
	sh.Close()
	check(t, p)
	// Clusters 0 (partial write), 2 (whole write), 4 (unmapped), 6
	// (write-zeroes) left the snapshot's; the snapshot holds those four
	// alone; the replica holds 0, 2, 6 and 14 alone.
	si, _ = p.SnapshotInfo("s1")
	ri, _ := p.ReplicaInfo("r")
	if si.Exclusive != 4*64*kib || ri.Exclusive != 4*64*kib || ri.Allocated != 12*64*kib {
		t.Fatalf("exclusive: snapshot %+v, replica %+v", si, ri)
	}
	if st := p.Stats(); st.Allocated != 16*64*kib || st.Replicas != 1 || st.Snapshots != 1 || st.Committed != 1*mib {
		t.Fatalf("stats %+v, want 16 clusters allocated (12 shared or the snapshot's, 4 the replica's copies), one replica of 1 MiB and one snapshot", st)
	}

	// A clone reads as the snapshot, diverges on write, and leaves it be.
	c := mustClone(t, p, "s1", "c1")
	if c.Origin != si.UUID || c.Allocated != 12*64*kib || c.Exclusive != 0 {
		t.Fatalf("clone info %+v", c)
	}
	ch := mustOpen(t, p, "c1")
	if got := readAll(t, ch); !bytes.Equal(got, orig) {
		t.Fatalf("clone content differs from its snapshot at byte %d", firstDiff(got, orig))
	}
	ccur := bytes.Clone(orig)
	if _, err := ch.WriteAt(w, 60*kib); err != nil { // straddles clusters 0 and 1
		t.Fatal(err)
	}
	copy(ccur[60*kib:], w)
	if got := readAll(t, ch); !bytes.Equal(got, ccur) {
		t.Fatalf("clone content wrong at byte %d", firstDiff(got, ccur))
	}
	ch.Close()
	if d := snapDigest(t, p, "s1"); d != sha256.Sum256(orig) {
		t.Fatal("snapshot changed by a write to its clone")
	}
	check(t, p)

	// Reimport: the same content, counts and accounting.
	st := p.Stats()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p = mustImport(t, noClose{mem})
	if got := p.Stats(); got != st {
		t.Fatalf("stats after import %+v, before %+v", got, st)
	}
	if d := snapDigest(t, p, "s1"); d != sha256.Sum256(orig) {
		t.Fatal("snapshot content changed across import")
	}

	// Delete in every order frees exactly the clusters nobody holds.
	if err := p.DeleteSnapshot("s1"); err != nil {
		t.Fatal(err)
	}
	check(t, p)
	ch = mustOpen(t, p, "c1")
	if got := readAll(t, ch); !bytes.Equal(got, ccur) {
		t.Fatalf("clone content wrong after its snapshot was deleted at byte %d", firstDiff(got, ccur))
	}
	ch.Close()
	if err := p.DestroyReplica("r"); err != nil {
		t.Fatal(err)
	}
	check(t, p)
	if err := p.DestroyReplica("c1"); err != nil {
		t.Fatal(err)
	}
	check(t, p)
	if st := p.Stats(); st.FreeClusters != st.TotalClusters || st.Allocated != 0 || st.Committed != 0 {
		t.Fatalf("stats after deleting everything: %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestSnapshotDeleteOrders deletes a replica, its snapshots and their
// clones in random orders and checks after each step that every count is
// right and that the pool ends empty.
func TestSnapshotDeleteOrders(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 5))
			p := mustCreate(t, newMalloc(t, 16*mib), CreateOptions{})
			defer p.Close()
			mustReplica(t, p, "r", 512*kib, true)
			h := mustOpen(t, p, "r")
			buf := make([]byte, 96*kib)
			names := []string{"r"}
			for i := range 3 {
				fill(buf, seed*10+uint64(i))
				if _, err := h.WriteAt(buf, int64(rng.IntN(5))*64*kib); err != nil {
					t.Fatal(err)
				}
				s := fmt.Sprintf("s%d", i)
				mustSnapshot(t, p, "r", s)
				c := fmt.Sprintf("c%d", i)
				mustClone(t, p, s, c)
				ch := mustOpen(t, p, c)
				if _, err := ch.WriteAt(buf[:8*kib], int64(rng.IntN(60))*8*kib); err != nil {
					t.Fatal(err)
				}
				ch.Close()
				names = append(names, s, c)
				check(t, p)
			}
			h.Close()
			digests := map[string][32]byte{}
			for _, n := range names {
				if n[0] == 's' {
					digests[n] = snapDigest(t, p, n)
				}
			}
			rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
			for i, n := range names {
				var err error
				if n[0] == 's' {
					err = p.DeleteSnapshot(n)
				} else {
					err = p.DestroyReplica(n)
				}
				if err != nil {
					t.Fatal(err)
				}
				check(t, p)
				for _, m := range names[i+1:] {
					if m[0] == 's' && snapDigest(t, p, m) != digests[m] {
						t.Fatalf("snapshot %s changed after deleting %s", m, n)
					}
				}
			}
			if st := p.Stats(); st.FreeClusters != st.TotalClusters {
				t.Fatalf("clusters leaked: %+v", st)
			}
		})
	}
}

// TestSnapshotRules: idempotent by UUID, thick refused, names shared with
// replicas, snapshots not listed as replicas nor claimable, the sharing
// budget refuses with ErrNoSpace and writes nothing.
func TestSnapshotRules(t *testing.T) {
	mem := newMalloc(t, 16*mib)
	p := mustCreate(t, noClose{mem}, CreateOptions{})
	mustReplica(t, p, "r", 1*mib, true)
	mustReplica(t, p, "thick", 256*kib, false)
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	opts := SnapshotOptions{Name: "s", UUID: "5a000000-0000-4000-8000-000000000001", Created: at}
	a, err := p.CreateSnapshot("r", opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.CreateSnapshot("r", opts)
	if err != nil || a != b || !a.Created.Equal(at) {
		t.Fatalf("second create: %+v, %v; first %+v", b, err, a)
	}
	if _, err := p.CreateSnapshot("r", SnapshotOptions{Name: "other", UUID: opts.UUID}); !errors.Is(err, ErrExists) {
		t.Fatalf("UUID reused under another name: %v", err)
	}
	if _, err := p.CreateSnapshot("thick", SnapshotOptions{Name: "t"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("snapshot of a thick replica: %v, want ErrInvalid", err)
	}
	if _, err := p.CreateSnapshot("r", SnapshotOptions{Name: "thick"}); !errors.Is(err, ErrExists) {
		t.Fatalf("snapshot named like a replica: %v, want ErrExists", err)
	}
	if _, err := p.CreateSnapshot("s", SnapshotOptions{Name: "ss"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("snapshot of a snapshot: %v, want ErrNotFound", err)
	}
	if _, err := p.CreateReplica(ReplicaOptions{Name: "s", Size: mib, Thin: true}); !errors.Is(err, ErrExists) {
		t.Fatalf("replica named like a snapshot: %v, want ErrExists", err)
	}
	for _, ri := range p.Replicas() {
		if ri.Name == "s" {
			t.Fatal("snapshot listed as a replica")
		}
	}
	if _, err := p.OpenReplica("s"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenReplica of a snapshot: %v", err)
	}
	if err := p.DestroyReplica("s"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DestroyReplica of a snapshot: %v", err)
	}
	if err := p.DeleteSnapshot("r"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteSnapshot of a replica: %v", err)
	}
	sh, err := p.OpenSnapshot("s")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sh.ClaimReplica(t.Context(), bdev.Claim{Owner: crashOwners[0]}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("claim of a snapshot: %v, want ErrInvalid", err)
	}
	sh.Close()
	c1 := ReplicaOptions{Name: "c", UUID: "c0000000-0000-4000-8000-000000000001"}
	x, err := p.CloneSnapshot("s", c1)
	if err != nil {
		t.Fatal(err)
	}
	if y, err := p.CloneSnapshot("s", c1); err != nil || y.NGUID != x.NGUID {
		t.Fatalf("second clone: %+v, %v", y, err)
	}
	check(t, p)

	// Fill the replica, then snapshot until the sharing budget refuses.
	h := mustOpen(t, p, "r")
	buf := make([]byte, 1*mib)
	fill(buf, 9)
	if _, err := h.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	h.Close()
	var i int
	for i = 0; ; i++ {
		_, err := p.CreateSnapshot("r", SnapshotOptions{Name: fmt.Sprintf("b%d", i)})
		if errors.Is(err, ErrNoSpace) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > 1000 {
			t.Fatal("the sharing budget never refused")
		}
	}
	t.Logf("%d snapshots of a 16-cluster replica fit the sharing budget of a %d-cluster pool", i, p.Stats().TotalClusters)
	check(t, p)
	// Force every state into a checkpoint: it fits.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p = mustImport(t, noClose{mem})
	defer p.Close()
}

// TestCloneConformance runs the block device conformance suite on a
// clone of a snapshot of a written replica.
func TestCloneConformance(t *testing.T) {
	for _, bs := range []int{512, 4096} {
		t.Run(fmt.Sprint(bs), func(t *testing.T) {
			m, err := bdev.NewMalloc(16*mib, bs)
			if err != nil {
				t.Fatal(err)
			}
			p := mustCreate(t, m, CreateOptions{})
			defer p.Close()
			mustReplica(t, p, "r", 4*mib, true)
			h := mustOpen(t, p, "r")
			buf := make([]byte, 4*mib)
			fill(buf, 4)
			if _, err := h.WriteAt(buf, 0); err != nil {
				t.Fatal(err)
			}
			h.Close()
			mustSnapshot(t, p, "r", "s")
			mustClone(t, p, "s", "c")
			d := snapDigest(t, p, "s")
			ch := mustOpen(t, p, "c")
			if err := bdevtest.TestDevice(ch); err != nil {
				t.Fatal(err)
			}
			check(t, p)
			if snapDigest(t, p, "s") != d {
				t.Fatal("the suite on the clone changed its snapshot")
			}
		})
	}
}

// TestConcurrentCopyOnWrite: writers overwrite a replica while snapshots
// are taken and deleted; each snapshot's content is, block by block, a
// version some writer wrote (or the initial one), never torn within a
// block, and never changes after it was taken.
func TestConcurrentCopyOnWrite(t *testing.T) {
	p := mustCreate(t, newMalloc(t, 32*mib), CreateOptions{})
	defer p.Close()
	const size = 2 * mib
	mustReplica(t, p, "r", size, true)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := mustOpen(t, p, "r")
			defer h.Close()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			buf := make([]byte, 16*kib)
			for i := uint64(0); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				blk := rng.Int64N(size/crashBlock - 32)
				for k := range int64(len(buf) / crashBlock) {
					stamp(buf[k*crashBlock:(k+1)*crashBlock], i, w, blk+k)
				}
				if _, err := h.WriteAt(buf, blk*crashBlock); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	digests := map[string][32]byte{}
	for i := range 20 {
		name := fmt.Sprintf("s%d", i)
		mustSnapshot(t, p, "r", name)
		digests[name] = snapDigest(t, p, name)
		if i >= 3 {
			old := fmt.Sprintf("s%d", i-3)
			if snapDigest(t, p, old) != digests[old] {
				t.Fatalf("snapshot %s changed", old)
			}
			if err := p.DeleteSnapshot(old); err != nil {
				t.Fatal(err)
			}
			delete(digests, old)
		}
		if err := p.Check(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	for name, d := range digests {
		sh, err := p.OpenSnapshot(name)
		if err != nil {
			t.Fatal(err)
		}
		b := readAll(t, sh)
		sh.Close()
		if sha256.Sum256(b) != d {
			t.Fatalf("snapshot %s changed", name)
		}
		want := make([]byte, crashBlock)
		for blk := range int64(size / crashBlock) {
			got := b[blk*crashBlock : (blk+1)*crashBlock]
			if bytes.Equal(got, make([]byte, crashBlock)) {
				continue
			}
			le := func(o int) uint64 {
				return uint64(got[o]) | uint64(got[o+1])<<8 | uint64(got[o+2])<<16 | uint64(got[o+3])<<24 | uint64(got[o+4])<<32 | uint64(got[o+5])<<40 | uint64(got[o+6])<<48 | uint64(got[o+7])<<56
			}
			stamp(want, le(0), int(le(8)), blk)
			if !bytes.Equal(got, want) {
				t.Fatalf("snapshot %s block %d torn or foreign", name, blk)
			}
		}
	}
	check(t, p)
}
