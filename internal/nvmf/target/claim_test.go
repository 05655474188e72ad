package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
	"github.com/nexstor/nexstor/internal/nvmf/claimtest"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

var (
	replicaUUID  = uuid.UUID{0x9b, 0x2e, 0x8c, 0x1a, 0x3f, 0x4d, 0x4c, 0x55, 0x8e, 0x21, 0x0d, 0x6f, 0x1b, 0x7a, 0x9c, 0x3e}
	replicaNGUID = [16]byte{0xC1, 0xC2, 0xC3, 0xC4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0xC0}
	ownerA       = uuid.UUID{0xA0, 15: 0xA0}
	ownerB       = uuid.UUID{0xB0, 15: 0xB0}
)

// serveClaimable serves a claimable replica (4 KiB blocks) as namespace 1
// and a plain malloc device as namespace 2, on a loopback port.
func serveClaimable(t *testing.T) (*Target, *Subsystem, string, *claimtest.Device) {
	t.Helper()
	mem, err := bdev.NewMalloc(1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return serveClaimableOn(t, mem)
}

func serveClaimableOn(t *testing.T, inner bdev.Device) (*Target, *Subsystem, string, *claimtest.Device) {
	t.Helper()
	rep := claimtest.New(inner, bdev.Identity{UUID: replicaUUID, NGUID: replicaNGUID})
	tgt := New(nil)
	sub, err := tgt.AddSubsystem(subNQN, SubsystemOptions{AllowAnyHost: true})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := sub.AddNamespace(rep, NamespaceOptions{UUID: replicaUUID, NGUID: replicaNGUID}); err != nil || id != 1 {
		t.Fatalf("AddNamespace: %d %v", id, err)
	}
	plain, _ := bdev.NewMalloc(1<<20, 4096)
	if id, err := sub.AddNamespace(plain, NamespaceOptions{UUID: [16]byte{0xEE}}); err != nil || id != 2 {
		t.Fatalf("AddNamespace: %d %v", id, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tgt.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done; tgt.Close() })
	return tgt, sub, l.Addr().String(), rep
}

// host is one controller of a wire-level host: its admin queue and one I/O
// queue.
type host struct {
	admin, io *raw
}

func newHost(t *testing.T, addr string) *host {
	t.Helper()
	h := &host{admin: dialRaw(t, addr, false)}
	cntlid := h.admin.adminUp(0)
	h.io = dialRaw(t, addr, false)
	h.io.connectIO(cntlid, 32, false)
	return h
}

// claimOp sends a claim Set Features and returns its status.
func (r *raw) claimOp(nsid uint32, op nvme.ClaimOp, owner uuid.UUID, epoch uint64) nvme.Status {
	r.t.Helper()
	data := make([]byte, nvme.ClaimCommandLen)
	(&nvme.ClaimCommand{Op: op, Owner: owner, Epoch: epoch}).Marshal(data)
	return r.setFeatureData(nsid, nvme.FeatClaim, data)
}

func (r *raw) setFeatureData(nsid uint32, cdw10 uint32, data []byte) nvme.Status {
	r.t.Helper()
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminSetFeatures)
	sqe.SetNSID(nsid)
	sqe.SetCDW(10, cdw10)
	return nvme.Status(r.cmd(&sqe, data, nil).Status)
}

// claimLog reads the claim log page of nsid.
func (r *raw) claimLog(nsid uint32) (nvme.ClaimLog, nvme.Status) {
	r.t.Helper()
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminGetLogPage)
	sqe.SetNSID(nsid)
	sqe.SetCDW(10, nvme.LogClaim|(nvme.ClaimLogLen/4-1)<<16)
	page := make([]byte, nvme.ClaimLogLen)
	st := nvme.Status(r.cmd(&sqe, nil, page).Status)
	if !st.Success() {
		return nvme.ClaimLog{}, st
	}
	l, ok := nvme.UnmarshalClaimLog(page)
	if !ok {
		r.t.Fatalf("claim log page % x is not one", page)
	}
	return l, st
}

// rw sends a one-block read or write of block lba and returns its status.
func (r *raw) rw(write bool, lba uint32, buf []byte) nvme.Status {
	r.t.Helper()
	var sqe pdu.SQE
	sqe.SetNSID(1)
	sqe.SetCDW(10, lba)
	if write {
		sqe.SetOpcode(nvme.CmdWrite)
		return nvme.Status(r.cmd(&sqe, buf, nil).Status)
	}
	sqe.SetOpcode(nvme.CmdRead)
	return nvme.Status(r.cmd(&sqe, nil, buf).Status)
}

func (r *raw) simple(opcode uint8, nsid uint32) nvme.Status {
	r.t.Helper()
	var sqe pdu.SQE
	sqe.SetOpcode(opcode)
	sqe.SetNSID(nsid)
	return nvme.Status(r.cmd(&sqe, nil, nil).Status)
}

func wantStatus(t *testing.T, what string, got, want nvme.Status) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: status %#x (%v), want %#x (%v)", what, uint16(got), got, uint16(want), want)
	}
}

func TestClaimSetFeaturesAndLogPage(t *testing.T) {
	_, _, addr, rep := serveClaimable(t)
	h := newHost(t, addr)
	block := bytes.Repeat([]byte{0x11}, 4096)

	l, st := h.admin.claimLog(1)
	wantStatus(t, "claim log", st, nvme.StatusSuccess)
	if l.UUID != replicaUUID || l.NGUID != replicaNGUID || l.Owner != uuid.Nil || l.Epoch != 0 || !l.Blank {
		t.Fatalf("fresh claim log %+v", l)
	}
	// Unowned: the controller writes to the device itself.
	wantStatus(t, "unowned write", h.io.rw(true, 0, block), nvme.StatusSuccess)

	wantStatus(t, "claim", h.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 3), nvme.StatusSuccess)
	if rep.OpenHandles() != 1 || rep.Claims() != 1 {
		t.Fatalf("open handles %d claims %d after one claim", rep.OpenHandles(), rep.Claims())
	}
	wantStatus(t, "claimed write", h.io.rw(true, 1, block), nvme.StatusSuccess)
	l, _ = h.admin.claimLog(1)
	if l.Owner != ownerA || l.Epoch != 3 || l.Blank {
		t.Fatalf("claim log after the claim %+v", l)
	}

	// Another controller that never claimed reads, but may not write.
	other := newHost(t, addr)
	got := make([]byte, 4096)
	wantStatus(t, "unclaimed read of an owned namespace", other.io.rw(false, 1, got), nvme.StatusSuccess)
	if !bytes.Equal(got, block) {
		t.Fatal("unclaimed read does not see the claimed write")
	}
	wantStatus(t, "unclaimed write to an owned namespace", other.io.rw(true, 1, block), nvme.StatusReservationConflict)
	wantStatus(t, "unclaimed flush of an owned namespace", other.io.simple(nvme.CmdFlush, 1), nvme.StatusReservationConflict)
	// Its claims are refused: another owner, a stale epoch.
	wantStatus(t, "claim by another owner", other.admin.claimOp(1, nvme.ClaimOpClaim, ownerB, 9), nvme.StatusReservationConflict)
	wantStatus(t, "claim at a stale epoch", other.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 2), nvme.StatusReservationConflict)
	wantStatus(t, "raise without a claim", other.admin.claimOp(1, nvme.ClaimOpRaise, uuid.Nil, 9), nvme.StatusCommandSequence)
	wantStatus(t, "release without a claim", other.admin.claimOp(1, nvme.ClaimOpRelease, uuid.Nil, 0), nvme.StatusCommandSequence)

	// Raise: higher moves the epoch, lower is a no-op; the handle stays.
	wantStatus(t, "raise", h.admin.claimOp(1, nvme.ClaimOpRaise, uuid.Nil, 7), nvme.StatusSuccess)
	wantStatus(t, "lower raise", h.admin.claimOp(1, nvme.ClaimOpRaise, uuid.Nil, 5), nvme.StatusSuccess)
	if l, _ = h.admin.claimLog(1); l.Epoch != 7 || l.Owner != ownerA {
		t.Fatalf("claim log after raises %+v", l)
	}
	wantStatus(t, "write after raise", h.io.rw(true, 2, block), nvme.StatusSuccess)

	// Release: unowned, epoch kept, the handle closed; the controller's
	// I/O goes to the device again, which an unowned device accepts.
	wantStatus(t, "release", h.admin.claimOp(1, nvme.ClaimOpRelease, uuid.Nil, 0), nvme.StatusSuccess)
	if l, _ = h.admin.claimLog(1); l.Epoch != 7 || l.Owner != uuid.Nil {
		t.Fatalf("claim log after release %+v", l)
	}
	if rep.OpenHandles() != 0 {
		t.Fatalf("%d handles open after release", rep.OpenHandles())
	}
	wantStatus(t, "raise after release", h.admin.claimOp(1, nvme.ClaimOpRaise, uuid.Nil, 8), nvme.StatusCommandSequence)
	wantStatus(t, "write after release", h.io.rw(true, 3, block), nvme.StatusSuccess)
	wantStatus(t, "another owner after release", other.admin.claimOp(1, nvme.ClaimOpClaim, ownerB, 7), nvme.StatusSuccess)
}

func TestClaimRefusedFields(t *testing.T) {
	_, _, addr, rep := serveClaimable(t)
	h := newHost(t, addr)
	good := make([]byte, nvme.ClaimCommandLen)
	(&nvme.ClaimCommand{Op: nvme.ClaimOpClaim, Owner: ownerA, Epoch: 1}).Marshal(good)

	wantStatus(t, "claim of a namespace that takes no claims", h.admin.claimOp(2, nvme.ClaimOpClaim, ownerA, 1), nvme.StatusInvalidField)
	if _, st := h.admin.claimLog(2); st != nvme.StatusInvalidField {
		t.Fatalf("claim log of a namespace that takes no claims: %v", st)
	}
	wantStatus(t, "claim of an inactive namespace", h.admin.claimOp(9, nvme.ClaimOpClaim, ownerA, 1), nvme.StatusInvalidNS)
	if _, st := h.admin.claimLog(9); st != nvme.StatusInvalidNS {
		t.Fatalf("claim log of an inactive namespace: %v", st)
	}
	wantStatus(t, "claim without an owner", h.admin.claimOp(1, nvme.ClaimOpClaim, uuid.Nil, 1), nvme.StatusInvalidField)
	wantStatus(t, "saveable claim", h.admin.setFeatureData(1, nvme.FeatClaim|1<<31, good), nvme.StatusFeatureNotSaveable)
	wantStatus(t, "claim without data", h.admin.setFeatureData(1, nvme.FeatClaim, nil), nvme.StatusInvalidField)
	wantStatus(t, "short claim data", h.admin.setFeatureData(1, nvme.FeatClaim, good[:16]), nvme.StatusInvalidField)
	bad := bytes.Clone(good)
	bad[0] = 'x'
	wantStatus(t, "claim data without the signature", h.admin.setFeatureData(1, nvme.FeatClaim, bad), nvme.StatusInvalidField)
	bad = bytes.Clone(good)
	bad[4] = 9
	wantStatus(t, "unknown claim operation", h.admin.setFeatureData(1, nvme.FeatClaim, bad), nvme.StatusInvalidField)
	if rep.Claims() != 0 {
		t.Fatalf("%d claims reached the device", rep.Claims())
	}
	wantStatus(t, "well-formed claim", h.admin.setFeatureData(1, nvme.FeatClaim, good), nvme.StatusSuccess)
}

// TestSupersededControllerIsFenced: a controller whose claim a later claim
// superseded (higher epoch, then equal) gets Reservation Conflict for every
// read, write, write-zeroes, unmap and flush; the newest writes.
func TestSupersededControllerIsFenced(t *testing.T) {
	_, _, addr, rep := serveClaimable(t)
	a, b, c := newHost(t, addr), newHost(t, addr), newHost(t, addr)
	block := bytes.Repeat([]byte{0xAA}, 4096)
	wantStatus(t, "claim A", a.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 1), nvme.StatusSuccess)
	wantStatus(t, "A writes", a.io.rw(true, 0, block), nvme.StatusSuccess)
	wantStatus(t, "claim B, higher epoch", b.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 2), nvme.StatusSuccess)
	fenced := func(x *host, who string) {
		t.Helper()
		wantStatus(t, who+" write", x.io.rw(true, 0, block), nvme.StatusReservationConflict)
		wantStatus(t, who+" read", x.io.rw(false, 0, make([]byte, 4096)), nvme.StatusReservationConflict)
		wantStatus(t, who+" flush", x.io.simple(nvme.CmdFlush, 1), nvme.StatusReservationConflict)
		wantStatus(t, who+" flush of every namespace", x.io.simple(nvme.CmdFlush, 0xFFFFFFFF), nvme.StatusReservationConflict)
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.CmdWriteZeroes)
		sqe.SetNSID(1)
		wantStatus(t, who+" write zeroes", nvme.Status(x.io.cmd(&sqe, nil, nil).Status), nvme.StatusReservationConflict)
		sqe.SetCDW(12, 1<<25)
		wantStatus(t, who+" unmap", nvme.Status(x.io.cmd(&sqe, nil, nil).Status), nvme.StatusReservationConflict)
		wantStatus(t, who+" raise", x.admin.claimOp(1, nvme.ClaimOpRaise, uuid.Nil, 10), nvme.StatusReservationConflict)
		wantStatus(t, who+" release", x.admin.claimOp(1, nvme.ClaimOpRelease, uuid.Nil, 0), nvme.StatusReservationConflict)
	}
	fenced(a, "superseded A")
	wantStatus(t, "B writes", b.io.rw(true, 0, bytes.Repeat([]byte{0xBB}, 4096)), nvme.StatusSuccess)
	wantStatus(t, "claim C, equal epoch", c.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 2), nvme.StatusSuccess)
	fenced(b, "superseded B")
	wantStatus(t, "C writes", c.io.rw(true, 1, block), nvme.StatusSuccess)
	got := make([]byte, 4096)
	if _, err := rep.Inner().ReadAt(got, 0); err != nil || got[0] != 0xBB {
		t.Fatalf("block 0 holds %#x (%v), want B's write", got[0], err)
	}
	// Another namespace of the same controllers is not affected.
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.CmdWrite)
	sqe.SetNSID(2)
	wantStatus(t, "A writes namespace 2", nvme.Status(a.io.cmd(&sqe, block, nil).Status), nvme.StatusSuccess)
}

func TestCapacityExceeded(t *testing.T) {
	mem, _ := bdev.NewMalloc(1<<20, 4096)
	full := faulty.New(mem, 1)
	full.AddRule(faulty.Rule{Ops: faulty.OpWrite | faulty.OpWriteZeroes, Err: fmt.Errorf("pool p1: %w", bdev.ErrNoSpace)})
	_, _, addr, _ := serveClaimableOn(t, full)
	h := newHost(t, addr)
	wantStatus(t, "claim", h.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 1), nvme.StatusSuccess)
	wantStatus(t, "write to a full pool", h.io.rw(true, 0, make([]byte, 4096)), nvme.StatusCapacityExceeded)
	wantStatus(t, "read", h.io.rw(false, 0, make([]byte, 4096)), nvme.StatusSuccess)
}

// TestClaimHandleClosed: a controller's claimed handle is closed when the
// controller is torn down, when the namespace is removed, and when a new
// claim of the same controller replaces it; the device keeps its claim.
func TestClaimHandleClosed(t *testing.T) {
	tgt, sub, addr, rep := serveClaimable(t)
	waitHandles := func(want int64, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for rep.OpenHandles() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d handles open, want %d", what, rep.OpenHandles(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	h := newHost(t, addr)
	wantStatus(t, "claim", h.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 1), nvme.StatusSuccess)
	wantStatus(t, "claim again", h.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 2), nvme.StatusSuccess)
	waitHandles(1, "a second claim of the same controller")
	wantStatus(t, "write", h.io.rw(true, 0, make([]byte, 4096)), nvme.StatusSuccess)

	h.admin.conn.Close() // the admin queue goes: the controller is torn down
	waitHandles(0, "controller torn down")
	if st, _ := rep.ClaimState(context.Background()); st.Owner != ownerA || st.Epoch != 2 {
		t.Fatalf("the device lost its claim with the controller: %+v", st)
	}

	h2 := newHost(t, addr)
	wantStatus(t, "claim from a new controller", h2.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 2), nvme.StatusSuccess)
	waitHandles(1, "claim")
	if err := sub.RemoveNamespace(1); err != nil {
		t.Fatal(err)
	}
	waitHandles(0, "namespace removed")
	wantStatus(t, "write to the removed namespace", h2.io.rw(true, 0, make([]byte, 4096)), nvme.StatusInvalidNS)

	// Serving it again, and a claim through a target being closed.
	if _, err := sub.AddNamespace(rep, NamespaceOptions{UUID: replicaUUID, NGUID: replicaNGUID}); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "claim of the namespace served again", h2.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 2), nvme.StatusSuccess)
	waitHandles(1, "claim")
	tgt.Close()
	waitHandles(0, "target closed")
}

// gated holds every write until gate is closed, and says when one arrived.
type gated struct {
	bdev.Device
	entered chan struct{}
	gate    chan struct{}
}

func (g *gated) WriteAt(p []byte, off int64) (int, error) {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	<-g.gate
	return g.Device.WriteAt(p, off)
}

// TestClaimedHandleOutlivesItsCommands: a namespace removed while a write
// executes on the controller's claimed handle closes the handle only after
// the write finished.
func TestClaimedHandleOutlivesItsCommands(t *testing.T) {
	mem, _ := bdev.NewMalloc(1<<20, 4096)
	g := &gated{Device: mem, entered: make(chan struct{}, 1), gate: make(chan struct{})}
	_, sub, addr, rep := serveClaimableOn(t, g)
	h := newHost(t, addr)
	wantStatus(t, "claim", h.admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 1), nvme.StatusSuccess)
	res := make(chan pdu.CQE, 1)
	go func() {
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.CmdWrite)
		sqe.SetNSID(1)
		res <- h.io.cmd(&sqe, make([]byte, 4096), nil)
	}()
	<-g.entered
	if err := sub.RemoveNamespace(1); err != nil {
		t.Fatal(err)
	}
	if rep.OpenHandles() != 1 {
		t.Fatal("the handle was closed under a write executing on it")
	}
	close(g.gate)
	if c := <-res; c.Status != 0 {
		t.Fatalf("the write in flight at removal: %#x", c.Status)
	}
	deadline := time.Now().Add(10 * time.Second)
	for rep.OpenHandles() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the handle stayed open after its last command")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestIdentifyNGUID(t *testing.T) {
	_, sub, addr, _ := serveClaimable(t)
	r := dialRaw(t, addr, false)
	r.adminUp(0)
	identify := func(cns uint32, nsid uint32) []byte {
		t.Helper()
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.AdminIdentify)
		sqe.SetNSID(nsid)
		sqe.SetCDW(10, cns)
		b := make([]byte, 4096)
		if c := r.cmd(&sqe, nil, b); c.Status != 0 {
			t.Fatalf("identify CNS %d nsid %d: %#x", cns, nsid, c.Status)
		}
		return b
	}
	// Explicit NGUID: in Identify Namespace and the descriptor list.
	if b := identify(nvme.CNSNamespace, 1); [16]byte(b[nvme.IDNsNGUID:]) != replicaNGUID {
		t.Fatalf("NGUID % x", b[nvme.IDNsNGUID:nvme.IDNsNGUID+16])
	}
	d := identify(nvme.CNSNSDescList, 1)
	if d[0] != nvme.NIDTNGUID || [16]byte(d[4:20]) != replicaNGUID || d[20] != nvme.NIDTUUID || [16]byte(d[24:40]) != replicaUUID || d[40] != nvme.NIDTCSI {
		t.Fatalf("descriptors % x", d[:48])
	}
	// Zero NGUID: derived from the UUID, halves swapped.
	want := [16]byte{8: 0xEE}
	if b := identify(nvme.CNSNamespace, 2); [16]byte(b[nvme.IDNsNGUID:]) != want {
		t.Fatalf("derived NGUID % x", b[nvme.IDNsNGUID:nvme.IDNsNGUID+16])
	}
	// An NGUID without a UUID is reported alone.
	m, _ := bdev.NewMalloc(1<<20, 512)
	nsid, err := sub.AddNamespace(m, NamespaceOptions{NGUID: [16]byte{0x77}})
	if err != nil {
		t.Fatal(err)
	}
	d = identify(nvme.CNSNSDescList, nsid)
	if d[0] != nvme.NIDTNGUID || d[4] != 0x77 || d[20] != nvme.NIDTCSI {
		t.Fatalf("descriptors without a UUID % x", d[:28])
	}
	if _, err := sub.AddNamespace(m, NamespaceOptions{UUID: [16]byte{0x55}, NGUID: replicaNGUID}); !errors.Is(err, ErrDuplicateNGUID) {
		t.Fatalf("duplicate NGUID: %v", err)
	}
}
