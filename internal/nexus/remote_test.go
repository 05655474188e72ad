package nexus

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/nvmf/target"
)

// remoteNode is an NVMe/TCP target serving malloc replicas on loopback, in
// the test process; kill drops the listener and every connection, as the
// death of the server process would.
type remoteNode struct {
	tgt  *target.Target
	addr string
	stop context.CancelFunc
	done chan error
	devs map[string]*bdev.Malloc
}

func newRemoteNode(t *testing.T, size int64, names ...string) *remoteNode {
	t.Helper()
	n := &remoteNode{tgt: target.New(nil), devs: map[string]*bdev.Malloc{}}
	for _, name := range names {
		d, err := bdev.NewMalloc(size, 512)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := n.tgt.AddSubsystem(target.NQN("replica", name), target.SubsystemOptions{AllowAnyHost: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sub.AddNamespace(d, target.NamespaceOptions{}); err != nil {
			t.Fatal(err)
		}
		n.devs[name] = d
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	n.stop, n.done = cancel, make(chan error, 1)
	go func() { n.done <- n.tgt.Serve(ctx, l) }()
	t.Cleanup(n.kill)
	return n
}

func (n *remoteNode) uri(name string) string {
	return "nvmf://" + n.addr + "/" + target.NQN("replica", name)
}

func (n *remoteNode) kill() {
	if n.stop == nil {
		return
	}
	n.stop()
	<-n.done
	n.tgt.Close()
	n.stop = nil
}

// mixedRouter opens bdev:///<name> from local and nvmf:// through the initiator.
func mixedRouter(local map[string]bdev.Device) *Router {
	return &Router{
		Local: func(_ context.Context, id string) (bdev.Device, error) {
			return &handle{Device: local[id]}, nil
		},
		Remote: NVMfRemote(initiator.Options{
			CommandTimeout: 2 * time.Second, ReconnectDelay: 50 * time.Millisecond,
			MaxReconnect: 2, KeepAlive: -1,
		}),
	}
}

func TestRemoteConformance(t *testing.T) {
	const size = 2 << 20
	node := newRemoteNode(t, size, "r1", "r2")
	local, _ := bdev.NewMalloc(size, 512)
	cases := map[string][]string{
		"remote-1":       {node.uri("r1")},
		"local+remote":   {"bdev:///l0", node.uri("r1")},
		"local+2-remote": {"bdev:///l0", node.uri("r1"), node.uri("r2")},
	}
	for name, children := range cases {
		t.Run(name, func(t *testing.T) {
			nx, err := New(context.Background(), Config{UUID: name, Children: children, Store: NewMemStore(),
				Opener: mixedRouter(map[string]bdev.Device{"l0": local}), RebuildSegment: 256 << 10,
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			if err := bdevtest.TestDevice(nx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The server of two remote children dies mid-workload: the client sees no
// error (the local child carries on), both remote children are retired
// (offline, with their write-intent bitmaps) and persisted, and a new remote child is rebuilt from the local one.
func TestRemoteServerDies(t *testing.T) {
	const size = 4 << 20
	doomed := newRemoteNode(t, size, "r1", "r2")
	spare := newRemoteNode(t, size, "r3")
	local, _ := bdev.NewMalloc(size, 512)
	store := NewMemStore()
	nx, err := New(context.Background(), Config{UUID: "remote", Children: []string{"bdev:///l0", doomed.uri("r1"), doomed.uri("r2")},
		Store: store, Opener: mixedRouter(map[string]bdev.Device{"l0": local}), RebuildSegment: 256 << 10,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer nx.Close()
	waitInSync(t, nx)
	m := newModel(size)
	w := startWorkload(t, nx, m, 4, true)
	waitAcked(t, w, 200)
	doomed.kill()
	// Writes stall for up to the command timeout, then go on without the
	// dead children.
	waitAcked(t, w, 200)
	for _, c := range nx.Children()[1:] {
		if c.State != StateOffline || c.Reason != ReasonIOError {
			t.Fatalf("children %+v", nx.Children())
		}
	}
	rec, _ := store.Load(context.Background(), "remote")
	if rec.Children[1].State != StateOffline || rec.Children[2].State != StateOffline {
		t.Fatalf("stored %+v", rec)
	}
	if err := nx.AddChild(context.Background(), spare.uri("r3")); err != nil {
		t.Fatal(err)
	}
	st := waitRebuild(t, nx, spare.uri("r3"))
	w.finish(t)
	if st.State != RebuildCompleted {
		t.Fatalf("rebuild %+v", st)
	}
	verifyClean(t, nx, 2)
	if err := m.checkDevice(nx); err != nil {
		t.Fatal(err)
	}
	if err := m.checkDevice(spare.devs["r3"]); err != nil {
		t.Fatalf("rebuilt remote replica: %v", err)
	}
}

// TestRemoteFanOutDoesNotAllocate: a write to three remote children is sent
// to all three from the submitting goroutine (bdev.WriteStarter) and waited
// for, with nothing allocated per write: not in the nexus, the initiator or
// the target (all in this process, all counted).
func TestRemoteFanOutDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	const size = 2 << 20
	node := newRemoteNode(t, size, "r1", "r2", "r3")
	nx, err := New(context.Background(), Config{UUID: "alloc", Children: []string{node.uri("r1"), node.uri("r2"), node.uri("r3")},
		Store: NewMemStore(), Opener: mixedRouter(nil), RebuildSegment: 256 << 10, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer nx.Close()
	waitInSync(t, nx)
	buf := make([]byte, 4096)
	for i := range 500 {
		if _, err := nx.WriteAt(buf, int64(i%64)*4096); err != nil {
			t.Fatal(err)
		}
	}
	// A child after the first measured slow sends writes down the path
	// that starts them (fanOut), not the one that issues them in turn
	// (fanOutInline),
	for _, c := range nx.children[1:] {
		if c.quick() {
			t.Fatalf("remote child %s measured quick (%d ns): writes would be issued in turn, not started", c.uri, c.cost.Load())
		}
	}
	// and every child, the first too, is started by the submitter.
	if v := nx.view.Load(); v.startMask != 0b111 || len(v.starters) != 3 {
		t.Fatalf("start mask %#b with %d starters, want all three children started", v.startMask, len(v.starters))
	}
	// A stray allocation now and then (a GC emptying a pool) is tolerated,
	// one per write is not.
	if n := testing.AllocsPerRun(500, func() {
		if _, err := nx.WriteAt(buf, 8192); err != nil {
			t.Fatal(err)
		}
	}); n > 0.5 {
		t.Fatalf("%.2f allocations per 3-way remote write, want none", n)
	}
}
