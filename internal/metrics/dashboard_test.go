package metrics

import (
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/nexstor/nexstor/internal/testutil"
)

// TestDashboardNamesDescribed: every metric the Grafana dashboard queries
// is one this package's collectors (or client_golang's Go and process
// collectors, which every server registers) describe, with the right
// suffixes for histograms. The real scrape in test/e2e checks the same
// names against a running system; this catches series that exist only
// while something happens (a rebuild, a child out of service).
func TestDashboardNamesDescribed(t *testing.T) {
	qs, err := testutil.DashboardQueries(filepath.Join(testutil.RepoRoot(t), testutil.DashboardPath))
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) < 20 {
		t.Fatalf("%d queries in the dashboard: not the shipped one?", len(qs))
	}
	described := map[string]bool{}
	ch := make(chan *prometheus.Desc)
	go func() {
		for _, c := range []prometheus.Collector{NewCollector(Static(sampleEngine())), NewVolumeCollector(fixedVolumes(VolumeView{}, nil)),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
			c.Describe(ch)
		}
		close(ch)
	}()
	for d := range ch {
		described[descName(d)] = true
	}
	for _, q := range qs {
		for _, name := range q.Metrics {
			if !slices.ContainsFunc(testutil.MetricFamilyCandidates(name), func(c string) bool { return described[c] }) {
				t.Errorf("panel %q queries %s, which no collector describes:\n  %s", q.Panel, name, q.Expr)
			}
		}
	}
}

var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

// descName is the metric name of d (Desc keeps it unexported).
func descName(d *prometheus.Desc) string {
	if m := fqNameRE.FindStringSubmatch(d.String()); m != nil {
		return m[1]
	}
	return ""
}
