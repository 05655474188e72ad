package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/metrics"
	"github.com/nexstor/nexstor/internal/mgmt"
)

// DevOptions configure RunDev.
type DevOptions struct {
	// Nodes is the number of storage nodes (at least 1); node 0 is the only
	// access point.
	Nodes int
	// DataDir holds one directory per node (node0, node1, ...) with its
	// state and a sparse pool file.
	DataDir string
	// Host is the loopback address every listener binds (127.0.0.1 when
	// empty).
	Host string
	// GRPCPort, NVMfPort and NBDPort are the ports of node 0; node i uses
	// port+i. Zero means the defaults (10124, 4420, 10809); EtcdPort (2379)
	// and EtcdPort+1 serve node 0's embedded etcd; DiscoveryPort (8009) is
	// node 0's NVMe/TCP discovery service (the other nodes run none).
	GRPCPort, NVMfPort, NBDPort, EtcdPort, DiscoveryPort int
	// MetricsPort is the port of node 0's Prometheus /metrics (the other
	// nodes serve none: one process, one set of process metrics). Zero
	// means DefaultDevMetricsPort, or a free port when that one is taken;
	// negative disables metrics.
	MetricsPort int
	// PoolSize is each node's pool file size ("1GiB" when empty).
	PoolSize string
	// HeartbeatInterval and HeartbeatTimeout as in Options.
	HeartbeatInterval, HeartbeatTimeout time.Duration
	Logger                              *slog.Logger
	// Demo, when set, makes sure node 0 has a thin replica of that name
	// (DemoSize) in its pool, shared over NBD and over NVMe/TCP to any host;
	// a restart finds it and its shares again.
	Demo string
	// DemoSize is the demo replica's size in bytes (512MiB when zero).
	DemoSize uint64
	// Ready, when set, is called once every node is formatted and has
	// joined (and the demo replica is shared).
	Ready func(DevSystem)
}

// DevSystem is what RunDev brought up.
type DevSystem struct {
	// Configs are the nodes' configurations, node 0 first.
	Configs []*config.Server
	// Members are the joined members.
	Members []*mgmtv1.Member
	// Demo is node 0's demo replica with its shares; nil without
	// DevOptions.Demo.
	Demo *enginev1.Replica
	// MetricsURL is node 0's Prometheus endpoint; "" when disabled.
	MetricsURL string
	// Nexuses are the nexuses of every node as they came up (restored from
	// an earlier run), node 0's first.
	Nexuses []DevNexus
}

// DevNexus is one node's nexus.
type DevNexus struct {
	Node  int
	Nexus *enginev1.Nexus
}

// DefaultDevMetricsPort is the port of node 0's metrics in nexstor dev: the
// well-known metrics port, on loopback.
const DefaultDevMetricsPort = 9502

func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// devPool is the name of each dev node's pool.
const devPool = "p0"

// DevConfigs returns the configurations of the nodes RunDev runs: system
// "dev", without TLS, node 0 the access point with an embedded etcd; node i
// is named "node-<i>" (node_name), whatever rank it gets.
func DevConfigs(o DevOptions) ([]*config.Server, error) {
	if o.Nodes < 1 {
		return nil, fmt.Errorf("dev: %d nodes: run at least 1", o.Nodes)
	}
	host := o.Host
	if host == "" {
		host = "127.0.0.1"
	}
	grpcPort, nvmfPort := orInt(o.GRPCPort, config.DefaultPort), orInt(o.NVMfPort, 4420)
	nbdPort, etcdPort := orInt(o.NBDPort, 10809), orInt(o.EtcdPort, config.DefaultEtcdClientPort)
	discPort := orInt(o.DiscoveryPort, 8009)
	size := o.PoolSize
	if size == "" {
		size = "1GiB"
	}
	ap := fmt.Sprintf("%s:%d", host, grpcPort)
	var out []*config.Server
	for i := 0; i < o.Nodes; i++ {
		dir, err := filepath.Abs(filepath.Join(o.DataDir, fmt.Sprintf("node%d", i)))
		if err != nil {
			return nil, fmt.Errorf("dev: data dir: %w", err)
		}
		cfg := config.Default().WithName("dev").WithNodeName(fmt.Sprintf("node-%d", i)).WithDataDir(filepath.Join(dir, "data")).WithRuntimeDir(filepath.Join(dir, "run")).
			WithInsecure(true).WithGRPCListen(fmt.Sprintf("%s:%d", host, grpcPort+i)).WithAccessPoints(ap).
			WithEtcdPorts(etcdPort, etcdPort+1).WithNVMfListen(fmt.Sprintf("%s:%d", host, nvmfPort+i)).WithDiscoveryListen("").
			WithNBDListen(fmt.Sprintf("%s:%d", host, nbdPort+i)).WithPools(config.Pool{Name: devPool,
			Disk: fmt.Sprintf("file://%s?size=%s", filepath.Join(dir, "pool.img"), size)})
		cfg.MetricsListen = ""
		if i == 0 {
			cfg.WithDiscoveryListen(fmt.Sprintf("%s:%d", host, discPort))
			if o.MetricsPort >= 0 {
				cfg.WithMetricsListen(net.JoinHostPort(host, strconv.Itoa(orInt(o.MetricsPort, DefaultDevMetricsPort))))
			}
		}
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("dev node %d: %w", i, err)
		}
		out = append(out, cfg)
	}
	return out, nil
}

// RunDev runs a whole system in this process for trying Nexstor out: Nodes
// servers on loopback without TLS (logged), formats those that are not
// formatted yet, waits for all to join, calls Ready, and serves until ctx
// ends. A later RunDev on the same DataDir restarts the same system with
// the same ranks.
func RunDev(ctx context.Context, o DevOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.MetricsPort == 0 {
		o.MetricsPort = devMetricsPort(orString(o.Host, "127.0.0.1"), DefaultDevMetricsPort)
	}
	cfgs, err := DevConfigs(o)
	if err != nil {
		return err
	}
	// ctx ends when the caller stops the system or a node fails; the nodes
	// run until stopNodes, so that every node's nexuses can be closed
	// while every node still serves its replicas (see stop).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nodeCtx, stopNodes := context.WithCancel(context.WithoutCancel(ctx))
	defer stopNodes()
	errs := make([]error, len(cfgs))
	handles := make([]*Handle, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		handles[i] = &Handle{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = Run(nodeCtx, cfg, Options{HeartbeatInterval: o.HeartbeatInterval, HeartbeatTimeout: o.HeartbeatTimeout,
				Logger: log.With("node", i), Handle: handles[i]})
			if errs[i] != nil {
				errs[i] = fmt.Errorf("dev node %d: %w", i, errs[i])
			}
			cancel() // one node failing stops the system
		}()
	}
	stop := func() {
		quiesceAll(handles, log)
		stopNodes()
		wg.Wait()
	}
	members, err := devBringUp(ctx, cfgs)
	sys := DevSystem{Configs: cfgs, Members: members}
	if m := cfgs[0].MetricsListen; m != "" {
		sys.MetricsURL = "http://" + m + metrics.Path
	}
	if err == nil && o.Demo != "" {
		sys.Demo, err = devDemo(ctx, cfgs[0].GRPCListen, o)
	}
	if err == nil {
		sys.Nexuses, err = devNexuses(ctx, cfgs)
	}
	if err != nil && ctx.Err() == nil {
		cancel()
		stop()
		return errors.Join(append(errs, err)...)
	}
	if err == nil && o.Ready != nil {
		o.Ready(sys)
	}
	<-ctx.Done()
	stop()
	return errors.Join(errs...)
}

// quiesceAll closes the nexuses of every node, all nodes at once, before any
// node stops: a nexus closing after a node of its children stopped would
// fail its closing flush and record those children as out of date.
func quiesceAll(handles []*Handle, log *slog.Logger) {
	var wg sync.WaitGroup
	for i, h := range handles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.Quiesce(); err != nil {
				log.Warn("closing the nexuses before the stop", "node", i, "err", err)
			}
		}()
	}
	wg.Wait()
}

// devNexuses lists the nexuses of every node, for the banner: after a
// restart it shows whether each came back whole.
func devNexuses(ctx context.Context, cfgs []*config.Server) ([]DevNexus, error) {
	var out []DevNexus
	for i, cfg := range cfgs {
		cc, err := grpc.NewClient(cfg.GRPCListen, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := enginev1.NewNexusServiceClient(cc).ListNexuses(cctx, &enginev1.ListNexusesRequest{})
		cancel()
		cc.Close()
		if err != nil {
			return nil, fmt.Errorf("dev: list the nexuses of node %d: %w", i, err)
		}
		for _, n := range resp.GetNexuses() {
			out = append(out, DevNexus{Node: i, Nexus: n})
		}
	}
	return out, nil
}

func orString(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// devMetricsPort returns port when it is free on host, else a free port
// the system picks: a dev system is for trying out, and another program on
// the metrics port must not keep it from starting. (The port is released
// before the node binds it again; losing that race fails the start, which
// is what a taken port did anyway.)
func devMetricsPort(host string, port int) int {
	for _, p := range []int{port, 0} {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			continue
		}
		got := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		return got
	}
	return port // let the node report why it cannot listen
}

// devBringUp formats the unformatted nodes and waits until every node is
// a joined member.
func devBringUp(ctx context.Context, cfgs []*config.Server) ([]*mgmtv1.Member, error) {
	creds := insecure.NewCredentials()
	retry := func(what string, f func(ctx context.Context) (bool, error)) error {
		for {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			done, err := f(cctx)
			cancel()
			if err == nil && done {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("dev: %s: %w (last error: %v)", what, ctx.Err(), err)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	for i, cfg := range cfgs {
		cc, err := grpc.NewClient(cfg.GRPCListen, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, err
		}
		node := mgmtv1.NewNodeServiceClient(cc)
		err = retry(fmt.Sprintf("format node %d", i), func(ctx context.Context) (bool, error) {
			info, err := node.NodeInfo(ctx, &mgmtv1.NodeInfoRequest{})
			if err != nil {
				return false, err
			}
			if !info.Formatted {
				if _, err := node.StorageFormat(ctx, &mgmtv1.StorageFormatRequest{}); err != nil {
					return false, err
				}
			}
			return true, nil
		})
		cc.Close()
		if err != nil {
			return nil, err
		}
	}
	client := mgmt.NewClient(cfgs[0].AccessPointAddrs(), creds)
	defer client.Close()
	var members []*mgmtv1.Member
	err := retry("wait for every node to join", func(ctx context.Context) (bool, error) {
		err := client.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
			resp, err := cl.SystemQuery(ctx, &mgmtv1.SystemQueryRequest{})
			if err != nil {
				return err
			}
			members = members[:0]
			for _, m := range resp.Members {
				if m.State == string(mgmt.StateJoined) {
					members = append(members, m)
				}
			}
			return nil
		})
		return len(members) == len(cfgs), err
	})
	return members, err
}

// devDemo makes sure node 0 has the demo replica in its first pool, shared
// over NBD and NVMe/TCP (any host), through node 0's engine API.
func devDemo(ctx context.Context, addr string, o DevOptions) (*enginev1.Replica, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rc := enginev1.NewReplicaServiceClient(cc)
	_, err = rc.GetReplica(ctx, &enginev1.GetReplicaRequest{Name: o.Demo})
	if status.Code(err) == codes.NotFound {
		size := o.DemoSize
		if size == 0 {
			size = 512 << 20
		}
		_, err = rc.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: o.Demo, Pool: devPool, Size: size, Thin: true})
	}
	if err != nil {
		return nil, fmt.Errorf("dev: demo replica %q: %w", o.Demo, err)
	}
	var r *enginev1.Replica
	for _, proto := range []string{"nbd", "nvmf"} {
		resp, err := rc.ShareReplica(ctx, &enginev1.ShareReplicaRequest{Name: o.Demo, Protocol: proto})
		if err != nil {
			return nil, fmt.Errorf("dev: share the demo replica over %s: %w", proto, err)
		}
		r = resp
	}
	return r, nil
}
