package metrics

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

func vol(name, phase string, size uint64, desired, healthy uint32) *mgmtv1.Volume {
	return &mgmtv1.Volume{Spec: &mgmtv1.VolumeSpec{Name: name, Size: size, Replicas: desired},
		Status: &mgmtv1.VolumeStatus{Phase: phase, Healthy: healthy}}
}

// fixedVolumes is a VolumeSource that returns view and counts its reads.
func fixedVolumes(view VolumeView, reads *atomic.Int32) VolumeSource {
	return func(context.Context) (VolumeView, error) {
		reads.Add(1)
		return view, nil
	}
}

// TestVolumeCollectorLeader: the leader exports every volume's phase (one
// series per phase), replica counts and size, and that it leads.
func TestVolumeCollectorLeader(t *testing.T) {
	var reads atomic.Int32
	c := NewVolumeCollector(fixedVolumes(VolumeView{Replica: true, Leader: true, Volumes: []*mgmtv1.Volume{
		vol("db", "degraded", 10<<30, 3, 2),
		vol("logs", "online", 512*mib, 1, 1),
	}}, &reads))
	want := `
# HELP nexstor_mgmt_leader 1 while this node's management service replica leads, 0 while another one does; absent on nodes that are not access points. Only the leader exports nexstor_volume_* series.
# TYPE nexstor_mgmt_leader gauge
nexstor_mgmt_leader 1
# HELP nexstor_volume_phase 1 for the volume's current phase, 0 for the others: creating, online (every replica healthy), degraded (serving with fewer healthy replicas than asked for), faulted (not serving), unknown (a node holding it does not answer), deleting.
# TYPE nexstor_volume_phase gauge
nexstor_volume_phase{phase="creating",volume="db"} 0
nexstor_volume_phase{phase="degraded",volume="db"} 1
nexstor_volume_phase{phase="deleting",volume="db"} 0
nexstor_volume_phase{phase="faulted",volume="db"} 0
nexstor_volume_phase{phase="online",volume="db"} 0
nexstor_volume_phase{phase="unknown",volume="db"} 0
nexstor_volume_phase{phase="creating",volume="logs"} 0
nexstor_volume_phase{phase="degraded",volume="logs"} 0
nexstor_volume_phase{phase="deleting",volume="logs"} 0
nexstor_volume_phase{phase="faulted",volume="logs"} 0
nexstor_volume_phase{phase="online",volume="logs"} 1
nexstor_volume_phase{phase="unknown",volume="logs"} 0
# HELP nexstor_volume_replicas_desired Number of replicas the volume was created with.
# TYPE nexstor_volume_replicas_desired gauge
nexstor_volume_replicas_desired{volume="db"} 3
nexstor_volume_replicas_desired{volume="logs"} 1
# HELP nexstor_volume_replicas_healthy Number of the volume's replicas known good: online children of its nexus while published, online replicas otherwise.
# TYPE nexstor_volume_replicas_healthy gauge
nexstor_volume_replicas_healthy{volume="db"} 2
nexstor_volume_replicas_healthy{volume="logs"} 1
# HELP nexstor_volume_size_bytes Size of the volume as hosts see it.
# TYPE nexstor_volume_size_bytes gauge
nexstor_volume_size_bytes{volume="db"} 1.073741824e+10
nexstor_volume_size_bytes{volume="logs"} 5.36870912e+08
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "nexstor_mgmt_leader", "nexstor_volume_phase",
		"nexstor_volume_replicas_desired", "nexstor_volume_replicas_healthy", "nexstor_volume_size_bytes"); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestVolumeCollectorNotLeader: a replica that does not lead says so and
// exports no volume, even when its source lists some; a node that is not
// an access point exports nothing at all.
func TestVolumeCollectorNotLeader(t *testing.T) {
	var reads atomic.Int32
	vols := []*mgmtv1.Volume{vol("db", "online", mib, 1, 1)}
	follower := NewVolumeCollector(fixedVolumes(VolumeView{Replica: true, Volumes: vols}, &reads))
	want := `
# HELP nexstor_mgmt_leader 1 while this node's management service replica leads, 0 while another one does; absent on nodes that are not access points. Only the leader exports nexstor_volume_* series.
# TYPE nexstor_mgmt_leader gauge
nexstor_mgmt_leader 0
`
	if err := testutil.CollectAndCompare(follower, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	member := NewVolumeCollector(fixedVolumes(VolumeView{Volumes: vols}, &reads))
	if n := testutil.CollectAndCount(member); n != 0 {
		t.Fatalf("a node that is not an access point exports %d volume series", n)
	}
}

// TestVolumeCollectorUnknownPhase: a phase the collector does not know is
// exported with value 1, never dropped.
func TestVolumeCollectorUnknownPhase(t *testing.T) {
	var reads atomic.Int32
	c := NewVolumeCollector(fixedVolumes(VolumeView{Replica: true, Leader: true,
		Volumes: []*mgmtv1.Volume{vol("v", "resizing", mib, 2, 2)}}, &reads))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	g := gatherer{t: t, reg: reg}
	if v := g.value("nexstor_volume_phase", map[string]string{"volume": "v", "phase": "resizing"}); v != 1 {
		t.Fatalf("phase resizing = %v, want 1", v)
	}
	if v := g.value("nexstor_volume_phase", map[string]string{"volume": "v", "phase": "online"}); v != 0 {
		t.Fatalf("phase online = %v, want 0", v)
	}
}

// TestVolumeCollectorCache: scrapes within the cache TTL of a read reuse
// it; the first scrape after it reads again and sees the change.
func TestVolumeCollectorCache(t *testing.T) {
	var reads atomic.Int32
	phase := "online"
	c := NewVolumeCollector(func(context.Context) (VolumeView, error) {
		reads.Add(1)
		return VolumeView{Replica: true, Leader: true, Volumes: []*mgmtv1.Volume{vol("v", phase, mib, 1, 1)}}, nil
	})
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	g := gatherer{t: t, reg: reg}
	online := map[string]string{"volume": "v", "phase": "online"}
	if v := g.value("nexstor_volume_phase", online); v != 1 {
		t.Fatalf("online = %v", v)
	}
	phase = "faulted"
	now = now.Add(VolumeCacheTTL - time.Millisecond)
	if v := g.value("nexstor_volume_phase", online); v != 1 || reads.Load() != 1 {
		t.Fatalf("within the TTL: online = %v after %d reads, want the cached read", v, reads.Load())
	}
	now = now.Add(time.Millisecond)
	if v := g.value("nexstor_volume_phase", online); v != 0 || reads.Load() != 2 {
		t.Fatalf("after the TTL: online = %v after %d reads, want a new read", v, reads.Load())
	}
}

// TestVolumeCollectorBounded: a source that does not answer is given up at
// the read timeout; the scrape reports the error instead of volume series,
// keeps the other collectors' series, and does not ask again within the
// TTL.
func TestVolumeCollectorBounded(t *testing.T) {
	var reads atomic.Int32
	c := NewVolumeCollector(func(ctx context.Context) (VolumeView, error) {
		reads.Add(1)
		<-ctx.Done() // a store that never answers
		return VolumeView{}, ctx.Err()
	})
	c.timeout = 50 * time.Millisecond
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, NewCollector(Static(sampleEngine())))
	for range 2 {
		fams, err := reg.Gather()
		if err == nil || !strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
			t.Fatalf("gather error %v, want the read's deadline", err)
		}
		if !strings.Contains(err.Error(), "volume metrics") {
			t.Fatalf("gather error %q does not say what failed", err)
		}
		names := map[string]bool{}
		for _, f := range fams {
			names[f.GetName()] = true
		}
		if !names["nexstor_engine_up"] || names["nexstor_volume_phase"] || names["nexstor_mgmt_leader"] {
			t.Fatalf("families of a scrape whose volume read failed: %v", names)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Fatalf("%d reads for two scrapes within the TTL, want 1", n)
	}
}

// TestRepairMetrics: the leader exports its repair counters for every
// kind, and the heal times as a histogram.
func TestRepairMetrics(t *testing.T) {
	var reads atomic.Int32
	c := NewVolumeCollector(fixedVolumes(VolumeView{Replica: true, Leader: true, Repairs: RepairView{
		Started: map[string]uint64{"resync": 2, "replace": 1}, Finished: map[string]uint64{"resync": 2},
		Failed: map[string]uint64{"replace": 1}, HealSeconds: []float64{3, 40}}}, &reads))
	want := `
# HELP nexstor_repairs_failed_total Repairs whose replica fell out of service again, or whose new replica could not be created, by kind. Counted from the leader's election.
# TYPE nexstor_repairs_failed_total counter
nexstor_repairs_failed_total{kind="rebuild"} 0
nexstor_repairs_failed_total{kind="replace"} 1
nexstor_repairs_failed_total{kind="resync"} 0
# HELP nexstor_volume_heal_seconds Time from a volume being seen with fewer healthy replicas than it keeps to having them all again (degraded periods that ended since the leader's election).
# TYPE nexstor_volume_heal_seconds histogram
nexstor_volume_heal_seconds_bucket{le="1"} 0
nexstor_volume_heal_seconds_bucket{le="5"} 1
nexstor_volume_heal_seconds_bucket{le="15"} 1
nexstor_volume_heal_seconds_bucket{le="30"} 1
nexstor_volume_heal_seconds_bucket{le="60"} 2
nexstor_volume_heal_seconds_bucket{le="120"} 2
nexstor_volume_heal_seconds_bucket{le="300"} 2
nexstor_volume_heal_seconds_bucket{le="600"} 2
nexstor_volume_heal_seconds_bucket{le="1200"} 2
nexstor_volume_heal_seconds_bucket{le="1800"} 2
nexstor_volume_heal_seconds_bucket{le="3600"} 2
nexstor_volume_heal_seconds_bucket{le="7200"} 2
nexstor_volume_heal_seconds_bucket{le="+Inf"} 2
nexstor_volume_heal_seconds_sum 43
nexstor_volume_heal_seconds_count 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "nexstor_repairs_failed_total", "nexstor_volume_heal_seconds"); err != nil {
		t.Fatal(err)
	}
}
