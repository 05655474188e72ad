package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/nexstor/nexstor/internal/testutil"
)

var metricsRE = regexp.MustCompile(`msg="metrics serving" addr=(\S+)`)

// scrapeMetrics fetches and parses a node's /metrics.
func scrapeMetrics(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// sample returns the value of the gauge or counter name{labels}.
func sample(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no %s in the scrape", name)
	}
next:
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
				continue next
			}
		}
		if m.Gauge != nil {
			return m.GetGauge().GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("no %s%v in the scrape", name, labels)
	return 0
}

// TestMetrics starts a real `nexstor server --metrics`, writes through an
// NBD share, and checks that the scraped pool and replica figures are
// those nexctl reports, and the share's I/O counters saw the writes. A
// second server asking for the same metrics port refuses to start, naming
// metrics.listen.
func TestMetrics(t *testing.T) {
	testutil.RequireTool(t, "nbdcopy")
	dir := t.TempDir()
	p, lines := start(t, "server", "--insecure", "--data-dir", filepath.Join(dir, "data"), "--grpc", "127.0.0.1:0",
		"--nbd", "127.0.0.1:0", "--nvmf", "", "--discovery", "", "--metrics", "127.0.0.1:0")
	maddr := p.waitLine(lines, metricsRE)[1]
	eng := p.waitLine(lines, servingRE)[1]

	mustNexctl(t, eng, "pool", "create", "p0", "file://"+filepath.Join(dir, "p0.img")+"?size=64MiB", "--cluster-size", "1MiB")
	var rep replicaJSON
	nexctlJSON(t, eng, &rep, "replica", "create", "r0", "--pool", "p0", "--size", "8MiB", "--thin")
	nexctlJSON(t, eng, &rep, "replica", "share", "r0", "--protocol", "nbd")

	comparePool := func(fams map[string]*dto.MetricFamily) poolJSON {
		t.Helper()
		var pool poolJSON
		nexctlJSON(t, eng, &pool, "pool", "get", "p0")
		l := map[string]string{"pool": "p0"}
		for name, want := range map[string]int64{
			"nexstor_pool_capacity_bytes":  pool.Capacity,
			"nexstor_pool_allocated_bytes": pool.Allocated,
			"nexstor_pool_committed_bytes": pool.Committed,
			"nexstor_pool_replicas":        int64(pool.Replicas),
		} {
			if got := sample(t, fams, name, l); got != float64(want) {
				t.Errorf("%s = %v, nexctl pool get says %d", name, got, want)
			}
		}
		if got := sample(t, fams, "nexstor_pool_state", map[string]string{"pool": "p0", "state": pool.State}); got != 1 {
			t.Errorf("nexstor_pool_state{state=%q} = %v, want 1", pool.State, got)
		}
		return pool
	}
	before := comparePool(scrapeMetrics(t, maddr))
	if before.Allocated != 0 || before.Replicas != 1 {
		t.Fatalf("pool before any write: %+v", before)
	}

	writeFlushed(t, rep.Share.URI, bytes.Repeat([]byte{0x6e}, 2<<20))
	fams := scrapeMetrics(t, maddr)
	after := comparePool(fams)
	if after.Allocated < 2<<20 {
		t.Fatalf("pool allocated %d bytes after a 2MiB write", after.Allocated)
	}
	share := map[string]string{"pool": "p0", "replica": "r0", "protocol": "nbd", "op": "write"}
	if got := sample(t, fams, "nexstor_replica_io_bytes_total", share); got != 2<<20 {
		t.Errorf("replica write bytes %v, want 2MiB", got)
	}
	if got := sample(t, fams, "nexstor_replica_allocated_bytes", map[string]string{"pool": "p0", "replica": "r0"}); got != float64(after.Allocated) {
		t.Errorf("replica allocated %v, pool allocated %d (its only replica)", got, after.Allocated)
	}
	if got := sample(t, fams, "nexstor_engine_up", nil); got != 1 {
		t.Errorf("nexstor_engine_up %v", got)
	}
	if _, ok := fams["process_resident_memory_bytes"]; !ok {
		t.Error("no process metrics")
	}

	// The metrics port is taken: a second server says so and does not
	// start.
	out, err := exec.Command(testutil.BuildBinary(t, "nexstor"), "server", "--insecure", "--data-dir", filepath.Join(dir, "data2"),
		"--grpc", "127.0.0.1:0", "--nbd", "", "--nvmf", "", "--discovery", "", "--metrics", maddr).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "metrics.listen "+maddr) || !strings.Contains(string(out), "--metrics") {
		t.Fatalf("second server on metrics port %s: %v\n%s", maddr, err, out)
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop: %v\n%s", err, p.output())
	}
	if _, err := http.Get(fmt.Sprintf("http://%s/metrics", maddr)); err == nil {
		t.Fatal("metrics still served after the server stopped")
	}
}

// TestMetricsDisabled: --metrics "" serves no metrics, so that several
// engines share a host.
func TestMetricsDisabled(t *testing.T) {
	p, lines := start(t, "server", "--insecure", "--data-dir", t.TempDir(), "--grpc", "127.0.0.1:0",
		"--nbd", "", "--nvmf", "", "--discovery", "", "--metrics", "")
	p.waitLine(lines, servingRE)
	// The metrics listener, when there is one, logs before the engine.
	if strings.Contains(p.output(), "metrics serving") {
		t.Fatalf("metrics served with --metrics \"\":\n%s", p.output())
	}
}
