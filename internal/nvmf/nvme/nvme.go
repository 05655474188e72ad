// Package nvme holds the NVMe and NVMe over Fabrics definitions shared by the
// target and the initiator: opcodes, status codes, controller properties and
// the layouts of Identify data, log pages and the discovery log (NVMe Base
// 1.4/2.0, NVMe-oF 1.1). All multi-byte fields are little-endian.
package nvme

import (
	"encoding/binary"
	"fmt"
)

// Admin command opcodes.
const (
	AdminGetLogPage  = 0x02
	AdminIdentify    = 0x06
	AdminAbort       = 0x08
	AdminSetFeatures = 0x09
	AdminGetFeatures = 0x0A
	AdminAsyncEvent  = 0x0C
	AdminKeepAlive   = 0x18
	Fabrics          = 0x7F
)

// NVM command set opcodes.
const (
	CmdFlush       = 0x00
	CmdWrite       = 0x01
	CmdRead        = 0x02
	CmdWriteZeroes = 0x08
	CmdDSM         = 0x09
)

// Fabrics command types (FCTYPE, byte 4 of a fabrics command).
const (
	FctPropertySet = 0x00
	FctConnect     = 0x01
	FctPropertyGet = 0x04
	FctAuthSend    = 0x05
	FctAuthRecv    = 0x06
	FctDisconnect  = 0x08
)

// Controller property offsets.
const (
	PropCAP  = 0x00
	PropVS   = 0x08
	PropCC   = 0x14
	PropCSTS = 0x1C
)

// CC and CSTS bits.
const (
	CCEnable     = 1 << 0
	CCShnShift   = 14
	CCShnMask    = 3 << CCShnShift
	CSTSReady    = 1 << 0
	CSTSFatal    = 1 << 1
	CSTSShstDone = 2 << 2
)

// Status is an NVMe status field without the phase tag: SC in bits 7:0,
// SCT in bits 10:8, DNR in bit 14.
type Status uint16

// Status code types.
const (
	SCTGeneric  = 0
	SCTSpecific = 1
	SCTMedia    = 2
	SCTPath     = 3
)

// MakeStatus combines a status code type and status code.
func MakeStatus(sct, sc uint8) Status { return Status(uint16(sct&7)<<8 | uint16(sc)) }

// Status values used here (generic and command specific). Reservation
// Conflict, what real NVMe answers a host that a reservation fences, is here
// the answer to I/O or a claim refused because a newer claim or another
// owner holds the namespace.
var (
	StatusSuccess               = MakeStatus(SCTGeneric, 0x00)
	StatusInvalidOpcode         = MakeStatus(SCTGeneric, 0x01) | DNR
	StatusInvalidField          = MakeStatus(SCTGeneric, 0x02) | DNR
	StatusCIDConflict           = MakeStatus(SCTGeneric, 0x03) | DNR
	StatusDataTransferError     = MakeStatus(SCTGeneric, 0x04)
	StatusInternal              = MakeStatus(SCTGeneric, 0x06)
	StatusAborted               = MakeStatus(SCTGeneric, 0x07)
	StatusInvalidNS             = MakeStatus(SCTGeneric, 0x0B) | DNR
	StatusCommandSequence       = MakeStatus(SCTGeneric, 0x0C) | DNR
	StatusSGLInvalidDataLength  = MakeStatus(SCTGeneric, 0x0F) | DNR
	StatusSGLInvalidType        = MakeStatus(SCTGeneric, 0x11) | DNR
	StatusSGLInvalidOffset      = MakeStatus(SCTGeneric, 0x16) | DNR
	StatusTransientTransport    = MakeStatus(SCTGeneric, 0x22)
	StatusLBAOutOfRange         = MakeStatus(SCTGeneric, 0x80) | DNR
	StatusCapacityExceeded      = MakeStatus(SCTGeneric, 0x81) | DNR
	StatusReservationConflict   = MakeStatus(SCTGeneric, 0x83) | DNR
	StatusInvalidLogPage        = MakeStatus(SCTSpecific, 0x09) | DNR
	StatusAERLimitExceeded      = MakeStatus(SCTSpecific, 0x05) | DNR
	StatusFeatureNotChangeable  = MakeStatus(SCTSpecific, 0x0E) | DNR
	StatusInvalidQueueID        = MakeStatus(SCTSpecific, 0x01) | DNR
	StatusInvalidQueueSize      = MakeStatus(SCTSpecific, 0x02) | DNR
	StatusConnectIncompatible   = MakeStatus(SCTSpecific, 0x80) | DNR
	StatusConnectCtrlBusy       = MakeStatus(SCTSpecific, 0x81)
	StatusConnectInvalidParam   = MakeStatus(SCTSpecific, 0x82) | DNR
	StatusConnectRestartDisc    = MakeStatus(SCTSpecific, 0x83) | DNR
	StatusConnectInvalidHost    = MakeStatus(SCTSpecific, 0x84) | DNR
	StatusWriteFault            = MakeStatus(SCTMedia, 0x80)
	StatusUnrecoveredReadError  = MakeStatus(SCTMedia, 0x81)
	StatusNamespaceNotReady     = MakeStatus(SCTGeneric, 0x82)
	StatusHostPathError         = MakeStatus(SCTPath, 0x70)
	StatusFeatureNotSaveable    = MakeStatus(SCTSpecific, 0x0D) | DNR
	StatusInvalidControllerID   = MakeStatus(SCTSpecific, 0x1F) | DNR
	StatusUnsupportedFeatureSel = StatusInvalidField
)

// DNR is the Do Not Retry bit of a status.
const DNR Status = 1 << 14

// SCT returns the status code type.
func (s Status) SCT() uint8 { return uint8(s>>8) & 7 }

// SC returns the status code.
func (s Status) SC() uint8 { return uint8(s) }

// Success reports whether the status is a success.
func (s Status) Success() bool { return s.SCT() == 0 && s.SC() == 0 }

// Error makes a non-success status usable as an error.
func (s Status) Error() string {
	return fmt.Sprintf("nvme status %s (SCT %d, SC %#02x%s)", s.name(), s.SCT(), s.SC(), map[bool]string{true: ", DNR"}[s&DNR != 0])
}

func (s Status) name() string {
	switch s &^ DNR &^ (3 << 11) &^ (1 << 13) {
	case StatusInvalidOpcode &^ DNR:
		return "invalid opcode"
	case StatusInvalidField &^ DNR:
		return "invalid field"
	case StatusDataTransferError:
		return "data transfer error"
	case StatusInternal:
		return "internal error"
	case StatusAborted:
		return "aborted"
	case StatusInvalidNS &^ DNR:
		return "invalid namespace"
	case StatusCommandSequence &^ DNR:
		return "command sequence error"
	case StatusTransientTransport:
		return "transient transport error"
	case StatusLBAOutOfRange &^ DNR:
		return "LBA out of range"
	case StatusCapacityExceeded &^ DNR:
		return "capacity exceeded"
	case StatusNamespaceNotReady:
		return "namespace not ready"
	case StatusReservationConflict &^ DNR:
		return "reservation conflict"
	case StatusConnectInvalidHost &^ DNR:
		return "connect invalid host"
	case StatusConnectInvalidParam &^ DNR:
		return "connect invalid parameters"
	case StatusConnectIncompatible &^ DNR:
		return "connect incompatible format"
	case StatusWriteFault:
		return "write fault"
	case StatusUnrecoveredReadError:
		return "unrecovered read error"
	case StatusInvalidLogPage &^ DNR:
		return "invalid log page"
	case StatusANAInaccessible:
		return "asymmetric access inaccessible"
	case StatusANAPersistentLoss:
		return "asymmetric access persistent loss"
	case StatusANATransition:
		return "asymmetric access transition"
	}
	return "error"
}

// Identify CNS values.
const (
	CNSNamespace       = 0x00
	CNSController      = 0x01
	CNSActiveNSList    = 0x02
	CNSNSDescList      = 0x03
	CNSNSIndependent   = 0x08 // I/O command set independent Identify Namespace
	IdentifyDataLength = 4096
)

// Namespace identification descriptor types.
const (
	NIDTEUI64 = 0x01
	NIDTNGUID = 0x02
	NIDTUUID  = 0x03
	NIDTCSI   = 0x04
)

// Log page identifiers.
const (
	LogError        = 0x01
	LogSMART        = 0x02
	LogChangedNS    = 0x04
	LogDiscovery    = 0x70
	ErrorLogEntry   = 64
	SMARTLogLength  = 512
	ChangedNSLength = 4096
)

// Feature identifiers.
const (
	FeatVolatileWC   = 0x06
	FeatNumQueues    = 0x07
	FeatAsyncEvent   = 0x0B
	FeatKeepAlive    = 0x0F
	FeatArbitration  = 0x01
	FeatPowerMgmt    = 0x02
	FeatTempThresh   = 0x04
	FeatErrRecovery  = 0x05
	FeatIRQCoalesce  = 0x08
	FeatWriteAtomic  = 0x0A
	FeatHostBehavior = 0x16
)

// Asynchronous event completion values (DW0 of an AER completion).
const (
	AENTypeNotice        = 0x02
	AENNoticeNSChanged   = 0x00
	AENNoticeDiscChanged = 0xF0
	// OAES bits in Identify Controller.
	OAESNSAttr      = 1 << 8
	OAESDiscChanged = 1 << 31
)

// AENResult builds DW0 of an asynchronous event completion.
func AENResult(typ, info, logPage uint8) uint32 {
	return uint32(typ) | uint32(info)<<8 | uint32(logPage)<<16
}

// Controller types (CNTRLTYPE).
const (
	CtrlIO        = 1
	CtrlDiscovery = 2
)

// DiscoveryNQN is the well-known NQN of the discovery subsystem.
const DiscoveryNQN = "nqn.2014-08.org.nvmexpress.discovery"

// Discovery log layout.
const (
	DiscLogHeaderLen = 1024
	DiscLogEntryLen  = 1024
	TrTypeTCP        = 3
	AdrFamIPv4       = 1
	AdrFamIPv6       = 2
	SubTypeReferral  = 1
	SubTypeNVMe      = 2
	SubTypeCurDisc   = 3
	TreqNotSpecified = 0
	TreqNotRequired  = 2
	TreqDisableSQFC  = 1 << 2
)

// DiscoveryEntry is one record of the discovery log page.
type DiscoveryEntry struct {
	TrType  uint8
	AdrFam  uint8
	SubType uint8
	TReq    uint8
	PortID  uint16
	CNTLID  uint16
	ASQSZ   uint16
	TrSvcID string
	SubNQN  string
	TrAddr  string
	SecType uint8 // TSAS for TCP: security type (0: none)
}

// Marshal writes the entry into b[0:1024].
func (e *DiscoveryEntry) Marshal(b []byte) {
	_ = b[DiscLogEntryLen-1]
	clear(b[:DiscLogEntryLen])
	b[0], b[1], b[2], b[3] = e.TrType, e.AdrFam, e.SubType, e.TReq
	binary.LittleEndian.PutUint16(b[4:], e.PortID)
	binary.LittleEndian.PutUint16(b[6:], e.CNTLID)
	binary.LittleEndian.PutUint16(b[8:], e.ASQSZ)
	copy(b[32:64], e.TrSvcID)
	copy(b[256:511], e.SubNQN)
	copy(b[512:768], e.TrAddr)
	b[768] = e.SecType
}

// UnmarshalDiscoveryEntry decodes an entry from b[0:1024]; strings end at
// NUL and trailing spaces are trimmed.
func UnmarshalDiscoveryEntry(b []byte) DiscoveryEntry {
	_ = b[DiscLogEntryLen-1]
	return DiscoveryEntry{
		TrType: b[0], AdrFam: b[1], SubType: b[2], TReq: b[3],
		PortID:  binary.LittleEndian.Uint16(b[4:]),
		CNTLID:  binary.LittleEndian.Uint16(b[6:]),
		ASQSZ:   binary.LittleEndian.Uint16(b[8:]),
		TrSvcID: trimField(b[32:64]),
		SubNQN:  trimField(b[256:512]),
		TrAddr:  trimField(b[512:768]),
		SecType: b[768],
	}
}

func trimField(b []byte) string {
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	for n > 0 && b[n-1] == ' ' {
		n--
	}
	return string(b[:n])
}

// PutString copies s into a fixed-width ASCII field, padded with spaces
// (serial number, model, firmware revision).
func PutString(dst []byte, s string) {
	n := copy(dst, s)
	for i := n; i < len(dst); i++ {
		dst[i] = ' '
	}
}

// IdentifyController field offsets used by this package's users.
const (
	IDCtrlVID       = 0
	IDCtrlSN        = 4
	IDCtrlMN        = 24
	IDCtrlFR        = 64
	IDCtrlRAB       = 72
	IDCtrlCMIC      = 76
	IDCtrlMDTS      = 77
	IDCtrlCNTLID    = 78
	IDCtrlVER       = 80
	IDCtrlOAES      = 92
	IDCtrlCTRATT    = 96
	IDCtrlCNTRLTYPE = 111
	IDCtrlOACS      = 256
	IDCtrlACL       = 258
	IDCtrlAERL      = 259
	IDCtrlFRMW      = 260
	IDCtrlLPA       = 261
	IDCtrlELPE      = 262
	IDCtrlKAS       = 320
	IDCtrlSQES      = 512
	IDCtrlCQES      = 513
	IDCtrlMAXCMD    = 514
	IDCtrlNN        = 516
	IDCtrlONCS      = 520
	IDCtrlFUSES     = 522
	IDCtrlVWC       = 525
	IDCtrlSGLS      = 536
	IDCtrlMNAN      = 540
	IDCtrlSUBNQN    = 768
	IDCtrlIOCCSZ    = 1792
	IDCtrlIORCSZ    = 1796
	IDCtrlICDOFF    = 1800
	IDCtrlFCATT     = 1802
	IDCtrlMSDBD     = 1803
)

// Identify Namespace field offsets.
const (
	IDNsNSZE    = 0
	IDNsNCAP    = 8
	IDNsNUSE    = 16
	IDNsNSFEAT  = 24
	IDNsNLBAF   = 25
	IDNsFLBAS   = 26
	IDNsDLFEAT  = 33
	IDNsNMIC    = 30
	IDNsNOWS    = 72
	IDNsNGUID   = 104
	IDNsEUI64   = 120
	IDNsLBAF0   = 128
	IDNsIndNSTA = 14 // NSTAT in the I/O command set independent structure
)

// ONCS bits.
const (
	ONCSDSM         = 1 << 2
	ONCSWriteZeroes = 1 << 3
)
