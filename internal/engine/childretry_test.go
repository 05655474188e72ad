package engine

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/testutil"
)

// TestUnreachableChildComesBack: a node restarts while the node of a remote
// child of its nexus is down. The child waits offline; the nexus serves
// writes; when the other node is back, the engine brings the child back on
// its own, copying only what it missed, and the children agree.
func TestUnreachableChildComesBack(t *testing.T) {
	dir := t.TempDir()
	nvmfAddr := testutil.FreeAddr(t)
	startB := func() *Server {
		s, err := StartServer(ServerOptions{DataDir: filepath.Join(dir, "b"), GRPCListen: "127.0.0.1:0",
			NVMfListen: nvmfAddr, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	b := startB()
	if _, err := b.Engine.CreatePool("pb", "file://"+filepath.Join(dir, "b.img")+"?size=64MiB", 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Engine.CreateReplica(CreateReplicaOptions{Name: "rb", Pool: "pb", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	rb, err := b.Engine.ShareReplica("rb", ProtocolNVMf, nil)
	if err != nil {
		t.Fatal(err)
	}
	remote := rb.Share.URI

	startA := func() *nexusRig {
		r := &nexusRig{dir: filepath.Join(dir, "a"), nbd: newMemExporter()}
		e, err := New(Config{DataDir: filepath.Join(r.dir, "data"), Backend: PoolBackend{}, NBD: r.nbd,
			Logger: quietLogger(), ChildRetryInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		r.e = e
		return r
	}
	a := startA()
	if _, err := a.e.CreatePool("pa", "file://"+filepath.Join(dir, "a.img")+"?size=64MiB", 1<<20, false); err != nil {
		t.Fatal(err)
	}
	ra, err := a.e.CreateReplica(CreateReplicaOptions{Name: "ra", Pool: "pa", Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.e.CreateNexus(CreateNexusOptions{Name: "n0", Children: []string{"bdev:///" + ra.UUID, remote}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.e.PublishNexus("n0", ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("before.."), 64<<10/8)
	if _, err := a.dev(t, "n0").WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}

	// Both stop cleanly; A comes back first.
	if err := a.e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Shutdown(time.Second); err != nil {
		t.Fatal(err)
	}
	a = startA()
	defer a.e.Close()
	ni, err := a.e.Nexus("n0")
	if err != nil {
		t.Fatal(err)
	}
	if c := childOf(t, ni, remote); c.State != nexus.StateOffline || c.Reason != nexus.ReasonOpenFailed {
		t.Fatalf("remote child while its node is down: %+v", c)
	}
	after := bytes.Repeat([]byte("after..."), 64<<10/8)
	if _, err := a.dev(t, "n0").WriteAt(after, 2<<20); err != nil {
		t.Fatalf("write with the remote child's node down: %v", err)
	}

	b = startB()
	defer b.Shutdown(time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ni, err = a.e.Nexus("n0")
		if err != nil {
			t.Fatal(err)
		}
		if childOf(t, ni, remote).State == nexus.StateOnline {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the remote child did not come back: %+v", childOf(t, ni, remote))
		}
		time.Sleep(20 * time.Millisecond)
	}
	hist, err := a.e.NexusRebuilds("n0", remote)
	if err != nil || len(hist) == 0 {
		t.Fatalf("rebuilds %+v %v", hist, err)
	}
	if last := hist[len(hist)-1]; !last.Partial || last.Total >= 4<<20 {
		t.Fatalf("the child was brought back with %+v, want a partial rebuild of what it missed", last)
	}
	rep, err := a.e.VerifyNexus(t.Context(), "n0")
	if err != nil || len(rep.Mismatches) != 0 || len(rep.Children) != 2 {
		t.Fatalf("verify %+v %v", rep, err)
	}
}
