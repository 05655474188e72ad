package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
)

// TestRunDev runs a three-node system in-process twice on the same data
// dir: the first run formats and admits ranks 0-2, the second keeps them.
func TestRunDev(t *testing.T) {
	dir := t.TempDir()
	base := testutil.FreePortRange(t, 14) // grpc, nvmf, nbd: 3 each; etcd: 2; discovery: 1; spare
	o := DevOptions{Nodes: 3, DataDir: dir, GRPCPort: base, NVMfPort: base + 3, NBDPort: base + 6, EtcdPort: base + 9,
		DiscoveryPort: base + 11, MetricsPort: base + 12, PoolSize: "64MiB", HeartbeatInterval: 100 * time.Millisecond,
		Demo: "demo", DemoSize: 8 << 20}
	var metricsErr error
	var shares []string
	runOnce := func() map[string]uint32 {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		got := map[string]uint32{}
		shares = nil
		o.Ready = func(sys DevSystem) {
			for _, m := range sys.Members {
				got[m.Uuid] = m.Rank
			}
			if sys.Demo != nil {
				for _, sh := range sys.Demo.Shares {
					shares = append(shares, sh.Uri)
				}
			}
			metricsErr = checkDevMetrics(sys.MetricsURL, fmt.Sprintf("127.0.0.1:%d", base+12))
			cancel()
		}
		if err := RunDev(ctx, o); err != nil {
			t.Fatalf("RunDev: %v", err)
		}
		if len(got) != 3 {
			t.Fatalf("members %v: the system did not come up", got)
		}
		if metricsErr != nil {
			t.Fatalf("node 0 metrics: %v", metricsErr)
		}
		return got
	}
	first := runOnce()
	var ranks []int
	for _, r := range first {
		ranks = append(ranks, int(r))
	}
	sort.Ints(ranks)
	if fmt.Sprint(ranks) != "[0 1 2]" {
		t.Fatalf("ranks %v, want 0-2", ranks)
	}
	firstShares := shares
	if len(firstShares) != 2 || !strings.HasPrefix(firstShares[0], "nbd://") || !strings.HasPrefix(firstShares[1], "nvmf://") {
		t.Fatalf("demo shares %v, want nbd and nvmf", firstShares)
	}
	second := runOnce()
	if fmt.Sprint(first) != fmt.Sprint(second) {
		t.Fatalf("restart changed members: %v -> %v", first, second)
	}
	if fmt.Sprint(firstShares) != fmt.Sprint(shares) {
		t.Fatalf("restart changed the demo shares: %v -> %v", firstShares, shares)
	}
}

// TestDevConfigsNodeNames: dev nodes are named node-0, node-1, ... so that
// commands can name them.
func TestDevConfigsNodeNames(t *testing.T) {
	cfgs, err := DevConfigs(DevOptions{Nodes: 3, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cfgs {
		if want := fmt.Sprintf("node-%d", i); c.NodeName != want {
			t.Errorf("dev node %d is named %q, want %q", i, c.NodeName, want)
		}
	}
}

// checkDevMetrics scrapes node 0's metrics: they are where DevOptions put
// them, the engine runs and the dev pool is online.
func checkDevMetrics(url, addr string) error {
	if url != "http://"+addr+"/metrics" {
		return fmt.Errorf("metrics URL %q, want it on %s", url, addr)
	}
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	for _, want := range []string{"nexstor_engine_up 1\n", `nexstor_pool_state{pool="p0",state="online"} 1` + "\n"} {
		if !strings.Contains(string(body), want) {
			return fmt.Errorf("scrape lacks %q:\n%s", want, body)
		}
	}
	return nil
}
