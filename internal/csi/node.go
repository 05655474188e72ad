package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/fault"
)

// NodeOptions configure the node service.
type NodeOptions struct {
	// NodeName is the node's name in the Nexstor system (its member
	// name): the CSI node ID, and the node the controller publishes the
	// nexus on. Required.
	NodeName string
	// Transport attaches volumes. Required: NewNVMe on a real node.
	Transport Transport
	// StateDir keeps what the node knows of the volumes it stages; it
	// must survive plugin restarts (a hostPath). Required.
	StateDir string
	// MaxVolumes is reported as max_volumes_per_node; 0 means no limit.
	MaxVolumes int64
	// MountInfo is the mount table to read; default
	// /proc/self/mountinfo.
	MountInfo string
	Log       *slog.Logger
}

// Node is the CSI node service: it attaches a published volume (the
// Transport), makes a file system on a blank mount volume, mounts it at
// the staging path, and bind-mounts the staging path (or, for a block
// volume, the device) at each target path. Every RPC is idempotent; calls
// for one volume are serialised, and a call for a volume that another
// call is working on is Aborted (the CO retries). Safe for concurrent use.
type Node struct {
	csi.UnimplementedNodeServer
	o     NodeOptions
	state stateStore
	mnt   mounter
	log   *slog.Logger

	mu   sync.Mutex
	busy map[string]bool
}

// NewNode returns the node service.
func NewNode(o NodeOptions) (*Node, error) {
	switch {
	case o.NodeName == "":
		return nil, errors.New("csi node: no node name: give the node's name in the Nexstor system (node_name of its server.yaml)")
	case o.Transport == nil:
		return nil, errors.New("csi node: no transport")
	case o.StateDir == "":
		return nil, errors.New("csi node: no state directory")
	}
	if o.MountInfo == "" {
		o.MountInfo = "/proc/self/mountinfo"
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if err := os.MkdirAll(o.StateDir, 0o750); err != nil {
		return nil, stateErr(err, "state directory "+o.StateDir)
	}
	return &Node{o: o, state: stateStore{dir: o.StateDir}, mnt: mounter{mountInfo: o.MountInfo}, log: o.Log, busy: map[string]bool{}}, nil
}

// begin marks a volume busy for the calling RPC; the returned function
// ends that.
func (n *Node) begin(id string) (func(), error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.busy[id] {
		return nil, busyErr(id)
	}
	n.busy[id] = true
	return func() {
		n.mu.Lock()
		delete(n.busy, id)
		n.mu.Unlock()
	}, nil
}

var nodeCaps = []csi.NodeServiceCapability_RPC_Type{
	csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
	csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
}

// NodeGetCapabilities implements csi.NodeServer.
func (n *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	out := &csi.NodeGetCapabilitiesResponse{}
	for _, t := range nodeCaps {
		out.Capabilities = append(out.Capabilities, &csi.NodeServiceCapability{
			Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return out, nil
}

// NodeGetInfo implements csi.NodeServer: the node ID is the node's member
// name, its topology that name under TopologyKey.
func (n *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: n.o.NodeName, MaxVolumesPerNode: n.o.MaxVolumes,
		AccessibleTopology: nodeTopology(n.o.NodeName)}, nil
}

// fsTypeOf is the file system a mount volume asks for: the capability's,
// else the volume context's, else "" (DefaultFsType on a blank volume).
func fsTypeOf(c *csi.VolumeCapability, vctx map[string]string) (string, error) {
	fs := c.GetMount().GetFsType()
	if fs == "" {
		fs = vctx[ContextFsType]
	}
	if fs != "" && !slices.Contains(supportedFsTypes, fs) {
		return "", fault.New(fault.InvalidArgument, CodeCapability, fmt.Sprintf("file system %q: use %s", fs, strings.Join(supportedFsTypes, " or ")), "")
	}
	return fs, nil
}

func readOnlyMode(m csi.VolumeCapability_AccessMode_Mode) bool {
	return m == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}

// NodeStageVolume implements csi.NodeServer: attach the volume (reusing
// an attachment), then, for a mount volume, make a file system when the
// device is blank (never over data: a device holding anything else than
// the file system asked for is FailedPrecondition) and mount it at the
// staging path. Staging again at the same path with the same capability
// succeeds; at another path, or for another access type or file system,
// it is AlreadyExists.
func (n *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, staging, vc := req.GetVolumeId(), req.GetStagingTargetPath(), req.GetVolumeCapability()
	switch {
	case id == "":
		return nil, badRequest("NodeStageVolume: volume_id is required")
	case staging == "":
		return nil, badRequest("NodeStageVolume %s: staging_target_path is required", id)
	case vc == nil:
		return nil, badRequest("NodeStageVolume %s: volume_capability is required", id)
	}
	if err := checkCapabilities(vc); err != nil {
		return nil, err
	}
	if !isVolumeID(id) {
		return nil, badRequest("NodeStageVolume: volume_id %q is not a volume ID of this driver", id)
	}
	block := vc.GetBlock() != nil
	fs, err := fsTypeOf(vc, req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	release, err := n.begin(id)
	if err != nil {
		return nil, err
	}
	defer release()

	rec, err := n.state.load(id)
	if err != nil {
		return nil, err
	}
	if rec != nil && rec.Staged {
		if p := n.incompatibleStage(rec, staging, block, fs); p != "" {
			return nil, fault.New(fault.AlreadyExists, CodeIncompatible, fmt.Sprintf("volume %s is staged %s", id, p), "unstage it first")
		}
		if ok, err := n.stillStaged(ctx, rec); err != nil {
			return nil, err
		} else if ok {
			return &csi.NodeStageVolumeResponse{}, nil
		}
		n.log.Info("volume recorded as staged is not (the node restarted?): staging it again", "volume", id)
	}
	t, err := targetFromContext(id, req.GetPublishContext())
	if err != nil {
		return nil, err
	}
	rec = &record{VolumeID: id, Target: t, StagingPath: staging, Block: block, AccessMode: vc.GetAccessMode().GetMode().String()}
	// Recorded before the attach: an attach cut short is found and
	// undone by the unstage the CO sends next.
	if err := n.state.save(rec); err != nil {
		return nil, err
	}
	dev, err := n.o.Transport.Attach(ctx, t)
	if err == nil {
		rec.Device = dev
		if !block {
			rec.FsType, err = n.mountStaging(ctx, rec, fs, vc)
		}
	}
	if err != nil {
		n.undoStage(rec)
		return nil, fmt.Errorf("NodeStageVolume %s: %w", id, err)
	}
	rec.Staged = true
	if err := n.state.save(rec); err != nil {
		return nil, err
	}
	n.log.Info("volume staged", "volume", id, "device", rec.Device, "staging", staging, "fs", rec.FsType, "block", block)
	return &csi.NodeStageVolumeResponse{}, nil
}

// incompatibleStage says how a staged volume differs from a new stage
// request, "" when it does not.
func (n *Node) incompatibleStage(rec *record, staging string, block bool, fs string) string {
	switch {
	case cleanPath(rec.StagingPath) != cleanPath(staging):
		return "at " + rec.StagingPath
	case rec.Block != block && block:
		return "as a mount volume, not a block volume"
	case rec.Block != block:
		return "as a block volume, not a mount volume"
	case !block && fs != "" && rec.FsType != fs:
		return "with a " + rec.FsType + " file system, not " + fs
	}
	return ""
}

// stillStaged checks that a volume recorded as staged still is: attached,
// and mounted at its staging path (mount volumes).
func (n *Node) stillStaged(ctx context.Context, rec *record) (bool, error) {
	dev, err := n.o.Transport.Device(ctx, rec.Target)
	if err != nil || dev == "" {
		return false, err
	}
	if rec.Block {
		return true, nil
	}
	e, err := n.mnt.mountedAt(rec.StagingPath)
	return e != nil, err
}

// mountStaging mounts a mount volume's device at its staging path, making
// a file system first when the device is blank, and returns the file
// system's type.
func (n *Node) mountStaging(ctx context.Context, rec *record, want string, vc *csi.VolumeCapability) (string, error) {
	if err := os.MkdirAll(rec.StagingPath, 0o750); err != nil {
		return "", mountErr(err, "staging path "+rec.StagingPath)
	}
	ro := readOnlyMode(vc.GetAccessMode().GetMode())
	if e, err := n.mnt.mountedAt(rec.StagingPath); err != nil {
		return "", err
	} else if e != nil {
		// A mount left by an earlier stage: keep it if it is this
		// device's, with the file system asked for.
		num, err := deviceNumber(rec.Device)
		if err != nil {
			return "", mountErr(err, "device of volume "+rec.VolumeID)
		}
		if e.MajorMinor != num {
			return "", fault.New(fault.AlreadyExists, CodeIncompatible,
				fmt.Sprintf("%s is the mount point of %s (%s), not of volume %s (%s)", rec.StagingPath, e.Source, e.MajorMinor, rec.VolumeID, rec.Device),
				"unmount it, or stage the volume at another path")
		}
		if want != "" && e.FsType != want {
			return "", fault.New(fault.AlreadyExists, CodeIncompatible,
				fmt.Sprintf("volume %s is mounted at %s with %s, not %s", rec.VolumeID, rec.StagingPath, e.FsType, want), "unstage it first")
		}
		return e.FsType, nil
	}
	have, err := probeFS(ctx, rec.Device)
	if err != nil {
		return "", err
	}
	switch {
	case have == "" && ro:
		return "", fault.New(fault.FailedPrecondition, CodeFilesystem,
			fmt.Sprintf("volume %s is blank and asked for read-only: there is no file system to mount", rec.VolumeID),
			"write the volume's file system through a writable access mode first")
	case have == "":
		if want == "" {
			want = DefaultFsType
		}
		if err := mkfs(ctx, want, rec.Device); err != nil {
			return "", err
		}
		n.log.Info("made a file system on a blank volume", "volume", rec.VolumeID, "device", rec.Device, "fs", want)
		have = want
	case want != "" && have != want:
		return "", fault.New(fault.FailedPrecondition, CodeFilesystem,
			fmt.Sprintf("volume %s holds %s, not the %s file system asked for; it is never formatted over", rec.VolumeID, have, want),
			"use the volume with fsType "+have+", or copy its data elsewhere and delete it")
	case !slices.Contains(supportedFsTypes, have):
		return "", fault.New(fault.FailedPrecondition, CodeFilesystem,
			fmt.Sprintf("volume %s holds %s, which the driver does not mount; it is never formatted over", rec.VolumeID, have),
			"use it as a block volume, or copy its data elsewhere and delete it")
	}
	if err := n.mnt.mount(rec.Device, rec.StagingPath, have, vc.GetMount().GetMountFlags(), ro); err != nil {
		return "", err
	}
	return have, nil
}

// undoStage unmounts and detaches what a failed stage did, and forgets
// the volume; what it cannot undo is logged and left to NodeUnstageVolume.
func (n *Node) undoStage(rec *record) {
	ctx := context.Background()
	if !rec.Block {
		if err := n.mnt.unmountAll(rec.StagingPath); err != nil {
			n.log.Warn("stage failed; could not unmount the staging path", "volume", rec.VolumeID, "err", err)
			return
		}
	}
	if err := n.o.Transport.Detach(ctx, rec.Target); err != nil {
		n.log.Warn("stage failed; could not detach the volume", "volume", rec.VolumeID, "err", err)
		return
	}
	if err := n.state.remove(rec.VolumeID); err != nil {
		n.log.Warn("stage failed; could not remove its record", "volume", rec.VolumeID, "err", err)
	}
}

// NodeUnstageVolume implements csi.NodeServer: unmount the staging path
// and detach the volume (every path to it). Unstaging a volume that is not
// staged succeeds.
func (n *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, badRequest("NodeUnstageVolume: volume_id is required")
	case staging == "":
		return nil, badRequest("NodeUnstageVolume %s: staging_target_path is required", id)
	}
	release, err := n.begin(id)
	if err != nil {
		return nil, err
	}
	defer release()
	rec, err := n.state.load(id)
	if err != nil {
		return nil, err
	}
	if rec != nil && cleanPath(rec.StagingPath) != cleanPath(staging) {
		// Not staged at this path: leave the other stage alone.
		n.log.Warn("unstage at a path the volume is not staged at: nothing to do", "volume", id, "path", staging, "staged_at", rec.StagingPath)
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if err := n.mnt.unmountAll(staging); err != nil {
		return nil, fmt.Errorf("NodeUnstageVolume %s: %w", id, err)
	}
	if rec == nil {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if len(rec.Targets) > 0 {
		n.log.Warn("unstaging a volume still published at targets", "volume", id, "targets", rec.Targets)
	}
	if err := n.o.Transport.Detach(ctx, rec.Target); err != nil {
		return nil, fmt.Errorf("NodeUnstageVolume %s: %w", id, err)
	}
	if err := n.state.remove(id); err != nil {
		return nil, err
	}
	n.log.Info("volume unstaged", "volume", id, "staging", staging)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume implements csi.NodeServer: bind-mount the staging
// path at the target path (a directory the plugin creates), or, for a
// block volume, the device at the target path (a file the plugin
// creates); read-only when asked. A SINGLE_NODE_SINGLE_WRITER volume is
// published at one target at most.
func (n *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, staging, vc := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath(), req.GetVolumeCapability()
	switch {
	case id == "":
		return nil, badRequest("NodePublishVolume: volume_id is required")
	case target == "":
		return nil, badRequest("NodePublishVolume %s: target_path is required", id)
	case vc == nil:
		return nil, badRequest("NodePublishVolume %s: volume_capability is required", id)
	case staging == "":
		return nil, badRequest("NodePublishVolume %s: staging_target_path is required: the driver stages volumes", id)
	}
	if err := checkCapabilities(vc); err != nil {
		return nil, err
	}
	release, err := n.begin(id)
	if err != nil {
		return nil, err
	}
	defer release()
	rec, err := n.state.load(id)
	if err != nil {
		return nil, err
	}
	if rec == nil || !rec.Staged || cleanPath(rec.StagingPath) != cleanPath(staging) {
		return nil, fault.New(fault.FailedPrecondition, CodeNotStaged, fmt.Sprintf("volume %s is not staged at %s", id, staging),
			"stage the volume first (NodeStageVolume)")
	}
	block := vc.GetBlock() != nil
	if block != rec.Block {
		return nil, fault.New(fault.AlreadyExists, CodeIncompatible,
			fmt.Sprintf("volume %s is staged as a %s volume", id, map[bool]string{true: "block", false: "mount"}[rec.Block]), "")
	}
	ro := req.GetReadonly() || readOnlyMode(vc.GetAccessMode().GetMode())
	if p := rec.target(target); p != nil {
		e, err := n.mnt.mountedAt(target)
		if err != nil {
			return nil, err
		}
		if e != nil {
			if p.ReadOnly != ro {
				return nil, fault.New(fault.AlreadyExists, CodeIncompatible,
					fmt.Sprintf("volume %s is published at %s with read_only=%v", id, target, p.ReadOnly), "unpublish it first")
			}
			return &csi.NodePublishVolumeResponse{}, nil
		}
		rec.removeTarget(target) // recorded, but not mounted any more
	}
	if vc.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER && len(rec.Targets) > 0 {
		return nil, fault.New(fault.FailedPrecondition, CodeSingleWriter,
			fmt.Sprintf("volume %s is SINGLE_NODE_SINGLE_WRITER and published at %s already", id, rec.Targets[0].Path), "unpublish it there first")
	}
	if e, err := n.mnt.mountedAt(target); err != nil {
		return nil, err
	} else if e != nil {
		return nil, fault.New(fault.AlreadyExists, CodeIncompatible, fmt.Sprintf("%s is already a mount point (of %s)", target, e.Source),
			"unmount it, or publish at another path")
	}
	src := rec.StagingPath
	if block {
		src = rec.Device
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o640)
		if err != nil {
			return nil, mountErr(err, "target file "+target)
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, mountErr(err, "target path "+target)
	}
	if err := n.mnt.bind(src, target, ro); err != nil {
		return nil, fmt.Errorf("NodePublishVolume %s: %w", id, err)
	}
	rec.Targets = append(rec.Targets, publishRecord{Path: target, ReadOnly: ro})
	if err := n.state.save(rec); err != nil {
		n.mnt.unmountAll(target)
		return nil, err
	}
	n.log.Info("volume published", "volume", id, "target", target, "read_only", ro, "block", block)
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume implements csi.NodeServer: unmount the target path
// and remove it. A target that is not mounted, or gone, is unpublished
// already.
func (n *Node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	switch {
	case id == "":
		return nil, badRequest("NodeUnpublishVolume: volume_id is required")
	case target == "":
		return nil, badRequest("NodeUnpublishVolume %s: target_path is required", id)
	}
	release, err := n.begin(id)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := n.mnt.unmountAll(target); err != nil {
		return nil, fmt.Errorf("NodeUnpublishVolume %s: %w", id, err)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, mountErr(err, "remove target path "+target)
	}
	rec, err := n.state.load(id)
	if err != nil {
		return nil, err
	}
	if rec != nil && rec.target(target) != nil {
		rec.removeTarget(target)
		if err := n.state.save(rec); err != nil {
			return nil, err
		}
	}
	n.log.Info("volume unpublished", "volume", id, "target", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// staged returns the record of a volume staged on this node and checks
// that path is its staging path or one of its targets; NotFound
// otherwise.
func (n *Node) staged(id, path string) (*record, error) {
	rec, err := n.state.load(id)
	if err != nil {
		return nil, err
	}
	if rec == nil || !rec.Staged {
		return nil, fault.New(fault.NotFound, CodeVolumeNotFound, fmt.Sprintf("volume %s is not staged on node %s", id, n.o.NodeName), "")
	}
	if path != "" {
		p := cleanPath(path)
		if _, err := os.Stat(path); err != nil || (p != cleanPath(rec.StagingPath) && !slices.ContainsFunc(rec.Targets,
			func(t publishRecord) bool { return cleanPath(t.Path) == p })) {
			return nil, fault.New(fault.NotFound, CodeVolumeNotFound, fmt.Sprintf("volume %s is not at %s", id, path), "")
		}
	}
	return rec, nil
}

// NodeGetVolumeStats implements csi.NodeServer: bytes and inodes of a
// mount volume's file system, the size of a block volume.
func (n *Node) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, badRequest("NodeGetVolumeStats: volume_id is required")
	case path == "":
		return nil, badRequest("NodeGetVolumeStats %s: volume_path is required", id)
	}
	rec, err := n.staged(id, path)
	if err != nil {
		return nil, err
	}
	if rec.Block {
		size, err := deviceSize(rec.Device)
		if err != nil {
			return nil, fault.Wrap(err, fault.Unavailable, CodeNoDevice, "volume "+id, "see the node plugin's log")
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Total: size, Unit: csi.VolumeUsage_BYTES}}}, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, mountErr(err, "statfs "+path)
	}
	bs := int64(st.Bsize)
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
	}}, nil
}

// NodeGetVolumeHealth implements csi.NodeServer: INACCESSIBLE when no
// path to the volume is live, DEGRADED when some path is not.
func (n *Node) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, badRequest("NodeGetVolumeHealth: volume_id is required")
	}
	rec, err := n.staged(id, "")
	if err != nil {
		return nil, err
	}
	paths, err := n.o.Transport.Paths(ctx, rec.Target)
	if err != nil {
		return nil, err
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: pathHealth(id, paths)}, nil
}

// pathHealth is the node's view of a volume's health from its paths.
func pathHealth(id string, paths []Path) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: id}
	var live int
	var down []string
	for _, p := range paths {
		if p.Live {
			live++
		} else {
			down = append(down, p.String())
		}
	}
	switch {
	case len(paths) == 0:
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_INACCESSIBLE,
			Reason: "not_attached", Message: "the volume has no path to this node"})
	case live == 0:
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_INACCESSIBLE,
			Reason: "no_live_path", Message: "no path to the volume is live: " + strings.Join(down, ", ")})
	case len(down) > 0:
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_DEGRADED,
			Reason: "path_down", Message: fmt.Sprintf("%d of %d paths live; down: %s", live, len(paths), strings.Join(down, ", "))})
	}
	return h
}

// NodeExpandVolume implements csi.NodeServer: the host takes the
// volume's new size (which ControllerExpandVolume gave it), then a mount
// volume's file system grows online to fill it.
func (n *Node) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, badRequest("NodeExpandVolume: volume_id is required")
	case path == "":
		return nil, badRequest("NodeExpandVolume %s: volume_path is required", id)
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		if err := checkCapabilities(vc); err != nil {
			return nil, err
		}
	}
	release, err := n.begin(id)
	if err != nil {
		return nil, err
	}
	defer release()
	rec, err := n.staged(id, path)
	if err != nil {
		return nil, err
	}
	want := req.GetCapacityRange().GetRequiredBytes()
	if err := n.o.Transport.Grow(ctx, rec.Target, want); err != nil {
		return nil, fmt.Errorf("NodeExpandVolume %s: %w", id, err)
	}
	if !rec.Block {
		if err := growFS(ctx, rec.FsType, rec.Device, rec.StagingPath); err != nil {
			return nil, err
		}
	}
	size, err := deviceSize(rec.Device)
	if err != nil {
		return nil, fault.Wrap(err, fault.Unavailable, CodeNoDevice, "volume "+id, "see the node plugin's log")
	}
	n.log.Info("volume expanded on the node", "volume", id, "size", size, "fs", rec.FsType)
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}
