package system

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
)

// startEtcd starts a three-member cluster of the etcd program and returns
// the processes and their client URLs.
func startEtcd(t *testing.T) ([]*exec.Cmd, []string) {
	t.Helper()
	bin := testutil.RequireTool(t, "etcd")
	dir := t.TempDir()
	var clients, peers, initial []string
	for i := 0; i < 3; i++ {
		clients = append(clients, fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t)))
		peers = append(peers, fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t)))
		initial = append(initial, fmt.Sprintf("e%d=%s", i, peers[i]))
	}
	var procs []*exec.Cmd
	for i := range clients {
		name := fmt.Sprintf("e%d", i)
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--name", name, "--data-dir", filepath.Join(dir, name),
			"--listen-client-urls", clients[i], "--advertise-client-urls", clients[i],
			"--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", "nexstor-system-test",
			"--initial-cluster-state", "new", "--heartbeat-interval", "50", "--election-timeout", "500")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatalf("start etcd: %v", err)
		}
		procs = append(procs, cmd)
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			logf.Close()
		})
	}
	return procs, clients
}

// TestExternalEtcd runs three servers, all access points, on an external
// three-member etcd cluster and kills one etcd member in the middle: the
// system keeps answering, admitting, stopping and starting members, and a
// restarted server keeps its rank.
func TestExternalEtcd(t *testing.T) {
	procs, endpoints := startEtcd(t)
	c := newCluster(t, clusterOptions{nodes: 3, accessPoints: 3, etcdEndpoints: endpoints})
	c.start()
	for _, n := range c.nodes {
		n.waitLog("waiting in maintenance mode", 20*time.Second)
	}
	c.mustNexctl("storage", "format", "-l", c.hosts())
	m := c.waitMembers("all joined", 40*time.Second, c.allState("joined"))
	ranks := map[string]uint32{}
	for _, n := range c.nodes {
		ranks[n.grpc] = m[n.grpc].Rank
	}

	// One etcd member dies; the other two keep a quorum.
	procs[0].Process.Signal(syscall.SIGKILL)
	procs[0].Wait()

	r := ranks[c.nodes[1].grpc]
	c.mustNexctl("system", "stop", "-a", strings.Join(c.aps, ","), "--ranks", fmt.Sprint(r))
	c.waitMembers("stopped after losing an etcd member", 20*time.Second, func(m map[string]member) bool {
		return m[c.nodes[1].grpc].State == "stopped"
	})
	c.mustNexctl("system", "start", "-a", strings.Join(c.aps, ","))
	c.waitMembers("started", 20*time.Second, c.allState("joined"))

	// A killed server turns unresponsive and rejoins with its rank.
	victim := c.nodes[2]
	victim.stop(syscall.SIGKILL)
	c.waitMembers("killed server unresponsive", 30*time.Second, func(m map[string]member) bool {
		return m[victim.grpc].State == "unresponsive"
	})
	victim.start()
	m = c.waitMembers("rejoined", 30*time.Second, c.allState("joined"))
	if m[victim.grpc].Rank != ranks[victim.grpc] {
		t.Fatalf("rank after restart %d, want %d", m[victim.grpc].Rank, ranks[victim.grpc])
	}
	var lq struct {
		Leader   string   `json:"leader"`
		Replicas []string `json:"replicas"`
	}
	out := c.mustNexctl("system", "leader-query", "-a", strings.Join(c.aps, ","), "-o", "json")
	if err := jsonUnmarshal(out, &lq); err != nil || lq.Leader == "" || len(lq.Replicas) != 3 {
		t.Fatalf("leader query: %+v, %v\n%s", lq, err, out)
	}
}
