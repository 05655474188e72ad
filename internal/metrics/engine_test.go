package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/nexus"
	nxtest "github.com/nexstor/nexstor/internal/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/engine"
)

// captureExporter keeps the devices the engine exports, so that the test
// can do host I/O through them as a frontend would.
type captureExporter struct {
	mu   sync.Mutex
	devs map[string]bdev.Device
}

func (x *captureExporter) AddExport(spec engine.ExportSpec, dev bdev.Device) (string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.devs[spec.Name] = dev
	return "nbd://127.0.0.1:10809/" + spec.Name, nil
}

func (x *captureExporter) RemoveExport(name string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.devs, name)
	return nil
}

func (x *captureExporter) dev(t *testing.T, name string) bdev.Device {
	t.Helper()
	x.mu.Lock()
	defer x.mu.Unlock()
	d, ok := x.devs[name]
	if !ok {
		t.Fatalf("%s is not exported", name)
	}
	return d
}

// gatherer scrapes a collector and finds samples by name and labels.
type gatherer struct {
	t   *testing.T
	reg *prometheus.Registry
}

func (g gatherer) value(name string, labels map[string]string) float64 {
	g.t.Helper()
	fams, err := g.reg.Gather()
	if err != nil {
		g.t.Fatal(err)
	}
	m := findMetric(g.t, fams, name, labels)
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	g.t.Fatalf("%s%v has no value: %v", name, labels, m)
	return 0
}

func (g gatherer) count(name string) int {
	g.t.Helper()
	fams, err := g.reg.Gather()
	if err != nil {
		g.t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			return len(f.GetMetric())
		}
	}
	return 0
}

// TestEngineMetrics runs a real engine (file pool, thin replicas, a nexus
// over two of them, published) and checks that a scrape reports what the
// engine's own API reports, before and after host writes and after a child
// is faulted.
func TestEngineMetrics(t *testing.T) {
	dir := t.TempDir()
	nbd := &captureExporter{devs: map[string]bdev.Device{}}
	e, err := engine.New(engine.Config{DataDir: filepath.Join(dir, "data"), Backend: engine.PoolBackend{}, NBD: nbd,
		Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { e.Close() }()
	if _, err := e.CreatePool(context.Background(), engine.PoolSpec{Name: "p0", Disk: fmt.Sprintf("file://%s?size=%d", filepath.Join(dir, "d0.img"), 64*mib), ClusterSize: mib, Force: false}); err != nil {
		t.Fatal(err)
	}
	var children []string
	for _, name := range []string{"r1", "r2"} {
		ri, err := e.CreateReplica(context.Background(), engine.CreateReplicaOptions{Name: name, Pool: "p0", Size: 8 * mib, Thin: true})
		if err != nil {
			t.Fatal(err)
		}
		children = append(children, "bdev:///"+ri.UUID)
	}
	if _, err := e.CreateNexus(context.Background(), engine.CreateNexusOptions{Name: "n0", Children: children}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.PublishNexus(context.Background(), "n0", engine.ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(Static(e)))
	g := gatherer{t, reg}
	pool := map[string]string{"pool": "p0"}

	// checkPool compares every pool figure with Pools().
	checkPool := func() {
		t.Helper()
		ps := e.Pools()
		if len(ps) != 1 {
			t.Fatalf("pools %+v", ps)
		}
		s := ps[0].Stats
		for name, want := range map[string]int64{
			"nexstor_pool_capacity_bytes":  s.Capacity,
			"nexstor_pool_free_bytes":      s.FreeClusters * s.ClusterSize,
			"nexstor_pool_allocated_bytes": s.Allocated,
			"nexstor_pool_committed_bytes": s.Committed,
			"nexstor_pool_replicas":        int64(s.Replicas),
		} {
			if got := g.value(name, pool); got != float64(want) {
				t.Errorf("%s = %v, Pools() says %d", name, got, want)
			}
		}
		reps, err := e.Replicas("")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range reps {
			l := map[string]string{"pool": "p0", "replica": r.Name}
			if got := g.value("nexstor_replica_allocated_bytes", l); got != float64(r.Allocated) {
				t.Errorf("replica %s allocated %v, Replicas() says %d", r.Name, got, r.Allocated)
			}
			if got := g.value("nexstor_replica_size_bytes", l); got != float64(r.Size) {
				t.Errorf("replica %s size %v, Replicas() says %d", r.Name, got, r.Size)
			}
		}
	}
	checkPool()
	allocBefore := g.value("nexstor_pool_allocated_bytes", pool)
	if allocBefore != 0 {
		t.Fatalf("thin replicas allocated %v bytes before any write", allocBefore)
	}
	if got := g.value("nexstor_pool_committed_bytes", pool); got != 16*mib {
		t.Fatalf("committed %v, want the two replicas' 16MiB", got)
	}
	for _, c := range children {
		if got := g.value("nexstor_nexus_child_state", map[string]string{"nexus": "n0", "child": c, "state": "online"}); got != 1 {
			t.Fatalf("child %s online = %v, want 1", c, got)
		}
	}
	if got := g.value("nexstor_nexus_state", map[string]string{"nexus": "n0", "state": "online"}); got != 1 {
		t.Fatalf("nexus online = %v", got)
	}
	writes := map[string]string{"nexus": "n0", "op": "write"}
	if got := g.value("nexstor_nexus_io_operations_total", writes); got != 0 {
		t.Fatalf("writes before any I/O: %v", got)
	}

	// Host writes through the export: two clusters of each child allocated.
	dev := nbd.dev(t, "nexus/n0")
	buf := make([]byte, 64<<10)
	for _, off := range []int64{0, 3 * mib} {
		if _, err := dev.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dev.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	checkPool()
	if got := g.value("nexstor_pool_allocated_bytes", pool); got != 4*mib {
		t.Fatalf("allocated %v after writing two clusters of a 2-way mirror, want 4MiB", got)
	}
	if got := g.value("nexstor_nexus_io_operations_total", writes); got != 2 {
		t.Fatalf("writes %v, want 2", got)
	}
	if got := g.value("nexstor_nexus_io_bytes_total", writes); got != 2*64<<10 {
		t.Fatalf("written bytes %v, want 128KiB", got)
	}
	if got := g.value("nexstor_nexus_io_operations_total", map[string]string{"nexus": "n0", "op": "read"}); got != 1 {
		t.Fatalf("reads %v, want 1", got)
	}
	if got := g.value("nexstor_nexus_io_latency_seconds", writes); got != 2 {
		t.Fatalf("write latency samples %v, want 2", got)
	}

	// A faulted child: the nexus is degraded and the gauges follow
	// Nexuses().
	if _, err := e.NexusChildOp(context.Background(), "n0", engine.ChildFault, children[1]); err != nil {
		t.Fatal(err)
	}
	for _, n := range e.Nexuses() {
		if got := g.value("nexstor_nexus_state", map[string]string{"nexus": n.Name, "state": string(n.State)}); got != 1 {
			t.Errorf("nexus %s state %s = %v, want 1", n.Name, n.State, got)
		}
		for _, c := range n.Children {
			l := map[string]string{"nexus": n.Name, "child": c.URI, "state": c.State.String()}
			if got := g.value("nexstor_nexus_child_state", l); got != 1 {
				t.Errorf("child %s state %s = %v, want 1", c.URI, c.State, got)
			}
		}
	}
	if got := g.value("nexstor_nexus_state", map[string]string{"nexus": "n0", "state": "degraded"}); got != 1 {
		t.Fatalf("nexus degraded = %v after a child was faulted", got)
	}
	if got := g.value("nexstor_nexus_child_state", map[string]string{"nexus": "n0", "child": children[1], "state": "faulted"}); got != 1 {
		t.Fatalf("faulted child gauge = %v", got)
	}
	if g.count("nexstor_nexus_rebuild_done_bytes") != 0 {
		t.Fatal("rebuild progress exported without a rebuild")
	}
	// Added again, the child is rebuilt in full: the counters follow the
	// nexus's own.
	if _, err := e.NexusChildOp(context.Background(), "n0", engine.ChildAdd, children[1]); err != nil {
		t.Fatal(err)
	}
	ni := waitNexusOnline(t, e, "n0")
	if ni.Stats.RebuildBytes == 0 {
		t.Fatalf("nexus stats %+v after a full rebuild", ni.Stats)
	}
	if got := g.value("nexstor_nexus_rebuilt_bytes_total", map[string]string{"nexus": "n0"}); got != float64(ni.Stats.RebuildBytes) {
		t.Fatalf("rebuilt bytes %v, Nexus() says %d", got, ni.Stats.RebuildBytes)
	}
	if got := g.value("nexstor_nexus_children_retired_total", map[string]string{"nexus": "n0"}); got != float64(ni.Stats.Retired) {
		t.Fatalf("retired %v, Nexus() says %d", got, ni.Stats.Retired)
	}
	if got := g.value("nexstor_nexus_child_state", map[string]string{"nexus": "n0", "child": children[1], "state": "online"}); got != 1 {
		t.Fatalf("rebuilt child online = %v", got)
	}

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// waitNexusOnline waits for a rebuild to bring every child of a nexus
// online. The limit only bounds a hung rebuild.
func waitNexusOnline(t *testing.T, e *engine.Engine, name string) engine.NexusInfo {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ni, err := e.Nexus(name)
		if err != nil {
			t.Fatal(err)
		}
		if ni.State == engine.NexusOnline {
			return ni
		}
		if time.Now().After(deadline) {
			t.Fatalf("nexus %s still %s: %+v", name, ni.State, ni.Children)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestChildFillsItsPool: a thin child whose pool fills up leaves its nexus
// with reason no-space (offline, with a write-intent bitmap, so that freeing
// space and online-child copy only what it missed). The write that found no
// space is acknowledged by the child that has some; the reason shows in the
// nexus, in the metrics and in the log.
func TestChildFillsItsPool(t *testing.T) {
	dir := t.TempDir()
	nbd := &captureExporter{devs: map[string]bdev.Device{}}
	var log nxtest.SyncBuffer
	e, err := engine.New(engine.Config{DataDir: filepath.Join(dir, "data"), Backend: engine.PoolBackend{}, NBD: nbd,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { e.Close() }()
	ctx := context.Background()
	// "big" has room for the whole replica; "small" has 6 clusters (of
	// 1MiB) after a filler took most of it.
	for name, size := range map[string]int64{"big": 64 * mib, "small": 16 * mib} {
		disk := fmt.Sprintf("file://%s?size=%d", filepath.Join(dir, name+".img"), size)
		if _, err := e.CreatePool(ctx, engine.PoolSpec{Name: name, Disk: disk, ClusterSize: mib}); err != nil {
			t.Fatal(err)
		}
	}
	small, _ := e.Pool("small")
	filler := small.Stats.Capacity - 6*mib
	if _, err := e.CreateReplica(ctx, engine.CreateReplicaOptions{Name: "filler", Pool: "small", Size: filler}); err != nil {
		t.Fatal(err)
	}
	var children []string
	for name, pool := range map[string]string{"r1": "big", "r2": "small"} {
		ri, err := e.CreateReplica(ctx, engine.CreateReplicaOptions{Name: name, Pool: pool, Size: 16 * mib, Thin: true})
		if err != nil {
			t.Fatal(err)
		}
		children = append(children, "bdev:///"+ri.UUID)
	}
	if _, err := e.CreateNexus(ctx, engine.CreateNexusOptions{Name: "n0", Children: children}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.PublishNexus(ctx, "n0", engine.ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	dev := nbd.dev(t, "nexus/n0")
	buf := make([]byte, mib)
	for off := int64(0); off < 16*mib; off += mib {
		if _, err := dev.WriteAt(buf, off); err != nil {
			t.Fatalf("write at %d with one child full: %v", off, err)
		}
	}
	ni, err := e.Nexus("n0")
	if err != nil {
		t.Fatal(err)
	}
	var full *engine.NexusChild
	for i := range ni.Children {
		if ni.Children[i].State != nexus.StateOnline {
			full = &ni.Children[i]
		}
	}
	if ni.State != engine.NexusDegraded || full == nil || full.State != nexus.StateOffline || full.Reason != nexus.ReasonNoSpace {
		t.Fatalf("nexus after its child's pool filled: %+v", ni)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(Static(e)))
	g := gatherer{t, reg}
	if v := g.value("nexstor_nexus_child_out_of_service", map[string]string{"nexus": "n0", "child": full.URI, "reason": "no-space"}); v != 1 {
		t.Fatalf("nexstor_nexus_child_out_of_service{reason=no-space} = %v", v)
	}
	if v := g.value("nexstor_nexus_child_dirty_bytes", map[string]string{"nexus": "n0", "child": full.URI}); v <= 0 {
		t.Fatalf("nexstor_nexus_child_dirty_bytes = %v", v)
	}
	if !strings.Contains(log.String(), "reason=no-space") {
		t.Fatalf("the log does not say no-space:\n%s", log.String())
	}
}
