package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/fsutil"
	"github.com/nexstor/nexstor/internal/mgmt"
	"github.com/nexstor/nexstor/internal/security"
)

type leaderOnly struct {
	mgmtv1.UnimplementedMgmtServiceServer
	leader string
}

func (l *leaderOnly) LeaderQuery(context.Context, *mgmtv1.LeaderQueryRequest) (*mgmtv1.LeaderQueryResponse, error) {
	return &mgmtv1.LeaderQueryResponse{Leader: l.leader}, nil
}

// TestLazyService checks that a service registered through a lazy answers
// Unavailable with the reason until its implementation is set, and then
// reaches that implementation, on a server that was serving all along.
func TestLazyService(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	l := newLazy("not yet: starting")
	l.Register(srv, func(s grpc.ServiceRegistrar) { mgmtv1.RegisterMgmtServiceServer(s, new(mgmt.Service)) })
	go srv.Serve(lis)
	defer srv.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cl := mgmtv1.NewMgmtServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = cl.LeaderQuery(ctx, &mgmtv1.LeaderQueryRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "not yet: starting" {
		t.Fatalf("before Set: %v", err)
	}
	l.Set(func(s grpc.ServiceRegistrar) { mgmtv1.RegisterMgmtServiceServer(s, &leaderOnly{leader: "x:1"}) })
	resp, err := cl.LeaderQuery(ctx, &mgmtv1.LeaderQueryRequest{})
	if err != nil || resp.Leader != "x:1" {
		t.Fatalf("after Set: %v, %v", resp, err)
	}
	// Methods the implementation does not have still answer Unimplemented.
	if _, err := cl.SystemStop(ctx, &mgmtv1.SystemStopRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("unimplemented method: %v", err)
	}
}

// volumesToo is a management service that serves the volume service too.
type volumesToo struct {
	leaderOnly
	mgmtv1.UnimplementedVolumeServiceServer
}

func (volumesToo) LoadNexusHealth(context.Context, *mgmtv1.LoadNexusHealthRequest) (*mgmtv1.NexusHealth, error) {
	return &mgmtv1.NexusHealth{Found: true, Record: []byte("{}")}, nil
}

// TestRegisterManagement: the management service replica's volume service
// is served on the node's listener when the replica implements it, and
// answers Unimplemented when it does not.
func TestRegisterManagement(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	l := newLazy("not yet")
	l.Register(srv, func(s grpc.ServiceRegistrar) {
		mgmtv1.RegisterMgmtServiceServer(s, new(mgmt.Service))
		mgmtv1.RegisterVolumeServiceServer(s, mgmtv1.UnimplementedVolumeServiceServer{})
	})
	go srv.Serve(lis)
	defer srv.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vol := mgmtv1.NewVolumeServiceClient(cc)
	if _, err := vol.LoadNexusHealth(ctx, &mgmtv1.LoadNexusHealthRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("before the replica started: %v", err)
	}
	l.Set(func(s grpc.ServiceRegistrar) { registerManagement(s, &leaderOnly{leader: "x:1"}) })
	if _, err := vol.LoadNexusHealth(ctx, &mgmtv1.LoadNexusHealthRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("replica without the volume service: %v", err)
	}
	l.Set(func(s grpc.ServiceRegistrar) {
		registerManagement(s, &volumesToo{leaderOnly: leaderOnly{leader: "x:1"}})
	})
	if h, err := vol.LoadNexusHealth(ctx, &mgmtv1.LoadNexusHealthRequest{}); err != nil || !h.Found {
		t.Fatalf("replica with the volume service: %v, %v", h, err)
	}
	if resp, err := mgmtv1.NewMgmtServiceClient(cc).LeaderQuery(ctx, &mgmtv1.LeaderQueryRequest{}); err != nil || resp.Leader != "x:1" {
		t.Fatalf("membership service: %v, %v", resp, err)
	}
}

// TestConfigFromFlags checks that flags that were given override the file
// and the others leave it alone.
func TestConfigFromFlags(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "server.yaml")
	writeFile(t, cfgPath, "name: flags\ngrpc_listen: 127.0.0.1:20000\nnbd:\n  listen: 127.0.0.1:20001\n")
	cmd := &cobra.Command{Use: "server"}
	f := cmd.Flags()
	f.StringP("config", "o", "", "")
	for _, n := range []string{"data-dir", "grpc", "nbd", "nvmf", "discovery", "metrics", "log-level"} {
		f.String(n, "flag-default", "")
	}
	AddFlags(f)
	if err := f.Parse([]string{"-o", cfgPath, "--grpc", "127.0.0.1:30000", "--metrics", "", "--insecure", "--cert-dir", "/c",
		"--heartbeat-interval", "250ms", "--control"}); err != nil {
		t.Fatal(err)
	}
	cfg, opts, err := ConfigFromFlags(f)
	if err != nil {
		t.Fatal(err)
	}
	if !Enabled(cmd) {
		t.Error("--control not seen")
	}
	if cfg.Name != "flags" || cfg.GRPCListen != "127.0.0.1:30000" || cfg.NBDListen != "127.0.0.1:20001" {
		t.Errorf("name %q grpc %q nbd %q", cfg.Name, cfg.GRPCListen, cfg.NBDListen)
	}
	if !cfg.TransportConfig.AllowInsecure || cfg.TransportConfig.CACert != "/c/ca.crt" {
		t.Errorf("transport %+v", cfg.TransportConfig)
	}
	if cfg.MetricsListen != "" {
		t.Errorf("metrics %q: --metrics \"\" did not disable metrics", cfg.MetricsListen)
	}
	if cfg.NVMfListen != config.DefaultNVMfListen {
		t.Errorf("nvmf %q: an unset flag overrode the default", cfg.NVMfListen)
	}
	if opts.HeartbeatInterval != 250*time.Millisecond || opts.HeartbeatTimeout != 0 {
		t.Errorf("opts %+v", opts)
	}
	if err := f.Parse([]string{"--heartbeat-timeout", "-1s"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ConfigFromFlags(f); err == nil {
		t.Error("a negative heartbeat timeout was accepted")
	}
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPolicy checks the roles of the methods the roles must never or
// always reach.
func TestPolicy(t *testing.T) {
	p := Policy()
	for _, m := range []string{mgmtv1.NodeService_StorageFormat_FullMethodName, mgmtv1.MgmtService_SystemStop_FullMethodName,
		mgmtv1.MgmtService_SystemExclude_FullMethodName, enginev1.PoolService_DestroyPool_FullMethodName,
		enginev1.PoolService_CreatePool_FullMethodName, enginev1.PoolService_SetPoolLabels_FullMethodName} {
		if p.Permits(m, security.RoleCSI) || p.Permits(m, security.RoleServer) {
			t.Errorf("%s: csi or server permitted", m)
		}
		if !p.Permits(m, security.RoleAdmin) {
			t.Errorf("%s: admin refused", m)
		}
	}
	// The csi role reaches the volume service's CSI calls and nothing
	// else: no engine method, no membership call, not even a query.
	csiMethods := map[string]bool{}
	for _, m := range CSIMethods {
		csiMethods[m] = true
	}
	for _, sd := range []grpc.ServiceDesc{mgmtv1.VolumeService_ServiceDesc, mgmtv1.MgmtService_ServiceDesc, mgmtv1.NodeService_ServiceDesc,
		enginev1.PoolService_ServiceDesc, enginev1.ReplicaService_ServiceDesc, enginev1.HostService_ServiceDesc,
		enginev1.NexusService_ServiceDesc, enginev1.SnapshotService_ServiceDesc} {
		for _, md := range sd.Methods {
			m := "/" + sd.ServiceName + "/" + md.MethodName
			if got := p.Permits(m, security.RoleCSI); got != csiMethods[m] {
				t.Errorf("%s: csi permitted %v, want %v", m, got, csiMethods[m])
			}
			if csiMethods[m] && !p.Permits(m, security.RoleAdmin) {
				t.Errorf("%s: admin refused", m)
			}
		}
		for _, st := range sd.Streams {
			if m := "/" + sd.ServiceName + "/" + st.StreamName; p.Permits(m, security.RoleCSI) {
				t.Errorf("%s: csi permitted", m)
			}
		}
	}
	if len(csiMethods) != 14 {
		t.Errorf("CSIMethods has %d methods, want the 13 calls of the CSI controller and the agent's report", len(csiMethods))
	}
	if !p.Permits(enginev1.ReplicaService_CreateReplica_FullMethodName, security.RoleAdmin) {
		t.Error("create replica: admin refused")
	}
	if !p.Permits(mgmtv1.MgmtService_Heartbeat_FullMethodName, security.RoleServer) || p.Permits(mgmtv1.MgmtService_Heartbeat_FullMethodName, security.RoleCSI) {
		t.Error("heartbeat: server refused or csi permitted")
	}
	// The management service leader drives the engines for volumes with
	// the server certificate: it may create and destroy what volumes are
	// made of, never pools.
	for _, m := range []string{
		enginev1.ReplicaService_CreateReplica_FullMethodName, enginev1.ReplicaService_DestroyReplica_FullMethodName,
		enginev1.ReplicaService_ResizeReplica_FullMethodName, enginev1.ReplicaService_ShareReplica_FullMethodName,
		enginev1.ReplicaService_UnshareReplica_FullMethodName, enginev1.ReplicaService_DisownReplica_FullMethodName,
		enginev1.NexusService_CreateNexus_FullMethodName, enginev1.NexusService_DestroyNexus_FullMethodName,
		enginev1.NexusService_PublishNexus_FullMethodName, enginev1.NexusService_UnpublishNexus_FullMethodName,
		enginev1.NexusService_ResizeNexus_FullMethodName, enginev1.NexusService_AddChild_FullMethodName,
		enginev1.NexusService_RemoveChild_FullMethodName, enginev1.NexusService_OnlineChild_FullMethodName,
		enginev1.NexusService_Verify_FullMethodName, enginev1.NexusService_ListNexuses_FullMethodName,
		enginev1.NexusService_GetNexus_FullMethodName, enginev1.ReplicaService_ListReplicas_FullMethodName,
		enginev1.ReplicaService_GetReplica_FullMethodName, enginev1.PoolService_ListPools_FullMethodName,
		enginev1.PoolService_GetPool_FullMethodName, enginev1.HostService_GetVersion_FullMethodName,
		enginev1.NexusService_SetNexusAnaState_FullMethodName,
	} {
		if !p.Permits(m, security.RoleServer) || !p.Permits(m, security.RoleAdmin) {
			t.Errorf("%s: server or admin refused", m)
		}
	}
	for _, m := range []string{enginev1.PoolService_DestroyPool_FullMethodName, enginev1.PoolService_CreatePool_FullMethodName,
		enginev1.PoolService_ExportPool_FullMethodName, enginev1.PoolService_ImportPool_FullMethodName,
		enginev1.NexusService_FaultChild_FullMethodName, enginev1.NexusService_OfflineChild_FullMethodName} {
		if p.Permits(m, security.RoleServer) {
			t.Errorf("%s: server permitted", m)
		}
	}
	// The csi role never destroys.
	for _, m := range []string{enginev1.ReplicaService_DestroyReplica_FullMethodName, enginev1.ReplicaService_DisownReplica_FullMethodName,
		enginev1.NexusService_DestroyNexus_FullMethodName, enginev1.NexusService_ResizeNexus_FullMethodName,
		enginev1.NexusService_OnlineChild_FullMethodName, enginev1.NexusService_Verify_FullMethodName,
		enginev1.NexusService_SetNexusAnaState_FullMethodName} {
		if p.Permits(m, security.RoleCSI) {
			t.Errorf("%s: csi permitted", m)
		}
	}
}

func TestAdvertiseAddr(t *testing.T) {
	host, _ := os.Hostname()
	cfg := config.Default().WithGRPCListen("0.0.0.0:10200").WithAccessPoints("10.9.9.9:10124")
	if got := advertiseAddr(cfg); got != net.JoinHostPort(host, "10200") {
		t.Errorf("wildcard: %q", got)
	}
	cfg.WithGRPCListen("10.1.2.3:10200")
	if got := advertiseAddr(cfg); got != "10.1.2.3:10200" {
		t.Errorf("explicit: %q", got)
	}
	cfg.WithGRPCListen(":10124").WithAccessPoints("localhost:10124")
	if got := advertiseAddr(cfg); got != "localhost:10124" {
		t.Errorf("access point: %q", got)
	}
}

// TestRunRefusesALockedDataDir: a server whose data dir another server holds
// fails at once, naming the holder, before it writes anything.
func TestRunRefusesALockedDataDir(t *testing.T) {
	cfg := maintenanceConfig(t, "")
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		t.Fatal(err)
	}
	held, err := fsutil.LockFile(filepath.Join(cfg.DataDir, LockFileName))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	err = Run(context.Background(), cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("in use by process %d", os.Getpid())) ||
		!strings.Contains(err.Error(), cfg.DataDir) {
		t.Fatalf("Run on a held data dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.RuntimeDir, config.EffectiveFileName)); !os.IsNotExist(err) {
		t.Fatalf("the refused server wrote its effective config: %v", err)
	}
}
