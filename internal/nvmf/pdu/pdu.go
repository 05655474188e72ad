// Package pdu is the NVMe/TCP wire format (NVMe/TCP Transport Specification
// 1.0): the PDU common header, every PDU type, header and data digests
// (CRC32C), and the NVMe submission and completion queue entries and SGL
// descriptors that capsules carry.
//
// Decoding is strict and bounded: every length comes from the wire, so each is
// checked against the PDU type's fixed header length and a caller-supplied data
// limit before a byte of payload is read. A malformed PDU yields an *Error that
// carries the Fatal Error Status (FES) and Fatal Error Information (FEI) a
// receiver puts into its TermReq; the decoder never panics and never allocates.
package pdu

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Type is the PDU-Type field of the common header.
type Type uint8

// PDU types (NVMe/TCP 1.0, figure 21).
const (
	TypeICReq       Type = 0x00
	TypeICResp      Type = 0x01
	TypeH2CTermReq  Type = 0x02
	TypeC2HTermReq  Type = 0x03
	TypeCapsuleCmd  Type = 0x04
	TypeCapsuleResp Type = 0x05
	TypeH2CData     Type = 0x06
	TypeC2HData     Type = 0x07
	TypeR2T         Type = 0x09
)

func (t Type) String() string {
	switch t {
	case TypeICReq:
		return "ICReq"
	case TypeICResp:
		return "ICResp"
	case TypeH2CTermReq:
		return "H2CTermReq"
	case TypeC2HTermReq:
		return "C2HTermReq"
	case TypeCapsuleCmd:
		return "CapsuleCmd"
	case TypeCapsuleResp:
		return "CapsuleResp"
	case TypeH2CData:
		return "H2CData"
	case TypeC2HData:
		return "C2HData"
	case TypeR2T:
		return "R2T"
	}
	return fmt.Sprintf("PDU type %#x", uint8(t))
}

// Common header flags.
const (
	FlagHDGST   uint8 = 0x01 // a header digest follows the PDU header
	FlagDDGST   uint8 = 0x02 // a data digest follows the PDU data
	FlagLast    uint8 = 0x04 // H2CData/C2HData: last PDU of the data transfer
	FlagSuccess uint8 = 0x08 // C2HData: command completed successfully, no CapsuleResp follows
)

// Fixed header lengths (HLEN) per PDU type.
const (
	CommonHeaderLen = 8
	ICReqLen        = 128
	ICRespLen       = 128
	TermReqLen      = 24
	CapsuleCmdLen   = CommonHeaderLen + SQELen // 72
	CapsuleRespLen  = CommonHeaderLen + CQELen // 24
	DataHeaderLen   = 24                       // H2CData, C2HData
	R2TLen          = 24
	DigestLen       = 4

	// MaxHeaderLen bounds every PDU header (ICReq/ICResp) plus its digest.
	MaxHeaderLen = ICReqLen + DigestLen
	// MaxTermReqData is the largest error data a TermReq may carry
	// (PLEN at most 152 bytes).
	MaxTermReqData = 128
)

// Fatal Error Status values carried by H2CTermReq and C2HTermReq.
const (
	FESInvalidHeaderField   uint16 = 0x01
	FESSequenceError        uint16 = 0x02
	FESHeaderDigestError    uint16 = 0x03
	FESDataOutOfRange       uint16 = 0x04
	FESDataLimitExceeded    uint16 = 0x05 // also R2T limit exceeded
	FESUnsupportedParameter uint16 = 0x06
)

// PFV0 is the only PDU format version defined (PFV 0).
const PFV0 = 0

// castagnoli is the CRC32C table used by header and data digests.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Digest returns the CRC32C of b as NVMe/TCP stores it (little-endian on the
// wire; the value is the standard CRC32C with initial and final inversion).
func Digest(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// UpdateDigest continues a CRC32C over more bytes; start with 0.
func UpdateDigest(crc uint32, b []byte) uint32 { return crc32.Update(crc, castagnoli, b) }

// Header is the 8-byte common header that starts every PDU.
type Header struct {
	Type  Type
	Flags uint8
	HLen  uint8  // length of the PDU header, without the header digest
	PDO   uint8  // offset of the data from the start of the PDU; 0 when none
	PLen  uint32 // length of the whole PDU, digests and padding included
}

// Marshal writes the common header into b[0:8].
func (h Header) Marshal(b []byte) {
	_ = b[7]
	b[0] = byte(h.Type)
	b[1] = h.Flags
	b[2] = h.HLen
	b[3] = h.PDO
	binary.LittleEndian.PutUint32(b[4:], h.PLen)
}

// UnmarshalHeader decodes the common header from b[0:8].
func UnmarshalHeader(b []byte) Header {
	_ = b[7]
	return Header{Type: Type(b[0]), Flags: b[1], HLen: b[2], PDO: b[3], PLen: binary.LittleEndian.Uint32(b[4:])}
}

// ICReq is the host's Initialize Connection Request.
type ICReq struct {
	PFV          uint16
	HPDA         uint8  // host PDU data alignment, in dwords, 0's based (0..31)
	HeaderDigest bool   // host requests header digests
	DataDigest   bool   // host requests data digests
	MaxR2T       uint32 // maximum outstanding R2Ts per command, 0's based
}

// ICResp is the controller's Initialize Connection Response.
type ICResp struct {
	PFV          uint16
	CPDA         uint8 // controller PDU data alignment, in dwords, 0's based
	HeaderDigest bool
	DataDigest   bool
	MaxH2CData   uint32 // largest H2CData payload the controller accepts, bytes
}

// TermReq is an H2CTermReq or C2HTermReq: a fatal transport error.
type TermReq struct {
	FES uint16
	FEI uint32 // for FES 1: the byte offset of the bad header field
	// Data is a copy of the offending PDU header (at most MaxTermReqData
	// bytes). Decoding returns a slice of the decoder's scratch buffer,
	// valid until the next call.
	Data []byte
}

// DataHeader is the specific header of H2CData and C2HData PDUs.
type DataHeader struct {
	CCCID uint16 // command capsule CID the data belongs to
	TTag  uint16 // H2CData: the transfer tag from the R2T; C2HData: reserved
	DataO uint32 // offset of this PDU's data within the command's data
	DataL uint32 // length of this PDU's data
}

// R2T is a Ready to Transfer: the controller asks for R2TL bytes at R2TO.
type R2T struct {
	CCCID uint16
	TTag  uint16
	R2TO  uint32
	R2TL  uint32
}

// Error is a malformed PDU. FES and FEI are what the receiver reports in the
// TermReq it sends before closing the connection.
type Error struct {
	FES uint16
	FEI uint32
	Msg string
}

func (e *Error) Error() string {
	return fmt.Sprintf("nvme/tcp: %s (FES %#x, FEI %d)", e.Msg, e.FES, e.FEI)
}

// DataDigestError reports a data digest mismatch. It is not fatal to the
// connection: the receiver still consumed the whole PDU, and a controller
// completes the command with a Transient Transport Error.
type DataDigestError struct {
	Got, Want uint32
}

func (e *DataDigestError) Error() string {
	return fmt.Sprintf("nvme/tcp: data digest mismatch: got %#08x, computed %#08x", e.Got, e.Want)
}

// HeaderLen returns the fixed HLEN of a PDU type, or 0 for an unknown type.
func HeaderLen(t Type) int {
	switch t {
	case TypeICReq:
		return ICReqLen
	case TypeICResp:
		return ICRespLen
	case TypeH2CTermReq, TypeC2HTermReq:
		return TermReqLen
	case TypeCapsuleCmd:
		return CapsuleCmdLen
	case TypeCapsuleResp:
		return CapsuleRespLen
	case TypeH2CData, TypeC2HData:
		return DataHeaderLen
	case TypeR2T:
		return R2TLen
	}
	return 0
}

// hasData reports whether a PDU type may carry data.
func hasData(t Type) bool {
	switch t {
	case TypeCapsuleCmd, TypeH2CData, TypeC2HData, TypeH2CTermReq, TypeC2HTermReq:
		return true
	}
	return false
}

// digestible reports whether digests apply to a PDU type: never to the
// initialization PDUs, nor to TermReqs (their digest flags are cleared).
func digestible(t Type) bool {
	switch t {
	case TypeICReq, TypeICResp, TypeH2CTermReq, TypeC2HTermReq:
		return false
	}
	return true
}
