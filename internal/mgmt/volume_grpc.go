package mgmt

import (
	"context"
	"slices"

	"github.com/google/uuid"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

// ListPools implements VolumeService.ListPools.
func (vs *VolumeServer) ListPools(ctx context.Context, req *mgmtv1.ListPoolsRequest) (*mgmtv1.ListPoolsResponse, error) {
	s := vs.s
	if err := s.requireLeader(ctx); err != nil {
		return nil, ToStatus(err)
	}
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, ToStatus(err)
	}
	if req.Node != "" {
		m, err := resolveNode(members, req.Node)
		if err != nil {
			return nil, ToStatus(err)
		}
		members = []*Member{m}
	}
	out := &mgmtv1.ListPoolsResponse{}
	for _, m := range members {
		pools, ms := s.reports.get(m.UUID)
		for _, p := range pools {
			out.Pools = append(out.Pools, &mgmtv1.NodePool{Node: m.DisplayName(), Rank: m.Rank, Pool: p, ReportedMs: ms, NodeState: string(m.State)})
		}
	}
	return out, nil
}

// ListNodes implements VolumeService.ListNodes.
func (vs *VolumeServer) ListNodes(ctx context.Context, _ *mgmtv1.ListNodesRequest) (*mgmtv1.ListNodesResponse, error) {
	s := vs.s
	if err := s.requireLeader(ctx); err != nil {
		return nil, ToStatus(err)
	}
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, ToStatus(err)
	}
	vols, err := s.listVolumes(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	nexuses := map[string]uint32{}
	for _, v := range vols {
		if v.Target != nil {
			nexuses[v.Target.Node]++
		}
	}
	out := &mgmtv1.ListNodesResponse{}
	for _, m := range members {
		n := &mgmtv1.Node{Member: m.Proto(), Nexuses: nexuses[m.UUID], Drain: s.drainStatus(ctx, m, vols)}
		pools, _ := s.reports.get(m.UUID)
		for _, p := range pools {
			n.Pools++
			n.Capacity += p.Capacity
			n.Free += p.Free
			n.Committed += p.Committed
			n.Replicas += p.Replicas
		}
		out.Nodes = append(out.Nodes, n)
	}
	return out, nil
}

// CreateVolume implements VolumeService.CreateVolume.
func (vs *VolumeServer) CreateVolume(ctx context.Context, req *mgmtv1.CreateVolumeRequest) (*mgmtv1.Volume, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	return vs.answer(ctx)(vs.s.createVolume(ctx, req.Spec))
}

// answer turns the outcome of an operation into the reply: the volume
// with its status, or the error as a status.
func (vs *VolumeServer) answer(ctx context.Context) func(*volumeRecord, error) (*mgmtv1.Volume, error) {
	return func(v *volumeRecord, err error) (*mgmtv1.Volume, error) {
		if err != nil {
			return nil, ToStatus(err)
		}
		return vs.one(ctx, v)
	}
}

func (vs *VolumeServer) one(ctx context.Context, v *volumeRecord) (*mgmtv1.Volume, error) {
	out, err := vs.s.volumeStatuses(ctx, []*volumeRecord{v})
	if err != nil {
		return nil, ToStatus(err)
	}
	return out[0], nil
}

// ListVolumes implements VolumeService.ListVolumes.
func (vs *VolumeServer) ListVolumes(ctx context.Context, _ *mgmtv1.ListVolumesRequest) (*mgmtv1.ListVolumesResponse, error) {
	if err := vs.s.requireLeader(ctx); err != nil {
		return nil, ToStatus(err)
	}
	recs, err := vs.s.listVolumes(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	out, err := vs.s.volumeStatuses(ctx, recs)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &mgmtv1.ListVolumesResponse{Volumes: out}, nil
}

// GetVolume implements VolumeService.GetVolume.
func (vs *VolumeServer) GetVolume(ctx context.Context, req *mgmtv1.GetVolumeRequest) (*mgmtv1.Volume, error) {
	if err := vs.s.requireLeader(ctx); err != nil {
		return nil, ToStatus(err)
	}
	v, err := vs.s.getVolume(ctx, req.Name)
	if err != nil {
		return nil, ToStatus(err)
	}
	if v == nil {
		return nil, ToStatus(volumeNotFound(req.Name))
	}
	return vs.one(ctx, v)
}

// DeleteVolume implements VolumeService.DeleteVolume.
func (vs *VolumeServer) DeleteVolume(ctx context.Context, req *mgmtv1.DeleteVolumeRequest) (*mgmtv1.DeleteVolumeResponse, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	pending, err := vs.s.deleteVolume(ctx, req.Name, req.Force)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &mgmtv1.DeleteVolumeResponse{Pending: pending}, nil
}

// PublishVolume implements VolumeService.PublishVolume.
func (vs *VolumeServer) PublishVolume(ctx context.Context, req *mgmtv1.PublishVolumeRequest) (*mgmtv1.Volume, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	return vs.answer(ctx)(vs.s.publishVolume(ctx, req))
}

// UnpublishVolume implements VolumeService.UnpublishVolume.
func (vs *VolumeServer) UnpublishVolume(ctx context.Context, req *mgmtv1.UnpublishVolumeRequest) (*mgmtv1.Volume, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	return vs.answer(ctx)(vs.s.unpublishVolume(ctx, req.Name))
}

// ResizeVolume implements VolumeService.ResizeVolume.
func (vs *VolumeServer) ResizeVolume(ctx context.Context, req *mgmtv1.ResizeVolumeRequest) (*mgmtv1.Volume, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	return vs.answer(ctx)(vs.s.resizeVolume(ctx, req.Name, req.Size))
}

// VerifyVolume implements VolumeService.VerifyVolume.
func (vs *VolumeServer) VerifyVolume(ctx context.Context, req *mgmtv1.VerifyVolumeRequest) (*mgmtv1.VerifyVolumeResponse, error) {
	r, err := vs.s.verifyVolume(ctx, req.Name)
	if err != nil {
		return nil, ToStatus(err)
	}
	out := &mgmtv1.VerifyVolumeResponse{Segments: r.Segments, Children: slices.Clone(r.Children)}
	for _, m := range r.Mismatches {
		out.Mismatches = append(out.Mismatches, m.Offset, m.Length)
	}
	return out, nil
}

// SetVolumeReplicas implements VolumeService.SetVolumeReplicas.
func (vs *VolumeServer) SetVolumeReplicas(ctx context.Context, req *mgmtv1.SetVolumeReplicasRequest) (*mgmtv1.Volume, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	return vs.answer(ctx)(vs.s.setReplicas(ctx, req.Name, req.Replicas))
}

// CordonNode implements VolumeService.CordonNode.
func (vs *VolumeServer) CordonNode(ctx context.Context, req *mgmtv1.NodeRequest) (*mgmtv1.Node, error) {
	return vs.nodeOp(ctx, func(ctx context.Context) (*Member, error) { return vs.s.cordonNode(ctx, req.Node, true) })
}

// UncordonNode implements VolumeService.UncordonNode.
func (vs *VolumeServer) UncordonNode(ctx context.Context, req *mgmtv1.NodeRequest) (*mgmtv1.Node, error) {
	return vs.nodeOp(ctx, func(ctx context.Context) (*Member, error) { return vs.s.cordonNode(ctx, req.Node, false) })
}

// DrainNode implements VolumeService.DrainNode.
func (vs *VolumeServer) DrainNode(ctx context.Context, req *mgmtv1.NodeRequest) (*mgmtv1.Node, error) {
	return vs.nodeOp(ctx, func(ctx context.Context) (*Member, error) { return vs.s.drainNode(ctx, req.Node) })
}

func (vs *VolumeServer) nodeOp(ctx context.Context, op func(context.Context) (*Member, error)) (*mgmtv1.Node, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	m, err := op(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	nodes, err := vs.ListNodes(ctx, &mgmtv1.ListNodesRequest{})
	if err != nil {
		return nil, err
	}
	for _, n := range nodes.Nodes {
		if n.Member.GetUuid() == m.UUID {
			return n, nil
		}
	}
	return &mgmtv1.Node{Member: m.Proto()}, nil
}

// ListEvents implements VolumeService.ListEvents.
func (vs *VolumeServer) ListEvents(ctx context.Context, req *mgmtv1.ListEventsRequest) (*mgmtv1.ListEventsResponse, error) {
	if err := vs.s.requireLeader(ctx); err != nil {
		return nil, ToStatus(err)
	}
	evs, err := vs.s.listEvents(ctx, req)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &mgmtv1.ListEventsResponse{Events: evs}, nil
}

// CreateSnapshot implements VolumeService.CreateSnapshot.
func (vs *VolumeServer) CreateSnapshot(ctx context.Context, req *mgmtv1.CreateSnapshotRequest) (*mgmtv1.VolumeSnapshot, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	r, err := vs.s.createSnapshot(ctx, req.Volume, req.Name)
	if err != nil {
		return nil, ToStatus(err)
	}
	return vs.oneSnapshot(ctx, r)
}

func (vs *VolumeServer) oneSnapshot(ctx context.Context, r *snapshotRecord) (*mgmtv1.VolumeSnapshot, error) {
	out, err := vs.s.snapshotStatuses(ctx, []*snapshotRecord{r})
	if err != nil {
		return nil, ToStatus(err)
	}
	return out[0], nil
}

// ListSnapshots implements VolumeService.ListSnapshots.
func (vs *VolumeServer) ListSnapshots(ctx context.Context, req *mgmtv1.ListSnapshotsRequest) (*mgmtv1.ListSnapshotsResponse, error) {
	s := vs.s
	if err := s.requireLeader(ctx); err != nil {
		return nil, ToStatus(err)
	}
	vol := ""
	if req.Volume != "" {
		v, err := s.getVolume(ctx, req.Volume)
		if err != nil {
			return nil, ToStatus(err)
		}
		if v == nil {
			// A deleted volume's snapshots are listed by its UUID.
			if _, perr := uuid.Parse(req.Volume); perr != nil {
				return nil, ToStatus(volumeNotFound(req.Volume))
			}
			vol = req.Volume
		} else {
			vol = v.UUID
		}
	}
	recs, err := s.listSnapshots(ctx, vol)
	if err != nil {
		return nil, ToStatus(err)
	}
	out, err := s.snapshotStatuses(ctx, recs)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &mgmtv1.ListSnapshotsResponse{Snapshots: out}, nil
}

// GetSnapshot implements VolumeService.GetSnapshot.
func (vs *VolumeServer) GetSnapshot(ctx context.Context, req *mgmtv1.GetSnapshotRequest) (*mgmtv1.VolumeSnapshot, error) {
	if err := vs.s.requireLeader(ctx); err != nil {
		return nil, ToStatus(err)
	}
	r, err := vs.s.resolveSnapshot(ctx, req.Snapshot)
	if err != nil {
		return nil, ToStatus(err)
	}
	return vs.oneSnapshot(ctx, r)
}

// DeleteSnapshot implements VolumeService.DeleteSnapshot.
func (vs *VolumeServer) DeleteSnapshot(ctx context.Context, req *mgmtv1.DeleteSnapshotRequest) (*mgmtv1.DeleteSnapshotResponse, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	pending, err := vs.s.deleteSnapshot(ctx, req.Snapshot)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &mgmtv1.DeleteSnapshotResponse{Pending: pending}, nil
}
