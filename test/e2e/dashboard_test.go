package e2e

import (
	"path/filepath"
	"slices"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/nexstor/nexstor/internal/testutil"
)

// transientSeries exist only while something happens, so an idle system's
// scrape lacks them; internal/metrics' TestDashboardNamesDescribed checks
// that the collectors describe them.
var transientSeries = map[string]string{
	"nexstor_nexus_rebuild_done_bytes":   "while a rebuild runs",
	"nexstor_nexus_rebuild_size_bytes":   "while a rebuild runs",
	"nexstor_nexus_child_out_of_service": "while a child is faulted or offline",
	"nexstor_nexus_child_dirty_bytes":    "while a child is offline",
}

// checkDashboard checks every query of the shipped Grafana dashboard
// against real scrapes of a system's nodes (the leader's among them):
// each metric it names is a family some node exports, or one of the
// transient series, which must then be absent (the system is idle and
// whole, so their presence would mean the list is stale).
func checkDashboard(t *testing.T, scrapes ...map[string]*dto.MetricFamily) {
	t.Helper()
	qs, err := testutil.DashboardQueries(filepath.Join(testutil.RepoRoot(t), testutil.DashboardPath))
	if err != nil {
		t.Fatal(err)
	}
	exported := func(name string) bool {
		return slices.ContainsFunc(testutil.MetricFamilyCandidates(name), func(c string) bool {
			return slices.ContainsFunc(scrapes, func(f map[string]*dto.MetricFamily) bool { _, ok := f[c]; return ok })
		})
	}
	for _, q := range qs {
		for _, name := range q.Metrics {
			if why, ok := transientSeries[name]; ok {
				if exported(name) {
					t.Errorf("%s, said to exist only %s, is exported by an idle, whole system", name, why)
				}
				continue
			}
			if !exported(name) {
				t.Errorf("dashboard panel %q queries %s, which no node exports:\n  %s", q.Panel, name, q.Expr)
			}
		}
	}
}
