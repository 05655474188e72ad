package target

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// growable is a device whose reported size a test sets, over a larger
// malloc: a replica or nexus that grew.
type growable struct {
	bdev.Device
	size atomic.Int64
}

func (g *growable) Size() int64 { return g.size.Load() }

// TestResizeNamespaceAnnouncesIt grows the device behind a namespace and
// resizes the namespace: a connected Go initiator receives the Namespace
// Attribute Changed event with the namespace in the Changed Namespace List,
// Identify reports the new NSZE, NCAP and NUSE, and I/O past the old end
// works. Shrinking is refused.
func TestResizeNamespaceAnnouncesIt(t *testing.T) {
	mem, err := bdev.NewMalloc(16<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	dev := &growable{Device: mem}
	dev.size.Store(4 << 20)
	_, sub, addr := serveDevice(t, dev)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	events := make(chan initiator.Event, 8)
	c, ns := connectGo(ctx, t, addr, initiator.Options{IOQueues: 1, MaxReconnect: 1,
		OnEvent: func(ev initiator.Event) { events <- ev }})
	if ns.Size() != 4<<20 {
		t.Fatalf("size %d before", ns.Size())
	}
	data := bytes.Repeat([]byte{0x5A}, 8192)
	if _, err := ns.WriteAt(data, 6<<20); !errors.As(err, new(*bdev.RangeError)) {
		t.Fatalf("write past the end before the resize: %v", err)
	}

	dev.size.Store(12 << 20)
	if got, err := sub.ResizeNamespace(1); err != nil || got != 12<<20 {
		t.Fatalf("resize: %d %v", got, err)
	}
	select {
	case ev := <-events:
		if !ev.NamespaceChanged() || ev.LogPage != nvme.LogChangedNS || !slices.Equal(ev.Changed, []uint32{1}) {
			t.Fatalf("event %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no asynchronous event after the resize")
	}
	// The same size again announces nothing: the next event, for another
	// namespace, lists only that one.
	if got, err := sub.ResizeNamespace(1); err != nil || got != 12<<20 {
		t.Fatalf("resize to the same size: %d %v", got, err)
	}
	other, err := bdev.NewMalloc(1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if nsid, err := sub.AddNamespace(other, NamespaceOptions{UUID: [16]byte{0xBB}}); err != nil || nsid != 2 {
		t.Fatalf("add namespace: %d %v", nsid, err)
	}
	select {
	case ev := <-events:
		if !ev.NamespaceChanged() || !slices.Equal(ev.Changed, []uint32{2}) {
			t.Fatalf("event %+v, want namespace 2 alone", ev)
		}
	case <-ctx.Done():
		t.Fatal("no asynchronous event for the new namespace")
	}
	if err := ns.Revalidate(ctx); err != nil || ns.Size() != 12<<20 {
		t.Fatalf("revalidated size %d, %v", ns.Size(), err)
	}
	if fresh, err := c.Namespace(1); err != nil || fresh.Size() != 12<<20 {
		t.Fatalf("identify after the resize: %v", err)
	}
	if _, err := ns.WriteAt(data, 6<<20); err != nil {
		t.Fatalf("write past the old end: %v", err)
	}
	got := make([]byte, len(data))
	if _, err := ns.ReadAt(got, 6<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read past the old end: %v", err)
	}

	// A host that reads Identify itself sees NSZE, NCAP and NUSE.
	r := dialRaw(t, addr, false)
	r.adminUp(0)
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminIdentify)
	sqe.SetNSID(1)
	sqe.SetCDW(10, nvme.CNSNamespace)
	id := make([]byte, nvme.IdentifyDataLength)
	if cqe := r.cmd(&sqe, nil, id); cqe.Status != 0 {
		t.Fatalf("identify: %#x", cqe.Status)
	}
	for name, off := range map[string]int{"NSZE": nvme.IDNsNSZE, "NCAP": nvme.IDNsNCAP, "NUSE": nvme.IDNsNUSE} {
		if v := binary.LittleEndian.Uint64(id[off:]); v != 12<<20/4096 {
			t.Errorf("%s %d, want %d", name, v, 12<<20/4096)
		}
	}

	dev.size.Store(8 << 20)
	if _, err := sub.ResizeNamespace(1); !errors.Is(err, ErrShrink) {
		t.Fatalf("shrink: %v", err)
	}
	if _, err := sub.ResizeNamespace(7); !errors.Is(err, ErrNSNotFound) {
		t.Fatalf("unknown namespace: %v", err)
	}
	if err := ns.Revalidate(ctx); err != nil || ns.Size() != 12<<20 {
		t.Fatalf("after a refused shrink: size %d, %v", ns.Size(), err)
	}
}
