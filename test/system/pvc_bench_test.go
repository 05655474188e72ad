package system

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nexstor/nexstor/internal/nvmehost"
	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

// pvcBenchSize is the size of each volume of the PVC benchmark: a small
// PersistentVolumeClaim, which mkfs.ext4 gives a 32 MiB journal.
const pvcBenchSize = 1 << 30

// TestPVCStaged is the PVC-to-staged benchmark, not a test: it runs only
// with NEXSTOR_BENCH_PVC=ROUNDS (bench/pvc.sh). On 3 `nexstor server
// --control` processes on loopback, `nexstor csi --mode controller` (over
// its unix socket, as the external-provisioner and external-attacher call
// it) creates a thin 3-replica NVMe/TCP volume of 1 GiB and publishes it
// for node0, whose host NQN the guest takes; in a QEMU guest the CSI node
// plugin's code (the csi-stage step of the guest agent: internal/csi's
// Node over the guest's kernel) stages it with ext4, so the stage includes
// mkfs. Each round times, separately, CreateVolume, ControllerPublishVolume
// (on the host) and NodeStageVolume (in the guest's clock), then unstages,
// stages the now formatted volume again (no mkfs), unstages, and
// unpublishes and deletes it. Then, as the baseline without CSI, a second
// volume made the same way is attached by the guest kernel directly:
// connect (until the namespace's block device is there), mke2fs with the
// plugin's options, mount. It writes Markdown to NEXSTOR_BENCH_OUT (or the
// log).
func TestPVCStaged(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("NEXSTOR_BENCH_PVC"))
	if rounds <= 0 {
		t.Skip("a benchmark: bench/pvc.sh runs it (NEXSTOR_BENCH_PVC=ROUNDS)")
	}
	env := qemuvm.Require(t)
	c := newCluster(t, clusterOptions{nodes: 3, accessPoints: 1, insecure: true, poolSize: "2GiB"})
	c.start()
	for _, n := range c.nodes {
		n.waitLog("waiting in maintenance mode", 60*time.Second)
	}
	c.mustNexctl("storage", "format", "-l", c.hosts())
	c.waitMembers("all joined", 60*time.Second, c.allState("joined"))
	consumer := c.nodes[0].name

	ctl := startCSIController(t, c)
	loadStart := loadAvg()

	rwo := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}}}
	var (
		mu   sync.Mutex
		host = map[string][]float64{} // step -> ms, by round, as the host timed them
		vols = map[string]string{}    // barrier round key -> volume ID
	)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	// provision creates and publishes a volume for the consumer, timing
	// each call, and returns the guest's view of its publish context.
	provision := func(ctx context.Context, key string, timed bool) (map[string]string, error) {
		start := time.Now()
		cv, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-" + uuid.NewString(),
			VolumeCapabilities: []*csi.VolumeCapability{rwo}, CapacityRange: &csi.CapacityRange{RequiredBytes: pvcBenchSize},
			Parameters: map[string]string{"repl": "3", "thin": "true", "protocol": "nvmf"}})
		if err != nil {
			return nil, fmt.Errorf("CreateVolume: %w", err)
		}
		created := time.Now()
		id := cv.GetVolume().GetVolumeId()
		mu.Lock()
		vols[key] = id
		mu.Unlock()
		pub, err := ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: consumer, VolumeCapability: rwo})
		if err != nil {
			return nil, fmt.Errorf("ControllerPublishVolume %s: %w", id, err)
		}
		published := time.Now()
		if timed {
			mu.Lock()
			host["create"] = append(host["create"], ms(created.Sub(start)))
			host["publish"] = append(host["publish"], ms(published.Sub(created)))
			mu.Unlock()
		}
		pc := pub.GetPublishContext()
		// The guest reaches this machine's loopback as 10.0.2.2.
		u, err := url.Parse(pc["uri"])
		if err != nil || u.Port() == "" {
			return nil, fmt.Errorf("publish context %v: no target address (%v)", pc, err)
		}
		u.Host = net.JoinHostPort("10.0.2.2", u.Port())
		return map[string]string{"VOL": id, "URI": u.String(), "PORT": u.Port(), "NQN": pc["nqn"], "HOST": pc["hostNqn"],
			"HOSTID": nvmehost.HostIDFor(pc["hostNqn"])}, nil
	}
	teardown := func(ctx context.Context, key string, timed bool) error {
		mu.Lock()
		id := vols[key]
		mu.Unlock()
		start := time.Now()
		if _, err := ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: consumer}); err != nil {
			return fmt.Errorf("ControllerUnpublishVolume %s: %w", id, err)
		}
		if _, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			return fmt.Errorf("DeleteVolume %s: %w", id, err)
		}
		if timed {
			mu.Lock()
			host["teardown"] = append(host["teardown"], ms(time.Since(start)))
			mu.Unlock()
		}
		return nil
	}
	barrier := func(name string) (map[string]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		kind, round, _ := strings.Cut(name, "-")
		switch kind {
		case "pvc":
			return provision(ctx, "pvc-"+round, true)
		case "raw":
			return provision(ctx, "raw-"+round, false)
		case "gone":
			return nil, teardown(ctx, "pvc-"+round, true)
		case "rawgone":
			return nil, teardown(ctx, "raw-"+round, false)
		}
		return nil, fmt.Errorf("unknown barrier %q", name)
	}

	var script []string
	for i := 1; i <= rounds; i++ {
		stage := "csi-stage $VOL $URI $NQN $HOST /csi/staging mount ext4"
		script = append(script,
			fmt.Sprintf("barrier pvc-%d", i),
			"timed "+stage,
			"timed csi-unstage $VOL /csi/staging",
			"timed "+stage,
			"csi-unstage $VOL /csi/staging",
			"nvme-ctrls $NQN 0",
			fmt.Sprintf("barrier gone-%d", i),
			// The baseline: the same kind of volume, attached by hand
			// with what the plugin runs (mke2fs -t ext4 -E nodiscard).
			fmt.Sprintf("barrier raw-%d", i),
			"timed connect 10.0.2.2 $PORT $NQN $HOST hostid=$HOSTID",
			"timed mkfs $DEV -E nodiscard",
			"timed mount $DEV /raw",
			"umount /raw",
			"disconnect $CTRL",
			fmt.Sprintf("barrier rawgone-%d", i),
		)
	}
	bctx, cancel := context.WithTimeout(t.Context(), time.Duration(rounds)*2*time.Minute+5*time.Minute)
	defer cancel()
	res, err := env.Boot(t, qemuvm.Config{
		BarrierVars: barrier,
		Timeout:     time.Duration(rounds)*2*time.Minute + 4*time.Minute,
		Script:      script,
	}).Wait(bctx)
	if err != nil {
		t.Logf("guest (%s):\n%s", env.Accel, res)
		t.Fatalf("guest: %v", err)
	}
	loadEnd := loadAvg()
	// The barriers are done; what they recorded is read under their lock
	// all the same (their goroutines are not joined).
	mu.Lock()
	defer mu.Unlock()

	// The guest's timings, in script order: per round, stage, unstage,
	// restage; connect, mkfs, mount.
	guest := map[string][]float64{}
	started := map[string][]time.Time{}
	names := []string{"stage", "unstage", "restage", "connect", "mkfs", "mount"}
	n := 0
	for _, s := range res.Steps {
		if s.Name != "timed" {
			continue
		}
		v, err := strconv.ParseFloat(s.Value("elapsed_ms"), 64)
		if err != nil {
			t.Fatalf("step %d %q: no elapsed_ms: %v", s.Index, s.Line, s.Output)
		}
		at, err := time.Parse(slogTime, s.Value("started"))
		if err != nil {
			t.Fatalf("step %d %q: started: %v", s.Index, s.Line, err)
		}
		k := names[n%len(names)]
		guest[k] = append(guest[k], v)
		started[k] = append(started[k], at)
		n++
	}
	if n != rounds*len(names) || len(host["create"]) != rounds || len(host["teardown"]) != rounds {
		t.Fatalf("%d timed guest steps (want %d), %d rounds timed on the host (want %d)", n, rounds*len(names), len(host["create"]), rounds)
	}
	total := make([]float64, rounds)
	raw := make([]float64, rounds)
	for i := range rounds {
		total[i] = host["create"][i] + host["publish"][i] + guest["stage"][i]
		raw[i] = guest["connect"][i] + guest["mkfs"][i] + guest["mount"][i]
	}

	// Inside NodeStageVolume, from the node plugin's log on the guest's
	// console (millisecond times): the fabrics connect written, the file
	// system made, the volume staged.
	parts := map[string][]float64{}
	events := map[string][]stageEvent{}
	for _, m := range stageLogRE.FindAllStringSubmatch(res.Console, -1) {
		at, err := time.Parse(slogTime, m[1])
		if err != nil {
			t.Fatalf("plugin log time %q: %v", m[1], err)
		}
		events[m[3]] = append(events[m[3]], stageEvent{m[2], at})
	}
	for i := range rounds {
		ev := events[vols[fmt.Sprintf("pvc-%d", i+1)]]
		var got []string
		for _, e := range ev {
			got = append(got, e.msg)
		}
		// Staged blank (connected, made, staged), then formatted
		// (connected, staged).
		if len(ev) != 5 || ev[0].msg != stageConnected || ev[1].msg != stageMkfs || ev[2].msg != stageDone ||
			ev[3].msg != stageConnected || ev[4].msg != stageDone {
			t.Logf("guest console:\n%s", res.Console)
			t.Fatalf("round %d: the node plugin logged %q, want connected, made, staged, connected, staged", i+1, got)
		}
		parts["connect"] = append(parts["connect"], ms(ev[0].at.Sub(started["stage"][i])))
		parts["mkfs"] = append(parts["mkfs"], ms(ev[1].at.Sub(ev[0].at)))
		parts["mount"] = append(parts["mount"], ms(ev[2].at.Sub(ev[1].at)))
		parts["reconnect"] = append(parts["reconnect"], ms(ev[3].at.Sub(started["restage"][i])))
		parts["remount"] = append(parts["remount"], ms(ev[4].at.Sub(ev[3].at)))
	}

	var b strings.Builder
	fmt.Fprintf(&b, "Guest: %s, on a host of %d CPUs. Volumes: %d MiB, 3 replicas, thin, NVMe/TCP, ext4. Rounds: %d.\n", env.Accel, runtime.NumCPU(), pvcBenchSize>>20, rounds)
	fmt.Fprintf(&b, "Load average (1, 5, 15 min) of this machine: %s at the start, %s at the end.\n\n", loadStart, loadEnd)
	b.WriteString("| round | CreateVolume | ControllerPublishVolume | NodeStageVolume (with mkfs) | PVC to staged | NodeUnstageVolume | NodeStageVolume again (no mkfs) | raw connect + mkfs + mount |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for i := range rounds {
		fmt.Fprintf(&b, "| %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", i+1, host["create"][i], host["publish"][i],
			guest["stage"][i], total[i], guest["unstage"][i], guest["restage"][i], raw[i])
	}
	b.WriteString("\nAll times in milliseconds.\n\n| step | median (ms) | min | max |\n|---|---|---|---|\n")
	row := func(name string, x []float64) float64 {
		med, lo, hi := spread(x)
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f |\n", name, med, lo, hi)
		return med
	}
	row("CreateVolume (host → controller → management service)", host["create"])
	row("ControllerPublishVolume", host["publish"])
	stageMed := row("NodeStageVolume, blank volume (attach, mkfs, mount)", guest["stage"])
	row("**PVC to staged** (the three)", total)
	row("NodeUnstageVolume", guest["unstage"])
	restageMed := row("NodeStageVolume, formatted volume (attach, mount)", guest["restage"])
	row("ControllerUnpublishVolume + DeleteVolume", host["teardown"])
	row("NodeStageVolume, blank: its record, the fabrics connect", parts["connect"])
	row("NodeStageVolume, blank: block device, probe (blkid), mke2fs", parts["mkfs"])
	row("NodeStageVolume, blank: mount, its record", parts["mount"])
	row("NodeStageVolume, formatted: its record, the fabrics connect", parts["reconnect"])
	row("NodeStageVolume, formatted: block device, probe, mount, its record", parts["remount"])
	row("raw: connect, until the block device is there", guest["connect"])
	row("raw: mke2fs -t ext4 -E nodiscard", guest["mkfs"])
	row("raw: mount", guest["mount"])
	rawMed := row("raw: total", raw)
	attachMount := make([]float64, rounds)
	for i := range rounds {
		attachMount[i] = guest["connect"][i] + guest["mount"][i]
	}
	rawAttachMed, _, _ := spread(attachMount)
	fmt.Fprintf(&b, "\nNodeStageVolume with mkfs / raw connect + mkfs + mount (medians): **%.2f**. ", stageMed/rawMed)
	fmt.Fprintf(&b, "NodeStageVolume of a formatted volume / raw connect + mount (medians): **%.2f**. ", restageMed/rawAttachMed)
	fmt.Fprintf(&b, "The stage's mkfs, as the difference of the medians of the two stages: %.0f ms.\n", stageMed-restageMed)
	t.Logf("\n%s", b.String())
	if p := os.Getenv("NEXSTOR_BENCH_OUT"); p != "" {
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// slogTime is how log/slog's text handler writes times, and the timed
// step its started=.
const slogTime = "2006-01-02T15:04:05.000Z07:00"

// What the node plugin logs while it stages a volume.
const (
	stageConnected = "nvme: connected"
	stageMkfs      = "made a file system on a blank volume"
	stageDone      = "volume staged"
)

var stageLogRE = regexp.MustCompile(`time=(\S+) level=INFO msg="(` + stageConnected + `|` + stageMkfs + `|` + stageDone + `)" volume=(\S+)`)

// stageEvent is one line of stageLogRE.
type stageEvent struct {
	msg string
	at  time.Time
}

// startCSIController runs `nexstor csi --mode controller` against c's
// management service (c started insecure) and returns its controller
// client, once the plugin is ready.
func startCSIController(t *testing.T, c *cluster) csi.ControllerClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	out := &testutil.SyncBuffer{}
	plugin := exec.Command(testutil.BuildBinary(t, "nexstor"), "csi", "--mode", "controller", "--endpoint", "unix://"+sock,
		"-a", strings.Join(c.aps, ","), "--insecure")
	plugin.Stdout, plugin.Stderr = out, out
	plugin.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := plugin.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		plugin.Process.Kill()
		plugin.Wait()
		if t.Failed() {
			t.Logf("nexstor csi:\n%s", out.String())
		}
	})
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	id := csi.NewIdentityClient(cc)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		p, err := id.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && p.GetReady().GetValue() {
			return csi.NewControllerClient(cc)
		}
		if time.Now().After(deadline) {
			t.Fatalf("nexstor csi --mode controller is not ready: %v %v", p, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// spread returns the median, minimum and maximum of x (not empty).
func spread(x []float64) (med, lo, hi float64) {
	s := slices.Sorted(slices.Values(x))
	med = s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return med, s[0], s[len(s)-1]
}

// loadAvg returns this machine's load averages, as /proc/loadavg has them.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if err != nil || len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}
