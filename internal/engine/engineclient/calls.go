package engineclient

import (
	"context"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
)

// Idempotency, as the engine promises it, is stated per call: a caller that
// does not know whether a call took effect (its deadline passed, the
// connection broke) may repeat an idempotent call and gets the same result;
// for the others it reads the object first (Get*) or accepts the error that
// says the change is already made (AlreadyExists on create, NotFound on
// destroy). Reads are always safe to repeat.

// Pools.

// CreatePool formats the disk of r as a new pool (r.ClusterSize in bytes, 0
// for the default; r.OvercommitPercent its thin over-commit limit, 0 for
// 250). Idempotent by name and disk: a repeat returns the pool; another disk,
// cluster size or limit under that name fails with AlreadyExists
// (pool.exists), another name on the same disk with FailedPrecondition
// (pool.disk_in_use), and a disk another process holds with
// FailedPrecondition (bdev.busy). r.Force formats a disk that holds another
// pool, destroying its data.
func (c *Client) CreatePool(ctx context.Context, r *enginev1.CreatePoolRequest) (*enginev1.Pool, error) {
	return c.pools.CreatePool(ctx, r)
}

// ListPools returns every pool of the engine, faulted ones with their
// reason. A read.
func (c *Client) ListPools(ctx context.Context, r *enginev1.ListPoolsRequest) (*enginev1.ListPoolsResponse, error) {
	return c.pools.ListPools(ctx, orEmpty(r))
}

// GetPool returns one pool; NotFound (pool.not_found) when there is none. A
// read.
func (c *Client) GetPool(ctx context.Context, r *enginev1.GetPoolRequest) (*enginev1.Pool, error) {
	return c.pools.GetPool(ctx, r)
}

// DestroyPool erases a pool's superblock and forgets it (with r.Force, its
// replicas and snapshots too). Not idempotent: a repeat fails with NotFound
// (pool.not_found), which a caller that retries treats as done.
func (c *Client) DestroyPool(ctx context.Context, r *enginev1.DestroyPoolRequest) (*enginev1.DestroyPoolResponse, error) {
	return c.pools.DestroyPool(ctx, r)
}

// ImportPool opens the pool on a disk and remembers it. Not idempotent: a
// repeat fails with AlreadyExists (pool.imported).
func (c *Client) ImportPool(ctx context.Context, r *enginev1.ImportPoolRequest) (*enginev1.Pool, error) {
	return c.pools.ImportPool(ctx, r)
}

// ExportPool closes a pool cleanly and forgets it, keeping its data. Not
// idempotent: a repeat fails with NotFound (pool.not_found).
func (c *Client) ExportPool(ctx context.Context, r *enginev1.ExportPoolRequest) (*enginev1.ExportPoolResponse, error) {
	return c.pools.ExportPool(ctx, r)
}

// SetPoolLabels replaces the labels of pool r.Name with r.Labels (empty
// clears them); they outlast restarts. Idempotent: the same labels again
// change nothing. NotFound (pool.not_found) when there is no such pool,
// InvalidArgument (pool.label_invalid) for a bad key.
func (c *Client) SetPoolLabels(ctx context.Context, r *enginev1.SetPoolLabelsRequest) (*enginev1.Pool, error) {
	return c.pools.SetPoolLabels(ctx, r)
}

// Replicas.

// CreateReplica creates a replica of r.Size bytes (a multiple of the pool's
// cluster size) in r.Pool. Idempotent when r.Uuid is set: a repeat returns
// the replica, and a replica of that name or uuid with another spec fails
// with AlreadyExists (replica.exists) naming the difference. Without r.Uuid
// a repeat fails with AlreadyExists. Beyond the pool's over-commit limit:
// ResourceExhausted (pool.overcommit).
func (c *Client) CreateReplica(ctx context.Context, r *enginev1.CreateReplicaRequest) (*enginev1.Replica, error) {
	return c.replicas.CreateReplica(ctx, r)
}

// ListReplicas returns the replicas of the engine (of r.Pool only, when
// set). A read.
func (c *Client) ListReplicas(ctx context.Context, r *enginev1.ListReplicasRequest) (*enginev1.ListReplicasResponse, error) {
	return c.replicas.ListReplicas(ctx, orEmpty(r))
}

// GetReplica returns one replica; NotFound (replica.not_found) when there
// is none. A read.
func (c *Client) GetReplica(ctx context.Context, r *enginev1.GetReplicaRequest) (*enginev1.Replica, error) {
	return c.replicas.GetReplica(ctx, r)
}

// DestroyReplica deletes a replica and frees its clusters; a shared one is
// refused (replica.shared), and one a nexus owns (replica.owned) unless
// r.Owner names that nexus or r.Force is set. Not idempotent: a repeat
// fails with NotFound (replica.not_found).
func (c *Client) DestroyReplica(ctx context.Context, r *enginev1.DestroyReplicaRequest) (*enginev1.DestroyReplicaResponse, error) {
	return c.replicas.DestroyReplica(ctx, r)
}

// ResizeReplica grows a replica to r.Size bytes. Not idempotent: a repeat
// with the size already reached fails with InvalidArgument
// (replica.shrink); compare the size from GetReplica first.
func (c *Client) ResizeReplica(ctx context.Context, r *enginev1.ResizeReplicaRequest) (*enginev1.Replica, error) {
	return c.replicas.ResizeReplica(ctx, r)
}

// ShareReplica exports a replica over r.Protocol ("nbd" or "nvmf") and
// returns it with its shares. Idempotent: sharing again over the same
// protocol with the same allowed hosts returns the existing share; other
// allowed hosts are refused (replica.shared) until it is unshared.
func (c *Client) ShareReplica(ctx context.Context, r *enginev1.ShareReplicaRequest) (*enginev1.Replica, error) {
	return c.replicas.ShareReplica(ctx, r)
}

// UnshareReplica withdraws every share of a replica; connected clients are
// disconnected once their in-flight requests are answered. An owned replica
// is refused as by DestroyReplica. Idempotent: unsharing an unshared
// replica succeeds.
func (c *Client) UnshareReplica(ctx context.Context, r *enginev1.UnshareReplicaRequest) (*enginev1.Replica, error) {
	return c.replicas.UnshareReplica(ctx, r)
}

// DisownReplica clears the owner of a replica whose nexus (r.Owner) is gone
// for good; its epoch stays, so that nexus stays fenced. Idempotent: an
// unowned replica is returned as it is; one another nexus owns fails with
// FailedPrecondition (replica.owned).
func (c *Client) DisownReplica(ctx context.Context, r *enginev1.DisownReplicaRequest) (*enginev1.Replica, error) {
	return c.replicas.DisownReplica(ctx, r)
}

// Nexuses.

// CreateNexus opens and claims r.Children and starts a mirror over them.
// Idempotent when r.Uuid is set: a repeat with the same uuid and children
// returns the nexus; otherwise AlreadyExists (nexus.exists, or
// nexus.uuid_exists for another name with the same r.Uuid). A child owned
// by another nexus fails with FailedPrecondition (nexus.child_owned), and
// children that cannot be opened with FailedPrecondition (nexus.degraded)
// unless r.AllowDegraded.
func (c *Client) CreateNexus(ctx context.Context, r *enginev1.CreateNexusRequest) (*enginev1.Nexus, error) {
	return c.nexuses.CreateNexus(ctx, r)
}

// ListNexuses returns every nexus of the engine. A read.
func (c *Client) ListNexuses(ctx context.Context, r *enginev1.ListNexusesRequest) (*enginev1.ListNexusesResponse, error) {
	return c.nexuses.ListNexuses(ctx, orEmpty(r))
}

// GetNexus returns one nexus with its children and rebuilds; NotFound
// (nexus.not_found) when there is none. A read.
func (c *Client) GetNexus(ctx context.Context, r *enginev1.GetNexusRequest) (*enginev1.Nexus, error) {
	return c.nexuses.GetNexus(ctx, r)
}

// DestroyNexus unpublishes and closes a nexus, releases its children's
// claims and deletes its health record; the children's data is left as it
// is. Not idempotent: a
// repeat fails with NotFound (nexus.not_found).
func (c *Client) DestroyNexus(ctx context.Context, r *enginev1.DestroyNexusRequest) (*enginev1.DestroyNexusResponse, error) {
	return c.nexuses.DestroyNexus(ctx, r)
}

// PublishNexus exports a nexus over r.Protocol ("nvmf", the default, or
// "nbd"). Idempotent: publishing again the same way returns the existing
// publication; another protocol or other hosts are refused
// (nexus.published) until it is unpublished.
func (c *Client) PublishNexus(ctx context.Context, r *enginev1.PublishNexusRequest) (*enginev1.Nexus, error) {
	return c.nexuses.PublishNexus(ctx, r)
}

// SetNexusAnaState sets the ANA state of the nexus's nvmf publication on
// that node; a state that refuses I/O returns once the I/O the nexus was
// executing has finished.
func (c *Client) SetNexusAnaState(ctx context.Context, r *enginev1.SetNexusAnaStateRequest) (*enginev1.Nexus, error) {
	return c.nexuses.SetNexusAnaState(ctx, r)
}

// UnpublishNexus withdraws a nexus's export; connected hosts are dropped.
// Idempotent: unpublishing an unpublished nexus succeeds.
func (c *Client) UnpublishNexus(ctx context.Context, r *enginev1.UnpublishNexusRequest) (*enginev1.Nexus, error) {
	return c.nexuses.UnpublishNexus(ctx, r)
}

// AddChild adds r.Child to r.Nexus (or re-adds a faulted one) and starts
// its full rebuild. Not idempotent: a repeat while the child is a member
// fails (FailedPrecondition); follow the rebuild with RebuildStatus.
func (c *Client) AddChild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return c.nexuses.AddChild(ctx, r)
}

// RemoveChild stops any rebuild of r.Child and removes it; the last
// healthy child is refused (nexus.last_child). Not idempotent: a repeat
// fails with NotFound (nexus.child_not_found).
func (c *Client) RemoveChild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return c.nexuses.RemoveChild(ctx, r)
}

// FaultChild takes r.Child out of service; it comes back only with
// AddChild. Not idempotent: a repeat fails (FailedPrecondition, the child
// is faulted already).
func (c *Client) FaultChild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return c.nexuses.FaultChild(ctx, r)
}

// OfflineChild takes an online child out of service for a while, keeping
// track of what is written meanwhile. Not idempotent: a repeat fails
// (FailedPrecondition, only an online child can go offline).
func (c *Client) OfflineChild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return c.nexuses.OfflineChild(ctx, r)
}

// OnlineChild reopens an offline child and starts its partial rebuild. Not
// idempotent: a repeat fails once the child is no longer offline.
func (c *Client) OnlineChild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return c.nexuses.OnlineChild(ctx, r)
}

// RebuildStatus returns the running rebuilds of a nexus and the last
// finished one of each child (of r.Child only, when set). A read.
func (c *Client) RebuildStatus(ctx context.Context, r *enginev1.RebuildStatusRequest) (*enginev1.RebuildStatusResponse, error) {
	return c.nexuses.RebuildStatus(ctx, r)
}

// PauseRebuild pauses the rebuild of r.Child; the child keeps receiving
// writes. FailedPrecondition (nexus.no_rebuild) when none runs.
func (c *Client) PauseRebuild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Rebuild, error) {
	return c.nexuses.PauseRebuild(ctx, r)
}

// ResumeRebuild resumes a paused rebuild of r.Child. FailedPrecondition
// (nexus.no_rebuild) when none runs.
func (c *Client) ResumeRebuild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Rebuild, error) {
	return c.nexuses.ResumeRebuild(ctx, r)
}

// StopRebuild stops the rebuild of r.Child and leaves the child faulted.
// Not idempotent: a repeat fails with FailedPrecondition
// (nexus.no_rebuild).
func (c *Client) StopRebuild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Rebuild, error) {
	return c.nexuses.StopRebuild(ctx, r)
}

// Verify compares the online children of a nexus segment by segment while
// I/O goes on and reports the ranges that differ. A read: it changes
// nothing. It runs until it is done or ctx ends.
func (c *Client) Verify(ctx context.Context, r *enginev1.VerifyRequest) (*enginev1.VerifyResponse, error) {
	return c.nexuses.Verify(ctx, r)
}

// ResizeNexus grows a nexus online to r.Size bytes (a multiple of its block
// size); every child must already hold that many (grow the replicas first,
// with ResizeReplica and the nexus's UUID as owner), else
// FailedPrecondition (nexus.child_too_small) naming the child. Hosts of an
// NVMe/TCP publication get a namespace-attribute-changed event and see the
// new size; NBD clients see it when they reconnect. Idempotent: the current
// size returns the nexus; a smaller one fails with InvalidArgument
// (nexus.shrink). While a rebuild or resync runs: Unavailable
// (nexus.rebuilding), retry later.
func (c *Client) ResizeNexus(ctx context.Context, r *enginev1.ResizeNexusRequest) (*enginev1.Nexus, error) {
	return c.nexuses.ResizeNexus(ctx, r)
}

// Snapshots.

// CreateSnapshot takes a snapshot of the thin replica r.ReplicaUuid (I/O to
// it pauses while the snapshot is made durable). Idempotent by r.Uuid
// (required): a repeat returns the snapshot; that uuid used otherwise
// fails with AlreadyExists (snapshot.exists). A thick replica:
// InvalidArgument (snapshot.invalid); no room in the pool's metadata:
// ResourceExhausted (pool.no_space).
func (c *Client) CreateSnapshot(ctx context.Context, r *enginev1.CreateSnapshotRequest) (*enginev1.Snapshot, error) {
	return c.snaps.CreateSnapshot(ctx, r)
}

// ListSnapshots returns the snapshots of the engine (of r.Pool, of the
// replica r.ReplicaUuid, when set). A read.
func (c *Client) ListSnapshots(ctx context.Context, r *enginev1.ListSnapshotsRequest) (*enginev1.ListSnapshotsResponse, error) {
	return c.snaps.ListSnapshots(ctx, orEmpty(r))
}

// GetSnapshot returns one snapshot by uuid; NotFound (snapshot.not_found)
// when there is none. A read.
func (c *Client) GetSnapshot(ctx context.Context, r *enginev1.GetSnapshotRequest) (*enginev1.Snapshot, error) {
	return c.snaps.GetSnapshot(ctx, r)
}

// DeleteSnapshot deletes a snapshot. Not idempotent: a repeat fails with
// NotFound (snapshot.not_found), which a caller that retries treats as
// done.
func (c *Client) DeleteSnapshot(ctx context.Context, r *enginev1.DeleteSnapshotRequest) (*enginev1.DeleteSnapshotResponse, error) {
	return c.snaps.DeleteSnapshot(ctx, r)
}

// CloneSnapshot creates a thin replica with the snapshot's content.
// Idempotent by r.Uuid (required): a repeat returns the clone; a replica of
// that name or uuid otherwise fails with AlreadyExists (replica.exists).
func (c *Client) CloneSnapshot(ctx context.Context, r *enginev1.CloneSnapshotRequest) (*enginev1.Replica, error) {
	return c.snaps.CloneSnapshot(ctx, r)
}

// QuiesceNexus holds the writes of the nexus r.Nexus (name or uuid) for a
// snapshot and answers once they are held, with the online children and
// a quiesce id; the hold ends at ResumeNexus or after r.HoldTimeoutMs
// (0: 10 s, at most 60 s). Not idempotent: a repeat while held is
// FailedPrecondition (nexus.quiesced).
func (c *Client) QuiesceNexus(ctx context.Context, r *enginev1.QuiesceNexusRequest) (*enginev1.QuiesceNexusResponse, error) {
	return c.snaps.QuiesceNexus(ctx, r)
}

// ResumeNexus ends a hold, faulting r.FailedChildren first, and says
// whether the hold was still in force (Held false: the snapshot is not
// consistent). An unknown id is NotFound (nexus.quiesce_not_found).
func (c *Client) ResumeNexus(ctx context.Context, r *enginev1.ResumeNexusRequest) (*enginev1.ResumeNexusResponse, error) {
	return c.snaps.ResumeNexus(ctx, r)
}

// Host.

// GetVersion returns the engine's version, API version and host name. A
// read.
func (c *Client) GetVersion(ctx context.Context, r *enginev1.GetVersionRequest) (*enginev1.GetVersionResponse, error) {
	return c.host.GetVersion(ctx, orEmpty(r))
}

// ListBlockDevices returns the host's block devices. A read.
func (c *Client) ListBlockDevices(ctx context.Context, r *enginev1.ListBlockDevicesRequest) (*enginev1.ListBlockDevicesResponse, error) {
	return c.host.ListBlockDevices(ctx, orEmpty(r))
}

// orEmpty returns r, or a new zero request when r is nil, so that the calls
// that need no argument may be made without a request.
func orEmpty[T any, P interface{ *T }](r P) P {
	if r == nil {
		return new(T)
	}
	return r
}
