package engine

import (
	"context"
	"encoding/hex"

	"google.golang.org/grpc"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
)

// Register registers the engine's PoolService, ReplicaService,
// HostService, NexusService and SnapshotService on s. The handlers return plain errors and
// faults: s must convert them with faultgrpc.ServerOptions (as StartServer
// and the control server do), else clients see code Unknown.
func Register(s grpc.ServiceRegistrar, e *Engine) {
	enginev1.RegisterPoolServiceServer(s, &poolServer{e: e})
	enginev1.RegisterReplicaServiceServer(s, &replicaServer{e: e})
	enginev1.RegisterHostServiceServer(s, &hostServer{sysBlock: "/sys/block"})
	enginev1.RegisterNexusServiceServer(s, &nexusServer{e: e})
	enginev1.RegisterSnapshotServiceServer(s, &snapshotServer{e: e})
}

type poolServer struct {
	enginev1.UnimplementedPoolServiceServer
	e *Engine
}

func (s *poolServer) CreatePool(ctx context.Context, r *enginev1.CreatePoolRequest) (*enginev1.Pool, error) {
	p, err := s.e.CreatePool(ctx, PoolSpec{Name: r.GetName(), Disk: r.GetDisk(), ClusterSize: int64(r.GetClusterSize()),
		Force: r.GetForce(), Overcommit: int(r.GetOvercommitPercent())})
	if err != nil {
		return nil, err
	}
	return PoolToProto(p), nil
}

func (s *poolServer) ListPools(context.Context, *enginev1.ListPoolsRequest) (*enginev1.ListPoolsResponse, error) {
	resp := &enginev1.ListPoolsResponse{}
	for _, p := range s.e.Pools() {
		resp.Pools = append(resp.Pools, PoolToProto(p))
	}
	return resp, nil
}

func (s *poolServer) GetPool(_ context.Context, r *enginev1.GetPoolRequest) (*enginev1.Pool, error) {
	p, err := s.e.Pool(r.GetName())
	if err != nil {
		return nil, err
	}
	return PoolToProto(p), nil
}

func (s *poolServer) DestroyPool(ctx context.Context, r *enginev1.DestroyPoolRequest) (*enginev1.DestroyPoolResponse, error) {
	if err := s.e.DestroyPool(ctx, r.GetName(), r.GetForce()); err != nil {
		return nil, err
	}
	return &enginev1.DestroyPoolResponse{}, nil
}

func (s *poolServer) ImportPool(ctx context.Context, r *enginev1.ImportPoolRequest) (*enginev1.Pool, error) {
	p, err := s.e.ImportPool(ctx, r.GetName(), r.GetDisk())
	if err != nil {
		return nil, err
	}
	return PoolToProto(p), nil
}

func (s *poolServer) SetPoolLabels(ctx context.Context, r *enginev1.SetPoolLabelsRequest) (*enginev1.Pool, error) {
	p, err := s.e.SetPoolLabels(ctx, r.GetName(), r.GetLabels())
	if err != nil {
		return nil, err
	}
	return PoolToProto(p), nil
}

func (s *poolServer) ExportPool(ctx context.Context, r *enginev1.ExportPoolRequest) (*enginev1.ExportPoolResponse, error) {
	if err := s.e.ExportPool(ctx, r.GetName()); err != nil {
		return nil, err
	}
	return &enginev1.ExportPoolResponse{}, nil
}

type replicaServer struct {
	enginev1.UnimplementedReplicaServiceServer
	e *Engine
}

func (s *replicaServer) CreateReplica(ctx context.Context, r *enginev1.CreateReplicaRequest) (*enginev1.Replica, error) {
	ri, err := s.e.CreateReplica(ctx, CreateReplicaOptions{Name: r.GetName(), Pool: r.GetPool(),
		Size: int64(r.GetSize()), Thin: r.GetThin(), UUID: r.GetUuid(), Owner: r.GetOwner()})
	if err != nil {
		return nil, err
	}
	return ReplicaToProto(ri), nil
}

func (s *replicaServer) ListReplicas(_ context.Context, r *enginev1.ListReplicasRequest) (*enginev1.ListReplicasResponse, error) {
	list, err := s.e.Replicas(r.GetPool())
	if err != nil {
		return nil, err
	}
	resp := &enginev1.ListReplicasResponse{}
	for _, ri := range list {
		resp.Replicas = append(resp.Replicas, ReplicaToProto(ri))
	}
	return resp, nil
}

func (s *replicaServer) GetReplica(_ context.Context, r *enginev1.GetReplicaRequest) (*enginev1.Replica, error) {
	ri, err := s.e.Replica(r.GetName())
	if err != nil {
		return nil, err
	}
	return ReplicaToProto(ri), nil
}

func (s *replicaServer) DestroyReplica(ctx context.Context, r *enginev1.DestroyReplicaRequest) (*enginev1.DestroyReplicaResponse, error) {
	if err := s.e.DestroyReplica(ctx, r.GetName(), Access{Force: r.GetForce(), Owner: r.GetOwner()}); err != nil {
		return nil, err
	}
	return &enginev1.DestroyReplicaResponse{}, nil
}

func (s *replicaServer) ResizeReplica(ctx context.Context, r *enginev1.ResizeReplicaRequest) (*enginev1.Replica, error) {
	ri, err := s.e.ResizeReplica(ctx, r.GetName(), int64(r.GetSize()), Access{Force: r.GetForce(), Owner: r.GetOwner()})
	if err != nil {
		return nil, err
	}
	return ReplicaToProto(ri), nil
}

func (s *replicaServer) ShareReplica(ctx context.Context, r *enginev1.ShareReplicaRequest) (*enginev1.Replica, error) {
	ri, err := s.e.ShareReplica(ctx, r.GetName(), r.GetProtocol(), r.GetAllowedHosts())
	if err != nil {
		return nil, err
	}
	return ReplicaToProto(ri), nil
}

func (s *replicaServer) UnshareReplica(ctx context.Context, r *enginev1.UnshareReplicaRequest) (*enginev1.Replica, error) {
	ri, err := s.e.UnshareReplica(ctx, r.GetName(), Access{Force: r.GetForce(), Owner: r.GetOwner()})
	if err != nil {
		return nil, err
	}
	return ReplicaToProto(ri), nil
}

func (s *replicaServer) DisownReplica(ctx context.Context, r *enginev1.DisownReplicaRequest) (*enginev1.Replica, error) {
	ri, err := s.e.DisownReplica(ctx, r.GetName(), r.GetOwner())
	if err != nil {
		return nil, err
	}
	return ReplicaToProto(ri), nil
}

type hostServer struct {
	enginev1.UnimplementedHostServiceServer
	sysBlock string
}

func (s *hostServer) GetVersion(context.Context, *enginev1.GetVersionRequest) (*enginev1.GetVersionResponse, error) {
	v := GetVersion()
	return &enginev1.GetVersionResponse{Version: v.Version, Commit: v.Commit, GoVersion: v.GoVersion,
		Api: v.API, Hostname: v.Hostname}, nil
}

func (s *hostServer) ListBlockDevices(context.Context, *enginev1.ListBlockDevicesRequest) (*enginev1.ListBlockDevicesResponse, error) {
	devs, err := ListBlockDevices(s.sysBlock)
	if err != nil {
		return nil, err
	}
	resp := &enginev1.ListBlockDevicesResponse{}
	for _, d := range devs {
		resp.Devices = append(resp.Devices, &enginev1.BlockDevice{Name: d.Name, Path: d.Path,
			Size: uint64(d.Size), Model: d.Model, Rotational: d.Rotational})
	}
	return resp, nil
}

// PoolToProto converts a PoolInfo to its API message.
func PoolToProto(p PoolInfo) *enginev1.Pool {
	m := &enginev1.Pool{
		Name: p.Name, Uuid: p.UUID, Disk: p.Disk, Reason: p.Reason,
		Capacity:      uint64(p.Stats.Capacity),
		ClusterSize:   uint64(p.Stats.ClusterSize),
		TotalClusters: uint64(p.Stats.TotalClusters),
		FreeClusters:  uint64(p.Stats.FreeClusters),
		Allocated:     uint64(p.Stats.Allocated),
		Committed:     uint64(p.Stats.Committed),
		ReplicaCount:  uint32(p.Stats.Replicas),
		SnapshotCount: uint32(p.Stats.Snapshots),

		OvercommitPercent: uint32(p.Stats.Overcommit),
		Labels:            p.Labels,
	}
	switch p.State {
	case PoolOnline:
		m.State = enginev1.PoolState_POOL_STATE_ONLINE
	case PoolFaulted:
		m.State = enginev1.PoolState_POOL_STATE_FAULTED
	}
	return m
}

// ReplicaToProto converts a ReplicaInfo to its API message.
func ReplicaToProto(r ReplicaInfo) *enginev1.Replica {
	m := &enginev1.Replica{Name: r.Name, Uuid: r.UUID, Pool: r.Pool, Size: uint64(r.Size), Thin: r.Thin,
		Allocated: uint64(r.Allocated), Reason: r.Reason, Owner: r.Owner, Epoch: r.Epoch,
		Origin: r.Origin, Exclusive: uint64(r.Exclusive)}
	if r.NGUID != ([16]byte{}) {
		m.Nguid = hex.EncodeToString(r.NGUID[:])
	}
	switch r.State {
	case ReplicaOnline:
		m.State = enginev1.ReplicaState_REPLICA_STATE_ONLINE
	case ReplicaFaulted:
		m.State = enginev1.ReplicaState_REPLICA_STATE_FAULTED
	}
	if r.Share != nil {
		m.Share = &enginev1.Share{Protocol: r.Share.Protocol, Uri: r.Share.URI, AllowedHosts: r.Share.AllowedHosts}
	}
	for _, s := range r.Shares {
		m.Shares = append(m.Shares, &enginev1.Share{Protocol: s.Protocol, Uri: s.URI, AllowedHosts: s.AllowedHosts})
	}
	return m
}
