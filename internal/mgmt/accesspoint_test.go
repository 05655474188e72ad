package mgmt_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/mgmt"
	"github.com/nexstor/nexstor/internal/security"
	"github.com/nexstor/nexstor/internal/testutil"
)

// commonPort returns a port free on every given loopback address.
func commonPort(t *testing.T, hosts []string) int {
	t.Helper()
	for attempt := 0; attempt < 50; attempt++ {
		l, err := net.Listen("tcp", net.JoinHostPort(hosts[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		ok := true
		var others []net.Listener
		for _, h := range hosts[1:] {
			o, err := net.Listen("tcp", net.JoinHostPort(h, fmt.Sprint(port)))
			if err != nil {
				ok = false
				break
			}
			others = append(others, o)
		}
		l.Close()
		for _, o := range others {
			o.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no common free port")
	return 0
}

// TestThreeAccessPoints starts three access points from their
// configurations, as three servers would: their embedded etcd members form
// one cluster, one replica leads, a client follows it, and when the leader's
// server goes away the other two carry on with the ranks intact.
func TestThreeAccessPoints(t *testing.T) {
	hosts := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	if l, err := net.Listen("tcp", "127.0.0.2:0"); err != nil {
		testutil.Missing(t, "the 127.0.0.2 loopback address ("+err.Error()+")")
	} else {
		l.Close()
	}
	grpcPort, clientPort, peerPort := commonPort(t, hosts), commonPort(t, hosts), commonPort(t, hosts)
	var aps []string
	for _, h := range hosts {
		aps = append(aps, net.JoinHostPort(h, fmt.Sprint(grpcPort)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	type server struct {
		ap  *mgmt.AccessPoint
		srv *grpc.Server
	}
	servers := make([]*server, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, h := range hosts {
		cfg := config.Default().WithName("three").WithDataDir(t.TempDir()).WithInsecure(true).
			WithGRPCListen(aps[i]).WithAccessPoints(aps...).WithEtcdPorts(clientPort, peerPort)
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		self := mgmt.SelfAccessPoint(cfg)
		if self != aps[i] {
			t.Fatalf("%s: SelfAccessPoint = %q", h, self)
		}
		wg.Add(1)
		go func(i int) { // each member waits for a quorum: start them together
			defer wg.Done()
			ap, err := mgmt.StartAccessPoint(ctx, cfg, self, nil, func(c *mgmt.Config) { c.SessionTTL = 10 })
			if err != nil {
				errs[i] = err
				return
			}
			lis, err := net.Listen("tcp", self)
			if err != nil {
				ap.Close()
				errs[i] = err
				return
			}
			authz := &security.Authorizer{Policy: mgmt.Policy(), Insecure: true}
			srv := grpc.NewServer(authz.ServerOptions()...)
			mgmtv1.RegisterMgmtServiceServer(srv, ap.Service)
			go srv.Serve(lis)
			servers[i] = &server{ap, srv}
		}(i)
	}
	wg.Wait()
	stop := func(s *server) {
		if s != nil && s.srv != nil {
			s.srv.Stop()
			s.ap.Close()
			s.srv = nil
		}
	}
	defer func() {
		for _, s := range servers {
			stop(s)
		}
	}()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("access point %d: %v", i, err)
		}
	}
	// Each replica talks to its own member only: the member that answers
	// its client is the one serving this access point's client URL.
	for i, s := range servers {
		want := "http://" + net.JoinHostPort(hosts[i], fmt.Sprint(clientPort))
		ml, err := s.ap.Client.MemberList(ctx)
		if err != nil {
			t.Fatalf("access point %d: etcd member list: %v", i, err)
		}
		// Several reads, as a client of several endpoints spreads them.
		for range 5 {
			resp, err := s.ap.Client.Get(ctx, "probe")
			if err != nil {
				t.Fatalf("access point %d: etcd read: %v", i, err)
			}
			var urls []string
			for _, m := range ml.Members {
				if m.ID == resp.Header.MemberId {
					urls = m.ClientURLs
				}
			}
			if len(urls) != 1 || urls[0] != want {
				t.Fatalf("access point %d: its etcd read was served by the member with client URLs %v, want [%s]", i, urls, want)
			}
		}
	}

	c := mgmt.NewClient(aps, insecure.NewCredentials())
	defer c.Close()
	join := func(id uuid.UUID, addr string) uint32 {
		t.Helper()
		var rank uint32
		err := c.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
			resp, err := cl.Join(ctx, &mgmtv1.JoinRequest{System: "three", Uuid: id.String(), Address: addr, Rank: mgmt.NoRank})
			if err == nil {
				rank = resp.Rank
			}
			return err
		})
		if err != nil {
			t.Fatalf("join: %v", err)
		}
		return rank
	}
	ids := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	for i, id := range ids {
		if r := join(id, fmt.Sprintf("10.1.0.%d:10124", i)); r != uint32(i) {
			t.Fatalf("rank %d, want %d", r, i)
		}
	}
	leader := c.Leader()
	var lq *mgmtv1.LeaderQueryResponse
	if err := c.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
		var err error
		lq, err = cl.LeaderQuery(ctx, &mgmtv1.LeaderQueryRequest{})
		return err
	}); err != nil || lq.Leader != leader || len(lq.Replicas) != 3 {
		t.Fatalf("leader query: %+v, %v (client saw %s)", lq, err, leader)
	}

	// The leader's server goes away with its etcd member.
	for i, a := range aps {
		if a == leader {
			stop(servers[i])
		}
	}
	if r := join(ids[2], "10.1.0.2:10124"); r != 2 {
		t.Fatalf("rank after failover %d, want 2", r)
	}
	if c.Leader() == leader {
		t.Fatalf("client still at the old leader %s", leader)
	}
	if r := join(uuid.New(), "10.1.0.9:10124"); r != 3 {
		t.Fatalf("new rank after failover %d, want 3", r)
	}
}
