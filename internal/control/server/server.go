// Package server is the runtime of one `nexstor server` with its control
// plane: it serves the node service from the start (maintenance mode until
// the node is formatted), runs the management service when the node is one
// of the access points, starts the engine once the node is formatted, and
// joins the system and heartbeats. Every gRPC service shares one listener
// (grpc_listen) with mutual TLS and per-method authorization by role;
// running without TLS is an explicit, logged choice.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/control"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/control/storage"
	"github.com/nexstor/nexstor/internal/engine"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/fsutil"
	"github.com/nexstor/nexstor/internal/metrics"
	"github.com/nexstor/nexstor/internal/mgmt"
	"github.com/nexstor/nexstor/internal/mgmt/healthstore"
	"github.com/nexstor/nexstor/internal/security"
)

// ShutdownGrace bounds how long in-flight gRPC calls may run at shutdown.
const ShutdownGrace = 10 * time.Second

// Options are the runtime settings that are not part of the configuration
// file.
type Options struct {
	// HeartbeatInterval and HeartbeatTimeout tune the management service
	// when this node is an access point (members follow the interval the
	// leader announces); zero keeps the mgmt defaults. A member is marked
	// unresponsive once HeartbeatTimeout passes without a heartbeat; the
	// leader looks for such members at the interval, or every second when
	// the interval is longer.
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	// Scanner scans the node's disks; nil scans the real /sys.
	Scanner *storage.Scanner
	Logger  *slog.Logger
	// Handle, when set, is connected to the running node, so that the
	// caller can quiesce it before ending ctx (see Handle.Quiesce).
	Handle *Handle
}

// tuneHeartbeats applies the heartbeat settings to an access point's
// management service. The leader checks for silent members at the
// heartbeat interval, but at least every mgmt.DefaultHeartbeatInterval: a
// longer interval makes heartbeats cheaper without making a failed member
// take longer than HeartbeatTimeout plus a second to be marked
// unresponsive.
func (opts Options) tuneHeartbeats(c *mgmt.Config) {
	if opts.HeartbeatInterval > 0 {
		c.HeartbeatInterval = opts.HeartbeatInterval
		c.CheckInterval = min(opts.HeartbeatInterval, mgmt.DefaultHeartbeatInterval)
	}
	if opts.HeartbeatTimeout > 0 {
		c.HeartbeatTimeout = opts.HeartbeatTimeout
	}
}

// Handle reaches a node that Run serves. Methods are safe for concurrent
// use, and do nothing before Run has started or after it returned.
type Handle struct {
	mu sync.Mutex
	r  *runtime
}

func (h *Handle) set(r *runtime) {
	if h != nil {
		h.mu.Lock()
		h.r = r
		h.mu.Unlock()
	}
}

// Quiesce closes the node's nexuses (flushing their children and recording
// a clean shutdown) while its replicas stay served: the first half of
// stopping several nodes together, done on every node before any stops.
func (h *Handle) Quiesce() error {
	h.mu.Lock()
	r := h.r
	h.mu.Unlock()
	if r == nil {
		return nil
	}
	return r.quiesce()
}

// quiesce closes the running engine's nexuses (see Handle.Quiesce).
func (r *runtime) quiesce() error {
	r.mu.Lock()
	dp := r.dp
	r.mu.Unlock()
	if dp == nil {
		return nil
	}
	return dp.Quiesce()
}

// HostNQN returns the node's NVMe host NQN (control.HostNQN of its
// superblock UUID), "" while the node is not formatted.
func (h *Handle) HostNQN() string {
	h.mu.Lock()
	r := h.r
	h.mu.Unlock()
	if r == nil {
		return ""
	}
	return r.HostNQN()
}

// Run serves the node described by cfg until ctx ends, then shuts down
// cleanly (gRPC calls finish within ShutdownGrace, shares are withdrawn,
// pools exported, the etcd member stopped). Prometheus metrics are served
// on cfg.MetricsListen unless it is empty, with the volume series while the
// node's management service replica leads. It returns an error when the
// configuration is invalid, a listener (metrics included) cannot be bound, the certificates
// cannot be loaded, or the system refuses the node for good (a node
// formatted for another system).
func Run(ctx context.Context, cfg *config.Server, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	// One server per data dir: a second one would format, import and serve
	// the same pools. Checked before anything is written.
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("data_dir %s: %w", cfg.DataDir, err)
	}
	lock, err := fsutil.LockFile(filepath.Join(cfg.DataDir, LockFileName))
	if err != nil {
		return dataDirInUse(cfg.DataDir, err)
	}
	defer lock.Unlock()
	effective, err := cfg.WriteEffective(cfg.RuntimeDir)
	if err != nil {
		return err
	}
	log.Info("effective configuration written", "path", effective)

	tc := cfg.TransportConfig
	files := security.Files{CACert: tc.CACert, Cert: tc.Cert, Key: tc.Key}
	if tc.AllowInsecure {
		security.LogInsecure(log, "nexstor server")
	}
	serverCreds, err := security.ServerCredentials(files, tc.AllowInsecure)
	if err != nil {
		return err
	}
	clientCreds, err := security.ClientCredentials(files, tc.AllowInsecure)
	if err != nil {
		return err
	}

	// The client of the management service connects on its first call;
	// the engine's system health store and membership share it.
	client := mgmt.NewClient(cfg.AccessPointAddrs(), clientCreds, security.ExplainInterceptors(tc.AllowInsecure)...)
	defer client.Close()
	r := &runtime{cfg: cfg, opts: opts, log: log, systemHealth: healthstore.New(client), accessPoint: mgmt.SelfAccessPoint(cfg) != ""}
	defer r.stopEngine("the server is shutting down")
	opts.Handle.set(r)
	defer opts.Handle.set(nil)
	// Metrics listen before anything else does, so that a busy port is a
	// startup error; they are served from maintenance mode on (the engine
	// part once it runs) and stop before the engine does (defers run last
	// registered first).
	if cfg.MetricsListen != "" {
		reg := metrics.NewRegistry(r.metricsEngine)
		reg.MustRegister(metrics.NewVolumeCollector(r.metricsVolumes))
		ms, err := metrics.Listen(cfg.MetricsListen, reg, log)
		if err != nil {
			return err
		}
		defer ms.Close()
	}
	node, err := control.NewNodeServer(cfg, opts.Scanner, r.createPool, log)
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", cfg.GRPCListen)
	if err != nil {
		return fmt.Errorf("grpc_listen %s: %w", cfg.GRPCListen, err)
	}
	authz := &security.Authorizer{Policy: Policy(), Insecure: tc.AllowInsecure, Log: log}
	// Errors of handlers and of the authorizer become exact statuses with
	// the fault's code, message and resolution (faultgrpc, first in the chain).
	srvOpts := append(faultgrpc.ServerOptions(), authz.ServerOptions()...)
	srv := grpc.NewServer(append(srvOpts, grpc.Creds(serverCreds))...)
	mgmtv1.RegisterNodeServiceServer(srv, node)
	mgmtLazy := newLazy("the management service is not running on this node yet (its etcd member is starting)")
	// A placeholder implementation: Set installs the running one.
	mgmtLazy.Register(srv, func(s grpc.ServiceRegistrar) {
		mgmtv1.RegisterMgmtServiceServer(s, new(mgmt.Service))
		mgmtv1.RegisterVolumeServiceServer(s, mgmtv1.UnimplementedVolumeServiceServer{})
	})
	r.engineLazy = newLazy("the node is in maintenance mode: format it with `nexctl storage format`")
	r.engineLazy.Register(srv, func(s grpc.ServiceRegistrar) { engine.Register(s, nil) })
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	log.Info("control gRPC serving", "grpc", lis.Addr().String(), "tls", !tc.AllowInsecure)
	defer func() {
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(ShutdownGrace):
			srv.Stop()
			<-done
		}
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	fatal := make(chan error, 2)

	if self := mgmt.SelfAccessPoint(cfg); self != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ap, err := mgmt.StartAccessPoint(ctx, cfg, self, log, func(c *mgmt.Config) {
				// The leader drives the members' engines for volumes with
				// this server's own certificate (role server).
				c.EngineCredentials = clientCreds
				opts.tuneHeartbeats(c)
			})
			if err != nil {
				if ctx.Err() == nil {
					fatal <- fmt.Errorf("access point %s: %w", self, err)
				}
				return
			}
			mgmtLazy.Set(func(s grpc.ServiceRegistrar) { registerManagement(s, ap.Service) })
			r.setMgmt(ap.Service)
			log.Info("management service replica started", "access_point", self)
			<-ctx.Done()
			// This node's volume nexuses save their clean records through
			// the management service: close them while it still runs.
			if err := r.quiesce(); err != nil {
				log.Warn("closing nexuses before the management service stops", "err", err)
			}
			r.setMgmt(nil)
			ap.Close()
		}()
	}

	wg.Add(1)
	go func() {
		defer wg.Done()
		sb, err := node.WaitFormatted(ctx)
		if err != nil {
			return
		}
		r.setHostNQN(sb.HostNQN())
		r.systemHealth.SetNode(sb.UUID.String())
		if err := r.startEngine(cfg.Pools); err != nil {
			fatal <- err
			return
		}
		log.Info("node formatted: serving", "uuid", sb.UUID, "system", sb.System, "host_nqn", sb.HostNQN())
		err = mgmt.RunMember(ctx, mgmt.MemberConfig{
			Client: client, System: cfg.Name, UUID: sb.UUID.String(), Address: advertiseAddr(cfg),
			FaultDomain: cfg.FaultDomain, Labels: cfg.Labels, Rank: sb.Rank, OnRank: node.SetRank,
			Name: cfg.NodeName, HostNQN: sb.HostNQN(), Pools: r.poolReport,
			OnState: r.onState, EngineError: r.engineError,
			Interval: opts.HeartbeatInterval, Log: log,
		})
		if err != nil && ctx.Err() == nil {
			fatal <- fmt.Errorf("the system refused this node: %w", err)
		}
	}()

	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return nil
	case err := <-serveErr:
		return fmt.Errorf("grpc: %w", err)
	case err := <-fatal:
		log.Error("shutting down", "err", err)
		return err
	}
}

// LockFileName is the lock file in the data dir that keeps a second server
// off it while one runs.
const LockFileName = "server.lock"

func dataDirInUse(dir string, err error) error {
	var held *fsutil.HeldError
	if !errors.As(err, &held) {
		return fmt.Errorf("data_dir %s cannot be locked: %w", dir, err)
	}
	return fault.Wrap(err, fault.FailedPrecondition, "server.data_dir_in_use",
		fmt.Sprintf("data_dir %s is in use by %s (another nexstor server)", dir, held.Holder()),
		"stop the other server, or give this one its own data_dir")
}

// registerManagement registers the management service replica svc: the
// membership service, and the volume service when svc serves it.
func registerManagement(s grpc.ServiceRegistrar, svc mgmtv1.MgmtServiceServer) {
	mgmtv1.RegisterMgmtServiceServer(s, svc)
	switch vs := svc.(type) {
	case interface{ Volumes() *mgmt.VolumeServer }:
		mgmtv1.RegisterVolumeServiceServer(s, vs.Volumes())
	case mgmtv1.VolumeServiceServer:
		mgmtv1.RegisterVolumeServiceServer(s, vs)
	}
}

// Policy is the authorization table of everything a node serves: the node
// service, the management service and the engine.
//
// Engine methods: the admin and server roles may read (list and get
// everything, rebuild status). The server role, which the management
// service leader uses to drive the members' engines for volumes, may also
// create, destroy, resize, share, unshare and disown replicas; create,
// destroy, publish, unpublish and resize nexuses and set their ANA state;
// add, remove and online children; and verify nexuses. Everything else
// (pools, fault or offline children, rebuild control) is admin-only by the
// Policy default; the admin role may call every engine method listed here
// too.
//
// The csi role may call CSIMethods and nothing else: the CSI driver works
// through the management service's volume service only, so a CSI
// certificate can neither reach an engine nor change membership.
func Policy() *security.Policy {
	p := mgmt.Policy().Merge(control.NodePolicy())
	read := []string{
		enginev1.PoolService_ListPools_FullMethodName, enginev1.PoolService_GetPool_FullMethodName,
		enginev1.ReplicaService_ListReplicas_FullMethodName, enginev1.ReplicaService_GetReplica_FullMethodName,
		enginev1.HostService_GetVersion_FullMethodName, enginev1.HostService_ListBlockDevices_FullMethodName,
		enginev1.NexusService_ListNexuses_FullMethodName, enginev1.NexusService_GetNexus_FullMethodName,
		enginev1.NexusService_RebuildStatus_FullMethodName,
	}
	for _, m := range read {
		p.Allow(m, security.RoleAdmin, security.RoleServer)
	}
	provision := []string{
		enginev1.ReplicaService_CreateReplica_FullMethodName, enginev1.ReplicaService_ResizeReplica_FullMethodName,
		enginev1.ReplicaService_ShareReplica_FullMethodName, enginev1.ReplicaService_UnshareReplica_FullMethodName,
		enginev1.NexusService_CreateNexus_FullMethodName, enginev1.NexusService_PublishNexus_FullMethodName,
		enginev1.NexusService_UnpublishNexus_FullMethodName, enginev1.NexusService_AddChild_FullMethodName,
		enginev1.NexusService_RemoveChild_FullMethodName,
	}
	for _, m := range provision {
		p.Allow(m, security.RoleAdmin, security.RoleServer)
	}
	// What volumes need beyond provisioning, for the leader only.
	volumes := []string{
		enginev1.ReplicaService_DestroyReplica_FullMethodName, enginev1.ReplicaService_DisownReplica_FullMethodName,
		enginev1.NexusService_DestroyNexus_FullMethodName, enginev1.NexusService_ResizeNexus_FullMethodName,
		enginev1.NexusService_OnlineChild_FullMethodName, enginev1.NexusService_Verify_FullMethodName,
		// Volume snapshots and restores.
		enginev1.SnapshotService_CreateSnapshot_FullMethodName, enginev1.SnapshotService_GetSnapshot_FullMethodName,
		enginev1.SnapshotService_DeleteSnapshot_FullMethodName, enginev1.SnapshotService_CloneSnapshot_FullMethodName,
		enginev1.SnapshotService_QuiesceNexus_FullMethodName, enginev1.SnapshotService_ResumeNexus_FullMethodName,
		// A move sets the old nexus inaccessible before the new one serves.
		enginev1.NexusService_SetNexusAnaState_FullMethodName,
	}
	for _, m := range volumes {
		p.Allow(m, security.RoleAdmin, security.RoleServer)
	}
	return p.Confine(security.RoleCSI, CSIMethods...)
}

// CSIMethods are the methods the csi role may call: the volume service
// calls of the CSI controller (internal/csi), and the failed-path report of
// the host agent (nexstor agent, which also reads volumes). The CSI node
// plugin calls none (what it attaches comes in the publish context).
var CSIMethods = []string{
	mgmtv1.VolumeService_ReportPathFailure_FullMethodName,
	mgmtv1.VolumeService_CreateVolume_FullMethodName, mgmtv1.VolumeService_DeleteVolume_FullMethodName,
	mgmtv1.VolumeService_PublishVolume_FullMethodName, mgmtv1.VolumeService_UnpublishVolume_FullMethodName,
	mgmtv1.VolumeService_ResizeVolume_FullMethodName, mgmtv1.VolumeService_GetVolume_FullMethodName,
	mgmtv1.VolumeService_ListVolumes_FullMethodName, mgmtv1.VolumeService_ListPools_FullMethodName,
	mgmtv1.VolumeService_ListNodes_FullMethodName,
	mgmtv1.VolumeService_CreateSnapshot_FullMethodName, mgmtv1.VolumeService_DeleteSnapshot_FullMethodName,
	mgmtv1.VolumeService_ListSnapshots_FullMethodName, mgmtv1.VolumeService_GetSnapshot_FullMethodName,
}

// runtime holds the engine, started on a formatted node (or during format,
// to create the configured pools).
type runtime struct {
	cfg        *config.Server
	opts       Options
	log        *slog.Logger
	engineLazy *lazy

	// systemHealth is the system health store of volume nexuses, for
	// the engine.
	systemHealth *healthstore.Store

	// accessPoint: the node runs a management service replica.
	accessPoint bool

	mu        sync.Mutex
	engineErr string // why the engine failed to start again, "" when fine
	dp        *engine.DataPlane
	// hostNQN is the node's NVMe host NQN, "" until the node is
	// formatted; dpHostNQN is the one the running engine started with.
	hostNQN, dpHostNQN string
	// mgmt is the running management service replica, nil while none
	// runs; read by the volume metrics.
	mgmt *mgmt.Service
}

// HostNQN returns the node's NVMe host NQN, "" while the node is not
// formatted.
func (r *runtime) HostNQN() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hostNQN
}

// setHostNQN records the node's host NQN once it is formatted. An engine
// that runs already (started to create the pools during format, before the
// node had its identity) is stopped, so that the next startEngine starts
// it with its identity: at that point it holds no replica or nexus yet.
func (r *runtime) setHostNQN(nqn string) {
	r.mu.Lock()
	r.hostNQN = nqn
	stale := r.dp != nil && r.dpHostNQN != nqn
	r.mu.Unlock()
	if stale {
		r.stopEngine("the engine restarts with the node's identity")
	}
}

// poolReport is the node's pool report (mgmt.MemberConfig.Pools): every
// pool of the running engine with the labels of the configuration; an
// empty report while the engine does not run (maintenance, stopped by the
// system).
func (r *runtime) poolReport(context.Context) (*mgmtv1.PoolReportSet, error) {
	r.mu.Lock()
	defer r.mu.Unlock() // the engine is not closed while its pools are read
	if r.dp == nil {
		return &mgmtv1.PoolReportSet{}, nil
	}
	return poolReportSet(r.dp.Engine.Pools(), r.cfg.Pools), nil
}

// poolReportSet reports pools, in their order, each with the labels of the
// configured pool of its name, or, for a pool not in the configuration, the
// labels set on the engine (SetPoolLabels). Free space is what is not
// allocated (FreeClusters × ClusterSize); committed, what the replicas may
// grow to.
func poolReportSet(pools []engine.PoolInfo, configured []config.Pool) *mgmtv1.PoolReportSet {
	labels := make(map[string]map[string]string, len(configured)+len(pools))
	for _, p := range pools {
		labels[p.Name] = p.Labels
	}
	for _, p := range configured {
		labels[p.Name] = p.Labels
	}
	u := func(v int64) uint64 { return uint64(max(v, 0)) }
	set := &mgmtv1.PoolReportSet{Pools: make([]*mgmtv1.PoolReport, 0, len(pools))}
	for _, p := range pools {
		st := p.Stats
		set.Pools = append(set.Pools, &mgmtv1.PoolReport{
			Name: p.Name, Uuid: p.UUID, Disk: p.Disk, State: string(p.State), Reason: p.Reason,
			Capacity: u(st.Capacity), Free: u(st.FreeClusters) * u(st.ClusterSize), Committed: u(st.Committed),
			OvercommitPercent: uint32(max(st.Overcommit, 0)), ClusterSize: u(st.ClusterSize),
			Labels: maps.Clone(labels[p.Name]), Replicas: uint32(max(st.Replicas, 0)),
		})
	}
	return set
}

// createPool is the node's PoolCreator: it starts the engine (without
// configured pools: they do not exist yet) and creates the pool. A pool of
// that name already on the disk (from an earlier, failed format) is
// accepted without force.
func (r *runtime) createPool(ctx context.Context, p config.Pool, force bool) (string, error) {
	if err := r.startEngine(nil); err != nil {
		return "", err
	}
	r.mu.Lock()
	dp := r.dp
	r.mu.Unlock()
	if dp == nil {
		return "", fmt.Errorf("pool %q: the engine stopped while formatting", p.Name)
	}
	// CreatePool returns a pool that exists with the same name and disk
	// (from an earlier, failed format) instead of failing.
	info, err := dp.Engine.CreatePool(ctx, engine.PoolSpec{Name: p.Name, Disk: p.Disk, ClusterSize: p.ClusterSize, Force: force, Overcommit: p.Overcommit})
	if err != nil {
		return "", err
	}
	return info.UUID, nil
}

// startEngine starts the engine and its NBD and NVMe/TCP frontends once;
// later calls do nothing.
func (r *runtime) startEngine(pools []config.Pool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dp != nil {
		return nil
	}
	cfg := r.cfg
	// The engine's identity: r.hostNQN ("" during format, see setHostNQN)
	// and the system health store r.systemHealth.
	o := engine.DataPlaneOptions{DataDir: cfg.DataDir, NBDListen: cfg.NBDListen, NVMfListen: cfg.NVMfListen,
		DiscoveryListen: cfg.DiscoveryListen, Logger: r.log, HostNQN: r.hostNQN, SystemHealth: r.systemHealth}
	for _, p := range pools {
		o.Pools = append(o.Pools, engine.PoolConfig{Name: p.Name, Disk: p.Disk, ClusterSize: p.ClusterSize, Overcommit: p.Overcommit})
	}
	dp, err := engine.StartDataPlane(o)
	if err != nil {
		return err
	}
	r.dp, r.dpHostNQN = dp, r.hostNQN
	r.engineLazy.Set(dp.Register)
	r.log.Info("engine serving", "nbd", dp.NBDAddr(), "nvmf", dp.NVMfAddr(), "discovery", dp.DiscoveryAddr(),
		"data_dir", cfg.DataDir, "pools", len(dp.Engine.Pools()))
	return nil
}

// onState follows the state the system holds for this node: a stopped or
// excluded member stops its engine (no I/O, pools exported); a joined one
// runs it. A failure to start it again is reported with the heartbeats,
// which moves the member to "errored".
func (r *runtime) onState(s mgmt.State) {
	r.log.Info("system state of this node", "state", s)
	switch s {
	case mgmt.StateStopped, mgmt.StateExcluded:
		r.stopEngine(fmt.Sprintf("this node is %s in the system: start it with `nexctl system start`", s))
	case mgmt.StateJoined:
		err := r.startEngine(r.cfg.Pools)
		r.mu.Lock()
		r.engineErr = ""
		if err != nil {
			r.engineErr = err.Error()
			r.log.Error("engine failed to start", "err", err)
		}
		r.mu.Unlock()
	}
}

// metricsEngine is the metrics Source: the running engine, or nil in
// maintenance mode and while the system keeps the node stopped.
func (r *runtime) metricsEngine() metrics.Engine {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dp == nil {
		return nil // not a typed nil *engine.Engine
	}
	return r.dp.Engine
}

func (r *runtime) setMgmt(s *mgmt.Service) {
	r.mu.Lock()
	r.mgmt = s
	r.mu.Unlock()
}

// metricsVolumes is the volume metrics source: the volumes with their
// derived status while this node's management service replica leads
// (ListVolumes bounds each engine probe), nothing else on the other nodes.
func (r *runtime) metricsVolumes(ctx context.Context) (metrics.VolumeView, error) {
	r.mu.Lock()
	svc := r.mgmt
	r.mu.Unlock()
	view := metrics.VolumeView{Replica: r.accessPoint}
	if svc == nil || !svc.IsLeader() {
		return view, nil
	}
	resp, err := svc.Volumes().ListVolumes(ctx, &mgmtv1.ListVolumesRequest{})
	if err != nil {
		if !svc.IsLeader() {
			return view, nil // lost the lead during the read: another node exports them now
		}
		return metrics.VolumeView{}, err
	}
	rs := svc.RepairStats()
	view.Leader, view.Volumes = true, resp.Volumes
	view.Repairs = metrics.RepairView{Started: rs.Started, Finished: rs.Finished, Failed: rs.Failed, HealSeconds: rs.HealSeconds}
	return view, nil
}

func (r *runtime) engineError() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.engineErr
}

// stopEngine withdraws the shares and exports the pools; engine calls fail
// with reason until it starts again.
func (r *runtime) stopEngine(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dp == nil {
		return
	}
	r.engineLazy.Clear(reason)
	if err := r.dp.Close(); err != nil {
		r.log.Error("engine close", "err", err)
	}
	r.dp = nil
	r.log.Info("engine stopped")
}

// advertiseAddr is the address this node announces when it joins: its
// access point entry when it is one, else grpc_listen with a wildcard host
// replaced by the host name (a wildcard is not reachable from elsewhere).
func advertiseAddr(cfg *config.Server) string {
	if self := mgmt.SelfAccessPoint(cfg); self != "" {
		return self
	}
	host, port, err := net.SplitHostPort(cfg.GRPCListen)
	if err != nil || (host != "" && host != "0.0.0.0" && host != "::") {
		return cfg.GRPCListen
	}
	name, err := os.Hostname()
	if err != nil {
		return cfg.GRPCListen
	}
	return net.JoinHostPort(name, port)
}
