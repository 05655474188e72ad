package system

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/netns"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

// partitionNode is the nodeFault of a network partition in c (whose nodes
// run in namespaces): the node's link goes down, packets are lost and its
// connections hang, the process runs on; restored by Heal, when whatever
// the node held back goes out: its nexus's late writes must be refused.
func partitionNode(c *cluster) nodeFault {
	return nodeFault{name: "partition", cut: func(t *testing.T, n *node) func() {
		c.net.Partition(n.ns)
		return func() { c.net.Heal(n.ns) }
	}}
}

// nexusLogRE matches the log lines of a nexus coming to life on a node.
var nexusLogRE = regexp.MustCompile(`msg="nexus (created|restored|published)"`)

// TestHANexusNodePartition: the system of TestHANexusNodeLoss with each
// node in its own network namespace; the guest's kernel uses the volume
// through native NVMe multipath with `nexstor agent` following it, ext4 on
// it, fio writing and verifying. The nexus's node is partitioned (its link
// goes down: no reset, its process and its nexus run on) until the volume
// has failed over and the agent has connected the new path and dropped the
// old one, then healed: whatever the old nexus held back reaches the
// replicas after the new nexus took them over, and is refused (epoch
// fence). fio sees no I/O error and verifies online, a file written at
// 1 MiB/s across the partition is verified whole after the heal, files
// written before and during the partition read back, ext4 stays mounted
// and fsck is clean, the replicas are identical, and the stale nexus is
// destroyed and never created, restored or published again on its node.
//
// It takes about 2 minutes (the guest under KVM on a loaded 2-CPU machine).
func TestHANexusNodePartition(t *testing.T) {
	netns.Require(t)
	env := qemuvm.Require(t)
	testutil.RequireTool(t, "fio")
	h := newHASystemOn(t, "move: {grace: 15s}\n", true)
	c, ap, aps := h.c, h.ap, h.aps
	part := partitionNode(c)

	var (
		mu      sync.Mutex
		events  []string
		restore func()
		victim  *node
		healAt  int // length of the victim's log when it was healed
	)
	note := func(format string, args ...any) {
		mu.Lock()
		events = append(events, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	barrier := func(name string) (map[string]string, error) {
		note("barrier %s", name)
		switch name {
		case "fault-partition":
			cur := c.getVolume("data")
			if cur == nil || cur.Status.Target == nil {
				return nil, fmt.Errorf("volume not published: %+v", cur)
			}
			v := c.nodeNamed(cur.Status.Target.Node)
			if v == nil || v == ap {
				return nil, fmt.Errorf("the nexus is on %q", cur.Status.Target.Node)
			}
			note("partition %s (%s, nexus node, port %s)", v.name, v.host, targetPort(cur))
			r := part.cut(t, v)
			mu.Lock()
			victim, restore = v, r
			mu.Unlock()
			nv, err := c.waitVolume("data", "moved from "+v.name, 2*time.Minute, func(x *haVolume) bool {
				return x.Status.Target != nil && x.Status.Target.Node != v.name && x.Status.Operation == ""
			})
			if err != nil {
				return nil, err
			}
			note("failed over to %s (%s port %s)", nv.Status.Target.Node, h.guestAddr(nv), targetPort(nv))
			return map[string]string{"OLD": targetPort(cur), "OLDADDR": h.guestAddr(cur),
				"NEW": targetPort(nv), "NEWADDR": h.guestAddr(nv)}, nil
		case "restore-partition":
			mu.Lock()
			r, v := restore, victim
			mu.Unlock()
			if r == nil {
				return nil, fmt.Errorf("no partition to heal")
			}
			mu.Lock()
			healAt = len(v.out.String())
			mu.Unlock()
			r()
			note("healed %s", v.name)
			c.waitMembers("all joined again", 90*time.Second, c.allState("joined"))
			if _, err := c.waitVolume("data", "healed", 3*time.Minute, func(x *haVolume) bool {
				return x.Status.Phase == "online" && x.Status.Healthy == 3 && x.Status.Operation == ""
			}); err != nil {
				return nil, err
			}
			// The stale nexus is destroyed: one nexus in the system.
			deadline := time.Now().Add(time.Minute)
			for {
				var nexuses []string
				for _, x := range c.inventory() {
					if strings.Contains(x, " nexus ") {
						nexuses = append(nexuses, x)
					}
				}
				if len(nexuses) == 1 && !strings.HasPrefix(nexuses[0], v.name+" ") {
					note("volume healed; nexuses %v", nexuses)
					return nil, nil
				}
				if time.Now().After(deadline) {
					return nil, fmt.Errorf("nexuses after the heal: %v", nexuses)
				}
				time.Sleep(300 * time.Millisecond)
			}
		case "verify":
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
		// Written at 1 MiB/s from before the partition to after it, then
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
		"start seq "+seqJob,
		"sleep 3s",
		"running fio",
		"barrier fault-partition",
		"wait-path $NEWADDR $NEW live",
		"wait-path $OLDADDR $OLD gone",
		"running fio",
		"write-files /mnt/v/during 8 262144 3",
		"sync",
		"barrier restore-partition",
		"wait seq",
		"sleep 2s",
		"running fio",
		"stop fio",
		"stop agent",
		"run "+seqJob+" --verify_only",
		"verify-files /mnt/v/before 8 262144 1",
		"verify-files /mnt/v/during 8 262144 3",
		"umount /mnt/v",
		"fsck $DEV",
		"barrier verify",
	)
	vm := env.Boot(t, qemuvm.Config{
		Programs:    []string{"fio", testutil.BuildBinary(t, "nexstor")},
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
		if o := stepOutput(res, name); !strings.Contains(o, "err= 0") || strings.Contains(o, "verify:") {
			t.Errorf("%s (the whole-file fio): %s", name, o)
		}
	}
	for _, bad := range []string{"I/O error", "failing I/O", "Buffer I/O", "EXT4-fs error"} {
		if strings.Contains(res.Console, bad) {
			t.Errorf("the kernel reported %q", bad)
		}
	}

	// The stale nexus was destroyed on its node after the heal, and no
	// nexus came to life there again.
	mu.Lock()
	after := victim.out.String()[healAt:]
	mu.Unlock()
	if !strings.Contains(after, `msg="nexus destroyed"`) {
		t.Errorf("%s did not destroy its stale nexus after the heal", victim.name)
	}
	if m := nexusLogRE.FindString(after); m != "" {
		t.Errorf("a nexus came to life on %s after the heal: %s", victim.name, m)
	}
	fenced := 0
	for _, n := range c.nodes {
		fenced += strings.Count(n.out.String(), "claim operation refused") + strings.Count(n.out.String(), "fenced")
	}
	t.Logf("fence lines in the nodes' logs: %d", fenced)
}
