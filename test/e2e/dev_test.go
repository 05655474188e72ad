package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/testutil"
)

// volumeJSON is what `nexctl volume get -o json` prints.
type volumeJSON struct {
	Spec struct {
		Name     string `json:"name"`
		UUID     string `json:"uuid"`
		Size     uint64 `json:"size"`
		Replicas uint32 `json:"replicas"`
		Thin     bool   `json:"thin"`
	} `json:"spec"`
	Status struct {
		Phase    string `json:"phase"`
		Reason   string `json:"reason"`
		Healthy  uint32 `json:"healthy"`
		Replicas []struct {
			UUID       string `json:"uuid"`
			Node       string `json:"node"`
			State      string `json:"state"`
			ChildState string `json:"child_state"`
		} `json:"replicas"`
		Target *struct {
			Node     string   `json:"node"`
			Protocol string   `json:"protocol"`
			URI      string   `json:"uri"`
			NQN      string   `json:"nqn"`
			HostNQNs []string `json:"host_nqns"`
			State    string   `json:"state"`
		} `json:"target"`
	} `json:"status"`
}

// devVolume reads a volume of the dev system through a flag-free nexctl,
// as a user of `nexstor dev` would.
func devVolume(t *testing.T, ap, name string) volumeJSON {
	t.Helper()
	var v volumeJSON
	out := plainNexctl(t, "volume", "get", name, "-a", ap, "-o", "json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("volume get %s: %v:\n%s", name, err, out)
	}
	return v
}

// sameReplicas fails the test unless a and b have the same replicas, all
// online children of the volume's nexus.
func sameReplicas(t *testing.T, before, after volumeJSON) {
	t.Helper()
	if len(after.Status.Replicas) != len(before.Status.Replicas) {
		t.Fatalf("replicas %+v, before the restart %+v", after.Status.Replicas, before.Status.Replicas)
	}
	for i, r := range after.Status.Replicas {
		if r.UUID != before.Status.Replicas[i].UUID || r.Node != before.Status.Replicas[i].Node || r.ChildState != "online" {
			t.Fatalf("replicas %+v, before the restart %+v", after.Status.Replicas, before.Status.Replicas)
		}
	}
}

// nvmfIO connects to the NVMe/TCP target at uri (nvmf://host:port/nqn) as
// hostNQN ("" for a generated one) with the Go initiator and runs f on its
// first namespace.
func nvmfIO(t *testing.T, uri, hostNQN string, f func(ns *initiator.Namespace) error) {
	t.Helper()
	addr, nqn, _ := strings.Cut(strings.TrimPrefix(uri, "nvmf://"), "/")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := initiator.Connect(ctx, addr, nqn, initiator.Options{HostNQN: hostNQN, IOQueues: 1, MaxReconnect: 1})
	if err != nil {
		t.Fatalf("connect to %s: %v", uri, err)
	}
	defer c.Close()
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := f(ns); err != nil {
		t.Fatalf("I/O on %s: %v", uri, err)
	}
}

// bannerRE finds one line of the banner of `nexstor dev`.
func bannerRE(t *testing.T, banner string, re *regexp.Regexp) []string {
	t.Helper()
	m := re.FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("the banner lacks %q:\n%s", re, banner)
	}
	return m
}

// uncleanLog is what a nexus logs when it opens over a health record its
// previous instance did not close (and resyncs its children).
const uncleanLog = "the previous instance was not closed"

var (
	devReadyRE  = regexp.MustCompile(`^Press Ctrl-C to stop`)
	devVolumeRE = regexp.MustCompile(`(?m)^\s+volume demo: (\S+) thin, (\d+) replicas? \(([^)]*)\): (\S+), (\d+)/(\d+) healthy$`)
	devTargetRE = regexp.MustCompile(`(?m)^\s+published on (\S+) over (\S+): (\S+)$`)
)

// TestDev starts `nexstor dev` on two nodes and follows its banner: the
// demo volume is online with a replica on each node and published on
// node-0 over NVMe/TCP; nexctl reaches it without flags; the nvme connect
// line, the Go initiator's bench and every node's metrics are where the
// banner says; data written over NVMe/TCP is read back over NBD after the
// printed switch to NBD; a restart brings the volume back as it was left
// (over NBD), with the same replicas, online, and the same data.
func TestDev(t *testing.T) {
	testutil.RequireTool(t, "qemu-img")
	dir := filepath.Join(t.TempDir(), "dev")
	connectRE := regexp.MustCompile(`(?m)nvme connect -t tcp -a (\S+) -s (\d+) -n (\S+?)(?: --hostnqn (\S+))?    #`)
	queryRE := regexp.MustCompile(`(?m)^\s+nexctl -a (\S+) system query$`)
	metricsRE := regexp.MustCompile(`(?m)^\s+node-(\d)\s+(http://(\S+)/metrics)`)
	benchRE := regexp.MustCompile(`(?m)^\s+nexctl bench (nvmf://\S+) --time 5s`)
	switchRE := regexp.MustCompile(`(?m)^\s+nexctl -a (\S+) volume unpublish demo && nexctl -a (\S+) volume publish demo --node node-0 --protocol nbd$`)
	nbdRE := regexp.MustCompile(`(?m)^\s+nbdinfo (nbd://\S+)$`)
	otherRE := regexp.MustCompile(`(?m)^\s+nexctl --engine (\S+) pool list`)
	base := testutil.FreePortRange(t, 14) // grpc, nbd, nvmf, metrics: 2 each; discovery: 1; etcd: 2
	args := []string{"dev", "--nodes", "2", "--data-dir", dir, "--pool-size", "1GiB",
		"--grpc-port", strconv.Itoa(base), "--nbd-port", strconv.Itoa(base + 2), "--nvmf-port", strconv.Itoa(base + 4),
		"--discovery-port", strconv.Itoa(base + 6), "--etcd-port", strconv.Itoa(base + 7), "--metrics-port", strconv.Itoa(base + 10)}

	p, lines := start(t, args...)
	p.waitLine(lines, devReadyRE)
	banner := p.output()
	ap := bannerRE(t, banner, queryRE)[1]
	vm := bannerRE(t, banner, devVolumeRE)
	if vm[1] != "512MiB" || vm[2] != "2" || vm[3] != "node-0, node-1" || vm[4] != "online" || vm[5] != "2" || vm[6] != "2" {
		t.Fatalf("banner volume line %q, want 512MiB, 2 replicas on node-0 and node-1, online, 2/2 healthy", vm[0])
	}
	tm := bannerRE(t, banner, devTargetRE)
	if tm[1] != "node-0" || tm[2] != "nvmf" {
		t.Fatalf("banner target line %q, want node-0 over nvmf", tm[0])
	}
	ranks := devMembers(t, ap)
	if len(ranks) != 2 || ranks[0] == ranks[1] {
		t.Fatalf("members %v, want ranks 0 and 1", ranks)
	}
	v := devVolume(t, ap, "demo")
	if v.Spec.Size != 512*mib || !v.Spec.Thin || v.Spec.Replicas != 2 || v.Status.Phase != "online" || v.Status.Healthy != 2 ||
		len(v.Status.Replicas) != 2 || v.Status.Replicas[0].Node == v.Status.Replicas[1].Node || v.Status.Target == nil ||
		v.Status.Target.Node != "node-0" || v.Status.Target.URI != tm[3] {
		t.Fatalf("demo volume %+v, banner %q", v, tm[0])
	}
	if list := plainNexctl(t, "volume", "list", "-a", ap); !strings.Contains(list, "demo") {
		t.Fatalf("volume list does not show demo:\n%s", list)
	}
	conn := bannerRE(t, banner, connectRE)
	host, port, _ := net.SplitHostPort(strings.SplitN(strings.TrimPrefix(tm[3], "nvmf://"), "/", 2)[0])
	if conn[1] != host || conn[2] != port || conn[3] != v.Status.Target.NQN {
		t.Fatalf("nvme connect line %q does not match the target %s (%s)", conn[0], tm[3], v.Status.Target.NQN)
	}
	hostNQN := conn[4] // this machine's, when /etc/nvme/hostnqn exists
	if (len(v.Status.Target.HostNQNs) == 1) != (hostNQN != "") || hostNQN != "" && v.Status.Target.HostNQNs[0] != hostNQN {
		t.Fatalf("published to hosts %v, connect line %q", v.Status.Target.HostNQNs, conn[0])
	}
	other := bannerRE(t, banner, otherRE)[1]
	plainNexctl(t, "--engine", other, "pool", "get", "p0")

	// Every node serves metrics on port+i; only node 0, the leader, has
	// the volume.
	ms := metricsRE.FindAllStringSubmatch(banner, -1)
	if len(ms) != 2 || ms[0][1] != "0" || ms[1][1] != "1" || ms[0][3] != fmt.Sprintf("127.0.0.1:%d", base+10) ||
		ms[1][3] != fmt.Sprintf("127.0.0.1:%d", base+11) {
		t.Fatalf("banner metrics lines %q, want node 0 and 1 on ports %d and %d", ms, base+10, base+11)
	}
	fams := scrapeMetrics(t, ms[0][3])
	l := map[string]string{"volume": "demo"}
	if got := sample(t, fams, "nexstor_volume_phase", map[string]string{"volume": "demo", "phase": "online"}); got != 1 {
		t.Errorf("node 0: volume phase online = %v", got)
	}
	for name, want := range map[string]float64{"nexstor_volume_replicas_desired": 2, "nexstor_volume_replicas_healthy": 2,
		"nexstor_volume_size_bytes": 512 * mib, "nexstor_mgmt_leader": 1, "nexstor_engine_up": 1} {
		if got := sample(t, fams, name, l); got != want {
			t.Errorf("node 0: %s = %v, want %v", name, got, want)
		}
	}
	fams = scrapeMetrics(t, ms[1][3])
	if got := sample(t, fams, "nexstor_engine_up", nil); got != 1 {
		t.Errorf("node 1: nexstor_engine_up = %v", got)
	}
	for _, name := range []string{"nexstor_volume_phase", "nexstor_mgmt_leader"} {
		if _, ok := fams[name]; ok {
			t.Errorf("node 1, not an access point, exports %s", name)
		}
	}

	// The printed bench line loads the volume (reads only: the data stays).
	var bench struct {
		Ops    int64   `json:"ops"`
		IOPS   float64 `json:"iops"`
		Errors int64   `json:"errors"`
	}
	benchArgs := []string{"bench", bannerRE(t, banner, benchRE)[1], "--rw", "read", "--time", "200ms", "--qd", "4"}
	if hostNQN != "" {
		benchArgs = append(benchArgs, "--hostnqn", hostNQN)
	}
	nexctlJSON(t, ap, &bench, benchArgs...)
	if bench.Ops == 0 || bench.IOPS <= 0 || bench.Errors != 0 {
		t.Fatalf("bench %+v", bench)
	}
	want := make([]byte, 4*mib)
	rand.Read(want)
	nvmfIO(t, tm[3], hostNQN, func(ns *initiator.Namespace) error {
		if ns.Size() != 512*mib {
			return fmt.Errorf("namespace of %d bytes, want 512MiB", ns.Size())
		}
		if _, err := ns.WriteAt(want, 0); err != nil {
			return err
		}
		return ns.Flush()
	})

	// The shipped Grafana dashboard queries only what the nodes export.
	checkDashboard(t, scrapeMetrics(t, ms[0][3]), scrapeMetrics(t, ms[1][3]))

	// The printed switch to NBD, then the printed NBD URI: the same data.
	sw := bannerRE(t, banner, switchRE)
	plainNexctl(t, "volume", "unpublish", "demo", "-a", sw[1])
	plainNexctl(t, "volume", "publish", "demo", "--node", "node-0", "--protocol", "nbd", "-a", sw[2])
	uri := bannerRE(t, banner, nbdRE)[1]
	if got := readHead(t, uri, 4*mib); !bytes.Equal(got, want) {
		t.Fatal("data written over NVMe/TCP is not what NBD reads")
	}
	before := devVolume(t, ap, "demo")
	if err := p.stop(syscall.SIGINT); err != nil {
		t.Fatalf("dev stop: %v\n%s", err, p.output())
	}

	// The restart keeps the volume as it was left: over NBD.
	p, lines = start(t, args...)
	p.waitLine(lines, devReadyRE)
	banner = p.output()
	if strings.Contains(banner, uncleanLog) {
		t.Fatalf("the volume's nexus was not closed cleanly at the stop:\n%s", banner)
	}
	if vm := bannerRE(t, banner, devVolumeRE); vm[4] != "online" || vm[5] != "2" {
		t.Fatalf("banner volume line after the restart %q, want online, 2/2 healthy", vm[0])
	}
	if tm := bannerRE(t, banner, devTargetRE); tm[2] != "nbd" || tm[3] != uri {
		t.Fatalf("banner target line after the restart %q, want %s", tm[0], uri)
	}
	if again := devMembers(t, ap); fmt.Sprint(again) != fmt.Sprint(ranks) {
		t.Fatalf("restart changed the members: %v -> %v", ranks, again)
	}
	after := devVolume(t, ap, "demo")
	if after.Spec.UUID != before.Spec.UUID || after.Status.Phase != "online" || after.Status.Healthy != 2 {
		t.Fatalf("demo volume after the restart %+v, before %+v", after, before)
	}
	sameReplicas(t, before, after)
	if got := readHead(t, uri, 4*mib); !bytes.Equal(got, want) {
		t.Fatal("data written before the restart differs")
	}
	if err := p.stop(syscall.SIGINT); err != nil {
		t.Fatalf("dev stop: %v\n%s", err, p.output())
	}
}

// devMembers returns the joined members of the dev system by rank, through
// a flag-free `nexctl system query`.
func devMembers(t *testing.T, ap string) map[uint32]string {
	t.Helper()
	var q struct {
		Members []struct {
			Rank  uint32 `json:"rank"`
			UUID  string `json:"uuid"`
			State string `json:"state"`
		} `json:"members"`
	}
	out := plainNexctl(t, "system", "query", "-a", ap, "-o", "json")
	if err := json.Unmarshal([]byte(out), &q); err != nil {
		t.Fatalf("system query: %v:\n%s", err, out)
	}
	got := map[uint32]string{}
	for _, m := range q.Members {
		if m.State != "joined" {
			t.Fatalf("member %d is %s:\n%s", m.Rank, m.State, out)
		}
		got[m.Rank] = m.UUID
	}
	return got
}

// TestDevRestartKeepsNexus runs `nexstor dev` on three nodes, with its demo
// volume (a replica on every node, its nexus on node-0 with the system
// health store) and a 3-way nexus made by hand on node 0 (its own replica
// and one on each other node, over NVMe/TCP, with the local health store),
// writes to both, stops it with SIGINT and starts it again: both come back
// online with all three children, no rebuild ran, and the data is the
// same. Stopping a node before the nexuses closed would fail their closing
// flush and leave the remote children recorded out of date; stopping the
// management service first would leave the volume's record unsaved.
func TestDevRestartKeepsNexus(t *testing.T) {
	testutil.RequireTool(t, "nbdcopy")
	testutil.RequireTool(t, "qemu-img")
	dir := filepath.Join(t.TempDir(), "dev")
	base := testutil.FreePortRange(t, 16) // grpc, nbd, nvmf: 3 each; discovery: 1; etcd: 2
	args := []string{"dev", "--nodes", "3", "--data-dir", dir, "--pool-size", "256MiB", "--metrics-port", "-1",
		"--demo-size", "64MiB",
		"--grpc-port", strconv.Itoa(base), "--nbd-port", strconv.Itoa(base + 3), "--nvmf-port", strconv.Itoa(base + 6),
		"--discovery-port", strconv.Itoa(base + 9), "--etcd-port", strconv.Itoa(base + 10)}
	engine := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", base+i) }
	connectRE := regexp.MustCompile(`(?m)nvme connect -t tcp .*--hostnqn (\S+)`)

	p, lines := start(t, args...)
	p.waitLine(lines, devReadyRE)
	hostNQN := ""
	if m := connectRE.FindStringSubmatch(p.output()); m != nil {
		hostNQN = m[1] // this machine's, when /etc/nvme/hostnqn exists
	}
	vol := devVolume(t, engine(0), "demo")
	if vol.Status.Phase != "online" || vol.Status.Healthy != 3 || vol.Status.Target == nil || vol.Status.Target.Protocol != "nvmf" {
		t.Fatalf("demo volume %+v", vol)
	}
	var r0, r1, r2 replicaJSON
	nexctlJSON(t, engine(0), &r0, "replica", "create", "r0", "--pool", "p0", "--size", "16MiB", "--thin")
	nexctlJSON(t, engine(1), &r1, "replica", "create", "r1", "--pool", "p0", "--size", "16MiB", "--thin")
	nexctlJSON(t, engine(2), &r2, "replica", "create", "r2", "--pool", "p0", "--size", "16MiB", "--thin")
	nexctlJSON(t, engine(1), &r1, "replica", "share", "r1", "--protocol", "nvmf")
	nexctlJSON(t, engine(2), &r2, "replica", "share", "r2", "--protocol", "nvmf")
	var nx nexusJSON
	nexctlJSON(t, engine(0), &nx, "nexus", "create", "vol", "--child", "bdev:///"+r0.UUID,
		"--child", r1.Share.URI, "--child", r2.Share.URI)
	nexctlJSON(t, engine(0), &nx, "nexus", "publish", "vol", "--protocol", "nbd")
	if nx.State != "online" || len(nx.Children) != 3 || nx.Share == nil {
		t.Fatalf("nexus %+v", nx)
	}
	want := make([]byte, 4*mib)
	rand.Read(want)
	writeFlushed(t, nx.Share.URI, want)
	wantVol := make([]byte, 4*mib)
	rand.Read(wantVol)
	nvmfIO(t, vol.Status.Target.URI, hostNQN, func(ns *initiator.Namespace) error {
		if _, err := ns.WriteAt(wantVol, 8*mib); err != nil {
			return err
		}
		return ns.Flush()
	})
	if err := p.stop(syscall.SIGINT); err != nil {
		t.Fatalf("dev stop: %v\n%s", err, p.output())
	}

	p, lines = start(t, args...)
	p.waitLine(lines, devReadyRE)
	banner := p.output()
	if strings.Contains(banner, uncleanLog) {
		t.Fatalf("a nexus was not closed cleanly at the stop:\n%s", banner)
	}
	// The banner lists the nexuses as they came back.
	for _, name := range []string{"demo", "vol"} {
		m := bannerRE(t, banner, regexp.MustCompile(`(?m)^\s+`+name+` on (\S+)\s+(\S+)\s+(\d+)/(\d+) children online`))
		if m[1] != engine(0) || m[2] != "online" || m[3] != "3" || m[4] != "3" {
			t.Fatalf("banner line %q, want %s online 3/3 on %s", m[0], name, engine(0))
		}
	}
	if m := bannerRE(t, banner, devVolumeRE); m[4] != "online" || m[5] != "3" || m[6] != "3" {
		t.Fatalf("banner volume line %q, want online, 3/3 healthy", m[0])
	}
	after := devVolume(t, engine(0), "demo")
	if after.Status.Phase != "online" || after.Status.Healthy != 3 || after.Status.Target == nil ||
		after.Status.Target.URI != vol.Status.Target.URI {
		t.Fatalf("demo volume after the restart %+v, before %+v", after, vol)
	}
	sameReplicas(t, vol, after)
	nexctlJSON(t, engine(0), &nx, "nexus", "get", "vol")
	if nx.State != "online" || len(nx.Children) != 3 {
		t.Fatalf("nexus after the restart: %+v", nx)
	}
	for _, c := range nx.Children {
		if c.State != "online" {
			t.Fatalf("child %s is %s (%s) after a clean restart: %+v", c.URI, c.State, c.Reason, nx)
		}
	}
	for _, name := range []string{"vol", "demo"} {
		var rebuilds []map[string]any
		nexctlJSON(t, engine(0), &rebuilds, "nexus", "rebuild", "status", name)
		if len(rebuilds) != 0 {
			t.Fatalf("a rebuild of %s ran after a clean restart: %v", name, rebuilds)
		}
	}
	if nx.Share == nil {
		t.Fatalf("the publication did not come back: %+v", nx)
	}
	if got := readHead(t, nx.Share.URI, 4*mib); !bytes.Equal(got, want) {
		t.Fatal("data written to the nexus before the restart differs")
	}
	nvmfIO(t, after.Status.Target.URI, hostNQN, func(ns *initiator.Namespace) error {
		got := make([]byte, len(wantVol))
		if _, err := ns.ReadAt(got, 8*mib); err != nil {
			return err
		}
		if !bytes.Equal(got, wantVol) {
			return fmt.Errorf("data written to the demo volume before the restart differs")
		}
		return nil
	})
	if err := p.stop(syscall.SIGINT); err != nil {
		t.Fatalf("dev stop: %v\n%s", err, p.output())
	}
}
