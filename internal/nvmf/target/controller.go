package target

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// epoch anchors the monotonic keep-alive clock.
var epoch = time.Now()

func monoNow() int64 { return int64(time.Since(epoch)) }

// controller is one host's dynamic controller of a subsystem (or of the
// discovery subsystem).
type controller struct {
	t         *Target
	sub       *Subsystem // nil for a discovery controller
	discovery bool
	id        uint16
	hostNQN   string
	hostID    [16]byte
	adminQ    *queue
	local     net.Addr

	lastSeen atomic.Int64 // monoNow of the last command on any queue

	mu       sync.Mutex
	cc, csts uint32
	kato     time.Duration
	kaTimer  *time.Timer
	aenCfg   uint32
	wce      bool
	nIOQ     int
	ioqs     map[uint16]*queue
	aers     []*request
	events   []uint32
	changed  []uint32
	overflow bool
	dead     bool
}

// touch records host activity for the keep-alive timer.
func (c *controller) touch() { c.lastSeen.Store(monoNow()) }

// armKeepAlive starts (or restarts) the keep-alive timer. The controller is
// torn down when no command arrives for twice KATO: the host sends Keep
// Alive every KATO/2 and any command counts, so a live host never gets near.
func (c *controller) armKeepAliveLocked() {
	if c.kaTimer != nil {
		c.kaTimer.Stop()
		c.kaTimer = nil
	}
	if c.kato <= 0 || c.dead {
		return
	}
	c.touch()
	kato := c.kato
	var check func()
	check = func() {
		c.mu.Lock()
		if c.dead || c.kato != kato {
			c.mu.Unlock()
			return
		}
		idle := time.Duration(monoNow() - c.lastSeen.Load())
		if idle >= 2*kato {
			c.mu.Unlock()
			c.t.log.Warn("nvmf: keep-alive timeout, tearing down controller", "cntlid", c.id, "host", c.hostNQN, "kato", kato)
			c.shutdown("keep-alive timeout")
			return
		}
		c.kaTimer = time.AfterFunc(2*kato-idle, check)
		c.mu.Unlock()
	}
	c.kaTimer = time.AfterFunc(2*kato, check)
}

// shutdown destroys the controller: every queue is closed, held AERs are
// dropped with their connections.
func (c *controller) shutdown(reason string) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.dead = true
	if c.kaTimer != nil {
		c.kaTimer.Stop()
	}
	qs := []*queue{c.adminQ}
	for _, q := range c.ioqs {
		qs = append(qs, q)
	}
	c.aers = nil
	c.mu.Unlock()
	c.t.log.Debug("nvmf: controller destroyed", "cntlid", c.id, "host", c.hostNQN, "reason", reason)
	c.t.removeController(c)
	if c.sub != nil {
		c.sub.mu.Lock()
		delete(c.sub.ctrls, c)
		c.sub.mu.Unlock()
	}
	for _, q := range qs {
		q.close()
	}
}

// queueGone is called when one of the controller's connections ends.
func (c *controller) queueGone(q *queue) {
	if q == c.adminQ {
		c.shutdown("admin queue closed")
		return
	}
	c.mu.Lock()
	if c.ioqs[q.qid] == q {
		delete(c.ioqs, q.qid)
	}
	c.mu.Unlock()
}

// event raises an asynchronous event if the host enabled it (mask is the
// Asynchronous Event Configuration bit), completing a held AER or queueing
// it. nsid, if non-zero, is added to the Changed Namespace List.
func (c *controller) event(mask uint32, result uint32, nsid uint32) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	if nsid != 0 {
		if len(c.changed) >= 1024 {
			c.overflow = true
		} else if !containsU32(c.changed, nsid) {
			c.changed = append(c.changed, nsid)
		}
	}
	if c.aenCfg&mask == 0 {
		c.mu.Unlock()
		return
	}
	if containsU32(c.events, result) {
		c.mu.Unlock()
		return
	}
	var r *request
	if len(c.aers) > 0 {
		r = c.aers[0]
		c.aers = c.aers[1:]
	} else {
		c.events = append(c.events, result)
	}
	c.mu.Unlock()
	if r != nil {
		r.cqe.Result = uint64(result)
		r.q.complete(r)
	}
}

func containsU32(s []uint32, v uint32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// ipo builds the Connect response DW0 for an invalid parameter: the byte
// offset of the parameter and whether it is in the Connect data (IATTR 1)
// or the command (IATTR 0).
func ipo(offset uint16, inData bool) uint64 {
	v := uint64(offset) << 16
	if inData {
		v |= 1
	}
	return v
}

// fabrics executes a Fabrics command. It runs in the reader goroutine.
func (q *queue) fabrics(r *request) {
	switch r.sqe.FCType() {
	case nvme.FctConnect:
		q.connect(r)
	case nvme.FctPropertyGet, nvme.FctPropertySet:
		if q.ctrl == nil || q.qid != 0 {
			r.status = nvme.StatusInvalidField
			break
		}
		q.ctrl.property(r)
	case nvme.FctDisconnect:
		if q.qid == 0 {
			r.status = nvme.StatusInvalidField
			break
		}
		r.closeIt = true
	default:
		r.status = nvme.StatusInvalidOpcode
	}
	if q.ctrl != nil {
		q.ctrl.touch()
	}
	q.complete(r)
}

func (q *queue) connect(r *request) {
	if q.ctrl != nil {
		r.status = nvme.StatusCommandSequence
		return
	}
	recfmt := r.sqe.CDW(10) & 0xFFFF
	qid := uint16(r.sqe.CDW(10) >> 16)
	sqsize := int(r.sqe.CDW(11)&0xFFFF) + 1
	cattr := uint8(r.sqe.CDW(11) >> 16)
	kato := time.Duration(r.sqe.CDW(12)) * time.Millisecond
	cd, ok := pdu.UnmarshalConnectData(r.buf)
	switch {
	case !ok || len(r.buf) != pdu.ConnectDataLen:
		r.status = nvme.StatusSGLInvalidDataLength
		return
	case recfmt != 0:
		r.status = nvme.StatusConnectIncompatible
		r.cqe.Result = ipo(40, false)
		return
	case sqsize < 2:
		r.status = nvme.StatusConnectInvalidParam
		r.cqe.Result = ipo(44, false)
		return
	case !ValidNQN(cd.HostNQN):
		r.status = nvme.StatusConnectInvalidParam
		r.cqe.Result = ipo(512, true)
		return
	}
	r.cqe.SQID = qid
	t := q.t
	if cd.SubNQN == nvme.DiscoveryNQN {
		if qid != 0 {
			r.status = nvme.StatusConnectInvalidParam
			r.cqe.Result = ipo(42, false)
			return
		}
	} else if q.discovery {
		// A discovery port serves only the discovery subsystem.
		r.status = nvme.StatusConnectInvalidParam
		r.cqe.Result = ipo(256, true)
		return
	}
	var sub *Subsystem
	if cd.SubNQN != nvme.DiscoveryNQN {
		sub = t.Subsystem(cd.SubNQN)
		if sub == nil {
			r.status = nvme.StatusConnectInvalidParam
			r.cqe.Result = ipo(256, true)
			return
		}
		if !sub.allowed(cd.HostNQN) {
			t.log.Info("nvmf: connect from a host not on the allow-list", "subnqn", cd.SubNQN, "hostnqn", cd.HostNQN, "remote", q.conn.RemoteAddr())
			r.status = nvme.StatusConnectInvalidHost
			r.cqe.Result = ipo(512, true)
			return
		}
	}
	if qid == 0 {
		if cd.CNTLID != 0xFFFF {
			r.status = nvme.StatusConnectInvalidParam
			r.cqe.Result = ipo(16, true)
			return
		}
		if sqsize > MaxAdminEntries {
			r.status = nvme.StatusConnectInvalidParam
			r.cqe.Result = ipo(44, false)
			return
		}
		c := &controller{
			t: t, sub: sub, discovery: sub == nil, hostNQN: cd.HostNQN, hostID: cd.HostID,
			adminQ: q, local: q.conn.LocalAddr(), kato: kato, wce: true,
			nIOQ: MaxIOQueues, ioqs: make(map[uint16]*queue),
		}
		if c.discovery {
			c.nIOQ = 0
		}
		if !t.addController(c) {
			r.status = nvme.StatusConnectCtrlBusy
			return
		}
		if sub != nil {
			sub.mu.Lock()
			if sub.removed {
				sub.mu.Unlock()
				t.removeController(c)
				r.status = nvme.StatusConnectInvalidParam
				r.cqe.Result = ipo(256, true)
				return
			}
			sub.ctrls[c] = struct{}{}
			sub.mu.Unlock()
		}
		c.mu.Lock()
		c.armKeepAliveLocked()
		c.mu.Unlock()
		q.ctrl = c
		q.entries = sqsize
		q.sqfcOff = cattr&(1<<2) != 0
		q.grow(sqsize)
		q.startWorkers(1)
		q.conn.SetReadDeadline(time.Time{})
		r.cqe.Result = uint64(c.id)
		t.log.Debug("nvmf: controller created", "cntlid", c.id, "subnqn", cd.SubNQN, "hostnqn", cd.HostNQN, "remote", q.conn.RemoteAddr(), "kato", kato)
		return
	}
	c := t.controller(cd.CNTLID)
	if c == nil || c.sub != sub || c.hostNQN != cd.HostNQN || c.hostID != cd.HostID {
		r.status = nvme.StatusConnectInvalidParam
		r.cqe.Result = ipo(16, true)
		return
	}
	if sqsize > MaxQueueEntries {
		r.status = nvme.StatusConnectInvalidParam
		r.cqe.Result = ipo(44, false)
		return
	}
	c.mu.Lock()
	switch {
	case c.dead:
		c.mu.Unlock()
		r.status = nvme.StatusConnectInvalidParam
		r.cqe.Result = ipo(16, true)
		return
	case int(qid) > c.nIOQ || c.ioqs[qid] != nil:
		c.mu.Unlock()
		r.status = nvme.StatusConnectInvalidParam
		r.cqe.Result = ipo(42, false)
		return
	}
	c.ioqs[qid] = q
	c.mu.Unlock()
	q.ctrl = c
	q.qid = qid
	q.entries = sqsize
	q.sqfcOff = cattr&(1<<2) != 0
	q.inlineSz = InCapsuleDataSize
	q.grow(sqsize)
	q.startWorkers(min(sqsize, 64) - 1)
	q.conn.SetReadDeadline(time.Time{})
	r.cqe.Result = uint64(c.id)
	c.touch()
}

// capValue is the CAP property: MQES, CQR, TO 7.5 s, NVM command set,
// 4 KiB pages.
func capValue() uint64 {
	return uint64(MaxQueueEntries-1) | 1<<16 | 15<<24 | 1<<37
}

const versionValue = 0x00010300 // NVMe 1.3

func (c *controller) property(r *request) {
	set := r.sqe.FCType() == nvme.FctPropertySet
	size8 := r.sqe[40]&7 == 1
	off := r.sqe.CDW(11)
	c.mu.Lock()
	defer c.mu.Unlock()
	if set {
		val := binary.LittleEndian.Uint64(r.sqe[48:])
		if off != nvme.PropCC || size8 {
			r.status = nvme.StatusInvalidField
			return
		}
		c.setCCLocked(uint32(val))
		return
	}
	var v uint64
	switch {
	case off == nvme.PropCAP && size8:
		v = capValue()
	case off == nvme.PropVS && !size8:
		v = versionValue
	case off == nvme.PropCC && !size8:
		v = uint64(c.cc)
	case off == nvme.PropCSTS && !size8:
		v = uint64(c.csts)
	default:
		r.status = nvme.StatusInvalidField
		return
	}
	r.cqe.Result = v
}

func (c *controller) setCCLocked(v uint32) {
	old := c.cc
	c.cc = v
	switch {
	case v&nvme.CCEnable != 0 && old&nvme.CCEnable == 0:
		c.csts = nvme.CSTSReady
	case v&nvme.CCEnable == 0 && old&nvme.CCEnable != 0:
		c.csts = 0
	}
	if v&nvme.CCShnMask != 0 {
		c.csts = c.csts&^(3<<2) | nvme.CSTSShstDone
	}
}

// outBuf prepares a zeroed buffer for controller-to-host data of the length
// the host's SGL gives, or sets an error status and returns nil.
func (r *request) outBuf() []byte {
	sgl := r.sqe.SGL()
	if sgl.Type != pdu.SGLTransportDataBlock || sgl.Length == 0 {
		r.status = nvme.StatusSGLInvalidType
		return nil
	}
	if sgl.Length > MaxTransfer {
		r.status = nvme.StatusSGLInvalidDataLength
		return nil
	}
	r.getBuf(int(sgl.Length))
	clear(r.buf)
	r.c2h = len(r.buf)
	return r.buf
}

// admin executes an admin command in a worker.
func (c *controller) admin(r *request) {
	c.touch()
	c.mu.Lock()
	enabled := c.cc&nvme.CCEnable != 0
	c.mu.Unlock()
	if !enabled && r.sqe.Opcode() != nvme.AdminKeepAlive {
		r.status = nvme.StatusCommandSequence
		return
	}
	switch r.sqe.Opcode() {
	case nvme.AdminIdentify:
		c.identify(r)
	case nvme.AdminGetLogPage:
		c.getLogPage(r)
	case nvme.AdminSetFeatures:
		c.setFeatures(r)
	case nvme.AdminGetFeatures:
		c.getFeatures(r)
	case nvme.AdminAsyncEvent:
		c.asyncEvent(r)
	case nvme.AdminKeepAlive:
	case nvme.AdminAbort:
		r.cqe.Result = 1 // not aborted: commands here run to completion
	default:
		r.status = nvme.StatusInvalidOpcode
	}
}

func (c *controller) asyncEvent(r *request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.events) > 0 {
		r.cqe.Result = uint64(c.events[0])
		c.events = c.events[1:]
		return
	}
	if len(c.aers) >= aerLimit {
		r.status = nvme.StatusAERLimitExceeded
		return
	}
	r.aer = true
	c.aers = append(c.aers, r)
}

func (c *controller) setFeatures(r *request) {
	fid := uint8(r.sqe.CDW(10))
	if r.sqe.CDW(10)&(1<<31) != 0 {
		r.status = nvme.StatusFeatureNotSaveable
		return
	}
	v := r.sqe.CDW(11)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch fid {
	case nvme.FeatNumQueues:
		if c.discovery {
			r.status = nvme.StatusInvalidField
			return
		}
		nsq, ncq := v&0xFFFF, v>>16
		if nsq == 0xFFFF || ncq == 0xFFFF {
			r.status = nvme.StatusInvalidField
			return
		}
		n := min(int(max(nsq, ncq))+1, MaxIOQueues)
		c.nIOQ = n
		r.cqe.Result = uint64(n-1) | uint64(n-1)<<16
	case nvme.FeatKeepAlive:
		c.kato = time.Duration(v) * time.Millisecond
		c.armKeepAliveLocked()
	case nvme.FeatAsyncEvent:
		c.aenCfg = v
	case nvme.FeatVolatileWC:
		if c.discovery {
			r.status = nvme.StatusInvalidField
			return
		}
		c.wce = v&1 != 0
	default:
		r.status = nvme.StatusInvalidField
	}
}

func (c *controller) getFeatures(r *request) {
	fid := uint8(r.sqe.CDW(10))
	sel := (r.sqe.CDW(10) >> 8) & 7
	c.mu.Lock()
	defer c.mu.Unlock()
	if sel == 3 { // supported capabilities: changeable, not saveable
		switch fid {
		case nvme.FeatNumQueues, nvme.FeatKeepAlive, nvme.FeatAsyncEvent, nvme.FeatVolatileWC:
			r.cqe.Result = 1 << 2
		default:
			r.status = nvme.StatusInvalidField
		}
		return
	}
	switch fid {
	case nvme.FeatNumQueues:
		n := uint64(max(c.nIOQ, 1) - 1)
		r.cqe.Result = n | n<<16
	case nvme.FeatKeepAlive:
		r.cqe.Result = uint64(c.kato / time.Millisecond)
	case nvme.FeatAsyncEvent:
		r.cqe.Result = uint64(c.aenCfg)
	case nvme.FeatVolatileWC:
		if c.wce {
			r.cqe.Result = 1
		}
	default:
		r.status = nvme.StatusInvalidField
	}
}

func (c *controller) identify(r *request) {
	cns := uint8(r.sqe.CDW(10))
	if c.discovery && cns != nvme.CNSController {
		r.status = nvme.StatusInvalidField
		return
	}
	nsid := r.sqe.NSID()
	switch cns {
	case nvme.CNSController:
		b := r.outBuf()
		if b == nil {
			return
		}
		if len(b) < nvme.IdentifyDataLength {
			r.status = nvme.StatusSGLInvalidDataLength
			return
		}
		c.identifyController(b)
	case nvme.CNSNamespace, nvme.CNSNSIndependent, nvme.CNSNSDescList:
		if nsid == 0 || nsid == 0xFFFFFFFF {
			r.status = nvme.StatusInvalidNS
			return
		}
		ns := c.sub.namespace(nsid)
		if ns == nil && cns == nvme.CNSNSDescList {
			r.status = nvme.StatusInvalidNS
			return
		}
		if ns == nil && nsid > MaxNamespaces {
			r.status = nvme.StatusInvalidNS
			return
		}
		b := r.outBuf()
		if b == nil || ns == nil {
			return // an inactive namespace identifies as all zeroes
		}
		if len(b) < nvme.IdentifyDataLength {
			r.status = nvme.StatusSGLInvalidDataLength
			return
		}
		switch cns {
		case nvme.CNSNamespace:
			identifyNamespace(b, ns)
		case nvme.CNSNSIndependent:
			b[1] = 1 // NMIC: may be attached to several controllers
			b[14] = 1
		case nvme.CNSNSDescList:
			p := 0
			var zero [16]byte
			if ns.uuid != zero {
				b[p], b[p+1] = nvme.NIDTNGUID, 16
				copy(b[p+4:], ns.nguid[:])
				p += 20
				b[p], b[p+1] = nvme.NIDTUUID, 16
				copy(b[p+4:], ns.uuid[:])
				p += 20
			}
			b[p], b[p+1] = nvme.NIDTCSI, 1
			b[p+4] = 0 // NVM command set
		}
	case nvme.CNSActiveNSList:
		if nsid >= 0xFFFFFFFE {
			r.status = nvme.StatusInvalidNS
			return
		}
		b := r.outBuf()
		if b == nil {
			return
		}
		p := 0
		for _, id := range c.sub.nsids() {
			if id > nsid && p+4 <= len(b) && p < nvme.IdentifyDataLength {
				binary.LittleEndian.PutUint32(b[p:], id)
				p += 4
			}
		}
	default:
		r.status = nvme.StatusInvalidField
	}
}

func (c *controller) identifyController(b []byte) {
	serial, model := "", "Nexstor discovery"
	if c.sub != nil {
		serial, model = c.sub.opts.Serial, c.sub.opts.Model
		if model == "" {
			model = "Nexstor NVMe/TCP"
		}
	}
	nvme.PutString(b[nvme.IDCtrlSN:nvme.IDCtrlSN+20], serial)
	nvme.PutString(b[nvme.IDCtrlMN:nvme.IDCtrlMN+40], model)
	nvme.PutString(b[nvme.IDCtrlFR:nvme.IDCtrlFR+8], "1.0")
	b[nvme.IDCtrlRAB] = 6
	b[nvme.IDCtrlMDTS] = mdts
	binary.LittleEndian.PutUint16(b[nvme.IDCtrlCNTLID:], c.id)
	binary.LittleEndian.PutUint32(b[nvme.IDCtrlVER:], versionValue)
	b[nvme.IDCtrlAERL] = aerLimit - 1
	b[nvme.IDCtrlLPA] = 1 << 2 // extended data for Get Log Page
	b[nvme.IDCtrlELPE] = 0     // one error log entry
	binary.LittleEndian.PutUint16(b[nvme.IDCtrlKAS:], kasUnits)
	b[nvme.IDCtrlSQES] = 0x66
	b[nvme.IDCtrlCQES] = 0x44
	binary.LittleEndian.PutUint16(b[nvme.IDCtrlMAXCMD:], MaxQueueEntries)
	binary.LittleEndian.PutUint32(b[nvme.IDCtrlSGLS:], 1|1<<20) // SGLs, offset data blocks
	if c.discovery {
		b[nvme.IDCtrlCNTRLTYPE] = nvme.CtrlDiscovery
		binary.LittleEndian.PutUint32(b[nvme.IDCtrlOAES:], nvme.OAESDiscChanged)
		copy(b[nvme.IDCtrlSUBNQN:nvme.IDCtrlSUBNQN+pdu.MaxNQN], nvme.DiscoveryNQN)
		return
	}
	b[nvme.IDCtrlCNTRLTYPE] = nvme.CtrlIO
	b[nvme.IDCtrlCMIC] = 1 << 1 // the subsystem may have several controllers
	binary.LittleEndian.PutUint32(b[nvme.IDCtrlOAES:], nvme.OAESNSAttr)
	b[nvme.IDCtrlACL] = 3
	binary.LittleEndian.PutUint32(b[nvme.IDCtrlNN:], MaxNamespaces)
	binary.LittleEndian.PutUint32(b[nvme.IDCtrlMNAN:], MaxNamespaces)
	binary.LittleEndian.PutUint16(b[nvme.IDCtrlONCS:], nvme.ONCSDSM|nvme.ONCSWriteZeroes)
	b[nvme.IDCtrlVWC] = 1
	copy(b[nvme.IDCtrlSUBNQN:nvme.IDCtrlSUBNQN+pdu.MaxNQN], c.sub.nqn)
	binary.LittleEndian.PutUint32(b[nvme.IDCtrlIOCCSZ:], (pdu.SQELen+InCapsuleDataSize)/16)
	binary.LittleEndian.PutUint32(b[nvme.IDCtrlIORCSZ:], pdu.CQELen/16)
	b[nvme.IDCtrlMSDBD] = 1
}

func identifyNamespace(b []byte, ns *namespace) {
	binary.LittleEndian.PutUint64(b[nvme.IDNsNSZE:], ns.blocks)
	binary.LittleEndian.PutUint64(b[nvme.IDNsNCAP:], ns.blocks)
	binary.LittleEndian.PutUint64(b[nvme.IDNsNUSE:], ns.blocks)
	b[nvme.IDNsNLBAF] = 0
	b[nvme.IDNsFLBAS] = 0
	b[nvme.IDNsNMIC] = 1
	// DLFEAT: deallocated blocks read as zeroes; Write Zeroes may deallocate.
	b[nvme.IDNsDLFEAT] = 0x01 | 0x08
	// NVMCAP (16 bytes at 48): capacity in bytes.
	binary.LittleEndian.PutUint64(b[48:], ns.blocks<<ns.shift)
	copy(b[nvme.IDNsNGUID:nvme.IDNsNGUID+16], ns.nguid[:])
	// LBA format 0: no metadata, 2^shift-byte blocks.
	b[nvme.IDNsLBAF0+2] = uint8(ns.shift)
}

func (c *controller) getLogPage(r *request) {
	cdw10, cdw11 := r.sqe.CDW(10), r.sqe.CDW(11)
	lid := uint8(cdw10)
	rae := cdw10&(1<<15) != 0
	numd := uint64(cdw10>>16|(cdw11&0xFFFF)<<16) + 1
	lpo := uint64(r.sqe.CDW(12)) | uint64(r.sqe.CDW(13))<<32
	if lpo&3 != 0 {
		r.status = nvme.StatusInvalidField
		return
	}
	sgl := r.sqe.SGL()
	if uint64(sgl.Length) != numd*4 {
		r.status = nvme.StatusSGLInvalidDataLength
		return
	}
	var page []byte
	switch {
	case lid == nvme.LogDiscovery && c.discovery:
		entries := c.t.discoveryEntries(c.hostNQN, c.local)
		page = make([]byte, nvme.DiscLogHeaderLen+len(entries)*nvme.DiscLogEntryLen)
		binary.LittleEndian.PutUint64(page[0:], c.t.genctr.Load())
		binary.LittleEndian.PutUint64(page[8:], uint64(len(entries)))
		for i := range entries {
			entries[i].Marshal(page[nvme.DiscLogHeaderLen+i*nvme.DiscLogEntryLen:])
		}
		if !rae {
			c.clearEvent(nvme.AENNoticeDiscChanged)
		}
	case lid == nvme.LogError:
		page = make([]byte, nvme.ErrorLogEntry)
	case lid == nvme.LogSMART && !c.discovery:
		page = make([]byte, nvme.SMARTLogLength)
		c.smart(page)
	case lid == nvme.LogChangedNS && !c.discovery:
		page = make([]byte, nvme.ChangedNSLength)
		c.mu.Lock()
		if c.overflow {
			binary.LittleEndian.PutUint32(page, 0xFFFFFFFF)
		} else {
			for i, id := range c.changed {
				binary.LittleEndian.PutUint32(page[i*4:], id)
			}
		}
		if !rae {
			c.changed, c.overflow = nil, false
		}
		c.mu.Unlock()
		if !rae {
			c.clearEvent(nvme.AENNoticeNSChanged)
		}
	default:
		r.status = nvme.StatusInvalidLogPage
		return
	}
	if lpo > uint64(len(page)) {
		r.status = nvme.StatusInvalidField
		return
	}
	b := r.outBuf()
	if b == nil {
		return
	}
	copy(b, page[lpo:])
}

// clearEvent drops a queued, not yet reported event of the given notice.
func (c *controller) clearEvent(info uint8) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, e := range c.events {
		if uint8(e>>8) == info {
			c.events = append(c.events[:i], c.events[i+1:]...)
			return
		}
	}
}

func (c *controller) smart(b []byte) {
	b[1], b[2] = 0x2A, 0x01 // composite temperature 298 K
	b[3] = 100              // available spare
	b[4] = 10               // spare threshold
	st := &c.sub.stats
	// Data units are thousands of 512-byte units, rounded up.
	put128 := func(off int, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }
	put128(32, (st.readBytes.Load()/512+999)/1000)
	put128(48, (st.writeBytes.Load()/512+999)/1000)
	put128(64, st.reads.Load())
	put128(80, st.writes.Load())
}

// io executes an NVM command in a worker.
func (c *controller) io(r *request) {
	c.touch()
	op := r.sqe.Opcode()
	if op == nvme.CmdFlush {
		c.flush(r)
		return
	}
	ns := c.sub.namespace(r.sqe.NSID())
	if ns == nil {
		r.status = nvme.StatusInvalidNS
		return
	}
	switch op {
	case nvme.CmdRead, nvme.CmdWrite, nvme.CmdWriteZeroes:
		slba := uint64(r.sqe.CDW(10)) | uint64(r.sqe.CDW(11))<<32
		nlb := uint64(r.sqe.CDW(12)&0xFFFF) + 1
		if slba >= ns.blocks || nlb > ns.blocks-slba {
			r.status = nvme.StatusLBAOutOfRange
			return
		}
		off, n := int64(slba<<ns.shift), int64(nlb<<ns.shift)
		switch op {
		case nvme.CmdRead:
			c.read(r, ns, off, n)
		case nvme.CmdWrite:
			c.write(r, ns, off, n)
		default:
			var err error
			if r.sqe.CDW(12)&(1<<25) != 0 { // DEAC
				err = ns.dev.Unmap(off, n)
			} else {
				err = ns.dev.WriteZeroes(off, n)
			}
			r.status = devStatus(err, nvme.StatusWriteFault)
		}
	case nvme.CmdDSM:
		c.dsm(r, ns)
	default:
		r.status = nvme.StatusInvalidOpcode
	}
}

func (c *controller) read(r *request, ns *namespace, off, n int64) {
	sgl := r.sqe.SGL()
	if sgl.Type != pdu.SGLTransportDataBlock {
		r.status = nvme.StatusSGLInvalidType
		return
	}
	if int64(sgl.Length) != n || n > MaxTransfer {
		r.status = nvme.StatusSGLInvalidDataLength
		return
	}
	r.getBuf(int(n))
	if _, err := ns.dev.ReadAt(r.buf, off); err != nil {
		r.status = devStatus(err, nvme.StatusUnrecoveredReadError)
		return
	}
	r.c2h = int(n)
	c.sub.stats.reads.Add(1)
	c.sub.stats.readBytes.Add(uint64(n))
}

func (c *controller) write(r *request, ns *namespace, off, n int64) {
	if int64(len(r.buf)) != n {
		r.status = nvme.StatusSGLInvalidDataLength
		return
	}
	if _, err := ns.dev.WriteAt(r.buf, off); err != nil {
		r.status = devStatus(err, nvme.StatusWriteFault)
		return
	}
	c.mu.Lock()
	wce := c.wce
	c.mu.Unlock()
	if fua := r.sqe.CDW(12)&(1<<30) != 0; fua || !wce {
		if err := ns.dev.Flush(); err != nil {
			r.status = devStatus(err, nvme.StatusWriteFault)
			return
		}
	}
	c.sub.stats.writes.Add(1)
	c.sub.stats.writeBytes.Add(uint64(n))
}

func (c *controller) flush(r *request) {
	nsid := r.sqe.NSID()
	if nsid == 0xFFFFFFFF {
		for _, id := range c.sub.nsids() {
			if ns := c.sub.namespace(id); ns != nil {
				if err := ns.dev.Flush(); err != nil {
					r.status = devStatus(err, nvme.StatusWriteFault)
					return
				}
			}
		}
		return
	}
	ns := c.sub.namespace(nsid)
	if ns == nil {
		r.status = nvme.StatusInvalidNS
		return
	}
	r.status = devStatus(ns.dev.Flush(), nvme.StatusWriteFault)
}

func (c *controller) dsm(r *request, ns *namespace) {
	// The data holds NR+1 ranges of 16 bytes. It may be longer: Linux
	// sends a whole page of ranges whatever NR is.
	nr := int(r.sqe.CDW(10)&0xFF) + 1
	if len(r.buf) < nr*16 {
		r.status = nvme.StatusSGLInvalidDataLength
		return
	}
	if r.sqe.CDW(11)&(1<<2) == 0 {
		return // only deallocate does anything; hints are accepted
	}
	for i := range nr {
		e := r.buf[i*16:]
		nlb := uint64(binary.LittleEndian.Uint32(e[4:]))
		slba := binary.LittleEndian.Uint64(e[8:])
		if nlb == 0 {
			continue
		}
		if slba >= ns.blocks || nlb > ns.blocks-slba {
			r.status = nvme.StatusLBAOutOfRange
			return
		}
		if err := ns.dev.Unmap(int64(slba<<ns.shift), int64(nlb<<ns.shift)); err != nil {
			r.status = devStatus(err, nvme.StatusWriteFault)
			return
		}
	}
}

// devStatus maps a device error to an NVMe status.
func devStatus(err error, ioStatus nvme.Status) nvme.Status {
	if err == nil {
		return nvme.StatusSuccess
	}
	var re *bdev.RangeError
	var ae *bdev.AlignmentError
	switch {
	case errors.As(err, &re):
		return nvme.StatusLBAOutOfRange
	case errors.As(err, &ae):
		return nvme.StatusInvalidField
	case errors.Is(err, bdev.ErrClosed):
		return nvme.StatusNamespaceNotReady
	}
	return ioStatus
}
