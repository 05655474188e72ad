package engine

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/testutil"
)

// TestRestoreWaitsForRemoteChild: nodes restarted together come up in any
// order. A nexus restored while the node of its remote child is still
// starting waits for it (briefly) and comes back with the child online; a
// child still unreachable after that waits offline, and online-child copies
// only what was written meanwhile.
func TestRestoreWaitsForRemoteChild(t *testing.T) {
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
	if _, err := b.Engine.CreatePool(context.Background(), PoolSpec{Name: "pb", Disk: "file://" + filepath.Join(dir, "b.img") + "?size=64MiB", ClusterSize: 1 << 20, Force: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Engine.CreateReplica(context.Background(), CreateReplicaOptions{Name: "rb", Pool: "pb", Size: 4 << 20, Thin: true}); err != nil {
		t.Fatal(err)
	}
	rb, err := b.Engine.ShareReplica(context.Background(), "rb", ProtocolNVMf, nil)
	if err != nil {
		t.Fatal(err)
	}
	remote := rb.Share.URI

	startA := func() *nexusRig {
		r := &nexusRig{dir: filepath.Join(dir, "a")}
		r.start(t)
		return r
	}
	a := startA()
	if _, err := a.e.CreatePool(context.Background(), PoolSpec{Name: "pa", Disk: "file://" + filepath.Join(dir, "a.img") + "?size=64MiB", ClusterSize: 1 << 20, Force: false}); err != nil {
		t.Fatal(err)
	}
	ra, err := a.e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "ra", Pool: "pa", Size: 4 << 20, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.e.CreateNexus(context.Background(), CreateNexusOptions{Name: "n0", Children: []string{"bdev:///" + ra.UUID, remote}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.e.PublishNexus(context.Background(), "n0", ProtocolNBD, nil); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("before.."), 64<<10/8)
	if _, err := a.dev(t, "n0").WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	stopBoth := func() {
		if err := a.e.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.Shutdown(time.Second); err != nil {
			t.Fatal(err)
		}
	}

	// B comes up while A restores: A waits for it.
	stopBoth()
	bUp := make(chan *Server, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		bUp <- startB()
	}()
	a = startA()
	b = <-bUp
	ni, err := a.e.Nexus("n0")
	if err != nil {
		t.Fatal(err)
	}
	if c := childOf(t, ni, remote); c.State != nexus.StateOnline {
		t.Fatalf("remote child whose node came up during the restore: %+v", c)
	}

	// B stays down: the child waits offline; online-child copies what it
	// missed.
	stopBoth()
	a = startA()
	defer a.e.Close()
	ni, err = a.e.Nexus("n0")
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
	if _, err := a.e.NexusChildOp(context.Background(), "n0", ChildOnline, remote); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := a.e.servingNexus("n0")
	if err != nil {
		t.Fatal(err)
	}
	st, err := n.WaitRebuild(ctx, remote)
	if err != nil || st.State != nexus.RebuildCompleted || !st.Partial || st.Total != 1<<20 {
		t.Fatalf("online-child rebuild %+v %v, want a completed partial rebuild of the one dirty 1 MiB segment", st, err)
	}
	rep, err := a.e.VerifyNexus(ctx, "n0")
	if err != nil || len(rep.Mismatches) != 0 || len(rep.Children) != 2 {
		t.Fatalf("verify %+v %v", rep, err)
	}
}
