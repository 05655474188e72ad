package mgmt

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
)

// hookedEngine is a real engine's client whose PublishNexus first calls a
// hook, which may refuse the call (as a leader that died before making it).
type hookedEngine struct {
	engineAPI
	addr      string
	onPublish func(addr string, req *enginev1.PublishNexusRequest) error
}

func (e hookedEngine) PublishNexus(ctx context.Context, req *enginev1.PublishNexusRequest) (*enginev1.Nexus, error) {
	if e.onPublish != nil {
		if err := e.onPublish(e.addr, req); err != nil {
			return nil, err
		}
	}
	return e.engineAPI.PublishNexus(ctx, req)
}

// hookPublish routes the leader's engine calls through hookedEngine.
func hookPublish(t *testing.T, vs *volSystem, hook func(addr string, req *enginev1.PublishNexusRequest) error) {
	t.Helper()
	var mu sync.Mutex
	clients := map[string]*engineclient.Client{}
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	vs.svc.vols.eng.dial = func(addr string) (engineAPI, error) {
		mu.Lock()
		defer mu.Unlock()
		c, ok := clients[addr]
		if !ok {
			var err error
			if c, err = engineclient.New(addr, engineclient.Options{Insecure: true, DialTimeout: probeTimeout}); err != nil {
				return nil, err
			}
			clients[addr] = c
		}
		return hookedEngine{engineAPI: c, addr: addr, onPublish: hook}, nil
	}
}

// nexusOn returns the volume's nexus on n (nil when there is none).
func nexusOn(t *testing.T, n *healNode) *enginev1.Nexus {
	t.Helper()
	x, err := n.cl.GetNexus(context.Background(), &enginev1.GetNexusRequest{Name: "v"})
	if notFound(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("nexus on %s: %v", n.name, err)
	}
	return x
}

// checkPublication checks that the nexus on n is published optimized with
// n's controller ID range.
func checkPublication(t *testing.T, vs *volSystem, n *healNode) {
	t.Helper()
	x := nexusOn(t, n)
	lo, hi := cntlidRange(vs.rankOf(n.uuid))
	if x == nil || x.Share == nil || x.AnaState != enginev1.AnaState_ANA_STATE_OPTIMIZED || x.MinCntlid != lo || x.MaxCntlid != hi {
		t.Fatalf("the nexus on %s: %+v, want it published optimized with controller IDs %d..%d", n.name, x, lo, hi)
	}
}

// TestCntlidRanges: the ranges of distinct ranks below 254 are disjoint,
// above the IDs a publication without a range starts with, and within the
// controller IDs NVMe allows.
func TestCntlidRanges(t *testing.T) {
	prevHi := uint32(256)
	for r := uint32(0); r < 254; r++ {
		lo, hi := cntlidRange(r)
		if lo <= prevHi || hi < lo || hi > 65519 {
			t.Fatalf("rank %d: %d..%d after %d", r, lo, hi, prevHi)
		}
		prevHi = hi
	}
	if lo, _ := cntlidRange(254); lo != 257 {
		t.Fatalf("rank 254 starts at %d", lo)
	}
}

// TestMoveVolumeUsesANA: a move sets the old nexus's publication ANA
// inaccessible (hosts' writes to it are refused: they retry on another
// path) before the new nexus is published optimized, with the new node's
// controller ID range, and destroys the old one last. Each stage is
// recorded: a leader that stops after any of them leaves a record that the
// next pass finishes.
func TestMoveVolumeUsesANA(t *testing.T) {
	vs, nodes := newHealSystem(t, 4, time.Hour)
	ctx := context.Background()
	p, oldNS := setupPublished(t, vs, nodes, 3)
	want := fill(0xa1, 16<<20)
	a := healNodeOf(nodes, p.Status.Target.NodeUuid)
	checkPublication(t, vs, a)
	var spare *healNode
	for _, n := range nodes {
		if !slices.ContainsFunc(p.Status.Replicas, func(r *mgmtv1.VolumeReplica) bool { return r.NodeUuid == n.uuid }) {
			spare = n
		}
	}

	// The publish on the new node is refused once, as if the leader died
	// just before it. What must hold when it is made is checked there.
	var (
		mu        sync.Mutex
		publishes int
		hookErr   error
	)
	oldNode := a
	hookPublish(t, vs, func(addr string, req *enginev1.PublishNexusRequest) error {
		mu.Lock()
		defer mu.Unlock()
		if addr == oldNode.grpcAddr {
			return nil
		}
		publishes++
		x := nexusOn(t, oldNode)
		switch {
		case x == nil:
			hookErr = fmt.Errorf("publish %d: the old nexus on %s is gone before the new one is published", publishes, oldNode.name)
		case x.AnaState != enginev1.AnaState_ANA_STATE_INACCESSIBLE:
			hookErr = fmt.Errorf("publish %d: the old nexus on %s is %v while the new one is published", publishes, oldNode.name, x.AnaState)
		}
		if req.AnaState != enginev1.AnaState_ANA_STATE_OPTIMIZED {
			hookErr = fmt.Errorf("publish %d: asked for %v", publishes, req.AnaState)
		}
		if publishes == 1 {
			return fault.New(fault.Unavailable, "test.leader_died", "the leader died", "")
		}
		return nil
	})
	if _, err := vs.vols().MoveVolume(ctx, &mgmtv1.MoveVolumeRequest{Name: "v", Node: spare.name}); err == nil {
		t.Fatal("the move went through a refused publish")
	}
	if hookErr != nil {
		t.Fatal(hookErr)
	}
	rec, err := vs.svc.getVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Op == nil || rec.Op.Kind != opMove || rec.Op.Stage != stageRepublish || rec.Target != nil || rec.Op.Node != spare.uuid {
		t.Fatalf("after the refused publish: op %+v, target %+v", rec.Op, rec.Target)
	}
	// The old nexus refuses the host's I/O with the ANA status the
	// host's multipath retries on another path; it wrote nothing.
	var st nvme.Status
	if _, err := oldNS.WriteAt(fill(0x66, 4096), 0); !errors.As(err, &st) || st != nvme.StatusANAInaccessible {
		t.Fatalf("a write to the old nexus: %v, want ANA inaccessible", err)
	}

	// The next pass finishes the move.
	if err := vs.svc.VolumePass(ctx); err != nil {
		t.Fatal(err)
	}
	if hookErr != nil {
		t.Fatal(hookErr)
	}
	g, err := vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "v"})
	if err != nil || g.Status.Target == nil || g.Status.Target.NodeUuid != spare.uuid || g.Status.Operation != "" {
		t.Fatalf("after the pass: %v %+v", err, g.GetStatus())
	}
	if x := nexusOn(t, a); x != nil {
		t.Fatalf("the old nexus is still on %s: %+v", a.name, x)
	}
	checkPublication(t, vs, spare)
	if ev := events(t, vs, evMove); len(ev) != 1 {
		t.Fatalf("move events: %+v", ev)
	}
	ns := connect(t, g)
	checkData(t, ns, want)
	copy(want[4<<20:], fill(0xb2, 1<<20))
	if _, err := ns.WriteAt(want[4<<20:5<<20], 4<<20); err != nil {
		t.Fatal(err)
	}

	// A move whose leader stopped after the new nexus was published:
	// the record says "delete old target", both nexuses are there, the
	// old one inaccessible; the next pass destroys it.
	back := a
	mu.Lock()
	oldNode = spare
	mu.Unlock()
	rec, err = vs.svc.getVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	rec.Op = &volumeOp{Kind: opMove, From: spare.uuid, Node: back.uuid, Protocol: rec.Target.Protocol, HostNQNs: rec.Target.HostNQNs,
		Stage: stageRetire, Cause: "test"}
	if err := vs.svc.putVolume(ctx, rec); err != nil {
		t.Fatal(err)
	}
	members, err := listMembers(ctx, vs.svc.cfg.Etcd, vs.svc.k)
	if err != nil {
		t.Fatal(err)
	}
	idx := memberIndex(members)
	vs.svc.retireOldNexus(ctx, rec, idx)
	tgt, err := vs.svc.realizePublish(ctx, rec, idx)
	if err != nil {
		t.Fatal(err)
	}
	rec.Target, rec.Op.Stage = tgt, stageDeleteOld
	if err := vs.svc.putVolume(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if hookErr != nil {
		t.Fatal(hookErr)
	}
	checkPublication(t, vs, back)
	if x := nexusOn(t, spare); x == nil || x.AnaState != enginev1.AnaState_ANA_STATE_INACCESSIBLE {
		t.Fatalf("the old nexus on %s: %+v", spare.name, x)
	}
	if _, err := ns.WriteAt(fill(0x67, 4096), 0); !errors.As(err, &st) || st != nvme.StatusANAInaccessible {
		t.Fatalf("a write to the old nexus: %v, want ANA inaccessible", err)
	}
	if err := vs.svc.VolumePass(ctx); err != nil {
		t.Fatal(err)
	}
	g, err = vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "v"})
	if err != nil || g.Status.Target == nil || g.Status.Target.NodeUuid != back.uuid || g.Status.Operation != "" {
		t.Fatalf("after the pass: %v %+v", err, g.GetStatus())
	}
	if x := nexusOn(t, spare); x != nil {
		t.Fatalf("the old nexus is still on %s: %+v", spare.name, x)
	}
	ns = connect(t, g)
	checkData(t, ns, want)

	// Unplanned: the nexus's node dies. Nothing can be set inaccessible
	// there: it is left a stale target and the new nexus is published.
	back.kill(t)
	hookPublish(t, vs, nil)
	f := passUntil(t, vs, "failed over", func(v *mgmtv1.Volume) bool {
		return v.Status.Target != nil && v.Status.Target.NodeUuid != back.uuid && v.Status.Operation == ""
	})
	to := healNodeOf(nodes, f.Status.Target.NodeUuid)
	checkPublication(t, vs, to)
	if rec, err = vs.svc.getVolume(ctx, "v"); err != nil || !slices.Contains(rec.StaleTargets, back.uuid) {
		t.Fatalf("the dead node is not a stale target: %v %+v", err, rec)
	}
	ns = connect(t, f)
	checkData(t, ns, want)
}

// TestReportPathFailure: a host's report that its path failed moves the
// nexus only when the leader's own probe of the nexus's node confirms it:
// a nexus that serves stays; a report about an earlier target changes
// nothing; an engine that does not answer (while the membership still
// calls its node joined) has the nexus moved at once, its node left a stale
// target.
func TestReportPathFailure(t *testing.T) {
	vs, nodes := newHealSystem(t, 3, time.Hour)
	ctx := context.Background()
	p, _ := setupPublished(t, vs, nodes, 2)
	report := func(uri string) *mgmtv1.Volume {
		t.Helper()
		v, err := vs.vols().ReportPathFailure(ctx, &mgmtv1.ReportPathFailureRequest{Name: "v", TargetUri: uri, HostNqn: "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001"})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := report(p.Status.Target.Uri); v.Status.Target.NodeUuid != p.Status.Target.NodeUuid || len(events(t, vs, evMove)) != 0 {
		t.Fatalf("the nexus serves, yet: %+v", v.Status.Target)
	}
	if _, err := vs.vols().ReportPathFailure(ctx, &mgmtv1.ReportPathFailureRequest{Name: "nope"}); FaultCode(err) != CodeVolumeNotFound {
		t.Fatalf("a missing volume: %v", err)
	}

	// The nexus's engine stops; the membership has not noticed.
	dead := healNodeOf(nodes, p.Status.Target.NodeUuid)
	dead.stop()
	if v := report("nvmf://127.0.0.1:1/" + p.Status.Target.Nqn); v.Status.Target.NodeUuid != dead.uuid {
		t.Fatalf("a report about another target moved the volume: %+v", v.Status.Target)
	}
	v := report(p.Status.Target.Uri)
	if v.Status.Target == nil || v.Status.Target.NodeUuid == dead.uuid || v.Status.Target.Nqn != p.Status.Target.Nqn || v.Status.Operation != "" {
		t.Fatalf("after a confirmed report: %+v", v.Status)
	}
	ev := events(t, vs, evMove)
	if len(ev) != 1 || !strings.Contains(ev[0].Cause, "reported its path failed") || !strings.Contains(ev[0].Cause, dead.name) {
		t.Fatalf("move events: %+v", ev)
	}
	rec, err := vs.svc.getVolume(ctx, "v")
	if err != nil || !slices.Contains(rec.StaleTargets, dead.uuid) {
		t.Fatalf("the silent node is not a stale target: %v %+v", err, rec)
	}
	checkPublication(t, vs, healNodeOf(nodes, v.Status.Target.NodeUuid))
	ns := connect(t, v)
	checkData(t, ns, fill(0xa1, 16<<20))

	if st := memberState(t, vs, dead.uuid); st != StateUnresponsive {
		t.Fatalf("the silent node is %s", st)
	}
	// The engine returns, and the node heartbeats: it rejoins; its nexus
	// is never reopened, and goes.
	dead.start(t)
	if _, err := vs.svc.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "heal", Uuid: dead.uuid, Rank: vs.rankOf(dead.uuid)}); err != nil {
		t.Fatal(err)
	}
	if st := memberState(t, vs, dead.uuid); st != StateJoined {
		t.Fatalf("after a heartbeat the node is %s", st)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := vs.svc.VolumePass(ctx); err != nil {
			t.Log(err)
		}
		if x := nexusOn(t, dead); x == nil {
			break
		} else if x.State != enginev1.NexusState_NEXUS_STATE_FAULTED {
			t.Fatalf("the stale nexus was reopened: %+v", x)
		}
		if time.Now().After(deadline) {
			t.Fatal("the stale nexus is still there")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := ns.WriteAt(fill(0x5e, 4096), 0); err != nil {
		t.Fatalf("the new nexus was fenced: %v", err)
	}
}

func memberState(t *testing.T, vs *volSystem, id string) State {
	t.Helper()
	m, err := getMember(context.Background(), vs.svc.cfg.Etcd, vs.svc.k, id)
	if err != nil || m == nil {
		t.Fatalf("member %s: %v", id, err)
	}
	return m.State
}
