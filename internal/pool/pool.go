// Package pool turns one block device into a pool of clusters from which
// thin and thick replicas are carved. Each replica is itself a bdev.Device,
// and a bdev.Claimer: a nexus claims it with its UUID and fencing epoch and
// does its I/O through the handle the claim returns.
//
// The on-disk format (docs/pool-format.md) is two superblock copies, a
// metadata region holding two alternating checkpoint slots and an
// append-only log of checksummed records, then the data clusters. Every
// metadata change is durable (written and flushed) before the call that
// makes it returns, and import replays the log up to the first torn or bad
// record, so a crash at any point loses no acknowledged change. Damage that
// a crash cannot explain (a bad record with intact later batches behind it)
// fails import with a CorruptError rather than losing changes silently.
// Import upgrades a pool of format version 1 in place (upgrade.go).
//
// Snapshots (snapshot.go) are read-only cluster maps that share clusters
// with their replica; clones are thin replicas sharing a snapshot's. Every
// cluster has a reference count, derived from the maps at import and kept
// in memory; a write to a cluster whose count is above one copies it first
// (copy-on-write, cluster by cluster), so shared clusters are never written.
// The first snapshot sets the superblock's snapshots feature bit.
//
// # Locking
//
// Locks are taken in this order and never in the reverse:
//
//		Pool.adminMu → replica.claimMu → replica.io → Pool.logMu → Pool.mu
//
//	  - adminMu serializes the pool-wide changes: replica create, resize and
//	    destroy, the over-commit limit, Close and Destroy.
//	  - replica.claimMu serializes the claim state of one replica: Claim,
//	    Raise, Release, Disown and its destroy.
//	  - replica.io is held shared by every I/O of the replica, exclusively by
//	    whatever must not run under one: a resize, freeing whole clusters, a
//	    destroy, and the session change that fences superseded handles.
//	  - logMu is held by the group-commit leader while it writes the log or a
//	    checkpoint, and by Close and Destroy.
//	  - mu guards the in-memory state (replicas, bitmap, accounting); it is
//	    held briefly and never across I/O.
//
// Pool.cmu (the group-commit queue) and replica.allocMu (first writes in
// flight per cluster) are leaves: held for a few instructions, never while
// taking another lock. Nothing holds mu or logMu while waiting for a commit.
package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/units"
)

// CreateOptions configures Create.
type CreateOptions struct {
	// Name of the pool: 1..MaxNameLen bytes, no spaces, control characters or '/'.
	Name string
	// UUID in canonical text form; empty generates a random one.
	UUID string
	// ClusterSize is the allocation unit in bytes: a power of two between
	// MinClusterSize and MaxClusterSize, 0 meaning DefaultClusterSize.
	ClusterSize int64
	// MetadataSize is the size of the metadata region (both checkpoint slots
	// plus the log) in bytes, a multiple of 4 KiB (or of the block size when
	// larger); 0 sizes it from the disk. Too small a value is ErrInvalid and
	// the error names the minimum.
	MetadataSize int64
	// Overcommit is the thin over-commit limit in percent of the capacity:
	// the sizes of all replicas together may not exceed capacity ×
	// Overcommit / 100. 0 means DefaultOvercommit; otherwise it must be
	// between MinOvercommit and MaxOvercommit (ErrInvalid).
	Overcommit int
	// Force formats a device that already holds a pool, destroying it.
	Force bool
}

// Info is what Probe reads from a superblock.
type Info struct {
	Name, UUID    string
	ClusterSize   int64
	Capacity      int64 // data bytes: cluster count times cluster size
	FormatVersion int   // 1 for a pool that the next import upgrades
	Overcommit    int   // thin over-commit limit in percent
}

// Stats is a pool's space accounting, exact at the moment it is taken.
type Stats struct {
	Capacity      int64 // data bytes: TotalClusters * ClusterSize
	ClusterSize   int64
	TotalClusters int64
	FreeClusters  int64 // clusters neither held by a replica or snapshot nor being allocated
	Allocated     int64 // bytes in clusters held by replicas and snapshots, shared ones counted once
	Committed     int64 // sum of replica sizes (thin replicas may exceed Capacity; snapshots not counted)
	Replicas      int   // replicas, clones included
	Snapshots     int
	// Overcommit is the thin over-commit limit in percent of Capacity, and
	// CommitLimit the most Committed may reach: Capacity × Overcommit / 100.
	Overcommit  int
	CommitLimit int64
}

// Pool is an imported (or newly created) pool. All methods are safe for
// concurrent use. Metadata changes (replica create, resize, destroy, claims
// and thin allocations) are durable when the method returns nil.
type Pool struct {
	dev     bdev.Device
	sb      superblock // fields change only under adminMu and mu (SetOvercommit)
	uuidStr string
	bs, cs  int64
	csShift uint

	closed atomic.Bool

	// adminMu serializes replica create, resize, destroy, the over-commit
	// limit and pool close; see the package doc for the lock order.
	adminMu sync.Mutex

	// mu guards the state below, which reflects exactly the records made
	// durable, plus the reservations of operations in flight.
	mu        sync.Mutex
	byName    map[string]*replica
	byUUID    map[[16]byte]*replica
	bm        bitmap
	owned     uint64 // clusters held by at least one map (shared ones once)
	reserved  uint64 // clusters taken from the bitmap by operations in flight
	committed uint64 // sum of replica sizes (not of snapshots)
	spanned   uint64 // sum of the clusters each replica's and snapshot's size spans
	// refs counts, per physical cluster, the maps (replicas, clones,
	// snapshots) holding it; derived from the maps at import, never
	// stored. Written under mu; the write path reads it without a lock to
	// decide whether a cluster may be written in place (count 1).
	refs []atomic.Uint32
	// extra is the sum over held clusters of their count minus one: the
	// references sharing adds. Only snapshots and clones raise it.
	extra uint64
	// entryBytes is the sum of the entry bounds (without runs) of all
	// replicas and snapshots: with extra, what bounds a checkpoint.
	entryBytes uint64

	// snapOn mirrors the superblock's snapshots feature bit: once set,
	// clusters may be shared and writes check the counts.
	snapOn atomic.Bool

	// Group commit: callers queue records; one of them at a time (the
	// leader) writes everything queued in one log write and one flush.
	cmu     sync.Mutex
	queue   []*commitReq
	leading bool

	// logMu is held by the leader while it writes, and by Close; it guards
	// the log position and everything after it.
	logMu  sync.Mutex
	epoch  uint64 // epoch of the current checkpoint; the log's records carry it
	seq    uint64 // sequence number of the last record made durable
	logPos int64  // next write offset within the log, block aligned
	logBuf []byte
	cpBuf  []byte

	// metaErr is the first failed metadata write (log, checkpoint or
	// superblock): whether it landed is unknown until the pool is imported
	// again, so every later metadata change is refused. Data I/O to
	// allocated clusters goes on.
	metaErr atomic.Pointer[metaFailure]

	// flushErr is the first failed flush of the device. A device that
	// failed a flush may have lost writes acknowledged before it, whatever
	// later flushes report (Linux reports a writeback error once), so every
	// later flush through the pool fails too, until it is imported again.
	flushErr atomic.Pointer[flushFailure]
}

type flushFailure struct{ err error }

type metaFailure struct{ err error }

// failMeta records the first failed metadata write.
func (p *Pool) failMeta(err error) { p.metaErr.CompareAndSwap(nil, &metaFailure{err}) }

// metaFailed returns the recorded metadata failure, or nil.
func (p *Pool) metaFailed() error {
	if f := p.metaErr.Load(); f != nil {
		return f.err
	}
	return nil
}

// flushDev flushes the device unless a flush failed before.
func (p *Pool) flushDev() error {
	if f := p.flushErr.Load(); f != nil {
		return fmt.Errorf("an earlier flush of the pool's device failed, so writes acknowledged before it may be lost; check the disk and import the pool again: %w", f.err)
	}
	if err := p.dev.Flush(); err != nil {
		p.flushErr.CompareAndSwap(nil, &flushFailure{err})
		return err
	}
	return nil
}

// validOvercommit checks an over-commit limit argument and returns the
// effective value (0 means DefaultOvercommit).
func validOvercommit(percent int) (uint32, error) {
	if percent == 0 {
		return DefaultOvercommit, nil
	}
	if percent < MinOvercommit || percent > MaxOvercommit {
		return 0, fmt.Errorf("over-commit limit %d%% is out of range; use 0 for the default of %d%%, or a value between %d%% (no over-commit) and %d%%",
			percent, DefaultOvercommit, MinOvercommit, MaxOvercommit)
	}
	return uint32(percent), nil
}

// Create formats dev as a new pool and returns it open. It refuses, writing
// nothing, when dev already holds a pool (ErrHasPool, unless opts.Force), or
// when dev cannot hold the superblocks, the metadata region and at least one
// cluster (ErrTooSmall). On success the pool owns dev (Close or Destroy
// closes it); on failure dev stays open for the caller to close.
func Create(dev bdev.Device, opts CreateOptions) (*Pool, error) {
	if err := validName(opts.Name); err != nil {
		return nil, fmt.Errorf("pool %q: %v; pick a name of letters, digits, '-', '_' or '.': %w", opts.Name, err, ErrInvalid)
	}
	id, err := parseUUID(opts.UUID)
	if err != nil {
		return nil, fmt.Errorf("pool %q: %v: %w", opts.Name, err, ErrInvalid)
	}
	overcommit, err := validOvercommit(opts.Overcommit)
	if err != nil {
		return nil, fmt.Errorf("pool %q: %v: %w", opts.Name, err, ErrInvalid)
	}
	bs := dev.BlockSize()
	cs := opts.ClusterSize
	if cs == 0 {
		cs = DefaultClusterSize
	}
	if cs < MinClusterSize || cs > MaxClusterSize || cs&(cs-1) != 0 || cs < int64(bs) {
		return nil, fmt.Errorf("pool %q: cluster size %d is not a power of two between %s and %s; use for example 4MiB: %w",
			opts.Name, cs, units.FormatSize(MinClusterSize), units.FormatSize(MaxClusterSize), ErrInvalid)
	}
	sb, err := layout(dev.Size(), bs, cs, opts.MetadataSize)
	if err != nil {
		return nil, fmt.Errorf("pool %q: %w", opts.Name, err)
	}
	sb.UUID, sb.Name, sb.Generation, sb.Overcommit = id, opts.Name, 1, overcommit

	if !opts.Force {
		for c := range 2 {
			buf := make([]byte, sbArea(bs))
			if _, err := dev.ReadAt(buf, int64(c)*sbArea(bs)); err != nil {
				return nil, fmt.Errorf("pool %q: reading superblock copy %d: %w", opts.Name, c, err)
			}
			if string(buf[:8]) == sbMagic {
				info := "a pool"
				if old, err := decodeSuperblock(buf); err == nil || old.Name != "" {
					info = fmt.Sprintf("pool %q (%s)", old.Name, fmtUUID(old.UUID))
				}
				return nil, fmt.Errorf("pool %q: device already holds %s; import it, or create with force to destroy it: %w", opts.Name, info, ErrHasPool)
			}
		}
	}

	p := newPool(dev, sb)
	// Wipe any old superblocks first, so a crash part way leaves a device
	// that is no pool rather than an old superblock over new metadata.
	if err := p.writeSuperblocks(nil); err != nil {
		return nil, fmt.Errorf("pool %q: %w", opts.Name, err)
	}
	// The checkpoint slots' first blocks and the whole log are zeroed so
	// that nothing of an earlier pool can be mistaken for ours. Records and
	// checkpoints also carry the pool UUID in their checksums, but a pool
	// re-created with the same UUID would otherwise find its predecessor's
	// records (replay, and its scan for intact batches past a damaged
	// record, look beyond the end of the log).
	zero := make([]byte, sbArea(bs))
	for _, off := range []int64{int64(sb.MDOff), int64(sb.MDOff + sb.CPSize)} {
		if _, err := dev.WriteAt(zero, off); err != nil {
			return nil, fmt.Errorf("pool %q: formatting metadata at offset %d: %w", opts.Name, off, err)
		}
	}
	if err := dev.WriteZeroes(sb.logOff(), sb.logSize()); err != nil {
		return nil, fmt.Errorf("pool %q: zeroing the metadata log at offset %d: %w", opts.Name, sb.logOff(), err)
	}
	p.logMu.Lock()
	err = p.checkpointLocked()
	p.logMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("pool %q: writing the first checkpoint: %w", opts.Name, err)
	}
	if err := p.writeSuperblocks(&p.sb); err != nil {
		return nil, fmt.Errorf("pool %q: %w", opts.Name, err)
	}
	slog.Info("pool created", "pool", sb.Name, "uuid", p.uuidStr, "clusters", sb.ClusterCount,
		"cluster_size", sb.ClusterSize, "metadata_size", sb.MDSize, "overcommit_percent", sb.Overcommit)
	return p, nil
}

// layout computes the geometry of a version 2 pool for a device of devSize bytes.
func layout(devSize int64, bs int, cs, mdSize int64) (superblock, error) {
	area := sbArea(bs)
	sb := superblock{Version: FormatVersion, BlockSize: uint32(bs), ClusterSize: uint64(cs), MDOff: uint64(2 * area)}
	tooSmall := func() error {
		return fmt.Errorf("device of %s cannot hold the superblocks, metadata and one %s cluster; use a larger device or a smaller cluster size: %w",
			units.FormatSize(devSize), units.FormatSize(cs), ErrTooSmall)
	}
	if devSize <= 2*area {
		return sb, tooSmall()
	}
	n0 := uint64(devSize-2*area) / uint64(cs) // upper bound on the cluster count
	if n0 == 0 {
		return sb, tooSmall()
	}
	n0 = min(n0, maxClusters)
	sb.MaxReplicas = uint32(min(max(n0, minMaxReplicas), maxMaxReplicas))
	// Entries sized for snapshots and clones, and room for 3 extra
	// references per cluster (the sharing budget), as far as the largest
	// slot allows.
	sb.CPSize = checkpointBound(n0, sb.MaxReplicas, area, maxEntryLenOrigin)
	sb.CPSize = min(sb.CPSize+roundUp(shareRoomFactor*n0*runLen, uint64(area)), maxCheckpointSize/uint64(area)*uint64(area))
	minMD := 2*sb.CPSize + minLogBlocks*uint64(area)
	if mdSize == 0 {
		logSize := roundUp(uint64(devSize)/512, uint64(area))
		logSize = min(max(logSize, 64<<10), 64<<20)
		sb.MDSize = 2*sb.CPSize + logSize
	} else {
		if mdSize < 0 || mdSize%area != 0 || uint64(mdSize) < minMD || uint64(mdSize) > 2*sb.CPSize+maxLogSize {
			return sb, fmt.Errorf("metadata size %d is invalid: it must be a multiple of %d between %d and %d for this device; use 0 to size it automatically: %w",
				mdSize, area, minMD, 2*sb.CPSize+maxLogSize, ErrInvalid)
		}
		sb.MDSize = uint64(mdSize)
	}
	align := uint64(min(cs, 1<<20))
	sb.DataOff = roundUp(sb.MDOff+sb.MDSize, align)
	if sb.DataOff >= uint64(devSize) {
		return sb, tooSmall()
	}
	sb.ClusterCount = (uint64(devSize) - sb.DataOff) / uint64(cs)
	if sb.ClusterCount == 0 {
		return sb, tooSmall()
	}
	return sb, sb.validate()
}

func parseUUID(s string) ([16]byte, error) {
	if s == "" {
		return uuid.New(), nil
	}
	u, err := uuid.Parse(s)
	if err != nil {
		return [16]byte{}, fmt.Errorf("UUID %q: %v; use the canonical form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx or leave it empty", s, err)
	}
	if u == (uuid.UUID{}) {
		return [16]byte{}, fmt.Errorf("UUID %q is the nil UUID; use another or leave it empty", s)
	}
	return u, nil
}

func newPool(dev bdev.Device, sb superblock) *Pool {
	p := &Pool{
		dev:     dev,
		sb:      sb,
		uuidStr: fmtUUID(sb.UUID),
		bs:      int64(sb.BlockSize),
		cs:      int64(sb.ClusterSize),
		csShift: uint(bits.TrailingZeros64(sb.ClusterSize)),
		byName:  map[string]*replica{},
		byUUID:  map[[16]byte]*replica{},
		bm:      newBitmap(sb.ClusterCount),
		refs:    make([]atomic.Uint32, sb.ClusterCount),
	}
	p.snapOn.Store(sb.Incompat&incompatSnapshots != 0)
	return p
}

// snapshotsOn reports whether the pool has the snapshots feature.
func (p *Pool) snapshotsOn() bool { return p.snapOn.Load() }

// writeSuperblocks writes copy 0, flushes, writes copy 1 and flushes, so a
// crash tears at most one of them and the other stays valid. A nil sb
// writes zeroes (no pool).
func (p *Pool) writeSuperblocks(sb *superblock) error {
	area := sbArea(int(p.bs))
	buf := make([]byte, area)
	if sb != nil {
		sb.encode(buf)
	}
	for c := range int64(2) {
		if _, err := p.dev.WriteAt(buf, c*area); err != nil {
			return fmt.Errorf("writing superblock copy %d: %w", c, err)
		}
		if err := p.flushDev(); err != nil {
			return fmt.Errorf("flushing superblock copy %d: %w", c, err)
		}
	}
	return nil
}

// readSuperblocks returns the valid copy with the highest generation and
// which copies need repair.
func readSuperblocks(dev bdev.Device) (sb superblock, repair []int, err error) {
	area := sbArea(dev.BlockSize())
	var sbs [2]superblock
	var errs [2]error
	buf := make([]byte, area)
	magic := false
	for c := range 2 {
		if _, err := dev.ReadAt(buf, int64(c)*area); err != nil {
			return sb, nil, fmt.Errorf("reading superblock copy %d at offset %d: %w", c, int64(c)*area, err)
		}
		sbs[c], errs[c] = decodeSuperblock(buf)
		if errs[c] == nil {
			errs[c] = checkGeometry(&sbs[c], dev)
		}
		if !errors.Is(errs[c], errNoMagic) {
			magic = true
		}
	}
	best := -1
	for c := range 2 {
		if errs[c] == nil && (best < 0 || sbs[c].Generation > sbs[best].Generation) {
			best = c
		}
	}
	// An intact copy this build cannot read decides when it is the newest:
	// falling back to an older copy could mean reading metadata that the
	// newer format has since replaced.
	for c := range 2 {
		var un *unsupportedError
		if errors.As(errs[c], &un) && (best < 0 || sbs[c].Generation > sbs[best].Generation) {
			name := ""
			if sbs[c].Name != "" {
				name = fmt.Sprintf(" %q", sbs[c].Name)
			}
			return sb, nil, fmt.Errorf("pool%s (superblock copy %d at offset %d): %v; import it with a Nexstor release that reads it (nothing was written): %w",
				name, c, int64(c)*area, un, ErrUnsupported)
		}
	}
	if best < 0 {
		if !magic {
			return sb, nil, fmt.Errorf("no Nexstor superblock at offsets 0 and %d; create a pool on the device first: %w", area, ErrNotPool)
		}
		return sb, nil, &CorruptError{What: fmt.Sprintf("both superblock copies are bad (copy 0 at offset 0: %v; copy 1 at offset %d: %v)", errs[0], area, errs[1])}
	}
	for c := range 2 {
		if c != best && (errs[c] != nil || sbs[c] != sbs[best]) {
			repair = append(repair, c)
		}
	}
	return sbs[best], repair, nil
}

// checkGeometry checks a decoded superblock against the device.
func checkGeometry(sb *superblock, dev bdev.Device) error {
	if int(sb.BlockSize) != dev.BlockSize() {
		return fmt.Errorf("superblock block size %d, device block size %d", sb.BlockSize, dev.BlockSize())
	}
	end := sb.DataOff + sb.ClusterCount*sb.ClusterSize // validated bounds keep this from overflowing
	if end > uint64(dev.Size()) || sb.ClusterCount > (1<<62)/sb.ClusterSize {
		return fmt.Errorf("superblock data region ends at %d, beyond the %d-byte device", end, dev.Size())
	}
	return nil
}

// Probe reads the superblock of dev without importing the pool or writing
// anything. It returns ErrNotPool when there is no superblock, ErrUnsupported
// when the newest copy is of a format this build cannot read, and a
// *CorruptError when both copies are bad. A version 1 pool reports
// FormatVersion 1; Import upgrades it.
func Probe(dev bdev.Device) (Info, error) {
	sb, _, err := readSuperblocks(dev)
	if err != nil {
		return Info{}, err
	}
	return Info{
		Name: sb.Name, UUID: fmtUUID(sb.UUID), ClusterSize: int64(sb.ClusterSize),
		Capacity: int64(sb.ClusterCount * sb.ClusterSize), FormatVersion: int(sb.Version),
		Overcommit: int(sb.overcommit()),
	}, nil
}

// Import opens the pool on dev: it picks the valid superblock copy with the
// highest generation (rewriting a bad or stale copy), loads the newest valid
// checkpoint, replays the log up to the first torn or bad record, and writes
// a fresh checkpoint so the next log starts clean. A pool of format version
// 1 is upgraded to version 2 on the way (see docs/pool-format.md for the
// steps and why a crash during any of them is safe).
//
// ErrNotPool when dev holds no pool; ErrUnsupported when it is of a newer
// format or uses features this build does not know; a *CorruptError
// (errors.Is ErrCorrupt) naming the damage when the metadata cannot be used,
// including damage that a torn write cannot explain: a bad record followed
// by a later intact batch of the log, or a bad newest checkpoint whose epoch
// already has records in the log (either way, going on would drop
// acknowledged changes). A failed import writes nothing (an upgrade that
// fails part way leaves a pool that the next import upgrades again) and
// leaves dev open, for the caller to close; on success the pool owns dev.
func Import(dev bdev.Device) (*Pool, error) {
	sb, repair, err := readSuperblocks(dev)
	if err != nil {
		return nil, err
	}
	p := newPool(dev, sb)
	// Nothing is written until the metadata has been read and found good,
	// so an import that fails leaves the disk as it was.
	if err := p.load(); err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			ce.What = fmt.Sprintf("pool %q: %s", sb.Name, ce.What)
			return nil, ce
		}
		return nil, fmt.Errorf("pool %q: %w", sb.Name, err)
	}
	if sb.Version == formatV1 {
		if err := p.upgrade(); err != nil {
			return nil, err
		}
		return p, nil
	}
	if len(repair) > 0 {
		buf := make([]byte, sbArea(int(p.bs)))
		sb.encode(buf)
		for _, c := range repair {
			slog.Warn("pool superblock copy bad or stale; rewriting it", "pool", sb.Name, "copy", c)
			if _, err := dev.WriteAt(buf, int64(c)*sbArea(int(p.bs))); err != nil {
				return nil, fmt.Errorf("pool %q: repairing superblock copy %d: %w", sb.Name, c, err)
			}
		}
		if err := p.flushDev(); err != nil {
			return nil, fmt.Errorf("pool %q: repairing superblocks: %w", sb.Name, err)
		}
	}
	// A new epoch: whatever followed the end of replay (a torn tail, stale
	// records) can never validate later.
	p.logMu.Lock()
	err = p.checkpointLocked()
	p.logMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("pool %q: writing the import checkpoint: %w", sb.Name, err)
	}
	return p, nil
}

// Name returns the pool's name.
func (p *Pool) Name() string { return p.sb.Name }

// UUID returns the pool's UUID in canonical text form.
func (p *Pool) UUID() string { return p.uuidStr }

// BlockSize returns the block size of the pool and of its replicas.
func (p *Pool) BlockSize() int { return int(p.bs) }

// Stats returns the space accounting.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.statsLocked()
}

func (p *Pool) statsLocked() Stats {
	n := int64(p.sb.ClusterCount)
	return Stats{
		Capacity:      n * p.cs,
		ClusterSize:   p.cs,
		TotalClusters: n,
		FreeClusters:  n - int64(p.owned) - int64(p.reserved),
		Allocated:     int64(p.owned) * p.cs,
		Committed:     int64(p.committed),
		Replicas:      len(p.byName) - p.snapshotsLocked(),
		Snapshots:     p.snapshotsLocked(),
		Overcommit:    int(p.sb.overcommit()),
		CommitLimit:   int64(min(p.commitLimitLocked(), 1<<63-1)),
	}
}

// snapshotsLocked counts the snapshots. Must hold p.mu.
func (p *Pool) snapshotsLocked() int {
	if !p.snapshotsOn() {
		return 0
	}
	n := 0
	for _, r := range p.byName {
		if r.snap {
			n++
		}
	}
	return n
}

// commitLimitLocked is the most the replica sizes may add up to: capacity ×
// limit / 100, saturating (the product can exceed 64 bits). Must hold p.mu.
func (p *Pool) commitLimitLocked() uint64 {
	hi, lo := bits.Mul64(p.sb.ClusterCount*uint64(p.cs), p.sb.overcommit())
	if hi >= 100 {
		return ^uint64(0)
	}
	q, _ := bits.Div64(hi, lo, 100)
	return q
}

// SetOvercommit sets the thin over-commit limit, in percent of the capacity
// (0 means DefaultOvercommit; otherwise MinOvercommit..MaxOvercommit, else
// ErrInvalid). It rewrites both superblock copies, one after the other and
// each flushed, with the generation incremented; it is durable when it
// returns nil. Lowering the limit below what is committed keeps every
// replica and refuses further creates and growth until it fits again.
// Setting the current value writes nothing.
func (p *Pool) SetOvercommit(percent int) error {
	v, err := validOvercommit(percent)
	if err != nil {
		return p.errf("%v: %w", err, ErrInvalid)
	}
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.mu.Lock()
	err = p.usableLocked()
	sb := p.sb
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if sb.overcommit() == uint64(v) {
		return nil
	}
	sb.Overcommit = v
	sb.Generation++
	if err := p.writeSuperblocks(&sb); err != nil {
		// One copy may hold the new limit: which one import picks is
		// unknown until then, so no further metadata change is allowed.
		p.failMeta(err)
		return p.errf("setting the over-commit limit to %d%%: %v; close and import the pool again: %w", v, err, ErrClosed)
	}
	p.mu.Lock()
	p.sb.Overcommit, p.sb.Generation = sb.Overcommit, sb.Generation
	p.mu.Unlock()
	slog.Info("pool over-commit limit set", "pool", p.sb.Name, "percent", v)
	return nil
}

func (p *Pool) errf(format string, args ...any) error {
	return fmt.Errorf("pool %q: "+format, append([]any{p.sb.Name}, args...)...)
}

// usableLocked returns nil when metadata may change. Must hold p.mu.
func (p *Pool) usableLocked() error {
	if p.closed.Load() {
		return p.errf("the pool is closed; import it again: %w", ErrClosed)
	}
	if err := p.metaFailed(); err != nil {
		return p.errf("metadata writes failed earlier (%v); close and import the pool again: %w", err, ErrClosed)
	}
	return nil
}

// Close exports the pool: it waits for metadata writes in flight, writes a
// checkpoint, flushes and closes the device (releasing its exclusive hold).
// Open replica handles fail with ErrClosed afterwards. Later calls return
// ErrClosed.
func (p *Pool) Close() error {
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.logMu.Lock()
	if p.closed.Load() {
		p.logMu.Unlock()
		return p.errf("already closed: %w", ErrClosed)
	}
	var err error
	if p.metaFailed() == nil {
		err = p.checkpointLocked()
	}
	p.closed.Store(true)
	p.logMu.Unlock()
	if cerr := p.dev.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return p.errf("close: %w", err)
	}
	slog.Info("pool exported", "pool", p.sb.Name)
	return nil
}

// Destroy wipes both superblock copies, so the device is no longer a pool,
// and closes it. ErrBusy while replica handles (claimed ones included) are
// open.
func (p *Pool) Destroy() error {
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		return p.errf("already closed: %w", ErrClosed)
	}
	for _, r := range p.byName {
		if r.opens > 0 {
			p.mu.Unlock()
			return p.errf("replica %q has %d open handles; close them first: %w", r.name, r.opens, ErrBusy)
		}
	}
	p.mu.Unlock()
	p.logMu.Lock()
	p.closed.Store(true)
	err := p.writeSuperblocks(nil)
	p.logMu.Unlock()
	if cerr := p.dev.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return p.errf("destroy: %w", err)
	}
	slog.Info("pool destroyed", "pool", p.sb.Name)
	return nil
}
