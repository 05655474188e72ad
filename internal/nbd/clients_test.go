package nbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/testutil"
)

// These tests run real NBD clients (libnbd, fio, qemu) against an in-process
// Server.

func TestNBDInfoReportsSize(t *testing.T) {
	const size = 48<<20 + 4096
	dev, err := bdev.NewMalloc(size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, map[string]bdev.Device{"disk0": dev})
	if got := testutil.NBDInfoSize(t, fmt.Sprintf("nbd://%s/disk0", addr)); got != size {
		t.Fatalf("nbdinfo reports %d bytes, want %d", got, size)
	}
}

func TestNBDCopyRoundTrip(t *testing.T) {
	const size = 16 << 20
	dev, err := bdev.NewMalloc(size+1<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, map[string]bdev.Device{"disk0": dev})
	testutil.NBDCopyRoundTrip(t, fmt.Sprintf("nbd://%s/disk0", addr), size)
}

func TestFioVerify(t *testing.T) {
	dev, err := bdev.NewMalloc(32<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, map[string]bdev.Device{"disk0": dev})
	testutil.FioVerify(t, fmt.Sprintf("nbd://%s/disk0", addr), 8<<20)
}

func TestQemuImgCompare(t *testing.T) {
	const size = 8 << 20
	dev, err := bdev.NewMalloc(size, 512)
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, map[string]bdev.Device{"disk0": dev})
	uri := fmt.Sprintf("nbd://%s/disk0", addr)
	src := testutil.NBDCopyRoundTrip(t, uri, size)
	if err := testutil.QemuImgCompare(t, uri, src); err != nil {
		t.Fatalf("export and source should be identical: %v", err)
	}
	// Change one byte of one block in the source; qemu must notice.
	f, err := os.OpenFile(src, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 3<<20+100); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, 3<<20+100); err != nil {
		t.Fatal(err)
	}
	err = testutil.QemuImgCompare(t, uri, src)
	if !errors.Is(err, testutil.ErrImagesDiffer) {
		t.Fatalf("qemu-img compare after changing a block: got %v, want a difference", err)
	}
	t.Log(err)

	// qemu's client writes too: convert the changed source onto the export
	// (zero runs go out as NBD_CMD_WRITE_ZEROES) and the two agree again.
	if _, err := f.WriteAt(make([]byte, 1<<20), 5<<20); err != nil {
		t.Fatal(err)
	}
	qemuImg := testutil.RequireTool(t, "qemu-img")
	if out, err := exec.Command(qemuImg, "convert", "-n", "-f", "raw", "-O", "raw", src, uri).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert onto the export: %v\n%s", err, out)
	}
	if err := testutil.QemuImgCompare(t, uri, src); err != nil {
		t.Fatalf("after qemu-img convert: %v", err)
	}
}

// TestNBDInfoListAndUnixSocket lists the exports with libnbd (NBD_OPT_LIST
// then NBD_OPT_INFO for each) over a unix socket served next to TCP.
func TestNBDInfoListAndUnixSocket(t *testing.T) {
	nbdinfo := testutil.RequireTool(t, "nbdinfo")
	s, _ := startServerS(t, map[string]bdev.Device{
		"a": newMalloc(t, 1<<20, 512),
		"b": newMalloc(t, 3<<20, 4096),
	})
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve on the unix socket: %v", err)
		}
	}()

	out, err := exec.Command(nbdinfo, "--list", "--json", "nbd+unix:///?socket="+sock).Output()
	if err != nil {
		t.Fatalf("nbdinfo --list: %v", err)
	}
	var list struct {
		Exports []struct {
			Name      string `json:"export-name"`
			Size      int64  `json:"export-size"`
			ReadOnly  bool   `json:"is_read_only"`
			MultiConn bool   `json:"can_multi_conn"`
			MinBlock  int    `json:"block_size_minimum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	if len(list.Exports) != 2 {
		t.Fatalf("nbdinfo --list found %d exports, want 2:\n%s", len(list.Exports), out)
	}
	want := map[string][2]int64{"a": {1 << 20, 512}, "b": {3 << 20, 4096}}
	for _, e := range list.Exports {
		w, ok := want[e.Name]
		if !ok || e.Size != w[0] || int64(e.MinBlock) != w[1] || !e.MultiConn || e.ReadOnly {
			t.Errorf("export %+v, want size %d, minimum block %d, multi-conn, writable", e, w[0], w[1])
		}
	}
	if got := testutil.NBDInfoSize(t, "nbd+unix:///b?socket="+sock); got != 3<<20 {
		t.Fatalf("nbdinfo over the unix socket: size %d", got)
	}
}
