package system

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
)

// TestThreeServers runs three servers sharing one embedded etcd (the first
// is the only access point) with mutual TLS: they wait in maintenance mode
// until `nexctl storage format`, join with ranks 0-2, a SIGKILLed member
// turns unresponsive and rejoins with its rank after a restart, system
// stop/start move members, and restarting every process keeps ranks,
// pools and replicas.
func TestThreeServers(t *testing.T) {
	c := newCluster(t, clusterOptions{nodes: 3, accessPoints: 1})
	c.start()
	for _, n := range c.nodes {
		n.waitLog("waiting in maintenance mode", 20*time.Second)
	}
	// The effective configuration is written read-only.
	eff := filepath.Join(c.nodes[1].dir, "run", "server.effective.yaml")
	if fi, err := os.Stat(eff); err != nil || fi.Mode().Perm() != 0o444 {
		t.Fatalf("effective config %s: %v, %v", eff, fi, err)
	}
	// Unformatted: the engine is not serving, and nobody has joined.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err := enginev1.NewPoolServiceClient(c.engineConn(c.nodes[0])).ListPools(ctx, &enginev1.ListPoolsRequest{})
	cancel()
	if err == nil || !strings.Contains(err.Error(), "maintenance mode") {
		t.Fatalf("engine call on an unformatted node: %v, want a maintenance mode error", err)
	}
	m := c.waitMembers("management service up", 20*time.Second, func(m map[string]member) bool { return len(m) == 0 })

	var scan []struct {
		Host  string `json:"host"`
		Error string `json:"error"`
		Pools []struct {
			Name string `json:"name"`
		} `json:"pools"`
	}
	if err := json.Unmarshal([]byte(c.mustNexctl("storage", "scan", "-l", c.hosts(), "-o", "json")), &scan); err != nil {
		t.Fatal(err)
	}
	if len(scan) != 3 || scan[0].Error != "" || len(scan[0].Pools) != 1 || scan[0].Pools[0].Name != "p0" {
		t.Fatalf("storage scan: %+v", scan)
	}

	out := c.mustNexctl("storage", "format", "-l", c.hosts())
	if !strings.Contains(out, "formatted, pools p0") {
		t.Fatalf("storage format:\n%s", out)
	}
	m = c.waitMembers("all joined", 30*time.Second, c.allState("joined"))
	ranks := map[string]uint32{}
	seen := map[uint32]bool{}
	for _, n := range c.nodes {
		ranks[n.grpc] = m[n.grpc].Rank
		seen[m[n.grpc].Rank] = true
	}
	if !seen[0] || !seen[1] || !seen[2] {
		t.Fatalf("ranks %v, want 0-2", ranks)
	}
	// The grouped table collapses the three ranks into one row.
	if out := c.mustNexctl("system", "query", "-a", c.aps[0]); !strings.Contains(out, "0-2") || !strings.Contains(out, "joined") {
		t.Fatalf("system query table:\n%s", out)
	}

	// A replica on every node, to check that restarts keep it.
	for _, n := range c.nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := enginev1.NewReplicaServiceClient(c.engineConn(n)).CreateReplica(ctx,
			&enginev1.CreateReplicaRequest{Name: "r-" + n.name, Pool: "p0", Size: 8 << 20, Thin: true})
		cancel()
		if err != nil {
			t.Fatalf("%s: create replica: %v", n.name, err)
		}
	}

	// SIGKILL a member that is not the access point: unresponsive within
	// the heartbeat window; restarted, it rejoins with its rank.
	victim := c.nodes[2]
	victim.stop(syscall.SIGKILL)
	c.waitMembers("killed member unresponsive", 20*time.Second, func(m map[string]member) bool {
		return m[victim.grpc].State == "unresponsive"
	})
	victim.start()
	m = c.waitMembers("killed member rejoined", 30*time.Second, c.allState("joined"))
	if m[victim.grpc].Rank != ranks[victim.grpc] {
		t.Fatalf("rank after restart %d, want %d", m[victim.grpc].Rank, ranks[victim.grpc])
	}

	// Stop and start a rank.
	r1 := ranks[c.nodes[1].grpc]
	c.mustNexctl("system", "stop", "-a", c.aps[0], "--ranks", itoa(r1))
	c.waitMembers("rank stopped", 10*time.Second, func(m map[string]member) bool { return m[c.nodes[1].grpc].State == "stopped" })
	// A stopped member stops its engine: no pools, no I/O.
	c.nodes[1].waitLog("engine stopped", 10*time.Second)
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	_, err = enginev1.NewReplicaServiceClient(c.engineConn(c.nodes[1])).ListReplicas(ctx, &enginev1.ListReplicasRequest{})
	cancel()
	if err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("engine of a stopped member: %v, want a stopped error", err)
	}
	c.mustNexctl("system", "start", "-a", c.aps[0])
	c.waitMembers("all started", 10*time.Second, c.allState("joined"))
	deadline := time.Now().Add(10 * time.Second)
	for c.tryReplicas(c.nodes[1])["r-"+c.nodes[1].name] != "p0" {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the engine did not come back with its replica after system start", c.nodes[1].name)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Restart every process: ranks, pools and replicas are kept.
	for _, n := range c.nodes {
		n.stop(syscall.SIGTERM)
	}
	c.start()
	m = c.waitMembers("all rejoined after a full restart", 40*time.Second, c.allState("joined"))
	for _, n := range c.nodes {
		if m[n.grpc].Rank != ranks[n.grpc] {
			t.Errorf("%s: rank %d after restart, want %d", n.name, m[n.grpc].Rank, ranks[n.grpc])
		}
		if reps := c.replicas(n); reps["r-"+n.name] != "p0" {
			t.Errorf("%s: replicas after restart %v, want r-%s on p0", n.name, reps, n.name)
		}
		if strings.Contains(n.out.String(), "waiting in maintenance mode") {
			t.Errorf("%s: a formatted node waited in maintenance mode", n.name)
		}
	}
}

func itoa(r uint32) string { return fmt.Sprint(r) }
