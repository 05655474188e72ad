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
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/metrics"
	"github.com/nexstor/nexstor/internal/mgmt"
	"github.com/nexstor/nexstor/internal/units"
)

// DevHeartbeatInterval is how often the members of a dev system send
// heartbeats: twice the mgmt default, as heartbeats (a gRPC call and an
// etcd read each, from every node) are most of what an idle dev system
// costs. Failure detection does not slow down with it: a member is still
// unresponsive after the 5 s heartbeat timeout, checked every second (see
// Options), and a beat may now be up to 3 s late, rather than 4, before
// that happens.
const DevHeartbeatInterval = 2 * time.Second

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
	// MetricsPort is the port of node 0's Prometheus /metrics; node i
	// serves its own on MetricsPort+i (node 0's also has the volume
	// series: its management service replica leads). Zero means
	// DefaultDevMetricsPort, or free ports the system picks when those
	// are taken; negative disables metrics.
	MetricsPort int
	// PoolSize is each node's pool file size ("1GiB" when empty).
	PoolSize string
	// HeartbeatInterval and HeartbeatTimeout as in Options; when both are
	// zero, the interval is DevHeartbeatInterval and the timeout the mgmt
	// default (5s).
	HeartbeatInterval, HeartbeatTimeout time.Duration
	Logger                              *slog.Logger
	// Demo, when set, is the name of a volume RunDev makes sure exists: a
	// thin volume of DemoSize with min(3, Nodes) replicas, created through
	// the management service, published on node 0 over NVMe/TCP. A
	// restart finds it (create is idempotent by name) and publishes it
	// again only when it is not published (a volume the user published
	// over NBD stays so). A volume of that name made with other settings
	// is kept as it is.
	Demo string
	// DemoSize is the demo volume's size in bytes, a multiple of 4096
	// (512MiB when zero).
	DemoSize uint64
	// DemoHostNQN, when set, is the only NVMe host NQN the demo volume
	// admits when RunDev publishes it; empty admits any host.
	DemoHostNQN string
	// Ready, when set, is called once every node is formatted and has
	// joined, and the demo volume is published and settled (online, or
	// still not after devSettleTimeout).
	Ready func(DevSystem)
}

// DevSystem is what RunDev brought up.
type DevSystem struct {
	// Configs are the nodes' configurations, node 0 first.
	Configs []*config.Server
	// Members are the joined members.
	Members []*mgmtv1.Member
	// Demo is the demo volume with its status and target as the
	// management service reported them; nil without DevOptions.Demo.
	Demo *mgmtv1.Volume
	// MetricsURL is node 0's Prometheus endpoint, where the volume series
	// are; "" when disabled.
	MetricsURL string
	// MetricsURLs are every node's Prometheus endpoints, node 0's first;
	// nil when disabled.
	MetricsURLs []string
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
		if o.MetricsPort >= 0 {
			cfg.WithMetricsListen(net.JoinHostPort(host, strconv.Itoa(orInt(o.MetricsPort, DefaultDevMetricsPort)+i)))
		}
		if i == 0 {
			cfg.WithDiscoveryListen(fmt.Sprintf("%s:%d", host, discPort))
		}
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("dev node %d: %w", i, err)
		}
		out = append(out, cfg)
	}
	return out, nil
}

// nodeOptions are the Options of every node's Run but its Logger and
// Handle.
func (o DevOptions) nodeOptions() Options {
	opts := Options{HeartbeatInterval: o.HeartbeatInterval, HeartbeatTimeout: o.HeartbeatTimeout}
	if opts.HeartbeatInterval == 0 && opts.HeartbeatTimeout == 0 {
		opts.HeartbeatInterval = DevHeartbeatInterval
	}
	return opts
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
		o.MetricsPort = devMetricsPort(orString(o.Host, "127.0.0.1"), DefaultDevMetricsPort, o.Nodes)
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
			opts := o.nodeOptions()
			opts.Logger, opts.Handle = log.With("node", i), handles[i]
			errs[i] = Run(nodeCtx, cfg, opts)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("dev node %d: %w", i, errs[i])
			}
			cancel() // one node failing stops the system
		}()
	}
	// Every node's nexuses close while every node, node 0's management
	// service included, still runs: a nexus of a volume saves its health
	// record through the management service as it closes.
	stop := func() {
		quiesceAll(handles, log)
		stopNodes()
		wg.Wait()
	}
	members, err := devBringUp(ctx, cfgs)
	sys := DevSystem{Configs: cfgs, Members: members}
	for _, c := range cfgs {
		if c.MetricsListen != "" {
			sys.MetricsURLs = append(sys.MetricsURLs, "http://"+c.MetricsListen+metrics.Path)
		}
	}
	if len(sys.MetricsURLs) > 0 {
		sys.MetricsURL = sys.MetricsURLs[0]
	}
	if err == nil && o.Demo != "" {
		sys.Demo, err = devVolume(ctx, cfgs, o, log)
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

// devMetricsPort returns port when port..port+n-1 are free on host, else
// the first of n consecutive free ports the system picks: a dev system is
// for trying out, and another program on the metrics ports must not keep
// it from starting. (The ports are released before the nodes bind them
// again; losing that race fails the start, which is what a taken port did
// anyway.)
func devMetricsPort(host string, port, n int) int {
	free := func(base int) bool {
		var ls []net.Listener
		defer func() {
			for _, l := range ls {
				l.Close()
			}
		}()
		for i := range n {
			l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(base+i)))
			if err != nil {
				return false
			}
			ls = append(ls, l)
		}
		return true
	}
	if free(port) {
		return port
	}
	for range 20 {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			break
		}
		base := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if base+n-1 <= 65535 && free(base) {
			return base
		}
	}
	return port // let the nodes report why they cannot listen
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

// Bounds of the demo volume's bring-up: creating and publishing it (a
// few engine calls per node), then waiting for it to be online (after a
// restart, node 0 restores its nexus from the health record once the
// management service answers).
const (
	devVolumeTimeout = 2 * time.Minute
	devSettleTimeout = time.Minute
)

// devVolume makes sure the demo volume exists and is published, then waits
// until it is online (or devSettleTimeout passes: it is returned as it is,
// never reported better) and returns it.
func devVolume(ctx context.Context, cfgs []*config.Server, o DevOptions, log *slog.Logger) (*mgmtv1.Volume, error) {
	client := mgmt.NewClient(cfgs[0].AccessPointAddrs(), insecure.NewCredentials())
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, devVolumeTimeout)
	defer cancel()
	size := o.DemoSize
	if size == 0 {
		size = 512 << 20
	}
	spec := &mgmtv1.VolumeSpec{Name: o.Demo, Size: size, Replicas: uint32(min(3, len(cfgs))), Thin: true, Protocol: "nvmf"}
	var v *mgmtv1.Volume
	for {
		err := client.DoVolume(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
			var err error
			v, err = cl.CreateVolume(ctx, &mgmtv1.CreateVolumeRequest{Spec: spec})
			if status.Code(err) != codes.AlreadyExists {
				return err
			}
			// Made by an earlier start with other flags (--nodes,
			// --demo-size): it is the user's data; keep it.
			differs := status.Convert(err).Message()
			if v, err = cl.GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: o.Demo}); err == nil {
				log.Warn("the demo volume exists with other settings: kept as it is", "volume", o.Demo, "existing", differs)
			}
			return err
		})
		if err == nil {
			break
		}
		// A demo volume deleted while one of its nodes was down is
		// removed once the nodes are back; create it again then.
		if code := fault.CodeOf(err); code != mgmt.CodeVolumeState || ctx.Err() != nil {
			err = fmt.Errorf("dev: the demo volume %q (%s, %d replicas, thin): %w", o.Demo, units.FormatSizeExact(int64(size)), spec.Replicas, err)
			if code == mgmt.CodeVolumeNotPlaceable {
				err = fmt.Errorf(`%w: give --demo-size a smaller size or --pool-size a larger one (or --demo "" for no demo volume)`, err)
			}
			return nil, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	if v.GetStatus().GetTarget() == nil {
		req := &mgmtv1.PublishVolumeRequest{Name: o.Demo, Node: cfgs[0].NodeName, Protocol: "nvmf"}
		if o.DemoHostNQN != "" {
			req.HostNqns = []string{o.DemoHostNQN}
		}
		err := client.DoVolume(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
			var err error
			v, err = cl.PublishVolume(ctx, req)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("dev: publish the demo volume %q on %s: %w", o.Demo, cfgs[0].NodeName, err)
		}
	}
	settle, cancelSettle := context.WithTimeout(ctx, devSettleTimeout)
	defer cancelSettle()
	for v.GetStatus().GetPhase() != mgmt.PhaseOnline {
		select {
		case <-settle.Done():
			if ctx.Err() != nil {
				return nil, fmt.Errorf("dev: the demo volume %q: %w", o.Demo, ctx.Err())
			}
			log.Warn("the demo volume is not online", "volume", o.Demo, "phase", v.GetStatus().GetPhase(),
				"reason", v.GetStatus().GetReason())
			return v, nil
		case <-time.After(200 * time.Millisecond):
		}
		err := client.DoVolume(settle, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
			got, err := cl.GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: o.Demo})
			if err == nil {
				v = got
			}
			return err
		})
		if err != nil && settle.Err() == nil {
			return nil, fmt.Errorf("dev: the demo volume %q: %w", o.Demo, err)
		}
	}
	return v, nil
}
