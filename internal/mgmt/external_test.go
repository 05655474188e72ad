package mgmt

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/credentials/insecure"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/testutil"
)

type etcdProc struct {
	name      string
	clientURL string
	cmd       *exec.Cmd
}

// startEtcdCluster starts a three-member cluster of the etcd program.
func startEtcdCluster(t *testing.T, bin string) []*etcdProc {
	t.Helper()
	dir := t.TempDir()
	var procs []*etcdProc
	var peers []string
	type urls struct{ client, peer string }
	var us []urls
	for i := 0; i < 3; i++ {
		u := urls{fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t)), fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))}
		us = append(us, u)
		peers = append(peers, fmt.Sprintf("m%d=%s", i, u.peer))
	}
	for i, u := range us {
		name := fmt.Sprintf("m%d", i)
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--name", name, "--data-dir", filepath.Join(dir, name),
			"--listen-client-urls", u.client, "--advertise-client-urls", u.client,
			"--listen-peer-urls", u.peer, "--initial-advertise-peer-urls", u.peer,
			"--initial-cluster", strings.Join(peers, ","), "--initial-cluster-token", "nexstor-test",
			"--initial-cluster-state", "new", "--heartbeat-interval", "50", "--election-timeout", "500")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", bin, err)
		}
		p := &etcdProc{name: name, clientURL: u.client, cmd: cmd}
		procs = append(procs, p)
		t.Cleanup(func() {
			p.cmd.Process.Kill()
			p.cmd.Wait()
			logf.Close()
			if t.Failed() {
				b, err := os.ReadFile(logf.Name())
				if err != nil {
					t.Logf("%s log: %v", name, err)
				}
				t.Logf("%s log (tail):\n%s", name, tail(b, 2000))
			}
		})
	}
	return procs
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// TestExternalEtcdClusterSurvivesMemberLoss runs the management service on
// a three-member cluster of the etcd program and kills its raft leader in
// the middle: joins, heartbeats and queries keep working on the remaining
// quorum, and ranks survive.
func TestExternalEtcdClusterSurvivesMemberLoss(t *testing.T) {
	bin := testutil.RequireTool(t, "etcd")
	procs := startEtcdCluster(t, bin)
	var endpoints []string
	for _, p := range procs {
		endpoints = append(endpoints, p.clientURL)
	}
	cli, err := NewEtcdClient(endpoints, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() }) // after the services' cleanups
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// Wait for the cluster to elect a raft leader.
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Put(pctx, "/nexstor-test/ready", "1")
		pcancel()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("etcd cluster did not come up")
		case <-time.After(100 * time.Millisecond):
		}
	}

	s1 := newService(t, cli, "sys", nil)
	s2 := newService(t, cli, "sys", nil)
	waitLeader(t, s1, s2)
	c := NewClient([]string{s1.addr, s2.addr}, insecure.NewCredentials())
	defer c.Close()
	join := func(id uuid.UUID, addr string) uint32 {
		t.Helper()
		var rank uint32
		err := c.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
			resp, err := cl.Join(ctx, joinReq("sys", id, addr))
			if err == nil {
				rank = resp.Rank
			}
			return err
		})
		if err != nil {
			t.Fatalf("join %s: %v", addr, err)
		}
		return rank
	}
	ids := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	for i, id := range ids {
		if r := join(id, fmt.Sprintf("10.0.0.%d:10124", i+1)); r != uint32(i) {
			t.Fatalf("rank %d, want %d", r, i)
		}
	}

	// Kill the raft leader.
	var victim *etcdProc
	for _, p := range procs {
		st, err := cli.Status(ctx, p.clientURL)
		if err == nil && st.Leader == st.Header.MemberId {
			victim = p
		}
	}
	if victim == nil {
		t.Fatal("no raft leader found")
	}
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	victim.cmd.Wait()
	t.Logf("killed etcd member %s", victim.name)

	// The system keeps working on two members.
	if r := join(ids[1], "10.0.0.2:10124"); r != 1 {
		t.Fatalf("rejoin after member loss: rank %d, want 1", r)
	}
	if r := join(uuid.New(), "10.0.0.4:10124"); r != 3 {
		t.Fatalf("new join after member loss: rank %d, want 3", r)
	}
	var q *mgmtv1.SystemQueryResponse
	err = c.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
		var err error
		q, err = cl.SystemQuery(ctx, &mgmtv1.SystemQueryRequest{Ranks: "0-3"})
		return err
	})
	if err != nil || len(q.Members) != 4 {
		t.Fatalf("query after member loss: %+v, %v", q, err)
	}
	err = c.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
		_, err := cl.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "sys", Uuid: ids[0].String(), Rank: 0})
		return err
	})
	if err != nil {
		t.Fatalf("heartbeat after member loss: %v", err)
	}
}
