package mgmt_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/control"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/hostlist"
	"github.com/nexstor/nexstor/internal/mgmt"
	"github.com/nexstor/nexstor/internal/security"
	"github.com/nexstor/nexstor/internal/security/certgen"
	"github.com/nexstor/nexstor/internal/testutil"
)

// node is one storage node of the in-process system: its gRPC server (node
// service, and on the access point the management service), its node
// server and its membership loop (RunMember).
type node struct {
	cfg    *config.Server
	lis    net.Listener
	srv    *grpc.Server
	ns     *control.NodeServer
	cancel context.CancelFunc
	done   chan error

	mu     sync.Mutex
	states []mgmt.State
}

func (n *node) state() mgmt.State {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.states) == 0 {
		return ""
	}
	return n.states[len(n.states)-1]
}

type system struct {
	t      *testing.T
	certs  string
	admin  *mgmt.Client
	aps    []string
	nodes  []*node
	policy *security.Policy
}

func (s *system) files(role string) security.Files {
	return security.Files{CACert: filepath.Join(s.certs, "ca.crt"), Cert: filepath.Join(s.certs, role+".crt"),
		Key: filepath.Join(s.certs, role+".key")}
}

func (s *system) creds(role string) grpc.DialOption {
	c, err := security.ClientCredentials(s.files(role), false)
	if err != nil {
		s.t.Fatal(err)
	}
	return grpc.WithTransportCredentials(c)
}

func freeListener(t *testing.T) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// startNode starts a node's gRPC server and node server; membership starts
// in the background once the node is formatted.
func (s *system) startNode(n *node, ap *mgmt.AccessPoint) {
	t := s.t
	ns, err := control.NewNodeServer(n.cfg, nil, func(ctx context.Context, p config.Pool, force bool) (string, error) {
		return "pool-uuid-" + p.Name, nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	n.ns = ns
	creds, err := security.ServerCredentials(s.files("server"), false)
	if err != nil {
		t.Fatal(err)
	}
	authz := &security.Authorizer{Policy: s.policy}
	n.srv = grpc.NewServer(append(authz.ServerOptions(), grpc.Creds(creds))...)
	mgmtv1.RegisterNodeServiceServer(n.srv, ns)
	if ap != nil {
		mgmtv1.RegisterMgmtServiceServer(n.srv, ap.Service)
	}
	if n.lis == nil {
		n.lis = freeListener(t)
	}
	lis := n.lis
	go n.srv.Serve(lis)
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	sc, _ := security.ClientCredentials(s.files("server"), false)
	client := mgmt.NewClient(s.aps, sc)
	go func() {
		defer client.Close()
		sb, err := ns.WaitFormatted(ctx)
		if err != nil {
			n.done <- err
			return
		}
		n.done <- mgmt.RunMember(ctx, mgmt.MemberConfig{Client: client, System: n.cfg.Name, UUID: sb.UUID.String(),
			Address: n.cfg.GRPCListen, FaultDomain: n.cfg.FaultDomain, Rank: sb.Rank, Interval: 50 * time.Millisecond,
			OnRank: ns.SetRank,
			OnState: func(st mgmt.State) {
				n.mu.Lock()
				n.states = append(n.states, st)
				n.mu.Unlock()
			}})
	}()
}

// stopNode kills the node's server and its membership loop (as SIGKILL would: no goodbye).
func (n *node) stop() {
	n.cancel()
	<-n.done
	n.srv.Stop()
	n.lis = nil
}

func (s *system) query(ranks string) *mgmtv1.SystemQueryResponse {
	var q *mgmtv1.SystemQueryResponse
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := s.admin.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
		var err error
		q, err = cl.SystemQuery(ctx, &mgmtv1.SystemQueryRequest{Ranks: ranks})
		return err
	})
	if err != nil {
		s.t.Fatalf("system query: %v", err)
	}
	return q
}

// waitFor polls cond until it holds.
func (s *system) waitFor(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func states(q *mgmtv1.SystemQueryResponse) string {
	g := hostlist.RankGroups{}
	for _, m := range q.Members {
		g.Add(m.State, m.Rank)
	}
	var parts []string
	for _, r := range g.Rows() {
		parts = append(parts, r.Ranks+"="+r.Result)
	}
	return strings.Join(parts, " ")
}

// TestSystem is the control plane end to end, in one process, over real
// gRPC with mutual TLS and an embedded etcd secured with the same
// certificates: three nodes in maintenance mode are formatted, join as
// ranks 0-2, one is killed and becomes unresponsive, comes back with the
// same rank, and the system is stopped and started; wrong roles are refused.
func TestSystem(t *testing.T) {
	s := &system{t: t, certs: filepath.Join(t.TempDir(), "certs"),
		policy: mgmt.Policy().Merge(control.NodePolicy())}
	if err := certgen.GenerateAll(s.certs, certgen.Options{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		lis := freeListener(t)
		cfg := config.Default().WithName("sys").WithDataDir(t.TempDir()).WithCertDir(s.certs).
			WithGRPCListen(lis.Addr().String()).WithFaultDomain(fmt.Sprintf("/rack%d", i)).
			WithEtcdPorts(testutil.FreePort(t), testutil.FreePort(t)).
			WithPools(config.Pool{Name: "p0", Disk: fmt.Sprintf("malloc:///n%d?size=64MiB", i)})
		s.nodes = append(s.nodes, &node{cfg: cfg, lis: lis})
	}
	// Node 0 is the only access point.
	s.aps = []string{s.nodes[0].cfg.GRPCListen}
	for _, n := range s.nodes {
		n.cfg.WithAccessPoints(s.aps...)
		if err := n.cfg.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	self := mgmt.SelfAccessPoint(s.nodes[0].cfg)
	if self != s.aps[0] || mgmt.SelfAccessPoint(s.nodes[1].cfg) != "" {
		t.Fatalf("SelfAccessPoint = %q", self)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ap, err := mgmt.StartAccessPoint(ctx, s.nodes[0].cfg, self, nil, func(c *mgmt.Config) {
		c.HeartbeatInterval = 200 * time.Millisecond
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ap.Close()
	for i, n := range s.nodes {
		if i == 0 {
			s.startNode(n, ap)
		} else {
			s.startNode(n, nil)
		}
	}
	defer func() {
		for _, n := range s.nodes {
			if n.lis != nil {
				n.stop()
			}
		}
	}()
	ac, _ := security.ClientCredentials(s.files("admin"), false)
	s.admin = mgmt.NewClient(s.aps, ac)
	defer s.admin.Close()

	// Every node waits in maintenance mode; the admin formats them all.
	var addrs []string
	for _, n := range s.nodes {
		addrs = append(addrs, n.cfg.GRPCListen)
	}
	nodeCall := func(role string, fn func(context.Context, mgmtv1.NodeServiceClient) (string, error)) []hostlist.Result[string] {
		return hostlist.FanOut(ctx, addrs, 0, func(ctx context.Context, addr string) (string, error) {
			conn, err := grpc.NewClient(addr, s.creds(role))
			if err != nil {
				return "", err
			}
			defer conn.Close()
			return fn(ctx, mgmtv1.NewNodeServiceClient(conn))
		})
	}
	for _, r := range nodeCall("admin", func(ctx context.Context, c mgmtv1.NodeServiceClient) (string, error) {
		info, err := c.NodeInfo(ctx, &mgmtv1.NodeInfoRequest{})
		if err != nil {
			return "", err
		}
		return info.Mode, nil
	}) {
		if r.Err != nil || r.Value != control.ModeMaintenance {
			t.Fatalf("%s before format: %q, %v", r.Host, r.Value, r.Err)
		}
	}
	// A csi certificate may not format.
	for _, r := range nodeCall("csi", func(ctx context.Context, c mgmtv1.NodeServiceClient) (string, error) {
		_, err := c.StorageFormat(ctx, &mgmtv1.StorageFormatRequest{})
		return "", err
	}) {
		if status.Code(r.Err) != codes.PermissionDenied {
			t.Fatalf("%s: csi format: %v", r.Host, r.Err)
		}
	}
	for _, r := range nodeCall("admin", func(ctx context.Context, c mgmtv1.NodeServiceClient) (string, error) {
		resp, err := c.StorageFormat(ctx, &mgmtv1.StorageFormatRequest{})
		if err != nil {
			return "", err
		}
		return resp.Pools[0].Uuid, nil
	}) {
		if r.Err != nil || r.Value != "pool-uuid-p0" {
			t.Fatalf("%s format: %q, %v", r.Host, r.Value, r.Err)
		}
	}
	s.waitFor("ranks 0-2 joined", func() bool { return states(s.query("")) == "0-2=joined" })
	q := s.query("")
	rankOf := map[string]uint32{}
	for _, m := range q.Members {
		rankOf[m.Address] = m.Rank
	}
	for _, n := range s.nodes {
		s.waitFor("rank persisted", func() bool {
			sb := n.ns.Superblock()
			return sb != nil && sb.Rank == rankOf[n.cfg.GRPCListen]
		})
	}

	// Formatting a formatted node without --force is refused.
	for _, r := range nodeCall("admin", func(ctx context.Context, c mgmtv1.NodeServiceClient) (string, error) {
		_, err := c.StorageFormat(ctx, &mgmtv1.StorageFormatRequest{})
		return "", err
	}) {
		if status.Code(r.Err) != codes.AlreadyExists {
			t.Fatalf("%s: second format: %v", r.Host, r.Err)
		}
	}

	// Kill node 2: it becomes unresponsive; restarted, it gets its rank back.
	victim := s.nodes[2]
	rank := rankOf[victim.cfg.GRPCListen]
	victim.stop()
	s.waitFor("unresponsive", func() bool {
		q := s.query(fmt.Sprint(rank))
		return len(q.Members) == 1 && q.Members[0].State == "unresponsive"
	})
	victim.lis = freeListener(t) // a new port, as after a restart elsewhere
	victim.cfg.WithGRPCListen(victim.lis.Addr().String())
	s.startNode(victim, nil)
	s.waitFor("rejoined with the same rank", func() bool {
		q := s.query("")
		for _, m := range q.Members {
			if m.Address == victim.cfg.GRPCListen {
				return m.Rank == rank && m.State == "joined"
			}
		}
		return false
	})
	s.waitFor("all joined after the restart", func() bool { return states(s.query("")) == "0-2=joined" })

	// A server certificate may not stop the system; the admin may.
	sc, _ := security.ClientCredentials(s.files("server"), false)
	srvClient := mgmt.NewClient(s.aps, sc)
	defer srvClient.Close()
	err = srvClient.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
		_, err := cl.SystemStop(ctx, &mgmtv1.SystemStopRequest{})
		return err
	})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("server-role stop: %v", err)
	}
	// Stop and start are idempotent; a member that is briefly unresponsive
	// (a loaded machine) is refused and the operator retries.
	all := func(res *mgmtv1.SystemResultsResponse, state string) bool {
		for _, r := range res.Results {
			if r.State != state {
				return false
			}
		}
		return len(res.Results) == 3
	}
	s.waitFor("system stopped", func() bool {
		var res *mgmtv1.SystemResultsResponse
		err := s.admin.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
			var err error
			res, err = cl.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: "0-2"})
			return err
		})
		if err != nil {
			t.Fatalf("stop: %v", err)
		}
		return all(res, "stopped")
	})
	for _, n := range s.nodes {
		s.waitFor("nodes told to stop", func() bool { return n.state() == mgmt.StateStopped })
	}
	hosts := strings.Join(addrs[:2], ",") + "," + victim.cfg.GRPCListen
	s.waitFor("system started", func() bool {
		var res *mgmtv1.SystemResultsResponse
		err := s.admin.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
			var err error
			res, err = cl.SystemStart(ctx, &mgmtv1.SystemStartRequest{Hosts: hosts})
			return err
		})
		if err != nil {
			t.Fatalf("start: %v", err)
		}
		return all(res, "joined")
	})
	for _, n := range s.nodes {
		s.waitFor("nodes told to start", func() bool { return n.state() == mgmt.StateJoined })
	}

	// A node configured for another system is refused.
	other := mgmt.NewClient(s.aps, sc)
	defer other.Close()
	err = mgmt.RunMember(ctx, mgmt.MemberConfig{Client: other, System: "elsewhere", UUID: "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
		Address: "127.0.0.1:9", Rank: mgmt.NoRank})
	if mgmt.FaultCode(err) != mgmt.CodeForeignSystem {
		t.Fatalf("foreign system: %v", err)
	}
}
