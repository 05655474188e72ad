package target

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// clockBase anchors the monotonic keep-alive clock.
var clockBase = time.Now()

func monoNow() int64 { return int64(time.Since(clockBase)) }

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

	// ctx bounds the device calls of claim operations; canceled at
	// teardown.
	ctx    context.Context
	cancel context.CancelFunc
	// claims maps NSID to the controller's claimed handle of that
	// namespace, if it claimed one. The map is copied on every change
	// (claims are rare) so that the I/O path reads it with one atomic
	// load and no lock.
	claims  atomic.Pointer[map[uint32]*nsClaim]
	claimMu sync.Mutex // serializes the controller's claim operations

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
	c.cancel()
	// The claims go with the association that made them; the device keeps
	// its owner and epoch.
	c.closeClaims()
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
		c.ctx, c.cancel = context.WithCancel(context.Background())
		if c.discovery {
			c.nIOQ = 0
		}
		if !t.addController(c) {
			if sub != nil {
				lo, hi := sub.CNTLIDRange()
				t.log.Warn("nvmf: connect refused: every controller ID of the subsystem's range is in use", "subnqn", cd.SubNQN, "hostnqn", cd.HostNQN, "cntlid_min", lo, "cntlid_max", hi)
			}
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
	c := t.controller(sub, cd.CNTLID)
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
