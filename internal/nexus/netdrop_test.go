package nexus

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/nvmf/target"
	"github.com/nexstor/nexstor/internal/testutil/netproxy"
)

// waitRetired waits until the nexus reports child uri retired (offline).
func waitRetired(t *testing.T, nx *Nexus, w *workload, uri string) ChildStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, c := range nx.Children() {
			if c.URI == uri && c.State == StateOffline {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %s not retired: %+v", uri, nx.Children())
		}
		select {
		case err := <-w.errs:
			t.Fatalf("workload: %v", err)
		default:
		}
		time.Sleep(time.Millisecond)
	}
}

// waitGaveUp waits until the retired remote child uri fails I/O because its
// controller gave up reconnecting, rather than because it is still trying.
func waitGaveUp(t *testing.T, nx *Nexus, uri string) {
	t.Helper()
	nx.stateMu.Lock()
	_, c := nx.findLocked(uri)
	nx.stateMu.Unlock()
	if c == nil || c.st() != StateOffline {
		t.Fatalf("child %s is not retired: %+v", uri, nx.Children())
	}
	buf := make([]byte, 512)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.dev.ReadAt(buf, 0)
		if errors.Is(err, initiator.ErrGaveUp) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the controller of %s is still reconnecting: %v", uri, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNetworkFault cuts the network between a 3-child nexus (one local
// child, two remote over NVMe/TCP) and one remote child under a verified
// read/write workload, once by resetting every connection (drop) and once
// by silently delivering nothing (blackhole, noticed only by the
// initiator's command timeout). The client must see no error, the child
// must be retired with the store saying so, every acknowledged write must
// read back from every healthy child, and once the network heals the child
// must be rebuilt into a nexus whose children are identical.
func TestNetworkFault(t *testing.T) {
	cases := []struct {
		name string
		cut  func(p *netproxy.Proxy)
		// heal ends the fault. A partition is healed only after its
		// connections were reset: bytes held across it would otherwise
		// reach the target late, and writes the nexus already gave up on
		// could land on the child while it is being rebuilt (nothing
		// fences a retired child's old controller at the target).
		heal func(p *netproxy.Proxy)
		// cause is in the error that retired the child, when it is
		// certain: a partition is noticed only by a timeout.
		cause string
	}{
		{"drop", (*netproxy.Proxy).Drop, (*netproxy.Proxy).Restore, ""},
		{"blackhole", (*netproxy.Proxy).Blackhole, func(p *netproxy.Proxy) { p.Drop(); p.Restore() }, "timed out"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			const size = 4 << 20
			node := newRemoteNode(t, size, "r1", "r2")
			local, _ := bdev.NewMalloc(size, 512)
			uris := []string{"bdev:///l0"}
			proxies := map[string]*netproxy.Proxy{}
			backing := map[string]bdev.Device{"bdev:///l0": local}
			for _, name := range []string{"r1", "r2"} {
				p, err := netproxy.Listen(node.addr)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { p.Close() })
				u := "nvmf://" + p.Addr() + "/" + target.NQN("replica", name)
				uris = append(uris, u)
				proxies[u] = p
				backing[u] = node.devs[name]
			}
			store := NewMemStore()
			opener := &Router{
				Local: func(_ context.Context, id string) (bdev.Device, error) {
					return &handle{Device: local}, nil
				},
				// A short command timeout and few reconnects retire a
				// cut-off child within about a second.
				Remote: NVMfRemote(initiator.Options{
					CommandTimeout: time.Second, ReconnectDelay: 50 * time.Millisecond,
					MaxReconnect: 2, KeepAlive: -1,
				}),
			}
			nx, err := New(context.Background(), Config{UUID: "netfault", Children: uris, Store: store,
				Opener: opener, RebuildSegment: 256 << 10, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			defer nx.Close()
			waitInSync(t, nx)
			victim := uris[1]

			m := newModel(size)
			w := startWorkload(t, nx, m, 4, true)
			waitAcked(t, w, 200)
			tc.cut(proxies[victim])
			st := waitRetired(t, nx, w, victim)
			waitAcked(t, w, 200)
			if st.Reason != ReasonIOError || !strings.Contains(st.LastError, tc.cause) {
				t.Fatalf("victim %+v, want offline io-error (%s)", st, tc.cause)
			}
			for _, c := range nx.Children() {
				if c.URI != victim && c.State != StateOnline {
					t.Fatalf("a healthy child was retired: %+v", nx.Children())
				}
			}
			rec, err := store.Load(context.Background(), "netfault")
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range rec.Children {
				if h.URI == victim && (h.State != StateOffline || h.Reason != ReasonIOError) {
					t.Fatalf("store says %+v, want offline io-error", h)
				}
			}

			// Every acknowledged write is on every healthy child.
			w.finish(t)
			for _, u := range uris {
				if u == victim {
					continue
				}
				if err := m.checkDevice(backing[u]); err != nil {
					t.Fatalf("healthy child %s: %v", u, err)
				}
			}

			// Closing a controller while it still reconnects races with
			// its giving up (a double close in the initiator): re-add the
			// child only once its old controller has given up.
			waitGaveUp(t, nx, victim)

			// The network heals: the child is rebuilt under load.
			tc.heal(proxies[victim])
			w = startWorkload(t, nx, m, 4, true)
			if err := nx.AddChild(context.Background(), victim); err != nil {
				t.Fatalf("re-adding %s: %v", victim, err)
			}
			rb := waitRebuild(t, nx, victim)
			w.finish(t)
			if rb.State != RebuildCompleted {
				t.Fatalf("rebuild %+v", rb)
			}
			verifyClean(t, nx, 3)
			if err := m.checkDevice(nx); err != nil {
				t.Fatalf("through the nexus: %v", err)
			}
			for u, d := range backing {
				if err := m.checkDevice(d); err != nil {
					t.Fatalf("child %s: %v", u, err)
				}
			}
		})
	}
}
