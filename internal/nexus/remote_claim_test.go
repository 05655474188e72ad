package nexus

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/nvmf/claimtest"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/nvmf/target"
)

// claimNode serves one claimable replica ("c1") and one plain device ("p1")
// over NVMe/TCP on loopback.
type claimNode struct {
	addr string
	rep  *claimtest.Device
	id   bdev.Identity
}

func newClaimNode(t *testing.T) *claimNode {
	t.Helper()
	n := &claimNode{id: bdev.Identity{UUID: uuid.New(), NGUID: [16]byte{0x4E, 15: 0x47}}}
	tgt := target.New(nil)
	for _, name := range []string{"c1", "p1"} {
		m, err := bdev.NewMalloc(bdevtest.MinSize, 512)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := tgt.AddSubsystem(target.NQN("replica", name), target.SubsystemOptions{AllowAnyHost: true})
		if err != nil {
			t.Fatal(err)
		}
		var dev bdev.Device = m
		opts := target.NamespaceOptions{}
		if name == "c1" {
			n.rep = claimtest.New(m, n.id)
			dev, opts = n.rep, target.NamespaceOptions{UUID: n.id.UUID, NGUID: n.id.NGUID}
		}
		if _, err := sub.AddNamespace(dev, opts); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tgt.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done; tgt.Close() })
	return n
}

func (n *claimNode) open(t *testing.T, name string) bdev.Device {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dev, err := NVMfRemote(initiator.Options{CommandTimeout: 5 * time.Second, ReconnectDelay: 20 * time.Millisecond, MaxReconnect: 2})(ctx, n.addr, target.NQN("replica", name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev
}

// waitHandles waits until the target holds want claimed handles of the
// replica: it closes one when the controller that claimed goes away.
func (n *claimNode) waitHandles(t *testing.T, want int64, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.rep.OpenHandles() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the target holds %d claimed handles, want %d", what, n.rep.OpenHandles(), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestRemoteChildClaims: a remote replica is a bdev.Claimer exactly like a
// local one; a remote device without claims is not one.
func TestRemoteChildClaims(t *testing.T) {
	node := newClaimNode(t)
	ctx := context.Background()
	if _, ok := node.open(t, "p1").(bdev.Claimer); ok {
		t.Fatal("a remote device whose target takes no claims is a bdev.Claimer")
	}
	devA := node.open(t, "c1")
	a, ok := devA.(bdev.Claimer)
	if !ok {
		t.Fatal("a remote replica is not a bdev.Claimer")
	}
	st, err := a.ClaimState(ctx)
	if err != nil || st.Identity != node.id || !st.Blank {
		t.Fatalf("claim state %+v %v", st, err)
	}
	owner := uuid.New()
	ha, err := a.Claim(ctx, bdev.Claim{Owner: owner, Epoch: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ha.WriteAt(bytes.Repeat([]byte{0xA1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := ha.Raise(ctx, 2); err != nil {
		t.Fatal(err)
	}
	// The device itself goes through the same association, claimed.
	if _, err := devA.WriteAt(bytes.Repeat([]byte{0xA2}, 512), 4096); err != nil {
		t.Fatal(err)
	}

	// A newer nexus claims the replica from another node: the first is
	// fenced.
	b := node.open(t, "c1").(bdev.Claimer)
	var stale *bdev.StaleEpochError
	if _, err := b.Claim(ctx, bdev.Claim{Owner: owner, Epoch: 1}); !errors.As(err, &stale) || stale.Current != 2 {
		t.Fatalf("claim below the raised epoch: %v", err)
	}
	var owned *bdev.OwnedError
	if _, err := b.Claim(ctx, bdev.Claim{Owner: uuid.New(), Epoch: 9}); !errors.As(err, &owned) || owned.Owner != owner {
		t.Fatalf("claim by another nexus: %v", err)
	}
	hb, err := b.Claim(ctx, bdev.Claim{Owner: owner, Epoch: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ha.WriteAt(make([]byte, 4096), 0); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("write of the superseded nexus: %v", err)
	}
	if err := ha.Raise(ctx, 9); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("raise of the superseded nexus: %v", err)
	}
	// Writes started and waited for later (the fan-out's way) are fenced
	// the same: the target refuses the command.
	startWrite := func(h bdev.Claimed, p []byte, off int64) error {
		pw, err := h.(bdev.WriteStarter).StartWrite(p, off)
		if pw != nil {
			err = pw.Wait()
		}
		return err
	}
	if err := startWrite(ha, make([]byte, 4096), 0); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("started write of the superseded nexus: %v", err)
	}
	if err := startWrite(hb, bytes.Repeat([]byte{0xB0}, 4096), 8192); err != nil {
		t.Fatalf("started write under the current claim: %v", err)
	}
	got := make([]byte, 4096)
	if _, err := hb.ReadAt(got, 8192); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0xB0}, 4096)) {
		t.Fatalf("read back the started write: %v", err)
	}
	if _, err := hb.WriteAt(bytes.Repeat([]byte{0xB1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := hb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := b.ClaimState(ctx); st.Owner != uuid.Nil || st.Epoch != 3 {
		t.Fatalf("after release %+v", st)
	}
	hb.Close()
	ha.Close()
}

// TestRemoteClaimedHandleCloseDisconnects: the controller goes when the
// last Claimed handle is closed, or with the device while no handle is
// open; the device and its handle are otherwise independent.
func TestRemoteClaimedHandleCloseDisconnects(t *testing.T) {
	node := newClaimNode(t)
	ctx := context.Background()
	claim := func(dev bdev.Device, epoch uint64) bdev.Claimed {
		t.Helper()
		h, err := dev.(bdev.Claimer).Claim(ctx, bdev.Claim{Owner: uuid.UUID{1}, Epoch: epoch})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}

	// Only the handle is closed: the controller goes with it.
	dev := node.open(t, "c1")
	h := claim(dev, 1)
	node.waitHandles(t, 1, "claimed")
	h.Close()
	node.waitHandles(t, 0, "handle closed")
	if _, err := dev.ReadAt(make([]byte, 512), 0); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("the child device after its controller went: %v", err)
	}

	// The device is closed first: the handle keeps working, and takes
	// the controller with it.
	dev = node.open(t, "c1")
	h = claim(dev, 2)
	dev.Close()
	if _, err := h.WriteAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("the handle after its device was closed: %v", err)
	}
	node.waitHandles(t, 1, "device closed, handle open")
	h.Close()
	node.waitHandles(t, 0, "handle closed after the device")

	// A second claim supersedes the first handle; closing the superseded
	// one leaves the newer handle working.
	dev = node.open(t, "c1")
	h1 := claim(dev, 3)
	h2 := claim(dev, 3)
	h1.Close()
	if _, err := h2.WriteAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("the newer handle after closing the superseded one: %v", err)
	}
	h2.Close()
	node.waitHandles(t, 0, "both handles closed")
	if _, err := dev.(bdev.Claimer).Claim(ctx, bdev.Claim{Owner: uuid.UUID{1}, Epoch: 4}); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("claim of a disconnected child: %v", err)
	}
	if st, _ := node.rep.ClaimState(ctx); st.Owner != (uuid.UUID{1}) || st.Epoch != 3 {
		t.Fatalf("closing handles gave up the claim: %+v", st)
	}
}
