package target

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// serveWith serves one 1 MiB malloc namespace (4 KiB blocks) of subsystem
// subNQN with opts, to any host, on a loopback port.
func serveWith(t *testing.T, opts SubsystemOptions, dev bdev.Device) (*Target, *Subsystem, string) {
	t.Helper()
	if dev == nil {
		var err error
		if dev, err = bdev.NewMalloc(1<<20, 4096); err != nil {
			t.Fatal(err)
		}
	}
	tgt := New(nil)
	opts.AllowAnyHost = true
	sub, err := tgt.AddSubsystem(subNQN, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.AddNamespace(dev, NamespaceOptions{UUID: [16]byte{0xAA, 1}}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tgt.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done; tgt.Close() })
	return tgt, sub, l.Addr().String()
}

// anaLog reads the ANA log page with the given Get Log Page CDW10 flags
// (RGO, RAE) into a buffer of n bytes from offset lpo.
func (r *raw) anaLog(flags uint32, n int, lpo uint64) ([]byte, nvme.Status) {
	r.t.Helper()
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminGetLogPage)
	sqe.SetNSID(0xFFFFFFFF)
	numd := uint32(n/4 - 1)
	sqe.SetCDW(10, nvme.LogANA|flags|numd<<16)
	sqe.SetCDW(11, numd>>16)
	sqe.SetCDW(12, uint32(lpo))
	sqe.SetCDW(13, uint32(lpo>>32))
	page := make([]byte, n)
	st := nvme.Status(r.cmd(&sqe, nil, page).Status)
	return page, st
}

func (r *raw) decodeANALog(flags uint32) nvme.ANALog {
	r.t.Helper()
	// The size Linux reads: header, NANAGRPID descriptors, MNAN NSIDs.
	b, st := r.anaLog(flags, nvme.ANALogHeaderLen+nvme.ANAGroupDescLen+4*MaxNamespaces, 0)
	if !st.Success() {
		r.t.Fatalf("ANA log page: %v", st)
	}
	l, err := nvme.UnmarshalANALog(b, MaxNamespaces)
	if err != nil {
		r.t.Fatalf("ANA log page: %v", err)
	}
	return l
}

func (r *raw) setAEN(mask uint32) {
	r.t.Helper()
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminSetFeatures)
	sqe.SetCDW(10, nvme.FeatAsyncEvent)
	sqe.SetCDW(11, mask)
	if c := r.cmd(&sqe, nil, nil); c.Status != 0 {
		r.t.Fatalf("async event config: %#x", c.Status)
	}
}

// sendAER submits an Asynchronous Event Request with CID cid; its
// completion is read with wait(cid).
func (r *raw) sendAER(cid uint16) {
	r.t.Helper()
	var aer pdu.SQE
	aer.SetOpcode(nvme.AdminAsyncEvent)
	aer.SetCID(cid)
	aer.SetFlags(pdu.PSDTSGL)
	aer.SetSGL(pdu.SGL{Type: pdu.SGLTransportDataBlock})
	r.must(r.enc.WriteCapsuleCmd(&aer, nil))
	r.flush()
}

// TestIdentifyReportsANA: what Linux checks before it uses ANA (CMIC bit 3,
// ANACAP, ANATT, ANAGRPMAX, NANAGRPID, MNAN <= NN) and the namespace's
// group in both Identify Namespace structures.
func TestIdentifyReportsANA(t *testing.T) {
	_, _, addr := serve(t)
	r := dialRaw(t, addr, false)
	r.adminUp(0)
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminIdentify)
	sqe.SetCDW(10, nvme.CNSController)
	id := make([]byte, 4096)
	if c := r.cmd(&sqe, nil, id); c.Status != 0 {
		t.Fatalf("identify: %#x", c.Status)
	}
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(id[o:]) }
	if id[nvme.IDCtrlCMIC] != nvme.CMICMultiCtrl|nvme.CMICANA {
		t.Errorf("CMIC %#x, want multiple controllers and ANA reporting", id[nvme.IDCtrlCMIC])
	}
	if le32(nvme.IDCtrlOAES)&nvme.OAESANAChange == 0 || le32(nvme.IDCtrlOAES)&nvme.OAESNSAttr == 0 {
		t.Errorf("OAES %#x lacks the ANA change or namespace attribute notice", le32(nvme.IDCtrlOAES))
	}
	const wantCap = nvme.ANACAPOptimized | nvme.ANACAPNonOptimized | nvme.ANACAPInaccessible |
		nvme.ANACAPPersistentLoss | nvme.ANACAPChange | nvme.ANACAPGrpIDStatic
	if id[nvme.IDCtrlANACAP] != wantCap || id[nvme.IDCtrlANATT] != ANATransitionTime {
		t.Errorf("ANACAP %#x ANATT %d", id[nvme.IDCtrlANACAP], id[nvme.IDCtrlANATT])
	}
	if le32(nvme.IDCtrlANAGRPMAX) != ANAGroupID || le32(nvme.IDCtrlNANAGRPID) != 1 {
		t.Errorf("ANAGRPMAX %d NANAGRPID %d", le32(nvme.IDCtrlANAGRPMAX), le32(nvme.IDCtrlNANAGRPID))
	}
	if mnan, nn := le32(nvme.IDCtrlMNAN), le32(nvme.IDCtrlNN); mnan == 0 || mnan > nn {
		t.Errorf("MNAN %d NN %d: Linux refuses ANA unless 0 < MNAN <= NN", mnan, nn)
	}
	// The ANA log Linux reads must fit in MDTS.
	if n := nvme.ANALogHeaderLen + int(le32(nvme.IDCtrlNANAGRPID))*nvme.ANAGroupDescLen + 4*int(le32(nvme.IDCtrlMNAN)); n > MaxTransfer {
		t.Errorf("the largest ANA log page, %d bytes, is over MDTS", n)
	}
	for _, cns := range []uint32{nvme.CNSNamespace, nvme.CNSNSIndependent} {
		sqe = pdu.SQE{}
		sqe.SetOpcode(nvme.AdminIdentify)
		sqe.SetNSID(1)
		sqe.SetCDW(10, cns)
		if c := r.cmd(&sqe, nil, id); c.Status != 0 {
			t.Fatalf("identify namespace CNS %d: %#x", cns, c.Status)
		}
		off := nvme.IDNsANAGRPID
		if cns == nvme.CNSNSIndependent {
			off = nvme.IDNsIndANAGRPID
		}
		if le32(off) != ANAGroupID {
			t.Errorf("CNS %d: ANAGRPID %d, want %d", cns, le32(off), ANAGroupID)
		}
	}
}

// TestANALogPage: the page with and without RGO, read at an offset and in
// a short buffer; its change count and NSIDs follow the state and the
// namespaces; a subsystem without namespaces reports no group.
func TestANALogPage(t *testing.T) {
	_, sub, addr := serve(t)
	r := dialRaw(t, addr, false)
	r.adminUp(0)

	l := r.decodeANALog(0)
	want := nvme.ANALog{ChangeCount: l.ChangeCount, Groups: []nvme.ANAGroup{{ID: ANAGroupID, ChangeCount: l.ChangeCount, State: nvme.ANAOptimized, NSIDs: []uint32{1}}}}
	if l.ChangeCount == 0 || !reflect.DeepEqual(l, want) {
		t.Fatalf("ANA log %+v, want %+v", l, want)
	}
	cc := l.ChangeCount

	// A namespace joins the group (NSIDs ascending), the change count moves.
	dev, _ := bdev.NewMalloc(1<<20, 512)
	if _, err := sub.AddNamespace(dev, NamespaceOptions{UUID: [16]byte{0xBB}}); err != nil {
		t.Fatal(err)
	}
	if err := sub.SetANAState(context.Background(), nvme.ANAInaccessible); err != nil {
		t.Fatal(err)
	}
	l = r.decodeANALog(0)
	g := l.Groups[0]
	if len(l.Groups) != 1 || l.ChangeCount != cc+2 || g.ChangeCount != cc+2 || g.State != nvme.ANAInaccessible || !reflect.DeepEqual(g.NSIDs, []uint32{1, 2}) {
		t.Fatalf("after a namespace and a state change: %+v (change count before %d)", l, cc)
	}
	if sub.ANAState() != nvme.ANAInaccessible {
		t.Fatalf("ANAState %v", sub.ANAState())
	}

	// RGO: the descriptor alone.
	rgo, st := r.anaLog(nvme.LogSpecificRGO, 64, 0)
	if !st.Success() || binary.LittleEndian.Uint16(rgo[8:]) != 1 || binary.LittleEndian.Uint32(rgo[16:]) != ANAGroupID ||
		binary.LittleEndian.Uint32(rgo[20:]) != 0 || rgo[32] != byte(nvme.ANAInaccessible) || !bytes.Equal(rgo[48:], make([]byte, 16)) {
		t.Fatalf("RGO page %v: % x", st, rgo)
	}
	// The full page is 16 + 32 + 8 bytes: read from offset 48 (the NSIDs)
	// and in a buffer shorter than the page.
	full, _ := r.anaLog(0, 56, 0)
	if part, st := r.anaLog(0, 8, 48); !st.Success() || !bytes.Equal(part, full[48:56]) {
		t.Fatalf("at offset 48: %v % x, want % x", st, part, full[48:56])
	}
	if part, st := r.anaLog(0, 16, 0); !st.Success() || !bytes.Equal(part, full[:16]) {
		t.Fatalf("short read: %v % x", st, part)
	}
	if _, st := r.anaLog(0, 4, 2); st != nvme.StatusInvalidField {
		t.Fatalf("unaligned offset: %v", st)
	}
	if _, st := r.anaLog(0, 4, 60); st != nvme.StatusInvalidField {
		t.Fatalf("offset past the page: %v", st)
	}

	// No namespaces, no group.
	sub.RemoveNamespace(1)
	sub.RemoveNamespace(2)
	if l := r.decodeANALog(0); len(l.Groups) != 0 {
		t.Fatalf("a subsystem without namespaces reports %+v", l.Groups)
	}
}

// TestANAStateChangeSendsEvent: a host that enabled the ANA change notice
// gets an AEN (notice 03h, log page 0Ch) on every change, none when the
// state is set to what it is, and none when it did not enable it; reading
// the page (without RAE) consumes a queued event.
func TestANAStateChangeSendsEvent(t *testing.T) {
	_, sub, addr := serve(t)
	ctx := context.Background()
	r := dialRaw(t, addr, false)
	r.adminUp(0)
	r.setAEN(nvme.OAESNSAttr | nvme.OAESANAChange)
	want := nvme.AENResult(nvme.AENTypeNotice, nvme.AENNoticeANAChange, nvme.LogANA)

	// A held AER completes on the change.
	r.sendAER(500)
	if c := r.prop(false, nvme.PropVS, 0, false); c.Status != 0 {
		t.Fatal("a command after the held AER did not complete first")
	}
	if err := sub.SetANAState(ctx, nvme.ANANonOptimized); err != nil {
		t.Fatal(err)
	}
	if c := r.wait(500, nil); c.Status != 0 || uint32(c.Result) != want {
		t.Fatalf("AER completion %+v, want result %#x", c, want)
	}
	// Setting the same state again announces nothing: a new AER stays
	// held (the admin queue runs commands in order, so a queued event
	// would complete it before the property get).
	if err := sub.SetANAState(ctx, nvme.ANANonOptimized); err != nil {
		t.Fatal(err)
	}
	r.sendAER(501)
	if c := r.prop(false, nvme.PropVS, 0, false); c.Status != 0 || c.CID == 501 {
		t.Fatalf("the AER completed without a change: %+v", c)
	}
	if err := sub.SetANAState(ctx, nvme.ANAOptimized); err != nil {
		t.Fatal(err)
	}
	if c := r.wait(501, nil); c.Status != 0 || uint32(c.Result) != want {
		t.Fatalf("AER completion %+v", c)
	}

	// No AER outstanding: the event is queued, and reading the page with
	// RAE set keeps it, without RAE consumes it.
	if err := sub.SetANAState(ctx, nvme.ANAChange); err != nil {
		t.Fatal(err)
	}
	if l := r.decodeANALog(1 << 15); l.Groups[0].State != nvme.ANAChange {
		t.Fatalf("state %v", l.Groups[0].State)
	}
	r.sendAER(502)
	if c := r.wait(502, nil); uint32(c.Result) != want {
		t.Fatalf("queued event %+v", c)
	}
	if err := sub.SetANAState(ctx, nvme.ANAOptimized); err != nil {
		t.Fatal(err)
	}
	r.decodeANALog(0)
	r.sendAER(503)
	if c := r.prop(false, nvme.PropVS, 0, false); c.CID == 503 {
		t.Fatal("an event the host read the page for was still reported")
	}

	// A host that did not enable the notice gets no event.
	q := dialRaw(t, addr, false)
	q.adminUp(0)
	q.setAEN(nvme.OAESNSAttr)
	q.sendAER(600)
	if err := sub.SetANAState(ctx, nvme.ANAInaccessible); err != nil {
		t.Fatal(err)
	}
	if c := q.prop(false, nvme.PropVS, 0, false); c.CID == 600 {
		t.Fatal("an ANA event reached a host that did not enable it")
	}
	if c := r.wait(503, nil); uint32(c.Result) != want {
		t.Fatalf("the enabled host: %+v", c)
	}
}

// TestIORefusedByANAState: I/O in the inaccessible, persistent loss and
// change states fails with the matching path status, without DNR, and
// changes nothing; admin commands still work; in the accessible states it
// runs.
func TestIORefusedByANAState(t *testing.T) {
	_, sub, addr := serveWith(t, SubsystemOptions{ANAState: nvme.ANAInaccessible}, nil)
	if sub.ANAState() != nvme.ANAInaccessible {
		t.Fatalf("initial state %v", sub.ANAState())
	}
	h := newHost(t, addr)
	ctx := context.Background()
	data := bytes.Repeat([]byte{0x5A}, 4096)
	got := make([]byte, 4096)
	for _, st := range []nvme.ANAState{nvme.ANAInaccessible, nvme.ANAPersistentLoss, nvme.ANAChange} {
		if err := sub.SetANAState(ctx, st); err != nil {
			t.Fatal(err)
		}
		want := st.IOStatus()
		wantStatus(t, st.String()+" write", h.io.rw(true, 3, data), want)
		wantStatus(t, st.String()+" read", h.io.rw(false, 3, got), want)
		wantStatus(t, st.String()+" flush", h.io.simple(nvme.CmdFlush, 1), want)
		wantStatus(t, st.String()+" flush all", h.io.simple(nvme.CmdFlush, 0xFFFFFFFF), want)
		if c := h.admin.prop(false, nvme.PropCSTS, 0, false); c.Status != 0 {
			t.Fatalf("%v: admin command refused: %#x", st, c.Status)
		}
	}
	if s := sub.Stats(); s.Writes != 0 || s.Reads != 0 {
		t.Fatalf("refused I/O was counted: %+v", s)
	}
	for _, st := range []nvme.ANAState{nvme.ANANonOptimized, nvme.ANAOptimized} {
		if err := sub.SetANAState(ctx, st); err != nil {
			t.Fatal(err)
		}
		// What the refused writes did not write reads as zeroes.
		wantStatus(t, st.String()+" read", h.io.rw(false, 3, got), nvme.StatusSuccess)
		if st == nvme.ANANonOptimized && !bytes.Equal(got, make([]byte, 4096)) {
			t.Fatal("a refused write reached the device")
		}
		wantStatus(t, st.String()+" write", h.io.rw(true, 3, data), nvme.StatusSuccess)
		wantStatus(t, st.String()+" read", h.io.rw(false, 3, got), nvme.StatusSuccess)
		if !bytes.Equal(got, data) {
			t.Fatalf("%v: read back differs", st)
		}
	}
	if s := sub.Stats(); s.Writes != 2 || s.WriteBytes != 8192 || s.Reads != 4 {
		t.Fatalf("stats %+v", s)
	}
	if err := sub.SetANAState(ctx, 5); !errors.Is(err, ErrANAState) {
		t.Fatalf("state 5: %v", err)
	}
	if sub.ANAState() != nvme.ANAOptimized {
		t.Fatalf("an invalid state changed the state to %v", sub.ANAState())
	}
}

// gatedDevice holds writes until the gate opens, telling when one is held.
type gatedDevice struct {
	bdev.Device
	held chan struct{}
	gate chan struct{}
}

func (d *gatedDevice) WriteAt(p []byte, off int64) (int, error) {
	d.held <- struct{}{}
	<-d.gate
	return d.Device.WriteAt(p, off)
}

// TestSetANAStateWaitsForExecutingIO: a state that refuses I/O is in force
// at once for new commands, but SetANAState returns only after a write that
// was already executing finished (which succeeds: it began before).
func TestSetANAStateWaitsForExecutingIO(t *testing.T) {
	mem, _ := bdev.NewMalloc(1<<20, 4096)
	dev := &gatedDevice{Device: mem, held: make(chan struct{}, 1), gate: make(chan struct{})}
	_, sub, addr := serveWith(t, SubsystemOptions{}, dev)
	h := newHost(t, addr)
	data := bytes.Repeat([]byte{0x77}, 4096)
	done := make(chan nvme.Status, 1)
	go func() { done <- h.io.rw(true, 9, data) }()
	<-dev.held

	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := sub.SetANAState(short, nvme.ANAInaccessible); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SetANAState with a write held in the device: %v, want the context's deadline", err)
	}
	if sub.ANAState() != nvme.ANAInaccessible {
		t.Fatal("the state was not set")
	}
	// New I/O is refused already, on another controller.
	other := newHost(t, addr)
	wantStatus(t, "new read", other.io.rw(false, 9, make([]byte, 4096)), nvme.StatusANAInaccessible)

	waited := make(chan error, 1)
	go func() { waited <- sub.SetANAState(context.Background(), nvme.ANAInaccessible) }()
	close(dev.gate)
	if err := <-waited; err != nil {
		t.Fatalf("SetANAState after the write finished: %v", err)
	}
	wantStatus(t, "the write that began before", <-done, nvme.StatusSuccess)
	got := make([]byte, 4096)
	mem.ReadAt(got, 9*4096)
	if !bytes.Equal(got, data) {
		t.Fatal("the write acknowledged as done is not on the device")
	}
}

// TestCNTLIDRange: controller IDs come from the subsystem's range, in turn;
// a used-up range refuses Connect with Controller Busy; another subsystem
// of the same target has IDs of its own; invalid ranges are refused.
func TestCNTLIDRange(t *testing.T) {
	tgt, sub, addr := serveWith(t, SubsystemOptions{MinCNTLID: 0x1000, MaxCNTLID: 0x1001}, nil)
	if lo, hi := sub.CNTLIDRange(); lo != 0x1000 || hi != 0x1001 {
		t.Fatalf("range %#x..%#x", lo, hi)
	}
	a := dialRaw(t, addr, false)
	b := dialRaw(t, addr, false)
	if ida, idb := a.adminUp(0), b.adminUp(0); ida != 0x1000 || idb != 0x1001 {
		t.Fatalf("IDs %#x %#x, want 0x1000 0x1001", ida, idb)
	}
	c := dialRaw(t, addr, false)
	if cqe := c.connect(0, 0xFFFF, 0, hostNQN); nvme.Status(cqe.Status) != nvme.StatusConnectCtrlBusy {
		t.Fatalf("connect with the range used up: %#x, want Controller Busy", cqe.Status)
	}
	// Identify reports the ID.
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminIdentify)
	sqe.SetCDW(10, nvme.CNSController)
	id := make([]byte, 4096)
	if cqe := b.cmd(&sqe, nil, id); cqe.Status != 0 || binary.LittleEndian.Uint16(id[nvme.IDCtrlCNTLID:]) != 0x1001 {
		t.Fatalf("identify: %#x cntlid %#x", cqe.Status, binary.LittleEndian.Uint16(id[nvme.IDCtrlCNTLID:]))
	}
	// A freed ID is handed out again.
	a.conn.Close()
	waitFor(t, "controller 0x1000 to go", func() bool { return tgt.controller(sub, 0x1000) == nil })
	d := dialRaw(t, addr, false)
	if id := d.adminUp(0); id != 0x1000 {
		t.Fatalf("ID %#x after 0x1000 was freed", id)
	}

	// Another subsystem: its own default range, from 1.
	other, err := tgt.AddSubsystem(subNQN+"-2", SubsystemOptions{AllowAnyHost: true})
	if err != nil {
		t.Fatal(err)
	}
	if lo, hi := other.CNTLIDRange(); lo != 1 || hi != MaxCNTLID {
		t.Fatalf("default range %d..%d", lo, hi)
	}
	e := dialRaw(t, addr, false)
	var cs pdu.SQE
	cs.SetOpcode(nvme.Fabrics)
	cs.SetFCType(nvme.FctConnect)
	cs.SetCDW(11, 31)
	cd := make([]byte, pdu.ConnectDataLen)
	(&pdu.ConnectData{CNTLID: 0xFFFF, SubNQN: subNQN + "-2", HostNQN: hostNQN}).Marshal(cd)
	if cqe := e.cmd(&cs, cd, nil); cqe.Status != 0 || cqe.Result != 1 {
		t.Fatalf("connect to the second subsystem: %#x ID %d", cqe.Status, cqe.Result)
	}
	// An I/O queue cannot join controller 1 of the other subsystem through
	// this one (whose range has no 1).
	f := dialRaw(t, addr, false)
	cs.SetCDW(10, 1<<16)
	(&pdu.ConnectData{CNTLID: 1, SubNQN: subNQN, HostNQN: hostNQN}).Marshal(cd)
	if cqe := f.cmd(&cs, cd, nil); nvme.Status(cqe.Status) != nvme.StatusConnectInvalidParam {
		t.Fatalf("I/O connect to another subsystem's controller: %#x", cqe.Status)
	}

	for _, o := range []SubsystemOptions{{MinCNTLID: 10, MaxCNTLID: 9}, {MaxCNTLID: 0xFFF0}, {MinCNTLID: 0xFFF0}} {
		if _, err := tgt.AddSubsystem(subNQN+"-bad", o); !errors.Is(err, ErrCNTLIDRange) {
			t.Errorf("range %d..%d: %v", o.MinCNTLID, o.MaxCNTLID, err)
		}
	}
	if _, err := tgt.AddSubsystem(subNQN+"-bad", SubsystemOptions{ANAState: 7}); !errors.Is(err, ErrANAState) {
		t.Errorf("initial state 7: %v", err)
	}
}

// waitFor polls cond for up to 10 s (a bounded liveness wait).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: gave up after 10 s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// FuzzANALogRequest sends Get Log Page for the ANA log with arbitrary LSP,
// RAE, length, offset and NSID: the answer is either an error status (an
// unaligned offset or one past the page) or exactly the page's bytes from
// the offset, zero-padded to the length.
func FuzzANALogRequest(f *testing.F) {
	f.Add(uint8(0), false, uint16(1024), uint32(0), uint32(0xFFFFFFFF))
	f.Add(uint8(1), false, uint16(16), uint32(0), uint32(0))
	f.Add(uint8(0), true, uint16(2), uint32(48), uint32(1))
	f.Add(uint8(0x7F), false, uint16(0), uint32(3), uint32(5))
	f.Add(uint8(0), false, uint16(20), uint32(80), uint32(0))
	tgt := New(nil)
	defer tgt.Close()
	sub, err := tgt.AddSubsystem(subNQN, SubsystemOptions{AllowAnyHost: true, ANAState: nvme.ANANonOptimized})
	if err != nil {
		f.Fatal(err)
	}
	for i := range 3 {
		dev, _ := bdev.NewMalloc(1<<20, 512)
		if _, err := sub.AddNamespace(dev, NamespaceOptions{UUID: [16]byte{0xF0, byte(i)}}); err != nil {
			f.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go tgt.Serve(context.Background(), l)
	want := sub.anaLog()
	f.Fuzz(func(t *testing.T, lsp uint8, rae bool, numdw uint16, lpo uint32, nsid uint32) {
		r := dialRaw(t, l.Addr().String(), false)
		r.adminUp(0)
		n := (int(numdw) + 1) * 4
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.AdminGetLogPage)
		sqe.SetNSID(nsid)
		cdw10 := uint32(nvme.LogANA) | uint32(lsp&0x7F)<<8 | uint32(numdw)<<16
		if rae {
			cdw10 |= 1 << 15
		}
		sqe.SetCDW(10, cdw10)
		sqe.SetCDW(12, lpo)
		buf := make([]byte, n)
		st := nvme.Status(r.cmd(&sqe, nil, buf).Status)
		rgo := lsp&1 != 0
		page := make([]byte, want.Len(rgo))
		want.Marshal(page, rgo)
		switch {
		case lpo%4 != 0 || int(lpo) > len(page):
			if st != nvme.StatusInvalidField {
				t.Fatalf("offset %d of a %d-byte page: status %v, want invalid field", lpo, len(page), st)
			}
		case !st.Success():
			t.Fatalf("lsp %#x rae %v %d bytes at %d nsid %#x: %v", lsp, rae, n, lpo, nsid, st)
		default:
			exp := make([]byte, n)
			copy(exp, page[lpo:])
			if !bytes.Equal(buf, exp) {
				t.Fatalf("lsp %#x %d bytes at %d: % x, want % x", lsp, n, lpo, buf, exp)
			}
		}
	})
}

// fencedDevice fails every write with the error set last (none: nil).
type fencedDevice struct {
	bdev.Device
	mu  sync.Mutex
	err error
}

func (d *fencedDevice) set(err error) {
	d.mu.Lock()
	d.err = err
	d.mu.Unlock()
}

func (d *fencedDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	err := d.err
	d.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return d.Device.WriteAt(p, off)
}

// TestSupersededDeviceReportsInaccessible: a device superseded by a newer
// instance elsewhere (a fenced nexus: bdev.ErrSuperseded) fails the I/O
// with ANA inaccessible, without DNR, so that a multipath host retries it
// on another path, and the subsystem reports itself inaccessible from then
// on (ANA log and later commands); a device that is only fenced (a
// replica whose claim a newer nexus took) still answers a reservation
// conflict, which the nexus's initiator reads as the fence.
func TestSupersededDeviceReportsInaccessible(t *testing.T) {
	mem, _ := bdev.NewMalloc(1<<20, 4096)
	dev := &fencedDevice{Device: mem}
	_, sub, addr := serveWith(t, SubsystemOptions{}, dev)
	h := newHost(t, addr)
	data := bytes.Repeat([]byte{0x42}, 4096)
	wantStatus(t, "write", h.io.rw(true, 1, data), nvme.StatusSuccess)

	dev.set(fmt.Errorf("replica: %w", bdev.ErrFenced))
	wantStatus(t, "fenced write", h.io.rw(true, 1, data), nvme.StatusReservationConflict)
	if st := sub.ANAState(); st != nvme.ANAOptimized {
		t.Fatalf("a fenced (not superseded) device changed the state to %v", st)
	}

	dev.set(fmt.Errorf("nexus: %w: %w", bdev.ErrFenced, bdev.ErrSuperseded))
	st := h.io.rw(true, 1, data)
	wantStatus(t, "superseded write", st, nvme.StatusANAInaccessible)
	if st&nvme.DNR != 0 {
		t.Fatalf("superseded write: status %#x has DNR", st)
	}
	deadline := time.Now().Add(10 * time.Second)
	for sub.ANAState() != nvme.ANAInaccessible {
		if time.Now().After(deadline) {
			t.Fatalf("the subsystem still reports %v after a superseded write", sub.ANAState())
		}
		time.Sleep(time.Millisecond)
	}
	if g := sub.anaLog(); len(g.Groups) != 1 || g.Groups[0].State != nvme.ANAInaccessible {
		t.Fatalf("ANA log %+v", g)
	}
	dev.set(nil)
	wantStatus(t, "read after", h.io.rw(false, 1, make([]byte, 4096)), nvme.StatusANAInaccessible)
}
