package pool

import (
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/google/uuid"
)

// SnapshotOptions configures CreateSnapshot.
type SnapshotOptions struct {
	// Name of the snapshot: unique among the pool's replicas and
	// snapshots, same rules as a replica name.
	Name string
	// UUID in canonical text form; empty generates one. A snapshot of the
	// same replica under this UUID already existing makes CreateSnapshot
	// return it (idempotent).
	UUID string
	// Created is the snapshot's timestamp, stored with it; zero means now.
	// The snapshots of one volume on several replicas carry the same one.
	Created time.Time
}

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	Name, UUID string
	// Origin is the UUID of the replica the snapshot was taken of, and
	// OriginName its name while it exists (empty once destroyed).
	Origin, OriginName string
	Created            time.Time
	Size               int64 // the replica's size when the snapshot was taken
	// Referenced is the bytes of the clusters the snapshot holds, shared
	// or not; Exclusive those only it holds, which deleting it frees.
	Referenced, Exclusive int64
	NGUID                 [16]byte
}

// checkpointNeedLocked is the bound on the size of a checkpoint of the
// current state with addEntry more entry bytes and addExtra more shared
// references, whatever allocations, writes and frees follow (see "The
// sharing budget" in docs/pool-format.md). Must hold p.mu.
func (p *Pool) checkpointNeedLocked(addEntry, addExtra uint64) uint64 {
	return cpHeaderLen + 4 + p.entryBytes + addEntry + (p.sb.ClusterCount+p.extra+addExtra)*runLen
}

// budgetCheckLocked refuses an operation that would add an entry of
// addEntry bytes and addExtra shared references when a checkpoint might
// then not fit its slot. Must hold p.mu.
func (p *Pool) budgetCheckLocked(what string, addEntry, addExtra uint64) error {
	need := p.checkpointNeedLocked(addEntry, addExtra)
	if need <= p.sb.CPSize {
		return nil
	}
	return p.errf("%s: the pool's metadata has no room for it: it would share %d more cluster references (%d shared now), "+
		"and a checkpoint of the pool could then need %d bytes, more than its %d-byte checkpoint slot; "+
		"delete snapshots or clones, or destroy replicas, to make room: %w",
		what, addExtra, p.extra, need, p.sb.CPSize, ErrNoSpace)
}

// exclusiveLocked counts the clusters of r that no other map holds. Must
// hold p.mu.
func (p *Pool) exclusiveLocked(r *replica) uint64 {
	var n uint64
	for i := range r.m {
		if v := r.m[i].Load(); v != 0 && p.refs[v-1].Load() == 1 {
			n++
		}
	}
	return n
}

func (p *Pool) snapInfo(r *replica) SnapshotInfo {
	si := SnapshotInfo{Name: r.name, UUID: r.uuidStr, Origin: fmtUUID(r.origin.UUID), Created: time.Unix(0, r.origin.Created).UTC(),
		Size: r.size.Load(), Referenced: int64(r.owned) * p.cs, Exclusive: int64(p.exclusiveLocked(r)) * p.cs, NGUID: r.nguid}
	if o := p.byUUID[r.origin.UUID]; o != nil && !o.snap {
		si.OriginName = o.name
	}
	return si
}

// setSnapshotsFeature sets the snapshots feature bit in both superblock
// copies (copy 0, flush, copy 1, flush, generation incremented): from the
// write of copy 0 on, a build that does not know the bit refuses the pool.
// Must hold adminMu.
func (p *Pool) setSnapshotsFeature() error {
	if p.snapshotsOn() {
		return nil
	}
	sb := p.sb
	sb.Incompat |= incompatSnapshots
	sb.Generation++
	if err := p.writeSuperblocks(&sb); err != nil {
		// One copy may have the bit: which one import picks is unknown
		// until then, so no further metadata change is allowed.
		p.failMeta(err)
		return p.errf("setting the snapshots feature: %w; close and import the pool again: %w", err, ErrClosed)
	}
	p.mu.Lock()
	p.sb.Incompat, p.sb.Generation = sb.Incompat, sb.Generation
	p.mu.Unlock()
	p.snapOn.Store(true)
	slog.Info("pool snapshots feature enabled; releases without snapshot support no longer import the pool", "pool", p.sb.Name)
	return nil
}

// CreateSnapshot takes a read-only snapshot of the thin replica named
// replica, without copying data: the snapshot shares the replica's
// clusters, and the replica's next write to a shared cluster copies it
// first (copy-on-write, one cluster at a time). I/O to the replica pauses
// while the snapshot record is made durable; every write acknowledged
// before CreateSnapshot was called is in the snapshot, and durable with it.
// The first snapshot of a pool sets its snapshots feature bit (see
// docs/pool-format.md), after which older releases refuse to import it.
//
// A snapshot of that replica with opts.UUID existing is returned as it is.
// ErrNotFound when there is no such replica; ErrInvalid for a thick
// replica, a bad name or UUID; ErrExists when the name or UUID is taken;
// ErrNoSpace when the replica limit or the metadata's sharing budget would
// be exceeded. The snapshot is durable when this returns nil.
func (p *Pool) CreateSnapshot(replica string, opts SnapshotOptions) (SnapshotInfo, error) {
	if err := validName(opts.Name); err != nil {
		return SnapshotInfo{}, p.errf("snapshot %q: %v; pick a name of letters, digits, '-', '_' or '.': %w", opts.Name, err, ErrInvalid)
	}
	id, err := parseUUID(opts.UUID)
	if err != nil {
		return SnapshotInfo{}, p.errf("snapshot %q: %v: %w", opts.Name, err, ErrInvalid)
	}
	created := opts.Created
	if created.IsZero() {
		created = time.Now()
	}
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.mu.Lock()
	if err := p.usableLocked(); err != nil {
		p.mu.Unlock()
		return SnapshotInfo{}, err
	}
	r := p.byName[replica]
	if r == nil || r.snap || r.destroying {
		p.mu.Unlock()
		return SnapshotInfo{}, p.errf("snapshot %q: replica %q does not exist: %w", opts.Name, replica, ErrNotFound)
	}
	if s := p.byUUID[id]; s != nil {
		defer p.mu.Unlock()
		if s.snap && s.origin.UUID == r.uuid && s.name == opts.Name {
			return p.snapInfo(s), nil
		}
		return SnapshotInfo{}, p.errf("snapshot %q: UUID %s is already used by %q; leave the UUID empty to generate one: %w", opts.Name, fmtUUID(id), s.name, ErrExists)
	}
	if !r.thin {
		p.mu.Unlock()
		return SnapshotInfo{}, p.errf("snapshot %q: replica %q is thick, and snapshots of thick replicas are not supported (a copy-on-write would need space a thick replica promises not to need); use a thin replica: %w",
			opts.Name, replica, ErrInvalid)
	}
	if p.byName[opts.Name] != nil {
		p.mu.Unlock()
		return SnapshotInfo{}, p.errf("snapshot %q: a replica or snapshot of that name exists; pick another name: %w", opts.Name, ErrExists)
	}
	if len(p.byName) >= int(p.sb.MaxReplicas) {
		p.mu.Unlock()
		return SnapshotInfo{}, p.errf("snapshot %q: the pool already holds its maximum of %d replicas and snapshots; delete one first: %w", opts.Name, p.sb.MaxReplicas, ErrNoSpace)
	}
	if err := p.spanCheckLocked(opts.Name, 0, r.size.Load()); err != nil {
		p.mu.Unlock()
		return SnapshotInfo{}, err
	}
	nguid, err := p.newNGUIDLocked()
	p.mu.Unlock()
	if err != nil {
		return SnapshotInfo{}, p.errf("snapshot %q: %w", opts.Name, err)
	}
	if err := p.setSnapshotsFeature(); err != nil {
		return SnapshotInfo{}, err
	}
	// Pause I/O to the replica: every write in flight completes, none
	// starts until the record is applied, so the snapshot holds exactly
	// the writes acknowledged before, and the commit's flush makes them
	// durable with it.
	pause := time.Now()
	r.io.Lock()
	p.mu.Lock()
	err = p.budgetCheckLocked(fmt.Sprintf("snapshot %q of replica %q", opts.Name, replica), maxEntryLenOrigin, r.owned)
	size := r.size.Load()
	gone := r.gone.Load()
	p.mu.Unlock()
	if err == nil && gone {
		err = p.errf("snapshot %q: replica %q was destroyed: %w", opts.Name, replica, ErrNotFound)
	}
	if err == nil {
		err = p.commit(&record{Type: recSnap, E: entry{UUID: id, Size: uint64(size), Thin: true, Snapshot: true, Name: opts.Name,
			HasID: true, ID: ident{NGUID: nguid}, HasOrigin: true, Origin: origin{UUID: r.uuid, Created: created.UnixNano()}}})
	}
	r.io.Unlock()
	paused := time.Since(pause)
	if err != nil {
		return SnapshotInfo{}, p.errf("snapshot %q of replica %q: %w", opts.Name, replica, err)
	}
	slog.Info("snapshot created", "pool", p.sb.Name, "snapshot", opts.Name, "uuid", fmtUUID(id), "replica", replica,
		"size", size, "io_paused", paused)
	return p.SnapshotInfo(opts.Name)
}

// CloneSnapshot creates a writable thin replica whose content is the
// snapshot's, sharing its clusters (nothing is copied; writes to shared
// clusters copy them first). opts.Size must be 0 or the snapshot's size,
// and opts.Thin is implied; opts.Owner, when set, owns the clone from its
// creation as in CreateReplica. A replica with opts.UUID that is already a
// clone of this snapshot with that name is returned as it is. ErrNotFound
// when there is no such snapshot; ErrExists, ErrInvalid, ErrNoSpace and
// ErrOvercommit as CreateReplica. The clone is durable when this returns
// nil.
func (p *Pool) CloneSnapshot(snapshot string, opts ReplicaOptions) (ReplicaInfo, error) {
	if err := validName(opts.Name); err != nil {
		return ReplicaInfo{}, p.errf("clone %q: %v; pick a name of letters, digits, '-', '_' or '.': %w", opts.Name, err, ErrInvalid)
	}
	id, err := parseUUID(opts.UUID)
	if err != nil {
		return ReplicaInfo{}, p.errf("clone %q: %v: %w", opts.Name, err, ErrInvalid)
	}
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.mu.Lock()
	if err := p.usableLocked(); err != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, err
	}
	s := p.byName[snapshot]
	if s == nil || !s.snap || s.destroying {
		p.mu.Unlock()
		return ReplicaInfo{}, p.errf("clone %q: snapshot %q does not exist: %w", opts.Name, snapshot, ErrNotFound)
	}
	size := s.size.Load()
	if opts.Size != 0 && opts.Size != size {
		p.mu.Unlock()
		return ReplicaInfo{}, p.errf("clone %q: size %d differs from snapshot %q's %d; leave it 0 and resize the clone afterwards: %w", opts.Name, opts.Size, snapshot, size, ErrInvalid)
	}
	if c := p.byUUID[id]; c != nil {
		defer p.mu.Unlock()
		if !c.snap && c.hasOrigin && c.origin.UUID == s.uuid && c.name == opts.Name {
			return p.info(c), nil
		}
		return ReplicaInfo{}, p.errf("clone %q: UUID %s is already used by %q; leave the UUID empty to generate one: %w", opts.Name, fmtUUID(id), c.name, ErrExists)
	}
	if p.byName[opts.Name] != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, p.errf("clone %q: a replica or snapshot of that name exists; pick another name: %w", opts.Name, ErrExists)
	}
	if len(p.byName) >= int(p.sb.MaxReplicas) {
		p.mu.Unlock()
		return ReplicaInfo{}, p.errf("clone %q: the pool already holds its maximum of %d replicas and snapshots; delete one first: %w", opts.Name, p.sb.MaxReplicas, ErrNoSpace)
	}
	if err := p.spanCheckLocked(opts.Name, 0, size); err != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, err
	}
	if err := p.overcommitCheckLocked(opts.Name, 0, size); err != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, err
	}
	if err := p.budgetCheckLocked(fmt.Sprintf("clone %q of snapshot %q", opts.Name, snapshot), maxEntryLenOrigin, s.owned); err != nil {
		p.mu.Unlock()
		return ReplicaInfo{}, err
	}
	nguid, err := p.newNGUIDLocked()
	p.mu.Unlock()
	if err != nil {
		return ReplicaInfo{}, p.errf("clone %q: %w", opts.Name, err)
	}
	// The snapshot's map never changes, and adminMu keeps it from being
	// deleted meanwhile.
	rec := &record{Type: recClone, E: entry{UUID: id, Size: uint64(size), Thin: true, Name: opts.Name,
		HasID: true, ID: ident{NGUID: nguid, Owner: opts.Owner}, HasOrigin: true, Origin: origin{UUID: s.uuid, Created: time.Now().UnixNano()}}}
	if err := p.commit(rec); err != nil {
		return ReplicaInfo{}, p.errf("clone %q of snapshot %q: %w", opts.Name, snapshot, err)
	}
	slog.Info("snapshot cloned", "pool", p.sb.Name, "snapshot", snapshot, "clone", opts.Name, "uuid", fmtUUID(id), "owner", opts.Owner.String())
	return p.ReplicaInfo(opts.Name)
}

// DeleteSnapshot deletes a snapshot; clusters no other replica, clone or
// snapshot holds are freed. Clones of it and the replica it was taken of
// are unaffected. ErrBusy while handles to it are open; ErrNotFound when
// there is no snapshot of that name.
func (p *Pool) DeleteSnapshot(name string) error {
	p.adminMu.Lock()
	defer p.adminMu.Unlock()
	p.mu.Lock()
	err := p.usableLocked()
	r := p.byName[name]
	if err == nil && (r == nil || !r.snap) {
		err = p.errf("snapshot %q does not exist: %w", name, ErrNotFound)
	}
	p.mu.Unlock()
	if err != nil {
		return err
	}
	return p.destroyLocked(r, "snapshot")
}

// Snapshots lists the snapshots sorted by name.
func (p *Pool) Snapshots() []SnapshotInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []SnapshotInfo
	for _, r := range p.byName {
		if r.snap {
			out = append(out, p.snapInfo(r))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SnapshotInfo describes one snapshot; ErrNotFound when there is none of
// that name.
func (p *Pool) SnapshotInfo(name string) (SnapshotInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.byName[name]
	if r == nil || !r.snap {
		return SnapshotInfo{}, p.errf("snapshot %q does not exist: %w", name, ErrNotFound)
	}
	return p.snapInfo(r), nil
}

// SnapshotByUUID describes the snapshot with the given UUID (canonical
// text form); ErrNotFound when there is none.
func (p *Pool) SnapshotByUUID(id string) (SnapshotInfo, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return SnapshotInfo{}, p.errf("snapshot UUID %q: %v: %w", id, err, ErrInvalid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.byUUID[u]
	if r == nil || !r.snap || r.destroying {
		return SnapshotInfo{}, p.errf("no snapshot with UUID %s: %w", id, ErrNotFound)
	}
	return p.snapInfo(r), nil
}

// OpenSnapshot returns a read-only handle to a snapshot: a bdev.Device
// whose reads return the snapshot's content and whose writes, unmaps and
// write-zeroes fail with bdev.ErrReadOnly. ErrNotFound when there is no
// snapshot of that name.
func (p *Pool) OpenSnapshot(name string) (*Replica, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return nil, p.errf("the pool is closed; import it again: %w", ErrClosed)
	}
	r := p.byName[name]
	if r == nil || !r.snap || r.destroying {
		return nil, p.errf("snapshot %q does not exist: %w", name, ErrNotFound)
	}
	r.opens++
	return &Replica{p: p, r: r}, nil
}
