// Package metrics exports a node's state as Prometheus metrics: pool
// capacity, replicas, nexus and child health, rebuild progress, and the I/O
// counters and latency histograms of published nexuses and shared
// replicas (docs/metrics.md lists them all).
//
// Everything is read at scrape time from the engine's read-only snapshots
// (Pools, Replicas, Nexuses, IOStats): the I/O path keeps its own atomic
// counters and knows nothing of Prometheus, so metrics add no per-I/O cost
// and a node without a scraper pays nothing.
package metrics

import (
	"math"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/nexstor/nexstor/internal/bdev/stats"
	"github.com/nexstor/nexstor/internal/engine"
	"github.com/nexstor/nexstor/internal/nexus"
)

// Engine is what the collector reads from a node's engine; *engine.Engine
// implements it. Every method must be safe for concurrent use and cheap:
// it runs on every scrape.
type Engine interface {
	Pools() []engine.PoolInfo
	// Replicas lists the replicas of every online pool when pool is "".
	Replicas(pool string) ([]engine.ReplicaInfo, error)
	Nexuses() []engine.NexusInfo
	IOStats() []engine.DeviceIO
}

// Source returns the engine to read at a scrape, or nil while the node runs
// none (a control-plane node in maintenance mode or stopped by the system):
// then only nexstor_engine_up (0), the build info and the process metrics
// are exported.
type Source func() Engine

// Static is the Source of an engine that runs as long as the collector.
func Static(e Engine) Source { return func() Engine { return e } }

// Label values of the state gauges: every state is exported for every
// object, 1 for the current one and 0 for the others (as kube-state-metrics
// does), so that `== 1` selects and a state change is never a missing
// series.
var (
	poolStates    = []string{string(engine.PoolOnline), string(engine.PoolFaulted)}
	replicaStates = []string{string(engine.ReplicaOnline), string(engine.ReplicaFaulted)}
	nexusStates   = []string{string(engine.NexusOnline), string(engine.NexusDegraded), string(engine.NexusFaulted)}
	childStates   = []string{nexus.StateOnline.String(), nexus.StateRebuilding.String(),
		nexus.StateFaulted.String(), nexus.StateOffline.String()}
)

// latencyBuckets are the upper bounds of the latency histograms, in
// seconds: every second power of two nanoseconds from 2^10 ns (about 1µs)
// to 2^34 ns (about 17s). bdev/stats counts latencies in power-of-two
// buckets, so each bound is exact, not interpolated.
var latencyBuckets = func() []int {
	var exps []int
	for e := 10; e <= 34; e += 2 {
		exps = append(exps, e)
	}
	return exps
}()

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("nexstor_"+name, help, labels, nil)
}

// Collector is a prometheus.Collector over a node's engine. Safe for
// concurrent use: it keeps no state between scrapes.
type Collector struct {
	src Source

	buildInfo, engineUp *prometheus.Desc
	buildLabels         []string

	poolState, poolCapacity, poolFree, poolAllocated, poolCommitted, poolCluster, poolReplicas *prometheus.Desc

	replicaState, replicaSize, replicaAllocated *prometheus.Desc

	nexusState, nexusSize, childState                       *prometheus.Desc
	childOut, childDirty, nexusLeftOut                      *prometheus.Desc
	rebuildDone, rebuildTotal                               *prometheus.Desc
	rebuiltBytes, retired, readRetries, resyncRepaired      *prometheus.Desc
	nexusOps, nexusErrors, nexusBytes, nexusLatency         *prometheus.Desc
	replicaOps, replicaErrors, replicaBytes, replicaLatency *prometheus.Desc
}

// NewCollector returns a collector that reads src at every scrape.
func NewCollector(src Source) *Collector {
	v := engine.GetVersion()
	pl := []string{"pool"}
	rl := []string{"pool", "replica"}
	nl := []string{"nexus"}
	cl := []string{"nexus", "child"}
	nio := []string{"nexus", "op"}
	rio := []string{"pool", "replica", "protocol", "op"}
	return &Collector{
		src:         src,
		buildInfo:   desc("build_info", "Always 1; the labels say which build of nexstor runs.", "version", "commit", "go_version"),
		buildLabels: []string{v.Version, v.Commit, v.GoVersion},
		engineUp:    desc("engine_up", "1 when the node's engine runs (pools imported, shares served); 0 in maintenance mode or when the system stopped the node."),

		poolState:     desc("pool_state", "1 for the pool's current state, 0 for the others. A faulted pool is known but not imported.", "pool", "state"),
		poolCapacity:  desc("pool_capacity_bytes", "Data capacity of an online pool: its clusters times the cluster size, metadata excluded.", pl...),
		poolFree:      desc("pool_free_bytes", "Bytes in clusters of an online pool that no replica owns or reserves.", pl...),
		poolAllocated: desc("pool_allocated_bytes", "Bytes in clusters of an online pool that replicas own.", pl...),
		poolCommitted: desc("pool_committed_bytes", "Sum of the sizes of an online pool's replicas; above capacity when thin replicas overcommit it.", pl...),
		poolCluster:   desc("pool_cluster_size_bytes", "Cluster size of an online pool: the unit of allocation.", pl...),
		poolReplicas:  desc("pool_replicas", "Number of replicas in an online pool.", pl...),

		replicaState:     desc("replica_state", "1 for the replica's current state, 0 for the others. A faulted replica's share could not be restored.", "pool", "replica", "state"),
		replicaSize:      desc("replica_size_bytes", "Size of a replica as hosts see it.", rl...),
		replicaAllocated: desc("replica_allocated_bytes", "Bytes in clusters the replica owns (a thin replica grows on first write).", rl...),

		nexusState:     desc("nexus_state", "1 for the nexus's current state, 0 for the others: online (every child online), degraded (serving, some child not online), faulted (not serving).", "nexus", "state"),
		nexusSize:      desc("nexus_size_bytes", "Size of a nexus as hosts see it.", nl...),
		childState:     desc("nexus_child_state", "1 for the child's current state, 0 for the others.", "nexus", "child", "state"),
		childOut:       desc("nexus_child_out_of_service", "1 while the child is faulted or offline, labelled with why (io-error, no-space, admin, out-of-sync, open-failed, identity-changed).", "nexus", "child", "reason"),
		childDirty:     desc("nexus_child_dirty_bytes", "Bytes written while an offline child was away: what bringing it back copies.", cl...),
		nexusLeftOut:   desc("nexus_children_left_out", "Children left out when the nexus was recreated at a start; the nexus is degraded while any is.", "nexus"),
		rebuildDone:    desc("nexus_rebuild_done_bytes", "Bytes copied so far by a running (or paused) rebuild of a child.", cl...),
		rebuildTotal:   desc("nexus_rebuild_size_bytes", "Bytes a running (or paused) rebuild of a child copies in all.", cl...),
		rebuiltBytes:   desc("nexus_rebuilt_bytes_total", "Bytes copied by the rebuilds of a nexus, full and partial.", nl...),
		retired:        desc("nexus_children_retired_total", "Times a child of a nexus was retired (faulted) for an I/O error.", nl...),
		readRetries:    desc("nexus_read_retries_total", "Reads of a nexus retried on another child after a child failed them.", nl...),
		resyncRepaired: desc("nexus_resync_repaired_bytes_total", "Bytes the resync after an unclean shutdown copied because children differed.", nl...),

		nexusOps:     desc("nexus_io_operations_total", "Host operations on a nexus by kind (read, write, flush, unmap, write_zeroes), failed ones included.", nio...),
		nexusErrors:  desc("nexus_io_errors_total", "Host operations on a nexus that failed, by kind.", nio...),
		nexusBytes:   desc("nexus_io_bytes_total", "Bytes moved (read, write) or covered (unmap, write_zeroes) by successful host operations on a nexus.", nio...),
		nexusLatency: desc("nexus_io_latency_seconds", "Latency of host operations on a nexus, by kind, as the nexus served them (network time excluded).", nio...),

		replicaOps:     desc("replica_io_operations_total", "Operations on a shared replica through its share, by protocol and kind, failed ones included.", rio...),
		replicaErrors:  desc("replica_io_errors_total", "Operations on a shared replica through its share that failed.", rio...),
		replicaBytes:   desc("replica_io_bytes_total", "Bytes moved or covered by successful operations on a shared replica through its share.", rio...),
		replicaLatency: desc("replica_io_latency_seconds", "Latency of operations on a shared replica through its share, as the pool served them.", rio...),
	}
}

// NewRegistry returns a registry with the nexstor collector over src and
// the standard Go runtime and process collectors of client_golang. It does
// not touch prometheus.DefaultRegisterer, so that several nodes (nexstor
// dev, tests) can live in one process.
func NewRegistry(src Source) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.buildInfo, c.engineUp,
		c.poolState, c.poolCapacity, c.poolFree, c.poolAllocated, c.poolCommitted, c.poolCluster, c.poolReplicas,
		c.replicaState, c.replicaSize, c.replicaAllocated,
		c.nexusState, c.nexusSize, c.childState, c.childOut, c.childDirty, c.nexusLeftOut, c.rebuildDone, c.rebuildTotal,
		c.rebuiltBytes, c.retired, c.readRetries, c.resyncRepaired,
		c.nexusOps, c.nexusErrors, c.nexusBytes, c.nexusLatency,
		c.replicaOps, c.replicaErrors, c.replicaBytes, c.replicaLatency} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the engine once and
// sends one sample per series.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.buildInfo, prometheus.GaugeValue, 1, c.buildLabels...)
	e := c.src()
	if e == nil {
		ch <- prometheus.MustNewConstMetric(c.engineUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.engineUp, prometheus.GaugeValue, 1)
	c.collectPools(ch, e)
	c.collectNexuses(ch, e)
	c.collectIO(ch, e)
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

// stateSet sends one sample per known state: 1 for current, 0 otherwise.
// A state outside known (a newer engine) is exported too, so it is never
// lost.
func stateSet(ch chan<- prometheus.Metric, d *prometheus.Desc, known []string, current string, labels ...string) {
	lv := append(slices.Clip(labels), "")
	for _, s := range known {
		lv[len(lv)-1] = s
		gauge(ch, d, b2f(s == current), lv...)
	}
	if !slices.Contains(known, current) {
		lv[len(lv)-1] = current
		gauge(ch, d, 1, lv...)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *Collector) collectPools(ch chan<- prometheus.Metric, e Engine) {
	for _, p := range e.Pools() {
		stateSet(ch, c.poolState, poolStates, string(p.State), p.Name)
		if p.State != engine.PoolOnline {
			continue // a faulted pool has no figures: no zero capacity to divide by
		}
		s := p.Stats
		gauge(ch, c.poolCapacity, float64(s.Capacity), p.Name)
		gauge(ch, c.poolFree, float64(s.FreeClusters*s.ClusterSize), p.Name)
		gauge(ch, c.poolAllocated, float64(s.Allocated), p.Name)
		gauge(ch, c.poolCommitted, float64(s.Committed), p.Name)
		gauge(ch, c.poolCluster, float64(s.ClusterSize), p.Name)
		gauge(ch, c.poolReplicas, float64(s.Replicas), p.Name)
	}
	reps, err := e.Replicas("")
	if err != nil {
		// Only a named pool can be missing; report what there is.
		return
	}
	for _, r := range reps {
		stateSet(ch, c.replicaState, replicaStates, string(r.State), r.Pool, r.Name)
		gauge(ch, c.replicaSize, float64(r.Size), r.Pool, r.Name)
		gauge(ch, c.replicaAllocated, float64(r.Allocated), r.Pool, r.Name)
	}
}

func (c *Collector) collectNexuses(ch chan<- prometheus.Metric, e Engine) {
	for _, n := range e.Nexuses() {
		stateSet(ch, c.nexusState, nexusStates, string(n.State), n.Name)
		gauge(ch, c.nexusSize, float64(n.Size), n.Name)
		gauge(ch, c.nexusLeftOut, float64(len(n.LeftOut)), n.Name)
		for _, ch2 := range n.Children {
			stateSet(ch, c.childState, childStates, ch2.State.String(), n.Name, ch2.URI)
			if ch2.State == nexus.StateFaulted || ch2.State == nexus.StateOffline {
				gauge(ch, c.childOut, 1, n.Name, ch2.URI, string(ch2.Reason))
			}
			if ch2.State == nexus.StateOffline {
				gauge(ch, c.childDirty, float64(ch2.DirtyBytes), n.Name, ch2.URI)
			}
			if r := ch2.Rebuild; r != nil {
				gauge(ch, c.rebuildDone, float64(r.Done), n.Name, ch2.URI)
				gauge(ch, c.rebuildTotal, float64(r.Total), n.Name, ch2.URI)
			}
		}
		if n.State == engine.NexusFaulted && n.BlockSize == 0 {
			continue // never opened in this process: it has no counters
		}
		counter(ch, c.rebuiltBytes, float64(n.Stats.RebuildBytes), n.Name)
		counter(ch, c.retired, float64(n.Stats.Retired), n.Name)
		counter(ch, c.readRetries, float64(n.Stats.ReadRetries), n.Name)
		counter(ch, c.resyncRepaired, float64(n.Stats.ResyncRepaired), n.Name)
	}
}

// ioOp is one operation of a stats.Snapshot, with its label value.
type ioOp struct {
	name  string
	stats *stats.OpStats
	bytes bool // whether the operation moves or covers bytes
}

func ops(s *stats.Snapshot) [5]ioOp {
	return [5]ioOp{
		{"read", &s.Read, true},
		{"write", &s.Write, true},
		{"flush", &s.Flush, false},
		{"unmap", &s.Unmap, true},
		{"write_zeroes", &s.WriteZeroes, true},
	}
}

func (c *Collector) collectIO(ch chan<- prometheus.Metric, e Engine) {
	for _, d := range e.IOStats() {
		opsD, errD, bytesD, latD := c.nexusOps, c.nexusErrors, c.nexusBytes, c.nexusLatency
		labels := []string{d.Name, ""}
		if d.Kind == engine.DeviceReplica {
			opsD, errD, bytesD, latD = c.replicaOps, c.replicaErrors, c.replicaBytes, c.replicaLatency
			labels = []string{d.Pool, d.Name, d.Protocol, ""}
		}
		for _, op := range ops(&d.Stats) {
			labels[len(labels)-1] = op.name
			counter(ch, opsD, float64(op.stats.Count), labels...)
			counter(ch, errD, float64(op.stats.Errors), labels...)
			if op.bytes {
				counter(ch, bytesD, float64(op.stats.Bytes), labels...)
			}
			count, buckets := histogram(&op.stats.Latency)
			ch <- prometheus.MustNewConstHistogram(latD, count, op.stats.TotalLatency.Seconds(), buckets, labels...)
		}
	}
}

// histogram converts a bdev/stats histogram to cumulative Prometheus
// buckets. The count is the histogram's own, not OpStats.Count, so that the
// +Inf bucket always equals it even when the snapshot caught an operation
// half-recorded.
func histogram(h *stats.Histogram) (uint64, map[float64]uint64) {
	out := make(map[float64]uint64, len(latencyBuckets))
	var cum uint64
	next := 0
	for i, n := range h.Buckets {
		// Bucket i holds [2^(i-1), 2^i) ns: everything up to it is below
		// 2^i ns.
		cum += n
		if next < len(latencyBuckets) && i == latencyBuckets[next] {
			out[math.Ldexp(1, i)/1e9] = cum
			next++
		}
	}
	return cum, out
}
