package target

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
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
	c, err := initiator.Connect(ctx, addr, subNQN, initiator.Options{IOQueues: 1, QueueDepth: depth,
		CommandTimeout: 10 * time.Second, MaxReconnect: 1, ReconnectDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
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
