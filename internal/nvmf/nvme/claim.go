package nvme

import "encoding/binary"

// Nexstor's claim extension: replica ownership and fencing carried in-band,
// in the vendor-specific ranges of the NVMe spec (feature and log page
// identifiers C0h to FFh), so that hosts that know nothing of it are
// unaffected. See package target for the protocol.
const (
	// FeatClaim is the Set Features identifier of a claim command (not
	// saveable, not readable with Get Features). Its data, host to
	// controller, is a ClaimCommand of ClaimCommandLen bytes; NSID names
	// the namespace.
	FeatClaim = 0xC0
	// LogClaim is the Get Log Page identifier of a namespace's claim state
	// (NSID names the namespace): a ClaimLog of ClaimLogLen bytes.
	LogClaim = 0xC0

	// ClaimCommandLen is the length of a claim command's data in bytes.
	ClaimCommandLen = 32
	// ClaimLogLen is the length of the claim state log page in bytes.
	ClaimLogLen = 128
)

// Signatures open the claim command and the claim log, so that a vendor
// command or page of the same identifier from another implementation is
// never mistaken for one of these.
var (
	claimCommandSig = [4]byte{'N', 'X', 'C', 'L'}
	claimLogSig     = [4]byte{'N', 'X', 'C', 'S'}
)

// claimLogVersion is the layout version of the claim log.
const claimLogVersion = 1

// ClaimOp is the operation of a claim command.
type ClaimOp uint8

// Claim operations.
const (
	// ClaimOpClaim claims the namespace for Owner at Epoch; from then on
	// the controller's I/O to the namespace runs under the claim.
	ClaimOpClaim ClaimOp = 1
	// ClaimOpRaise raises the controller's claim to Epoch (Owner ignored).
	ClaimOpRaise ClaimOp = 2
	// ClaimOpRelease releases the controller's claim (Owner and Epoch
	// ignored).
	ClaimOpRelease ClaimOp = 3
)

// ClaimCommand is the data of a claim Set Features. Layout (little-endian):
//
//	0..3   signature "NXCL"
//	4      operation (ClaimOp)
//	5..7   reserved, zero
//	8..15  epoch
//	16..31 owner UUID
type ClaimCommand struct {
	Op    ClaimOp
	Epoch uint64
	Owner [16]byte
}

// Marshal writes the command into b[:ClaimCommandLen].
func (c *ClaimCommand) Marshal(b []byte) {
	_ = b[ClaimCommandLen-1]
	clear(b[:ClaimCommandLen])
	copy(b[0:4], claimCommandSig[:])
	b[4] = uint8(c.Op)
	binary.LittleEndian.PutUint64(b[8:], c.Epoch)
	copy(b[16:32], c.Owner[:])
}

// UnmarshalClaimCommand decodes a claim command. It reports false unless b
// is exactly ClaimCommandLen bytes with the signature, a known operation and
// zero reserved bytes.
func UnmarshalClaimCommand(b []byte) (ClaimCommand, bool) {
	if len(b) != ClaimCommandLen || [4]byte(b[0:4]) != claimCommandSig || b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return ClaimCommand{}, false
	}
	c := ClaimCommand{Op: ClaimOp(b[4]), Epoch: binary.LittleEndian.Uint64(b[8:])}
	copy(c.Owner[:], b[16:32])
	switch c.Op {
	case ClaimOpClaim, ClaimOpRaise, ClaimOpRelease:
		return c, true
	}
	return ClaimCommand{}, false
}

// ClaimLog is a namespace's claim state as the claim log page reports it.
// Layout (little-endian):
//
//	0..3    signature "NXCS"
//	4..5    layout version (1)
//	6       flags: bit 0 blank (the namespace holds no data)
//	7       reserved
//	8..15   epoch: the highest epoch the namespace accepted
//	16..31  namespace UUID (the replica's)
//	32..47  namespace NGUID (the replica's incarnation)
//	48..63  owner UUID; zero when unowned
//	64..127 reserved, zero
type ClaimLog struct {
	UUID, NGUID, Owner [16]byte
	Epoch              uint64
	Blank              bool
}

// Marshal writes the page into b[:ClaimLogLen].
func (l *ClaimLog) Marshal(b []byte) {
	_ = b[ClaimLogLen-1]
	clear(b[:ClaimLogLen])
	copy(b[0:4], claimLogSig[:])
	binary.LittleEndian.PutUint16(b[4:], claimLogVersion)
	if l.Blank {
		b[6] = 1
	}
	binary.LittleEndian.PutUint64(b[8:], l.Epoch)
	copy(b[16:32], l.UUID[:])
	copy(b[32:48], l.NGUID[:])
	copy(b[48:64], l.Owner[:])
}

// UnmarshalClaimLog decodes a claim log page. It reports false unless b
// holds at least ClaimLogLen bytes with the signature and a known version:
// whatever else a target answers for this log identifier is not a claim
// state.
func UnmarshalClaimLog(b []byte) (ClaimLog, bool) {
	if len(b) < ClaimLogLen || [4]byte(b[0:4]) != claimLogSig || binary.LittleEndian.Uint16(b[4:]) != claimLogVersion {
		return ClaimLog{}, false
	}
	l := ClaimLog{Epoch: binary.LittleEndian.Uint64(b[8:]), Blank: b[6]&1 != 0}
	copy(l.UUID[:], b[16:32])
	copy(l.NGUID[:], b[32:48])
	copy(l.Owner[:], b[48:64])
	return l, true
}
