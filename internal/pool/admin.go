package pool

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"sort"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/units"
)

// ReplicaOptions configures CreateReplica.
type ReplicaOptions struct {
	Name string
	UUID string // canonical text form; empty generates one
	// Size in bytes, a positive multiple of the pool's block size.
	Size int64
	// Thin allocates clusters on first write; otherwise every cluster is
	// reserved (and zeroed) at creation.
	Thin bool
	// Owner, when not zero, is the nexus UUID the replica is claimed for
	// as it is created, at epoch 0, in the same durable record: it is
	// never unowned, and only that owner may claim it (see Claim).
	Owner uuid.UUID
}

// ReplicaInfo describes a replica.
type ReplicaInfo struct {
	Name, UUID   string
	Size         int64
	Thin         bool
	Allocated    int64 // bytes in clusters the replica owns
	ClusterCount int   // clusters the replica owns
	// NGUID is the replica's identity, drawn at random when it was created
	// and never changed; a replica created again under the same UUID has
	// another.
	NGUID [16]byte
	// Owner is the UUID of the nexus that has claimed the replica, zero
	// when it is unowned; Epoch is the highest fencing epoch it accepted.
	Owner uuid.UUID
	Epoch uint64
	// Exclusive is the bytes in clusters only this replica holds; the
	// rest of Allocated is shared with snapshots or clones.
	Exclusive int64
	// Origin is, for a clone, the UUID of the snapshot it was made from;
	// empty for other replicas.
	Origin string
}

// info describes r. Must hold p.mu.
func (p *Pool) info(r *replica) ReplicaInfo {
	c := r.claim.Load()
	ri := ReplicaInfo{Name: r.name, UUID: r.uuidStr, Size: r.size.Load(), Thin: r.thin,
		Allocated: int64(r.owned) * p.cs, ClusterCount: int(r.owned),
		NGUID: r.nguid, Owner: c.owner, Epoch: c.epoch, Exclusive: int64(r.owned) * p.cs}
	if p.extra > 0 {
		ri.Exclusive = int64(p.exclusiveLocked(r)) * p.cs
	}
	if r.hasOrigin {
		ri.Origin = fmtUUID(r.origin.UUID)
	}
	return ri
}

// Replicas lists the replicas (clones included, snapshots not) sorted by
// name.
func (p *Pool) Replicas() []ReplicaInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ReplicaInfo, 0, len(p.byName))
	for _, r := range p.byName {
		if !r.snap {
			out = append(out, p.info(r))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ReplicaInfo describes one replica; ErrNotFound when there is none of that name.
func (p *Pool) ReplicaInfo(name string) (ReplicaInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.byName[name]
	if r == nil || r.snap {
		return ReplicaInfo{}, p.errf("replica %q does not exist; list the pool's replicas for the right name: %w", name, ErrNotFound)
	}
	return p.info(r), nil
}

// ReplicaByUUID describes the replica with the given UUID (canonical text
// form); ErrNotFound when there is none.
func (p *Pool) ReplicaByUUID(id string) (ReplicaInfo, error) {
	r, err := p.byUUIDString(id)
	if err != nil {
		return ReplicaInfo{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.info(r), nil
}

// byUUIDString finds a live replica by its UUID in text form.
func (p *Pool) byUUIDString(id string) (*replica, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return nil, p.errf("replica UUID %q: %v: %w", id, err, ErrInvalid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.byUUID[u]
	if r == nil || r.destroying || r.snap {
		return nil, p.errf("no replica with UUID %s: %w", id, ErrNotFound)
	}
	return r, nil
}

// newNGUID draws a replica identity: random, never zero, and unlike any
// other replica's in the pool. Must hold p.mu.
func (p *Pool) newNGUIDLocked() ([16]byte, error) {
	for {
		var n [16]byte
		if _, err := rand.Read(n[:]); err != nil {
			return n, fmt.Errorf("drawing a replica NGUID: %w", err)
		}
		if n == ([16]byte{}) {
			continue
		}
		unique := true
		for _, r := range p.byUUID {
			unique = unique && r.nguid != n
		}
		if unique {
			return n, nil
		}
	}
}

// CreateReplica creates a replica with a new random NGUID at epoch 0,
// unowned unless opts.Owner is set (then owned by it from the start, in the
// create record itself). Size must be a positive multiple of the block size (ErrInvalid). The
// sizes of all replicas together may not exceed the over-commit limit
// (ErrOvercommit, which also matches ErrNoSpace; the error gives the
// numbers). A thick replica reserves and zeroes all its clusters now
// (ErrNoSpace, changing nothing, when they do not fit). A duplicate name or
// UUID is ErrExists. The replica is durable when this returns nil.
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
		return ReplicaInfo{}, p.errf("replica %q already exists (as a replica or snapshot); pick another name or destroy it first: %w", opts.Name, ErrExists)
	}
	if r := p.byUUID[id]; r != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, p.errf("replica %q: UUID %s is already used by replica %q; leave the UUID empty to generate one: %w", opts.Name, fmtUUID(id), r.name, ErrExists)
	}
	if len(p.byName) >= int(p.sb.MaxReplicas) {
		p.mu.Unlock()
		return ReplicaInfo{}, p.errf("replica %q: the pool already holds its maximum of %d replicas and snapshots; destroy one first: %w", opts.Name, p.sb.MaxReplicas, ErrNoSpace)
	}
	if err := p.budgetCheckLocked(fmt.Sprintf("replica %q", opts.Name), maxEntryLen, 0); err != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, err
	}
	if err := p.spanCheckLocked(opts.Name, 0, opts.Size); err != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, err
	}
	if err := p.overcommitCheckLocked(opts.Name, 0, opts.Size); err != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, err
	}
	nguid, err := p.newNGUIDLocked()
	if err != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, p.errf("replica %q: %w", opts.Name, err)
	}
	e := entry{UUID: id, Size: uint64(opts.Size), Thin: opts.Thin, Name: opts.Name, HasID: true, ID: ident{NGUID: nguid, Owner: opts.Owner}}
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
	if opts.Owner != (uuid.UUID{}) {
		slog.Info("replica created owned", "pool", p.sb.Name, "replica", opts.Name, "uuid", fmtUUID(id), "size", opts.Size, "thin", opts.Thin,
			"owner", opts.Owner.String())
	} else {
		slog.Info("replica created", "pool", p.sb.Name, "replica", opts.Name, "uuid", fmtUUID(id), "size", opts.Size, "thin", opts.Thin)
	}
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

// overcommitCheckLocked refuses a size change from old to size bytes that
// would take the sum of replica sizes beyond the over-commit limit. Must
// hold p.mu.
func (p *Pool) overcommitCheckLocked(name string, old, size int64) error {
	asked := uint64(size - old)
	limit := p.commitLimitLocked()
	if p.committed <= limit && asked <= limit-p.committed {
		return nil
	}
	capacity := p.sb.ClusterCount * uint64(p.cs)
	return p.errf("replica %q: %s more would commit %s, beyond the pool's thin over-commit limit of %d%% of its %s capacity (%s) "+
		"(capacity %d bytes, committed %d, asked %d, limit %d%%); destroy or shrink replicas, raise the pool's over-commit limit, or use another pool: %w (%w)",
		name, units.FormatSize(int64(asked)), units.FormatSize(int64(min(p.committed+asked, 1<<63-1))), p.sb.overcommit(),
		units.FormatSize(int64(capacity)), units.FormatSize(int64(min(limit, 1<<63-1))),
		capacity, p.committed, asked, p.sb.overcommit(), ErrOvercommit, ErrNoSpace)
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
// size). Shrinking is ErrInvalid. Growing beyond the over-commit limit is
// ErrOvercommit (the error gives the numbers). A thick replica reserves and
// zeroes the new clusters (ErrNoSpace, changing nothing, when they do not
// fit). I/O to the replica pauses while the change is committed.
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
	if r == nil || r.snap {
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
	if err := p.overcommitCheckLocked(name, old, newSize); err != nil {
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
// handles to it (claimed ones included) are open; ErrNotFound when it does
// not exist. Its owner does not matter: a destroyed replica's identity is
// gone, and one created under the same UUID gets a new NGUID.
func (p *Pool) DestroyReplica(name string) error {
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.mu.Lock()
	err := p.usableLocked()
	r := p.byName[name]
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if r == nil || r.snap {
		return p.errf("replica %q does not exist: %w", name, ErrNotFound)
	}
	return p.destroyLocked(r, "replica")
}

// destroyLocked destroys the replica, clone or snapshot r (what names it
// in errors). Must hold adminMu.
func (p *Pool) destroyLocked(r *replica, what string) error {
	name := r.name
	// No claim record may be committed for the replica once its destroy
	// record is: claims hold claimMu across their commit.
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	p.mu.Lock()
	if err := p.usableLocked(); err != nil {
		p.mu.Unlock()
		return err
	}
	if r.opens > 0 {
		p.mu.Unlock()
		return p.errf("%s %q has %d open handles; close them (unshare it, stop its nexus) first: %w", what, name, r.opens, ErrBusy)
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
		return p.errf("%s %q: destroy: %w", what, name, err)
	}
	slog.Info(what+" destroyed", "pool", p.sb.Name, "name", name)
	return nil
}

// OpenReplica returns a new, unclaimed handle to the replica; it is a
// bdev.Device with the pool's block size and a bdev.Claimer. Any number of
// handles may be open at once; closing one closes only that handle. While
// the replica has an owner, an unclaimed handle reads but its writes,
// flushes, unmaps and write-zeroes fail with a *bdev.OwnedError.
func (p *Pool) OpenReplica(name string) (*Replica, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return nil, p.errf("the pool is closed; import it again: %w", ErrClosed)
	}
	r := p.byName[name]
	if r == nil || r.destroying || r.snap {
		return nil, p.errf("replica %q does not exist: %w", name, ErrNotFound)
	}
	r.opens++
	return &Replica{p: p, r: r}, nil
}

// OpenReplicaByUUID is OpenReplica for the replica with the given UUID
// (canonical text form), so that a caller holding a UUID cannot open
// another replica that took the name over.
func (p *Pool) OpenReplicaByUUID(id string) (*Replica, error) {
	r, err := p.byUUIDString(id)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return nil, p.errf("the pool is closed; import it again: %w", ErrClosed)
	}
	if r.destroying || r.gone.Load() {
		return nil, p.errf("no replica with UUID %s: %w", id, ErrNotFound)
	}
	r.opens++
	return &Replica{p: p, r: r}, nil
}

// Disown clears the replica's owner, durably (the epoch is kept), and fences
// every claimed handle of it: their I/O fails with bdev.ErrFenced from the
// moment Disown returns, and none is in flight then. It is the forced
// counterpart of Release, for operators taking a replica away from a nexus
// that cannot release it. Disowning an unowned replica writes nothing but
// still fences its handles. ErrNotFound when there is no such replica.
func (p *Pool) Disown(name string) error {
	p.mu.Lock()
	r := p.byName[name]
	p.mu.Unlock()
	if r == nil || r.snap {
		return p.errf("replica %q does not exist: %w", name, ErrNotFound)
	}
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	if r.gone.Load() {
		return p.errf("replica %q does not exist: %w", name, ErrNotFound)
	}
	old := r.claim.Load()
	if old.owner != (uuid.UUID{}) {
		if err := p.commit(claimRecord(r, uuid.UUID{}, old.epoch)); err != nil {
			return p.errf("replica %q: disown: %w", name, err)
		}
	}
	r.supersede()
	slog.Warn("replica disowned", "pool", p.sb.Name, "replica", name, "owner", old.owner.String(), "epoch", old.epoch)
	return nil
}
