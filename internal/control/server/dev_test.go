package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/metrics"
	"github.com/nexstor/nexstor/internal/mgmt"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/testutil"
)

// TestRunDev runs a three-node system in-process twice on the same data
// dir: the first run formats and admits ranks 0-2 and creates the demo
// volume, published on node 0 to one host NQN; the second keeps the ranks
// and brings the volume back online with the same replicas, target and
// data. Every node serves metrics; node 0's, the leader's, has the volume.
func TestRunDev(t *testing.T) {
	dir := t.TempDir()
	// grpc, nvmf, nbd, metrics: 3 each; etcd: 2; discovery: 1; spare
	base := testutil.FreePortRange(t, 16)
	const hostNQN = "nqn.2014-08.org.nvmexpress:uuid:4a1e0f3c-6d2b-4f7e-9c1a-2b3d4e5f6a7b"
	o := DevOptions{Nodes: 3, DataDir: dir, GRPCPort: base, NVMfPort: base + 3, NBDPort: base + 6, EtcdPort: base + 9,
		DiscoveryPort: base + 11, MetricsPort: base + 12, PoolSize: "64MiB", HeartbeatInterval: 100 * time.Millisecond,
		Demo: "demo", DemoSize: 8 << 20, DemoHostNQN: hostNQN}
	pattern := bytes.Repeat([]byte("nexstor dev "), 4096/12+1)[:4096]
	var logs syncBuffer
	o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	runOnce := func(during func(sys DevSystem) error) (map[string]uint32, *mgmtv1.Volume) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		logs.Reset()
		got := map[string]uint32{}
		var demo *mgmtv1.Volume
		var readyErr error
		o.Ready = func(sys DevSystem) {
			defer cancel()
			for _, m := range sys.Members {
				got[m.Uuid] = m.Rank
			}
			demo = sys.Demo
			if readyErr = checkDevMetrics(sys, base+12); readyErr != nil {
				return
			}
			readyErr = during(sys)
		}
		if err := RunDev(ctx, o); err != nil {
			t.Fatalf("RunDev: %v", err)
		}
		if len(got) != 3 {
			t.Fatalf("members %v: the system did not come up", got)
		}
		if readyErr != nil {
			t.Fatal(readyErr)
		}
		return got, demo
	}
	first, v1 := runOnce(func(sys DevSystem) error {
		return devIO(sys.Demo, hostNQN, func(ns *initiator.Namespace) error {
			if _, err := ns.WriteAt(pattern, 1<<20); err != nil {
				return err
			}
			return ns.Flush()
		})
	})
	var ranks []int
	for _, r := range first {
		ranks = append(ranks, int(r))
	}
	sort.Ints(ranks)
	if fmt.Sprint(ranks) != "[0 1 2]" {
		t.Fatalf("ranks %v, want 0-2", ranks)
	}
	tg := v1.GetStatus().GetTarget()
	if v1.GetStatus().GetPhase() != "online" || v1.GetStatus().GetHealthy() != 3 || len(v1.GetStatus().GetReplicas()) != 3 ||
		!v1.GetSpec().GetThin() || v1.GetSpec().GetSize() != 8<<20 || tg == nil || tg.Node != "node-0" || tg.Protocol != "nvmf" ||
		fmt.Sprint(tg.HostNqns) != "["+hostNQN+"]" {
		t.Fatalf("demo volume %v", v1)
	}
	var got []byte
	second, v2 := runOnce(func(sys DevSystem) error {
		return devIO(sys.Demo, hostNQN, func(ns *initiator.Namespace) error {
			got = make([]byte, len(pattern))
			_, err := ns.ReadAt(got, 1<<20)
			return err
		})
	})
	if fmt.Sprint(first) != fmt.Sprint(second) {
		t.Fatalf("restart changed members: %v -> %v", first, second)
	}
	// The volume's nexus closed while the management service still ran,
	// so its record was saved clean: no resync at the restart.
	if l := logs.String(); strings.Contains(l, "the previous instance was not closed") {
		t.Fatalf("the demo volume's nexus was not closed cleanly at the stop:\n%s", l)
	}
	if v2.GetSpec().GetUuid() != v1.GetSpec().GetUuid() || v2.GetStatus().GetPhase() != "online" || v2.GetStatus().GetHealthy() != 3 ||
		v2.GetStatus().GetTarget().GetUri() != tg.Uri {
		t.Fatalf("demo volume after the restart %v, before %v", v2, v1)
	}
	for i, r := range v2.GetStatus().GetReplicas() {
		if r.Uuid != v1.GetStatus().GetReplicas()[i].Uuid || r.ChildState != "online" {
			t.Fatalf("replicas after the restart %v, before %v", v2.GetStatus().GetReplicas(), v1.GetStatus().GetReplicas())
		}
	}
	if !bytes.Equal(got, pattern) {
		t.Fatal("data written to the demo volume before the restart differs after it")
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers (a log).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

// devIO connects to the demo volume's NVMe/TCP target as hostNQN and runs
// f on its namespace.
func devIO(v *mgmtv1.Volume, hostNQN string, f func(ns *initiator.Namespace) error) error {
	t := v.GetStatus().GetTarget()
	if t == nil || t.Protocol != "nvmf" {
		return fmt.Errorf("the demo volume is not published over nvmf: %v", v)
	}
	addr, _, _ := strings.Cut(strings.TrimPrefix(t.Uri, "nvmf://"), "/")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := initiator.Connect(ctx, addr, t.Nqn, initiator.Options{HostNQN: hostNQN, IOQueues: 1, MaxReconnect: 1})
	if err != nil {
		return err
	}
	defer c.Close()
	ns, err := c.Namespace(1)
	if err != nil {
		return err
	}
	return f(ns)
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

// checkDevMetrics scrapes every node's metrics: node i's are on port+i,
// each engine runs with its dev pool online, and only node 0, where the
// management service leads, exports the demo volume, online with its three
// replicas healthy.
func checkDevMetrics(sys DevSystem, port int) error {
	if len(sys.MetricsURLs) != len(sys.Configs) || sys.MetricsURL != sys.MetricsURLs[0] {
		return fmt.Errorf("metrics URLs %v (node 0: %s) for %d nodes", sys.MetricsURLs, sys.MetricsURL, len(sys.Configs))
	}
	for i, url := range sys.MetricsURLs {
		if want := fmt.Sprintf("http://127.0.0.1:%d/metrics", port+i); url != want {
			return fmt.Errorf("node %d metrics at %s, want %s", i, url, want)
		}
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		want := []string{"nexstor_engine_up 1\n", `nexstor_pool_state{pool="p0",state="online"} 1` + "\n"}
		volume := []string{"nexstor_mgmt_leader 1\n", `nexstor_volume_phase{phase="online",volume="demo"} 1` + "\n",
			`nexstor_volume_phase{phase="degraded",volume="demo"} 0` + "\n",
			`nexstor_volume_replicas_desired{volume="demo"} 3` + "\n", `nexstor_volume_replicas_healthy{volume="demo"} 3` + "\n",
			`nexstor_volume_size_bytes{volume="demo"} 8.388608e+06` + "\n"}
		if i == 0 {
			want = append(want, volume...)
		} else if strings.Contains(string(body), "nexstor_volume_") || strings.Contains(string(body), "nexstor_mgmt_leader") {
			return fmt.Errorf("node %d, not an access point, exports volume series:\n%s", i, body)
		}
		for _, w := range want {
			if !strings.Contains(string(body), w) {
				return fmt.Errorf("node %d scrape lacks %q:\n%s", i, w, body)
			}
		}
	}
	return nil
}

// TestVolumePhasesMatch: the phases the metrics export are those the
// management service derives.
func TestVolumePhasesMatch(t *testing.T) {
	want := []string{mgmt.PhaseCreating, mgmt.PhaseOnline, mgmt.PhaseDegraded, mgmt.PhaseFaulted, mgmt.PhaseUnknown, mgmt.PhaseDeleting}
	if fmt.Sprint(metrics.VolumePhases) != fmt.Sprint(want) {
		t.Fatalf("metrics.VolumePhases %v, the management service's phases %v", metrics.VolumePhases, want)
	}
}
