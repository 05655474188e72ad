package nvme

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Asymmetric Namespace Access (NVMe Base 2.0, 8.1): how a controller reaches
// a namespace, reported per ANA group. A host with several controllers of a
// subsystem (Linux native multipath) sends I/O on the optimized paths, falls
// back to the non-optimized ones, and retries a command that one path
// refused with an ANA status on another.

// ANAState is the ANA state of an ANA group as one controller reports it.
type ANAState uint8

// ANA states (the values of the group descriptor's state field).
const (
	ANAOptimized      ANAState = 0x01
	ANANonOptimized   ANAState = 0x02
	ANAInaccessible   ANAState = 0x03
	ANAPersistentLoss ANAState = 0x04
	ANAChange         ANAState = 0x0F
)

// Valid reports whether s is one of the five ANA states.
func (s ANAState) Valid() bool {
	switch s {
	case ANAOptimized, ANANonOptimized, ANAInaccessible, ANAPersistentLoss, ANAChange:
		return true
	}
	return false
}

// Accessible reports whether I/O is executed in state s (optimized or
// non-optimized).
func (s ANAState) Accessible() bool { return s == ANAOptimized || s == ANANonOptimized }

// IOStatus is the status of an I/O command a controller refuses in state s:
// Asymmetric Access Inaccessible, Persistent Loss or Transition, none with
// DNR, so that a multipath host retries the command on another path. It is
// StatusSuccess in the accessible states.
func (s ANAState) IOStatus() Status {
	switch s {
	case ANAOptimized, ANANonOptimized:
		return StatusSuccess
	case ANAPersistentLoss:
		return StatusANAPersistentLoss
	case ANAChange:
		return StatusANATransition
	}
	return StatusANAInaccessible
}

// String returns the name Linux uses in sysfs (ana_state): "optimized",
// "non-optimized", "inaccessible", "persistent-loss", "change".
func (s ANAState) String() string {
	switch s {
	case ANAOptimized:
		return "optimized"
	case ANANonOptimized:
		return "non-optimized"
	case ANAInaccessible:
		return "inaccessible"
	case ANAPersistentLoss:
		return "persistent-loss"
	case ANAChange:
		return "change"
	}
	return fmt.Sprintf("invalid ANA state %#x", uint8(s))
}

// ParseANAState parses a state name as String writes it.
func ParseANAState(name string) (ANAState, error) {
	for _, s := range []ANAState{ANAOptimized, ANANonOptimized, ANAInaccessible, ANAPersistentLoss, ANAChange} {
		if s.String() == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("ANA state %q: want optimized, non-optimized, inaccessible, persistent-loss or change", name)
}

// Path related statuses (SCT 3h) of commands refused because of the ANA
// state. None has DNR: the host is to retry on another path.
var (
	StatusANAPersistentLoss = MakeStatus(SCTPath, 0x01)
	StatusANAInaccessible   = MakeStatus(SCTPath, 0x02)
	StatusANATransition     = MakeStatus(SCTPath, 0x03)
)

// ANA fields of Identify, the log page and the event.
const (
	// LogANA is the Asymmetric Namespace Access log page.
	LogANA = 0x0C
	// LogSpecificRGO is the Return Groups Only bit of the Get Log Page
	// LSP field (CDW10 bit 8) for LogANA: descriptors without NSIDs.
	LogSpecificRGO = 1 << 8
	// AENNoticeANAChange is the notice "ANA change": some group's
	// descriptor in the ANA log page changed.
	AENNoticeANAChange = 0x03
	// OAESANAChange is the OAES bit (and the Asynchronous Event
	// Configuration bit, Set Features 0Bh) of the ANA change notice.
	OAESANAChange = 1 << 11

	// CMIC bits of Identify Controller.
	CMICMultiPort = 1 << 0
	CMICMultiCtrl = 1 << 1
	CMICANA       = 1 << 3

	// ANACAP bits of Identify Controller.
	ANACAPOptimized      = 1 << 0
	ANACAPNonOptimized   = 1 << 1
	ANACAPInaccessible   = 1 << 2
	ANACAPPersistentLoss = 1 << 3
	ANACAPChange         = 1 << 4
	ANACAPGrpIDStatic    = 1 << 6 // ANAGRPID does not change while attached
	ANACAPGrpIDNonZero   = 1 << 7 // ANAGRPID nonzero in Namespace Management

	// Identify Controller offsets.
	IDCtrlANATT     = 342
	IDCtrlANACAP    = 343
	IDCtrlANAGRPMAX = 344
	IDCtrlNANAGRPID = 348
	// Identify Namespace (NVM) and I/O command set independent Identify
	// Namespace offsets of ANAGRPID.
	IDNsANAGRPID    = 92
	IDNsIndANAGRPID = 4

	// ANALogHeaderLen and ANAGroupDescLen are the fixed sizes of the log
	// page header and of a group descriptor without its NSIDs.
	ANALogHeaderLen = 16
	ANAGroupDescLen = 32
)

// ANAGroup is one ANA group descriptor of the ANA log page.
type ANAGroup struct {
	ID          uint32 // ANAGRPID, nonzero
	ChangeCount uint64 // incremented whenever this descriptor changes
	State       ANAState
	// NSIDs are the attached namespaces of the group, ascending (Linux
	// walks them in step with its sorted namespace list). Empty when the
	// page was read with RGO.
	NSIDs []uint32
}

// ANALog is the ANA log page (log identifier 0Ch).
type ANALog struct {
	// ChangeCount identifies the page's content: it is incremented
	// whenever the content changes.
	ChangeCount uint64
	Groups      []ANAGroup
}

// Len returns the encoded size of the page in bytes, with the NSID lists
// or, for rgo, without them.
func (l *ANALog) Len(rgo bool) int {
	n := ANALogHeaderLen
	for _, g := range l.Groups {
		n += ANAGroupDescLen
		if !rgo {
			n += 4 * len(g.NSIDs)
		}
	}
	return n
}

// Marshal encodes the page into b, which must hold l.Len(rgo) bytes; bytes
// beyond those are left alone. With rgo the descriptors carry no NSIDs and
// their NNSIDs field is 0, as the Return Groups Only flag asks.
func (l *ANALog) Marshal(b []byte, rgo bool) {
	_ = b[l.Len(rgo)-1]
	clear(b[:ANALogHeaderLen])
	binary.LittleEndian.PutUint64(b[0:], l.ChangeCount)
	binary.LittleEndian.PutUint16(b[8:], uint16(len(l.Groups)))
	p := ANALogHeaderLen
	for _, g := range l.Groups {
		d := b[p : p+ANAGroupDescLen]
		clear(d)
		binary.LittleEndian.PutUint32(d[0:], g.ID)
		binary.LittleEndian.PutUint64(d[8:], g.ChangeCount)
		d[16] = uint8(g.State) & 0x0F
		p += ANAGroupDescLen
		if rgo {
			continue
		}
		binary.LittleEndian.PutUint32(d[4:], uint32(len(g.NSIDs)))
		for _, id := range g.NSIDs {
			binary.LittleEndian.PutUint32(b[p:], id)
			p += 4
		}
	}
}

// ErrANALog reports an ANA log page that cannot be decoded.
var ErrANALog = errors.New("nvme: malformed ANA log page")

// UnmarshalANALog decodes an ANA log page from b, which may be longer than
// the page (hosts read a buffer sized for the most groups and namespaces).
// It refuses a page whose descriptors run past b, a group ID of 0, an
// invalid state, or NSIDs that are zero or not ascending: the checks Linux
// makes before it trusts a page. At most maxNSIDs NSIDs are accepted in
// all, so that a hostile page cannot make it allocate much.
func UnmarshalANALog(b []byte, maxNSIDs int) (ANALog, error) {
	if len(b) < ANALogHeaderLen {
		return ANALog{}, fmt.Errorf("%w: %d bytes, the header alone is %d", ErrANALog, len(b), ANALogHeaderLen)
	}
	l := ANALog{ChangeCount: binary.LittleEndian.Uint64(b[0:])}
	n := int(binary.LittleEndian.Uint16(b[8:]))
	if n > (len(b)-ANALogHeaderLen)/ANAGroupDescLen {
		return ANALog{}, fmt.Errorf("%w: %d group descriptors do not fit in %d bytes", ErrANALog, n, len(b))
	}
	l.Groups = make([]ANAGroup, 0, n)
	p, total := ANALogHeaderLen, 0
	for i := range n {
		if len(b)-p < ANAGroupDescLen {
			return ANALog{}, fmt.Errorf("%w: descriptor %d at byte %d runs past %d bytes", ErrANALog, i, p, len(b))
		}
		d := b[p : p+ANAGroupDescLen]
		g := ANAGroup{
			ID:          binary.LittleEndian.Uint32(d[0:]),
			ChangeCount: binary.LittleEndian.Uint64(d[8:]),
			State:       ANAState(d[16] & 0x0F),
		}
		nn := binary.LittleEndian.Uint32(d[4:])
		p += ANAGroupDescLen
		switch {
		case g.ID == 0:
			return ANALog{}, fmt.Errorf("%w: descriptor %d has group ID 0", ErrANALog, i)
		case !g.State.Valid():
			return ANALog{}, fmt.Errorf("%w: group %d: %v", ErrANALog, g.ID, g.State)
		case uint64(nn) > uint64(len(b)-p)/4:
			return ANALog{}, fmt.Errorf("%w: group %d: %d NSIDs run past %d bytes", ErrANALog, g.ID, nn, len(b))
		case total+int(nn) > maxNSIDs:
			return ANALog{}, fmt.Errorf("%w: more than %d NSIDs", ErrANALog, maxNSIDs)
		}
		total += int(nn)
		if nn > 0 {
			g.NSIDs = make([]uint32, nn)
		}
		for j := range g.NSIDs {
			id := binary.LittleEndian.Uint32(b[p:])
			if id == 0 || (j > 0 && id <= g.NSIDs[j-1]) {
				return ANALog{}, fmt.Errorf("%w: group %d: NSID %d at position %d is zero or not ascending", ErrANALog, g.ID, id, j)
			}
			g.NSIDs[j] = id
			p += 4
		}
		l.Groups = append(l.Groups, g)
	}
	return l, nil
}
