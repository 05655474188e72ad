package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
)

// nexusRig runs an engine on a file pool with replicas to build nexuses of.
type nexusRig struct {
	dir string
	nbd *memExporter
	e   *Engine
}

func (r *nexusRig) start(t *testing.T) {
	t.Helper()
	r.nbd = newMemExporter()
	e, err := New(Config{DataDir: filepath.Join(r.dir, "data"), Backend: PoolBackend{}, NBD: r.nbd, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	r.e = e
}

// dev returns the published device of a nexus.
func (r *nexusRig) dev(t *testing.T, name string) bdev.Device {
	t.Helper()
	r.nbd.mu.Lock()
	defer r.nbd.mu.Unlock()
	d, ok := r.nbd.exports[nexusExportName(name)]
	if !ok {
		t.Fatalf("nexus %s is not exported (exports %v)", name, sortedKeys(r.nbd.exports))
	}
	return d
}

func childOf(t *testing.T, ni NexusInfo, uri string) NexusChild {
	t.Helper()
	for _, c := range ni.Children {
		if c.URI == uri {
			return c
		}
	}
	t.Fatalf("nexus %s has no child %s: %+v", ni.Name, uri, ni.Children)
	return NexusChild{}
}

// readReplica reads a replica's content straight from its pool.
func readReplica(t *testing.T, e *Engine, id string, n int) []byte {
	t.Helper()
	d, err := e.openReplicaByUUID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b := make([]byte, n)
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNexusLifecycle creates a nexus over two local replicas, writes
// through it, faults a child, adds a third that is rebuilt, verifies the
// children, and restarts the engine: the nexus comes back, published, with
// only its healthy children and the data.
func TestNexusLifecycle(t *testing.T) {
	const size = 8 << 20
	r := &nexusRig{dir: t.TempDir()}
	r.start(t)
	e := r.e
	defer func() { e.Close() }()
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: fmt.Sprintf("file://%s?size=%d", filepath.Join(r.dir, "d0.img"), 48<<20), ClusterSize: 1 << 20, Force: false}); err != nil {
		t.Fatal(err)
	}
	uri := map[string]string{}
	for _, name := range []string{"r1", "r2", "r3"} {
		// Thin and never written: blank, so a new nexus over them needs
		// no initial copy.
		ri, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: name, Pool: "p0", Size: size, Thin: true})
		if err != nil {
			t.Fatal(err)
		}
		uri[name] = "bdev:///" + ri.UUID
	}

	// Refusals name what is wrong.
	_, err := e.CreateNexus(context.Background(), CreateNexusOptions{Name: "n0"})
	wantFault(t, err, fault.InvalidArgument, "n0", "child")
	_, err = e.CreateNexus(context.Background(), CreateNexusOptions{Name: "n0", Children: []string{"http://x/y"}})
	wantFault(t, err, fault.InvalidArgument, "http://x/y")
	_, err = e.CreateNexus(context.Background(), CreateNexusOptions{Name: "n0", Children: []string{"bdev:///00000000-0000-4000-8000-000000000000"}})
	wantFault(t, err, fault.Unavailable, "n0")

	ni, err := e.CreateNexus(context.Background(), CreateNexusOptions{Name: "n0", Children: []string{uri["r1"], uri["r2"]}})
	if err != nil {
		t.Fatal(err)
	}
	if ni.State != NexusOnline || ni.Size != size || len(ni.Children) != 2 || !childOf(t, ni, uri["r1"]).Local {
		t.Fatalf("created %+v", ni)
	}
	_, err = e.CreateNexus(context.Background(), CreateNexusOptions{Name: "n0", Children: []string{uri["r3"]}})
	wantFault(t, err, fault.AlreadyExists, "n0")
	_, err = e.PublishNexus(context.Background(), "n0", "nbd", []string{"nqn.2014-08.org.nvmexpress:uuid:6a0e3b7c-1d2f-4e5a-9b8c-7d6e5f4a3b2c"})
	wantFault(t, err, fault.InvalidArgument, "n0", "nbd")
	_, err = e.PublishNexus(context.Background(), "n0", "nvmf", nil)
	wantFault(t, err, fault.FailedPrecondition, "nvmf")
	ni, err = e.PublishNexus(context.Background(), "n0", "nbd", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ni.Share == nil || ni.Share.URI != "nbd://127.0.0.1:10809/nexus/n0" {
		t.Fatalf("share %+v", ni.Share)
	}

	dev := r.dev(t, "n0")
	want := make([]byte, size)
	rand.Read(want[:size/2])
	if _, err := dev.WriteAt(want[:size/2], 0); err != nil {
		t.Fatal(err)
	}
	if got := readReplica(t, e, uri["r2"][len("bdev:///"):], size); !bytes.Equal(got, want) {
		t.Fatal("a write did not reach the second child")
	}

	// Fault r2: writes go on to r1 only.
	ni, err = e.NexusChildOp(context.Background(), "n0", ChildFault, uri["r2"])
	if err != nil {
		t.Fatal(err)
	}
	if c := childOf(t, ni, uri["r2"]); ni.State != NexusDegraded || c.State != nexus.StateFaulted || c.Reason != nexus.ReasonAdmin {
		t.Fatalf("after fault %+v", ni)
	}
	_, err = e.NexusChildOp(context.Background(), "n0", ChildFault, uri["r1"])
	wantFault(t, err, fault.FailedPrecondition, "n0")
	_, err = e.NexusChildOp(context.Background(), "n0", ChildFault, uri["r3"])
	wantFault(t, err, fault.NotFound, "n0")
	rand.Read(want[size/2:])
	if _, err := dev.WriteAt(want[size/2:], size/2); err != nil {
		t.Fatal(err)
	}
	if err := dev.Flush(); err != nil {
		t.Fatal(err)
	}

	// The pool of its children cannot go away under the nexus.
	wantFault(t, e.DestroyPool(context.Background(), "p0", true), fault.FailedPrecondition, "p0", "n0/r1", "n0/r2")
	wantFault(t, e.ExportPool(context.Background(), "p0"), fault.FailedPrecondition, "n0/r1")

	// Add r3 and wait for its rebuild to complete.
	if _, err := e.NexusChildOp(context.Background(), "n0", ChildAdd, uri["r3"]); err != nil {
		t.Fatal(err)
	}
	var st nexus.RebuildStatus
	for {
		rs, err := e.NexusRebuilds("n0", uri["r3"])
		if err != nil {
			t.Fatal(err)
		}
		if st = rs[0]; st.State != nexus.RebuildRunning && st.State != nexus.RebuildPaused {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st.State != nexus.RebuildCompleted || st.Done != st.Total || st.Total != size {
		t.Fatalf("rebuild %+v", st)
	}
	ni, _ = e.Nexus("n0")
	if c := childOf(t, ni, uri["r3"]); c.State != nexus.StateOnline {
		t.Fatalf("r3 after rebuild %+v", c)
	}
	rep, err := e.VerifyNexus(context.Background(), "n0")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Mismatches) != 0 || len(rep.Children) != 2 || rep.Segments == 0 {
		t.Fatalf("verify %+v", rep)
	}
	if got := readReplica(t, e, uri["r3"][len("bdev:///"):], size); !bytes.Equal(got, want) {
		t.Fatal("the rebuilt child differs from what was written")
	}

	// Restart: r2 is stale and left out; the rest comes back.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	r.start(t)
	e = r.e
	ni, err = e.Nexus("n0")
	if err != nil {
		t.Fatal(err)
	}
	// Two of its three children are back: degraded, never online.
	if ni.State != NexusDegraded || len(ni.Children) != 2 || ni.Children[0].URI != uri["r1"] || ni.Children[1].URI != uri["r3"] ||
		ni.Share == nil || ni.Share.URI != "nbd://127.0.0.1:10809/nexus/n0" {
		t.Fatalf("after restart %+v", ni)
	}
	wantLeftOut := []LeftOutChild{{URI: uri["r2"], State: "faulted", Reason: "admin"}}
	if !reflect.DeepEqual(ni.LeftOut, wantLeftOut) {
		t.Fatalf("left out at restart: %+v", ni.LeftOut)
	}
	// A second restart still counts it missing.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	r.start(t)
	e = r.e
	if ni, err = e.Nexus("n0"); err != nil || ni.State != NexusDegraded || !reflect.DeepEqual(ni.LeftOut, wantLeftOut) {
		t.Fatalf("after a second restart: %+v, %v", ni, err)
	}
	got := make([]byte, size)
	if _, err := r.dev(t, "n0").ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("data after restart differs (%v)", err)
	}
	// The stale child can be added back (fully rebuilt).
	if ni, err = e.NexusChildOp(context.Background(), "n0", ChildAdd, uri["r2"]); err != nil || len(ni.LeftOut) != 0 {
		t.Fatalf("add back: %v %q", err, ni.LeftOut)
	}
	if _, err := e.ControlRebuild(context.Background(), "n0", uri["r2"], nexus.RebuildStop); err != nil && !IsFault(err, fault.FailedPrecondition) {
		t.Fatal(err) // FailedPrecondition: it finished before the stop
	}
	if _, err := e.NexusChildOp(context.Background(), "n0", ChildRemove, uri["r2"]); err != nil {
		t.Fatal(err)
	}

	if _, err := e.UnpublishNexus(context.Background(), "n0"); err != nil {
		t.Fatal(err)
	}
	if len(r.nbd.names()) != 0 {
		t.Fatalf("exports after unpublish: %v", r.nbd.names())
	}
	id := ni.UUID
	if err := e.DestroyNexus(context.Background(), "n0"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Nexus("n0"); !IsFault(err, fault.NotFound) {
		t.Fatalf("destroyed nexus: %v", err)
	}
	if _, err := e.health.Load(context.Background(), id); !errors.Is(err, nexus.ErrNoRecord) {
		t.Fatalf("health record after destroy: %v", err)
	}
	// The replicas are free again.
	if err := e.DestroyReplica(context.Background(), "r1", Access{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(r.dir, "data", StateFileName)); err != nil || bytes.Contains(b, []byte("n0")) {
		t.Fatalf("state file still names the nexus (%v):\n%s", err, b)
	}
}

// TestNexusOverNVMf builds a nexus from a local replica and a replica
// reached over NVMe/TCP (this server's own target, on loopback), publishes
// it over NVMe/TCP and uses it with the Go initiator; unsharing the remote
// replica under I/O faults that child and the nexus serves on.
func TestNexusOverNVMf(t *testing.T) {
	dir := t.TempDir()
	s, err := StartServer(ServerOptions{DataDir: filepath.Join(dir, "data"), GRPCListen: "127.0.0.1:0",
		NVMfListen: "127.0.0.1:0", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	e := s.Engine
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "ram", Disk: "malloc:///ram?size=64MiB", ClusterSize: 1 << 20, Force: false}); err != nil {
		t.Fatal(err)
	}
	r1, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r1", Pool: "ram", Size: 4 << 20, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r2", Pool: "ram", Size: 4 << 20, Thin: true}); err != nil {
		t.Fatal(err)
	}
	r2, err := e.ShareReplica(context.Background(), "r2", ProtocolNVMf, nil)
	if err != nil {
		t.Fatal(err)
	}
	remote := r2.Share.URI
	ni, err := e.CreateNexus(context.Background(), CreateNexusOptions{Name: "n0", Children: []string{"bdev:///" + r1.UUID, remote}})
	if err != nil {
		t.Fatal(err)
	}
	if c := childOf(t, ni, remote); c.Local || c.State != nexus.StateOnline {
		t.Fatalf("remote child %+v", c)
	}
	ni, err = e.PublishNexus(context.Background(), "n0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	nqn := "nqn.2024-11.io.nexstor:nexus:" + ni.UUID
	if ni.Share == nil || ni.Share.URI != "nvmf://"+s.NVMfAddr()+"/"+nqn {
		t.Fatalf("publication %+v", ni.Share)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := initiator.Connect(ctx, s.NVMfAddr(), nqn, initiator.Options{IOQueues: 1, MaxReconnect: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ns, err := c.Namespace(1)
	if err != nil || ns.Size() != 4<<20 {
		t.Fatalf("namespace %v", err)
	}
	data := bytes.Repeat([]byte("mirrored"), 64<<10/8)
	if _, err := ns.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	d, err := e.openReplicaByUUID(ctx, r2.UUID)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the remote child did not get the write (%v)", err)
	}
	d.Close()

	// The owner's child cannot be unshared behind its back.
	_, err = e.UnshareReplica(context.Background(), "r2", Access{})
	wantFault(t, err, fault.FailedPrecondition, "r2", "n0", ni.UUID, "--force")
	// Forced, the remote child goes away: the next write takes it
	// offline (with a write-intent bitmap), and succeeds.
	if _, err := e.UnshareReplica(context.Background(), "r2", Access{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.WriteAt(data, 1<<20); err != nil {
		t.Fatalf("write with the remote child gone: %v", err)
	}
	ni, _ = e.Nexus("n0")
	if c := childOf(t, ni, remote); ni.State != NexusDegraded || c.State != nexus.StateOffline || c.Reason != nexus.ReasonIOError || c.DirtyBytes == 0 {
		t.Fatalf("after losing the remote child %+v", ni)
	}
	if _, err := ns.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %v", err)
	}
}
