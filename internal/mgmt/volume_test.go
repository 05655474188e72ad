package mgmt

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/nexus"
)

// directHealth is the system health store seen from an engine in the
// same process: the leader's store calls, without the gRPC hop (the
// client of that hop is tested in package healthstore).
// node, when set, is the member UUID the engine names in its calls.
type directHealth struct {
	s    *Service
	node string
}

func (h directHealth) Load(ctx context.Context, id string) (nexus.HealthRecord, error) {
	b, err := h.s.loadHealth(ctx, id, h.node)
	if FaultCode(err) == CodeNotTarget {
		return nexus.HealthRecord{}, fmt.Errorf("nexus %s: %v: %w", id, err, nexus.ErrNoRecord)
	}
	if err != nil {
		return nexus.HealthRecord{}, err
	}
	if b == nil {
		return nexus.HealthRecord{}, fmt.Errorf("nexus %s: %w", id, nexus.ErrNoRecord)
	}
	var rec nexus.HealthRecord
	return rec, json.Unmarshal(b, &rec)
}

func (h directHealth) Save(ctx context.Context, rec nexus.HealthRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return h.s.saveHealth(ctx, rec.NexusUUID, rec.Generation, b, h.node)
}

func (h directHealth) Delete(ctx context.Context, id string) error { return h.s.deleteHealth(ctx, id) }

// volNode is one storage node of a volume test: a real engine with a
// malloc pool, serving its gRPC API, joined to the system.
type volNode struct {
	uuid, name, addr string
	dp               *engine.DataPlane
	srv              *grpc.Server
	cl               *engineclient.Client
}

type volSystem struct {
	t     *testing.T
	svc   *testService
	nodes []*volNode
}

// newVolSystem starts a management service and len(poolSizes) nodes, node
// i with one pool "p0" of poolSizes[i] bytes (1 MiB clusters) and the
// labels of labels[i] (nil for none).
func newVolSystem(t *testing.T, poolSizes []int64, labels []map[string]string) *volSystem {
	t.Helper()
	cli := startEtcd(t)
	svc := newService(t, cli, "vol", nil)
	svc.cfg.VolumePass = -1
	vs := &volSystem{t: t, svc: svc}
	waitLeader(t, svc)
	for i, size := range poolSizes {
		var l map[string]string
		if labels != nil {
			l = labels[i]
		}
		vs.nodes = append(vs.nodes, vs.startNode(i, size, l))
	}
	return vs
}

func (vs *volSystem) startNode(i int, poolSize int64, labels map[string]string) *volNode {
	t := vs.t
	id := uuid.New()
	n := &volNode{uuid: id.String(), name: fmt.Sprintf("node-%d", i)}
	hostNQN := "nqn.2014-08.org.nvmexpress:uuid:" + n.uuid
	dp, err := engine.StartDataPlane(engine.DataPlaneOptions{DataDir: filepath.Join(t.TempDir(), n.name),
		NVMfListen: "127.0.0.1:0", NBDListen: "127.0.0.1:0", HostNQN: hostNQN, SystemHealth: directHealth{s: vs.svc.Service, node: n.uuid},
		Pools: []engine.PoolConfig{{Name: "p0", Disk: fmt.Sprintf("malloc:///%s-%d?size=%d", n.uuid[:8], i, poolSize), ClusterSize: 1 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.addr = lis.Addr().String()
	n.srv = grpc.NewServer(faultgrpc.ServerOptions()...)
	dp.Register(n.srv)
	go n.srv.Serve(lis)
	n.dp = dp
	n.cl, err = engineclient.New(n.addr, engineclient.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.cl.Close()
		n.srv.Stop()
		dp.Close()
	})
	req := joinReq("vol", id, n.addr)
	req.Name, req.HostNqn, req.Labels = n.name, hostNQN, labels
	if _, err := vs.svc.Join(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	return n
}

func (vs *volSystem) vols() *VolumeServer { return vs.svc.Volumes() }

func (vs *volSystem) nodeByUUID(id string) *volNode {
	for _, n := range vs.nodes {
		if n.uuid == id {
			return n
		}
	}
	vs.t.Fatalf("no node %s", id)
	return nil
}

// inventory is every replica and nexus on every node, for comparisons.
func (vs *volSystem) inventory() []string {
	var out []string
	ctx := context.Background()
	for _, n := range vs.nodes {
		rr, err := n.cl.ListReplicas(ctx, &enginev1.ListReplicasRequest{})
		if err != nil {
			vs.t.Fatal(err)
		}
		for _, r := range rr.Replicas {
			out = append(out, n.name+" replica "+r.Uuid)
		}
		nr, err := n.cl.ListNexuses(ctx, &enginev1.ListNexusesRequest{})
		if err != nil {
			vs.t.Fatal(err)
		}
		for _, x := range nr.Nexuses {
			out = append(out, n.name+" nexus "+x.Name)
		}
	}
	slices.Sort(out)
	return out
}

func create(name string, size uint64, replicas uint32) *mgmtv1.CreateVolumeRequest {
	return &mgmtv1.CreateVolumeRequest{Spec: &mgmtv1.VolumeSpec{Name: name, Size: size, Replicas: replicas}}
}

func TestVolumeLifecycle(t *testing.T) {
	vs := newVolSystem(t, []int64{256 << 20, 256 << 20, 256 << 20, 256 << 20}, nil)
	ctx := context.Background()
	v, err := vs.vols().CreateVolume(ctx, create("v1", 64<<20, 3))
	if err != nil {
		t.Fatal(err)
	}
	if v.Status.Phase != PhaseOnline || len(v.Status.Replicas) != 3 {
		t.Fatalf("created volume: phase %s, %d replicas", v.Status.Phase, len(v.Status.Replicas))
	}
	seen := map[string]bool{}
	for _, r := range v.Status.Replicas {
		if seen[r.NodeUuid] {
			t.Fatalf("two replicas on %s", r.Node)
		}
		seen[r.NodeUuid] = true
		if r.Owner != v.Spec.Uuid {
			t.Fatalf("replica %s on %s: owner %q, want the volume %s", r.Uuid, r.Node, r.Owner, v.Spec.Uuid)
		}
	}
	// The same spec again is the same volume.
	again, err := vs.vols().CreateVolume(ctx, create("v1", 64<<20, 3))
	if err != nil || again.Spec.Uuid != v.Spec.Uuid {
		t.Fatalf("create again: %v, uuid %s", err, again.GetSpec().GetUuid())
	}

	// Publish on a replica node: one local child, the others shared only
	// to that node's host NQN.
	on := vs.nodeByUUID(v.Status.Replicas[0].NodeUuid)
	consumer := "nqn.2014-08.org.nvmexpress:uuid:" + uuid.NewString()
	p, err := vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "v1", Node: on.name, HostNqns: []string{consumer}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Target == nil || p.Status.Target.Node != on.name || !strings.HasPrefix(p.Status.Target.Uri, "nvmf://") {
		t.Fatalf("target %+v", p.Status.Target)
	}
	// Thick replicas are not known blank: the first nexus brings them in
	// sync from one of them (degraded until then, and said so).
	p = waitPhase(t, vs, "v1", PhaseOnline)
	if p.Status.Healthy != 3 {
		t.Fatalf("published: phase %s healthy %d (%s)", p.Status.Phase, p.Status.Healthy, p.Status.Reason)
	}
	nx, err := on.cl.GetNexus(ctx, &enginev1.GetNexusRequest{Name: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	local := 0
	for _, c := range nx.Children {
		if strings.HasPrefix(c.Uri, "bdev:///") {
			local++
		}
	}
	if local != 1 || len(nx.Children) != 3 || nx.Uuid != v.Spec.Uuid {
		t.Fatalf("nexus children %v uuid %s", nx.Children, nx.Uuid)
	}
	if got := nx.Share.GetAllowedHosts(); !slices.Equal(got, []string{consumer}) {
		t.Fatalf("nexus allowed hosts %v", got)
	}
	for _, r := range v.Status.Replicas[1:] {
		n := vs.nodeByUUID(r.NodeUuid)
		rep, err := n.cl.GetReplica(ctx, &enginev1.GetReplicaRequest{Name: r.Uuid})
		if err != nil {
			t.Fatal(err)
		}
		want := "nqn.2014-08.org.nvmexpress:uuid:" + on.uuid
		if rep.Share == nil || !slices.Equal(rep.Share.AllowedHosts, []string{want}) {
			t.Fatalf("replica on %s shared %+v, want only %s", n.name, rep.Share, want)
		}
	}
	// Publishing again is idempotent; elsewhere is refused.
	if _, err := vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "v1", Node: on.name, HostNqns: []string{consumer}}); err != nil {
		t.Fatalf("publish again: %v", err)
	}
	other := vs.nodeByUUID(v.Status.Replicas[1].NodeUuid)
	if _, err := vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "v1", Node: other.name}); FaultCode(err) != CodeVolumePublished {
		t.Fatalf("publish elsewhere: %v", err)
	}
	// The health record is in etcd, under the volume's UUID.
	if b, err := vs.svc.loadHealth(ctx, v.Spec.Uuid, ""); err != nil || b == nil {
		t.Fatalf("health record: %v %q", err, b)
	}

	// Resize grows every replica, then the nexus.
	r, err := vs.vols().ResizeVolume(ctx, &mgmtv1.ResizeVolumeRequest{Name: "v1", Size: 96 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if r.Spec.Size != 96<<20 {
		t.Fatalf("size %d", r.Spec.Size)
	}
	if nx, err = on.cl.GetNexus(ctx, &enginev1.GetNexusRequest{Name: "v1"}); err != nil || nx.Size != 96<<20 {
		t.Fatalf("nexus after resize: %v size %d", err, nx.GetSize())
	}
	if _, err := vs.vols().ResizeVolume(ctx, &mgmtv1.ResizeVolumeRequest{Name: "v1", Size: 32 << 20}); FaultCode(err) != CodeVolumeBadSpec {
		t.Fatalf("shrink: %v", err)
	}

	// A published volume is not deleted without force.
	if _, err := vs.vols().DeleteVolume(ctx, &mgmtv1.DeleteVolumeRequest{Name: "v1"}); FaultCode(err) != CodeVolumePublished {
		t.Fatalf("delete published: %v", err)
	}
	u, err := vs.vols().UnpublishVolume(ctx, &mgmtv1.UnpublishVolumeRequest{Name: "v1"})
	if err != nil || u.Status.Target != nil {
		t.Fatalf("unpublish: %v %+v", err, u.GetStatus().GetTarget())
	}
	if _, err := vs.vols().UnpublishVolume(ctx, &mgmtv1.UnpublishVolumeRequest{Name: "v1"}); err != nil {
		t.Fatalf("unpublish again: %v", err)
	}
	// The replicas stay owned by the volume after its nexus is gone.
	for _, x := range u.Status.Replicas {
		if x.Owner != v.Spec.Uuid {
			t.Fatalf("after unpublish, replica %s owner %q", x.Uuid, x.Owner)
		}
	}
	// The record outlives the nexus, for the next publish.
	if b, err := vs.svc.loadHealth(ctx, v.Spec.Uuid, ""); err != nil || b == nil {
		t.Fatalf("health record after unpublish: %v %q", err, b)
	}
	// Publish again elsewhere: the children the record names current are
	// trusted; no rebuild is needed.
	p2, err := vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "v1", Node: other.name})
	if err != nil {
		t.Fatal(err)
	}
	if p2.Status.Phase != PhaseOnline || p2.Status.Target.Epoch <= nx.Epoch {
		t.Fatalf("republished: phase %s (%s), epoch %d after %d", p2.Status.Phase, p2.Status.Reason, p2.Status.Target.Epoch, nx.Epoch)
	}
	if _, err := vs.vols().DeleteVolume(ctx, &mgmtv1.DeleteVolumeRequest{Name: "v1", Force: true}); err != nil {
		t.Fatal(err)
	}
	if inv := vs.inventory(); len(inv) != 0 {
		t.Fatalf("left behind: %v", inv)
	}
	if _, err := vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "v1"}); FaultCode(err) != CodeVolumeNotFound {
		t.Fatalf("get deleted: %v", err)
	}
	if b, _ := vs.svc.loadHealth(ctx, v.Spec.Uuid, ""); b != nil {
		t.Fatal("the health record outlived the volume")
	}
}

func TestVolumeNotPlaceable(t *testing.T) {
	vs := newVolSystem(t, []int64{256 << 20, 256 << 20, 64 << 20, 64 << 20}, nil)
	ctx := context.Background()
	_, err := vs.vols().CreateVolume(ctx, create("big", 128<<20, 3))
	if FaultCode(err) != CodeVolumeNotPlaceable {
		t.Fatalf("want not placeable, got %v", err)
	}
	for _, want := range []string{"3 replicas need 3 nodes", "eligible: node-0, node-1", "node-2: pool p0 has", "needs 128MiB"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if inv := vs.inventory(); len(inv) != 0 {
		t.Fatalf("left behind: %v", inv)
	}
	if l, err := vs.vols().ListVolumes(ctx, &mgmtv1.ListVolumesRequest{}); err != nil || len(l.Volumes) != 0 {
		t.Fatalf("volumes: %v %v", l, err)
	}
}

func TestVolumeBadInput(t *testing.T) {
	vs := newVolSystem(t, []int64{256 << 20, 256 << 20, 256 << 20}, []map[string]string{{"zone": "a"}, {"zone": "b"}, {"zone": "c"}})
	ctx := context.Background()
	if _, err := vs.vols().CreateVolume(ctx, create("keep", 16<<20, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "keep"}); err != nil {
		t.Fatal(err)
	}
	before := vs.inventory()
	sel := create("sel", 16<<20, 1)
	sel.Spec.Placement = &mgmtv1.Placement{NodeSelector: map[string]string{"rack": "1"}}
	cases := []struct {
		name string
		call func() error
		code string
		says string
	}{
		{"size 0", func() error { _, err := vs.vols().CreateVolume(ctx, create("x", 0, 1)); return err }, CodeVolumeBadSpec, "size 0"},
		{"unaligned", func() error { _, err := vs.vols().CreateVolume(ctx, create("x", 5000, 1)); return err }, CodeVolumeBadSpec, "use --size 8KiB"},
		{"over capacity", func() error { _, err := vs.vols().CreateVolume(ctx, create("x", 1<<30, 1)); return err }, CodeVolumeNotPlaceable, "needs 1GiB"},
		{"replicas 0", func() error { _, err := vs.vols().CreateVolume(ctx, create("x", 16<<20, 0)); return err }, CodeVolumeBadSpec, "0 replicas"},
		{"more replicas than nodes", func() error { _, err := vs.vols().CreateVolume(ctx, create("x", 16<<20, 4)); return err }, CodeVolumeBadSpec, "the system has 3"},
		{"duplicate name", func() error { _, err := vs.vols().CreateVolume(ctx, create("keep", 32<<20, 2)); return err }, CodeVolumeExists, "size 16MiB, not 32MiB"},
		{"bad name", func() error { _, err := vs.vols().CreateVolume(ctx, create("Bad_Name", 16<<20, 1)); return err }, CodeVolumeBadSpec, "not valid"},
		{"unknown selector key", func() error { _, err := vs.vols().CreateVolume(ctx, sel); return err }, CodeVolumeBadSpec, "label keys in this system: zone"},
		{"publish on unknown node", func() error {
			_, err := vs.vols().UnpublishVolume(ctx, &mgmtv1.UnpublishVolumeRequest{Name: "keep"})
			if err != nil {
				return err
			}
			_, err = vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "keep", Node: "node-9"})
			if _, perr := vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "keep", Node: "node-0"}); perr != nil {
				return perr
			}
			return err
		}, CodeVolumeUnknownNode, "node-9"},
		{"delete published", func() error {
			_, err := vs.vols().DeleteVolume(ctx, &mgmtv1.DeleteVolumeRequest{Name: "keep"})
			return err
		}, CodeVolumePublished, "--force"},
		{"get unknown", func() error { _, err := vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "nope"}); return err }, CodeVolumeNotFound, "nope"},
	}
	for _, c := range cases {
		err := c.call()
		if FaultCode(err) != c.code || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: got %v (code %s), want code %s saying %q", c.name, err, FaultCode(err), c.code, c.says)
		}
		if f := new(fault.Fault); errors.As(err, &f) && f.Resolution == "" && c.code != CodeVolumeNotFound {
			t.Errorf("%s: no resolution in %v", c.name, err)
		}
	}
	// Nothing changed, except that "keep" moved to node-0.
	after := vs.inventory()
	strip := func(xs []string) []string {
		var out []string
		for _, x := range xs {
			if !strings.Contains(x, " nexus ") {
				out = append(out, x)
			}
		}
		return out
	}
	if !slices.Equal(strip(before), strip(after)) {
		t.Fatalf("inventory changed:\nbefore %v\nafter  %v", before, after)
	}
	l, _ := vs.vols().ListVolumes(ctx, &mgmtv1.ListVolumesRequest{})
	if len(l.Volumes) != 1 {
		t.Fatalf("volumes: %v", l.Volumes)
	}
}

// TestStaleWritersLose: a spec write from a stale read fails the revision
// compare, and a health save from a stale nexus fails the generation
// compare.
func TestStaleWritersLose(t *testing.T) {
	vs := newVolSystem(t, []int64{256 << 20}, nil)
	ctx := context.Background()
	v, err := vs.vols().CreateVolume(ctx, create("v", 16<<20, 1))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := vs.svc.getVolume(ctx, "v")
	b, _ := vs.svc.getVolume(ctx, "v")
	a.Thin = true
	if err := vs.svc.putVolume(ctx, a); err != nil {
		t.Fatal(err)
	}
	b.Replicas = 7
	if err := vs.svc.putVolume(ctx, b); !errors.Is(err, errStaleVolume) {
		t.Fatalf("stale spec write: %v", err)
	}
	if cur, _ := vs.svc.getVolume(ctx, "v"); cur.Replicas != 1 || !cur.Thin {
		t.Fatalf("record %+v", cur)
	}

	// A first record only for a live volume, and only generation 1.
	stray := uuid.NewString()
	if b, _ := json.Marshal(nexus.HealthRecord{NexusUUID: stray, Generation: 1}); FaultCode(vs.svc.saveHealth(ctx, stray, 1, b, "")) != CodeStaleGeneration {
		t.Fatal("a record was stored for a nexus of no volume")
	}
	id := v.Spec.Uuid
	if b, _ := json.Marshal(nexus.HealthRecord{NexusUUID: id, Generation: 2}); FaultCode(vs.svc.saveHealth(ctx, id, 2, b, "")) != CodeStaleGeneration {
		t.Fatal("a first record of generation 2 was stored")
	}
	rec := func(gen uint64) []byte {
		b, _ := json.Marshal(nexus.HealthRecord{NexusUUID: id, Generation: gen})
		return b
	}
	for g := uint64(1); g <= 3; g++ {
		if err := vs.svc.saveHealth(ctx, id, g, rec(g), ""); err != nil {
			t.Fatal(err)
		}
	}
	// Two nexuses read generation 3; the first to save 4 wins.
	if err := vs.svc.saveHealth(ctx, id, 4, rec(4), ""); err != nil {
		t.Fatal(err)
	}
	if err := vs.svc.saveHealth(ctx, id, 4, rec(4), ""); FaultCode(err) != CodeStaleGeneration {
		t.Fatalf("second save of generation 4: %v", err)
	}
	if err := vs.svc.saveHealth(ctx, id, 9, rec(9), ""); FaultCode(err) != CodeStaleGeneration {
		t.Fatalf("a jump in generation: %v", err)
	}
}

// TestUnfinishedOperationsResume: a leader that recorded an operation and
// died before (or while) doing it leaves the record; the next pass of a
// leader finishes or rolls back each.
func TestUnfinishedOperationsResume(t *testing.T) {
	vs := newVolSystem(t, []int64{256 << 20, 256 << 20, 256 << 20}, nil)
	ctx := context.Background()
	members, err := listMembers(ctx, vs.svc.cfg.Etcd, vs.svc.k)
	if err != nil {
		t.Fatal(err)
	}
	// A create recorded, no replica made yet.
	c := &volumeRecord{UUID: uuid.NewString(), Name: "half-created", Size: 16 << 20, Replicas: 2, Protocol: "nvmf",
		Status: volCreating, Op: &volumeOp{Kind: opCreate}}
	for _, m := range members[:2] {
		c.ReplicaSet = append(c.ReplicaSet, replicaRef{UUID: uuid.NewString(), Node: m.UUID, Pool: "p0", Size: 16 << 20})
	}
	if ok, err := vs.svc.createVolumeRecord(ctx, c); !ok || err != nil {
		t.Fatal(ok, err)
	}
	// A publish recorded, its nexus made, the leader gone before the
	// target was recorded.
	if _, err := vs.vols().CreateVolume(ctx, create("half-published", 16<<20, 1)); err != nil {
		t.Fatal(err)
	}
	p, _ := vs.svc.getVolume(ctx, "half-published")
	p.Op = &volumeOp{Kind: opPublish, Node: p.ReplicaSet[0].Node, Protocol: "nvmf"}
	if err := vs.svc.putVolume(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := vs.svc.realizePublish(ctx, p, memberIndex(members)); err != nil {
		t.Fatal(err)
	}
	// A delete recorded, nothing destroyed yet.
	if _, err := vs.vols().CreateVolume(ctx, create("half-deleted", 16<<20, 3)); err != nil {
		t.Fatal(err)
	}
	d, _ := vs.svc.getVolume(ctx, "half-deleted")
	d.Status, d.Op = volDeleting, &volumeOp{Kind: opDelete}
	if err := vs.svc.putVolume(ctx, d); err != nil {
		t.Fatal(err)
	}

	// A move recorded, the leader gone before anything was done: the next
	// leader rolls it forward (a move is never undone).
	if _, err := vs.vols().CreateVolume(ctx, create("half-moved", 16<<20, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "half-moved", Node: members[0].Name}); err != nil {
		t.Fatal(err)
	}
	mv, _ := vs.svc.getVolume(ctx, "half-moved")
	mv.Op = &volumeOp{Kind: opMove, From: mv.Target.Node, Node: members[1].UUID, Protocol: mv.Target.Protocol, Stage: stageRetire}
	if err := vs.svc.putVolume(ctx, mv); err != nil {
		t.Fatal(err)
	}

	if err := vs.svc.VolumePass(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "half-moved"})
	if err != nil || got.Status.Target == nil || got.Status.Target.NodeUuid != members[1].UUID || got.Status.Operation != "" {
		t.Fatalf("half-moved: %v %+v", err, got.GetStatus())
	}
	got, err = vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "half-created"})
	if err != nil || got.Status.Phase != PhaseOnline || got.Status.Healthy != 2 {
		t.Fatalf("half-created: %v %+v", err, got.GetStatus())
	}
	got, err = vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "half-published"})
	if err != nil || got.Status.Target != nil || got.Status.Operation != "" {
		t.Fatalf("half-published: %v %+v", err, got.GetStatus())
	}
	if _, err := vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "half-deleted"}); FaultCode(err) != CodeVolumeNotFound {
		t.Fatalf("half-deleted: %v", err)
	}
	inv := vs.inventory()
	for _, x := range inv {
		if strings.Contains(x, " nexus ") && x != vs.nodeByUUID(members[1].UUID).name+" nexus half-moved" {
			t.Fatalf("a nexus was left: %v", inv)
		}
	}
	if len(inv) != 6 { // half-created's 2 and half-published's 1 replicas; half-moved's 2 and its nexus
		t.Fatalf("inventory %v", inv)
	}
}

// TestDeleteFinishesWhenNodeReturns: a replica on a node that is down is
// destroyed when the node is joined again; until then the volume is
// deleting.
func TestDeleteFinishesWhenNodeReturns(t *testing.T) {
	vs := newVolSystem(t, []int64{256 << 20, 256 << 20}, nil)
	ctx := context.Background()
	v, err := vs.vols().CreateVolume(ctx, create("v", 16<<20, 2))
	if err != nil {
		t.Fatal(err)
	}
	down := vs.nodeByUUID(v.Status.Replicas[1].NodeUuid)
	if _, err := vs.svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: fmt.Sprint(v.Status.Replicas[1].Rank)}); err != nil {
		t.Fatal(err)
	}
	resp, err := vs.vols().DeleteVolume(ctx, &mgmtv1.DeleteVolumeRequest{Name: "v"})
	if err != nil || len(resp.Pending) != 1 || !strings.Contains(resp.Pending[0], down.name) {
		t.Fatalf("delete with a node down: %v %v", err, resp)
	}
	g, err := vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "v"})
	if err != nil || g.Status.Phase != PhaseDeleting {
		t.Fatalf("while pending: %v %v", err, g.GetStatus())
	}
	if _, err := vs.svc.SystemStart(ctx, &mgmtv1.SystemStartRequest{Ranks: fmt.Sprint(v.Status.Replicas[1].Rank)}); err != nil {
		t.Fatal(err)
	}
	if err := vs.svc.VolumePass(ctx); err != nil {
		t.Fatal(err)
	}
	if inv := vs.inventory(); len(inv) != 0 {
		t.Fatalf("left behind: %v", inv)
	}
}

// waitPhase polls the volume until it reaches phase (bounded).
func waitPhase(t *testing.T, vs *volSystem, name, phase string) *mgmtv1.Volume {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		v, err := vs.vols().GetVolume(context.Background(), &mgmtv1.GetVolumeRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if v.Status.Phase == phase {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("volume %s is %s (%s), not %s", name, v.Status.Phase, v.Status.Reason, phase)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPublishAfterANodeReturns: a volume published while one replica's node
// was down has a health record without that replica; unpublished, it is
// degraded (the replica is not current), and the next publish takes the
// current replicas and rebuilds the returned one instead of refusing it.
func TestPublishAfterANodeReturns(t *testing.T) {
	vs := newVolSystem(t, []int64{256 << 20, 256 << 20, 256 << 20}, nil)
	ctx := context.Background()
	req := create("v", 16<<20, 3)
	req.Spec.Thin = true
	v, err := vs.vols().CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	down := v.Status.Replicas[2]
	if _, err := vs.svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: fmt.Sprint(down.Rank)}); err != nil {
		t.Fatal(err)
	}
	p, err := vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "v", Node: v.Status.Replicas[0].Node})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != PhaseDegraded || p.Status.Healthy != 2 {
		t.Fatalf("published with a node down: %s, %d healthy", p.Status.Phase, p.Status.Healthy)
	}
	if _, err := vs.vols().UnpublishVolume(ctx, &mgmtv1.UnpublishVolumeRequest{Name: "v"}); err != nil {
		t.Fatal(err)
	}
	if _, err := vs.svc.SystemStart(ctx, &mgmtv1.SystemStartRequest{Ranks: fmt.Sprint(down.Rank)}); err != nil {
		t.Fatal(err)
	}
	g, err := vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "v"})
	if err != nil || g.Status.Phase != PhaseDegraded || g.Status.Healthy != 2 {
		t.Fatalf("unpublished, with a replica that missed writes: %v %s %d", err, g.GetStatus().GetPhase(), g.GetStatus().GetHealthy())
	}
	if _, err := vs.vols().PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "v", Node: v.Status.Replicas[1].Node}); err != nil {
		t.Fatalf("publish after the node returned: %v", err)
	}
	if w := waitPhase(t, vs, "v", PhaseOnline); w.Status.Healthy != 3 {
		t.Fatalf("after the rebuild: %d healthy", w.Status.Healthy)
	}
}

// TestPublishOneReplicaAgain: a 1-replica volume's nexus goes on its
// replica's node whatever node is asked for; asking again the same way is
// the same publish, not a conflict.
func TestPublishOneReplicaAgain(t *testing.T) {
	vs := newVolSystem(t, []int64{256 << 20, 256 << 20}, nil)
	ctx := context.Background()
	v, err := vs.vols().CreateVolume(ctx, create("one", 16<<20, 1))
	if err != nil {
		t.Fatal(err)
	}
	other := vs.nodes[0].name
	if other == v.Status.Replicas[0].Node {
		other = vs.nodes[1].name
	}
	req := &mgmtv1.PublishVolumeRequest{Name: "one", Node: other}
	p, err := vs.vols().PublishVolume(ctx, req)
	if err != nil || p.Status.Target.Node != v.Status.Replicas[0].Node {
		t.Fatalf("publish: %v %v", err, p.GetStatus().GetTarget())
	}
	if again, err := vs.vols().PublishVolume(ctx, req); err != nil || again.Status.Target.Uri != p.Status.Target.Uri {
		t.Fatalf("publish again: %v %v", err, again.GetStatus().GetTarget())
	}
}
