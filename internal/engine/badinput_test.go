package engine

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/fault"
)

// realRig runs an engine over the real pool backend on files in a temp dir.
type realRig struct {
	t   *testing.T
	dir string
	e   *Engine
}

func newRealRig(t *testing.T) *realRig {
	dir := t.TempDir()
	e, err := New(Config{DataDir: filepath.Join(dir, "data"), Backend: PoolBackend{}, NBD: newMemExporter(),
		Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return &realRig{t: t, dir: dir, e: e}
}

func (r *realRig) path(name string) string { return filepath.Join(r.dir, name) }

// fileURI is a file:// disk of size bytes in the rig's directory.
func (r *realRig) fileURI(name string, size int64) string {
	return fmt.Sprintf("file://%s?size=%d", r.path(name), size)
}

// snapshot is what must not change when a request is refused: the bytes
// of every file in the directory (by hash), the state file, and the
// engine's view of pools and replicas.
type snapshot struct {
	Files    map[string][sha256.Size]byte
	Pools    []PoolInfo
	Replicas []ReplicaInfo
}

func (r *realRig) snapshot() snapshot {
	r.t.Helper()
	s := snapshot{Files: map[string][sha256.Size]byte{}, Pools: r.e.Pools()}
	s.Replicas, _ = r.e.Replicas("")
	filepath.WalkDir(r.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		s.Files[p] = hashSparse(r.t, p)
		return nil
	})
	return s
}

// refused checks that err is the fault wanted and that nothing changed.
func (r *realRig) refused(before snapshot, err error, kind fault.Kind, names ...string) {
	r.t.Helper()
	wantFault(r.t, err, kind, names...)
	after := r.snapshot()
	if !reflect.DeepEqual(before.Files, after.Files) {
		r.t.Errorf("files changed by a refused request:\nbefore %v\nafter  %v", keys(before.Files), keys(after.Files))
	}
	if !reflect.DeepEqual(before.Pools, after.Pools) || !reflect.DeepEqual(before.Replicas, after.Replicas) {
		r.t.Errorf("registry changed by a refused request:\nbefore %+v %+v\nafter  %+v %+v",
			before.Pools, before.Replicas, after.Pools, after.Replicas)
	}
}

// hashSparse hashes a file's size and the offsets and bytes of its data
// segments, skipping holes (which read as zeroes either way), so that large
// sparse disks are cheap to compare.
func hashSparse(t *testing.T, path string) [sha256.Size]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "size %d\n", st.Size())
	buf := make([]byte, 1<<20)
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil { // ENXIO: only a hole remains
			break
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		for pos := data; pos < hole; {
			n := min(int64(len(buf)), hole-pos)
			if _, err := f.ReadAt(buf[:n], pos); err != nil {
				t.Fatal(err)
			}
			// Zero blocks inside a data segment equal a hole; hash them
			// alike so that the comparison is about content only.
			for i := int64(0); i < n; i += 4096 {
				blk := buf[i:min(i+4096, n)]
				if !allZero(blk) {
					fmt.Fprintf(h, "%d:", pos+i)
					h.Write(blk)
				}
			}
			pos += n
		}
		off = hole
	}
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func keys[V any](m map[string]V) []string { return sortedKeys(m) }

const testDisk = 24 << 20

func TestBadInputOnRealPools(t *testing.T) {
	r := newRealRig(t)
	e := r.e
	disk0 := r.fileURI("d0.img", testDisk)
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: disk0, ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: 8 << 20, Thin: true}); err != nil {
		t.Fatal(err)
	}

	t.Run("pool on a missing path", func(t *testing.T) {
		r.t = t
		before := r.snapshot()
		_, err := e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: "file://" + r.path("no/such/dir/d.img") + "?size=64MiB", ClusterSize: 0, Force: false})
		r.refused(before, err, fault.NotFound, r.path("no/such/dir"))
		_, err = e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: r.path("missing.img"), ClusterSize: 0, Force: false})
		r.refused(before, err, fault.NotFound, r.path("missing.img"))
	})

	t.Run("disk that holds a pool, without force", func(t *testing.T) {
		r.t = t
		disk1 := r.fileURI("d1.img", testDisk)
		if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "old", Disk: disk1, ClusterSize: 0, Force: false}); err != nil {
			t.Fatal(err)
		}
		if err := e.ExportPool(context.Background(), "old"); err != nil {
			t.Fatal(err)
		}
		before := r.snapshot()
		_, err := e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: disk1, ClusterSize: 0, Force: false})
		r.refused(before, err, fault.AlreadyExists, "p1", r.path("d1.img"), "--force")
		// With force it is formatted anew.
		p, err := e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: disk1, ClusterSize: 0, Force: true})
		if err != nil || p.Name != "p1" {
			t.Fatalf("force: %v %+v", err, p)
		}
		if err := e.DestroyPool(context.Background(), "p1", false); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("disk too small", func(t *testing.T) {
		r.t = t
		small := r.path("small.img")
		if err := os.WriteFile(small, make([]byte, 64<<10), 0o600); err != nil {
			t.Fatal(err)
		}
		before := r.snapshot()
		_, err := e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: small, ClusterSize: 0, Force: false})
		r.refused(before, err, fault.InvalidArgument, "p1", small, "too small")
		// A file the create made is removed again.
		_, err = e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: r.fileURI("tiny.img", 64<<10), ClusterSize: 0, Force: false})
		r.refused(before, err, fault.InvalidArgument, "p1", "too small")
	})

	t.Run("import of a corrupted superblock", func(t *testing.T) {
		r.t = t
		disk2 := r.fileURI("d2.img", testDisk)
		if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "bad", Disk: disk2, ClusterSize: 0, Force: false}); err != nil {
			t.Fatal(err)
		}
		if err := e.ExportPool(context.Background(), "bad"); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(r.path("d2.img"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, off := range []int64{64, 4096 + 64} { // a field of each superblock copy
			b := make([]byte, 1)
			f.ReadAt(b, off)
			b[0] ^= 0xff
			f.WriteAt(b, off)
		}
		f.Close()
		before := r.snapshot()
		_, err = e.ImportPool(context.Background(), "", disk2)
		r.refused(before, err, fault.FailedPrecondition, r.path("d2.img"), "corrupt")
		// Neither is a disk without a pool written to.
		blank := r.path("blank.img")
		if err := os.WriteFile(blank, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		before = r.snapshot()
		_, err = e.ImportPool(context.Background(), "", blank)
		r.refused(before, err, fault.FailedPrecondition, blank, "not a pool")
	})

	t.Run("thick replica larger than the free space", func(t *testing.T) {
		r.t = t
		before := r.snapshot()
		_, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "big", Pool: "p0", Size: 1 << 30})
		r.refused(before, err, fault.ResourceExhausted, "big", "p0")
		// Thin over-commitment is allowed up to the pool's limit (250% of
		// its 20MiB), and refused beyond it with the numbers.
		if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "big", Pool: "p0", Size: 32 << 20, Thin: true}); err != nil {
			t.Fatal(err)
		}
		before = r.snapshot()
		_, err = e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "huge", Pool: "p0", Size: 1 << 30, Thin: true})
		r.refused(before, err, fault.ResourceExhausted, "huge", "over-commit limit of 250%", "capacity 20971520", "asked 1073741824")
		if err := e.DestroyReplica(context.Background(), "big", Access{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("duplicate names", func(t *testing.T) {
		r.t = t
		before := r.snapshot()
		_, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: r.fileURI("d3.img", testDisk), ClusterSize: 0, Force: false})
		r.refused(before, err, fault.AlreadyExists, "p0")
		_, err = e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: 4 << 20})
		r.refused(before, err, fault.AlreadyExists, "r0")
		_, err = e.CreatePool(context.Background(), PoolSpec{Name: "p9", Disk: disk0, ClusterSize: 0, Force: true})
		r.refused(before, err, fault.FailedPrecondition, "p0", r.path("d0.img"))
	})

	t.Run("unaligned sizes", func(t *testing.T) {
		r.t = t
		before := r.snapshot()
		_, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r1", Pool: "p0", Size: 5 << 20})
		r.refused(before, err, fault.InvalidArgument, "r1", "4MiB", "8MiB")
		_, err = e.ResizeReplica(context.Background(), "r0", 9<<20, Access{})
		r.refused(before, err, fault.InvalidArgument, "r0", "4MiB")
		_, err = e.ResizeReplica(context.Background(), "r0", 4<<20, Access{})
		r.refused(before, err, fault.InvalidArgument, "r0")
		_, err = e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: r.fileURI("d4.img", testDisk), ClusterSize: 3 << 20, Force: false})
		r.refused(before, err, fault.InvalidArgument, "p1")
	})

	t.Run("bad names and URIs", func(t *testing.T) {
		r.t = t
		before := r.snapshot()
		_, err := e.CreatePool(context.Background(), PoolSpec{Name: "a/b", Disk: r.fileURI("d5.img", testDisk), ClusterSize: 0, Force: false})
		r.refused(before, err, fault.InvalidArgument, "a/b")
		_, err = e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: "nvme://x", ClusterSize: 0, Force: false})
		r.refused(before, err, fault.InvalidArgument, "nvme://x")
		_, err = e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "", Pool: "p0", Size: 4 << 20})
		r.refused(before, err, fault.InvalidArgument, "replica name")
	})
}

func TestRealPoolsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	nbd := newMemExporter()
	start := func() *Engine {
		e, err := New(Config{DataDir: data, Backend: PoolBackend{}, NBD: nbd, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := start()
	disk := fmt.Sprintf("file://%s?size=%d", filepath.Join(dir, "d0.img"), testDisk)
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: disk, ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: 8 << 20, Thin: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r1", Pool: "p0", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	ri, err := e.ShareReplica(context.Background(), "r0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	dev := nbd.exports["r0"]
	buf := []byte(strings.Repeat("nexstor!", 512))
	if _, err := dev.WriteAt(buf, 4096); err != nil {
		t.Fatal(err)
	}
	if err := dev.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	e = start()
	defer e.Close()
	got, err := e.Replica("r0")
	if err != nil {
		t.Fatal(err)
	}
	if got.Share == nil || got.Share.URI != ri.Share.URI || got.UUID != ri.UUID || got.State != ReplicaOnline {
		t.Fatalf("r0 after restart %+v, before %+v", got, ri)
	}
	if r1, err := e.Replica("r1"); err != nil || r1.Thin || r1.Share != nil {
		t.Fatalf("r1 after restart %+v %v", r1, err)
	}
	back := make([]byte, len(buf))
	if _, err := nbd.exports["r0"].ReadAt(back, 4096); err != nil {
		t.Fatal(err)
	}
	if string(back) != string(buf) {
		t.Fatal("data written before the restart is gone")
	}
}

func TestConfiguredPoolsOnRealDisks(t *testing.T) {
	dir := t.TempDir()
	blank := filepath.Join(dir, "blank.img")
	if err := os.WriteFile(blank, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	before := hashSparse(t, blank)
	e, err := New(Config{DataDir: filepath.Join(dir, "data"), Backend: PoolBackend{}, Logger: quietLogger(),
		Pools: []PoolConfig{
			{Name: "ram", Disk: "malloc:///ram0?size=64MiB", ClusterSize: 1 << 20},
			{Name: "blank", Disk: blank},
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ram, err := e.Pool("ram")
	if err != nil || ram.State != PoolOnline || ram.Stats.ClusterSize != 1<<20 {
		t.Fatalf("ram pool %+v %v", ram, err)
	}
	b, err := e.Pool("blank")
	if err != nil || b.State != PoolFaulted || !strings.Contains(b.Reason, blank) {
		t.Fatalf("blank pool %+v %v", b, err)
	}
	if hashSparse(t, blank) != before {
		t.Fatal("a configured disk without a pool was written to")
	}
	_, err = e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r", Pool: "blank", Size: 4 << 20})
	wantFault(t, err, fault.Unavailable, "blank")
	// Creating the pool on the configured disk is how the operator fixes it.
	if p, err := e.CreatePool(context.Background(), PoolSpec{Name: "blank", Disk: "file://" + blank + "?size=1MiB", ClusterSize: 64 << 10, Force: false}); err != nil || p.State != PoolOnline {
		t.Fatalf("create on the configured disk: %+v %v", p, err)
	}
}
