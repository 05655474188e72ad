package engine

import (
	"errors"
	"fmt"
	"net/url"
	"os"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/pool"
)

// PoolBackend is the production Backend: disks opened with bdev.Open, pools
// from internal/pool. Pool errors become faults that name the pool, disk or
// replica and say what to do. It is a DiskResolver: a new pool on a bare
// path or file:// gets the io_uring engine.
type PoolBackend struct {
	// URingProbe reports whether io_uring can be set up here; nil means
	// bdev.ProbeURing. Where it fails, a new pool on a bare path or
	// file:// is refused with bdev.uring_unavailable, which names aio://.
	URingProbe func() error
}

// ResolveDisk implements DiskResolver with bdev.ResolveEngine.
func (b PoolBackend) ResolveDisk(uri string) (string, error) {
	probe := b.URingProbe
	if probe == nil {
		probe = bdev.ProbeURing
	}
	return bdev.ResolveEngine(uri, probe)
}

// CreatePool opens the disk and formats it. A file that bdev.Open created
// for this call is removed again when formatting fails, so a failed create
// leaves nothing behind.
func (PoolBackend) CreatePool(uri string, o CreatePoolOptions) (PoolHandle, error) {
	created := newFile(uri)
	dev, err := bdev.Open(uri)
	if err != nil {
		return nil, diskFault(uri, err)
	}
	p, err := pool.Create(dev, pool.CreateOptions{Name: o.Name, ClusterSize: o.ClusterSize, Force: o.Force, Overcommit: o.Overcommit})
	if err != nil {
		dev.Close()
		if created != "" {
			os.Remove(created)
		}
		return nil, poolFault(err, fmt.Sprintf("pool %q on disk %s", o.Name, uri), uri)
	}
	return poolHandle{p}, nil
}

// ImportPool opens the disk and imports the pool on it; a disk without a
// pool is not written to.
func (PoolBackend) ImportPool(uri string) (PoolHandle, error) {
	dev, err := bdev.Open(uri)
	if err != nil {
		return nil, diskFault(uri, err)
	}
	p, err := pool.Import(dev)
	if err != nil {
		dev.Close()
		return nil, poolFault(err, "disk "+uri, uri)
	}
	return poolHandle{p}, nil
}

// newFile returns the path of a file-backed disk (file://, aio://, uring://)
// that does not exist yet, or "".
func newFile(uri string) string {
	u, err := url.Parse(uri)
	if err != nil || !fileScheme(u.Scheme) || u.Path == "" {
		return ""
	}
	if _, err := os.Stat(u.Path); errors.Is(err, os.ErrNotExist) {
		return u.Path
	}
	return ""
}

// poolFault gives a pool error a description naming what and a resolution.
func poolFault(err error, what, disk string) error {
	// Each rule is a fault to return (with err as its cause) when err is
	// its sentinel; the codes are written out so that the registry test
	// sees them.
	rules := []struct {
		sentinel error
		f        *fault.Fault
	}{
		{pool.ErrHasPool, fault.New(fault.AlreadyExists, "pool.disk_has_pool", what,
			fmt.Sprintf("import it (nexctl pool import %s), or pass --force to format it and destroy that pool's data", importURI(disk)))},
		{pool.ErrTooSmall, fault.New(fault.InvalidArgument, "pool.disk_too_small", what,
			"use a larger disk, or give a file-backed disk a larger size (file:///path?size=1GiB)")},
		{pool.ErrNotPool, fault.New(fault.FailedPrecondition, "pool.not_pool", what,
			fmt.Sprintf("create a pool on it (nexctl pool create NAME %s)", disk))},
		{pool.ErrCorrupt, fault.New(fault.FailedPrecondition, "pool.corrupt", what,
			"the pool's metadata is corrupt and nothing was changed on the disk; restore the data from another replica, or reformat it with `nexctl pool create --force` (its data is lost)")},
		{pool.ErrInvalid, fault.New(fault.InvalidArgument, "pool.invalid", what, "check the arguments")},
		{pool.ErrUnsupported, fault.New(fault.FailedPrecondition, "pool.unsupported", what,
			"nothing was written; open the pool with the Nexstor version that wrote it, or a newer one")},
		// Before ErrNoSpace, which over-commit errors match too.
		{pool.ErrOvercommit, fault.New(fault.ResourceExhausted, "pool.overcommit", what,
			"destroy or shrink thin replicas, raise the pool's over-commit limit (pool create --overcommit, pools[].overcommit), or use another pool")},
		{pool.ErrNoSpace, fault.New(fault.ResourceExhausted, "pool.no_space", what,
			"destroy replicas you do not need, create a thin replica, or use another pool")},
		{pool.ErrExists, fault.New(fault.AlreadyExists, "replica.exists", what, "choose another name")},
		{pool.ErrNotFound, fault.New(fault.NotFound, "replica.not_found", what, "list what exists with `nexctl replica list`")},
		{pool.ErrBusy, fault.New(fault.FailedPrecondition, "pool.busy", what, "unshare the replica first (nexctl replica unshare NAME)")},
		{pool.ErrClosed, fault.New(fault.Unavailable, "pool.closed", what, "import the pool again")},
	}
	for _, r := range rules {
		if errors.Is(err, r.sentinel) {
			r.f.Err = err
			return r.f
		}
	}
	return fault.Wrap(err, fault.Internal, "pool.io", what, "see the server log; check the disk")
}

// poolHandle adapts *pool.Pool to PoolHandle.
type poolHandle struct{ p *pool.Pool }

func (h poolHandle) Name() string { return h.p.Name() }
func (h poolHandle) UUID() string { return h.p.UUID() }

func (h poolHandle) Stats() PoolStats {
	s := h.p.Stats()
	return PoolStats{Capacity: s.Capacity, ClusterSize: s.ClusterSize, TotalClusters: s.TotalClusters,
		FreeClusters: s.FreeClusters, Allocated: s.Allocated, Committed: s.Committed, Replicas: s.Replicas, Snapshots: s.Snapshots,
		Overcommit: s.Overcommit, CommitLimit: s.CommitLimit}
}

func (h poolHandle) what(replica string) string {
	return fmt.Sprintf("replica %q in pool %q", replica, h.p.Name())
}

func (h poolHandle) CreateReplica(s ReplicaSpec) (ReplicaStat, error) {
	var owner uuid.UUID
	if s.Owner != "" {
		var err error
		if owner, err = uuid.Parse(s.Owner); err != nil {
			return ReplicaStat{}, poolFault(fmt.Errorf("owner %q: %v: %w", s.Owner, err, pool.ErrInvalid), h.what(s.Name), "")
		}
	}
	ri, err := h.p.CreateReplica(pool.ReplicaOptions{Name: s.Name, UUID: s.UUID, Size: s.Size, Thin: s.Thin, Owner: owner})
	if err != nil {
		return ReplicaStat{}, poolFault(err, h.what(s.Name), "")
	}
	return replicaStat(ri), nil
}

func (h poolHandle) Replicas() []ReplicaStat {
	list := h.p.Replicas()
	out := make([]ReplicaStat, 0, len(list))
	for _, ri := range list {
		out = append(out, replicaStat(ri))
	}
	return out
}

func (h poolHandle) ReplicaInfo(name string) (ReplicaStat, error) {
	ri, err := h.p.ReplicaInfo(name)
	if err != nil {
		return ReplicaStat{}, poolFault(err, h.what(name), "")
	}
	return replicaStat(ri), nil
}

func (h poolHandle) OpenReplica(name string) (bdev.Device, error) {
	r, err := h.p.OpenReplica(name)
	if err != nil {
		return nil, poolFault(err, h.what(name), "")
	}
	return r, nil
}

func (h poolHandle) DestroyReplica(name string) error {
	if err := h.p.DestroyReplica(name); err != nil {
		return poolFault(err, h.what(name), "")
	}
	return nil
}

func (h poolHandle) ResizeReplica(name string, size int64) error {
	if err := h.p.ResizeReplica(name, size); err != nil {
		return poolFault(err, h.what(name), "")
	}
	return nil
}

func (h poolHandle) Disown(name string) error {
	if err := h.p.Disown(name); err != nil {
		return poolFault(err, h.what(name), "")
	}
	return nil
}

var _ Snapshotter = poolHandle{}

// snapshotFault gives a pool error about a snapshot a fault naming it,
// with the codes of snapshots where they differ from those of replicas.
func snapshotFault(err error, what string) error {
	rules := []struct {
		sentinel error
		f        *fault.Fault
	}{
		{pool.ErrNotFound, fault.New(fault.NotFound, "snapshot.not_found", what, "list the snapshots with `nexctl snapshot list`")},
		{pool.ErrExists, fault.New(fault.AlreadyExists, "snapshot.exists", what,
			"choose another name and uuid; names are unique among a pool's replicas and snapshots")},
		{pool.ErrBusy, fault.New(fault.FailedPrecondition, "snapshot.busy", what, "close what reads the snapshot first")},
		{pool.ErrInvalid, fault.New(fault.InvalidArgument, "snapshot.invalid", what,
			"snapshots are taken of thin replicas only; check the name and uuid")},
	}
	for _, r := range rules {
		if errors.Is(err, r.sentinel) {
			r.f.Err = err
			return r.f
		}
	}
	return poolFault(err, what, "")
}

func snapshotStat(si pool.SnapshotInfo) SnapshotStat {
	return SnapshotStat{Name: si.Name, UUID: si.UUID, Origin: si.Origin, OriginName: si.OriginName, Created: si.Created,
		Size: si.Size, Referenced: si.Referenced, Exclusive: si.Exclusive}
}

func (h poolHandle) CreateSnapshot(replica string, s SnapshotSpec) (SnapshotStat, error) {
	si, err := h.p.CreateSnapshot(replica, pool.SnapshotOptions{Name: s.Name, UUID: s.UUID, Created: s.Created})
	if err != nil {
		return SnapshotStat{}, snapshotFault(err, fmt.Sprintf("snapshot %q of replica %q in pool %q", s.Name, replica, h.p.Name()))
	}
	return snapshotStat(si), nil
}

func (h poolHandle) Snapshots() []SnapshotStat {
	list := h.p.Snapshots()
	out := make([]SnapshotStat, 0, len(list))
	for _, si := range list {
		out = append(out, snapshotStat(si))
	}
	return out
}

func (h poolHandle) DeleteSnapshot(name string) error {
	if err := h.p.DeleteSnapshot(name); err != nil {
		return snapshotFault(err, fmt.Sprintf("snapshot %q in pool %q", name, h.p.Name()))
	}
	return nil
}

func (h poolHandle) CloneSnapshot(snapshot string, s ReplicaSpec) (ReplicaStat, error) {
	var owner uuid.UUID
	if s.Owner != "" {
		var err error
		if owner, err = uuid.Parse(s.Owner); err != nil {
			return ReplicaStat{}, poolFault(fmt.Errorf("owner %q: %v: %w", s.Owner, err, pool.ErrInvalid), h.what(s.Name), "")
		}
	}
	ri, err := h.p.CloneSnapshot(snapshot, pool.ReplicaOptions{Name: s.Name, UUID: s.UUID, Owner: owner})
	if err != nil {
		if errors.Is(err, pool.ErrNotFound) {
			return ReplicaStat{}, snapshotFault(err, fmt.Sprintf("clone %q of snapshot %q in pool %q", s.Name, snapshot, h.p.Name()))
		}
		return ReplicaStat{}, poolFault(err, fmt.Sprintf("clone %q of snapshot %q in pool %q", s.Name, snapshot, h.p.Name()), "")
	}
	return replicaStat(ri), nil
}

func (h poolHandle) SetOvercommit(percent int) error {
	if err := h.p.SetOvercommit(percent); err != nil {
		return poolFault(err, fmt.Sprintf("pool %q", h.p.Name()), "")
	}
	return nil
}

func (h poolHandle) Close() error {
	if err := h.p.Close(); err != nil {
		return poolFault(err, fmt.Sprintf("pool %q", h.p.Name()), "")
	}
	return nil
}

func (h poolHandle) Destroy() error {
	if err := h.p.Destroy(); err != nil {
		return poolFault(err, fmt.Sprintf("pool %q", h.p.Name()), "")
	}
	return nil
}

func replicaStat(ri pool.ReplicaInfo) ReplicaStat {
	rs := ReplicaStat{Name: ri.Name, UUID: ri.UUID, Size: ri.Size, Thin: ri.Thin, Allocated: ri.Allocated,
		NGUID: ri.NGUID, Epoch: ri.Epoch, Origin: ri.Origin, Exclusive: ri.Exclusive}
	if ri.Owner != uuid.Nil {
		rs.Owner = ri.Owner.String()
	}
	return rs
}
