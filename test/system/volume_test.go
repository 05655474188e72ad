package system

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

type volumeJSON struct {
	Spec struct {
		Name     string `json:"name"`
		UUID     string `json:"uuid"`
		Size     uint64 `json:"size"`
		Replicas uint32 `json:"replicas"`
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
			Owner      string `json:"owner"`
		} `json:"replicas"`
		Target *struct {
			Node  string `json:"node"`
			URI   string `json:"uri"`
			NQN   string `json:"nqn"`
			State string `json:"state"`
		} `json:"target"`
	} `json:"status"`
}

func (c *cluster) volume(args ...string) volumeJSON {
	c.t.Helper()
	out := c.mustNexctl(append(append([]string{"volume"}, args...), "-a", strings.Join(c.aps, ","), "-o", "json")...)
	var v volumeJSON
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		c.t.Fatalf("volume %v: %v\n%s", args, err, out)
	}
	return v
}

// inventory lists every replica and nexus on every node's engine.
func (c *cluster) inventory() []string {
	c.t.Helper()
	var out []string
	for _, n := range c.nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cc := c.engineConn(n)
		rr, err := enginev1.NewReplicaServiceClient(cc).ListReplicas(ctx, &enginev1.ListReplicasRequest{})
		if err != nil {
			cancel()
			c.t.Fatalf("%s: %v", n.name, err)
		}
		for _, r := range rr.Replicas {
			out = append(out, n.name+" replica "+r.Uuid)
		}
		nr, err := enginev1.NewNexusServiceClient(cc).ListNexuses(ctx, &enginev1.ListNexusesRequest{})
		cancel()
		if err != nil {
			c.t.Fatalf("%s: %v", n.name, err)
		}
		for _, x := range nr.Nexuses {
			out = append(out, n.name+" nexus "+x.Name)
		}
	}
	slices.Sort(out)
	return out
}

// TestVolumes: four `nexstor server --control` processes (three of them
// access points) make a system; volumes are placed on distinct nodes and
// fault domains, served through NBD to fio and over NVMe/TCP to the Linux
// kernel, grown, survive a restart of every process and a SIGKILLed
// leader, and leave nothing behind when deleted.
func TestVolumes(t *testing.T) {
	for _, tool := range []string{"fio", "nbdcopy"} {
		testutil.RequireTool(t, tool)
	}
	c := newCluster(t, clusterOptions{nodes: 4, accessPoints: 1, poolSize: "160MiB", nbd: true,
		faultDomains: []string{"/rack-a", "/rack-b", "/rack-c", "/rack-c"}})
	c.start()
	for _, n := range c.nodes {
		n.waitLog("waiting in maintenance mode", 30*time.Second)
	}
	c.mustNexctl("storage", "format", "-l", c.hosts())
	c.waitMembers("all joined", 60*time.Second, c.allState("joined"))
	aps := strings.Join(c.aps, ",")

	// Not placeable: 4 replicas over 3 fault domains; nothing is left.
	out := c.wantFailure(c.certs, "admin", "volume", "create", "wide", "--size", "16MiB", "--replicas", "4", "-a", aps)
	if !strings.Contains(out, "4 replicas need 4 nodes") || !strings.Contains(out, "fault domain /rack-c already used") {
		t.Fatalf("create over the fault domains:\n%s", out)
	}
	out = c.wantFailure(c.certs, "admin", "volume", "create", "huge", "--size", "1GiB", "--replicas", "3", "-a", aps)
	if !strings.Contains(out, "has") || !strings.Contains(out, "needs 1GiB") {
		t.Fatalf("create over capacity:\n%s", out)
	}
	if inv := c.inventory(); len(inv) != 0 {
		t.Fatalf("a refused create left %v", inv)
	}

	v := c.volume("create", "data", "--size", "32MiB", "--replicas", "3")
	if v.Status.Phase != "online" || len(v.Status.Replicas) != 3 {
		t.Fatalf("created: %+v", v.Status)
	}
	domain := map[string]string{"node0": "a", "node1": "b", "node2": "c", "node3": "c"}
	seenNode, seenDomain := map[string]bool{}, map[string]bool{}
	for _, r := range v.Status.Replicas {
		if seenNode[r.Node] || seenDomain[domain[r.Node]] {
			t.Fatalf("replicas share a node or fault domain: %+v", v.Status.Replicas)
		}
		seenNode[r.Node], seenDomain[domain[r.Node]] = true, true
		if r.Owner != v.Spec.UUID {
			t.Fatalf("replica %s owned by %q", r.UUID, r.Owner)
		}
	}
	on := v.Status.Replicas[0].Node

	// NBD: fio verify, then a pattern that must survive the restarts.
	p := c.volume("publish", "data", "--node", on, "--protocol", "nbd")
	if p.Status.Target == nil || !strings.HasPrefix(p.Status.Target.URI, "nbd://") {
		t.Fatalf("published over nbd: %+v", p.Status)
	}
	// Thick replicas are not known blank: the first nexus brings them in
	// sync from one of them, and says degraded until then.
	c.waitPhase("data", "online")
	testutil.FioVerify(t, p.Status.Target.URI, 8<<20)
	pattern := testutil.NBDCopyRoundTrip(t, p.Status.Target.URI, 32<<20)
	c.volume("unpublish", "data")

	// The kernel over NVMe/TCP: ext4, files, fsck; grown online.
	outer := t // the pattern file must outlive the subtest
	t.Run("kernel", func(t *testing.T) {
		env := qemuvm.Require(t)
		hostNQN := "nqn.2014-08.org.nvmexpress:uuid:" + uuid.NewString()
		q := c.volume("publish", "data", "--node", on, "--host-nqn", hostNQN)
		u, err := url.Parse(q.Status.Target.URI)
		if err != nil {
			t.Fatal(err)
		}
		barrier := func(name string) error {
			if name != "grow" {
				return fmt.Errorf("unknown barrier %q", name)
			}
			_, errOut, err := c.nexctl("volume", "resize", "data", "48MiB", "-a", aps)
			if err != nil {
				return fmt.Errorf("volume resize: %v: %s", err, errOut)
			}
			return nil
		}
		script := []string{
			fmt.Sprintf("connect 10.0.2.2 %s %s %s", u.Port(), q.Status.Target.NQN, hostNQN),
			"mkfs $DEV", "mount $DEV /mnt/v", "write-files /mnt/v/f 8 300000 7", "sync", "umount /mnt/v",
			"barrier grow", fmt.Sprintf("wait-size $DEV %d", 48<<20),
			"mount $DEV /mnt/v", "verify-files /mnt/v/f 8 300000 7", "umount /mnt/v", "fsck $DEV", "disconnect $CTRL",
		}
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		res, err := env.Boot(t, qemuvm.Config{Script: script, Barrier: barrier}).Wait(ctx)
		cancel()
		t.Logf("guest (%s):\n%s", env.Accel, res)
		if err != nil {
			t.Fatal(err)
		}
		if g := c.volume("get", "data"); g.Spec.Size != 48<<20 {
			t.Fatalf("size after resize %d", g.Spec.Size)
		}
		c.volume("unpublish", "data")
		// The guest's file system replaced the pattern; write it again.
		p = c.volume("publish", "data", "--node", on, "--protocol", "nbd")
		pattern = testutil.NBDCopyRoundTrip(outer, p.Status.Target.URI, 32<<20)
		c.volume("unpublish", "data")
	})
	if t.Failed() {
		return
	}
	before := c.volume("get", "data")

	// Restart every process: the volume comes back with the same replicas,
	// all healthy, and its data.
	for _, n := range c.nodes {
		n.stop(syscall.SIGTERM)
	}
	c.start()
	c.waitMembers("all rejoined", 90*time.Second, c.allState("joined"))
	var after volumeJSON
	deadline := time.Now().Add(30 * time.Second)
	for {
		after = c.volume("get", "data")
		if after.Status.Phase == "online" || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if after.Status.Phase != "online" || len(after.Status.Replicas) != 3 {
		t.Fatalf("after a full restart: %+v", after.Status)
	}
	for i := range after.Status.Replicas {
		if after.Status.Replicas[i].UUID != before.Status.Replicas[i].UUID {
			t.Fatalf("replicas changed across the restart: %+v, %+v", before.Status.Replicas, after.Status.Replicas)
		}
	}
	p = c.volume("publish", "data", "--node", on, "--protocol", "nbd")
	if p = c.waitPhase("data", "online"); p.Status.Healthy != 3 {
		t.Fatalf("republished after restart: %+v", p.Status)
	}
	checkPattern(t, p.Status.Target.URI, pattern, 32<<20)

	// Drain the node holding the /rack-c replica: the reconcilers put a
	// new one on the other /rack-c node, rebuild it, and only then drop
	// the old one; the data is all there.
	drained := ""
	for _, r := range p.Status.Replicas {
		if domain[r.Node] == "c" {
			drained = r.Node
		}
	}
	out = c.mustNexctl("node", "drain", drained, "--wait", "--timeout", "3m", "-a", aps)
	if !strings.Contains(out, "drained") {
		t.Fatalf("node drain --wait:\n%s", out)
	}
	d := c.waitPhase("data", "online")
	for _, r := range d.Status.Replicas {
		if r.Node == drained {
			t.Fatalf("a replica is left on the drained node: %+v", d.Status.Replicas)
		}
	}
	if d.Status.Healthy != 3 || len(d.Status.Replicas) != 3 {
		t.Fatalf("after the drain: %+v", d.Status)
	}
	var evs []struct {
		Kind, Node, Cause string
	}
	if err := json.Unmarshal([]byte(c.mustNexctl("event", "list", "-a", aps, "-o", "json")), &evs); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, e := range evs {
		kinds[e.Kind] = true
	}
	if !kinds["node.drain"] || !kinds["replica.replace"] || !kinds["replica.remove"] {
		t.Fatalf("events of the drain: %+v", evs)
	}
	// The nexus moved too when it was on the drained node.
	checkPattern(t, d.Status.Target.URI, pattern, 32<<20)
	c.mustNexctl("node", "uncordon", drained, "-a", aps)
	c.volume("unpublish", "data")

	// SIGKILL the leader while volumes are being created: the next leader
	// finishes or rolls back each; no replica is left without its volume.
	leader := c.leader()
	cmds := make([]*exec.Cmd, 3)
	for i := range cmds {
		cmds[i] = exec.Command(testutil.BuildBinary(t, "nexctl"), "volume", "create", fmt.Sprintf("race%d", i), "--size", "16MiB",
			"--replicas", "2", "-a", aps, "--cert-dir", c.certs, "--identity", "admin", "--timeout", "60s")
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(150 * time.Millisecond)
	leader.stop(syscall.SIGKILL)
	for _, cmd := range cmds {
		cmd.Wait() // either way: the invariant below is what matters
	}
	leader.start()
	c.waitMembers("all joined after the leader's death", 90*time.Second, c.allState("joined"))
	deadline = time.Now().Add(60 * time.Second)
	for {
		orphans, pending := c.orphans()
		if len(orphans) == 0 && !pending {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the leader's death: orphans %v, operations pending %v", orphans, pending)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// A move under TLS: the leader (server certificate) sets the old
	// nexus ANA inaccessible, publishes the new one and then destroys the
	// old one.
	p = c.volume("publish", "data", "--node", on)
	m := c.volume("move", "data")
	if m.Status.Target == nil || m.Status.Target.Node == on || m.Status.Target.NQN != p.Status.Target.NQN {
		t.Fatalf("moved: %+v, was %+v", m.Status.Target, p.Status.Target)
	}
	for _, n := range c.nodes {
		if strings.Contains(n.out.String(), "could not be set inaccessible") {
			t.Fatalf("%s could not set the old nexus inaccessible:\n%s", n.name, tail(n.out.String(), 4000))
		}
	}
	for _, x := range c.inventory() {
		if x == on+" nexus data" {
			t.Fatalf("the old nexus is left on %s: %v", on, c.inventory())
		}
	}

	// Delete everything: no replica or nexus is left on any node.
	if _, _, err := c.nexctl("volume", "delete", "data", "-a", aps); err == nil {
		t.Fatal("deleted a published volume without --force")
	}
	c.mustNexctl("volume", "delete", "data", "--force", "-a", aps)
	var list []volumeJSON
	if err := json.Unmarshal([]byte(c.mustNexctl("volume", "list", "-a", aps, "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	for _, x := range list {
		c.mustNexctl("volume", "delete", x.Spec.Name, "--force", "-a", aps)
	}
	if inv := c.inventory(); len(inv) != 0 {
		t.Fatalf("left behind after deleting every volume: %v", inv)
	}
}

// leader returns the node running the management service leader.
func (c *cluster) leader() *node {
	c.t.Helper()
	out := c.mustNexctl("system", "leader-query", "-a", strings.Join(c.aps, ","), "-o", "json")
	var l struct {
		Leader string `json:"leader"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		c.t.Fatalf("system leader: %v\n%s", err, out)
	}
	for _, n := range c.nodes {
		if n.grpc == l.Leader {
			return n
		}
	}
	c.t.Fatalf("leader %q is not a node", l.Leader)
	return nil
}

// orphans returns the replicas that no volume owns, and whether some
// volume still has an operation under way.
func (c *cluster) orphans() ([]string, bool) {
	c.t.Helper()
	out, _, err := c.nexctl("volume", "list", "-a", strings.Join(c.aps, ","), "-o", "json")
	if err != nil {
		return []string{"volume list failed"}, true
	}
	var list []struct {
		Status struct {
			Operation string `json:"operation"`
			Replicas  []struct {
				UUID string `json:"uuid"`
			} `json:"replicas"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		c.t.Fatal(err)
	}
	owned := map[string]bool{}
	pending := false
	for _, v := range list {
		pending = pending || v.Status.Operation != ""
		for _, r := range v.Status.Replicas {
			owned[r.UUID] = true
		}
	}
	var orphans []string
	for _, x := range c.inventory() {
		f := strings.Fields(x)
		if f[1] == "replica" && !owned[f[2]] {
			orphans = append(orphans, x)
		}
	}
	return orphans, pending
}

// checkPattern reads the first size bytes of the NBD export and compares
// them with the file want.
func checkPattern(t *testing.T, uri, want string, size int64) {
	t.Helper()
	got := t.TempDir() + "/got.img"
	if out, err := exec.Command(testutil.RequireTool(t, "nbdcopy"), uri, got).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy %s: %v\n%s", uri, err, out)
	}
	a, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < int(size) || !bytes.Equal(a[:size], b[:size]) {
		t.Fatalf("the volume's data changed across the restart")
	}
}

// waitPhase polls the volume until it is in phase (bounded).
func (c *cluster) waitPhase(name, phase string) volumeJSON {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		v := c.volume("get", name)
		if v.Status.Phase == phase {
			return v
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("volume %s is %s (%s), not %s", name, v.Status.Phase, v.Status.Reason, phase)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
