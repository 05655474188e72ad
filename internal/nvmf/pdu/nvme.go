package pdu

import "encoding/binary"

// SQELen and CQELen are the sizes of NVMe submission and completion queue
// entries.
const (
	SQELen = 64
	CQELen = 16
)

// SQE is a 64-byte NVMe submission queue entry (command), little-endian.
// Accessors name the common dwords; command-specific fields are read from
// CDW10..CDW15.
type SQE [SQELen]byte

// Opcode is byte 0.
func (s *SQE) Opcode() uint8 { return s[0] }

// Flags is byte 1: FUSE in bits 1:0, PSDT in bits 7:6 (fabrics always use
// SGLs: PSDT 01b).
func (s *SQE) Flags() uint8 { return s[1] }

// CID is the command identifier.
func (s *SQE) CID() uint16 { return binary.LittleEndian.Uint16(s[2:]) }

// NSID is the namespace identifier (for fabrics commands byte 4 is FCTYPE).
func (s *SQE) NSID() uint32 { return binary.LittleEndian.Uint32(s[4:]) }

// FCType is the fabrics command type (opcode 0x7F).
func (s *SQE) FCType() uint8 { return s[4] }

// SGL returns the data pointer as an SGL descriptor.
func (s *SQE) SGL() SGL { return UnmarshalSGL(s[24:40]) }

// CDW returns command dword n (10..15).
func (s *SQE) CDW(n int) uint32 { return binary.LittleEndian.Uint32(s[n*4:]) }

// SetOpcode and the other setters fill the entry.
func (s *SQE) SetOpcode(op uint8) { s[0] = op }

// SetFlags sets byte 1.
func (s *SQE) SetFlags(f uint8) { s[1] = f }

// SetCID sets the command identifier.
func (s *SQE) SetCID(cid uint16) { binary.LittleEndian.PutUint16(s[2:], cid) }

// SetNSID sets the namespace identifier.
func (s *SQE) SetNSID(nsid uint32) { binary.LittleEndian.PutUint32(s[4:], nsid) }

// SetFCType sets the fabrics command type.
func (s *SQE) SetFCType(t uint8) { s[4] = t }

// SetSGL sets the data pointer.
func (s *SQE) SetSGL(d SGL) { d.Marshal(s[24:40]) }

// SetCDW sets command dword n.
func (s *SQE) SetCDW(n int, v uint32) { binary.LittleEndian.PutUint32(s[n*4:], v) }

// Reset zeroes the entry.
func (s *SQE) Reset() { *s = SQE{} }

// PSDTSGL is the Flags value for "SGLs used, metadata pointer is an address",
// the only data transfer type fabrics allow.
const PSDTSGL = 0x40

// SGL descriptor type byte values used by NVMe/TCP: the high nibble is the
// descriptor type, the low nibble the subtype.
const (
	// SGLDataBlockOffset describes in-capsule data: Address is an offset
	// into the capsule's data (which must be 0 as ICDOFF is 0).
	SGLDataBlockOffset uint8 = 0x01
	// SGLTransportDataBlock describes data moved by the transport
	// (C2HData for reads, R2T/H2CData for writes).
	SGLTransportDataBlock uint8 = 0x5A
)

// SGL is a 16-byte SGL descriptor.
type SGL struct {
	Address uint64
	Length  uint32
	Type    uint8 // descriptor type << 4 | subtype
}

// Marshal writes the descriptor into b[0:16].
func (d SGL) Marshal(b []byte) {
	_ = b[15]
	binary.LittleEndian.PutUint64(b, d.Address)
	binary.LittleEndian.PutUint32(b[8:], d.Length)
	b[12], b[13], b[14] = 0, 0, 0
	b[15] = d.Type
}

// UnmarshalSGL decodes a descriptor from b[0:16].
func UnmarshalSGL(b []byte) SGL {
	_ = b[15]
	return SGL{Address: binary.LittleEndian.Uint64(b), Length: binary.LittleEndian.Uint32(b[8:]), Type: b[15]}
}

// CQE is an NVMe completion queue entry.
type CQE struct {
	Result uint64 // DW0 (low 32 bits) and DW1
	SQHD   uint16 // submission queue head pointer
	SQID   uint16
	CID    uint16
	// Status is the status field without the phase tag: bits 7:0 SC,
	// 10:8 SCT, 12:11 CRD, 13 More, 14 DNR (the wire field is Status<<1).
	Status uint16
}

// Marshal writes the entry into b[0:16]; the phase tag is always 0.
func (c *CQE) Marshal(b []byte) {
	_ = b[15]
	binary.LittleEndian.PutUint64(b, c.Result)
	binary.LittleEndian.PutUint16(b[8:], c.SQHD)
	binary.LittleEndian.PutUint16(b[10:], c.SQID)
	binary.LittleEndian.PutUint16(b[12:], c.CID)
	binary.LittleEndian.PutUint16(b[14:], c.Status<<1)
}

// UnmarshalCQE decodes an entry from b[0:16].
func UnmarshalCQE(b []byte) CQE {
	_ = b[15]
	return CQE{
		Result: binary.LittleEndian.Uint64(b),
		SQHD:   binary.LittleEndian.Uint16(b[8:]),
		SQID:   binary.LittleEndian.Uint16(b[10:]),
		CID:    binary.LittleEndian.Uint16(b[12:]),
		Status: binary.LittleEndian.Uint16(b[14:]) >> 1,
	}
}

// ConnectDataLen is the size of the Connect command's data.
const ConnectDataLen = 1024

// ConnectData is the data of a Fabrics Connect command.
type ConnectData struct {
	HostID  [16]byte
	CNTLID  uint16 // 0xFFFF: dynamic controller model, any controller
	SubNQN  string
	HostNQN string
}

// NQNLen is the size of an NQN field (NUL-terminated, at most 223 bytes used).
const NQNLen = 256

// MaxNQN is the longest valid NQN in bytes.
const MaxNQN = 223

// Marshal writes the Connect data into b[0:1024].
func (c *ConnectData) Marshal(b []byte) {
	_ = b[ConnectDataLen-1]
	clear(b[:ConnectDataLen])
	copy(b[0:16], c.HostID[:])
	binary.LittleEndian.PutUint16(b[16:], c.CNTLID)
	copy(b[256:256+NQNLen-1], c.SubNQN)
	copy(b[512:512+NQNLen-1], c.HostNQN)
}

// UnmarshalConnectData decodes Connect data from b (at least 1024 bytes).
// NQN fields end at their first NUL.
func UnmarshalConnectData(b []byte) (ConnectData, bool) {
	if len(b) < ConnectDataLen {
		return ConnectData{}, false
	}
	var c ConnectData
	copy(c.HostID[:], b[0:16])
	c.CNTLID = binary.LittleEndian.Uint16(b[16:])
	c.SubNQN = CString(b[256 : 256+NQNLen])
	c.HostNQN = CString(b[512 : 512+NQNLen])
	return c, true
}

// CString returns b up to its first NUL byte, as a string.
func CString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
