// Package pool turns one block device into a pool of clusters from which
// thin and thick replicas are carved. Each replica is itself a bdev.Device.
//
// The on-disk format (docs/pool-format.md) is two superblock copies, a
// metadata region holding two alternating checkpoint slots and an
// append-only log of checksummed records, then the data clusters. Every
// metadata change is durable (written and flushed) before the call that
// makes it returns, and import replays the log up to the first torn or bad
// record, so a crash at any point loses no acknowledged change. Damage that
// a crash cannot explain (a bad record with intact later batches behind it)
// fails import with a CorruptError rather than losing changes silently.
package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sort"
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
	// Force formats a device that already holds a pool, destroying it.
	Force bool
}

// Info is what Probe reads from a superblock.
type Info struct {
	Name, UUID    string
	ClusterSize   int64
	Capacity      int64 // data bytes: cluster count times cluster size
	FormatVersion int
}

// Stats is a pool's space accounting, exact at the moment it is taken.
type Stats struct {
	Capacity      int64 // data bytes: TotalClusters * ClusterSize
	ClusterSize   int64
	TotalClusters int64
	FreeClusters  int64 // clusters neither owned by a replica nor being allocated
	Allocated     int64 // bytes in clusters owned by replicas
	Committed     int64 // sum of replica sizes (thin replicas may exceed Capacity)
	Replicas      int
}

// ReplicaOptions configures CreateReplica.
type ReplicaOptions struct {
	Name string
	UUID string // canonical text form; empty generates one
	// Size in bytes, a positive multiple of the pool's block size.
	Size int64
	// Thin allocates clusters on first write; otherwise every cluster is
	// reserved (and zeroed) at creation.
	Thin bool
}

// ReplicaInfo describes a replica.
type ReplicaInfo struct {
	Name, UUID   string
	Size         int64
	Thin         bool
	Allocated    int64 // bytes in clusters the replica owns
	ClusterCount int   // clusters the replica owns
}

// Pool is an imported (or newly created) pool. All methods are safe for
// concurrent use. Metadata changes (replica create, resize, destroy and thin
// allocations) are durable when the method returns nil.
type Pool struct {
	dev     bdev.Device
	sb      superblock
	uuidStr string
	bs, cs  int64
	csShift uint

	closed atomic.Bool

	// adminMu serializes replica create, resize, destroy and pool close.
	adminMu sync.Mutex

	// mu guards the state below, which reflects exactly the records made
	// durable, plus the reservations of operations in flight.
	mu        sync.Mutex
	byName    map[string]*replica
	byUUID    map[[16]byte]*replica
	bm        bitmap
	owned     uint64 // clusters mapped by replicas
	reserved  uint64 // clusters taken from the bitmap by operations in flight
	committed uint64 // sum of replica sizes
	spanned   uint64 // sum of the clusters each replica's size spans

	// Group commit: callers queue records; one of them at a time (the
	// leader) writes everything queued in one log write and one flush.
	cmu     sync.Mutex
	queue   []*commitReq
	leading bool

	// logMu is held by the leader while it writes, and by Close; it guards
	// the log position and everything after it.
	logMu   sync.Mutex
	epoch   uint64 // epoch of the current checkpoint; the log's records carry it
	seq     uint64 // sequence number of the last record made durable
	logPos  int64  // next write offset within the log, block aligned
	logBuf  []byte
	cpBuf   []byte
	metaErr error // sticky: a failed metadata write leaves the pool read-only for metadata

	// flushErr is the first failed flush of the device. A device that
	// failed a flush may have lost writes acknowledged before it, whatever
	// later flushes report (Linux reports a writeback error once), so every
	// later flush through the pool fails too, until it is imported again.
	flushErr atomic.Pointer[flushFailure]
}

type flushFailure struct{ err error }

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
	sb.UUID, sb.Name, sb.Generation = id, opts.Name, 1

	if !opts.Force {
		for c := range 2 {
			buf := make([]byte, sbArea(bs))
			if _, err := dev.ReadAt(buf, int64(c)*sbArea(bs)); err != nil {
				return nil, fmt.Errorf("pool %q: reading superblock copy %d: %w", opts.Name, c, err)
			}
			if string(buf[:8]) == sbMagic {
				info := "a pool"
				if old, err := decodeSuperblock(buf); err == nil {
					info = fmt.Sprintf("pool %q (%s)", old.Name, fmtUUID(old.UUID))
				}
				return nil, fmt.Errorf("pool %q: device already holds %s; import it, or create with force to destroy it: %w", opts.Name, info, ErrHasPool)
			}
		}
	}

	p := newPool(dev, sb)
	// Wipe any old superblocks first, so a crash part way leaves a device
	// that is no pool rather than an old superblock over new metadata.
	if err := p.writeSuperblocks(true); err != nil {
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
	if err := p.writeSuperblocks(false); err != nil {
		return nil, fmt.Errorf("pool %q: %w", opts.Name, err)
	}
	slog.Info("pool created", "pool", sb.Name, "uuid", p.uuidStr, "clusters", sb.ClusterCount,
		"cluster_size", sb.ClusterSize, "metadata_size", sb.MDSize)
	return p, nil
}

// layout computes the geometry for a device of devSize bytes.
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
	sb.CPSize = checkpointBound(n0, sb.MaxReplicas, area)
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
	return &Pool{
		dev:     dev,
		sb:      sb,
		uuidStr: fmtUUID(sb.UUID),
		bs:      int64(sb.BlockSize),
		cs:      int64(sb.ClusterSize),
		csShift: uint(bits.TrailingZeros64(sb.ClusterSize)),
		byName:  map[string]*replica{},
		byUUID:  map[[16]byte]*replica{},
		bm:      newBitmap(sb.ClusterCount),
	}
}

// writeSuperblocks writes both copies (zeroes when wipe) and flushes.
func (p *Pool) writeSuperblocks(wipe bool) error {
	area := sbArea(int(p.bs))
	buf := make([]byte, area)
	if !wipe {
		p.sb.encode(buf)
	}
	for c := range int64(2) {
		if _, err := p.dev.WriteAt(buf, c*area); err != nil {
			return fmt.Errorf("writing superblock copy %d: %w", c, err)
		}
	}
	if err := p.flushDev(); err != nil {
		return fmt.Errorf("flushing superblocks: %w", err)
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
// anything. It returns ErrNotPool when there is no superblock and a
// *CorruptError when both copies are bad.
func Probe(dev bdev.Device) (Info, error) {
	sb, _, err := readSuperblocks(dev)
	if err != nil {
		return Info{}, err
	}
	return Info{
		Name: sb.Name, UUID: fmtUUID(sb.UUID), ClusterSize: int64(sb.ClusterSize),
		Capacity: int64(sb.ClusterCount * sb.ClusterSize), FormatVersion: int(sb.Version),
	}, nil
}

// Import opens the pool on dev: it picks the valid superblock copy with the
// highest generation (rewriting a bad or stale copy), loads the newest valid
// checkpoint, replays the log up to the first torn or bad record, and writes
// a fresh checkpoint so the next log starts clean. ErrNotPool when dev holds
// no pool; a *CorruptError (errors.Is ErrCorrupt) naming the damage when the
// metadata cannot be used, including damage that a torn write cannot
// explain: a bad record followed by a later intact batch of the log, or a
// bad newest checkpoint whose epoch already has records in the log (either
// way, going on would drop acknowledged changes). A failed import writes nothing and leaves dev
// open, for the caller to close; on success the pool owns dev.
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
		Replicas:      len(p.byName),
	}
}

func (p *Pool) errf(format string, args ...any) error {
	return fmt.Errorf("pool %q: "+format, append([]any{p.sb.Name}, args...)...)
}

// usable returns nil when metadata may change. Must hold p.mu.
func (p *Pool) usableLocked() error {
	if p.closed.Load() {
		return p.errf("the pool is closed; import it again: %w", ErrClosed)
	}
	if p.metaErr != nil {
		return p.errf("metadata writes failed earlier (%v); close and import the pool again: %w", p.metaErr, ErrClosed)
	}
	return nil
}

func (p *Pool) info(r *replica) ReplicaInfo {
	return ReplicaInfo{Name: r.name, UUID: r.uuidStr, Size: r.size.Load(), Thin: r.thin,
		Allocated: int64(r.owned) * p.cs, ClusterCount: int(r.owned)}
}

// Replicas lists the replicas sorted by name.
func (p *Pool) Replicas() []ReplicaInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ReplicaInfo, 0, len(p.byName))
	for _, r := range p.byName {
		out = append(out, p.info(r))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ReplicaInfo describes one replica; ErrNotFound when there is none of that name.
func (p *Pool) ReplicaInfo(name string) (ReplicaInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.byName[name]
	if r == nil {
		return ReplicaInfo{}, p.errf("replica %q does not exist; list the pool's replicas for the right name: %w", name, ErrNotFound)
	}
	return p.info(r), nil
}

// CreateReplica creates a replica. Size must be a positive multiple of the
// block size (ErrInvalid). A thick replica reserves and zeroes all its
// clusters now (ErrNoSpace, changing nothing, when they do not fit). A
// duplicate name or UUID is ErrExists. The replica is durable when this
// returns nil.
func (p *Pool) CreateReplica(opts ReplicaOptions) (ReplicaInfo, error) {
	if err := validName(opts.Name); err != nil {
		return ReplicaInfo{}, p.errf("replica %q: %v; pick a name of letters, digits, '-', '_' or '.': %w", opts.Name, err, ErrInvalid)
	}
	if err := p.validSize(opts.Name, opts.Size); err != nil {
		return ReplicaInfo{}, err
	}
	id, err := parseUUID(opts.UUID)
	if err != nil {
		return ReplicaInfo{}, p.errf("replica %q: %v: %w", opts.Name, err, ErrInvalid)
	}
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.mu.Lock()
	if err := p.usableLocked(); err != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, err
	}
	if p.byName[opts.Name] != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, p.errf("replica %q already exists; pick another name or destroy it first: %w", opts.Name, ErrExists)
	}
	if r := p.byUUID[id]; r != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, p.errf("replica %q: UUID %s is already used by replica %q; leave the UUID empty to generate one: %w", opts.Name, fmtUUID(id), r.name, ErrExists)
	}
	if len(p.byName) >= int(p.sb.MaxReplicas) {
		p.mu.Unlock()
		return ReplicaInfo{}, p.errf("replica %q: the pool already holds its maximum of %d replicas; destroy one first: %w", opts.Name, p.sb.MaxReplicas, ErrNoSpace)
	}
	if err := p.spanCheckLocked(opts.Name, 0, opts.Size); err != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, err
	}
	e := entry{UUID: id, Size: uint64(opts.Size), Thin: opts.Thin, Name: opts.Name}
	var k uint64
	if !opts.Thin {
		k = clustersFor(e.Size, uint64(p.cs))
		if err := p.reserveRunsLocked(&e, 0, k, opts.Name); err != nil {
			p.mu.Unlock()
			return ReplicaInfo{}, err
		}
	}
	p.mu.Unlock()
	if err := p.commitReserved(&record{Type: recCreate, E: e}, k); err != nil {
		return ReplicaInfo{}, p.errf("replica %q: %w", opts.Name, err)
	}
	slog.Info("replica created", "pool", p.sb.Name, "replica", opts.Name, "uuid", fmtUUID(id), "size", opts.Size, "thin", opts.Thin)
	return p.ReplicaInfo(opts.Name)
}

// validSize checks a replica size argument.
func (p *Pool) validSize(name string, size int64) error {
	if size <= 0 || size%p.bs != 0 {
		return p.errf("replica %q: size %d is not a multiple of the %d-byte block size; use a positive multiple of %d such as 1GiB: %w", name, size, p.bs, p.bs, ErrInvalid)
	}
	if clustersFor(uint64(size), uint64(p.cs)) > MaxReplicaClusters {
		return p.errf("replica %q: size %s exceeds the largest replica of %s this pool's %s clusters allow: %w",
			name, units.FormatSize(size), units.FormatSize(MaxReplicaClusters*p.cs), units.FormatSize(p.cs), ErrInvalid)
	}
	return nil
}

// spanCheckLocked refuses a size change that would take the replicas of the
// pool over maxSpannedClusters. Must hold p.mu.
func (p *Pool) spanCheckLocked(name string, old, size int64) error {
	cs := uint64(p.cs)
	if p.spanned+clustersFor(uint64(size), cs)-clustersFor(uint64(old), cs) > maxSpannedClusters {
		return p.errf("replica %q: the pool's replicas would span more than %d clusters (%s) in all, the limit on overcommitment; use smaller thin replicas: %w",
			name, maxSpannedClusters, units.FormatSize(maxSpannedClusters*p.cs), ErrNoSpace)
	}
	return nil
}

// reserveRunsLocked reserves k clusters for logical clusters first.. as runs
// in e. Must hold p.mu.
func (p *Pool) reserveRunsLocked(e *entry, first, k uint64, name string) error {
	free := p.sb.ClusterCount - p.owned - p.reserved
	if k > free {
		return p.errf("replica %q: needs %d clusters (%s) but only %d (%s) are free; use a thin replica, a smaller size, or free space: %w",
			name, k, units.FormatSize(int64(k)*p.cs), free, units.FormatSize(int64(free)*p.cs), ErrNoSpace)
	}
	e.Runs = p.bm.takeRuns(first, k)
	p.reserved += k
	return nil
}

// releaseRuns returns reserved clusters after a failed operation.
func (p *Pool) releaseRuns(runs []run) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, u := range runs {
		for i := range uint64(u.Count) {
			p.bm.clr(u.Phys + i)
			p.reserved--
		}
	}
}

// commitReserved zeroes the clusters reserved in rec's runs, then commits
// rec; on failure the reservation is released.
func (p *Pool) commitReserved(rec *record, k uint64) error {
	for _, u := range rec.E.Runs {
		if err := p.dev.WriteZeroes(p.physOff(u.Phys), int64(u.Count)*p.cs); err != nil {
			p.releaseRuns(rec.E.Runs)
			return fmt.Errorf("zeroing %d clusters at cluster %d: %w", u.Count, u.Phys, err)
		}
	}
	if err := p.commit(rec); err != nil {
		p.releaseRuns(rec.E.Runs)
		return err
	}
	return nil
}

func (p *Pool) physOff(phys uint64) int64 { return int64(p.sb.DataOff) + int64(phys)<<p.csShift }

// ResizeReplica grows a replica to newSize bytes (a multiple of the block
// size). Shrinking is ErrInvalid. A thick replica reserves and zeroes the
// new clusters (ErrNoSpace, changing nothing, when they do not fit). I/O to
// the replica pauses while the change is committed.
func (p *Pool) ResizeReplica(name string, newSize int64) error {
	if err := p.validSize(name, newSize); err != nil {
		return err
	}
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.mu.Lock()
	if err := p.usableLocked(); err != nil {
		p.mu.Unlock()
		return err
	}
	r := p.byName[name]
	if r == nil {
		p.mu.Unlock()
		return p.errf("replica %q does not exist: %w", name, ErrNotFound)
	}
	old := r.size.Load()
	if newSize < old {
		p.mu.Unlock()
		return p.errf("replica %q: new size %d is smaller than the current %d; replicas only grow: %w", name, newSize, old, ErrInvalid)
	}
	if newSize == old {
		p.mu.Unlock()
		return nil
	}
	if err := p.spanCheckLocked(name, old, newSize); err != nil {
		p.mu.Unlock()
		return err
	}
	e := entry{UUID: r.uuid, Size: uint64(newSize), Thin: r.thin}
	var k uint64
	if !r.thin {
		have := clustersFor(uint64(old), uint64(p.cs))
		k = clustersFor(uint64(newSize), uint64(p.cs)) - have
		if err := p.reserveRunsLocked(&e, have, k, name); err != nil {
			p.mu.Unlock()
			return err
		}
	}
	p.mu.Unlock()
	// The map is replaced when the record is applied, which must not race
	// with I/O reading it.
	r.io.Lock()
	err := p.commitReserved(&record{Type: recResize, E: e}, k)
	r.io.Unlock()
	if err != nil {
		return p.errf("replica %q: resize to %d: %w", name, newSize, err)
	}
	slog.Info("replica resized", "pool", p.sb.Name, "replica", name, "size", newSize)
	return nil
}

// DestroyReplica destroys a replica and frees its clusters. ErrBusy while
// handles to it are open; ErrNotFound when it does not exist.
func (p *Pool) DestroyReplica(name string) error {
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.mu.Lock()
	if err := p.usableLocked(); err != nil {
		p.mu.Unlock()
		return err
	}
	r := p.byName[name]
	if r == nil {
		p.mu.Unlock()
		return p.errf("replica %q does not exist: %w", name, ErrNotFound)
	}
	if r.opens > 0 {
		p.mu.Unlock()
		return p.errf("replica %q has %d open handles; close them (unshare the replica) first: %w", name, r.opens, ErrBusy)
	}
	r.destroying = true
	p.mu.Unlock()
	// No handle is open, but a caller may still be inside an I/O on a handle
	// it closed concurrently: wait for it, so no cluster is freed under it.
	r.io.Lock()
	err := p.commit(&record{Type: recDestroy, E: entry{UUID: r.uuid}})
	r.io.Unlock()
	if err != nil {
		p.mu.Lock()
		r.destroying = false
		p.mu.Unlock()
		return p.errf("replica %q: destroy: %w", name, err)
	}
	slog.Info("replica destroyed", "pool", p.sb.Name, "replica", name)
	return nil
}

// ReplicaByUUID describes the replica with the given UUID (canonical text
// form); ErrNotFound when there is none.
func (p *Pool) ReplicaByUUID(id string) (ReplicaInfo, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return ReplicaInfo{}, p.errf("replica UUID %q: %v: %w", id, err, ErrInvalid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.byUUID[u]
	if r == nil {
		return ReplicaInfo{}, p.errf("no replica with UUID %s: %w", id, ErrNotFound)
	}
	return p.info(r), nil
}

// OpenReplica returns a new handle to the replica; it is a bdev.Device with
// the pool's block size. Any number of handles may be open at once; closing
// one closes only that handle.
func (p *Pool) OpenReplica(name string) (*Replica, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return nil, p.errf("the pool is closed; import it again: %w", ErrClosed)
	}
	r := p.byName[name]
	if r == nil || r.destroying {
		return nil, p.errf("replica %q does not exist: %w", name, ErrNotFound)
	}
	r.opens++
	return &Replica{p: p, r: r}, nil
}

// Check verifies the pool's invariants against a recount of the cluster
// maps: no cluster owned twice, every owned cluster marked in use, owned +
// reserved + free = total, thick replicas fully allocated, and Stats equal
// to the recount. It returns a *CorruptError describing the first violation.
func (p *Pool) Check() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.sb.ClusterCount
	seen := newBitmap(n)
	var owned, committed uint64
	for name, r := range p.byName {
		if p.byUUID[r.uuid] != r {
			return corruptf("replica %q missing from the UUID index", name)
		}
		var mine uint64
		for l := range r.m {
			v := r.m[l].Load()
			if v == 0 {
				if !r.thin && uint64(l) < clustersFor(uint64(r.size.Load()), uint64(p.cs)) {
					return corruptf("thick replica %q: logical cluster %d unallocated", name, l)
				}
				continue
			}
			ph := v - 1
			if ph >= n {
				return corruptf("replica %q: logical cluster %d maps to cluster %d beyond the %d in the pool", name, l, ph, n)
			}
			if seen.get(ph) {
				return corruptf("cluster %d owned twice (second owner replica %q, logical cluster %d)", ph, name, l)
			}
			if !p.bm.get(ph) {
				return corruptf("cluster %d owned by replica %q but marked free", ph, name)
			}
			seen.set(ph)
			mine++
		}
		if mine != r.owned {
			return corruptf("replica %q owns %d clusters, accounted %d", name, mine, r.owned)
		}
		owned += mine
		committed += uint64(r.size.Load())
	}
	if len(p.byUUID) != len(p.byName) {
		return corruptf("%d replicas by UUID, %d by name", len(p.byUUID), len(p.byName))
	}
	var inUse uint64
	for _, w := range p.bm.words {
		inUse += uint64(bits.OnesCount64(w))
	}
	if owned != p.owned || committed != p.committed {
		return corruptf("recount: %d clusters owned and %d bytes committed, accounted %d and %d", owned, committed, p.owned, p.committed)
	}
	if inUse != owned+p.reserved {
		return corruptf("%d clusters marked in use, but %d owned and %d reserved", inUse, owned, p.reserved)
	}
	st := p.statsLocked()
	if st.FreeClusters+int64(owned)+int64(p.reserved) != int64(n) || st.Allocated != int64(owned)*p.cs || st.FreeClusters < 0 {
		return corruptf("stats %+v disagree with the recount (%d owned, %d reserved)", st, owned, p.reserved)
	}
	return nil
}

// Close exports the pool: it waits for metadata writes in flight, writes a
// checkpoint, flushes and closes the device. Open replica handles fail with
// ErrClosed afterwards. Later calls return ErrClosed.
func (p *Pool) Close() error {
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.logMu.Lock()
	if p.closed.Load() {
		p.logMu.Unlock()
		return p.errf("already closed: %w", ErrClosed)
	}
	var err error
	if p.metaErr == nil {
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
// and closes it. ErrBusy while replica handles are open.
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
	err := p.writeSuperblocks(true)
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
