package engine

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

// TestSnapshotAPI drives the snapshot service over gRPC on the real pool
// backend: create (idempotent by uuid, same timestamp as given), list,
// get, clone (idempotent, writable, reporting its origin), delete in any
// order (a pool holding a snapshot is not destroyed without force), the
// exact codes of bad requests, and the snapshots surviving an export and
// import of the pool.
func TestSnapshotAPI(t *testing.T) {
	r := newRealRig(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(faultgrpc.ServerOptions()...)
	Register(srv, r.e)
	go srv.Serve(ln)
	defer srv.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), append(faultgrpc.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	snaps := enginev1.NewSnapshotServiceClient(conn)
	disk := r.fileURI("d0.img", 64<<20)
	if _, err := r.e.CreatePool(ctx, PoolSpec{Name: "p0", Disk: disk}); err != nil {
		t.Fatal(err)
	}
	rep, err := r.e.CreateReplica(ctx, CreateReplicaOptions{Name: "r0", Pool: "p0", Size: 8 << 20, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	thick, err := r.e.CreateReplica(ctx, CreateReplicaOptions{Name: "thick", Pool: "p0", Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := r.e.pools["p0"].h.OpenReplica("r0")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	if _, err := dev.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}

	const sid, cid = "5e1f0000-0000-4000-8000-000000000001", "c1000000-0000-4000-8000-000000000001"
	at := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	req := &enginev1.CreateSnapshotRequest{ReplicaUuid: rep.UUID, Uuid: sid, Name: "s0", CreatedUnixNano: at.UnixNano()}
	s, err := snaps.CreateSnapshot(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if s.GetUuid() != sid || s.GetPool() != "p0" || s.GetReplicaName() != "r0" || s.GetCreatedUnixNano() != at.UnixNano() ||
		s.GetSize() != 8<<20 || s.GetReferenced() != 4<<20 || s.GetExclusive() != 0 { // one 4 MiB cluster
		t.Fatalf("snapshot %v", s)
	}
	if again, err := snaps.CreateSnapshot(ctx, req); err != nil || again.GetUuid() != sid {
		t.Fatalf("the same snapshot again: %v, %v", again, err)
	}
	// The replica's first write after the snapshot copies the cluster.
	if _, err := dev.WriteAt(buf[:4096], 8192); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	if got, _ := snaps.GetSnapshot(ctx, &enginev1.GetSnapshotRequest{Uuid: sid}); got.GetExclusive() == 0 {
		t.Fatalf("after a copy-on-write the snapshot holds nothing exclusively: %v", got)
	}
	for _, tc := range []struct {
		name string
		err  error
		kind fault.Kind
		code string
	}{
		{"uuid reused", second(snaps.CreateSnapshot(ctx, &enginev1.CreateSnapshotRequest{ReplicaUuid: rep.UUID, Uuid: sid, Name: "other"})), fault.AlreadyExists, "snapshot.exists"},
		{"no uuid", second(snaps.CreateSnapshot(ctx, &enginev1.CreateSnapshotRequest{ReplicaUuid: rep.UUID, Name: "x"})), fault.InvalidArgument, "snapshot.uuid"},
		{"bad name", second(snaps.CreateSnapshot(ctx, &enginev1.CreateSnapshotRequest{ReplicaUuid: rep.UUID, Uuid: cid, Name: "a b"})), fault.InvalidArgument, "snapshot.name_invalid"},
		{"thick", second(snaps.CreateSnapshot(ctx, &enginev1.CreateSnapshotRequest{ReplicaUuid: thick.UUID, Uuid: cid, Name: "t"})), fault.InvalidArgument, "snapshot.invalid"},
		{"unknown replica", second(snaps.CreateSnapshot(ctx, &enginev1.CreateSnapshotRequest{ReplicaUuid: cid, Uuid: cid, Name: "t"})), fault.NotFound, "replica.not_found"},
		{"name taken", second(snaps.CreateSnapshot(ctx, &enginev1.CreateSnapshotRequest{ReplicaUuid: rep.UUID, Uuid: cid, Name: "thick"})), fault.AlreadyExists, "snapshot.exists"},
		{"get unknown", second(snaps.GetSnapshot(ctx, &enginev1.GetSnapshotRequest{Uuid: cid})), fault.NotFound, "snapshot.not_found"},
		{"clone unknown", second(snaps.CloneSnapshot(ctx, &enginev1.CloneSnapshotRequest{SnapshotUuid: cid, Uuid: cid, Name: "c"})), fault.NotFound, "snapshot.not_found"},
		{"clone named like a replica", second(snaps.CloneSnapshot(ctx, &enginev1.CloneSnapshotRequest{SnapshotUuid: sid, Uuid: cid, Name: "r0"})), fault.AlreadyExists, "replica.exists"},
		{"delete unknown", second(snaps.DeleteSnapshot(ctx, &enginev1.DeleteSnapshotRequest{Uuid: cid})), fault.NotFound, "snapshot.not_found"},
	} {
		if got := fault.KindOf(tc.err); got != tc.kind || fault.CodeOf(tc.err) != tc.code {
			t.Errorf("%s: %v (kind %v, code %q), want kind %v code %s", tc.name, tc.err, got, fault.CodeOf(tc.err), tc.kind, tc.code)
		}
	}

	creq := &enginev1.CloneSnapshotRequest{SnapshotUuid: sid, Uuid: cid, Name: "c0"}
	c, err := snaps.CloneSnapshot(ctx, creq)
	if err != nil {
		t.Fatal(err)
	}
	if c.GetOrigin() != sid || c.GetSize() != 8<<20 || !c.GetThin() || c.GetAllocated() != 4<<20 || c.GetExclusive() != 0 {
		t.Fatalf("clone %v", c)
	}
	if again, err := snaps.CloneSnapshot(ctx, creq); err != nil || again.GetUuid() != cid {
		t.Fatalf("the same clone again: %v, %v", again, err)
	}
	cdev, err := r.e.pools["p0"].h.OpenReplica("c0")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(buf))
	if _, err := cdev.ReadAt(got, 0); err != nil || string(got) != string(buf) {
		t.Fatalf("clone does not read as the snapshot: %v", err)
	}
	cdev.Close()
	list, err := snaps.ListSnapshots(ctx, &enginev1.ListSnapshotsRequest{ReplicaUuid: rep.UUID})
	if err != nil || len(list.GetSnapshots()) != 1 {
		t.Fatalf("list: %v, %v", list, err)
	}
	if p, _ := r.e.Pool("p0"); p.Stats.Snapshots != 1 || p.Stats.Replicas != 3 {
		t.Fatalf("pool counts %d snapshots and %d replicas, want 1 and 3 (r0, thick, c0)", p.Stats.Snapshots, p.Stats.Replicas)
	}

	// Export and import: the snapshot and the clone come back.
	if err := r.e.ExportPool(ctx, "p0"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.e.ImportPool(ctx, "p0", disk); err != nil {
		t.Fatal(err)
	}
	if s, err := snaps.GetSnapshot(ctx, &enginev1.GetSnapshotRequest{Uuid: sid}); err != nil || s.GetCreatedUnixNano() != at.UnixNano() {
		t.Fatalf("snapshot after import: %v, %v", s, err)
	}
	if ri, err := r.e.Replica("c0"); err != nil || ri.Origin != sid {
		t.Fatalf("clone after import: %+v, %v", ri, err)
	}
	// A pool holding a snapshot is not destroyed without force.
	for _, n := range []string{"r0", "c0", "thick"} {
		if err := r.e.DestroyReplica(ctx, n, Access{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.e.DestroyPool(ctx, "p0", false); fault.CodeOf(err) != "pool.not_empty" || !strings.Contains(err.Error(), "s0") {
		t.Fatalf("destroying a pool that holds a snapshot: %v", err)
	}
	if s, err := snaps.GetSnapshot(ctx, &enginev1.GetSnapshotRequest{Uuid: sid}); err != nil || s.GetReplicaName() != "" {
		t.Fatalf("snapshot after its replica was destroyed: %v, %v", s, err)
	}
	// The snapshot, deleted last, frees everything.
	if _, err := snaps.DeleteSnapshot(ctx, &enginev1.DeleteSnapshotRequest{Uuid: sid}); err != nil {
		t.Fatal(err)
	}
	if p, _ := r.e.Pool("p0"); p.Stats.Allocated != 0 {
		t.Fatalf("pool allocates %d bytes after deleting everything", p.Stats.Allocated)
	}
}
