package engine

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type rig struct {
	dir string
	be  *memBackend
	nbd *memExporter
}

func newRig(t *testing.T) *rig {
	return &rig{dir: t.TempDir(), be: newMemBackend(), nbd: newMemExporter()}
}

func (r *rig) start(t *testing.T, pools ...PoolConfig) *Engine {
	t.Helper()
	e, err := New(Config{DataDir: r.dir, Backend: r.be, NBD: r.nbd, Pools: pools, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// wantFault checks the error's kind, its gRPC code and that its message
// names every given thing.
func wantFault(t *testing.T, err error, kind fault.Kind, names ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", kind)
	}
	if got := fault.KindOf(err); got != kind {
		t.Fatalf("kind %v, want %v: %v", got, kind, err)
	}
	st, _ := status.FromError(ToStatus(err))
	if st.Code() != faultgrpc.Code(kind) || st.Code() == codes.Internal {
		t.Fatalf("grpc code %v for kind %v", st.Code(), kind)
	}
	for _, n := range names {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("error %q does not name %q", err, n)
		}
	}
	if fault.ResolutionOf(err) == "" && kind != fault.Internal {
		t.Errorf("error %q has no resolution", err)
	}
}

func TestPoolAndReplicaLifecycle(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	defer e.Close()
	p, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: "file:///d0.img?size=64MiB", ClusterSize: 0, Force: false})
	if err != nil {
		t.Fatal(err)
	}
	if p.State != PoolOnline || p.Stats.ClusterSize != memCluster || p.UUID == "" {
		t.Fatalf("pool %+v", p)
	}
	ri, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: 8 << 20, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	if ri.Pool != "p0" || ri.Size != 8<<20 || !ri.Thin || ri.Share != nil {
		t.Fatalf("replica %+v", ri)
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r1", Pool: "p0", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	if p, _ := e.Pool("p0"); p.Stats.FreeClusters != 60 || p.Stats.Replicas != 2 {
		t.Fatalf("stats after thick 4MiB: %+v", p.Stats)
	}
	ri, err = e.ShareReplica(context.Background(), "r0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ri.Share == nil || ri.Share.URI != "nbd://127.0.0.1:10809/r0" || ri.Share.Protocol != "nbd" {
		t.Fatalf("share %+v", ri.Share)
	}
	if got := r.nbd.names(); len(got) != 1 || got[0] != "r0" {
		t.Fatalf("exports %v", got)
	}
	// Sharing again is idempotent.
	if again, err := e.ShareReplica(context.Background(), "r0", "nbd", nil); err != nil || again.Share.URI != ri.Share.URI {
		t.Fatalf("share again: %v %+v", err, again.Share)
	}
	wantFault(t, e.DestroyReplica(context.Background(), "r0", Access{}), fault.FailedPrecondition, "r0", "shared")
	wantFault(t, e.DestroyPool(context.Background(), "p0", true), fault.FailedPrecondition, "p0", "r0")
	if _, err := e.UnshareReplica(context.Background(), "r0", Access{}); err != nil {
		t.Fatal(err)
	}
	if got := r.nbd.names(); len(got) != 0 {
		t.Fatalf("exports after unshare %v", got)
	}
	if _, err := e.UnshareReplica(context.Background(), "r0", Access{}); err != nil {
		t.Fatalf("unshare twice: %v", err)
	}
	if ri, err := e.ResizeReplica(context.Background(), "r0", 16<<20, Access{}); err != nil || ri.Size != 16<<20 {
		t.Fatalf("resize: %v %+v", err, ri)
	}
	_, err = e.ResizeReplica(context.Background(), "r0", 8<<20, Access{})
	wantFault(t, err, fault.InvalidArgument, "r0", "grow")
	list, _ := e.Replicas("")
	if len(list) != 2 || list[0].Name != "r0" || list[1].Name != "r1" {
		t.Fatalf("list %+v", list)
	}
	wantFault(t, e.DestroyPool(context.Background(), "p0", false), fault.FailedPrecondition, "p0", "r0", "r1", "--force")
	if err := e.DestroyReplica(context.Background(), "r0", Access{}); err != nil {
		t.Fatal(err)
	}
	_, err = e.Replica("r0")
	wantFault(t, err, fault.NotFound, "r0")
	if err := e.DestroyPool(context.Background(), "p0", true); err != nil {
		t.Fatal(err)
	}
	if len(e.Pools()) != 0 {
		t.Fatalf("pools after destroy: %+v", e.Pools())
	}
	_, err = e.Replica("r1")
	wantFault(t, err, fault.NotFound, "r1")
}

func TestBadInputRegistry(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	defer e.Close()
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: "/d0", ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		err   error
		kind  fault.Kind
		names []string
	}{
		{"dup pool", second(e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: "/d1", ClusterSize: 0, Force: false})), fault.AlreadyExists, []string{"p0"}},
		{"disk in use", second(e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: "file:///d0?size=1GiB", ClusterSize: 0, Force: false})), fault.FailedPrecondition, []string{"/d0", "p0"}},
		{"bad pool name", second(e.CreatePool(context.Background(), PoolSpec{Name: "bad name", Disk: "/d2", ClusterSize: 0, Force: false})), fault.InvalidArgument, []string{"bad name"}},
		{"no disk", second(e.CreatePool(context.Background(), PoolSpec{Name: "p2", Disk: "", ClusterSize: 0, Force: false})), fault.InvalidArgument, []string{"p2"}},
		{"missing disk", second(e.CreatePool(context.Background(), PoolSpec{Name: "p2", Disk: "/missing/d", ClusterSize: 0, Force: false})), fault.NotFound, []string{"/missing/d"}},
		{"pool not found", second(e.Pool("nope")), fault.NotFound, []string{"nope"}},
		{"replica in unknown pool", second(e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r", Pool: "nope", Size: memCluster})), fault.NotFound, []string{"nope"}},
		{"unaligned", second(e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r", Pool: "p0", Size: memCluster + 512})), fault.InvalidArgument, []string{"r", "cluster size", "2MiB"}},
		{"zero size", second(e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r", Pool: "p0"})), fault.InvalidArgument, []string{"r"}},
		{"thick too big", second(e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r", Pool: "p0", Size: 65 * memCluster})), fault.ResourceExhausted, []string{"r", "p0"}},
		{"bad uuid", second(e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r", Pool: "p0", Size: memCluster, UUID: "xyz"})), fault.InvalidArgument, []string{"xyz"}},
		{"share unknown", second(e.ShareReplica(context.Background(), "nope", "nbd", nil)), fault.NotFound, []string{"nope"}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantFault(t, tc.err, tc.kind, tc.names...) })
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: memCluster}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: "/d1", ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	_, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p1", Size: memCluster})
	wantFault(t, err, fault.AlreadyExists, "r0", "p0")
	_, err = e.ShareReplica(context.Background(), "r0", "nvmf", nil)
	wantFault(t, err, fault.FailedPrecondition, "nvmf")
	_, err = e.ShareReplica(context.Background(), "r0", "iscsi", nil)
	wantFault(t, err, fault.InvalidArgument, "iscsi")
	_, err = e.ShareReplica(context.Background(), "r0", "nbd", []string{"host1"})
	wantFault(t, err, fault.InvalidArgument, "r0")
	// Nothing of the above left a trace.
	if ps := e.Pools(); len(ps) != 2 {
		t.Fatalf("pools %+v", ps)
	}
	if reps, _ := e.Replicas(""); len(reps) != 1 {
		t.Fatalf("replicas %+v", reps)
	}
	if len(r.nbd.names()) != 0 {
		t.Fatalf("exports %v", r.nbd.names())
	}
}

func second[T any](_ T, err error) error { return err }

func TestRestartRemembersPoolsAndShares(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: "/d0", ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p1", Disk: "/d1", ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"r0", "r1"} {
		if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: n, Pool: "p0", Size: 2 * memCluster, Thin: true}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.ShareReplica(context.Background(), "r1", "nbd", nil); err != nil {
		t.Fatal(err)
	}
	if err := e.ExportPool(context.Background(), "p1"); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if n := r.nbd.names(); len(n) != 0 {
		t.Fatalf("exports after close: %v", n)
	}
	var st persistentState
	b, err := os.ReadFile(filepath.Join(r.dir, StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Pools) != 1 || st.Pools[0].Name != "p0" || len(st.Shares) != 1 || st.Shares[0].Replica != "r1" {
		t.Fatalf("state file %s", b)
	}

	e = r.start(t)
	defer e.Close()
	ps := e.Pools()
	if len(ps) != 1 || ps[0].Name != "p0" || ps[0].State != PoolOnline {
		t.Fatalf("pools after restart %+v", ps)
	}
	ri, err := e.Replica("r1")
	if err != nil {
		t.Fatal(err)
	}
	if ri.Share == nil || ri.Share.URI != "nbd://127.0.0.1:10809/r1" || ri.State != ReplicaOnline {
		t.Fatalf("r1 after restart %+v", ri)
	}
	if n := r.nbd.names(); len(n) != 1 || n[0] != "r1" {
		t.Fatalf("exports after restart: %v", n)
	}
	if ri, _ := e.Replica("r0"); ri.Share != nil {
		t.Fatalf("r0 shared after restart: %+v", ri)
	}
	// The exported pool can be imported again, by its disk.
	p, err := e.ImportPool(context.Background(), "", "/d1")
	if err != nil || p.Name != "p1" {
		t.Fatalf("import: %v %+v", err, p)
	}
	_, err = e.ImportPool(context.Background(), "", "/d1")
	wantFault(t, err, fault.AlreadyExists, "/d1", "p1")
}

func TestConfiguredPools(t *testing.T) {
	r := newRig(t)
	r.be.disks[diskKey("/blank")] = nil
	e := r.start(t)
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: "/d0", ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	e.Close()
	e = r.start(t,
		PoolConfig{Name: "p0", Disk: "/d0"},
		PoolConfig{Name: "blank", Disk: "/blank"},
		PoolConfig{Name: "gone", Disk: "/nowhere"},
		PoolConfig{Name: "wrong", Disk: "file:///d0"},
	)
	defer e.Close()
	got := map[string]PoolInfo{}
	for _, p := range e.Pools() {
		got[p.Name] = p
	}
	if got["p0"].State != PoolOnline {
		t.Fatalf("p0 %+v", got["p0"])
	}
	for name, want := range map[string]string{"blank": "not a pool", "gone": "not found", "wrong": "already used by pool \"p0\""} {
		if got[name].State != PoolFaulted || !strings.Contains(got[name].Reason, want) {
			t.Errorf("%s: %+v, want faulted with %q", name, got[name], want)
		}
	}
	if r.be.disks[diskKey("/blank")] != nil {
		t.Fatal("a blank configured disk was written to")
	}
	_, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r", Pool: "blank", Size: memCluster})
	wantFault(t, err, fault.Unavailable, "blank")
	// A faulted pool can be created in place (same disk).
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "blank", Disk: "/blank", ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
}

func TestShareRestoreFailureIsReported(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: "/d0", ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: memCluster, Thin: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ShareReplica(context.Background(), "r0", "nbd", nil); err != nil {
		t.Fatal(err)
	}
	e.Close()
	// Another holder has the replica open, so the share cannot come back.
	dev, err := r.be.disks[diskKey("/d0")].OpenReplica("r0")
	if err != nil {
		t.Fatal(err)
	}
	e = r.start(t)
	defer e.Close()
	ri, err := e.Replica("r0")
	if err != nil {
		t.Fatal(err)
	}
	if ri.State != ReplicaFaulted || ri.Reason == "" || ri.Share == nil {
		t.Fatalf("replica %+v", ri)
	}
	dev.Close()
	ri, err = e.ShareReplica(context.Background(), "r0", "nbd", nil)
	if err != nil || ri.State != ReplicaOnline {
		t.Fatalf("retry share: %v %+v", err, ri)
	}
}

func TestStatusRoundTrip(t *testing.T) {
	err := fault.New(fault.FailedPrecondition, "x.y", "thing t0 is wrong", "do this")
	st := ToStatus(err)
	s, _ := status.FromError(st)
	if s.Code() != codes.FailedPrecondition {
		t.Fatalf("code %v", s.Code())
	}
	f := FromStatus(st)
	if f.Code != "x.y" || f.Description != "thing t0 is wrong" || f.Resolution != "do this" || f.Kind != fault.FailedPrecondition {
		t.Fatalf("round trip %+v", f)
	}
	if s, _ := status.FromError(ToStatus(errors.New("boom"))); s.Code() != codes.Internal {
		t.Fatalf("plain error code %v", s.Code())
	}
}

func TestCorruptStateFileIsAnError(t *testing.T) {
	r := newRig(t)
	if err := os.WriteFile(filepath.Join(r.dir, StateFileName), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{DataDir: r.dir, Backend: r.be, Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), StateFileName) {
		t.Fatalf("err %v", err)
	}
}

func TestAdvertiseAddr(t *testing.T) {
	if got := AdvertiseAddr("10.1.2.3:10809"); got != "10.1.2.3:10809" {
		t.Fatal(got)
	}
	if got := AdvertiseAddr("[::1]:5"); got != "[::1]:5" {
		t.Fatal(got)
	}
	for _, a := range []string{":10809", "0.0.0.0:10809", "[::]:10809"} {
		got := AdvertiseAddr(a)
		if !strings.HasSuffix(got, ":10809") || strings.HasPrefix(got, ":") || strings.HasPrefix(got, "0.0.0.0") {
			t.Fatalf("%s -> %s", a, got)
		}
	}
}

func TestListBlockDevices(t *testing.T) {
	root := t.TempDir()
	mk := func(name, size, model, rot string) {
		d := filepath.Join(root, name)
		os.MkdirAll(filepath.Join(d, "device"), 0o755)
		os.MkdirAll(filepath.Join(d, "queue"), 0o755)
		os.WriteFile(filepath.Join(d, "size"), []byte(size+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "device", "model"), []byte(model+"  \n"), 0o644)
		os.WriteFile(filepath.Join(d, "queue", "rotational"), []byte(rot+"\n"), 0o644)
	}
	mk("sdb", "2048", "DISK", "1")
	mk("nvme0n1", "4096", "NVMe X", "0")
	devs, err := ListBlockDevices(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 || devs[0].Name != "nvme0n1" || devs[0].Size != 4096*512 || devs[0].Model != "NVMe X" ||
		devs[0].Rotational || devs[1].Path != "/dev/sdb" || !devs[1].Rotational {
		t.Fatalf("%+v", devs)
	}
}

func TestImportURIDropsSize(t *testing.T) {
	if got := importURI("file:///a/b.img?size=10GiB"); got != "file:///a/b.img" {
		t.Fatal(got)
	}
	if got := importURI("malloc:///x?size=1GiB"); got != "malloc:///x?size=1GiB" {
		t.Fatal(got)
	}
}

func TestStaleShareCanBeForgotten(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: "/d0", ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: memCluster, Thin: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ShareReplica(context.Background(), "r0", "nbd", nil); err != nil {
		t.Fatal(err)
	}
	e.Close()
	delete(r.be.disks, diskKey("/d0")) // the disk is gone
	e = r.start(t)
	defer e.Close()
	if p, _ := e.Pool("p0"); p.State != PoolFaulted {
		t.Fatalf("pool %+v", p)
	}
	if _, err := e.UnshareReplica(context.Background(), "r0", Access{}); err != nil {
		t.Fatal(err)
	}
	st, err := loadState(filepath.Join(r.dir, StateFileName))
	if err != nil || len(st.Shares) != 0 {
		t.Fatalf("state after forgetting the share: %+v %v", st, err)
	}
	_, err = e.UnshareReplica(context.Background(), "r0", Access{})
	wantFault(t, err, fault.NotFound, "r0")
}

func TestImportRestoresRememberedShares(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: "/d0", ClusterSize: 0, Force: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: memCluster, Thin: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ShareReplica(context.Background(), "r0", "nbd", nil); err != nil {
		t.Fatal(err)
	}
	e.Close()
	disk := r.be.disks[diskKey("/d0")]
	delete(r.be.disks, diskKey("/d0")) // the disk is late at start
	e = r.start(t)
	defer e.Close()
	if p, _ := e.Pool("p0"); p.State != PoolFaulted {
		t.Fatalf("pool %+v", p)
	}
	r.be.disks[diskKey("/d0")] = disk
	if _, err := e.ImportPool(context.Background(), "p0", "/d0"); err != nil {
		t.Fatal(err)
	}
	ri, err := e.Replica("r0")
	if err != nil || ri.State != ReplicaOnline || ri.Share == nil || ri.Share.URI != "nbd://127.0.0.1:10809/r0" {
		t.Fatalf("r0 after import %+v %v", ri, err)
	}
	if n := r.nbd.names(); len(n) != 1 || n[0] != "r0" {
		t.Fatalf("exports %v", n)
	}
}
