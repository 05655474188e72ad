package system

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

// Chaos settings from the environment: NEXSTOR_CHAOS_SEED forces the seed
// of the fault schedule (printed by every run), NEXSTOR_CHAOS_DURATION
// turns the fixed short schedule into a soak that injects random faults
// until the duration has passed (`make chaos`).
const (
	envChaosSeed     = "NEXSTOR_CHAOS_SEED"
	envChaosDuration = "NEXSTOR_CHAOS_DURATION"
)

// chaosFault is one fault: what is done to which kind of node, and whether
// the node stays away longer than rebuild.partial_wait.
type chaosFault struct {
	kill   bool // SIGKILL and restart; else partition and heal
	leader bool // the management service's leader; else a replica node
	// nexus: the node serving the nexus of the guest's volume (which
	// fails over; the guest's multipath and agent follow); it takes
	// precedence over leader.
	nexus bool
	long  bool
}

func (f chaosFault) String() string {
	s := "partition"
	if f.kill {
		s = "kill"
	}
	switch {
	case f.nexus:
		s += " nexus node"
	case f.leader:
		s += " leader"
	default:
		s += " replica node"
	}
	if f.long {
		return s + " (long)"
	}
	return s + " (short)"
}

// chaosRun injects faults into a system, one at a time, never into a
// protected node (the one serving the NBD volume, which has no multipath).
type chaosRun struct {
	t         *testing.T
	c         *cluster
	rng       *rand.Rand
	log       *timeline
	protected map[*node]bool
	// nexusVol is the volume whose nexus's node the nexus faults take.
	nexusVol string
	// nexusRNG places the nexus faults in the schedule, apart from rng so
	// that a seed gives the other faults the kinds and order it gave
	// before nexus faults were added.
	nexusRNG *rand.Rand
}

// outage picks how long a faulted node stays away.
func (h *chaosRun) outage(f chaosFault) time.Duration {
	if f.long {
		return chaosPartialWait + 5*time.Second + time.Duration(h.rng.Int64N(int64(8*time.Second)))
	}
	return 2*time.Second + time.Duration(h.rng.Int64N(int64(6*time.Second)))
}

// victim picks the node for f: the leader, or a node holding a replica of
// a volume; never a protected node.
func (h *chaosRun) victim(f chaosFault) *node {
	if f.nexus {
		if n := h.nexusNode(); n != nil && !h.protected[n] {
			return n
		}
		h.log.add("the nexus of %s is on a protected node or unknown; a replica node instead", h.nexusVol)
	} else if f.leader {
		if l := h.c.leader(); !h.protected[l] {
			return l
		}
		h.log.add("the leader serves a volume; a replica node instead")
	}
	l, err := h.c.volumeList("20s")
	if err != nil {
		h.t.Fatalf("volume list: %v", err)
	}
	var cands []*node
	seen := map[string]bool{}
	for _, v := range l {
		for _, r := range v.Status.Replicas {
			if n := h.c.nodeByName(r.Node); !h.protected[n] && !seen[n.name] {
				seen[n.name] = true
				cands = append(cands, n)
			}
		}
	}
	if len(cands) == 0 {
		h.t.Fatalf("no replica node to fault: %+v", l)
	}
	return cands[h.rng.IntN(len(cands))]
}

// nexusNode is the node serving h.nexusVol's nexus (nil when unknown).
func (h *chaosRun) nexusNode() *node {
	l, err := h.c.volumeList("20s")
	if err != nil {
		h.t.Fatalf("volume list: %v", err)
	}
	for _, v := range l {
		if v.Spec.Name == h.nexusVol && v.Status.Target != nil {
			return h.c.nodeByName(v.Status.Target.Node)
		}
	}
	return nil
}

// inject applies f, waits out the outage, ends it, and waits (bounded)
// for every node to be a joined member again and for the volumes to heal;
// a volume not healed by then is logged and the next fault goes on.
func (h *chaosRun) inject(f chaosFault) {
	h.t.Helper()
	n := h.victim(f)
	d := h.outage(f)
	if f.kill {
		h.log.add("%s: SIGKILL %s (%s) for %v", f, n.name, n.host, d.Round(100*time.Millisecond))
		n.stop(syscall.SIGKILL)
		time.Sleep(d)
		n.start()
		h.log.add("%s restarted", n.name)
	} else {
		h.log.add("%s: partition %s (%s) for %v", f, n.name, n.host, d.Round(100*time.Millisecond))
		h.c.net.Partition(n.ns)
		time.Sleep(d)
		h.c.net.Heal(n.ns)
		h.log.add("%s healed", n.name)
	}
	h.c.waitMembers(n.name+" joined again", 2*time.Minute, h.c.allState("joined"))
	start := time.Now()
	if l, ok := h.c.waitWhole(90 * time.Second); ok {
		h.log.add("volumes whole %v after the members", time.Since(start).Round(100*time.Millisecond))
	} else {
		for _, v := range l {
			h.log.add("not healed yet: %s", v.summary())
		}
	}
}

// schedule is the faults of a run: under a duration, random ones until it
// has passed; otherwise each kind once, in an order the seed shuffles.
func (h *chaosRun) schedule(soak time.Duration) func() (chaosFault, bool) {
	if soak > 0 {
		end := time.Now().Add(soak)
		return func() (chaosFault, bool) {
			f := chaosFault{kill: h.rng.IntN(2) == 0, leader: h.rng.IntN(3) == 0, long: h.rng.IntN(3) == 0}
			f.nexus = h.nexusRNG.IntN(4) == 0
			return f, time.Now().Before(end)
		}
	}
	faults := []chaosFault{
		{kill: true},
		{kill: true, long: true},
		{kill: true, leader: true},
		{},
		{long: true},
		{leader: true},
	}
	h.rng.Shuffle(len(faults), func(i, j int) { faults[i], faults[j] = faults[j], faults[i] })
	for _, f := range []chaosFault{{kill: true, nexus: true}, {nexus: true}} {
		at := h.nexusRNG.IntN(len(faults) + 1)
		faults = slices.Insert(faults, at, f)
	}
	i := 0
	return func() (chaosFault, bool) {
		if i == len(faults) {
			return chaosFault{}, false
		}
		i++
		return faults[i-1], true
	}
}

// chaosSeed returns the seed of the run (forced by NEXSTOR_CHAOS_SEED) and
// the soak duration (NEXSTOR_CHAOS_DURATION, 0 for the short schedule).
func chaosSeed(t *testing.T) (uint64, time.Duration) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(envChaosSeed); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", envChaosSeed, s, err)
		}
		seed = v
	}
	var soak time.Duration
	if s := os.Getenv(envChaosDuration); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%s=%q: %v", envChaosDuration, s, err)
		}
		soak = d
	}
	return seed, soak
}

// TestChaos: five nodes, each in its own network namespace (three of them
// access points with embedded etcd), serve two volumes of three replicas:
// one over NBD to fio on the host, one over NVMe/TCP to the Linux kernel in
// a QEMU guest (native multipath, `nexstor agent` following the volume's
// moves), where fio runs on ext4. Meanwhile replica nodes, the management
// service's leader and the node serving the guest's volume's nexus are
// killed and partitioned, for less and for more than
// rebuild.partial_wait, at random from a printed seed (NEXSTOR_CHAOS_SEED
// forces one); the guest's volume fails over and the guest's paths follow.
// The node serving the NBD volume (NBD has no multipath) is left alone.
// Afterwards: fio verified everything it wrote, the file system is clean,
// every volume has three healthy identical replicas again, nothing is left
// orphaned (no stale nexus either), and no volume was ever without a
// healthy replica.
//
// The short schedule (eight faults) takes about 6 minutes;
// NEXSTOR_CHAOS_DURATION makes it a soak (`make chaos`).
func TestChaos(t *testing.T) {
	testutil.RequireTool(t, "fio")
	env := qemuvm.Require(t)
	seed, soak := chaosSeed(t)
	t.Logf("chaos seed %d (%s=%d repeats this schedule)", seed, envChaosSeed, seed)
	log := newTimeline(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("chaos seed %d; timeline:\n%s", seed, log)
		}
	})

	c := newNetnsCluster(t, 5, 3, chaosPartialWait)
	c.keepLogs(seed)
	aps := strings.Join(c.aps, ",")
	hub := c.nodes[4] // not an access point: never the leader
	// The guest's volume is served by node3 first (not an access point
	// either); its nexus's node is faulted too and the nexus moves.
	first := c.nodes[3]
	log.add("system up on %s; hostvol served by %s, guestvol by %s first", c.net.Subnet(), hub.name, first.name)
	c.volume("create", "hostvol", "--size", "64MiB", "--replicas", "3")
	c.volume("create", "guestvol", "--size", "64MiB", "--replicas", "3")

	// fio through NBD from the host, writing and verifying until stopped.
	p := c.volume("publish", "hostvol", "--node", hub.name, "--protocol", "nbd")
	c.waitPhase("hostvol", "online")
	fio := exec.Command(testutil.RequireTool(t, "fio"), "--name=chaos-nbd", "--ioengine=nbd", "--uri="+p.Status.Target.URI,
		"--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=48m", "--verify=crc32c", "--verify_backlog=256",
		"--verify_fatal=1", "--randrepeat=0", "--time_based", "--runtime=24h", "--output-format=json")
	fio.Dir = t.TempDir()
	fioOut := &testutil.SyncBuffer{}
	fio.Stdout, fio.Stderr = fioOut, fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	fioDone := make(chan struct{})
	var fioErr error
	go func() { fioErr = fio.Wait(); close(fioDone) }()
	t.Cleanup(func() {
		fio.Process.Kill()
		<-fioDone
	})

	// The kernel's NVMe/TCP initiator in the guest: ext4 and fio on it,
	// running while the host injects faults (the barrier "chaos").
	hostID := uuid.NewString()
	hostNQN := "nqn.2014-08.org.nvmexpress:uuid:" + hostID
	q := c.volume("publish", "guestvol", "--node", first.name, "--host-nqn", hostNQN)
	u, err := url.Parse(q.Status.Target.URI)
	if err != nil {
		t.Fatal(err)
	}
	chaosStart, chaosEnd := make(chan struct{}), make(chan struct{})
	endChaos := func() {
		select {
		case <-chaosEnd:
		default:
			close(chaosEnd)
		}
	}
	barrier := func(name string) error {
		if name != "chaos" {
			return fmt.Errorf("unknown barrier %q", name)
		}
		close(chaosStart)
		<-chaosEnd
		return nil
	}
	// Native multipath, and `nexstor agent` (with the csi certificate)
	// connecting the new path when the nexus moves and dropping the old.
	const certDir = "/etc/nexstor-certs"
	files := map[string][]byte{}
	for _, f := range []string{"ca.crt", "csi.crt", "csi.key"} {
		b, err := os.ReadFile(filepath.Join(c.certs, f))
		if err != nil {
			t.Fatal(err)
		}
		files[certDir+"/"+f] = b
	}
	script := []string{
		"multipath",
		"write-file /etc/nvme/hostnqn " + hostNQN,
		"write-file /etc/nvme/hostid " + hostID,
		fmt.Sprintf("connect %s %s %s %s hostid=%s reconnect_delay=1 ctrl_loss_tmo=600", u.Hostname(), u.Port(), q.Status.Target.NQN,
			hostNQN, hostID),
		"start agent nexstor agent -a " + aps + " --cert-dir " + certDir + " --interval 500ms --nvme-config-dir /etc/nvme",
		"mkfs $DEV", "mount $DEV /mnt/v",
		"start fio fio --name=chaos-guest --directory=/mnt/v --size=24m --rw=randwrite --bs=4k --ioengine=psync" +
			" --fsync=16 --verify=crc32c --verify_backlog=64 --verify_fatal=1 --randrepeat=0 --time_based --runtime=24h",
		"sleep 3s", "running fio",
		"barrier chaos",
		"running fio", "stop fio", "running agent", "stop agent",
		"umount /mnt/v", "fsck $DEV",
	}
	vm := env.Boot(t, qemuvm.Config{Script: script, Barrier: barrier, Files: files,
		Programs: []string{"fio", testutil.BuildBinary(t, "nexstor")}, Timeout: soak + 15*time.Minute})
	t.Cleanup(endChaos) // before the guest's own cleanup waits for it
	var res *qemuvm.Result
	var vmErr error
	vmDone := make(chan struct{})
	go func() {
		res, vmErr = vm.Wait(context.Background())
		close(vmDone)
	}()
	select {
	case <-chaosStart:
	case <-vmDone:
		t.Fatalf("the guest ended before the faults: %v\n%s", vmErr, res)
	case <-time.After(5 * time.Minute):
		t.Fatal("the guest did not reach the faults within 5 minutes")
	}
	log.add("guest (%s) runs fio on ext4 over NVMe/TCP; host fio over NBD", env.Accel)

	// The faults, one at a time.
	mon := c.startMonitor(time.Second)
	h := &chaosRun{t: t, c: c, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), log: log,
		protected: map[*node]bool{hub: true}, nexusVol: "guestvol",
		nexusRNG: rand.New(rand.NewPCG(seed^0x6a09e667f3bcc908, seed))}
	next := h.schedule(soak)
	faults := 0
	for f, ok := next(); ok; f, ok = next() {
		h.inject(f)
		faults++
		select {
		case <-vmDone:
			t.Fatalf("the guest ended during the faults: %v\n%s", vmErr, res)
		case <-fioDone:
			t.Fatalf("fio over NBD ended during the faults: %v\n%s", fioErr, fioOut.String())
		default:
		}
	}
	log.add("%d faults done", faults)

	// Every volume heals within a bound.
	l, ok := c.waitWhole(3 * time.Minute)
	for _, v := range l {
		log.add("after the faults: %s", v.summary())
	}
	if !ok {
		t.Fatalf("the volumes did not heal within 3 minutes of the last fault")
	}
	// One more sample, after every removal of the faults.
	at := time.Now()
	l, err = c.volumeList("20s")
	mon.record(at, l, err)
	mon.finish()

	// The workloads end; what they wrote verified.
	endChaos()
	<-vmDone
	t.Logf("guest:\n%s", res)
	if vmErr != nil {
		t.Fatalf("guest: %v", vmErr)
	}
	if !strings.Contains(res.String(), "chaos-guest: (groupid=0, jobs=1): err= 0") {
		t.Fatal("the guest's fio reported an error (see its report above)")
	}
	fio.Process.Signal(syscall.SIGINT)
	select {
	case <-fioDone:
		// fio ends with status 128 when a signal stops it; its report
		// says whether a job failed.
		var ee *exec.ExitError
		if fioErr != nil && !(errors.As(fioErr, &ee) && ee.ExitCode() == 128) {
			t.Fatalf("fio over NBD: %v\n%s", fioErr, fioOut.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("fio over NBD did not end within a minute of SIGINT")
	}
	checkFioJSON(t, fioOut.String())
	log.add("fio verified on both volumes; the guest's ext4 is clean")

	for _, v := range []string{"hostvol", "guestvol"} {
		c.verifyIdentical(v)
	}
	log.add("replicas identical")

	// Nothing orphaned once gc.grace has passed.
	deadline := time.Now().Add(chaosGCGrace + 90*time.Second)
	for {
		orphans, pending := c.orphans()
		vols, err := c.volumeList("20s")
		if err != nil {
			t.Fatal(err)
		}
		nx := c.orphanNexuses(vols)
		if len(orphans) == 0 && !pending && len(nx) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left over: replicas %v, nexuses %v, operations pending %v", orphans, nx, pending)
		}
		time.Sleep(time.Second)
	}
	log.add("no orphan replica or nexus")

	// No removal ever left a volume without a healthy copy.
	evs := c.events()
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
	}
	refusals := 0
	for _, n := range c.nodes {
		refusals += strings.Count(n.out.String(), "refused to remove a replica")
	}
	mon.mu.Lock()
	log.add("events %v; %d status samples (%d polls unanswered); %d refused removals", kinds, len(mon.samples), mon.failed, refusals)
	mon.mu.Unlock()
	if bad := mon.lastCopyViolations(evs); len(bad) > 0 {
		t.Fatalf("a volume was left without a healthy replica:\n%s", strings.Join(bad, "\n"))
	}
	c.mustNexctl("volume", "unpublish", "hostvol", "-a", aps)
	t.Logf("chaos seed %d; timeline:\n%s", seed, log)
}

// checkFioJSON fails unless fio's JSON report has its job without error
// and with data written and read back.
func checkFioJSON(t *testing.T, out string) {
	t.Helper()
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	s := out
	if i := strings.IndexByte(s, '{'); i > 0 {
		s = s[i:]
	}
	if err := json.Unmarshal([]byte(s), &res); err != nil {
		t.Fatalf("fio: decode JSON output: %v\n%s", err, out)
	}
	if len(res.Jobs) != 1 || res.Jobs[0].Error != 0 || res.Jobs[0].Write.IOBytes == 0 || res.Jobs[0].Read.IOBytes == 0 {
		t.Fatalf("fio over NBD: %+v\n%s", res.Jobs, out)
	}
	t.Logf("fio over NBD: wrote %d MiB, read back %d MiB", res.Jobs[0].Write.IOBytes>>20, res.Jobs[0].Read.IOBytes>>20)
}
