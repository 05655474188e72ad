package system

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

// nodeFault takes a node away from the system in one way: cut does it and
// returns restore, which brings the node back (it rejoins). Killing and
// freezing are here; a network partition (partitionNode) plugs in the
// same way.
type nodeFault struct {
	name string
	cut  func(t *testing.T, n *node) (restore func())
}

// killNode: SIGKILL; restored by starting the server again on its data.
var killNode = nodeFault{name: "kill", cut: func(t *testing.T, n *node) func() {
	n.stop(syscall.SIGKILL)
	return func() { n.start() }
}}

// freezeNode: SIGSTOP, as a node that hangs (or a long pause) with its
// connections open; restored by SIGCONT, when whatever it was doing goes
// on: its nexus's late writes must be refused.
var freezeNode = nodeFault{name: "freeze", cut: func(t *testing.T, n *node) func() {
	if err := n.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Errorf("SIGSTOP %s: %v", n.name, err)
	}
	return func() {
		if err := n.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Errorf("SIGCONT %s: %v", n.name, err)
		}
	}
}}

// faultSteps are the guest's steps of a nodeFault that the test's barrier
// knows as name (its faults map): the fault is made and the volume fails
// over ($OLD and $NEW are the ports of the old and the new target), the
// guest's agent connects the new path and drops the old one, the steps
// during run, and the node is restored and the volume healed.
func faultSteps(name string, during ...string) []string {
	steps := []string{"barrier fault-" + name, "wait-path 10.0.2.2 $NEW live", "wait-path 10.0.2.2 $OLD gone"}
	return append(append(steps, during...), "barrier restore-"+name)
}

// haVolume is what the HA test reads of the volume.
type haVolume struct {
	Status struct {
		Phase     string `json:"phase"`
		Healthy   uint32 `json:"healthy"`
		Operation string `json:"operation"`
		Replicas  []struct {
			Node string `json:"node"`
		} `json:"replicas"`
		Target *struct {
			Node string `json:"node"`
			URI  string `json:"uri"`
			NQN  string `json:"nqn"`
		} `json:"target"`
	} `json:"status"`
}

// getVolume reads the volume (nil on an error: the caller polls).
func (c *cluster) getVolume(name string) *haVolume {
	out, _, err := c.nexctl("volume", "get", name, "-a", strings.Join(c.aps, ","), "-o", "json")
	if err != nil {
		return nil
	}
	var v haVolume
	if json.Unmarshal([]byte(out), &v) != nil {
		return nil
	}
	return &v
}

// waitVolume polls the volume until ok (bounded); it returns an error, for
// barriers, which run off the test's goroutine.
func (c *cluster) waitVolume(name, what string, within time.Duration, ok func(*haVolume) bool) (*haVolume, error) {
	deadline := time.Now().Add(within)
	for {
		v := c.getVolume(name)
		if v != nil && ok(v) {
			return v, nil
		}
		if time.Now().After(deadline) {
			return v, fmt.Errorf("volume %s: not %s within %v: %+v", name, what, within, v)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func targetPort(v *haVolume) string {
	if v == nil || v.Status.Target == nil {
		return ""
	}
	u, err := url.Parse(v.Status.Target.URI)
	if err != nil {
		return ""
	}
	return u.Port()
}

func (c *cluster) nodeNamed(name string) *node {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// haSystem is the system of the HA tests: 4 `nexstor server --control`
// nodes (node0 the only access point, never taken away), insecure, and a
// thin 3-replica volume "data" published over NVMe/TCP on a node other
// than node0, to one host identity.
type haSystem struct {
	c               *cluster
	ap              *node
	aps             string
	p               *haVolume // as published
	hostID, hostNQN string
}

func newHASystem(t *testing.T, extra string) *haSystem {
	t.Helper()
	return newHASystemOn(t, extra, false)
}

// newHASystemOn is newHASystem with, when inNetns, each node in its own
// network namespace (clusterOptions.netns): the guest reaches each node at
// its own address, and a node can be partitioned.
func newHASystemOn(t *testing.T, extra string, inNetns bool) *haSystem {
	t.Helper()
	c := newCluster(t, clusterOptions{nodes: 4, accessPoints: 1, insecure: true, poolSize: "160MiB", extra: extra, netns: inNetns})
	c.start()
	for _, n := range c.nodes {
		n.waitLog("waiting in maintenance mode", 60*time.Second)
	}
	c.mustNexctl("storage", "format", "-l", c.hosts())
	c.waitMembers("all joined", 60*time.Second, c.allState("joined"))
	h := &haSystem{c: c, ap: c.nodes[0], aps: strings.Join(c.aps, ","), hostID: uuid.NewString()}
	h.hostNQN = "nqn.2014-08.org.nvmexpress:uuid:" + h.hostID
	c.mustNexctl("volume", "create", "data", "--size", "96MiB", "--replicas", "3", "--thin", "-a", h.aps)
	v := c.getVolume("data")
	on := ""
	for _, r := range v.Status.Replicas {
		if r.Node != h.ap.name {
			on = r.Node
		}
	}
	c.mustNexctl("volume", "publish", "data", "--node", on, "--host-nqn", h.hostNQN, "-a", h.aps)
	var err error
	if h.p, err = c.waitVolume("data", "online", 60*time.Second, func(v *haVolume) bool { return v.Status.Phase == "online" && v.Status.Target != nil }); err != nil {
		t.Fatal(err)
	}
	return h
}

// guestPrelude is the start of a guest script: native multipath, the host
// identity, the first path (its block device $DEV), and `nexstor agent`
// running in the background (put nexstor in Config.Programs), with the
// extra agent flags.
func (h *haSystem) guestPrelude(agentFlags ...string) []string {
	apPort := h.ap.grpc[strings.LastIndex(h.ap.grpc, ":")+1:]
	agent := "start agent nexstor agent -a 10.0.2.2:" + apPort + " --insecure --address-map 127.0.0.1=10.0.2.2"
	if h.c.net != nil {
		agent = "start agent nexstor agent -a " + h.ap.grpc + " --insecure"
	}
	return []string{
		"multipath",
		"write-file /etc/nvme/hostnqn " + h.hostNQN,
		"write-file /etc/nvme/hostid " + h.hostID,
		fmt.Sprintf("connect %s %s %s %s hostid=%s reconnect_delay=1 ctrl_loss_tmo=600", h.guestAddr(h.p), targetPort(h.p),
			h.p.Status.Target.NQN, h.hostNQN, h.hostID),
		agent + " --interval 500ms --nvme-config-dir /etc/nvme " + strings.Join(agentFlags, " "),
	}
}

// guestAddr is the address at which the guest reaches the volume's target:
// the host's (10.0.2.2, QEMU's user networking) for nodes on loopback, the
// node's own for nodes in namespaces ("" when v has no target).
func (h *haSystem) guestAddr(v *haVolume) string {
	if v == nil || v.Status.Target == nil {
		return ""
	}
	if h.c.net == nil {
		return "10.0.2.2"
	}
	u, err := url.Parse(v.Status.Target.URI)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// TestHANexusNodeLoss: a volume with 3 replicas on 4 `nexstor server
// --control` nodes, used by the Linux kernel in a QEMU guest through native
// NVMe multipath with `nexstor agent` following the volume, ext4 on it and
// fio writing and verifying all along. The nexus's node is SIGKILLed (the
// volume fails over), then the volume is moved on purpose (the guest sees
// the old path ANA inaccessible and the new one optimized at once, in
// sysfs and in nvme-cli's `nvme list-subsys`), then
// the nexus's node is frozen with SIGSTOP until the volume has failed over
// and let go with SIGCONT (its nexus's late writes are fenced). fio sees
// no I/O error, its verification passes (online, and over a whole file
// written across the freeze, read back after it), files written before and
// between the faults read back, fsck is clean, and the replicas are
// identical at the end.
//
// It takes about 2 minutes: 100-180 s measured with the guest under TCG
// (no KVM) on a loaded 2-CPU machine, 131 s with -race.
func TestHANexusNodeLoss(t *testing.T) {
	env := qemuvm.Require(t)
	testutil.RequireTool(t, "fio")
	testutil.RequireTool(t, "nvme")
	h := newHASystem(t, "move: {grace: 15s}\n")
	c, ap, aps := h.c, h.ap, h.aps

	// The barriers run off the test's goroutine: they report errors.
	var (
		mu       sync.Mutex
		events   []string
		restores = map[string]func(){}
		moveDone chan error
		moves    []struct{ from, to string } // ports, as the guest sees them
	)
	note := func(format string, args ...any) {
		mu.Lock()
		events = append(events, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	moved := func(from string) (*haVolume, error) {
		return c.waitVolume("data", "moved from "+from, 2*time.Minute, func(v *haVolume) bool {
			return v.Status.Target != nil && v.Status.Target.Node != from && v.Status.Operation == ""
		})
	}
	healed := func() error {
		_, err := c.waitVolume("data", "healed", 3*time.Minute, func(v *haVolume) bool {
			return v.Status.Phase == "online" && v.Status.Healthy == 3 && v.Status.Operation == ""
		})
		if err != nil {
			return err
		}
		// The stale nexus of the node that was away is gone.
		deadline := time.Now().Add(time.Minute)
		for {
			nexuses := 0
			for _, x := range c.inventory() {
				if strings.Contains(x, " nexus ") {
					nexuses++
				}
			}
			if nexuses == 1 {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d nexuses in the system after the heal: %v", nexuses, c.inventory())
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	faults := map[string]nodeFault{"kill": killNode, "freeze": freezeNode}
	barrier := func(name string) (map[string]string, error) {
		note("barrier %s", name)
		switch {
		case strings.HasPrefix(name, "fault-"):
			f := faults[strings.TrimPrefix(name, "fault-")]
			cur := c.getVolume("data")
			if cur == nil || cur.Status.Target == nil {
				return nil, fmt.Errorf("volume not published: %+v", cur)
			}
			victim := c.nodeNamed(cur.Status.Target.Node)
			if victim == nil || victim == ap {
				return nil, fmt.Errorf("the nexus is on %q", cur.Status.Target.Node)
			}
			note("%s %s (nexus node, port %s)", f.name, victim.name, targetPort(cur))
			restore := f.cut(t, victim)
			mu.Lock()
			restores[f.name] = restore
			mu.Unlock()
			nv, err := moved(victim.name)
			if err != nil {
				return nil, err
			}
			note("failed over to %s (port %s)", nv.Status.Target.Node, targetPort(nv))
			return map[string]string{"OLD": targetPort(cur), "NEW": targetPort(nv)}, nil
		case strings.HasPrefix(name, "restore-"):
			mu.Lock()
			restore := restores[strings.TrimPrefix(name, "restore-")]
			mu.Unlock()
			restore()
			note("restored")
			c.waitMembers("all joined again", 90*time.Second, c.allState("joined"))
			err := healed()
			note("healed: %v", err)
			return nil, err
		case name == "move":
			cur := c.getVolume("data")
			if cur == nil || cur.Status.Target == nil {
				return nil, fmt.Errorf("volume not published: %+v", cur)
			}
			to := ""
			for _, n := range c.nodes {
				if n != ap && n.name != cur.Status.Target.Node {
					to = n.name
				}
			}
			note("move from %s to %s", cur.Status.Target.Node, to)
			moveDone = make(chan error, 1)
			go func() {
				out, errOut, err := c.nexctl("volume", "move", "data", "--node", to, "-a", aps, "--timeout", "2m")
				if err != nil {
					err = fmt.Errorf("volume move: %v: %s%s", err, out, errOut)
				}
				moveDone <- err
			}()
			// The new nexus serves (the target is recorded) while the
			// old one, inaccessible, waits out move.grace.
			nv, err := c.waitVolume("data", "published on "+to, time.Minute, func(v *haVolume) bool {
				return v.Status.Target != nil && v.Status.Target.Node == to
			})
			if err != nil {
				return nil, err
			}
			mu.Lock()
			moves = append(moves, struct{ from, to string }{targetPort(cur), targetPort(nv)})
			mu.Unlock()
			return map[string]string{"OLD": targetPort(cur), "NEW": targetPort(nv)}, nil
		case name == "moved":
			select {
			case err := <-moveDone:
				return nil, err
			case <-time.After(2 * time.Minute):
				return nil, fmt.Errorf("volume move has not returned in 2 minutes")
			}
		case name == "verify":
			out, errOut, err := c.nexctl("volume", "verify", "data", "-a", aps, "-o", "json")
			note("volume verify: %s", strings.TrimSpace(out))
			if err != nil {
				return nil, fmt.Errorf("volume verify: %v: %s%s", err, out, errOut)
			}
			var r struct {
				Identical bool     `json:"identical"`
				Children  []string `json:"children"`
			}
			if err := json.Unmarshal([]byte(out), &r); err != nil || !r.Identical || len(r.Children) != 3 {
				return nil, fmt.Errorf("volume verify: %v: %s", err, out)
			}
			return nil, nil
		}
		return nil, fmt.Errorf("unknown barrier %q", name)
	}

	const (
		fioJob = "fio --name=ha --filename=/mnt/v/fio.dat --size=32m --thread --direct=1 --ioengine=libaio --iodepth=8" +
			" --rw=randwrite --bs=4k --verify=crc32c --verify_backlog=64 --verify_fatal=1 --time_based --runtime=1800"
		// Written at 1 MiB/s from before the freeze to after it, then
		// verified whole by fio itself, and again with verify_only after
		// everything healed.
		seqJob = "fio --name=seq --filename=/mnt/v/seq.dat --size=16m --direct=1 --ioengine=libaio --iodepth=4" +
			" --rw=write --bs=64k --verify=crc32c --rate=1m"
	)
	script := append(h.guestPrelude(),
		"mkfs $DEV",
		"mount $DEV /mnt/v",
		"write-files /mnt/v/before 8 262144 1",
		"sync",
		"start fio "+fioJob,
		"sleep 3s",
		"running fio",
	)
	// a. The nexus's node is killed.
	script = append(script, faultSteps("kill", "running fio", "write-files /mnt/v/after-kill 8 262144 2", "sync")...)
	script = append(script,
		"running fio",

		// b. A planned move: both paths, in their ANA states.
		"barrier move",
		"wait-path 10.0.2.2 $OLD inaccessible",
		"wait-path 10.0.2.2 $NEW optimized",
		"paths",
		"run nvme list-subsys -o json $DEV",
		"barrier moved",
		"wait-path 10.0.2.2 $OLD gone",
		"running fio",

		// c. The nexus's node freezes, and thaws after the failover.
		"start seq "+seqJob,
		"sleep 2s",
	)
	// Another nodeFault (a network partition) plugs in here the same way.
	script = append(script, faultSteps("freeze")...)
	script = append(script,
		"wait seq",
		"sleep 2s",
		"running fio",
		"stop fio",
		"stop agent",
		"run "+seqJob+" --verify_only",
		"verify-files /mnt/v/before 8 262144 1",
		"verify-files /mnt/v/after-kill 8 262144 2",
		"umount /mnt/v",
		"fsck $DEV",
		"barrier verify",
	)
	vm := env.Boot(t, qemuvm.Config{
		Programs:    []string{"fio", "nvme", testutil.BuildBinary(t, "nexstor")},
		BarrierVars: barrier,
		Timeout:     15 * time.Minute,
		Script:      script,
	})
	res, err := vm.Wait(t.Context())
	t.Logf("guest (%s):\n%s", env.Accel, res)
	mu.Lock()
	t.Logf("what the test did:\n%s", strings.Join(events, "\n"))
	mu.Unlock()
	t.Logf("what the kernel said:\n%s", kernelLines(res.Console))
	if err != nil {
		t.Fatalf("guest: %v", err)
	}

	// b: during the move, both paths, the old one inaccessible and the
	// new one optimized.
	if len(moves) != 1 {
		t.Fatalf("moves: %+v", moves)
	}
	states := map[string]string{}
	portRE := regexp.MustCompile(`trsvcid=(\d+)`)
	for _, l := range strings.Split(stepOutput(res, "paths"), "\n") {
		m := portRE.FindStringSubmatch(l)
		if m == nil || !strings.Contains(l, " ctrl=") {
			continue
		}
		for _, f := range strings.Fields(l) {
			if s, ok := strings.CutPrefix(f, "ana_state="); ok {
				states[m[1]] = s
			}
		}
	}
	if states[moves[0].from] != "inaccessible" || states[moves[0].to] != "optimized" {
		t.Errorf("paths during the move: %v, want %s inaccessible and %s optimized:\n%s", states, moves[0].from, moves[0].to,
			stepOutput(res, "paths"))
	}
	// The same, as nvme-cli reports it.
	listed := stepOutput(res, "run")
	if st := listSubsysANA(t, listed); st[moves[0].from] != "inaccessible" || st[moves[0].to] != "optimized" {
		t.Errorf("nvme list-subsys during the move: %v, want %s inaccessible and %s optimized:\n%s", st, moves[0].from, moves[0].to, listed)
	}

	// fio: no error, it both wrote and verified; the whole-file checks
	// passed (the steps did not fail).
	out := stepOutput(res, "stop")
	if !strings.Contains(out, "err= 0") || strings.Contains(out, "verify:") || strings.Contains(out, "fio: io_u error") {
		t.Errorf("fio reported an error:\n%s", out)
	}
	if m := regexp.MustCompile(`issued rwts: total=(\d+),(\d+)`).FindStringSubmatch(out); m == nil || m[1] == "0" || m[2] == "0" {
		t.Errorf("fio did not both write and verify: %q", m)
	}
	for _, name := range []string{"wait", "run"} {
		// The last of each: the first "run" is nvme list-subsys.
		o := ""
		if s := res.StepsNamed(name); len(s) > 0 {
			o = strings.Join(s[len(s)-1].Output, "\n")
		}
		if !strings.Contains(o, "err= 0") || strings.Contains(o, "verify:") {
			t.Errorf("%s (the whole-file fio): %s", name, o)
		}
	}
	for _, bad := range []string{"I/O error", "failing I/O", "Buffer I/O", "EXT4-fs error"} {
		if strings.Contains(res.Console, bad) {
			t.Errorf("the kernel reported %q", bad)
		}
	}
}

// listSubsysANA reads the JSON of `nvme list-subsys -o json NSDEV`
// (nvme-cli 2.x: host, subsystems, paths) and returns each path's ANA
// state by its port (trsvcid). Any object with an "Address" and an
// "ANAState" is a path, wherever it sits.
func listSubsysANA(t *testing.T, out string) map[string]string {
	t.Helper()
	states := map[string]string{}
	i := strings.IndexAny(out, "[{")
	if i < 0 {
		t.Errorf("nvme list-subsys: no JSON in %q", out)
		return states
	}
	var v any
	if err := json.Unmarshal([]byte(out[i:]), &v); err != nil {
		t.Errorf("nvme list-subsys: %v: %s", err, out)
		return states
	}
	portRE := regexp.MustCompile(`trsvcid=(\d+)`)
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				walk(e)
			}
		case map[string]any:
			addr, _ := x["Address"].(string)
			ana, _ := x["ANAState"].(string)
			if m := portRE.FindStringSubmatch(addr); m != nil && ana != "" {
				states[m[1]] = ana
			}
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(v)
	return states
}

// kernelLines returns the console lines of the kernel's NVMe host, block
// layer and ext4.
func kernelLines(console string) string {
	var out []string
	for _, l := range strings.Split(console, "\n") {
		if (strings.Contains(l, "nvme") || strings.Contains(l, "EXT4") || strings.Contains(l, "I/O")) && !strings.Contains(l, "@@nexstor") {
			out = append(out, strings.TrimRight(l, "\r"))
		}
	}
	return strings.Join(out, "\n")
}

// stepOutput is the output of the first step of that name ("" when none
// ran).
func stepOutput(res *qemuvm.Result, name string) string {
	if s := res.Step(name); s != nil {
		return strings.Join(s.Output, "\n")
	}
	return ""
}
