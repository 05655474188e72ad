package target

import (
	"encoding/binary"
	"time"

	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

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
	if fid == nvme.FeatClaim {
		// Not under c.mu: a claim is a durable device operation.
		c.claimFeature(r)
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
			binary.LittleEndian.PutUint32(b[nvme.IDNsIndANAGRPID:], ANAGroupID)
			b[nvme.IDNsIndNSTA] = 1
		case nvme.CNSNSDescList:
			p := 0
			var zero [16]byte
			if ns.nguid != zero {
				b[p], b[p+1] = nvme.NIDTNGUID, 16
				copy(b[p+4:], ns.nguid[:])
				p += 20
			}
			if ns.uuid != zero {
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
	// The subsystem may have several controllers, and reports ANA.
	b[nvme.IDCtrlCMIC] = nvme.CMICMultiCtrl | nvme.CMICANA
	binary.LittleEndian.PutUint32(b[nvme.IDCtrlOAES:], nvme.OAESNSAttr|nvme.OAESANAChange)
	b[nvme.IDCtrlANATT] = ANATransitionTime
	b[nvme.IDCtrlANACAP] = nvme.ANACAPOptimized | nvme.ANACAPNonOptimized | nvme.ANACAPInaccessible |
		nvme.ANACAPPersistentLoss | nvme.ANACAPChange | nvme.ANACAPGrpIDStatic
	binary.LittleEndian.PutUint32(b[nvme.IDCtrlANAGRPMAX:], ANAGroupID)
	binary.LittleEndian.PutUint32(b[nvme.IDCtrlNANAGRPID:], 1)
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
	blocks := ns.blocks.Load()
	binary.LittleEndian.PutUint64(b[nvme.IDNsNSZE:], blocks)
	binary.LittleEndian.PutUint64(b[nvme.IDNsNCAP:], blocks)
	binary.LittleEndian.PutUint64(b[nvme.IDNsNUSE:], blocks)
	b[nvme.IDNsNLBAF] = 0
	b[nvme.IDNsFLBAS] = 0
	b[nvme.IDNsNMIC] = 1
	// DLFEAT: deallocated blocks read as zeroes; Write Zeroes may deallocate.
	b[nvme.IDNsDLFEAT] = 0x01 | 0x08
	// NVMCAP (16 bytes at 48): capacity in bytes.
	binary.LittleEndian.PutUint64(b[48:], blocks<<ns.shift)
	binary.LittleEndian.PutUint32(b[nvme.IDNsANAGRPID:], ANAGroupID)
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
	case lid == nvme.LogANA && !c.discovery:
		// LSP bit 0 (RGO): the group descriptors without their NSIDs.
		// The NSID is not looked at: the page is the controller's.
		rgo := cdw10&nvme.LogSpecificRGO != 0
		l := c.sub.anaLog()
		page = make([]byte, l.Len(rgo))
		l.Marshal(page, rgo)
		if !rae {
			c.clearEvent(nvme.AENNoticeANAChange)
		}
	case lid == nvme.LogClaim && !c.discovery:
		var st nvme.Status
		if page, st = c.claimLog(r.sqe.NSID()); !st.Success() {
			r.status = st
			return
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
