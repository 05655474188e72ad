package csi

// Snapshots and volumes created from a content source (a snapshot, or
// another volume through a transient snapshot of it).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
)

// Fault codes of snapshots.
const (
	CodeSnapshotExists   = "csi.snapshot_exists"
	CodeSnapshotNotFound = "csi.snapshot_not_found"
)

func snapshotNotFound(id string) error {
	return fault.New(fault.NotFound, CodeSnapshotNotFound, fmt.Sprintf("snapshot %s does not exist", id), "")
}

func csiSnapshot(s *mgmtv1.VolumeSnapshot) *csi.Snapshot {
	return &csi.Snapshot{SizeBytes: int64(s.GetSize()), SnapshotId: s.GetUuid(), SourceVolumeId: s.GetVolumeUuid(),
		CreationTime: timestamppb.New(time.Unix(0, s.GetCreatedUnixNano())), ReadyToUse: s.GetStatus().GetReadyToUse()}
}

// getSnapshot returns the snapshot whose UUID is id, nil when there is
// none (an id that is not a UUID names none).
func (c *Controller) getSnapshot(ctx context.Context, id string) (*mgmtv1.VolumeSnapshot, error) {
	if !isVolumeID(id) {
		return nil, nil
	}
	var s *mgmtv1.VolumeSnapshot
	err := c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		s, err = cl.GetSnapshot(ctx, &mgmtv1.GetSnapshotRequest{Snapshot: id})
		return err
	})
	switch {
	case isCode(err, codes.NotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("get snapshot %s: %w", id, err)
	}
	return s, nil
}

func (c *Controller) listSnapshots(ctx context.Context, volume string) ([]*mgmtv1.VolumeSnapshot, error) {
	var resp *mgmtv1.ListSnapshotsResponse
	err := c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		resp, err = cl.ListSnapshots(ctx, &mgmtv1.ListSnapshotsRequest{Volume: volume})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	out := resp.GetSnapshots()
	slices.SortFunc(out, func(a, b *mgmtv1.VolumeSnapshot) int { return strings.Compare(a.GetUuid(), b.GetUuid()) })
	return out, nil
}

// CreateSnapshot implements csi.ControllerServer: it takes (or finds, for
// a retried call) the snapshot VolumeName(name) of the source volume,
// crash-consistent across its replicas. The name taken on another volume
// is AlreadyExists.
func (c *Controller) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	switch {
	case req.GetName() == "":
		return nil, badRequest("CreateSnapshot: name is required")
	case req.GetSourceVolumeId() == "":
		return nil, badRequest("CreateSnapshot %s: source_volume_id is required", req.GetName())
	}
	v, err := c.getVolume(ctx, req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, volumeNotFound(req.GetSourceVolumeId())
	}
	name := VolumeName(req.GetName())
	all, err := c.listSnapshots(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, s := range all {
		if s.GetName() == name && s.GetVolumeUuid() != v.GetSpec().GetUuid() {
			return nil, fault.New(fault.AlreadyExists, CodeSnapshotExists,
				fmt.Sprintf("CreateSnapshot %s: snapshot %s exists of volume %s", req.GetName(), name, s.GetVolumeUuid()), "")
		}
	}
	s, err := c.takeSnapshot(ctx, v.GetSpec().GetUuid(), name)
	if err != nil {
		return nil, fmt.Errorf("CreateSnapshot %s: %w", req.GetName(), err)
	}
	c.log.Info("snapshot created", "csi_name", req.GetName(), "snapshot", name, "uuid", s.GetUuid(), "volume", v.GetSpec().GetName(),
		"paused_us", s.GetStatus().GetPausedUs())
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}

func (c *Controller) takeSnapshot(ctx context.Context, volume, name string) (*mgmtv1.VolumeSnapshot, error) {
	var s *mgmtv1.VolumeSnapshot
	err := c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		s, err = cl.CreateSnapshot(ctx, &mgmtv1.CreateSnapshotRequest{Volume: volume, Name: name})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot %s of volume %s: %w", name, volume, err)
	}
	return s, nil
}

// DeleteSnapshot implements csi.ControllerServer. A snapshot that does not
// exist is deleted already; copies on nodes that are down are deleted when
// they return.
func (c *Controller) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, badRequest("DeleteSnapshot: snapshot_id is required")
	}
	if !isVolumeID(id) {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err := c.deleteSnapshot(ctx, id); err != nil {
		return nil, fmt.Errorf("DeleteSnapshot %s: %w", id, err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (c *Controller) deleteSnapshot(ctx context.Context, ref string) error {
	var resp *mgmtv1.DeleteSnapshotResponse
	err := c.vol(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		resp, err = cl.DeleteSnapshot(ctx, &mgmtv1.DeleteSnapshotRequest{Snapshot: ref})
		return err
	})
	if isCode(err, codes.NotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	c.log.Info("snapshot deleted", "snapshot", ref, "pending", resp.GetPending())
	return nil
}

// ListSnapshots implements csi.ControllerServer: every snapshot, or the
// one of snapshot_id, or those of source_volume_id, in pages.
func (c *Controller) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	var list []*mgmtv1.VolumeSnapshot
	switch id, vol := req.GetSnapshotId(), req.GetSourceVolumeId(); {
	case id != "":
		s, err := c.getSnapshot(ctx, id)
		if err != nil {
			return nil, err
		}
		if s != nil && (vol == "" || s.GetVolumeUuid() == vol) {
			list = append(list, s)
		}
	case vol != "":
		if !isVolumeID(vol) {
			break
		}
		var err error
		if list, err = c.listSnapshots(ctx, vol); err != nil && !isCode(err, codes.NotFound) {
			return nil, err
		}
	default:
		var err error
		if list, err = c.listSnapshots(ctx, ""); err != nil {
			return nil, err
		}
	}
	list, next, err := page(list, func(s *mgmtv1.VolumeSnapshot) string { return s.GetUuid() }, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	out := &csi.ListSnapshotsResponse{NextToken: next}
	for _, s := range list {
		out.Entries = append(out.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(s)})
	}
	return out, nil
}

// cloneSnapshotName is the name of the transient snapshot of a source
// volume that a clone named csiName is made from.
func cloneSnapshotName(csiName string) string {
	sum := sha256.Sum256([]byte(csiName))
	return "csi-clone-" + hex.EncodeToString(sum[:8])
}

// contentSource resolves a CreateVolume's content source into the snapshot
// (UUID) the volume is restored from and its size. A volume source is
// snapshotted first (cleanup deletes that snapshot once the volume is
// made). A source that does not exist is NotFound.
func (c *Controller) contentSource(ctx context.Context, req *csi.CreateVolumeRequest) (snap string, size uint64, cleanup func(), err error) {
	src := req.GetVolumeContentSource()
	cleanup = func() {}
	switch {
	case src.GetSnapshot() != nil:
		id := src.GetSnapshot().GetSnapshotId()
		s, err := c.getSnapshot(ctx, id)
		if err != nil {
			return "", 0, cleanup, err
		}
		if s == nil {
			return "", 0, cleanup, snapshotNotFound(id)
		}
		return s.GetUuid(), s.GetSize(), cleanup, nil
	case src.GetVolume() != nil:
		id := src.GetVolume().GetVolumeId()
		v, err := c.getVolume(ctx, id)
		if err != nil {
			return "", 0, cleanup, err
		}
		if v == nil {
			return "", 0, cleanup, volumeNotFound(id)
		}
		s, err := c.takeSnapshot(ctx, id, cloneSnapshotName(req.GetName()))
		if err != nil {
			return "", 0, cleanup, fmt.Errorf("CreateVolume %s: clone of volume %s: %w", req.GetName(), id, err)
		}
		return s.GetUuid(), s.GetSize(), func() {
			if err := c.deleteSnapshot(ctx, s.GetUuid()); err != nil {
				c.log.Warn("the transient snapshot of a clone was not deleted", "snapshot", s.GetName(), "volume", id, "err", err)
			}
		}, nil
	}
	return "", 0, cleanup, badRequest("CreateVolume %s: the content source is neither a snapshot nor a volume", req.GetName())
}

// GetSnapshot implements csi.ControllerServer: the snapshot of
// snapshot_id; NotFound when there is none.
func (c *Controller) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, badRequest("GetSnapshot: snapshot_id is required")
	}
	s, err := c.getSnapshot(ctx, id)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, snapshotNotFound(id)
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}
