package csi

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/testutil"
)

func TestParseMountInfo(t *testing.T) {
	text := `22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
95 22 259:7 / /var/lib/kubelet/plugins/csi/staging\040dir rw,noatime shared:50 - xfs /dev/nvme1n1 rw,attr2
96 95 259:7 / /var/lib/kubelet/pods/x/volumes/target ro,relatime shared:50 - xfs /dev/nvme1n1 rw,attr2
`
	es, err := parseMountInfo([]byte(text))
	if err != nil || len(es) != 3 {
		t.Fatalf("%v %v", es, err)
	}
	if e := es[1]; e.MountPoint != "/var/lib/kubelet/plugins/csi/staging dir" || e.FsType != "xfs" || e.Source != "/dev/nvme1n1" || e.MajorMinor != "259:7" {
		t.Fatalf("entry %+v", e)
	}
	if !es[2].readOnly() || es[1].readOnly() {
		t.Fatal("read-only flags")
	}
	if _, err := parseMountInfo([]byte("1 2 3\n")); err == nil {
		t.Fatal("a malformed line was taken")
	}
}

func TestMountFlags(t *testing.T) {
	flags, data := mountFlags([]string{"noatime,nodev", "discard", "ro", "defaults"})
	if flags != unix.MS_NOATIME|unix.MS_NODEV|unix.MS_RDONLY || data != "discard" {
		t.Fatalf("%#x %q", flags, data)
	}
}

// TestProbeFS: the file systems the driver makes are recognised, a
// zeroed device is blank, and other known contents are never blank.
func TestProbeFS(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	img := func(name string, write func(f *os.File)) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(8 << 20); err != nil {
			t.Fatal(err)
		}
		if write != nil {
			write(f)
		}
		f.Close()
		return p
	}
	if got, err := probeFS(ctx, img("zero", nil)); err != nil || got != "" {
		t.Fatalf("zeroes: %q %v", got, err)
	}
	xfs := img("xfs", func(f *os.File) { f.WriteAt([]byte("XFSB"), 0) })
	if got, _ := probeFS(ctx, xfs); got != "xfs" {
		t.Fatalf("xfs magic: %q", got)
	}
	gpt := img("gpt", func(f *os.File) { f.WriteAt([]byte("EFI PART"), 512) })
	if got, _ := probeFS(ctx, gpt); got != "gpt" {
		t.Fatalf("gpt: %q", got)
	}
	testutil.RequireTool(t, "mke2fs")
	ext := img("ext4", nil)
	if err := mkfs(ctx, "ext4", ext); err != nil {
		t.Fatal(err)
	}
	if got, _ := probeFS(ctx, ext); got != "ext4" {
		t.Fatalf("mke2fs output: %q", got)
	}
	if _, err := tool("mkfs.xfs"); err != nil {
		t.Logf("no mkfs.xfs here (xfsprogs): xfs not checked")
		return
	}
	xfsImg := img("xfs-real", func(f *os.File) { f.Truncate(320 << 20) })
	if err := mkfs(ctx, "xfs", xfsImg); err != nil {
		t.Fatal(err)
	}
	if got, _ := probeFS(ctx, xfsImg); got != "xfs" {
		t.Fatalf("mkfs.xfs output: %q", got)
	}
	// mkfs.xfs is not forced: it refuses to write over a file system.
	if err := mkfs(ctx, "xfs", ext); err == nil {
		t.Fatal("mkfs.xfs over an ext4 file system succeeded")
	}
}

func TestStateStore(t *testing.T) {
	s := stateStore{dir: filepath.Join(t.TempDir(), "state")}
	if r, err := s.load(testVol); r != nil || err != nil {
		t.Fatalf("empty store: %v %v", r, err)
	}
	r := &record{VolumeID: testVol, Target: Target{VolumeID: testVol, URI: "nvmf://h:1/" + testNQN, NQN: testNQN}, StagingPath: "/s",
		Staged: true, Targets: []publishRecord{{Path: "/t1"}, {Path: "/t2", ReadOnly: true}}}
	if err := s.save(r); err != nil {
		t.Fatal(err)
	}
	got, err := s.load(testVol)
	if err != nil || got.Target.URI != r.Target.URI || !got.Staged || got.target("/t2") == nil || !got.target("/t2").ReadOnly {
		t.Fatalf("%+v %v", got, err)
	}
	got.removeTarget("/t1")
	if got.target("/t1") != nil || len(got.Targets) != 1 {
		t.Fatal("removeTarget")
	}
	if err := s.remove(testVol); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.load(testVol); r != nil {
		t.Fatal("removed record still loads")
	}
	// Not a volume ID: never a path outside the store.
	if r, err := s.load("../../etc/passwd"); r != nil || err != nil {
		t.Fatal("a path was taken for a volume ID")
	}
}
