package system

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
)

// TestReturningNode: four nodes in network namespaces serve a volume of
// three replicas over NBD. A replica node partitioned for less than
// rebuild.partial_wait comes back with a partial resync that copies about
// what was written while it was away; partitioned for longer (its process
// and replica still there), it is replaced on the fourth node with a full
// rebuild, and once it returns its old replica is destroyed.
//
// About 3 minutes.
func TestReturningNode(t *testing.T) {
	nbdcopy := testutil.RequireTool(t, "nbdcopy")
	log := newTimeline(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("timeline:\n%s", log)
		}
	})
	// partial_wait leaves room for what happens between the partition
	// and the write (the node found unresponsive, the write's timeout on
	// the lost child) within the short outage.
	const partialWait = 45 * time.Second
	c := newNetnsCluster(t, 4, 3, partialWait)
	const size, written = 64 << 20, 4 << 20
	c.volume("create", "ret", "--size", "64MiB", "--replicas", "3")
	v := c.volume("get", "ret")
	hub := c.nodeByName(v.Status.Replicas[0].Node)
	p := c.volume("publish", "ret", "--node", hub.name, "--protocol", "nbd")
	c.waitPhase("ret", "online")
	uri := p.Status.Target.URI
	// The node that goes away holds a replica; prefer one that is not the
	// leader (whose loss would add an election to the outage).
	leader := c.leader()
	var away *node
	var awayReplica string
	for _, r := range v.Status.Replicas[1:] {
		if n := c.nodeByName(r.Node); away == nil || away == leader {
			away, awayReplica = n, r.UUID
		}
	}
	log.add("volume ret on %v, served by %s; %s goes away", replicaNodes(v), hub.name, away.name)

	// writeAt writes a pattern of n bytes at offset 0 through NBD and
	// returns the file holding it.
	writeAt := func(n int64, seed byte) string {
		t.Helper()
		src := filepath.Join(t.TempDir(), "pattern.img")
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7) ^ seed ^ byte(i>>12)
		}
		if err := os.WriteFile(src, b, 0o644); err != nil {
			t.Fatal(err)
		}
		// --flush: what was written since the last flush counts as
		// possibly lost by a child that leaves, and would be copied too.
		if out, err := exec.Command(nbdcopy, "--flush", src, uri).CombinedOutput(); err != nil {
			t.Fatalf("nbdcopy %s: %v\n%s", uri, err, out)
		}
		return src
	}
	writeAt(size, 1)

	// Short: away less than partial_wait, written meanwhile, back in time.
	c.net.Partition(away.ns)
	log.add("%s partitioned", away.name)
	c.waitMembers(away.name+" unresponsive", time.Minute, func(m map[string]member) bool { return m[away.grpc].State != "joined" })
	want := writeAt(written, 2)
	c.awaitVolume("ret", "the replica waited for", time.Minute, func(v volumeStatusJSON) bool {
		return v.Status.Healthy == 2 && slices.ContainsFunc(v.Status.Repairs, func(r repairJSON) bool { return r.Kind == "waiting" })
	})
	c.net.Heal(away.ns)
	log.add("%d MiB written while away; %s healed", written>>20, away.name)
	if l, ok := c.waitWhole(2 * time.Minute); !ok {
		t.Fatalf("not whole after the short outage: %+v", l)
	}
	rb := c.rebuildOf(hub, "ret", awayReplica)
	if rb == nil || !rb.Partial || rb.State != "completed" || rb.TotalBytes < written || rb.TotalBytes > 4*written {
		t.Fatalf("the returning replica's rebuild (want partial, completed, %d to %d bytes): %+v", written, 4*written, rb)
	}
	log.add("partial resync of %s: %d bytes copied for %d written", short(awayReplica), rb.TotalBytes, written)
	var resync, replace int
	for _, e := range c.events() {
		if e.Volume == "ret" && e.Replica == awayReplica {
			switch e.Kind {
			case "replica.resync":
				resync++
			case "replica.replace", "replica.remove":
				replace++
			}
		}
	}
	if resync != 1 || replace != 0 {
		t.Fatalf("events of %s after the short outage: %d resyncs, %d replaces or removes", short(awayReplica), resync, replace)
	}
	checkPattern(t, uri, want, written)
	c.verifyIdentical("ret")

	// Long: away more than partial_wait; replaced on the fourth node.
	c.net.Partition(away.ns)
	log.add("%s partitioned again, past partial_wait", away.name)
	replaced := c.awaitVolume("ret", "replaced", partialWait+2*time.Minute, func(v volumeStatusJSON) bool {
		if v.Status.Healthy != 3 || len(v.Status.Replicas) != 3 {
			return false
		}
		for _, r := range v.Status.Replicas {
			if r.UUID == awayReplica || r.Node == away.name {
				return false
			}
		}
		return true
	})
	log.add("replaced: %s", replaced.summary())
	// The new replica's full copy names the one it replaces; the old one
	// left the volume.
	replacedBy, removed := "", false
	for _, e := range c.events() {
		switch {
		case e.Volume != "ret":
		case e.Kind == "replica.replace" && strings.Contains(e.Cause, awayReplica):
			replacedBy = e.Replica
		case e.Kind == "replica.remove" && e.Replica == awayReplica:
			removed = true
		}
	}
	if replacedBy == "" || !removed || !slices.ContainsFunc(replaced.Status.Replicas, func(r replicaStatusJSON) bool {
		return r.UUID == replacedBy
	}) {
		t.Fatalf("events of the long outage: %s replaced by %q, removed %v; volume %s", short(awayReplica), replacedBy, removed,
			replaced.summary())
	}
	if _, ok := c.tryReplicas(away)[awayReplica]; ok {
		t.Fatal("the partitioned node answers")
	}
	c.net.Heal(away.ns)
	log.add("%s healed; its old replica %s must go", away.name, short(awayReplica))
	c.waitMembers(away.name+" back", time.Minute, c.allState("joined"))
	deadline := time.Now().Add(chaosGCGrace + 90*time.Second)
	for {
		rs, err := c.listReplicas(away)
		_, still := rs[awayReplica]
		if err == nil && !still {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old replica %s is still on %s (%v): %v", awayReplica, away.name, err, rs)
		}
		time.Sleep(500 * time.Millisecond)
	}
	log.add("old replica destroyed")
	if orphans, pending := c.orphans(); len(orphans) > 0 || pending {
		t.Fatalf("orphans %v, pending %v", orphans, pending)
	}
	checkPattern(t, uri, want, written)
	c.verifyIdentical("ret")
	t.Logf("timeline:\n%s", log)
}

// awaitVolume polls the volume list (bounded) until ok accepts the volume;
// it fails the test otherwise.
func (c *cluster) awaitVolume(name, what string, within time.Duration, ok func(volumeStatusJSON) bool) volumeStatusJSON {
	c.t.Helper()
	deadline := time.Now().Add(within)
	var last volumeStatusJSON
	for {
		l, err := c.volumeList("10s")
		for _, v := range l {
			if v.Spec.Name == name {
				last = v
				if ok(v) {
					return v
				}
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("volume %s: %s not reached within %v; last %s (%v)", name, what, within, last.summary(), err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func replicaNodes(v volumeJSON) string {
	var ns []string
	for _, r := range v.Status.Replicas {
		ns = append(ns, r.Node)
	}
	return strings.Join(ns, ",")
}
