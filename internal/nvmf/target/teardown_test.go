package target

import (
	"bufio"
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// TestQueuedCommandsDroppedAtTeardown: when a controller is torn down
// (here by removing its subsystem), commands queued for its workers but not
// started never reach the device. Only those already executing finish.
func TestQueuedCommandsDroppedAtTeardown(t *testing.T) {
	mem, err := bdev.NewMalloc(8<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	slow := faulty.New(mem, 1)
	started := slow.AddRule(faulty.Rule{Ops: faulty.OpWrite, Latency: 500 * time.Millisecond})
	tgt, _, addr := serveDevice(t, slow)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const depth = 128 // more than the 63 workers of a queue of 128 entries
	_, ns := connectGo(ctx, t, addr, initiator.Options{IOQueues: 1, QueueDepth: depth,
		CommandTimeout: 10 * time.Second, MaxReconnect: 1, ReconnectDelay: time.Millisecond})
	var wg sync.WaitGroup
	for i := range depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns.WriteAt(make([]byte, 4096), int64(i)*4096)
		}()
	}
	// Wait until the workers are all busy on the device, then tear down.
	deadline := time.Now().Add(30 * time.Second)
	for slow.Fired(started) < 63 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := tgt.RemoveSubsystem(subNQN); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	time.Sleep(time.Second) // time for any queued command to (wrongly) start
	if n := slow.Fired(started); n > 64 {
		t.Fatalf("%d writes reached the device; only the 63 executing at teardown (and one in the reader) may", n)
	}
}

// TestBuffersReturnedAtTeardown: a connection that ends while a command's
// write data is still arriving, in its capsule or in H2CData PDUs after an
// R2T, returns that command's buffer (a 1 MiB one, from iobuf's huge-page
// regions, which the garbage collector would never reclaim) once the
// queue's goroutines are gone, and no slot keeps one.
func TestBuffersReturnedAtTeardown(t *testing.T) {
	tgt, _, addr := serveSize(t, 8<<20)
	admin := dialRaw(t, addr, false)
	cntlid := admin.adminUp(0)
	const n = 1 << 20
	write := func(cid uint16, inCapsule bool) *pdu.SQE {
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.CmdWrite)
		sqe.SetNSID(1)
		sqe.SetCDW(12, n/4096-1)
		sqe.SetCID(cid)
		sqe.SetFlags(pdu.PSDTSGL)
		if inCapsule {
			sqe.SetSGL(pdu.SGL{Type: pdu.SGLDataBlockOffset, Length: n})
		} else {
			sqe.SetSGL(pdu.SGL{Type: pdu.SGLTransportDataBlock, Length: n})
		}
		return &sqe
	}
	// half encodes a PDU and sends only its first half.
	half := func(r *raw, enc func(e *pdu.Encoder) error) {
		var b bytes.Buffer
		bw := bufio.NewWriter(&b)
		r.must(enc(pdu.NewEncoder(bw)))
		r.must(bw.Flush())
		if _, err := r.conn.Write(b.Bytes()[:b.Len()/2]); err != nil {
			t.Fatal(err)
		}
	}
	data := make([]byte, n)

	// qid 1: the capsule's own data is cut short.
	capsule := dialRaw(t, addr, false)
	if c := capsule.connect(1, cntlid, 0, hostNQN); c.Status != 0 {
		t.Fatalf("I/O connect: %#x", c.Status)
	}
	half(capsule, func(e *pdu.Encoder) error { return e.WriteCapsuleCmd(write(100, true), data) })

	// qid 2: the H2CData after the R2T is cut short.
	h2c := dialRaw(t, addr, false)
	if c := h2c.connect(2, cntlid, 0, hostNQN); c.Status != 0 {
		t.Fatalf("I/O connect: %#x", c.Status)
	}
	h2c.must(h2c.enc.WriteCapsuleCmd(write(200, false), nil))
	h2c.flush()
	h, err := h2c.dec.Next()
	if err != nil || h.Type != pdu.TypeR2T {
		t.Fatalf("waiting for the R2T: %v %v", h.Type, err)
	}
	r2t := h2c.dec.R2T()
	if r2t.CCCID != 200 || r2t.R2TL != n {
		t.Fatalf("R2T %+v", r2t)
	}
	half(h2c, func(e *pdu.Encoder) error {
		return e.WriteH2CData(pdu.DataHeader{CCCID: 200, TTag: r2t.TTag}, pdu.FlagLast, data)
	})

	// Both commands now hold their buffers, in the reader waiting for the
	// rest. Find the two queues, then end their connections.
	byQID := map[uint16]*queue{}
	deadline := time.Now().Add(10 * time.Second)
	for len(byQID) < 2 && time.Now().Before(deadline) {
		tgt.mu.Lock()
		for q := range tgt.queues {
			if q.ctrl != nil && q.qid != 0 {
				byQID[q.qid] = q
			}
		}
		tgt.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	if len(byQID) != 2 {
		t.Fatalf("found the I/O queues %v, want 1 and 2", byQID)
	}
	time.Sleep(50 * time.Millisecond) // the reader is inside the data by now
	capsule.conn.Close()
	h2c.conn.Close()
	for qid, q := range byQID {
		select {
		case <-q.swept:
		case <-time.After(10 * time.Second):
			t.Fatalf("qid %d: the buffers of its requests were not returned", qid)
		}
		if q.nswept != 1 {
			t.Errorf("qid %d: %d buffers returned at teardown, want the cut-off write's 1", qid, q.nswept)
		}
		for _, r := range q.slots {
			if r != nil && r.pooled != nil {
				t.Errorf("qid %d: slot %d still holds a buffer", qid, r.slot)
			}
		}
	}
}

// connectGo connects the Go initiator to the test subsystem at addr and
// returns the controller, closed when the test ends, and its namespace 1.
func connectGo(ctx context.Context, t *testing.T, addr string, opts initiator.Options) (*initiator.Controller, *initiator.Namespace) {
	t.Helper()
	c, err := initiator.Connect(ctx, addr, subNQN, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	return c, ns
}
