package mgmt

import (
	"bytes"
	"context"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
)

const snapBlock = 4096

// stopControl stops a node's gRPC API and leaves its data plane serving:
// the nexus's child on it stays online, and the leader's calls to its
// engine fail. startControl serves the API again.
func (n *healNode) stopControl() { n.srv.Stop() }

func (n *healNode) startControl(t *testing.T) {
	t.Helper()
	var lis net.Listener
	var err error
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
	n.dp.Register(n.srv)
	go n.srv.Serve(lis)
}

// block returns the content the sequential writer gives block i.
func block(i int) []byte {
	b := fill(byte(i%250+1), snapBlock)
	b[0], b[1] = byte(i), byte(i>>8)
	return b
}

// checkPrefix checks that img holds blocks 0..k-1 as the writer wrote
// them and the rest as base, for some k in [lo, hi]: a crash-consistent
// point of a sequential writer that had lo writes acknowledged before the
// snapshot began and hi after it ended.
func checkPrefix(t *testing.T, what string, img []byte, base byte, lo, hi int) int {
	t.Helper()
	k := 0
	for k*snapBlock < len(img) && bytes.Equal(img[k*snapBlock:(k+1)*snapBlock], block(k)) {
		k++
	}
	if k < lo || k > hi+1 {
		t.Fatalf("%s: holds the first %d writes, want between %d (acknowledged before) and %d", what, k, lo, hi+1)
	}
	if !bytes.Equal(img[k*snapBlock:], fill(base, len(img)-k*snapBlock)) {
		t.Fatalf("%s: data after the first %d writes is not the volume's earlier content", what, k)
	}
	return k
}

func readAll(t *testing.T, ns *initiator.Namespace, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := ns.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// publishNamed publishes a volume and connects to it.
func publishNamed(t *testing.T, vs *volSystem, name, node string) (*mgmtv1.Volume, *initiator.Namespace) {
	t.Helper()
	p, err := vs.vols().PublishVolume(context.Background(), &mgmtv1.PublishVolumeRequest{Name: name, Node: node})
	if err != nil {
		t.Fatal(err)
	}
	return p, connect(t, p)
}

// TestVolumeSnapshot snapshots a published 3-replica volume while a
// writer runs, on real engines: the snapshot holds a crash-consistent
// point of the writer, the same on every replica (a volume restored from
// it over three clones verifies clean, without a rebuild); a replica whose
// snapshot fails is faulted in the nexus and rebuilt, the snapshot valid
// on the others; a restore from that snapshot gets its missing replica
// from the reconcilers; deleting a snapshot deletes its copies.
func TestVolumeSnapshot(t *testing.T) {
	vs, nodes := newHealSystem(t, 3, time.Hour)
	ctx := context.Background()
	const size = 16 << 20
	v, ns := setupPublished(t, vs, nodes, 3)

	// A sequential writer runs during the snapshot.
	var acked atomic.Int64
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		for i := 0; i < size/snapBlock; i++ {
			select {
			case <-stop:
				werr <- nil
				return
			default:
			}
			if _, err := ns.WriteAt(block(i), int64(i)*snapBlock); err != nil {
				werr <- err
				return
			}
			acked.Add(1)
		}
		werr <- nil
	}()
	for acked.Load() < 64 {
		time.Sleep(time.Millisecond)
	}
	lo := int(acked.Load())
	s1, err := vs.vols().CreateSnapshot(ctx, &mgmtv1.CreateSnapshotRequest{Volume: "v", Name: "s1"})
	hi := int(acked.Load())
	close(stop)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	st := s1.Status
	if st.Phase != "ready" || !st.ReadyToUse || st.ReadyCopies != 3 || len(st.Copies) != 3 || len(st.Failed) != 0 || st.PausedUs == 0 {
		t.Fatalf("snapshot status %v", st)
	}
	t.Logf("writes held %v while 3 replicas were snapshotted (%d..%d writes acknowledged)", time.Duration(st.PausedUs)*time.Microsecond, lo, hi)
	if again, err := vs.vols().CreateSnapshot(ctx, &mgmtv1.CreateSnapshotRequest{Volume: v.Spec.Uuid, Name: "s1"}); err != nil || again.Uuid != s1.Uuid {
		t.Fatalf("the same snapshot again: %v, %v", again, err)
	}
	if len(events(t, vs, evSnapshot)) != 1 {
		t.Fatalf("want one %s event", evSnapshot)
	}

	// Restored over three clones: identical, trusted without a rebuild.
	r1, err := vs.vols().CreateVolume(ctx, &mgmtv1.CreateVolumeRequest{Spec: &mgmtv1.VolumeSpec{Name: "r1", Replicas: 3, FromSnapshot: "v/s1"}})
	if err != nil {
		t.Fatal(err)
	}
	if r1.Spec.Size != size || !r1.Spec.Thin || len(r1.Status.Replicas) != 3 {
		t.Fatalf("restored volume %v", r1)
	}
	p1, rns := publishNamed(t, vs, "r1", "")
	if p1.Status.Healthy != 3 || len(p1.Status.Repairs) != 0 {
		t.Fatalf("restored volume published: %v", p1.Status)
	}
	for _, r := range p1.Status.Replicas {
		if r.ChildState != "online" {
			t.Fatalf("restored replica %s is %s, want online (no rebuild)", r.Uuid, r.ChildState)
		}
	}
	vr, err := vs.vols().VerifyVolume(ctx, &mgmtv1.VerifyVolumeRequest{Name: "r1"})
	if err != nil || len(vr.Children) != 3 || len(vr.Mismatches) != 0 {
		t.Fatalf("the replicas' snapshots differ: %v %v", vr, err)
	}
	k := checkPrefix(t, "snapshot s1", readAll(t, rns, size), 0xa1, lo, hi)
	t.Logf("snapshot s1 holds the first %d writes", k)

	// One replica's snapshot fails (its node's API is away while its data
	// path serves): that child is faulted, the snapshot holds on the others.
	bad := nodes[2]
	var badReplica string
	for _, r := range v.Status.Replicas {
		if r.NodeUuid == bad.uuid {
			badReplica = r.Uuid
		}
	}
	want := fill(0x5c, size)
	if _, err := ns.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	bad.stopControl()
	s2, err := vs.vols().CreateSnapshot(ctx, &mgmtv1.CreateSnapshotRequest{Volume: "v", Name: "s2"})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Status.ReadyCopies != 2 || !slices.Equal(s2.Status.Failed, []string{badReplica}) {
		t.Fatalf("snapshot with a failing replica: %v", s2.Status)
	}
	nx, err := healNodeOf(nodes, v.Status.Target.NodeUuid).cl.GetNexus(ctx, &enginev1.GetNexusRequest{Name: "v"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range nx.Children {
		if replicaOfURI(c.Uri) == badReplica && (c.State != enginev1.ChildState_CHILD_STATE_FAULTED || c.Reason != "snapshot-failed") {
			t.Fatalf("the replica whose snapshot failed is %v (%s), want faulted (snapshot-failed)", c.State, c.Reason)
		}
	}
	bad.startControl(t)
	passUntil(t, vs, "the faulted replica rebuilt", healthy(3))
	if _, err := ns.WriteAt(fill(0x77, size), 0); err != nil {
		t.Fatal(err)
	}

	// Restored from two copies into three replicas: the third is added and
	// rebuilt by the reconcilers; the data is the snapshot's.
	r2, err := vs.vols().CreateVolume(ctx, &mgmtv1.CreateVolumeRequest{Spec: &mgmtv1.VolumeSpec{Name: "r2", Replicas: 3, FromSnapshot: s2.Uuid}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r2.Status.Replicas) != 2 {
		t.Fatalf("restored from 2 copies: %d replicas", len(r2.Status.Replicas))
	}
	_, r2ns := publishNamed(t, vs, "r2", "")
	if !bytes.Equal(readAll(t, r2ns, size), want) {
		t.Fatal("the volume restored from s2 does not hold s2's data")
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := vs.svc.VolumePass(ctx); err != nil {
			t.Logf("pass: %v", err)
		}
		x, err := vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "r2"})
		if err == nil && x.Status.Healthy == 3 && len(x.Status.Repairs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restored volume did not get its third replica: %v %v", err, x.GetStatus())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !bytes.Equal(readAll(t, r2ns, size), want) {
		t.Fatal("the restored volume changed while its third replica was added")
	}

	// Deleting a volume leaves its snapshots; deleting a snapshot deletes
	// its copies.
	if _, err := vs.vols().UnpublishVolume(ctx, &mgmtv1.UnpublishVolumeRequest{Name: "r1"}); err != nil {
		t.Fatal(err)
	}
	list, err := vs.vols().ListSnapshots(ctx, &mgmtv1.ListSnapshotsRequest{Volume: "v"})
	if err != nil || len(list.Snapshots) != 2 {
		t.Fatalf("list: %v %v", list, err)
	}
	if _, err := vs.vols().DeleteSnapshot(ctx, &mgmtv1.DeleteSnapshotRequest{Snapshot: "v/s1"}); err != nil {
		t.Fatal(err)
	}
	_, err = vs.vols().GetSnapshot(ctx, &mgmtv1.GetSnapshotRequest{Snapshot: s1.Uuid})
	if FaultCode(err) != CodeSnapshotNotFound {
		t.Fatalf("a deleted snapshot: %v", err)
	}
	for _, n := range nodes {
		if _, err := n.cl.GetSnapshot(ctx, &enginev1.GetSnapshotRequest{Uuid: s1.Uuid}); !notFound(err) {
			t.Fatalf("node %s still holds a copy of the deleted snapshot: %v", n.name, err)
		}
	}
	// r1, a clone of s1, still reads its data.
	if _, err := vs.vols().DeleteSnapshot(ctx, &mgmtv1.DeleteSnapshotRequest{Snapshot: "v/s1"}); FaultCode(err) != CodeSnapshotNotFound {
		t.Fatalf("deleting again: %v", err)
	}
}

// TestSnapshotResumedByNewLeader leaves a recorded snapshot operation with
// a copy made on one replica, as a leader that died mid-way would: the
// next pass rolls it back (the copy is deleted, the record and name go,
// the volume's operation is cleared), and the name can be taken again.
func TestSnapshotResumedByNewLeader(t *testing.T) {
	vs, nodes := newHealSystem(t, 2, time.Hour)
	ctx := context.Background()
	req := create("v", 8<<20, 2)
	req.Spec.Thin = true
	if _, err := vs.vols().CreateVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	svc := vs.svc.Service
	v, err := svc.getVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	r := &snapshotRecord{UUID: uuid.NewString(), Name: "s", VolumeUUID: v.UUID, VolumeName: v.Name, Size: v.Size,
		CreatedNs: time.Now().UnixNano(), Status: snapCreating}
	v.Op = &volumeOp{Kind: opSnapshot, Snapshot: r.UUID, StartedMs: svc.nowMs()}
	if _, err := svc.cfg.Etcd.Txn(ctx).Then(clientv3.OpPut(svc.k.volume(v.UUID), encodeVolume(v)),
		clientv3.OpPut(svc.k.snapshot(r.UUID), mustJSON(r)), clientv3.OpPut(svc.k.snapshotName(v.UUID, "s"), r.UUID)).Commit(); err != nil {
		t.Fatal(err)
	}
	made := v.ReplicaSet[0]
	n := healNodeOf(nodes, made.Node)
	if _, err := n.cl.CreateSnapshot(ctx, &enginev1.CreateSnapshotRequest{ReplicaUuid: made.UUID, Uuid: r.UUID, Name: r.UUID}); err != nil {
		t.Fatal(err)
	}
	if s, err := vs.vols().GetSnapshot(ctx, &mgmtv1.GetSnapshotRequest{Snapshot: "v/s"}); err != nil || s.Status.Phase != snapCreating {
		t.Fatalf("the recorded snapshot: %v %v", s, err)
	}
	if err := svc.VolumePass(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := n.cl.GetSnapshot(ctx, &enginev1.GetSnapshotRequest{Uuid: r.UUID}); !notFound(err) {
		t.Fatalf("the copy of the rolled back snapshot is still there: %v", err)
	}
	if _, err := vs.vols().GetSnapshot(ctx, &mgmtv1.GetSnapshotRequest{Snapshot: "v/s"}); FaultCode(err) != CodeSnapshotNotFound {
		t.Fatalf("the rolled back snapshot: %v", err)
	}
	if v, err = svc.getVolume(ctx, "v"); err != nil || v.Op != nil {
		t.Fatalf("the volume's operation after the roll back: %v %v", v.Op, err)
	}
	s, err := vs.vols().CreateSnapshot(ctx, &mgmtv1.CreateSnapshotRequest{Volume: "v", Name: "s"})
	if err != nil || s.Uuid == r.UUID || s.Status.ReadyCopies != 2 || s.Status.PausedUs != 0 {
		t.Fatalf("the snapshot taken again (unpublished): %v %v", s, err)
	}
	// A thick volume is refused.
	if _, err := vs.vols().CreateVolume(ctx, create("thick", 4<<20, 1)); err != nil {
		t.Fatal(err)
	}
	_, err = vs.vols().CreateSnapshot(ctx, &mgmtv1.CreateSnapshotRequest{Volume: "thick", Name: "s"})
	if FaultCode(err) != CodeSnapshotThick {
		t.Fatalf("a snapshot of a thick volume: %v", err)
	}
}
