package mgmt

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/engine"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/testutil"
)

// healNode is a node whose engine can be stopped and started again on the
// same pool file and the same addresses, as a node that dies and returns.
type healNode struct {
	vs                 *volSystem
	i                  int
	uuid, name         string
	dir, disk          string
	grpcAddr, nvmfAddr string
	hostNQN            string
	dp                 *engine.DataPlane
	srv                *grpc.Server
	cl                 *engineclient.Client
}

// newHealSystem starts a management service with the given partial wait
// and n nodes, each with a 256 MiB file pool.
func newHealSystem(t *testing.T, n int, partialWait time.Duration) (*volSystem, []*healNode) {
	t.Helper()
	cli := startEtcd(t)
	svc := newService(t, cli, "heal", nil)
	svc.cfg.VolumePass = -1
	svc.cfg.PartialWait = partialWait
	svc.cfg.GCGrace = -1
	svc.cfg.MoveGrace = -1
	svc.cfg.Now = time.Now // waits are real here; the member checker does not run (CheckInterval < 0)
	vs := &volSystem{t: t, svc: svc}
	waitLeader(t, svc)
	var nodes []*healNode
	for i := 0; i < n; i++ {
		hn := &healNode{vs: vs, i: i, uuid: uuid.NewString(), name: fmt.Sprintf("node-%d", i), dir: t.TempDir()}
		hn.disk = "file://" + filepath.Join(hn.dir, "pool.img") + "?size=268435456"
		hn.grpcAddr = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
		hn.nvmfAddr = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
		hn.hostNQN = "nqn.2014-08.org.nvmexpress:uuid:" + hn.uuid
		hn.start(t)
		t.Cleanup(hn.stop)
		// Created once; the engine imports it at every later start.
		if _, err := hn.cl.CreatePool(context.Background(), &enginev1.CreatePoolRequest{Name: "p0", Disk: hn.disk, ClusterSize: 1 << 20}); err != nil {
			t.Fatal(err)
		}
		req := joinReq("heal", uuid.MustParse(hn.uuid), hn.grpcAddr)
		req.Name, req.HostNqn = hn.name, hn.hostNQN
		if _, err := svc.Join(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, hn)
	}
	return vs, nodes
}

func (n *healNode) start(t *testing.T) {
	t.Helper()
	dp, err := engine.StartDataPlane(engine.DataPlaneOptions{DataDir: filepath.Join(n.dir, "engine"),
		NVMfListen: n.nvmfAddr, HostNQN: n.hostNQN, SystemHealth: directHealth{s: n.vs.svc.Service, node: n.uuid}})
	if err != nil {
		t.Fatal(err)
	}
	var lis net.Listener
	for attempt := 0; ; attempt++ {
		if lis, err = net.Listen("tcp", n.grpcAddr); err == nil || attempt == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	n.srv = grpc.NewServer(faultgrpc.ServerOptions()...)
	dp.Register(n.srv)
	go n.srv.Serve(lis)
	n.dp = dp
	if n.cl, err = engineclient.New(n.grpcAddr, engineclient.Options{Insecure: true}); err != nil {
		t.Fatal(err)
	}
}

// stop ends the node's engine abruptly: connections drop, nothing is
// quiesced.
func (n *healNode) stop() {
	if n.dp == nil {
		return
	}
	n.cl.Close()
	n.srv.Stop()
	n.dp.Close()
	n.dp = nil
}

// kill stops the node and has the membership say so (as the heartbeat
// checker would).
func (n *healNode) kill(t *testing.T) {
	t.Helper()
	n.stop()
	rank := n.vs.rankOf(n.uuid)
	if _, err := n.vs.svc.SystemStop(context.Background(), &mgmtv1.SystemStopRequest{Ranks: fmt.Sprint(rank)}); err != nil {
		t.Fatal(err)
	}
}

// revive starts the node again and has it rejoin.
func (n *healNode) revive(t *testing.T) {
	t.Helper()
	n.start(t)
	rank := n.vs.rankOf(n.uuid)
	if _, err := n.vs.svc.SystemStart(context.Background(), &mgmtv1.SystemStartRequest{Ranks: fmt.Sprint(rank)}); err != nil {
		t.Fatal(err)
	}
}

func (vs *volSystem) rankOf(id string) uint32 {
	m, err := getMember(context.Background(), vs.svc.cfg.Etcd, vs.svc.k, id)
	if err != nil || m == nil {
		vs.t.Fatalf("member %s: %v", id, err)
	}
	return m.Rank
}

func healNodeOf(nodes []*healNode, id string) *healNode {
	for _, n := range nodes {
		if n.uuid == id {
			return n
		}
	}
	return nil
}

// connect opens the published volume over NVMe/TCP.
func connect(t *testing.T, v *mgmtv1.Volume) *initiator.Namespace {
	t.Helper()
	addr := strings.TrimPrefix(v.Status.Target.Uri, "nvmf://")
	addr = addr[:strings.Index(addr, "/")]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, err := initiator.Connect(ctx, addr, v.Status.Target.Nqn, initiator.Options{IOQueues: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	ns, err := host.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// passUntil runs leader passes until ok (bounded).
func passUntil(t *testing.T, vs *volSystem, what string, ok func(*mgmtv1.Volume) bool) *mgmtv1.Volume {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := vs.svc.VolumePass(ctx); err != nil {
			t.Logf("pass: %v", err)
		}
		v, err := vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "v"})
		if err == nil && ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within 60s: %v %v", what, err, v.GetStatus())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func healthy(n int) func(*mgmtv1.Volume) bool {
	return func(v *mgmtv1.Volume) bool {
		return v.Status.Phase == PhaseOnline && int(v.Status.Healthy) == n && len(v.Status.Replicas) == n && len(v.Status.Repairs) == 0
	}
}

func events(t *testing.T, vs *volSystem, kind string) []*mgmtv1.Event {
	t.Helper()
	resp, err := vs.vols().ListEvents(context.Background(), &mgmtv1.ListEventsRequest{Volume: "v", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []*mgmtv1.Event
	for _, e := range resp.Events {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

func setupPublished(t *testing.T, vs *volSystem, nodes []*healNode, replicas uint32) (*mgmtv1.Volume, *initiator.Namespace) {
	t.Helper()
	ctx := context.Background()
	req := create("v", 16<<20, replicas)
	req.Spec.Thin = true
	v, err := vs.vols().CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	p, err := vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "v", Node: v.Status.Replicas[0].Node})
	if err != nil {
		t.Fatal(err)
	}
	ns := connect(t, p)
	if _, err := ns.WriteAt(fill(0xa1, 16<<20), 0); err != nil {
		t.Fatal(err)
	}
	// Flushed: a child that leaves later owes only what is written after.
	if err := ns.Flush(); err != nil {
		t.Fatal(err)
	}
	return p, ns
}

func checkData(t *testing.T, ns *initiator.Namespace, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := ns.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the volume does not read back what was written")
	}
}

func verifyClean(t *testing.T, vs *volSystem) {
	t.Helper()
	r, err := vs.vols().VerifyVolume(context.Background(), &mgmtv1.VerifyVolumeRequest{Name: "v"})
	if err != nil || len(r.Mismatches) != 0 || len(r.Children) < 2 {
		t.Fatalf("verify: %v %v", err, r)
	}
}

// TestHealResyncsAReturningReplica: a replica whose node dies and returns
// within rebuild.partial_wait is brought back with a partial rebuild of
// only what it missed.
func TestHealResyncsAReturningReplica(t *testing.T) {
	vs, nodes := newHealSystem(t, 3, time.Hour)
	ctx := context.Background()
	p, ns := setupPublished(t, vs, nodes, 3)
	away := healNodeOf(nodes, p.Status.Replicas[2].NodeUuid)
	if away.uuid == p.Status.Target.NodeUuid {
		away = healNodeOf(nodes, p.Status.Replicas[1].NodeUuid)
	}
	awayReplica := ""
	for _, r := range p.Status.Replicas {
		if r.NodeUuid == away.uuid {
			awayReplica = r.Uuid
		}
	}
	away.kill(t)
	want := fill(0xa1, 16<<20)
	copy(want, fill(0xb2, 2<<20))
	if _, err := ns.WriteAt(want[:2<<20], 0); err != nil {
		t.Fatal(err)
	}
	w := passUntil(t, vs, "waiting for the node", func(v *mgmtv1.Volume) bool {
		return len(v.Status.Repairs) == 1 && v.Status.Repairs[0].Kind == repWaiting && v.Status.Healthy == 2
	})
	if r := w.Status.Repairs[0]; r.Replica != awayReplica || r.UntilMs < time.Now().Add(50*time.Minute).UnixMilli() {
		t.Fatalf("waiting repair: %+v", r)
	}
	away.revive(t)
	passUntil(t, vs, "healthy again", healthy(3))
	target := healNodeOf(nodes, p.Status.Target.NodeUuid)
	st, err := target.cl.RebuildStatus(ctx, &enginev1.RebuildStatusRequest{Nexus: "v"})
	if err != nil {
		t.Fatal(err)
	}
	var rb *enginev1.Rebuild
	for _, r := range st.Rebuilds {
		if replicaOfURI(r.Child) == awayReplica {
			rb = r
		}
	}
	if rb == nil || !rb.Partial || rb.State != "completed" || rb.TotalBytes < 2<<20 || rb.TotalBytes > 8<<20 {
		t.Fatalf("the returning replica's rebuild: %+v", rb)
	}
	if len(events(t, vs, evResync)) != 1 || len(events(t, vs, evReplace)) != 0 {
		t.Fatalf("events: resync %v, replace %v", events(t, vs, evResync), events(t, vs, evReplace))
	}
	checkData(t, ns, want)
	verifyClean(t, vs)
}

// TestHealReplacesALostReplica: a replica whose node stays away longer
// than rebuild.partial_wait is replaced on another node with a full
// rebuild; when the node returns, the old replica is destroyed.
func TestHealReplacesALostReplica(t *testing.T) {
	vs, nodes := newHealSystem(t, 4, 300*time.Millisecond)
	ctx := context.Background()
	p, ns := setupPublished(t, vs, nodes, 3)
	used := map[string]bool{}
	for _, r := range p.Status.Replicas {
		used[r.NodeUuid] = true
	}
	var away *healNode
	var old string
	for _, r := range p.Status.Replicas {
		if r.NodeUuid != p.Status.Target.NodeUuid {
			away, old = healNodeOf(nodes, r.NodeUuid), r.Uuid
		}
	}
	away.kill(t)
	want := fill(0xa1, 16<<20)
	copy(want[4<<20:], fill(0xc3, 1<<20))
	if _, err := ns.WriteAt(want[4<<20:5<<20], 4<<20); err != nil {
		t.Fatal(err)
	}
	v := passUntil(t, vs, "replaced", healthy(3))
	for _, r := range v.Status.Replicas {
		if r.Uuid == old || r.NodeUuid == away.uuid {
			t.Fatalf("the lost replica is still counted: %+v", v.Status.Replicas)
		}
	}
	newNode := ""
	for _, r := range v.Status.Replicas {
		if !used[r.NodeUuid] {
			newNode = r.NodeUuid
		}
	}
	if newNode == "" {
		t.Fatalf("no replica on the spare node: %+v", v.Status.Replicas)
	}
	if ev := events(t, vs, evReplace); len(ev) != 1 || !strings.Contains(ev[0].Cause, old) {
		t.Fatalf("replace events: %v", ev)
	}
	rec, _ := vs.svc.getVolume(ctx, "v")
	if len(rec.Retired) != 1 || rec.Retired[0].UUID != old {
		t.Fatalf("retired: %+v", rec.Retired)
	}
	// The old node returns: its replica goes; nothing is left that no
	// volume counts.
	away.revive(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := vs.svc.VolumePass(ctx); err != nil {
			t.Log(err)
		}
		rr, err := away.cl.ListReplicas(ctx, &enginev1.ListReplicasRequest{})
		if err == nil && len(rr.Replicas) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replaced replica was not destroyed: %v %v", err, rr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rec, _ = vs.svc.getVolume(ctx, "v"); len(rec.Retired) != 0 {
		t.Fatalf("retired left: %+v", rec.Retired)
	}
	checkData(t, ns, want)
	verifyClean(t, vs)
}

// TestHealLastHealthyCopy: with one healthy copy left, replacement starts
// at once, whatever the partial wait; with none known, nothing is given
// up on; the last healthy copy is never removed.
func TestHealLastHealthyCopy(t *testing.T) {
	vs, nodes := newHealSystem(t, 4, time.Hour)
	ctx := context.Background()
	p, ns := setupPublished(t, vs, nodes, 3)
	var others []*healNode
	for _, r := range p.Status.Replicas {
		if r.NodeUuid != p.Status.Target.NodeUuid {
			others = append(others, healNodeOf(nodes, r.NodeUuid))
		}
	}
	others[0].kill(t)
	if _, err := ns.WriteAt(fill(0xd4, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	passUntil(t, vs, "waiting", func(v *mgmtv1.Volume) bool {
		return len(v.Status.Repairs) == 1 && v.Status.Repairs[0].Kind == repWaiting
	})
	others[1].kill(t)
	if _, err := ns.WriteAt(fill(0xd5, 1<<20), 1<<20); err != nil {
		t.Fatal(err)
	}
	// One healthy copy: a replacement goes to the spare node now, without
	// waiting. With 4 nodes there is only one spare: once the volume has
	// two healthy copies again, the other loss waits for its node as
	// usual.
	passUntil(t, vs, "one replaced, the other waiting", func(v *mgmtv1.Volume) bool {
		return v.Status.Healthy == 2 && len(v.Status.Repairs) == 1 && v.Status.Repairs[0].Kind == repWaiting
	})
	if ev := events(t, vs, evReplace); len(ev) != 1 || !strings.Contains(ev[0].Cause, "replaces replica") {
		t.Fatalf("replace events: %v", ev)
	}
	want := fill(0xa1, 16<<20)
	copy(want, fill(0xd4, 1<<20))
	copy(want[1<<20:], fill(0xd5, 1<<20))
	checkData(t, ns, want)

	// The guard itself.
	rec, _ := vs.svc.getVolume(ctx, "v")
	only := &replicaHealth{ref: rec.ReplicaSet[0], healthy: true}
	hs := []*replicaHealth{only, {ref: rec.ReplicaSet[1], up: true}}
	if err := mayRemove(rec, hs, only); FaultCode(err) != CodeLastHealthyCopy {
		t.Fatalf("removing the only healthy replica: %v", err)
	}
	hs[1].healthy = true
	if err := mayRemove(rec, hs, only); err != nil {
		t.Fatalf("removing one of two healthy replicas: %v", err)
	}
	none := []*replicaHealth{{ref: rec.ReplicaSet[0], up: true}, {ref: rec.ReplicaSet[1], up: true}}
	if err := mayRemove(rec, none, none[0]); FaultCode(err) != CodeLastHealthyCopy {
		t.Fatalf("removing an out-of-sync replica while nothing is healthy: %v", err)
	}
}

// TestSetReplicasAndDrain: the replica count grows and shrinks (local
// replica last), a cordoned node gets nothing new, and a drained node's
// replicas move elsewhere.
func TestSetReplicasAndDrain(t *testing.T) {
	vs, nodes := newHealSystem(t, 4, time.Hour)
	ctx := context.Background()
	p, ns := setupPublished(t, vs, nodes, 2)
	want := fill(0xa1, 16<<20)

	if _, err := vs.vols().SetVolumeReplicas(ctx, &mgmtv1.SetVolumeReplicasRequest{Name: "v", Replicas: 0}); FaultCode(err) != CodeVolumeBadSpec {
		t.Fatalf("0 replicas: %v", err)
	}
	if _, err := vs.vols().SetVolumeReplicas(ctx, &mgmtv1.SetVolumeReplicasRequest{Name: "v", Replicas: 5}); FaultCode(err) != CodeVolumeBadSpec {
		t.Fatalf("5 replicas on 4 nodes: %v", err)
	}
	// Cordon one of the two free nodes: the new replica avoids it.
	var free []*healNode
	for _, n := range nodes {
		if !slices.ContainsFunc(p.Status.Replicas, func(r *mgmtv1.VolumeReplica) bool { return r.NodeUuid == n.uuid }) {
			free = append(free, n)
		}
	}
	nd, err := vs.vols().CordonNode(ctx, &mgmtv1.NodeRequest{Node: free[0].name})
	if err != nil || !nd.Member.Cordoned {
		t.Fatalf("cordon: %v %v", err, nd)
	}
	if _, err := vs.vols().SetVolumeReplicas(ctx, &mgmtv1.SetVolumeReplicasRequest{Name: "v", Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	v := passUntil(t, vs, "grown to 3", healthy(3))
	for _, r := range v.Status.Replicas {
		if r.NodeUuid == free[0].uuid {
			t.Fatal("a replica was placed on a cordoned node")
		}
	}
	if len(events(t, vs, evAdd)) != 1 {
		t.Fatalf("add events: %v", events(t, vs, evAdd))
	}
	if _, err := vs.vols().UncordonNode(ctx, &mgmtv1.NodeRequest{Node: free[0].name}); err != nil {
		t.Fatal(err)
	}

	// Drain a node holding a non-local replica: it moves to the free node.
	var drain *healNode
	for _, r := range v.Status.Replicas {
		if !r.Local {
			drain = healNodeOf(nodes, r.NodeUuid)
			break
		}
	}
	if _, err := vs.vols().DrainNode(ctx, &mgmtv1.NodeRequest{Node: drain.name}); err != nil {
		t.Fatal(err)
	}
	v = passUntil(t, vs, "drained", func(v *mgmtv1.Volume) bool {
		if !healthy(3)(v) {
			return false
		}
		for _, r := range v.Status.Replicas {
			if r.NodeUuid == drain.uuid {
				return false
			}
		}
		return true
	})
	// Drained once the replaced replica is destroyed too.
	waitDrained(t, vs, drain)
	if rr, err := drain.cl.ListReplicas(ctx, &enginev1.ListReplicasRequest{}); err != nil || len(rr.Replicas) != 0 {
		t.Fatalf("the drained node still holds %v (%v)", rr, err)
	}

	// Shrink to 1: the local replica stays.
	if _, err := vs.vols().SetVolumeReplicas(ctx, &mgmtv1.SetVolumeReplicasRequest{Name: "v", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	v = passUntil(t, vs, "shrunk to 1", healthy(1))
	if !v.Status.Replicas[0].Local {
		t.Fatalf("shrinking kept a remote replica: %+v", v.Status.Replicas)
	}
	checkData(t, ns, want)
}

// TestMoveVolume: a planned move and a failover after the nexus's node
// dies keep the subsystem NQN and the data; when the old node returns, its
// stale nexus is refused its health record (never reopened), removed, and
// the volume heals back to all its replicas.
func TestMoveVolume(t *testing.T) {
	vs, nodes := newHealSystem(t, 4, time.Hour)
	ctx := context.Background()
	p, ns := setupPublished(t, vs, nodes, 3)
	want := fill(0xa1, 16<<20)

	// Planned: to the node without a replica.
	spare := ""
	for _, n := range nodes {
		if !slices.ContainsFunc(p.Status.Replicas, func(r *mgmtv1.VolumeReplica) bool { return r.NodeUuid == n.uuid }) {
			spare = n.name
		}
	}
	if _, err := vs.vols().MoveVolume(ctx, &mgmtv1.MoveVolumeRequest{Name: "nope", Node: spare}); FaultCode(err) != CodeVolumeNotFound {
		t.Fatalf("moving a missing volume: %v", err)
	}
	m, err := vs.vols().MoveVolume(ctx, &mgmtv1.MoveVolumeRequest{Name: "v", Node: spare})
	if err != nil {
		t.Fatal(err)
	}
	if m.Status.Target.Node != spare || m.Status.Target.Nqn != p.Status.Target.Nqn {
		t.Fatalf("moved: %+v (was %+v)", m.Status.Target, p.Status.Target)
	}
	if nr, _ := healNodeOf(nodes, p.Status.Target.NodeUuid).cl.ListNexuses(ctx, &enginev1.ListNexusesRequest{}); len(nr.GetNexuses()) != 0 {
		t.Fatalf("the old place keeps a nexus: %v", nr)
	}
	ns = connect(t, m)
	checkData(t, ns, want)
	copy(want[8<<20:], fill(0xe6, 1<<20))
	if _, err := ns.WriteAt(want[8<<20:9<<20], 8<<20); err != nil {
		t.Fatal(err)
	}
	if err := ns.Flush(); err != nil {
		t.Fatal(err)
	}

	// Unplanned: the nexus's node dies.
	dead := healNodeOf(nodes, m.Status.Target.NodeUuid)
	dead.kill(t)
	f := passUntil(t, vs, "failed over", func(v *mgmtv1.Volume) bool {
		return v.Status.Target != nil && v.Status.Target.NodeUuid != dead.uuid && v.Status.Phase != PhaseFaulted && v.Status.Operation == ""
	})
	if f.Status.Target.Nqn != p.Status.Target.Nqn {
		t.Fatalf("the NQN changed: %s", f.Status.Target.Nqn)
	}
	ns = connect(t, f)
	checkData(t, ns, want)
	copy(want[12<<20:], fill(0xe7, 1<<20))
	if _, err := ns.WriteAt(want[12<<20:13<<20], 12<<20); err != nil {
		t.Fatal(err)
	}
	if ev := events(t, vs, evMove); len(ev) != 2 || !strings.Contains(ev[1].Cause, dead.name) {
		t.Fatalf("move events: %+v", ev)
	}

	// The old node returns: its nexus is never reopened, and goes.
	dead.revive(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := vs.svc.VolumePass(ctx); err != nil {
			t.Log(err)
		}
		nr, err := dead.cl.ListNexuses(ctx, &enginev1.ListNexusesRequest{})
		if err == nil && len(nr.Nexuses) == 0 {
			break
		}
		if err == nil && len(nr.Nexuses) == 1 && nr.Nexuses[0].State != enginev1.NexusState_NEXUS_STATE_FAULTED {
			t.Fatalf("the stale nexus was reopened: %+v", nr.Nexuses[0])
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stale nexus is still there: %v %v", err, nr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The volume still serves through its new place.
	copy(want[14<<20:], fill(0xe8, 1<<20))
	if _, err := ns.WriteAt(want[14<<20:15<<20], 14<<20); err != nil {
		t.Fatalf("the new nexus was fenced: %v", err)
	}
	checkData(t, ns, want)
}

// TestHealIdleVolume: a replica whose node dies while nothing is written
// (its nexus notices nothing) is replaced on the membership's word.
func TestHealIdleVolume(t *testing.T) {
	vs, nodes := newHealSystem(t, 4, 300*time.Millisecond)
	p, _ := setupPublished(t, vs, nodes, 3)
	var away *healNode
	for _, r := range p.Status.Replicas {
		if r.NodeUuid != p.Status.Target.NodeUuid {
			away = healNodeOf(nodes, r.NodeUuid)
		}
	}
	away.kill(t)
	v := passUntil(t, vs, "replaced while idle", healthy(3))
	for _, r := range v.Status.Replicas {
		if r.NodeUuid == away.uuid {
			t.Fatalf("the replica on the dead node is still counted: %+v", v.Status.Replicas)
		}
	}
	rs := vs.svc.RepairStats()
	if rs.Failed["replace"] != 0 || rs.Finished["replace"] != 1 {
		t.Fatalf("repair counters: %+v", rs)
	}
}

func TestNextLook(t *testing.T) {
	for _, c := range []struct {
		repairs []*mgmtv1.Repair
		want    time.Duration
	}{
		{nil, 0},
		{[]*mgmtv1.Repair{{Kind: repBlocked}}, 0},
		{[]*mgmtv1.Repair{{Kind: repWaiting}}, 0},
		{[]*mgmtv1.Repair{{Kind: repWaiting, UntilMs: 61_000}, {Kind: repWaiting, UntilMs: 31_000}}, 30 * time.Second},
		{[]*mgmtv1.Repair{{Kind: repWaiting, UntilMs: 500}}, time.Second},
		{[]*mgmtv1.Repair{{Kind: repWaiting, UntilMs: 61_000}, {Kind: repResyncing}}, 2 * time.Second},
	} {
		if got := nextLook(c.repairs, 1000); got != c.want {
			t.Errorf("%v: %v, want %v", c.repairs, got, c.want)
		}
	}
}

// TestDrainMovesTheNexus: draining the node of a volume's nexus moves the
// nexus (a planned move) as well as its replica; the node is drained once
// both are gone, and the data reads back through the new target.
func TestDrainMovesTheNexus(t *testing.T) {
	vs, nodes := newHealSystem(t, 4, time.Hour)
	ctx := context.Background()
	p, ns := setupPublished(t, vs, nodes, 2)
	want := fill(0x5d, 16<<20)
	if _, err := ns.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if err := ns.Flush(); err != nil {
		t.Fatal(err)
	}
	from := healNodeOf(nodes, p.Status.Target.NodeUuid)
	if _, err := vs.vols().DrainNode(ctx, &mgmtv1.NodeRequest{Node: from.name}); err != nil {
		t.Fatal(err)
	}
	v := passUntil(t, vs, "moved and healed", func(v *mgmtv1.Volume) bool {
		if v.Status.Target == nil || v.Status.Target.NodeUuid == from.uuid || !healthy(2)(v) {
			return false
		}
		return !slices.ContainsFunc(v.Status.Replicas, func(r *mgmtv1.VolumeReplica) bool { return r.NodeUuid == from.uuid })
	})
	if len(events(t, vs, evMove)) != 1 {
		t.Fatalf("move events: %v", events(t, vs, evMove))
	}
	waitDrained(t, vs, from)
	if nx, err := from.cl.ListNexuses(ctx, &enginev1.ListNexusesRequest{}); err != nil || len(nx.Nexuses) != 0 {
		t.Fatalf("the drained node still holds nexuses %v (%v)", nx, err)
	}
	checkData(t, connect(t, v), want)
}

// waitDrained runs the leader's passes until node n reports drained: no
// replica and no nexus left on it, still cordoned and draining (bounded).
func waitDrained(t *testing.T, vs *volSystem, n *healNode) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ln, err := vs.vols().ListNodes(ctx, &mgmtv1.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var dn *mgmtv1.Node
		for _, x := range ln.Nodes {
			if x.Member.Uuid == n.uuid {
				dn = x
			}
		}
		if d := dn.GetDrain(); d.GetState() == "drained" && d.ReplicasLeft == 0 && d.Nexuses == 0 && dn.Member.Draining && dn.Member.Cordoned {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("drain status of %s: %+v", n.name, dn)
		}
		if err := vs.svc.VolumePass(ctx); err != nil {
			t.Log(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
