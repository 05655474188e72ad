package kernel

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/target"
	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

// anaPath is one target exporting the shared subsystem: a path of the
// guest's multipath head.
type anaPath struct {
	name   string
	tgt    *target.Target
	sub    *target.Subsystem
	port   int
	log    *testutil.SyncBuffer
	stopFn func()
	once   sync.Once
}

func (p *anaPath) stop() { p.once.Do(p.stopFn) }

// io is the count of I/O commands the path executed successfully.
func (p *anaPath) io() uint64 {
	s := p.sub.Stats()
	return s.Reads + s.Writes
}

// serveANAPath starts a target of its own that exports dev as namespace 1
// of subsystem nqn, with the namespace identity every path shares, the
// controller ID range lo..hi and the initial ANA state st.
func serveANAPath(t *testing.T, name, nqn string, dev bdev.Device, lo, hi uint16, st nvme.ANAState) *anaPath {
	t.Helper()
	p := &anaPath{name: name, log: &testutil.SyncBuffer{}}
	p.tgt = target.New(slog.New(slog.NewTextHandler(p.log, &slog.HandlerOptions{Level: slog.LevelInfo})))
	sub, err := p.tgt.AddSubsystem(nqn, target.SubsystemOptions{
		AllowedHosts: []string{hostNQN}, Serial: "ana-test", Model: "Nexstor nexus",
		MinCNTLID: lo, MaxCNTLID: hi, ANAState: st,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.sub = sub
	if _, err := sub.AddNamespace(dev, target.NamespaceOptions{UUID: [16]byte{0x61, 0x6e, 0x61, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.port = l.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.tgt.Serve(ctx, l); close(done) }()
	p.stopFn = func() {
		cancel()
		p.tgt.Close()
		<-done
	}
	t.Cleanup(func() {
		p.stop()
		t.Logf("target %s log:\n%s", name, p.log.String())
	})
	return p
}

// pathLine is one controller path of the guest's "paths" step.
type pathLine struct {
	ctrl, state, cntlid, port, anaState, anaGrpID string
}

var trsvcidRE = regexp.MustCompile(`trsvcid=(\d+)`)

func parsePaths(out []string) (subsystems int, paths []pathLine) {
	for _, l := range out {
		kv := map[string]string{}
		for _, f := range strings.Fields(l) {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = v
			}
		}
		if _, ok := kv["ctrl"]; !ok {
			subsystems++
			continue
		}
		port := ""
		if m := trsvcidRE.FindStringSubmatch(l); m != nil {
			port = m[1]
		}
		paths = append(paths, pathLine{kv["ctrl"], kv["state"], kv["cntlid"], port, kv["ana_state"], kv["ana_grpid"]})
	}
	return subsystems, paths
}

// TestKernelMultipathFollowsANA: the Linux host's native NVMe multipath
// over two targets that export one subsystem (same NQN, same namespace
// identity, the same device behind both, disjoint controller ID ranges), one
// optimized and one inaccessible. fio writes and verifies through the
// multipath head while the test moves the I/O from one target to the other
// by swapping their ANA states (each change announced by an ANA change
// event), back again, and then kills the optimized target outright and makes
// the other one optimized. fio must see no error; the I/O must go only
// through the optimized target at each stage (the targets' counters); the
// guest's sysfs must show one subsystem with both paths and the states set;
// a pattern written through one target must read back through the other
// after it died.
func TestKernelMultipathFollowsANA(t *testing.T) {
	env := qemuvm.Require(t)
	testutil.RequireTool(t, "fio")
	const size = 96 * mib
	dev, err := bdev.NewMalloc(size, 512)
	if err != nil {
		t.Fatal(err)
	}
	nqn := target.NQN("nexus", "616e6100-0000-4000-8000-000000000001")
	a := serveANAPath(t, "A", nqn, dev, 1, 99, nvme.ANAOptimized)
	b := serveANAPath(t, "B", nqn, dev, 100, 199, nvme.ANAInaccessible)
	paths := map[string]*anaPath{strconv.Itoa(a.port): a, strconv.Itoa(b.port): b}

	// The barriers run on their own goroutine: they report, never t.Fatal.
	var mu sync.Mutex
	snap := map[*anaPath]uint64{}
	var events []string
	note := func(format string, args ...any) {
		events = append(events, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
	}
	snapshot := func() {
		for _, p := range []*anaPath{a, b} {
			snap[p] = p.io()
		}
		note("I/O so far: A %d, B %d commands", snap[a], snap[b])
	}
	// carried checks that since the last snapshot only active carried I/O:
	// the other's count has not moved (what it refused is not counted),
	// and active's grows (a bounded wait: fio is running).
	carried := func(active, idle *anaPath) error {
		deadline := time.Now().Add(2 * time.Minute)
		for active.io() == snap[active] {
			if time.Now().After(deadline) {
				return fmt.Errorf("no I/O reached %s, the optimized path, in 2 minutes", active.name)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if n := idle.io(); n != snap[idle] {
			return fmt.Errorf("%s, not optimized, executed %d I/O commands", idle.name, n-snap[idle])
		}
		note("%s carried %d commands, %s none", active.name, active.io()-snap[active], idle.name)
		return nil
	}
	set := func(p *anaPath, st nvme.ANAState) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		note("%s -> %v", p.name, st)
		return p.sub.SetANAState(ctx, st)
	}
	barrier := func(name string) error {
		mu.Lock()
		defer mu.Unlock()
		note("barrier %s", name)
		switch name {
		case "flip-to-b":
			if err := set(a, nvme.ANAInaccessible); err != nil {
				return err
			}
			return set(b, nvme.ANAOptimized)
		case "on-b", "on-a", "on-b-alone":
			snapshot()
		case "flip-to-a":
			if err := carried(b, a); err != nil {
				return err
			}
			// The other order this time: both optimized for a moment.
			if err := set(a, nvme.ANAOptimized); err != nil {
				return err
			}
			return set(b, nvme.ANAInaccessible)
		case "kill-a":
			if err := carried(a, b); err != nil {
				return err
			}
			note("killing A")
			a.stop()
			return set(b, nvme.ANAOptimized)
		case "after":
			return carried(b, a)
		default:
			return fmt.Errorf("unknown barrier %q", name)
		}
		return nil
	}

	const patOff, patLen, patSeed = 64 * mib, 8 * mib, 41
	// reconnect_delay: the kernel keeps trying the killed target (every
	// second) until the end; its ctrl_loss_tmo (10 min) outlasts the test.
	connect := func(p *anaPath) string {
		return fmt.Sprintf("connect 10.0.2.2 %d %s %s reconnect_delay=1", p.port, nqn, hostNQN)
	}
	vm := env.Boot(t, qemuvm.Config{
		Programs: []string{"fio"},
		Barrier:  barrier,
		Timeout:  10 * time.Minute,
		Script: []string{
			"multipath",
			// The optimized path first: the head's block device appears
			// once a path is usable.
			connect(a),
			"set CA $CTRL",
			connect(b),
			"set CB $CTRL",
			"wait-ana $CA optimized",
			"wait-ana $CB inaccessible",
			"paths",
			fmt.Sprintf("pattern-write $DEV %d %d %d", patOff, patLen, patSeed),
			"start fio fio --name=ana --filename=$DEV --thread --direct=1 --ioengine=libaio --iodepth=8" +
				" --rw=randwrite --bs=4k --size=32m --verify=crc32c --verify_backlog=64 --verify_fatal=1" +
				" --time_based --runtime=1800",
			"sleep 3s",
			"running fio",
			// A inaccessible, then B optimized.
			"barrier flip-to-b",
			"wait-ana $CA inaccessible",
			"wait-ana $CB optimized",
			"paths",
			"barrier on-b",
			"sleep 3s",
			"running fio",
			// B inaccessible, A optimized.
			"barrier flip-to-a",
			"wait-ana $CA optimized",
			"wait-ana $CB inaccessible",
			"barrier on-a",
			"sleep 3s",
			"running fio",
			// A dies; B is made optimized.
			"barrier kill-a",
			"wait-ana $CB optimized",
			"barrier on-b-alone",
			"sleep 3s",
			"paths",
			"stop fio",
			fmt.Sprintf("pattern-verify $DEV %d %d %d", patOff, patLen, patSeed),
			"barrier after",
			"disconnect $CB",
			"disconnect $CA",
		},
	})
	res, err := vm.Wait(context.Background())
	t.Logf("guest (%s):\n%s", env.Accel, res)
	t.Logf("what the test did:\n%s", strings.Join(events, "\n"))
	t.Logf("what the kernel said:\n%s", kernelNVMeLines(res.Console))
	if err != nil {
		t.Fatalf("guest: %v", err)
	}

	// Both paths in one subsystem, with the ranges' controller IDs and
	// the states set, at each stage.
	want := []map[*anaPath]string{
		{a: "optimized", b: "inaccessible"},
		{a: "inaccessible", b: "optimized"},
		{b: "optimized"}, // A is dead: the kernel reconnects in vain
	}
	for i, st := range res.StepsNamed("paths") {
		subs, ps := parsePaths(st.Output)
		if subs != 1 || len(ps) != 2 {
			t.Errorf("paths %d: %d subsystems, %d controller paths, want 1 and 2: %q", i, subs, len(ps), st.Output)
			continue
		}
		for _, pl := range ps {
			p := paths[pl.port]
			if p == nil {
				t.Errorf("paths %d: a controller on port %s: %+v", i, pl.port, pl)
				continue
			}
			id, _ := strconv.Atoi(pl.cntlid)
			if lo, hi := p.sub.CNTLIDRange(); id < int(lo) || id > int(hi) {
				t.Errorf("paths %d: %s has controller ID %s, outside %d..%d", i, p.name, pl.cntlid, lo, hi)
			}
			if pl.anaGrpID != strconv.Itoa(target.ANAGroupID) {
				t.Errorf("paths %d: %s: ANA group %s", i, p.name, pl.anaGrpID)
			}
			if w, ok := want[i][p]; ok && (pl.anaState != w || pl.state != "live") {
				t.Errorf("paths %d: %s is %s and %s, want live and %s", i, p.name, pl.state, pl.anaState, w)
			}
			if i == 2 && p == a && pl.state == "live" {
				t.Errorf("paths %d: the killed target's controller is still live", i)
			}
		}
	}

	// fio: no error, and it both wrote and verified.
	out := strings.Join(res.Step("stop").Output, "\n")
	if !strings.Contains(out, "err= 0") || strings.Contains(out, "verify:") || strings.Contains(out, "fio: io_u error") {
		t.Errorf("fio reported an error:\n%s", out)
	}
	if m := regexp.MustCompile(`issued rwts: total=(\d+),(\d+)`).FindStringSubmatch(out); m == nil || m[1] == "0" || m[2] == "0" {
		t.Errorf("fio did not both write and verify: %q", m)
	}
	for _, bad := range []string{"I/O error", "failing I/O", "Buffer I/O"} {
		if strings.Contains(res.Console, bad) {
			t.Errorf("the kernel reported %q; console:\n%s", bad, kernelNVMeLines(res.Console))
		}
	}
}

// kernelNVMeLines returns the console lines of the kernel's NVMe host and
// block layer.
func kernelNVMeLines(console string) string {
	var out []string
	for _, l := range strings.Split(console, "\n") {
		if strings.Contains(l, "nvme") && !strings.Contains(l, "@@nexstor") {
			out = append(out, strings.TrimRight(l, "\r"))
		}
	}
	return strings.Join(out, "\n")
}
