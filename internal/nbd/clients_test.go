package nbd

import (
	"errors"
	"fmt"
	"os"
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
}
