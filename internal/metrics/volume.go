package metrics

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

// VolumePhases are the values of VolumeStatus.phase (volume.proto), the
// label values of nexstor_volume_phase. A phase outside this list (a newer
// management service) is exported too, with value 1.
var VolumePhases = []string{"creating", "online", "degraded", "faulted", "unknown", "deleting"}

// VolumeView is what the volume collector exports at a scrape.
type VolumeView struct {
	// Replica is true when the node is an access point (it runs, or is
	// starting, a management service replica). On other nodes nothing is
	// exported, nexstor_mgmt_leader included.
	Replica bool
	// Leader is true while this node's replica leads. Only the leader
	// exports volume series, so that each volume is exported once in the
	// system.
	Leader bool
	// Volumes are the volumes with the status the leader derived from the
	// engines' live reports; ignored unless Leader.
	Volumes []*mgmtv1.Volume
	// Repairs are the leader's repair counters; ignored unless Leader.
	Repairs RepairView
}

// RepairKinds are the label values of the nexstor_repairs_* counters: resync
// (a returning replica copies what it missed), rebuild (a replica of the
// volume is copied in full), replace (a new replica for a lost one).
var RepairKinds = []string{"resync", "rebuild", "replace"}

// HealBuckets are the upper bounds, in seconds, of
// nexstor_volume_heal_seconds.
var HealBuckets = []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200}

// RepairView is what the leader counted of its repairs since it became
// leader (a new leader starts from zero, as a restarted process would).
type RepairView struct {
	// Started, Finished and Failed count repairs by kind (RepairKinds).
	Started, Finished, Failed map[string]uint64
	// HealSeconds are the lengths of the degraded periods that ended: from
	// when a volume was first seen with fewer healthy replicas than it
	// keeps to when it had them all again.
	HealSeconds []float64
}

// VolumeSource reads the volumes for a scrape. It must return soon after
// ctx ends (the collector bounds every read by VolumeReadTimeout) and be
// safe for concurrent use. An error is a read that failed (the store
// cannot be read): the scrape then reports it instead of volume series.
type VolumeSource func(ctx context.Context) (VolumeView, error)

// Bounds of the volume collector. A read asks every engine that holds a
// part of a volume (each probe bounded at 3 s by the management service),
// so it is not free: scrapes within VolumeCacheTTL of a read share it, and
// concurrent scrapes wait for the same read. VolumeReadTimeout keeps a
// scrape from hanging on a store or engine that does not answer; it is
// well within the HTTP server's write timeout.
const (
	VolumeCacheTTL    = 5 * time.Second
	VolumeReadTimeout = 10 * time.Second
)

// VolumeCollector is a prometheus.Collector over the volumes of the system,
// as the management service leader sees them: phase, replica counts and
// size per volume, and whether this node leads. Figures are at most
// VolumeCacheTTL old. Safe for concurrent use.
type VolumeCollector struct {
	src     VolumeSource
	ttl     time.Duration
	timeout time.Duration
	now     func() time.Time

	mu   sync.Mutex // held across a read: concurrent scrapes share it
	at   time.Time  // when view was read; zero before the first read
	view VolumeView
	err  error

	leader, phase, desired, healthy, size *prometheus.Desc
	started, finished, failed, heal       *prometheus.Desc
}

// NewVolumeCollector returns a collector that reads src at most once per
// VolumeCacheTTL.
func NewVolumeCollector(src VolumeSource) *VolumeCollector {
	vl := []string{"volume"}
	return &VolumeCollector{
		src: src, ttl: VolumeCacheTTL, timeout: VolumeReadTimeout, now: time.Now,
		leader: desc("mgmt_leader", "1 while this node's management service replica leads, 0 while another one does; absent on nodes that are not access points. Only the leader exports nexstor_volume_* series."),
		phase: desc("volume_phase", "1 for the volume's current phase, 0 for the others: creating, online (every replica healthy), degraded (serving with fewer healthy replicas than asked for), faulted (not serving), unknown (a node holding it does not answer), deleting.",
			"volume", "phase"),
		desired:  desc("volume_replicas_desired", "Number of replicas the volume was created with.", vl...),
		healthy:  desc("volume_replicas_healthy", "Number of the volume's replicas known good: online children of its nexus while published, online replicas otherwise.", vl...),
		size:     desc("volume_size_bytes", "Size of the volume as hosts see it.", vl...),
		started:  desc("repairs_started_total", "Repairs the management service leader started, by kind: resync (a returning replica copies only what it missed), rebuild (a replica is copied in full), replace (a new replica on another node for a lost one). Counted from the leader's election.", "kind"),
		finished: desc("repairs_finished_total", "Repairs whose replica came in sync, by kind. Counted from the leader's election.", "kind"),
		failed:   desc("repairs_failed_total", "Repairs whose replica fell out of service again, or whose new replica could not be created, by kind. Counted from the leader's election.", "kind"),
		heal:     desc("volume_heal_seconds", "Time from a volume being seen with fewer healthy replicas than it keeps to having them all again (degraded periods that ended since the leader's election)."),
	}
}

// Describe implements prometheus.Collector.
func (c *VolumeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.leader, c.phase, c.desired, c.healthy, c.size, c.started, c.finished, c.failed, c.heal} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the source (or reuses
// a read younger than the cache TTL) and sends the volume series.
func (c *VolumeCollector) Collect(ch chan<- prometheus.Metric) {
	view, err := c.read()
	if err != nil {
		// The scrape says why the volume series are missing (promhttp logs
		// it and serves the rest); no figures are better than old ones.
		ch <- prometheus.NewInvalidMetric(c.phase, err)
		return
	}
	if !view.Replica {
		return
	}
	gauge(ch, c.leader, b2f(view.Leader))
	if !view.Leader {
		return
	}
	for _, v := range view.Volumes {
		name := v.GetSpec().GetName()
		stateSet(ch, c.phase, VolumePhases, v.GetStatus().GetPhase(), name)
		gauge(ch, c.desired, float64(v.GetSpec().GetReplicas()), name)
		gauge(ch, c.healthy, float64(v.GetStatus().GetHealthy()), name)
		gauge(ch, c.size, float64(v.GetSpec().GetSize()), name)
	}
	rv := view.Repairs
	for _, k := range RepairKinds {
		counter(ch, c.started, float64(rv.Started[k]), k)
		counter(ch, c.finished, float64(rv.Finished[k]), k)
		counter(ch, c.failed, float64(rv.Failed[k]), k)
	}
	buckets := make(map[float64]uint64, len(HealBuckets))
	for _, b := range HealBuckets {
		buckets[b] = 0
	}
	var sum float64
	for _, d := range rv.HealSeconds {
		sum += d
		for _, b := range HealBuckets {
			if d <= b {
				buckets[b]++
			}
		}
	}
	ch <- prometheus.MustNewConstHistogram(c.heal, uint64(len(rv.HealSeconds)), sum, buckets)
}

// read returns the cached view while it is younger than the TTL, else reads
// the source, bounded by the read timeout.
func (c *VolumeCollector) read() (VolumeView, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && c.now().Sub(c.at) < c.ttl {
		return c.view, c.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	view, err := c.src(ctx)
	if err != nil {
		err = fmt.Errorf("volume metrics: reading the volumes failed: %w", err)
	}
	// Failures are cached too, so that a broken store is not asked again
	// by every scrape.
	c.at, c.view, c.err = c.now(), view, err
	return view, err
}
