package nbd

import (
	"sync/atomic"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
)

// grownDevice reports the size a test sets, over a larger device.
type grownDevice struct {
	bdev.Device
	size atomic.Int64
}

func (d *grownDevice) Size() int64 { return d.size.Load() }

// TestGrownExportSeenByNewClients: after the device behind an export
// grows, a client that connects sees the new size and may use all of it; a
// client connected before keeps the size it was told.
func TestGrownExportSeenByNewClients(t *testing.T) {
	mem, err := bdev.NewMalloc(8<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	dev := &grownDevice{Device: mem}
	dev.size.Store(1 << 20)
	addr := startServer(t, map[string]bdev.Device{"vol": dev})
	before := dialClient(t, addr)
	before.open("vol", false)
	if before.size != 1<<20 {
		t.Fatalf("size %d before", before.size)
	}
	dev.size.Store(4 << 20)
	after := dialClient(t, addr)
	after.open("vol", true)
	if after.size != 4<<20 {
		t.Fatalf("a client connecting after the growth is told %d bytes, want %d", after.size, 4<<20)
	}
	data := pattern(4096, 9)
	after.mustWrite(3<<20, data, 0)
	mustEqual(t, "read past the old end", after.mustRead(3<<20, 4096), data)
	if r := before.do(cmdRead, 0, 3<<20, 4096, nil); r.errno != errInval {
		t.Fatalf("a client connected before read past the size it was told: errno %d", r.errno)
	}
	mustEqual(t, "the earlier client within its size", before.mustRead(0, 4096), make([]byte, 4096))
}
