package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/netproxy"
)

// The tests of this file are the engine's safety promises, each over real
// pools (and, where a network is involved, real NVMe/TCP between engines):
// a replica destroyed and created again is never mistaken for the old one,
// a replica has one owner, a replaced nexus can never land a late write, and
// a nexus that cannot know which children are current never serves them as
// in sync.

const safetySize = 4 << 20

// localEngine starts an engine whose nexuses are published to memory, with
// a file pool p0, and returns it with its rig.
func localEngine(t *testing.T, dir string, remote func(context.Context, string, string) (bdev.Device, error)) *nexusRig {
	t.Helper()
	r := &nexusRig{dir: dir, nbd: newMemExporter()}
	e, err := New(Config{DataDir: filepath.Join(dir, "data"), Backend: PoolBackend{}, NBD: r.nbd, Logger: quietLogger(),
		NexusRemote: remote})
	if err != nil {
		t.Fatal(err)
	}
	r.e = e
	t.Cleanup(func() { r.e.Close() })
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0",
		Disk: fmt.Sprintf("file://%s?size=%d", filepath.Join(dir, "p0.img"), 64<<20), ClusterSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	return r
}

// replicaNode starts an engine serving NVMe/TCP with a pool p0 and a thin
// replica of safetySize shared over nvmf; it returns the server and the
// replica's child URI.
func replicaNode(t *testing.T, dir, replica string) (*Server, string) {
	t.Helper()
	s, err := StartServer(ServerOptions{DataDir: filepath.Join(dir, "data"), GRPCListen: "127.0.0.1:0",
		NVMfListen: testutil.FreeAddr(t), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(time.Second) })
	ctx := context.Background()
	if _, err := s.Engine.CreatePool(ctx, PoolSpec{Name: "p0",
		Disk: fmt.Sprintf("file://%s?size=%d", filepath.Join(dir, "p0.img"), 64<<20), ClusterSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Engine.CreateReplica(ctx, CreateReplicaOptions{Name: replica, Pool: "p0", Size: safetySize, Thin: true}); err != nil {
		t.Fatal(err)
	}
	ri, err := s.Engine.ShareReplica(ctx, replica, ProtocolNVMf, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, ri.Share.URI
}

func waitRebuilt(t *testing.T, e *Engine, name, child string) nexus.RebuildStatus {
	t.Helper()
	n, err := e.servingNexus(name)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := n.WaitRebuild(ctx, child)
	if err != nil || st.State != nexus.RebuildCompleted {
		t.Fatalf("rebuild of %s: %+v, %v", child, st, err)
	}
	return st
}

func pattern(b byte) []byte { return bytes.Repeat([]byte{b}, 64<<10) }

func mustRead(t *testing.T, d bdev.Device, off int64, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := d.ReadAt(got, off); err != nil {
		t.Fatalf("read at %d: %v", off, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read at %d: got %#x..., want %#x...", off, got[0], want[0])
	}
}

func mustVerify(t *testing.T, e *Engine, name string) {
	t.Helper()
	rep, err := e.VerifyNexus(context.Background(), name)
	if err != nil || len(rep.Mismatches) != 0 {
		t.Fatalf("verify %s: %+v, %v", name, rep, err)
	}
}

// TestReplacedReplicaIsNotTheChild destroys and creates again, under the
// same name and UUID, a replica that is an offline child: online-child
// refuses it as another replica, and add-child rebuilds it in full.
func TestReplacedReplicaIsNotTheChild(t *testing.T) {
	r := localEngine(t, t.TempDir(), nil)
	e, ctx := r.e, context.Background()
	uri := map[string]string{}
	id := map[string]string{}
	for _, name := range []string{"r1", "r2"} {
		ri, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: name, Pool: "p0", Size: safetySize, Thin: true})
		if err != nil {
			t.Fatal(err)
		}
		uri[name], id[name] = "bdev:///"+ri.UUID, ri.UUID
	}
	if _, err := e.CreateNexus(ctx, CreateNexusOptions{Name: "n0", Children: []string{uri["r1"], uri["r2"]}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.PublishNexus(ctx, "n0", ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	dev := r.dev(t, "n0")
	if _, err := dev.WriteAt(pattern(0xa1), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.NexusChildOp(ctx, "n0", ChildOffline, uri["r2"]); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt(pattern(0xa2), 1<<20); err != nil {
		t.Fatal(err)
	}
	// The replica behind the offline child is replaced.
	if err := e.DestroyReplica(ctx, "r2", Access{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: "r2", Pool: "p0", Size: safetySize, Thin: true, UUID: id["r2"]}); err != nil {
		t.Fatal(err)
	}
	_, err := e.NexusChildOp(ctx, "n0", ChildOnline, uri["r2"])
	wantFault(t, err, fault.FailedPrecondition, "different replica", "add-child")
	// add-child copies everything; the data is whole on both children.
	if _, err := e.NexusChildOp(ctx, "n0", ChildAdd, uri["r2"]); err != nil {
		t.Fatal(err)
	}
	if st := waitRebuilt(t, e, "n0", uri["r2"]); st.Partial || st.Total != safetySize {
		t.Fatalf("rebuild of the replaced replica %+v, want a full one", st)
	}
	mustVerify(t, e, "n0")
	if _, err := e.NexusChildOp(ctx, "n0", ChildFault, uri["r1"]); err != nil {
		t.Fatal(err)
	}
	mustRead(t, dev, 0, pattern(0xa1)) // served by r2 alone now
	mustRead(t, dev, 1<<20, pattern(0xa2))
}

// TestReplicaHasOneOwner: a replica in one nexus cannot be a child of a
// second, nor be destroyed, resized or unshared behind its owner's back;
// its owner, and --force, can.
func TestReplicaHasOneOwner(t *testing.T) {
	r := localEngine(t, t.TempDir(), nil)
	e, ctx := r.e, context.Background()
	ri, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: "r1", Pool: "p0", Size: safetySize, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.ShareReplica(ctx, "r1", ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	n1, err := e.CreateNexus(ctx, CreateNexusOptions{Name: "n1", Children: []string{"bdev:///" + ri.UUID}})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := e.Replica("r1"); got.Owner != n1.UUID || got.Epoch == 0 {
		t.Fatalf("replica after the nexus claimed it: owner %q epoch %d, want %s", got.Owner, got.Epoch, n1.UUID)
	}
	_, err = e.CreateNexus(ctx, CreateNexusOptions{Name: "n2", Children: []string{"bdev:///" + ri.UUID}})
	wantFault(t, err, fault.FailedPrecondition, "n2", n1.UUID)
	if _, err := e.Nexus("n2"); !IsFault(err, fault.NotFound) {
		t.Fatalf("the refused nexus exists: %v", err)
	}
	// Behind the owner's back: refused, naming it.
	wantFault(t, e.DestroyReplica(ctx, "r1", Access{}), fault.FailedPrecondition, "r1", `"n1"`, n1.UUID)
	_, err = e.UnshareReplica(ctx, "r1", Access{})
	wantFault(t, err, fault.FailedPrecondition, "r1", n1.UUID)
	_, err = e.ResizeReplica(ctx, "r1", 2*safetySize, Access{})
	wantFault(t, err, fault.FailedPrecondition, "r1", n1.UUID)
	// The owner may; so may --force.
	if _, err := e.ResizeReplica(ctx, "r1", 2*safetySize, Access{Owner: n1.UUID}); err != nil {
		t.Fatalf("resize by the owner: %v", err)
	}
	if _, err := e.UnshareReplica(ctx, "r1", Access{Force: true}); err != nil {
		t.Fatalf("forced unshare: %v", err)
	}
	// Disown is for an owner gone for good, and names it.
	_, err = e.DisownReplica(ctx, "r1", "1b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e")
	wantFault(t, err, fault.FailedPrecondition, "r1", n1.UUID)
	// Destroying the nexus releases the claim: the replica is free.
	if err := e.DestroyNexus(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.Replica("r1"); got.Owner != "" {
		t.Fatalf("owner %q after the nexus was destroyed", got.Owner)
	}
	n2, err := e.CreateNexus(ctx, CreateNexusOptions{Name: "n2", Children: []string{"bdev:///" + ri.UUID}})
	if err != nil {
		t.Fatalf("a new nexus over the released replica: %v", err)
	}
	// n2 is lost for good (forgotten here without a destroy): disowning
	// frees the replica, keeping its epoch.
	before, _ := e.Replica("r1")
	if err := e.Quiesce(); err != nil {
		t.Fatal(err)
	}
	e.quiesced = false // the engine keeps serving, the nexus is gone
	delete(e.nexuses, "n2")
	got, err := e.DisownReplica(ctx, "r1", n2.UUID)
	if err != nil || got.Owner != "" || got.Epoch != before.Epoch {
		t.Fatalf("disown: %+v, %v (epoch was %d)", got, err, before.Epoch)
	}
}

// TestPartitionedNexusIsFenced: the nexus of node A reaches its children on
// B and C through a network that partitions. While it is cut off, a nexus
// of the same UUID is created on node D over the same replicas (a move) and
// writes. When the partition heals, every write A had in flight or sends
// afterwards is refused by the replicas, and the data is what D wrote.
func TestPartitionedNexusIsFenced(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	_, uriB := replicaNode(t, filepath.Join(dir, "b"), "rb")
	_, uriC := replicaNode(t, filepath.Join(dir, "c"), "rc")

	// A's children go through proxies. Its commands time out only long
	// after the partition heals, so that the writes it had in flight are
	// delivered then, as TCP delivers them after a real partition.
	var proxied []string
	var proxies []*netproxy.Proxy
	for _, u := range []string{uriB, uriC} {
		cu, err := nexus.ParseChildURI(u)
		if err != nil {
			t.Fatal(err)
		}
		p, err := netproxy.Listen(cu.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		proxies = append(proxies, p)
		proxied = append(proxied, "nvmf://"+p.Addr()+"/"+cu.Name)
	}
	slow := DefaultNexusRemote
	slow.CommandTimeout, slow.KeepAlive = time.Minute, time.Minute
	a := localEngine(t, filepath.Join(dir, "a"), nexus.NVMfRemote(slow))
	na, err := a.e.CreateNexus(ctx, CreateNexusOptions{Name: "vol", Children: proxied})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.e.PublishNexus(ctx, "vol", ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	devA := a.dev(t, "vol")
	if _, err := devA.WriteAt(pattern(0x11), 0); err != nil {
		t.Fatal(err)
	}

	for _, p := range proxies {
		p.Blackhole()
	}
	late := make(chan error, 1)
	go func() {
		_, err := devA.WriteAt(pattern(0xee), 0) // held by the partition
		late <- err
	}()

	// D takes the volume over: same nexus UUID, the replicas directly.
	d := localEngine(t, filepath.Join(dir, "d"), nil)
	nd, err := d.e.CreateNexus(ctx, CreateNexusOptions{Name: "vol", UUID: na.UUID, Children: []string{uriB, uriC}})
	if err != nil {
		t.Fatal(err)
	}
	if nd.Epoch <= na.Epoch {
		t.Fatalf("the new nexus has epoch %d, the old one %d", nd.Epoch, na.Epoch)
	}
	// No health record on D: one child is the source, the other is copied.
	for _, c := range nd.Children {
		if c.State == nexus.StateRebuilding {
			waitRebuilt(t, d.e, "vol", c.URI)
		}
	}
	if _, err := d.e.PublishNexus(ctx, "vol", ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	devD := d.dev(t, "vol")
	mustRead(t, devD, 0, pattern(0x11))
	if _, err := devD.WriteAt(pattern(0x22), 0); err != nil {
		t.Fatal(err)
	}
	if err := devD.Flush(); err != nil {
		t.Fatal(err)
	}

	for _, p := range proxies {
		p.Restore()
	}
	select {
	case err := <-late:
		if !errors.Is(err, bdev.ErrFenced) {
			t.Fatalf("the old nexus's held write: %v, want it refused as fenced", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the old nexus's held write never ended")
	}
	if _, err := devA.WriteAt(pattern(0xef), 1<<20); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("a new write of the old nexus: %v, want fenced", err)
	}
	ni, _ := a.e.Nexus("vol")
	if ni.State != NexusFaulted || ni.Reason != nexus.ErrFencedNexus.Error() {
		t.Fatalf("the old nexus after the heal: %+v", ni)
	}
	// Only D's data is on the replicas.
	mustRead(t, devD, 0, pattern(0x22))
	mustRead(t, devD, 1<<20, make([]byte, 64<<10))
	mustVerify(t, d.e, "vol")
}

// TestNoRecordNeverTrustsStaleReplicas: a nexus is destroyed (its health
// record with it), a new nexus over one of its replicas writes newer data,
// and a nexus is created over all the old replicas again. Nothing says which
// are current but the fencing epochs: the newest replica is the source, the
// others are rebuilt from it, and only the newest data is ever read.
func TestNoRecordNeverTrustsStaleReplicas(t *testing.T) {
	r := localEngine(t, t.TempDir(), nil)
	e, ctx := r.e, context.Background()
	var uris []string
	for _, name := range []string{"r1", "r2", "r3"} {
		ri, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: name, Pool: "p0", Size: safetySize, Thin: true})
		if err != nil {
			t.Fatal(err)
		}
		uris = append(uris, "bdev:///"+ri.UUID)
	}
	write := func(name string, children []string, b byte) {
		t.Helper()
		if _, err := e.CreateNexus(ctx, CreateNexusOptions{Name: name, Children: children}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.PublishNexus(ctx, name, ProtocolNBD, nil); err != nil {
			t.Fatal(err)
		}
		d := r.dev(t, name)
		for off := int64(0); off < safetySize; off += 1 << 20 {
			if _, err := d.WriteAt(pattern(b), off); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.DestroyNexus(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	write("old", uris, 0x01)
	// The newest data goes to the last replica only.
	write("new", uris[2:], 0x02)

	ni, err := e.CreateNexus(ctx, CreateNexusOptions{Name: "again", Children: uris})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range ni.Children {
		ok := c.State == nexus.StateOnline
		if i < 2 {
			// Rebuilding from the newest; a 4 MiB copy may already have
			// ended by the time CreateNexus reports (after it has saved the
			// engine's state). waitRebuilt below proves that each was a
			// full copy into it, and the reads that it holds the newest
			// data.
			ok = ok || c.State == nexus.StateRebuilding
		}
		if !ok {
			t.Fatalf("child %d (%s) is %v: the newest replica (child 2) is the source, the others are rebuilt from it", i, c.URI, c.State)
		}
	}
	if _, err := e.PublishNexus(ctx, "again", ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	d := r.dev(t, "again")
	mustRead(t, d, 0, pattern(0x02)) // while the others are rebuilt
	for _, u := range uris[:2] {
		if st := waitRebuilt(t, e, "again", u); st.Total != safetySize {
			t.Fatalf("rebuild of %s: %+v, want a full copy", u, st)
		}
	}
	mustVerify(t, e, "again")
	// Read through each child alone: the stale data is gone everywhere.
	for i := range uris {
		for j, u := range uris {
			if j != i {
				if _, err := e.NexusChildOp(ctx, "again", ChildOffline, u); err != nil {
					t.Fatal(err)
				}
			}
		}
		mustRead(t, d, 3<<20, pattern(0x02))
		for j, u := range uris {
			if j != i {
				if _, err := e.NexusChildOp(ctx, "again", ChildOnline, u); err != nil {
					t.Fatal(err)
				}
				waitRebuilt(t, e, "again", u)
			}
		}
	}
}

// TestCreateRefusesDegraded: a nexus whose children do not all open is
// refused, naming each child and why, and leaves nothing behind (no
// nexus, no claim); --allow-degraded creates it without them.
func TestCreateRefusesDegraded(t *testing.T) {
	r := localEngine(t, t.TempDir(), nil)
	e, ctx := r.e, context.Background()
	ri, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: "r1", Pool: "p0", Size: safetySize, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	good := "bdev:///" + ri.UUID
	dead := "nvmf://" + testutil.FreeAddr(t) + "/nqn.2024-11.io.nexstor:replica:9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e"
	missing := "bdev:///00000000-0000-4000-8000-000000000000"
	_, err = e.CreateNexus(ctx, CreateNexusOptions{Name: "n0", Children: []string{good, dead, missing}})
	wantFault(t, err, fault.FailedPrecondition, "n0", "degraded", dead, missing, "--allow-degraded")
	if _, err := e.Nexus("n0"); !IsFault(err, fault.NotFound) {
		t.Fatalf("the refused nexus exists: %v", err)
	}
	if got, _ := e.Replica("r1"); got.Owner != "" {
		t.Fatalf("the refused nexus left its claim on r1: owner %s", got.Owner)
	}
	ni, err := e.CreateNexus(ctx, CreateNexusOptions{Name: "n0", Children: []string{good, dead}, AllowDegraded: true})
	if err != nil {
		t.Fatal(err)
	}
	if ni.State != NexusDegraded || childOf(t, ni, good).State != nexus.StateOnline || childOf(t, ni, dead).State == nexus.StateOnline {
		t.Fatalf("nexus created degraded: %+v", ni)
	}
}
