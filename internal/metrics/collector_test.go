package metrics

import (
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/nexstor/nexstor/internal/bdev/stats"
	"github.com/nexstor/nexstor/internal/engine"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nexus"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeEngine returns fixed snapshots.
type fakeEngine struct {
	pools    []engine.PoolInfo
	replicas []engine.ReplicaInfo
	nexuses  []engine.NexusInfo
	io       []engine.DeviceIO
}

func (f *fakeEngine) Pools() []engine.PoolInfo { return f.pools }
func (f *fakeEngine) Replicas(pool string) ([]engine.ReplicaInfo, error) {
	if pool != "" {
		return nil, errors.New("the collector lists every pool's replicas")
	}
	return f.replicas, nil
}
func (f *fakeEngine) Nexuses() []engine.NexusInfo { return f.nexuses }
func (f *fakeEngine) IOStats() []engine.DeviceIO  { return f.io }

const mib = 1 << 20

func sampleEngine() *fakeEngine {
	var nio stats.Snapshot
	nio.Write = stats.OpStats{Count: 5, Errors: 1, Bytes: 4 * 4096, TotalLatency: 2 * time.Millisecond}
	// 3 writes in [2^11, 2^12) ns, one in [2^19, 2^20) ns, one in the last
	// bucket (far beyond the largest bound).
	nio.Write.Latency.Buckets[12] = 3
	nio.Write.Latency.Buckets[20] = 1
	nio.Write.Latency.Buckets[stats.NumBuckets-1] = 1
	nio.Read = stats.OpStats{Count: 2, Bytes: 8192}
	nio.Read.Latency.Buckets[0] = 2
	var rio stats.Snapshot
	rio.Flush = stats.OpStats{Count: 7}
	rio.Flush.Latency.Buckets[30] = 7
	child1, child2 := "bdev:///11111111-1111-4111-8111-111111111111", "nvmf://10.0.0.2:4420/nqn.2024-11.io.nexstor:replica:2"
	return &fakeEngine{
		pools: []engine.PoolInfo{
			{Name: "bad", State: engine.PoolFaulted, Reason: "disk missing"},
			{Name: "p0", State: engine.PoolOnline, Stats: engine.PoolStats{Capacity: 64 * mib, ClusterSize: mib,
				TotalClusters: 64, FreeClusters: 40, Allocated: 20 * mib, Committed: 100 * mib, Replicas: 2}},
		},
		replicas: []engine.ReplicaInfo{
			{Name: "r1", Pool: "p0", Size: 96 * mib, Thin: true, Allocated: 16 * mib, State: engine.ReplicaOnline},
			{Name: "r2", Pool: "p0", Size: 4 * mib, Allocated: 4 * mib, State: engine.ReplicaFaulted},
		},
		nexuses: []engine.NexusInfo{
			{Name: "n0", Size: 96 * mib, BlockSize: 4096, State: engine.NexusDegraded,
				Stats: nexus.Stats{RebuildBytes: 3 * mib, Retired: 1, ReadRetries: 2},
				Children: []engine.NexusChild{
					{ChildStatus: nexus.ChildStatus{URI: child1, State: nexus.StateOnline, Local: true}},
					{ChildStatus: nexus.ChildStatus{URI: child2, State: nexus.StateRebuilding},
						Rebuild: &nexus.RebuildStatus{Child: child2, State: nexus.RebuildRunning, Total: 96 * mib, Done: 24 * mib}},
				}},
			{Name: "n1", State: engine.NexusFaulted, Reason: "no current child left",
				Children: []engine.NexusChild{{ChildStatus: nexus.ChildStatus{URI: child1, State: nexus.StateFaulted}}}},
		},
		io: []engine.DeviceIO{
			{Kind: engine.DeviceNexus, Name: "n0", Stats: nio},
			{Kind: engine.DeviceReplica, Name: "r1", Pool: "p0", Protocol: "nvmf", Stats: rio},
		},
	}
}

func TestCollectorState(t *testing.T) {
	c := NewCollector(Static(sampleEngine()))
	want := `
# HELP nexstor_engine_up 1 when the node's engine runs (pools imported, shares served); 0 in maintenance mode or when the system stopped the node.
# TYPE nexstor_engine_up gauge
nexstor_engine_up 1
# HELP nexstor_pool_state 1 for the pool's current state, 0 for the others. A faulted pool is known but not imported.
# TYPE nexstor_pool_state gauge
nexstor_pool_state{pool="bad",state="faulted"} 1
nexstor_pool_state{pool="bad",state="online"} 0
nexstor_pool_state{pool="p0",state="faulted"} 0
nexstor_pool_state{pool="p0",state="online"} 1
# HELP nexstor_pool_capacity_bytes Data capacity of an online pool: its clusters times the cluster size, metadata excluded.
# TYPE nexstor_pool_capacity_bytes gauge
nexstor_pool_capacity_bytes{pool="p0"} 6.7108864e+07
# HELP nexstor_pool_free_bytes Bytes in clusters of an online pool that no replica owns or reserves.
# TYPE nexstor_pool_free_bytes gauge
nexstor_pool_free_bytes{pool="p0"} 4.194304e+07
# HELP nexstor_pool_allocated_bytes Bytes in clusters of an online pool that replicas own.
# TYPE nexstor_pool_allocated_bytes gauge
nexstor_pool_allocated_bytes{pool="p0"} 2.097152e+07
# HELP nexstor_pool_committed_bytes Sum of the sizes of an online pool's replicas; above capacity when thin replicas overcommit it.
# TYPE nexstor_pool_committed_bytes gauge
nexstor_pool_committed_bytes{pool="p0"} 1.048576e+08
# HELP nexstor_pool_replicas Number of replicas in an online pool.
# TYPE nexstor_pool_replicas gauge
nexstor_pool_replicas{pool="p0"} 2
# HELP nexstor_replica_allocated_bytes Bytes in clusters the replica owns (a thin replica grows on first write).
# TYPE nexstor_replica_allocated_bytes gauge
nexstor_replica_allocated_bytes{pool="p0",replica="r1"} 1.6777216e+07
nexstor_replica_allocated_bytes{pool="p0",replica="r2"} 4.194304e+06
# HELP nexstor_replica_state 1 for the replica's current state, 0 for the others. A faulted replica's share could not be restored.
# TYPE nexstor_replica_state gauge
nexstor_replica_state{pool="p0",replica="r1",state="faulted"} 0
nexstor_replica_state{pool="p0",replica="r1",state="online"} 1
nexstor_replica_state{pool="p0",replica="r2",state="faulted"} 1
nexstor_replica_state{pool="p0",replica="r2",state="online"} 0
# HELP nexstor_nexus_state 1 for the nexus's current state, 0 for the others: online (every child online), degraded (serving, some child not online), faulted (not serving).
# TYPE nexstor_nexus_state gauge
nexstor_nexus_state{nexus="n0",state="degraded"} 1
nexstor_nexus_state{nexus="n0",state="faulted"} 0
nexstor_nexus_state{nexus="n0",state="online"} 0
nexstor_nexus_state{nexus="n1",state="degraded"} 0
nexstor_nexus_state{nexus="n1",state="faulted"} 1
nexstor_nexus_state{nexus="n1",state="online"} 0
# HELP nexstor_nexus_child_state 1 for the child's current state, 0 for the others.
# TYPE nexstor_nexus_child_state gauge
nexstor_nexus_child_state{child="bdev:///11111111-1111-4111-8111-111111111111",nexus="n0",state="faulted"} 0
nexstor_nexus_child_state{child="bdev:///11111111-1111-4111-8111-111111111111",nexus="n0",state="offline"} 0
nexstor_nexus_child_state{child="bdev:///11111111-1111-4111-8111-111111111111",nexus="n0",state="online"} 1
nexstor_nexus_child_state{child="bdev:///11111111-1111-4111-8111-111111111111",nexus="n0",state="rebuilding"} 0
nexstor_nexus_child_state{child="bdev:///11111111-1111-4111-8111-111111111111",nexus="n1",state="faulted"} 1
nexstor_nexus_child_state{child="bdev:///11111111-1111-4111-8111-111111111111",nexus="n1",state="offline"} 0
nexstor_nexus_child_state{child="bdev:///11111111-1111-4111-8111-111111111111",nexus="n1",state="online"} 0
nexstor_nexus_child_state{child="bdev:///11111111-1111-4111-8111-111111111111",nexus="n1",state="rebuilding"} 0
nexstor_nexus_child_state{child="nvmf://10.0.0.2:4420/nqn.2024-11.io.nexstor:replica:2",nexus="n0",state="faulted"} 0
nexstor_nexus_child_state{child="nvmf://10.0.0.2:4420/nqn.2024-11.io.nexstor:replica:2",nexus="n0",state="offline"} 0
nexstor_nexus_child_state{child="nvmf://10.0.0.2:4420/nqn.2024-11.io.nexstor:replica:2",nexus="n0",state="online"} 0
nexstor_nexus_child_state{child="nvmf://10.0.0.2:4420/nqn.2024-11.io.nexstor:replica:2",nexus="n0",state="rebuilding"} 1
# HELP nexstor_nexus_rebuild_done_bytes Bytes copied so far by a running (or paused) rebuild of a child.
# TYPE nexstor_nexus_rebuild_done_bytes gauge
nexstor_nexus_rebuild_done_bytes{child="nvmf://10.0.0.2:4420/nqn.2024-11.io.nexstor:replica:2",nexus="n0"} 2.5165824e+07
# HELP nexstor_nexus_rebuild_size_bytes Bytes a running (or paused) rebuild of a child copies in all.
# TYPE nexstor_nexus_rebuild_size_bytes gauge
nexstor_nexus_rebuild_size_bytes{child="nvmf://10.0.0.2:4420/nqn.2024-11.io.nexstor:replica:2",nexus="n0"} 1.00663296e+08
# HELP nexstor_nexus_rebuilt_bytes_total Bytes copied by the rebuilds of a nexus, full and partial.
# TYPE nexstor_nexus_rebuilt_bytes_total counter
nexstor_nexus_rebuilt_bytes_total{nexus="n0"} 3.145728e+06
# HELP nexstor_nexus_children_retired_total Times a child of a nexus was retired (faulted) for an I/O error.
# TYPE nexstor_nexus_children_retired_total counter
nexstor_nexus_children_retired_total{nexus="n0"} 1
# HELP nexstor_nexus_io_operations_total Host operations on a nexus by kind (read, write, flush, unmap, write_zeroes), failed ones included.
# TYPE nexstor_nexus_io_operations_total counter
nexstor_nexus_io_operations_total{nexus="n0",op="flush"} 0
nexstor_nexus_io_operations_total{nexus="n0",op="read"} 2
nexstor_nexus_io_operations_total{nexus="n0",op="unmap"} 0
nexstor_nexus_io_operations_total{nexus="n0",op="write"} 5
nexstor_nexus_io_operations_total{nexus="n0",op="write_zeroes"} 0
# HELP nexstor_nexus_io_errors_total Host operations on a nexus that failed, by kind.
# TYPE nexstor_nexus_io_errors_total counter
nexstor_nexus_io_errors_total{nexus="n0",op="flush"} 0
nexstor_nexus_io_errors_total{nexus="n0",op="read"} 0
nexstor_nexus_io_errors_total{nexus="n0",op="unmap"} 0
nexstor_nexus_io_errors_total{nexus="n0",op="write"} 1
nexstor_nexus_io_errors_total{nexus="n0",op="write_zeroes"} 0
# HELP nexstor_nexus_io_bytes_total Bytes moved (read, write) or covered (unmap, write_zeroes) by successful host operations on a nexus.
# TYPE nexstor_nexus_io_bytes_total counter
nexstor_nexus_io_bytes_total{nexus="n0",op="read"} 8192
nexstor_nexus_io_bytes_total{nexus="n0",op="unmap"} 0
nexstor_nexus_io_bytes_total{nexus="n0",op="write"} 16384
nexstor_nexus_io_bytes_total{nexus="n0",op="write_zeroes"} 0
# HELP nexstor_replica_io_operations_total Operations on a shared replica through its share, by protocol and kind, failed ones included.
# TYPE nexstor_replica_io_operations_total counter
nexstor_replica_io_operations_total{op="flush",pool="p0",protocol="nvmf",replica="r1"} 7
nexstor_replica_io_operations_total{op="read",pool="p0",protocol="nvmf",replica="r1"} 0
nexstor_replica_io_operations_total{op="unmap",pool="p0",protocol="nvmf",replica="r1"} 0
nexstor_replica_io_operations_total{op="write",pool="p0",protocol="nvmf",replica="r1"} 0
nexstor_replica_io_operations_total{op="write_zeroes",pool="p0",protocol="nvmf",replica="r1"} 0
`
	names := []string{"nexstor_engine_up", "nexstor_pool_state", "nexstor_pool_capacity_bytes", "nexstor_pool_free_bytes",
		"nexstor_pool_allocated_bytes", "nexstor_pool_committed_bytes", "nexstor_pool_replicas",
		"nexstor_replica_allocated_bytes", "nexstor_replica_state", "nexstor_nexus_state", "nexstor_nexus_child_state",
		"nexstor_nexus_rebuild_done_bytes", "nexstor_nexus_rebuild_size_bytes", "nexstor_nexus_rebuilt_bytes_total",
		"nexstor_nexus_children_retired_total", "nexstor_nexus_io_operations_total", "nexstor_nexus_io_errors_total",
		"nexstor_nexus_io_bytes_total", "nexstor_replica_io_operations_total"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	// A faulted pool has no capacity series, a nexus never opened no
	// counters.
	if n := testutil.CollectAndCount(c, "nexstor_nexus_read_retries_total"); n != 1 {
		t.Errorf("%d read-retry series, want only the serving nexus's", n)
	}
}

func TestCollectorLatencyHistogram(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(Static(sampleEngine())))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	h := findMetric(t, fams, "nexstor_nexus_io_latency_seconds", map[string]string{"nexus": "n0", "op": "write"}).GetHistogram()
	if h.GetSampleCount() != 5 || math.Abs(h.GetSampleSum()-0.002) > 1e-12 {
		t.Fatalf("write latency count %d sum %v, want 5 and 0.002", h.GetSampleCount(), h.GetSampleSum())
	}
	got := map[float64]uint64{}
	for _, b := range h.GetBucket() {
		got[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	// 2^12 ns is a bound: the three writes below it are counted there; the
	// one below 2^20 ns first shows at the bound 2^20; the last only in
	// +Inf (the sample count).
	for _, c := range []struct {
		exp  int
		want uint64
	}{{10, 0}, {12, 3}, {18, 3}, {20, 4}, {34, 4}} {
		le := math.Ldexp(1, c.exp) / 1e9
		if v, ok := got[le]; !ok || v != c.want {
			t.Errorf("bucket le=%g: %d (present %v), want %d", le, v, ok, c.want)
		}
	}
	if len(got) != len(latencyBuckets) {
		t.Errorf("%d buckets, want %d", len(got), len(latencyBuckets))
	}
	r := findMetric(t, fams, "nexstor_nexus_io_latency_seconds", map[string]string{"nexus": "n0", "op": "read"}).GetHistogram()
	if r.GetSampleCount() != 2 || r.GetBucket()[0].GetCumulativeCount() != 2 {
		t.Fatalf("read latency %v: want both 0ns reads in the first bucket", r)
	}
}

func TestCollectorLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(NewCollector(Static(sampleEngine())))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestCollectorWithoutEngine: a node in maintenance mode exports that it
// runs no engine, and nothing about pools.
func TestCollectorWithoutEngine(t *testing.T) {
	var e Engine
	c := NewCollector(func() Engine { return e })
	want := `
# HELP nexstor_engine_up 1 when the node's engine runs (pools imported, shares served); 0 in maintenance mode or when the system stopped the node.
# TYPE nexstor_engine_up gauge
nexstor_engine_up 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "nexstor_engine_up", "nexstor_pool_state"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "nexstor_build_info"); n != 1 {
		t.Fatalf("%d build_info series, want 1", n)
	}
	e = sampleEngine() // the engine starts: the same collector sees it
	if n := testutil.CollectAndCount(c, "nexstor_pool_state"); n != 4 {
		t.Fatalf("%d pool_state series once the engine runs, want 4", n)
	}
}

// TestCollectorUnknownState: a state the collector does not know is still
// exported, with value 1.
func TestCollectorUnknownState(t *testing.T) {
	f := &fakeEngine{pools: []engine.PoolInfo{{Name: "p", State: "importing"}}}
	want := `
# HELP nexstor_pool_state 1 for the pool's current state, 0 for the others. A faulted pool is known but not imported.
# TYPE nexstor_pool_state gauge
nexstor_pool_state{pool="p",state="faulted"} 0
nexstor_pool_state{pool="p",state="importing"} 1
nexstor_pool_state{pool="p",state="online"} 0
`
	if err := testutil.CollectAndCompare(NewCollector(Static(f)), strings.NewReader(want), "nexstor_pool_state"); err != nil {
		t.Fatal(err)
	}
}

func findMetric(t *testing.T, fams []*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return nil
}

// scrape fetches url and parses the text exposition format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return fams
}

func TestServer(t *testing.T) {
	s, err := Listen("127.0.0.1:0", NewRegistry(Static(sampleEngine())), quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") || !strings.HasSuffix(s.URL(), "/metrics") {
		t.Fatalf("URL %s", s.URL())
	}
	fams := scrape(t, s.URL())
	free := fams["nexstor_pool_free_bytes"]
	if free == nil || len(free.GetMetric()) != 1 || free.GetMetric()[0].GetGauge().GetValue() != 40*mib {
		t.Fatalf("nexstor_pool_free_bytes %v", free)
	}
	// The standard collectors are registered too.
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if _, ok := fams[name]; !ok && (name != "process_start_time_seconds" || processMetricsSupported()) {
			t.Errorf("%s missing from the scrape", name)
		}
	}
	resp, err := http.Get(strings.TrimSuffix(s.URL(), "/metrics") + "/nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nope: %s, want 404", resp.Status)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(s.URL()); err == nil {
		t.Fatal("the server still answers after Close")
	}
}

// processMetricsSupported: client_golang's process collector reads /proc.
func processMetricsSupported() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}

func TestListenBusyAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = Listen(ln.Addr().String(), prometheus.NewRegistry(), quietLogger())
	var f *fault.Fault
	if !errors.As(err, &f) || f.Kind != fault.FailedPrecondition {
		t.Fatalf("listen on a busy port: %v, want a FailedPrecondition fault", err)
	}
	msg := f.Error() + " " + f.Resolution
	for _, want := range []string{"metrics.listen", ln.Addr().String(), "--metrics", `""`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %s", msg, want)
		}
	}
}
