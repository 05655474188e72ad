package nbd

import (
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

// snapshot returns the connections the server's watchdog knows of.
func (w *inlineWatch) snapshot() []*conn {
	w.mu.Lock()
	defer w.mu.Unlock()
	var cs []*conn
	for c := range w.conns {
		cs = append(cs, c)
	}
	return cs
}

// At queue depth 1 every request runs on the goroutine that read it, which
// keeps the read role: no request wakes another goroutine, so the
// connection never needs a second one.
func TestInlineKeepsReadRole(t *testing.T) {
	const bs = 4096
	s, addr := startServerS(t, map[string]bdev.Device{"disk0": newMalloc(t, 4<<20, 512)})
	tc := dialClient(t, addr)
	tc.open("disk0", true)
	for i := range 500 {
		off := uint64(bs * (i % 64))
		tc.send(cmdWrite, 0, uint64(i), off, bs, pattern(bs, byte(i)))
		if r := tc.readReply(); r.errno != 0 || r.handle != uint64(i) {
			t.Fatalf("write %d: handle %d errno %d", i, r.handle, r.errno)
		}
		tc.send(cmdRead, 0, uint64(i), off, bs, nil)
		r := tc.readReply()
		if r.errno != 0 || r.handle != uint64(i) {
			t.Fatalf("read %d: handle %d errno %d", i, r.handle, r.errno)
		}
		mustEqual(t, "read back", r.data, pattern(bs, byte(i)))
	}
	cs := s.watch.snapshot()
	if len(cs) != 1 {
		t.Fatalf("the watchdog knows %d connections, want 1", len(cs))
	}
	// The watchdog takes over a request that runs for a tick (1 ms), which
	// a loaded machine may cause now and then; the reader itself never
	// hands the read role on. Once the watchdog has stopped, no takeover
	// is under way.
	waitWatchdogStopped(t, s)
	c := cs[0]
	taken, handoffs := c.inl.taken.Load(), c.inl.handoffs.Load()
	if handoffs != taken {
		t.Errorf("the read role was passed on %d times, %d of them by the watchdog: at queue depth 1 the reader must keep it", handoffs, taken)
	}
	if taken > 50 {
		t.Errorf("the watchdog took over %d of 1000 requests at queue depth 1, each shorter than a tick on an idle device", taken)
	}
}

func waitWatchdogStopped(t *testing.T, s *Server) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.watch.running.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the watchdog still runs 10 s after the last inline request")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An inline request stuck in the device has its read role taken over by
// the watchdog: requests sent behind it are read and answered before it.
// The watchdog then stops once no request has run inline for a while.
func TestInlineStuckHandsOff(t *testing.T) {
	const bs = 4096
	g := &gate{Device: newMalloc(t, 4<<20, 512), off: 0, entered: make(chan struct{}, 1), release: make(chan struct{})}
	s, addr := startServerS(t, map[string]bdev.Device{"disk0": g})
	tc := dialClient(t, addr)
	tc.open("disk0", false)
	tc.send(cmdWrite, 0, 7, bs, bs, pattern(bs, 7))
	if r := tc.readReply(); r.errno != 0 || r.handle != 7 {
		t.Fatalf("write: handle %d errno %d", r.handle, r.errno)
	}

	tc.send(cmdRead, 0, 1, 0, bs, nil)
	<-g.entered
	// The stuck read is inline, holding the read role: the next request
	// is only read once the watchdog takes the role over.
	tc.send(cmdRead, 0, 2, bs, bs, nil)
	r := tc.readReply()
	if r.handle != 2 || r.errno != 0 {
		t.Fatalf("got handle %d errno %d first, want the read behind the stuck one (2)", r.handle, r.errno)
	}
	mustEqual(t, "read behind the stuck one", r.data, pattern(bs, 7))
	close(g.release)
	if r := tc.readReply(); r.handle != 1 || r.errno != 0 {
		t.Fatalf("released read: handle %d errno %d", r.handle, r.errno)
	}
	c := s.watch.snapshot()[0]
	if n := c.inl.taken.Load(); n < 1 {
		t.Errorf("the watchdog took over %d read roles, want at least the stuck read's", n)
	}
	// The connection goes on, on whichever goroutine reads now.
	tc.send(cmdRead, 0, 3, bs, bs, nil)
	if r := tc.readReply(); r.handle != 3 || r.errno != 0 {
		t.Fatalf("read after: handle %d errno %d", r.handle, r.errno)
	}

	waitWatchdogStopped(t, s)
}
