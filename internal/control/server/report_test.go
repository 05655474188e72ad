package server

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/control"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/engine"
)

// TestPoolReportSet: every field of a pool's report comes from the engine's
// figures (free = free clusters × cluster size), the labels from the
// configured pool of the same name, or the engine's for a pool not in the
// configuration; a faulted pool is reported with its reason.
func TestPoolReportSet(t *testing.T) {
	pools := []engine.PoolInfo{
		{Name: "fast", UUID: "u-fast", Disk: "/dev/nvme0n1", State: engine.PoolOnline, Stats: engine.PoolStats{
			Capacity: 100 << 20, ClusterSize: 4 << 20, TotalClusters: 25, FreeClusters: 10, Allocated: 60 << 20,
			Committed: 200 << 20, Replicas: 3, Overcommit: 250, CommitLimit: 250 << 20}},
		{Name: "gone", UUID: "u-gone", Disk: "/dev/sdz", State: engine.PoolFaulted, Reason: "the disk holds no pool",
			Labels: map[string]string{"ignored": "the configuration's win"}},
		{Name: "dp", UUID: "u-dp", Disk: "/dev/sdc", State: engine.PoolOnline, Labels: map[string]string{"tier": "gold"}},
	}
	cfg := []config.Pool{{Name: "gone", Labels: map[string]string{"media": "hdd"}}, {Name: "fast", Labels: map[string]string{"media": "nvme"}}}
	got := poolReportSet(pools, cfg)
	want := &mgmtv1.PoolReportSet{Pools: []*mgmtv1.PoolReport{
		{Name: "fast", Uuid: "u-fast", Disk: "/dev/nvme0n1", State: "online", Capacity: 100 << 20, Free: 40 << 20,
			Committed: 200 << 20, OvercommitPercent: 250, ClusterSize: 4 << 20, Labels: map[string]string{"media": "nvme"}, Replicas: 3},
		{Name: "gone", Uuid: "u-gone", Disk: "/dev/sdz", State: "faulted", Reason: "the disk holds no pool",
			Labels: map[string]string{"media": "hdd"}},
		{Name: "dp", Uuid: "u-dp", Disk: "/dev/sdc", State: "online", Labels: map[string]string{"tier": "gold"}},
	}}
	if !proto.Equal(got, want) {
		t.Fatalf("report\n %v\nwant\n %v", got, want)
	}
	got.Pools[0].Labels["media"] = "changed"
	if cfg[1].Labels["media"] != "nvme" {
		t.Fatal("the report shares the configuration's labels")
	}
}

// TestRuntimePoolReportAndIdentity: the runtime reports its engine's pools
// with the configured labels, and an empty report (not none) while the
// engine does not run. An engine started before the node had its identity
// (during format) is restarted when the host NQN becomes known, and keeps
// its pools.
func TestRuntimePoolReportAndIdentity(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default().WithDataDir(filepath.Join(dir, "data")).WithInsecure(true).WithNBDListen("").
		WithNVMfListen("127.0.0.1:0").WithDiscoveryListen("").WithPools(config.Pool{Name: "p0",
		Disk: "file://" + filepath.Join(dir, "p0.img") + "?size=64MiB", ClusterSize: 1 << 20, Labels: map[string]string{"tier": "gold"}})
	r := &runtime{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)), engineLazy: newLazy("maintenance")}
	defer r.stopEngine("test over")
	ctx := context.Background()
	rep, err := r.poolReport(ctx)
	if err != nil || rep == nil || len(rep.Pools) != 0 {
		t.Fatalf("report without an engine: %v, %v; want an empty set", rep, err)
	}
	// Format: the engine starts without the node's identity and creates
	// the pool.
	if _, err := r.createPool(ctx, cfg.Pools[0], false); err != nil {
		t.Fatal(err)
	}
	rep, err = r.poolReport(ctx)
	if err != nil || len(rep.Pools) != 1 {
		t.Fatalf("report after format: %v, %v", rep, err)
	}
	p := rep.Pools[0]
	if p.Name != "p0" || p.State != "online" || p.ClusterSize != 1<<20 || p.Capacity == 0 || p.Free == 0 || p.Free > p.Capacity ||
		p.Labels["tier"] != "gold" || p.Uuid == "" {
		t.Fatalf("pool report %v", p)
	}
	if r.HostNQN() != "" {
		t.Fatalf("host NQN %q before format", r.HostNQN())
	}
	before := r.dp
	nqn := control.HostNQN(uuid.New())
	r.setHostNQN(nqn)
	if err := r.startEngine(cfg.Pools); err != nil {
		t.Fatal(err)
	}
	if r.dp == before || r.dpHostNQN != nqn || r.HostNQN() != nqn {
		t.Fatalf("engine not restarted with the node's identity: same engine %v, started with %q", r.dp == before, r.dpHostNQN)
	}
	again, err := r.poolReport(ctx)
	if err != nil || !proto.Equal(again, rep) {
		t.Fatalf("report after the restart: %v, %v; want %v", again, err, rep)
	}
	// The same identity again changes nothing.
	running := r.dp
	r.setHostNQN(nqn)
	if r.dp != running {
		t.Fatal("engine restarted although its identity did not change")
	}
	// A stopped engine (the system stopped the node) reports no pools.
	r.stopEngine("stopped by the system")
	if rep, err := r.poolReport(ctx); err != nil || rep == nil || len(rep.Pools) != 0 {
		t.Fatalf("report of a stopped engine: %v, %v; want an empty set", rep, err)
	}
}
