package mgmt

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/security"
	"github.com/nexstor/nexstor/internal/testutil"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// startEtcd starts a single-member embedded etcd and returns its in-process
// client.
func startEtcd(t testing.TB) *clientv3.Client {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // a freed port may be taken again in between
		cp, pp := testutil.FreePort(t), testutil.FreePort(t)
		peer := fmt.Sprintf("http://127.0.0.1:%d", pp)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		e, err := StartEmbedded(ctx, EmbeddedConfig{
			Name: "m0", Dir: filepath.Join(t.TempDir(), "etcd"),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", cp), PeerURL: peer,
			InitialCluster: map[string]string{"m0": peer}, Token: "test", LogLevel: "fatal",
		})
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		t.Cleanup(e.Close)
		// The client a single access point uses (StartAccessPoint).
		cli := e.Client()
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	t.Fatalf("start embedded etcd: %v", lastErr)
	return nil
}

type testService struct {
	*Service
	addr string
}

// newService starts a Service on cli with a gRPC server on loopback.
func newService(t testing.TB, cli *clientv3.Client, system string, clock *fakeClock) *testService {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	// Tests drive the checker with a fake clock, so that a slow machine
	// (where real heartbeats may lag) cannot make members unresponsive
	// behind their back. A long lease keeps leadership on a loaded machine;
	// Close revokes it, so failover stays quick.
	if clock == nil {
		clock = newFakeClock()
	}
	cfg := Config{System: system, Address: addr, Etcd: cli, SessionTTL: 10,
		HeartbeatInterval: 100 * time.Millisecond, HeartbeatTimeout: 5 * time.Second,
		Now: clock.Now, CheckInterval: -1}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := &security.Authorizer{Policy: Policy(), Insecure: true}
	srv := grpc.NewServer(a.ServerOptions()...)
	mgmtv1.RegisterMgmtServiceServer(srv, svc)
	go srv.Serve(lis)
	svc.Start()
	t.Cleanup(func() {
		srv.Stop()
		svc.Close()
	})
	return &testService{svc, addr}
}

// waitLeader waits until one of svcs leads and returns it.
func waitLeader(t testing.TB, svcs ...*testService) *testService {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		var chans []<-chan struct{}
		for _, s := range svcs {
			if s.IsLeader() {
				return s
			}
			chans = append(chans, s.LeaderChanged())
		}
		select {
		case <-deadline:
			t.Fatal("no leader elected")
		case <-chans[0]:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func joinReq(system string, id uuid.UUID, addr string) *mgmtv1.JoinRequest {
	return &mgmtv1.JoinRequest{System: system, Uuid: id.String(), Address: addr, Rank: NoRank}
}
