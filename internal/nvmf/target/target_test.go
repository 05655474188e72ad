package target

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

const (
	subNQN  = "nqn.2024-11.io.nexstor:replica:t"
	hostNQN = "nqn.2014-08.org.example:host"
)

func serve(t *testing.T) (*Target, *Subsystem, string) {
	t.Helper()
	return serveSize(t, 1<<20)
}

// serveSize serves one malloc namespace of size bytes (4 KiB blocks).
func serveSize(t *testing.T, size int64) (*Target, *Subsystem, string) {
	t.Helper()
	dev, err := bdev.NewMalloc(size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return serveDevice(t, dev)
}

// serveDevice serves dev as namespace 1 of subsystem subNQN, to any host,
// on a loopback port, until the test ends.
func serveDevice(t *testing.T, dev bdev.Device) (*Target, *Subsystem, string) {
	t.Helper()
	tgt := New(nil)
	sub, err := tgt.AddSubsystem(subNQN, SubsystemOptions{AllowAnyHost: true, Serial: "SN1", Model: "M1"})
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

// raw is a wire-level host for driving the target precisely.
type raw struct {
	t    *testing.T
	conn net.Conn
	bw   *bufio.Writer
	enc  *pdu.Encoder
	dec  *pdu.Decoder
	cid  uint16
}

func dialRaw(t *testing.T, addr string, digests bool) *raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	r := &raw{t: t, conn: c, bw: bufio.NewWriter(c)}
	r.enc = pdu.NewEncoder(r.bw)
	r.dec = pdu.NewDecoder(bufio.NewReader(c), 1<<20)
	r.must(r.enc.WriteICReq(pdu.ICReq{HeaderDigest: digests, DataDigest: digests}))
	r.flush()
	h, err := r.dec.Next()
	if err != nil || h.Type != pdu.TypeICResp {
		t.Fatalf("ICResp: %v %v", h.Type, err)
	}
	ic := r.dec.ICResp()
	if ic.HeaderDigest != digests || ic.DataDigest != digests || ic.MaxH2CData < 4096 || ic.PFV != 0 {
		t.Fatalf("ICResp %+v", ic)
	}
	r.dec.HeaderDigest, r.dec.DataDigest = digests, digests
	r.enc.HeaderDigest, r.enc.DataDigest = digests, digests
	return r
}

func (r *raw) must(err error) {
	r.t.Helper()
	if err != nil {
		r.t.Fatal(err)
	}
}

func (r *raw) flush() { r.t.Helper(); r.must(r.bw.Flush()) }

// cmd sends a command with optional in-capsule data and returns the
// completion, collecting C2H data into in (if non-nil).
func (r *raw) cmd(sqe *pdu.SQE, out, in []byte) pdu.CQE {
	r.t.Helper()
	r.cid++
	sqe.SetCID(r.cid)
	sqe.SetFlags(pdu.PSDTSGL)
	switch {
	case len(out) > 0:
		sqe.SetSGL(pdu.SGL{Type: pdu.SGLDataBlockOffset, Length: uint32(len(out))})
	default:
		sqe.SetSGL(pdu.SGL{Type: pdu.SGLTransportDataBlock, Length: uint32(len(in))})
	}
	r.must(r.enc.WriteCapsuleCmd(sqe, out))
	r.flush()
	return r.wait(r.cid, in)
}

func (r *raw) wait(cid uint16, in []byte) pdu.CQE {
	r.t.Helper()
	for {
		h, err := r.dec.Next()
		if err != nil {
			r.t.Fatalf("waiting for CID %d: %v", cid, err)
		}
		switch h.Type {
		case pdu.TypeC2HData:
			dh := r.dec.DataHeader()
			r.must(r.dec.ReadData(in[dh.DataO : dh.DataO+dh.DataL]))
			if h.Flags&pdu.FlagSuccess != 0 {
				return pdu.CQE{CID: dh.CCCID}
			}
		case pdu.TypeCapsuleResp:
			cqe := r.dec.CQE()
			if cqe.CID != cid {
				r.t.Fatalf("completion for CID %d, waiting for %d", cqe.CID, cid)
			}
			return cqe
		default:
			r.t.Fatalf("unexpected %v", h.Type)
		}
	}
}

func (r *raw) connect(qid, cntlid uint16, kato uint32, host string) pdu.CQE {
	r.t.Helper()
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.Fabrics)
	sqe.SetFCType(nvme.FctConnect)
	sqe.SetCDW(10, uint32(qid)<<16)
	sqe.SetCDW(11, 31)
	sqe.SetCDW(12, kato)
	data := make([]byte, pdu.ConnectDataLen)
	(&pdu.ConnectData{CNTLID: cntlid, SubNQN: subNQN, HostNQN: host}).Marshal(data)
	return r.cmd(&sqe, data, nil)
}

func (r *raw) prop(set bool, off uint32, v uint64, size8 bool) pdu.CQE {
	r.t.Helper()
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.Fabrics)
	if set {
		sqe.SetFCType(nvme.FctPropertySet)
	} else {
		sqe.SetFCType(nvme.FctPropertyGet)
	}
	if size8 {
		sqe[40] = 1
	}
	sqe.SetCDW(11, off)
	binary.LittleEndian.PutUint64(sqe[48:], v)
	return r.cmd(&sqe, nil, nil)
}

// adminUp connects an admin queue and enables the controller.
func (r *raw) adminUp(kato uint32) uint16 {
	r.t.Helper()
	cqe := r.connect(0, 0xFFFF, kato, hostNQN)
	if cqe.Status != 0 {
		r.t.Fatalf("connect status %#x", cqe.Status)
	}
	if c := r.prop(true, nvme.PropCC, nvme.CCEnable|6<<16|4<<20, false); c.Status != 0 {
		r.t.Fatalf("set CC: %#x", c.Status)
	}
	if c := r.prop(false, nvme.PropCSTS, 0, false); c.Result&1 != 1 {
		r.t.Fatalf("CSTS %#x", c.Result)
	}
	return uint16(cqe.Result)
}

// expectTerm reads until a C2HTermReq and then the end of the stream.
func (r *raw) expectTerm(fes uint16, fei uint32) {
	r.t.Helper()
	for {
		h, err := r.dec.Next()
		if err != nil {
			r.t.Fatalf("waiting for a C2HTermReq: %v", err)
		}
		if h.Type == pdu.TypeC2HTermReq {
			tr := r.dec.TermReq()
			if tr.FES != fes || tr.FEI != fei {
				r.t.Fatalf("TermReq FES %d FEI %d, want %d %d", tr.FES, tr.FEI, fes, fei)
			}
			break
		}
	}
	var b [1]byte
	if _, err := r.conn.Read(b[:]); err == nil {
		r.t.Fatal("connection still open after the TermReq")
	}
}

func TestHostileInput(t *testing.T) {
	_, _, addr := serve(t)
	good := dialRaw(t, addr, true)
	good.adminUp(0)
	cases := []struct {
		name string
		send func(t *testing.T, r *raw)
		fes  uint16
		fei  uint32
	}{
		{"unknown PDU type", func(t *testing.T, r *raw) {
			r.conn.Write([]byte{0x0E, 0, 24, 0, 24, 0, 0, 0})
		}, pdu.FESInvalidHeaderField, 0},
		{"bad HLEN", func(t *testing.T, r *raw) {
			b := make([]byte, 80)
			pdu.Header{Type: pdu.TypeCapsuleCmd, HLen: 76, PLen: 80}.Marshal(b)
			r.conn.Write(b)
		}, pdu.FESInvalidHeaderField, 2},
		{"command before Connect", func(t *testing.T, r *raw) {
			var sqe pdu.SQE
			sqe.SetOpcode(nvme.AdminIdentify)
			r.enc.WriteCapsuleCmd(&sqe, nil)
			r.flush()
		}, pdu.FESSequenceError, 0},
		{"controller PDU from the host", func(t *testing.T, r *raw) {
			r.enc.WriteCapsuleResp(&pdu.CQE{})
			r.flush()
		}, pdu.FESInvalidHeaderField, 0},
		{"in-capsule data beyond the limit", func(t *testing.T, r *raw) {
			r.adminUp(0)
			var sqe pdu.SQE
			sqe.SetOpcode(nvme.AdminSetFeatures)
			r.enc.WriteCapsuleCmd(&sqe, make([]byte, 20<<10))
			r.flush()
		}, pdu.FESDataLimitExceeded, 0},
		{"H2CData beyond the transfer", func(t *testing.T, r *raw) {
			cntlid := r.adminUp(0)
			io := dialRaw(t, addr, false)
			if c := io.connect(1, cntlid, 0, hostNQN); c.Status != 0 {
				t.Fatalf("io connect %#x", c.Status)
			}
			var sqe pdu.SQE
			sqe.SetOpcode(nvme.CmdWrite)
			sqe.SetNSID(1)
			sqe.SetCID(77)
			sqe.SetFlags(pdu.PSDTSGL)
			sqe.SetSGL(pdu.SGL{Type: pdu.SGLTransportDataBlock, Length: 4096})
			io.must(io.enc.WriteCapsuleCmd(&sqe, nil))
			io.flush()
			h, err := io.dec.Next()
			if err != nil || h.Type != pdu.TypeR2T {
				t.Fatalf("want R2T, got %v %v", h.Type, err)
			}
			r2t := io.dec.R2T()
			if r2t.CCCID != 77 || r2t.R2TL != 4096 {
				t.Fatalf("R2T %+v", r2t)
			}
			io.enc.WriteH2CData(pdu.DataHeader{CCCID: 77, TTag: r2t.TTag, DataO: 0}, pdu.FlagLast, make([]byte, 8192))
			io.flush()
			io.expectTerm(pdu.FESDataOutOfRange, 16)
		}, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := dialRaw(t, addr, false)
			c.send(t, r)
			if c.fes != 0 {
				r.expectTerm(c.fes, c.fei)
			}
			// The other connection is unaffected.
			if cqe := good.prop(false, nvme.PropVS, 0, false); cqe.Status != 0 || cqe.Result != versionValue {
				t.Fatalf("good connection: %+v", cqe)
			}
		})
	}
	t.Run("wrong header digest", func(t *testing.T) {
		r := dialRaw(t, addr, true)
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		e := pdu.NewEncoder(bw)
		e.HeaderDigest = true
		var sqe pdu.SQE
		e.WriteCapsuleCmd(&sqe, nil)
		bw.Flush()
		b := buf.Bytes()
		b[pdu.CapsuleCmdLen] ^= 0xFF
		r.conn.Write(b)
		r.expectTerm(pdu.FESHeaderDigestError, 0)
	})
	t.Run("first PDU not ICReq", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := &raw{t: t, conn: c, bw: bufio.NewWriter(c)}
		r.enc = pdu.NewEncoder(r.bw)
		r.dec = pdu.NewDecoder(bufio.NewReader(c), 1<<20)
		var sqe pdu.SQE
		r.enc.WriteCapsuleCmd(&sqe, nil)
		r.flush()
		r.expectTerm(pdu.FESSequenceError, 0)
	})
}

func TestDataDigestErrorFailsOnlyTheCommand(t *testing.T) {
	_, _, addr := serve(t)
	r := dialRaw(t, addr, true)
	r.adminUp(0)
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	e := pdu.NewEncoder(bw)
	e.HeaderDigest, e.DataDigest = true, true
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminSetFeatures)
	sqe.SetCDW(10, nvme.FeatAsyncEvent)
	sqe.SetCID(900)
	sqe.SetFlags(pdu.PSDTSGL)
	sqe.SetSGL(pdu.SGL{Type: pdu.SGLDataBlockOffset, Length: 16})
	e.WriteCapsuleCmd(&sqe, make([]byte, 16))
	bw.Flush()
	b := buf.Bytes()
	b[len(b)-1] ^= 0xFF // the data digest
	r.conn.Write(b)
	cqe := r.wait(900, nil)
	if nvme.Status(cqe.Status) != nvme.StatusTransientTransport {
		t.Fatalf("status %#x, want Transient Transport Error", cqe.Status)
	}
	if c := r.prop(false, nvme.PropVS, 0, false); c.Status != 0 {
		t.Fatal("connection unusable after a data digest error")
	}
}

func TestIdentifyController(t *testing.T) {
	_, _, addr := serve(t)
	r := dialRaw(t, addr, false)
	cntlid := r.adminUp(0)
	capv := r.prop(false, nvme.PropCAP, 0, true).Result
	if capv&0xFFFF != MaxQueueEntries-1 || capv>>37&1 != 1 {
		t.Fatalf("CAP %#x", capv)
	}
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminIdentify)
	sqe.SetCDW(10, nvme.CNSController)
	id := make([]byte, 4096)
	if c := r.cmd(&sqe, nil, id); c.Status != 0 {
		t.Fatalf("identify: %#x", c.Status)
	}
	le16 := func(o int) uint16 { return binary.LittleEndian.Uint16(id[o:]) }
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(id[o:]) }
	switch {
	case string(id[4:7]) != "SN1" || string(id[24:26]) != "M1":
		t.Errorf("sn/mn %q %q", id[4:24], id[24:64])
	case le16(nvme.IDCtrlCNTLID) != cntlid:
		t.Errorf("cntlid %d, connect said %d", le16(nvme.IDCtrlCNTLID), cntlid)
	case id[nvme.IDCtrlCNTRLTYPE] != nvme.CtrlIO:
		t.Errorf("cntrltype %d", id[nvme.IDCtrlCNTRLTYPE])
	case le32(nvme.IDCtrlIOCCSZ) != (64+InCapsuleDataSize)/16 || le32(nvme.IDCtrlIORCSZ) != 1:
		t.Errorf("ioccsz %d iorcsz %d", le32(nvme.IDCtrlIOCCSZ), le32(nvme.IDCtrlIORCSZ))
	case le32(nvme.IDCtrlSGLS)&3 == 0 || le32(nvme.IDCtrlSGLS)&(1<<20) == 0:
		t.Errorf("sgls %#x", le32(nvme.IDCtrlSGLS))
	case le16(nvme.IDCtrlMAXCMD) == 0 || le32(nvme.IDCtrlNN) == 0 || id[nvme.IDCtrlMDTS] == 0:
		t.Errorf("maxcmd %d nn %d mdts %d", le16(nvme.IDCtrlMAXCMD), le32(nvme.IDCtrlNN), id[nvme.IDCtrlMDTS])
	case id[nvme.IDCtrlVWC]&1 == 0 || le16(nvme.IDCtrlKAS) == 0 || le16(nvme.IDCtrlICDOFF) != 0:
		t.Errorf("vwc %d kas %d icdoff %d", id[nvme.IDCtrlVWC], le16(nvme.IDCtrlKAS), le16(nvme.IDCtrlICDOFF))
	case pdu.CString(id[nvme.IDCtrlSUBNQN:nvme.IDCtrlSUBNQN+256]) != subNQN:
		t.Errorf("subnqn %q", pdu.CString(id[768:1024]))
	case id[nvme.IDCtrlSQES] != 0x66 || id[nvme.IDCtrlCQES] != 0x44:
		t.Errorf("sqes %#x cqes %#x", id[nvme.IDCtrlSQES], id[nvme.IDCtrlCQES])
	}

	// Namespace descriptors: NGUID, UUID, CSI.
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.AdminIdentify)
	sqe.SetNSID(1)
	sqe.SetCDW(10, nvme.CNSNSDescList)
	d := make([]byte, 4096)
	if c := r.cmd(&sqe, nil, d); c.Status != 0 {
		t.Fatalf("descriptor list: %#x", c.Status)
	}
	if d[0] != nvme.NIDTNGUID || d[1] != 16 || d[20] != nvme.NIDTUUID || d[21] != 16 || d[24] != 0xAA || d[40] != nvme.NIDTCSI {
		t.Fatalf("descriptors % x", d[:48])
	}
	// Identify namespace: 1 MiB of 4 KiB blocks.
	sqe.SetCDW(10, nvme.CNSNamespace)
	if c := r.cmd(&sqe, nil, d); c.Status != 0 {
		t.Fatalf("identify ns: %#x", c.Status)
	}
	if binary.LittleEndian.Uint64(d) != 256 || d[nvme.IDNsLBAF0+2] != 12 {
		t.Fatalf("nsze %d lbads %d", binary.LittleEndian.Uint64(d), d[nvme.IDNsLBAF0+2])
	}
	// An inactive namespace identifies as zeroes.
	sqe.SetNSID(5)
	if c := r.cmd(&sqe, nil, d); c.Status != 0 || binary.LittleEndian.Uint64(d) != 0 {
		t.Fatalf("inactive ns: %#x", c.Status)
	}
	// Number of queues.
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.AdminSetFeatures)
	sqe.SetCDW(10, nvme.FeatNumQueues)
	sqe.SetCDW(11, 1000|1000<<16)
	if c := r.cmd(&sqe, nil, nil); c.Status != 0 || c.Result != uint64(MaxIOQueues-1)|uint64(MaxIOQueues-1)<<16 {
		t.Fatalf("number of queues: %+v", c)
	}
	// SMART log.
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.AdminGetLogPage)
	sqe.SetCDW(10, nvme.LogSMART|(512/4-1)<<16)
	smart := make([]byte, 512)
	if c := r.cmd(&sqe, nil, smart); c.Status != 0 || smart[3] != 100 {
		t.Fatalf("smart: %+v", c)
	}
}

func TestAsyncEventOnNamespaceChange(t *testing.T) {
	_, sub, addr := serve(t)
	r := dialRaw(t, addr, false)
	r.adminUp(0)
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminSetFeatures)
	sqe.SetCDW(10, nvme.FeatAsyncEvent)
	sqe.SetCDW(11, nvme.OAESNSAttr)
	if c := r.cmd(&sqe, nil, nil); c.Status != 0 {
		t.Fatalf("async event config: %#x", c.Status)
	}
	// Submit an AER; it is held until a namespace appears.
	aer := pdu.SQE{}
	aer.SetOpcode(nvme.AdminAsyncEvent)
	aer.SetCID(500)
	aer.SetFlags(pdu.PSDTSGL)
	aer.SetSGL(pdu.SGL{Type: pdu.SGLTransportDataBlock})
	r.must(r.enc.WriteCapsuleCmd(&aer, nil))
	r.flush()
	if c := r.prop(false, nvme.PropVS, 0, false); c.Status != 0 {
		t.Fatal("a command after the held AER did not complete first")
	}
	dev, _ := bdev.NewMalloc(1<<20, 512)
	nsid, err := sub.AddNamespace(dev, NamespaceOptions{UUID: [16]byte{0xBB}})
	if err != nil || nsid != 2 {
		t.Fatalf("AddNamespace: %d %v", nsid, err)
	}
	cqe := r.wait(500, nil)
	if cqe.Status != 0 || uint32(cqe.Result) != nvme.AENResult(nvme.AENTypeNotice, nvme.AENNoticeNSChanged, nvme.LogChangedNS) {
		t.Fatalf("AER completion %+v", cqe)
	}
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.AdminGetLogPage)
	sqe.SetCDW(10, nvme.LogChangedNS|(4096/4-1)<<16)
	page := make([]byte, 4096)
	if c := r.cmd(&sqe, nil, page); c.Status != 0 {
		t.Fatalf("changed ns log: %#x", c.Status)
	}
	if binary.LittleEndian.Uint32(page) != 2 || binary.LittleEndian.Uint32(page[4:]) != 0 {
		t.Fatalf("changed ns list % x", page[:8])
	}
}

func TestKeepAliveTimeout(t *testing.T) {
	tgt, _, addr := serve(t)
	r := dialRaw(t, addr, false)
	r.adminUp(100) // KATO 100 ms; the host then goes silent
	var b [1]byte
	r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := r.conn.Read(b[:])
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("connection not torn down: %v", err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("controller survived its keep-alive timeout")
	}
	if !errors.Is(err, io.EOF) {
		t.Logf("read ended with %v", err)
	}
	tgt.mu.Lock()
	n := len(tgt.ctrls)
	tgt.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d controllers left", n)
	}
}

func TestKeepAliveKeepsController(t *testing.T) {
	_, _, addr := serve(t)
	r := dialRaw(t, addr, false)
	r.adminUp(200)
	for range 8 {
		time.Sleep(50 * time.Millisecond)
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.AdminKeepAlive)
		if c := r.cmd(&sqe, nil, nil); c.Status != 0 {
			t.Fatalf("keep alive: %#x", c.Status)
		}
	}
}

func TestRemoveSubsystemDisconnects(t *testing.T) {
	tgt, _, addr := serve(t)
	r := dialRaw(t, addr, false)
	r.adminUp(0)
	if err := tgt.RemoveSubsystem(subNQN); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := r.conn.Read(b[:]); err == nil {
		t.Fatal("connection open after RemoveSubsystem")
	}
	if err := tgt.RemoveSubsystem(subNQN); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := tgt.AddSubsystem("bad nqn", SubsystemOptions{}); !errors.Is(err, ErrInvalidNQN) {
		t.Fatalf("bad NQN: %v", err)
	}
	if NQN("replica", "u1") != "nqn.2024-11.io.nexstor:replica:u1" {
		t.Fatal(NQN("replica", "u1"))
	}
}

func TestDisallowHostDisconnects(t *testing.T) {
	tgt, sub, addr := serve(t)
	sub.SetAllowAnyHost(false)
	sub.AllowHost(hostNQN)
	r := dialRaw(t, addr, false)
	r.adminUp(0)
	sub.DisallowHost(hostNQN)
	var b [1]byte
	if _, err := r.conn.Read(b[:]); err == nil {
		t.Fatal("connection open after DisallowHost")
	}
	r2 := dialRaw(t, addr, false)
	if c := r2.connect(0, 0xFFFF, 0, hostNQN); nvme.Status(c.Status) != nvme.StatusConnectInvalidHost {
		t.Fatalf("connect after DisallowHost: status %#x", c.Status)
	} else if c.Result != 512<<16|1 {
		t.Fatalf("IPO/IATTR %#x, want the host NQN in the data", c.Result)
	}
	_ = tgt
}

func TestIOQueueConnectAndDisconnect(t *testing.T) {
	_, _, addr := serve(t)
	admin := dialRaw(t, addr, false)
	cntlid := admin.adminUp(0)
	// A wrong controller ID is refused.
	bad := dialRaw(t, addr, false)
	if c := bad.connect(1, cntlid+100, 0, hostNQN); nvme.Status(c.Status) != nvme.StatusConnectInvalidParam {
		t.Fatalf("connect to a foreign controller: %#x", c.Status)
	}
	io := dialRaw(t, addr, true)
	if c := io.connect(1, cntlid, 0, hostNQN); c.Status != 0 || uint16(c.Result) != cntlid {
		t.Fatalf("I/O connect: %+v", c)
	}
	// The same queue ID twice is refused.
	dup := dialRaw(t, addr, false)
	if c := dup.connect(1, cntlid, 0, hostNQN); nvme.Status(c.Status) != nvme.StatusConnectInvalidParam {
		t.Fatalf("duplicate qid: %#x", c.Status)
	}
	// Write in-capsule, read back through C2HData.
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.CmdWrite)
	sqe.SetNSID(1)
	sqe.SetCDW(10, 3)
	data := bytes.Repeat([]byte{0x5A}, 4096)
	if c := io.cmd(&sqe, data, nil); c.Status != 0 {
		t.Fatalf("write: %#x", c.Status)
	}
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.CmdRead)
	sqe.SetNSID(1)
	sqe.SetCDW(10, 3)
	got := make([]byte, 4096)
	if c := io.cmd(&sqe, nil, got); c.Status != 0 || !bytes.Equal(got, data) {
		t.Fatalf("read: %#x", c.Status)
	}
	// Out of range and wrong transfer length.
	sqe.SetCDW(10, 256)
	if c := io.cmd(&sqe, nil, got); nvme.Status(c.Status) != nvme.StatusLBAOutOfRange {
		t.Fatalf("read beyond the end: %#x", c.Status)
	}
	sqe.SetCDW(10, 0)
	sqe.SetCDW(12, 1) // two blocks, one block of buffer
	if c := io.cmd(&sqe, nil, got); nvme.Status(c.Status) != nvme.StatusSGLInvalidDataLength {
		t.Fatalf("length mismatch: %#x", c.Status)
	}
	// Disconnect closes only the I/O queue.
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.Fabrics)
	sqe.SetFCType(nvme.FctDisconnect)
	if c := io.cmd(&sqe, nil, nil); c.Status != 0 {
		t.Fatalf("disconnect: %#x", c.Status)
	}
	var b [1]byte
	if _, err := io.conn.Read(b[:]); err == nil {
		t.Fatal("I/O queue open after Disconnect")
	}
	if c := admin.prop(false, nvme.PropVS, 0, false); c.Status != 0 {
		t.Fatal("admin queue unusable after the I/O queue disconnected")
	}
}

// TestDSMWithPageOfRanges: Linux sends a DSM deallocate with a 4 KiB buffer
// however few ranges NR says; only NR+1 ranges count.
func TestDSMWithPageOfRanges(t *testing.T) {
	_, _, addr := serve(t)
	admin := dialRaw(t, addr, false)
	cntlid := admin.adminUp(0)
	io := dialRaw(t, addr, false)
	if c := io.connect(1, cntlid, 0, hostNQN); c.Status != 0 {
		t.Fatalf("I/O connect: %#x", c.Status)
	}
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.CmdWrite)
	sqe.SetNSID(1)
	sqe.SetCDW(12, 3) // blocks 0-3
	if c := io.cmd(&sqe, bytes.Repeat([]byte{1}, 4*4096), nil); c.Status != 0 {
		t.Fatalf("write: %#x", c.Status)
	}
	ranges := make([]byte, 4096)
	binary.LittleEndian.PutUint32(ranges[4:], 2)    // 2 blocks
	binary.LittleEndian.PutUint64(ranges[8:], 1)    // from block 1
	binary.LittleEndian.PutUint32(ranges[16+4:], 1) // a second range, beyond NR: ignored
	binary.LittleEndian.PutUint64(ranges[16+8:], 3)
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.CmdDSM)
	sqe.SetNSID(1)
	sqe.SetCDW(10, 0)    // NR 0: one range
	sqe.SetCDW(11, 1<<2) // deallocate
	if c := io.cmd(&sqe, ranges, nil); c.Status != 0 {
		t.Fatalf("DSM: %#x", c.Status)
	}
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.CmdRead)
	sqe.SetNSID(1)
	sqe.SetCDW(12, 3)
	got := make([]byte, 4*4096)
	if c := io.cmd(&sqe, nil, got); c.Status != 0 {
		t.Fatalf("read: %#x", c.Status)
	}
	want := bytes.Repeat([]byte{1}, 4*4096)
	clear(want[4096 : 3*4096])
	if !bytes.Equal(got, want) {
		t.Fatal("only blocks 1-2 must read as zeroes")
	}
	// Fewer bytes than NR+1 ranges is an error.
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.CmdDSM)
	sqe.SetNSID(1)
	sqe.SetCDW(10, 1)
	sqe.SetCDW(11, 1<<2)
	if c := io.cmd(&sqe, ranges[:16], nil); nvme.Status(c.Status) != nvme.StatusSGLInvalidDataLength {
		t.Fatalf("short DSM data: %#x", c.Status)
	}
}
