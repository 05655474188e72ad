package pool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"unicode/utf8"
)

// On-disk format constants; docs/pool-format.md describes the layout byte by
// byte. All integers are little-endian, all checksums CRC32C (Castagnoli).
const (
	// FormatVersion is the on-disk format this package writes. It reads
	// version 1 too, and upgrades such a pool in place when importing it.
	FormatVersion = 2
	// formatV1 is the version before replica identities and feature flags.
	formatV1 = 1

	// DefaultOvercommit is the thin over-commit limit, in percent of the
	// pool's capacity, when CreateOptions.Overcommit is 0.
	DefaultOvercommit = 250
	// MinOvercommit and MaxOvercommit bound the over-commit limit (percent).
	MinOvercommit = 100
	MaxOvercommit = 100000

	// DefaultClusterSize is the cluster size used when CreateOptions leaves it 0.
	DefaultClusterSize = 4 << 20
	// MinClusterSize is the smallest cluster size Create accepts.
	MinClusterSize = 64 << 10
	// MaxClusterSize is the largest cluster size Create accepts.
	MaxClusterSize = 1 << 30
	// MaxNameLen bounds pool and replica names, in bytes.
	MaxNameLen = 128
	// MaxReplicaClusters bounds the clusters one replica may span (its size
	// divided by the cluster size, rounded up), which bounds the in-memory
	// cluster map at 8 bytes per cluster.
	MaxReplicaClusters = 1 << 24
	// maxSpannedClusters bounds the clusters all replicas of a pool span
	// together (thin ones included), which bounds the memory of all cluster
	// maps at 1 GiB: 512 TiB of replicas with 4 MiB clusters.
	maxSpannedClusters = 1 << 27

	sbMagic      = "NXSTPOOL"
	cpMagic      = "NXSTCKPT"
	sbEncLen     = 256  // bytes of a superblock copy that carry data
	minSBArea    = 4096 // each superblock copy owns max(4096, block size) bytes
	cpHeaderLen  = 64   // checkpoint slot header
	recHeaderLen = 24   // log record header
	runLen       = 20   // logical u64, physical u64, count u32
	entryFixed   = 16 + 8 + 1 + 1 + 4
	identLen     = 16 + 16 + 8 // identity block: NGUID, owner, epoch
	originLen    = 16 + 8      // origin block: origin UUID, created (ns)
	// maxEntryLen is an entry without runs, with the longest name and an
	// identity block; maxEntryLenV1 the same in format version 1, which
	// had no identity block and sized checkpoint slots by it.
	maxEntryLen   = entryFixed + MaxNameLen + identLen
	maxEntryLenV1 = entryFixed + MaxNameLen
	// maxEntryLenOrigin is an entry of a snapshot or clone without runs:
	// the longest name, an identity block and an origin block.
	maxEntryLenOrigin = maxEntryLen + originLen
	// shareRoomFactor is how many extra references per cluster (on
	// average) the checkpoint slots of a pool created by this code have
	// room for: the sharing budget of snapshots and clones.
	shareRoomFactor = 3
	minLogBlocks    = 4 // the log holds at least this many superblock-area units

	// Entry flags.
	flagThin     = 1 << 0
	flagIdent    = 1 << 1 // an identity block follows the name
	flagSnapshot = 1 << 2 // a read-only snapshot (snapshots feature)
	flagOrigin   = 1 << 3 // an origin block follows the identity block (snapshots feature)
	flagsKnown   = flagThin | flagIdent | flagSnapshot | flagOrigin

	// Superblock feature bits. An unknown incompatible bit makes the pool
	// unreadable to this build; unknown compatible bits are ignored and
	// preserved.
	//
	// incompatSnapshots is set when the first snapshot is taken: clusters
	// may then be shared between cluster maps, and the log may hold
	// snapshot, clone and cow records.
	incompatSnapshots uint32 = 1 << 0
	incompatKnown            = incompatSnapshots

	// maxRecordPayload bounds one record, so a hostile log cannot make
	// replay allocate more than this per record.
	maxRecordPayload = 1 << 20
	// maxLogSize and maxCheckpointSize bound what import reads into memory
	// from a superblock's claims.
	maxLogSize        = 256 << 20
	maxCheckpointSize = 1 << 30
	maxMaxReplicas    = 1024
	minMaxReplicas    = 64
	// maxClusters bounds the cluster count Create lays out: a checkpoint
	// of the largest replica limit and that many runs fits the largest slot.
	maxClusters = (maxCheckpointSize - cpHeaderLen - 4 - maxMaxReplicas*maxEntryLenOrigin) / runLen
	// maxClustersAny bounds the cluster count of any superblock import
	// accepts (the checkpoint bound then checks it against the slot).
	maxClustersAny = (maxCheckpointSize - cpHeaderLen - 4) / runLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var le = binary.LittleEndian

// superblock is the decoded form of one superblock copy.
type superblock struct {
	Version      uint32
	BlockSize    uint32
	Generation   uint64
	UUID         [16]byte
	ClusterSize  uint64
	MDOff        uint64 // metadata region: checkpoint slot 0, slot 1, log
	MDSize       uint64
	CPSize       uint64 // size of one checkpoint slot
	DataOff      uint64
	ClusterCount uint64
	MaxReplicas  uint32
	Name         string
	// Version 2 and later; zero in version 1.
	Incompat   uint32   // incompatible feature bits
	Compat     uint32   // compatible feature bits, kept as read
	Overcommit uint32   // thin over-commit limit in percent; 0 means DefaultOvercommit
	Reserved   [16]byte // bytes 236..251, kept as read
}

// overcommit returns the effective over-commit limit in percent.
func (s *superblock) overcommit() uint64 {
	if s.Overcommit == 0 {
		return DefaultOvercommit
	}
	return uint64(s.Overcommit)
}

// entryLimit is the size of an entry without runs that checkpoint slots
// of this superblock's version were sized for.
func (s *superblock) entryLimit() uint64 {
	if s.Version == formatV1 {
		return maxEntryLenV1
	}
	return maxEntryLen
}

func (s *superblock) logOff() int64  { return int64(s.MDOff + 2*s.CPSize) }
func (s *superblock) logSize() int64 { return int64(s.MDSize - 2*s.CPSize) }

// sbArea is the space each superblock copy owns: copy 0 at offset 0, copy 1
// at offset sbArea.
func sbArea(blockSize int) int64 { return max(minSBArea, int64(blockSize)) }

func (s *superblock) encode(buf []byte) {
	clear(buf[:sbEncLen])
	copy(buf[0:8], sbMagic)
	le.PutUint32(buf[8:], s.Version)
	le.PutUint32(buf[12:], s.BlockSize)
	le.PutUint64(buf[16:], s.Generation)
	copy(buf[24:40], s.UUID[:])
	le.PutUint64(buf[40:], s.ClusterSize)
	le.PutUint64(buf[48:], s.MDOff)
	le.PutUint64(buf[56:], s.MDSize)
	le.PutUint64(buf[64:], s.CPSize)
	le.PutUint64(buf[72:], s.DataOff)
	le.PutUint64(buf[80:], s.ClusterCount)
	le.PutUint32(buf[88:], s.MaxReplicas)
	le.PutUint32(buf[92:], uint32(len(s.Name)))
	copy(buf[96:96+MaxNameLen], s.Name)
	if s.Version != formatV1 {
		le.PutUint32(buf[224:], s.Incompat)
		le.PutUint32(buf[228:], s.Compat)
		le.PutUint32(buf[232:], s.Overcommit)
		copy(buf[236:252], s.Reserved[:])
	}
	le.PutUint32(buf[252:], crc32.Checksum(buf[:252], castagnoli))
}

var errNoMagic = errors.New("no superblock magic")

// unsupportedError is a superblock copy that is intact (magic and checksum
// good) but that this build cannot read: a newer format version or unknown
// incompatible features. It is not damage, and must not be passed over in
// favour of an older copy.
type unsupportedError struct{ msg string }

func (e *unsupportedError) Error() string { return e.msg }

// decodeSuperblock parses and validates one copy on its own (geometry against
// the device is checked by the caller). It never allocates more than the name.
func decodeSuperblock(buf []byte) (superblock, error) {
	return decodeSuperblockKnown(buf, incompatKnown)
}

// decodeSuperblockKnown is decodeSuperblock for a build that knows the
// incompatible feature bits known (tests use it to play an older build).
func decodeSuperblockKnown(buf []byte, known uint32) (superblock, error) {
	var s superblock
	if len(buf) < sbEncLen {
		return s, fmt.Errorf("superblock: %d bytes, want %d", len(buf), sbEncLen)
	}
	if string(buf[0:8]) != sbMagic {
		return s, errNoMagic
	}
	if got, want := le.Uint32(buf[252:]), crc32.Checksum(buf[:252], castagnoli); got != want {
		return s, fmt.Errorf("superblock checksum %#08x, want %#08x", got, want)
	}
	s.Version = le.Uint32(buf[8:])
	s.BlockSize = le.Uint32(buf[12:])
	s.Generation = le.Uint64(buf[16:])
	copy(s.UUID[:], buf[24:40])
	s.ClusterSize = le.Uint64(buf[40:])
	s.MDOff = le.Uint64(buf[48:])
	s.MDSize = le.Uint64(buf[56:])
	s.CPSize = le.Uint64(buf[64:])
	s.DataOff = le.Uint64(buf[72:])
	s.ClusterCount = le.Uint64(buf[80:])
	s.MaxReplicas = le.Uint32(buf[88:])
	nameLen := le.Uint32(buf[92:])
	var nameErr error
	if nameLen == 0 || nameLen > MaxNameLen {
		nameErr = fmt.Errorf("superblock name length %d out of range", nameLen)
	} else if name := string(buf[96 : 96+nameLen]); validName(name) != nil {
		nameErr = fmt.Errorf("superblock pool name: %w", validName(name))
	} else {
		s.Name = name // also for the error about an unsupported copy
	}
	switch s.Version {
	case formatV1:
		// Bytes 224..251 were reserved and are ignored.
	case FormatVersion:
		s.Incompat = le.Uint32(buf[224:])
		s.Compat = le.Uint32(buf[228:])
		s.Overcommit = le.Uint32(buf[232:])
		copy(s.Reserved[:], buf[236:252])
		if unknown := s.Incompat &^ known; unknown != 0 {
			return s, &unsupportedError{fmt.Sprintf("superblock has incompatible feature bits %#x (%s) that this build does not know", unknown, bitList(unknown))}
		}
		if s.Overcommit != 0 && (s.Overcommit < MinOvercommit || s.Overcommit > MaxOvercommit) {
			return s, fmt.Errorf("superblock over-commit limit %d%% out of range", s.Overcommit)
		}
	default:
		return s, &unsupportedError{fmt.Sprintf("superblock format version %d; this build reads versions %d and %d", s.Version, formatV1, FormatVersion)}
	}
	if nameErr != nil {
		return s, nameErr
	}
	if err := s.validate(); err != nil {
		return s, err
	}
	return s, nil
}

// validate checks the internal consistency of the geometry (not the name), with every sum
// guarded against overflow, so that later arithmetic on it is safe.
func (s *superblock) validate() error {
	bs := uint64(s.BlockSize)
	switch {
	case bs < 512 || bs&(bs-1) != 0 || bs > 1<<20:
		return fmt.Errorf("superblock block size %d invalid", bs)
	case s.ClusterSize < MinClusterSize || s.ClusterSize > MaxClusterSize || s.ClusterSize&(s.ClusterSize-1) != 0 || s.ClusterSize < bs:
		return fmt.Errorf("superblock cluster size %d invalid", s.ClusterSize)
	case s.MDOff != uint64(2*sbArea(int(bs))):
		return fmt.Errorf("superblock metadata offset %d, want %d", s.MDOff, 2*sbArea(int(bs)))
	case s.CPSize == 0 || s.CPSize%uint64(sbArea(int(bs))) != 0 || s.CPSize > maxCheckpointSize:
		return fmt.Errorf("superblock checkpoint slot size %d invalid", s.CPSize)
	case s.MDSize > 2*s.CPSize+maxLogSize || s.MDSize < 2*s.CPSize+minLogBlocks*uint64(sbArea(int(bs))) || s.MDSize%uint64(sbArea(int(bs))) != 0:
		return fmt.Errorf("superblock metadata size %d invalid for checkpoint slots of %d", s.MDSize, s.CPSize)
	case s.DataOff < s.MDOff+s.MDSize || s.DataOff%bs != 0 || s.DataOff > 1<<62:
		return fmt.Errorf("superblock data offset %d invalid", s.DataOff)
	case s.ClusterCount == 0 || s.ClusterCount > maxClustersAny:
		return fmt.Errorf("superblock cluster count %d invalid", s.ClusterCount)
	case s.MaxReplicas < 1 || s.MaxReplicas > maxMaxReplicas:
		return fmt.Errorf("superblock replica limit %d invalid", s.MaxReplicas)
	case s.CPSize < checkpointBound(s.ClusterCount, s.MaxReplicas, sbArea(int(bs)), s.entryLimit()):
		return fmt.Errorf("superblock checkpoint slot size %d too small for %d clusters", s.CPSize, s.ClusterCount)
	}
	return nil
}

// checkpointBound is the size of a checkpoint slot that can hold any state
// of a pool with n clusters and at most maxRep replicas: each replica has an
// entry of at most entryLen bytes besides its runs, and every run covers at
// least one owned cluster.
func checkpointBound(n uint64, maxRep uint32, align int64, entryLen uint64) uint64 {
	b := uint64(cpHeaderLen+4) + uint64(maxRep)*entryLen + n*runLen
	return roundUp(b, uint64(align))
}

// bitList names the set bits of v, as "bit 0, bit 5".
func bitList(v uint32) string {
	var b []byte
	for i := range 32 {
		if v&(1<<i) != 0 {
			if len(b) > 0 {
				b = append(b, ", "...)
			}
			b = fmt.Appendf(b, "bit %d", i)
		}
	}
	return string(b)
}

func roundUp(v, a uint64) uint64 { return (v + a - 1) / a * a }

// validName accepts 1..MaxNameLen bytes of UTF-8 without control characters,
// '/' or spaces, so names survive URIs, logs and file names.
func validName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("name is %d bytes long, longer than %d", len(name), MaxNameLen)
	}
	if !utf8.ValidString(name) {
		return errors.New("name is not valid UTF-8")
	}
	for _, r := range name {
		if r <= ' ' || r == '/' || r == 0x7f {
			return fmt.Errorf("name contains %q; use letters, digits and punctuation other than '/'", r)
		}
	}
	return nil
}

// Record types of the metadata log.
const (
	recCreate  = 1 // replica created: entry with name, size, flags and (thick) runs
	recResize  = 2 // replica grown: new size and (thick) runs for the new clusters
	recDestroy = 3 // replica destroyed: its clusters become free
	recMap     = 4 // clusters allocated to a replica: runs
	recUnmap   = 5 // clusters released by a replica: runs (physical ignored)
	recClaim   = 6 // owner and epoch changed: identity block (format version 2)
	recSnap    = 7 // snapshot taken: new UUID, name, identity and origin blocks (snapshots feature)
	recClone   = 8 // clone made of a snapshot: new UUID, name, identity and origin blocks (snapshots feature)
	recCOW     = 9 // logical clusters moved to new physical clusters: runs (snapshots feature)
	recLast    = recCOW
)

// run maps count consecutive logical clusters starting at Logical to the
// physical clusters starting at Phys.
type run struct {
	Logical, Phys uint64
	Count         uint32
}

// ident is an identity block: a replica's NGUID, owner and fencing epoch.
type ident struct {
	NGUID [16]byte
	Owner [16]byte // zero: unowned
	Epoch uint64
}

// origin is an origin block: what a snapshot was taken of, or a clone
// made from, and when (nanoseconds since the Unix epoch).
type origin struct {
	UUID    [16]byte
	Created int64
}

// entry is the payload of a record and the unit of a checkpoint: one replica
// or snapshot (or the part of it a record changes).
type entry struct {
	UUID      [16]byte
	Size      uint64
	Thin      bool
	Snapshot  bool // read-only snapshot (flag bit 2)
	HasID     bool // ID is present (flag bit 1)
	ID        ident
	HasOrigin bool // Origin is present (flag bit 3)
	Origin    origin
	Name      string
	Runs      []run
}

func (e *entry) encodedLen() int {
	n := entryFixed + len(e.Name) + len(e.Runs)*runLen
	if e.HasID {
		n += identLen
	}
	if e.HasOrigin {
		n += originLen
	}
	return n
}

func (e *entry) appendTo(b []byte) []byte {
	b = append(b, e.UUID[:]...)
	b = le.AppendUint64(b, e.Size)
	var flags byte
	if e.Thin {
		flags |= flagThin
	}
	if e.HasID {
		flags |= flagIdent
	}
	if e.Snapshot {
		flags |= flagSnapshot
	}
	if e.HasOrigin {
		flags |= flagOrigin
	}
	b = append(b, flags, byte(len(e.Name)))
	b = append(b, e.Name...)
	if e.HasID {
		b = append(b, e.ID.NGUID[:]...)
		b = append(b, e.ID.Owner[:]...)
		b = le.AppendUint64(b, e.ID.Epoch)
	}
	if e.HasOrigin {
		b = append(b, e.Origin.UUID[:]...)
		b = le.AppendUint64(b, uint64(e.Origin.Created))
	}
	b = le.AppendUint32(b, uint32(len(e.Runs)))
	for _, r := range e.Runs {
		b = le.AppendUint64(b, r.Logical)
		b = le.AppendUint64(b, r.Phys)
		b = le.AppendUint32(b, r.Count)
	}
	return b
}

// decodeEntry parses one entry from the front of b and returns the rest. It
// checks the run count against the bytes present before allocating.
func decodeEntry(b []byte) (entry, []byte, error) {
	var e entry
	if len(b) < entryFixed {
		return e, nil, errors.New("entry truncated")
	}
	copy(e.UUID[:], b[:16])
	e.Size = le.Uint64(b[16:])
	flags := b[24]
	if flags&^flagsKnown != 0 {
		return e, nil, fmt.Errorf("entry flags %#x unknown", flags)
	}
	e.Thin = flags&flagThin != 0
	e.HasID = flags&flagIdent != 0
	e.Snapshot = flags&flagSnapshot != 0
	e.HasOrigin = flags&flagOrigin != 0
	nameLen := int(b[25])
	b = b[26:]
	if nameLen > MaxNameLen || len(b) < nameLen+4 {
		return e, nil, errors.New("entry name truncated")
	}
	e.Name = string(b[:nameLen])
	b = b[nameLen:]
	if e.HasID {
		if len(b) < identLen+4 {
			return e, nil, errors.New("entry identity block truncated")
		}
		copy(e.ID.NGUID[:], b[0:16])
		copy(e.ID.Owner[:], b[16:32])
		e.ID.Epoch = le.Uint64(b[32:])
		b = b[identLen:]
	}
	if e.HasOrigin {
		if len(b) < originLen+4 {
			return e, nil, errors.New("entry origin block truncated")
		}
		copy(e.Origin.UUID[:], b[0:16])
		e.Origin.Created = int64(le.Uint64(b[16:]))
		b = b[originLen:]
	}
	n := le.Uint32(b)
	b = b[4:]
	if uint64(n)*runLen > uint64(len(b)) {
		return e, nil, fmt.Errorf("entry claims %d runs in %d bytes", n, len(b))
	}
	if n > 0 {
		e.Runs = make([]run, n)
		for i := range e.Runs {
			e.Runs[i] = run{Logical: le.Uint64(b), Phys: le.Uint64(b[8:]), Count: le.Uint32(b[16:])}
			b = b[runLen:]
		}
	}
	return e, b, nil
}

// record is one metadata log record.
type record struct {
	Seq  uint64
	Type uint8
	// Idx is the record's position in the batch (one log write) that
	// carried it: Seq-Idx is the sequence number of the batch's first
	// record. Replay uses it to tell a torn last batch from damage to a
	// batch that was made durable before later ones were written.
	Idx uint32
	E   entry
}

// recordCRC covers the pool UUID and the log epoch, so records of an older
// epoch or of an earlier pool on the same disk never validate.
func recordCRC(pool [16]byte, epoch uint64, rest []byte) uint32 {
	var pre [24]byte
	copy(pre[:16], pool[:])
	le.PutUint64(pre[16:], epoch)
	c := crc32.Update(0, castagnoli, pre[:])
	return crc32.Update(c, castagnoli, rest)
}

// appendRecord encodes r (header and payload) onto b.
func appendRecord(b []byte, pool [16]byte, epoch uint64, r *record) []byte {
	start := len(b)
	b = append(b, make([]byte, recHeaderLen)...)
	b = r.E.appendTo(b)
	h := b[start:]
	le.PutUint32(h[0:], uint32(len(h)-recHeaderLen))
	le.PutUint64(h[8:], r.Seq)
	h[16] = r.Type
	le.PutUint32(h[20:], r.Idx)
	le.PutUint32(h[4:], recordCRC(pool, epoch, h[8:]))
	return b
}

// decodeRecord parses one record whose header and payload are all of b
// (len(b) == recHeaderLen + payload length). It verifies the checksum and
// the structure, not the record's meaning.
func decodeRecord(b []byte, pool [16]byte, epoch uint64) (record, error) {
	var r record
	if len(b) < recHeaderLen {
		return r, errors.New("record header truncated")
	}
	n := le.Uint32(b)
	if n == 0 || n > maxRecordPayload || int(n) != len(b)-recHeaderLen {
		return r, fmt.Errorf("record length %d invalid", n)
	}
	if got, want := le.Uint32(b[4:]), recordCRC(pool, epoch, b[8:]); got != want {
		return r, fmt.Errorf("record checksum %#08x, want %#08x", got, want)
	}
	r.Seq = le.Uint64(b[8:])
	r.Type = b[16]
	for _, x := range b[17:20] {
		if x != 0 {
			return r, errors.New("record reserved bytes not zero")
		}
	}
	r.Idx = le.Uint32(b[20:])
	if uint64(r.Idx) >= r.Seq {
		return r, fmt.Errorf("record %d claims position %d in its batch", r.Seq, r.Idx)
	}
	if r.Type < recCreate || r.Type > recLast {
		return r, fmt.Errorf("record type %d unknown", r.Type)
	}
	e, rest, err := decodeEntry(b[recHeaderLen:])
	if err != nil {
		return r, err
	}
	if len(rest) != 0 {
		return r, fmt.Errorf("record has %d trailing bytes", len(rest))
	}
	r.E = e
	return r, nil
}

// checkpoint is the decoded content of a checkpoint slot.
type checkpoint struct {
	Epoch    uint64
	LastSeq  uint64
	Replicas []entry
}

// encodeCheckpoint returns the slot image (header and payload, not padded).
func encodeCheckpoint(b []byte, pool [16]byte, cp *checkpoint) []byte {
	b = append(b[:0], make([]byte, cpHeaderLen)...)
	b = le.AppendUint32(b, uint32(len(cp.Replicas)))
	for i := range cp.Replicas {
		b = cp.Replicas[i].appendTo(b)
	}
	copy(b[0:8], cpMagic)
	le.PutUint64(b[8:], cp.Epoch)
	le.PutUint64(b[16:], cp.LastSeq)
	le.PutUint64(b[24:], uint64(len(b)-cpHeaderLen))
	copy(b[32:48], pool[:])
	c := crc32.Update(0, castagnoli, b[:48])
	c = crc32.Update(c, castagnoli, b[cpHeaderLen:])
	le.PutUint32(b[48:], c)
	return b
}

// checkpointPayloadLen validates a slot header and returns the payload
// length it claims, bounded by limit (the slot size minus the header).
func checkpointPayloadLen(h []byte, pool [16]byte, limit uint64) (uint64, error) {
	if len(h) < cpHeaderLen {
		return 0, errors.New("checkpoint header truncated")
	}
	if string(h[0:8]) != cpMagic {
		return 0, errors.New("no checkpoint magic")
	}
	if [16]byte(h[32:48]) != pool {
		return 0, errors.New("checkpoint belongs to another pool")
	}
	n := le.Uint64(h[24:])
	if n < 4 || n > limit {
		return 0, fmt.Errorf("checkpoint payload length %d out of range", n)
	}
	return n, nil
}

// decodeCheckpoint parses a slot image b (header plus exactly the payload
// length the header claims) of a pool allowing maxRep replicas.
func decodeCheckpoint(b []byte, pool [16]byte, maxRep uint32) (checkpoint, error) {
	var cp checkpoint
	n, err := checkpointPayloadLen(b, pool, uint64(len(b)))
	if err != nil {
		return cp, err
	}
	if n != uint64(len(b)-cpHeaderLen) {
		return cp, fmt.Errorf("checkpoint payload length %d, have %d bytes", n, len(b)-cpHeaderLen)
	}
	c := crc32.Update(0, castagnoli, b[:48])
	c = crc32.Update(c, castagnoli, b[cpHeaderLen:])
	if got := le.Uint32(b[48:]); got != c {
		return cp, fmt.Errorf("checkpoint checksum %#08x, want %#08x", got, c)
	}
	cp.Epoch = le.Uint64(b[8:])
	cp.LastSeq = le.Uint64(b[16:])
	p := b[cpHeaderLen:]
	count := le.Uint32(p)
	p = p[4:]
	if count > maxRep || uint64(count)*entryFixed > uint64(len(p)) {
		return cp, fmt.Errorf("checkpoint claims %d replicas", count)
	}
	cp.Replicas = make([]entry, 0, count)
	for range count {
		var e entry
		e, p, err = decodeEntry(p)
		if err != nil {
			return cp, fmt.Errorf("checkpoint replica %d: %w", len(cp.Replicas), err)
		}
		cp.Replicas = append(cp.Replicas, e)
	}
	if len(p) != 0 {
		return cp, fmt.Errorf("checkpoint has %d trailing bytes", len(p))
	}
	return cp, nil
}
