package engine

import (
	"context"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
)

// Backend is what the engine needs from the storage layers below it: opening
// disks and formatting or importing pools on them. The production Backend is
// PoolBackend (internal/bdev + internal/pool); tests may supply another.
//
// Errors must be faults (internal/fault) or wrap the pool package's sentinel
// errors, so that the engine can report exact codes.
type Backend interface {
	// CreatePool formats the disk at uri as a new pool.
	CreatePool(uri string, opts CreatePoolOptions) (PoolHandle, error)
	// ImportPool opens the pool on the disk at uri. It never writes to a disk
	// that does not hold a pool.
	ImportPool(uri string) (PoolHandle, error)
}

// DiskResolver is implemented by a Backend that chooses the I/O engine of a
// disk named without one. The engine calls ResolveDisk on the disk of every
// new pool (pool create, pool import, the pools of the configuration) before
// anything else and records what it returns; the disks of remembered pools
// are used as recorded. PoolBackend resolves a bare path or file:// to
// uring:// (see bdev.ResolveEngine).
type DiskResolver interface {
	// ResolveDisk returns the URI to open and record for uri, or a fault
	// saying why that disk cannot be used as named.
	ResolveDisk(uri string) (string, error)
}

// CreatePoolOptions are the options of Backend.CreatePool.
type CreatePoolOptions struct {
	Name        string
	ClusterSize int64 // bytes; 0 means the pool default
	Force       bool  // format over an existing pool
	// Overcommit is the thin over-commit limit in percent of the
	// capacity; 0 means the default.
	Overcommit int
}

// PoolHandle is an open pool. Its methods are safe for concurrent use; the
// engine calls them without holding its registry lock.
type PoolHandle interface {
	Name() string
	UUID() string
	Stats() PoolStats
	CreateReplica(spec ReplicaSpec) (ReplicaStat, error)
	Replicas() []ReplicaStat
	ReplicaInfo(name string) (ReplicaStat, error)
	// OpenReplica returns the replica as a block device; while it is open the
	// replica cannot be destroyed.
	OpenReplica(name string) (bdev.Device, error)
	DestroyReplica(name string) error
	ResizeReplica(name string, size int64) error
	// Disown clears a replica's owner, durably, and fences every claimed
	// handle of it (a forced operation on an owned replica).
	Disown(name string) error
	// SetOvercommit changes the pool's thin over-commit limit (percent).
	SetOvercommit(percent int) error
	// Close exports the pool: its state is made durable and the disk closed.
	Close() error
	// Destroy erases the pool's superblock and closes the disk.
	Destroy() error
}

// PoolStats are a pool's space figures, in bytes unless named otherwise.
type PoolStats struct {
	Capacity      int64
	ClusterSize   int64
	TotalClusters int64
	FreeClusters  int64
	Allocated     int64
	Committed     int64
	Replicas      int
	Snapshots     int
	// Overcommit is the thin over-commit limit in percent, and
	// CommitLimit the bytes it allows replicas to commit in all.
	Overcommit  int
	CommitLimit int64
}

// ReplicaSpec describes a replica to create. Size is in bytes and a multiple
// of the pool's cluster size; an empty UUID asks the pool to generate one.
// Owner, when set, is the canonical UUID of the nexus the replica is
// claimed for, at epoch 0, as it is created (in the same durable record).
type ReplicaSpec struct {
	Name  string
	UUID  string
	Size  int64
	Thin  bool
	Owner string
}

// ReplicaStat describes an existing replica.
type ReplicaStat struct {
	Name      string
	UUID      string
	Size      int64
	Thin      bool
	Allocated int64 // bytes in clusters the replica owns
	// NGUID identifies this incarnation of the replica.
	NGUID [16]byte
	// Owner is the UUID of the nexus that claimed it ("" when unowned),
	// Epoch the highest fencing epoch it accepted.
	Owner string
	Epoch uint64
	// Origin is, for a clone, the UUID of the snapshot it was made from.
	Origin string
	// Exclusive is the bytes in clusters only this replica holds.
	Exclusive int64
}

// Snapshotter is implemented by PoolHandles whose pools take snapshots of
// thin replicas and clone them. Names are unique among a pool's replicas
// and snapshots together.
type Snapshotter interface {
	// CreateSnapshot takes a snapshot of the replica; with spec.UUID of an
	// existing snapshot of that replica and name it returns that one.
	CreateSnapshot(replica string, spec SnapshotSpec) (SnapshotStat, error)
	// Snapshots lists the pool's snapshots.
	Snapshots() []SnapshotStat
	// DeleteSnapshot deletes a snapshot by name.
	DeleteSnapshot(name string) error
	// CloneSnapshot creates a thin replica (spec.Name, spec.UUID,
	// spec.Owner; size and thin are the snapshot's) sharing the snapshot's
	// clusters; with the UUID of an existing clone of it of that name it
	// returns that one.
	CloneSnapshot(snapshot string, spec ReplicaSpec) (ReplicaStat, error)
}

// SnapshotSpec describes a snapshot to take.
type SnapshotSpec struct {
	Name, UUID string
	// Created is the snapshot's timestamp; zero means now.
	Created time.Time
}

// SnapshotStat describes an existing snapshot.
type SnapshotStat struct {
	Name, UUID string
	// Origin is the UUID of the replica it was taken of, OriginName its
	// name while it exists.
	Origin, OriginName string
	Created            time.Time
	Size               int64
	// Referenced is the bytes of the clusters it holds; Exclusive those
	// only it holds.
	Referenced, Exclusive int64
}

// ExportSpec describes one export of a replica.
type ExportSpec struct {
	// Name is the replica name: the NBD export name.
	Name string
	// UUID is the replica UUID: NVMe-oF subsystem NQNs and namespace UUIDs
	// derive from it, so they stay stable across restarts.
	UUID string
	// NGUID is the NVMe namespace NGUID: the replica's identity, so that a
	// nexus can tell a replica recreated under the same UUID; zero derives
	// one from the UUID (nexus exports, whose identity is their UUID).
	NGUID [16]byte
	// Kind is the object kind in the subsystem NQN,
	// nqn.2024-11.io.nexstor:<kind>:<uuid>: "replica" when empty, "nexus".
	Kind        string
	Description string
	// AllowedHosts are the host NQNs an NVMe-oF subsystem admits; empty
	// admits any host. NBD has no host identity and ignores it.
	AllowedHosts []string
	// MinCNTLID and MaxCNTLID bound the controller IDs an NVMe-oF export
	// gives hosts (inclusive; 0 means 1 and target.MaxCNTLID). Exports of
	// one subsystem on several nodes need disjoint ranges. NBD ignores
	// them.
	MinCNTLID, MaxCNTLID uint16
	// ANAState is an NVMe-oF export's initial ANA state (0: optimized).
	// NBD ignores it.
	ANAState nvme.ANAState
}

// ANASetter is implemented by Exporters that report Asymmetric Namespace
// Access (NVMe-oF). SetExportANAState sets the ANA state of the export name
// and announces it to connected hosts; when the state refuses I/O it
// returns once the I/O already executing has finished (ctx bounds that
// wait: on its end the state is set all the same and ctx's error is
// returned). Setting the current state changes nothing.
type ANASetter interface {
	SetExportANAState(ctx context.Context, name string, st nvme.ANAState) error
}

// Exporter serves block devices over one protocol. The engine keeps one
// export per shared replica, keyed by the replica name. An Exporter does not
// own the devices: the engine closes a replica after removing its export.
type Exporter interface {
	// AddExport serves dev and returns the URI clients connect to.
	AddExport(spec ExportSpec, dev bdev.Device) (uri string, err error)
	// RemoveExport withdraws an export; it returns once connections using it
	// are gone, so the device may then be closed.
	RemoveExport(name string) error
}

// Resizer is implemented by Exporters that tell clients of a device that
// grew: ResizeExport makes the export take the device's current size and
// announces it to connected clients. The device only grows. The engine
// calls it after growing a shared replica or a published nexus.
type Resizer interface {
	ResizeExport(name string) error
}
