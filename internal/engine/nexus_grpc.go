package engine

import (
	"context"
	"math"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
)

type nexusServer struct {
	enginev1.UnimplementedNexusServiceServer
	e *Engine
}

func (s *nexusServer) CreateNexus(ctx context.Context, r *enginev1.CreateNexusRequest) (*enginev1.Nexus, error) {
	ni, err := s.e.CreateNexus(ctx, CreateNexusOptions{Name: r.GetName(), UUID: r.GetUuid(), Size: int64(r.GetSize()),
		Children: r.GetChildren(), Force: r.GetForce(), AllowDegraded: r.GetAllowDegraded(), Source: r.GetSource(),
		VerifyInSync: r.GetVerifyInSync(), HealthStore: r.GetHealthStore()})
	return nexusReply(ni, err)
}

func (s *nexusServer) ResizeNexus(ctx context.Context, r *enginev1.ResizeNexusRequest) (*enginev1.Nexus, error) {
	size := r.GetSize()
	if size > math.MaxInt64 {
		size = math.MaxInt64 // refused as not a multiple of the block size
	}
	return nexusReply(s.e.ResizeNexus(ctx, r.GetName(), int64(size)))
}

func (s *nexusServer) ListNexuses(context.Context, *enginev1.ListNexusesRequest) (*enginev1.ListNexusesResponse, error) {
	resp := &enginev1.ListNexusesResponse{}
	for _, ni := range s.e.Nexuses() {
		resp.Nexuses = append(resp.Nexuses, NexusToProto(ni))
	}
	return resp, nil
}

func (s *nexusServer) GetNexus(_ context.Context, r *enginev1.GetNexusRequest) (*enginev1.Nexus, error) {
	return nexusReply(s.e.Nexus(r.GetName()))
}

func (s *nexusServer) DestroyNexus(ctx context.Context, r *enginev1.DestroyNexusRequest) (*enginev1.DestroyNexusResponse, error) {
	if err := s.e.DestroyNexus(ctx, r.GetName()); err != nil {
		return nil, err
	}
	return &enginev1.DestroyNexusResponse{}, nil
}

func (s *nexusServer) PublishNexus(ctx context.Context, r *enginev1.PublishNexusRequest) (*enginev1.Nexus, error) {
	return nexusReply(s.e.PublishNexusWith(ctx, r.GetName(), PublishNexusOptions{
		Protocol: r.GetProtocol(), AllowedHosts: r.GetAllowedHosts(),
		MinCNTLID: cntlidArg(r.GetMinCntlid()), MaxCNTLID: cntlidArg(r.GetMaxCntlid()),
		ANAState: ANAStateFromProto(r.GetAnaState()),
	}))
}

func (s *nexusServer) SetNexusAnaState(ctx context.Context, r *enginev1.SetNexusAnaStateRequest) (*enginev1.Nexus, error) {
	return nexusReply(s.e.SetNexusANAState(ctx, r.GetName(), ANAStateFromProto(r.GetAnaState())))
}

// cntlidArg narrows a controller ID of the API; one over 16 bits becomes
// 0xFFFF, which the range check refuses.
func cntlidArg(v uint32) uint16 { return uint16(min(v, 0xFFFF)) }

// ANAStateFromProto converts an API ANA state: the enum's values are the
// NVMe ones; UNSPECIFIED is 0 and a value that is no state becomes an
// invalid one, which the engine refuses.
func ANAStateFromProto(st enginev1.AnaState) nvme.ANAState {
	if st < 0 || st > 0xFF {
		return 0xFF
	}
	return nvme.ANAState(st)
}

// ANAStateToProto converts an ANA state to the API's (0: UNSPECIFIED).
func ANAStateToProto(st nvme.ANAState) enginev1.AnaState { return enginev1.AnaState(st) }

func (s *nexusServer) UnpublishNexus(ctx context.Context, r *enginev1.UnpublishNexusRequest) (*enginev1.Nexus, error) {
	return nexusReply(s.e.UnpublishNexus(ctx, r.GetName()))
}

func (s *nexusServer) AddChild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return nexusReply(s.e.NexusChildOp(ctx, r.GetNexus(), ChildAdd, r.GetChild()))
}

func (s *nexusServer) RemoveChild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return nexusReply(s.e.NexusChildOp(ctx, r.GetNexus(), ChildRemove, r.GetChild()))
}

func (s *nexusServer) FaultChild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return nexusReply(s.e.NexusChildOp(ctx, r.GetNexus(), ChildFault, r.GetChild()))
}

func (s *nexusServer) OfflineChild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return nexusReply(s.e.NexusChildOp(ctx, r.GetNexus(), ChildOffline, r.GetChild()))
}

func (s *nexusServer) OnlineChild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return nexusReply(s.e.NexusChildOp(ctx, r.GetNexus(), ChildOnline, r.GetChild()))
}

func (s *nexusServer) RebuildStatus(_ context.Context, r *enginev1.RebuildStatusRequest) (*enginev1.RebuildStatusResponse, error) {
	rs, err := s.e.NexusRebuilds(r.GetNexus(), r.GetChild())
	if err != nil {
		return nil, err
	}
	resp := &enginev1.RebuildStatusResponse{}
	for _, st := range rs {
		resp.Rebuilds = append(resp.Rebuilds, RebuildToProto(st))
	}
	return resp, nil
}

func (s *nexusServer) control(ctx context.Context, r *enginev1.ChildRequest, a nexus.RebuildAction) (*enginev1.Rebuild, error) {
	st, err := s.e.ControlRebuild(ctx, r.GetNexus(), r.GetChild(), a)
	if err != nil {
		return nil, err
	}
	return RebuildToProto(st), nil
}

func (s *nexusServer) PauseRebuild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Rebuild, error) {
	return s.control(ctx, r, nexus.RebuildPause)
}

func (s *nexusServer) ResumeRebuild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Rebuild, error) {
	return s.control(ctx, r, nexus.RebuildResume)
}

func (s *nexusServer) StopRebuild(ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Rebuild, error) {
	return s.control(ctx, r, nexus.RebuildStop)
}

func (s *nexusServer) Verify(ctx context.Context, r *enginev1.VerifyRequest) (*enginev1.VerifyResponse, error) {
	rep, err := s.e.VerifyNexus(ctx, r.GetNexus())
	if err != nil {
		return nil, err
	}
	resp := &enginev1.VerifyResponse{Segments: uint64(rep.Segments), Children: rep.Children}
	for _, m := range rep.Mismatches {
		resp.Mismatches = append(resp.Mismatches, &enginev1.Range{Offset: uint64(m.Off), Length: uint64(m.Len)})
	}
	return resp, nil
}

func nexusReply(ni NexusInfo, err error) (*enginev1.Nexus, error) {
	if err != nil {
		return nil, err
	}
	return NexusToProto(ni), nil
}

var childStates = map[nexus.ChildState]enginev1.ChildState{
	nexus.StateOnline:     enginev1.ChildState_CHILD_STATE_ONLINE,
	nexus.StateRebuilding: enginev1.ChildState_CHILD_STATE_REBUILDING,
	nexus.StateFaulted:    enginev1.ChildState_CHILD_STATE_FAULTED,
	nexus.StateOffline:    enginev1.ChildState_CHILD_STATE_OFFLINE,
}

// NexusToProto converts a NexusInfo to its API message.
func NexusToProto(ni NexusInfo) *enginev1.Nexus {
	m := &enginev1.Nexus{Name: ni.Name, Uuid: ni.UUID, Size: uint64(ni.Size), BlockSize: uint32(ni.BlockSize), Reason: ni.Reason,
		Epoch: ni.Epoch}
	for _, l := range ni.LeftOut {
		m.LeftOut = append(m.LeftOut, &enginev1.LeftOutChild{Uri: l.URI, State: l.State, Reason: l.Reason})
	}
	switch ni.State {
	case NexusOnline:
		m.State = enginev1.NexusState_NEXUS_STATE_ONLINE
	case NexusDegraded:
		m.State = enginev1.NexusState_NEXUS_STATE_DEGRADED
	case NexusFaulted:
		m.State = enginev1.NexusState_NEXUS_STATE_FAULTED
	}
	for _, c := range ni.Children {
		mc := &enginev1.Child{Uri: c.URI, State: childStates[c.State], Reason: string(c.Reason), Local: c.Local,
			LastError: c.LastError, DirtyBytes: uint64(c.DirtyBytes), Identity: c.Identity}
		if c.Rebuild != nil {
			mc.Rebuild = RebuildToProto(*c.Rebuild)
		}
		m.Children = append(m.Children, mc)
	}
	if ni.Share != nil {
		m.Share = &enginev1.Share{Protocol: ni.Share.Protocol, Uri: ni.Share.URI, AllowedHosts: ni.Share.AllowedHosts}
		m.AnaState = ANAStateToProto(ni.Share.ANAState)
		m.MinCntlid, m.MaxCntlid = uint32(ni.Share.MinCNTLID), uint32(ni.Share.MaxCNTLID)
	}
	return m
}

// RebuildToProto converts a rebuild status to its API message.
func RebuildToProto(st nexus.RebuildStatus) *enginev1.Rebuild {
	m := &enginev1.Rebuild{Child: st.Child, State: string(st.State), Partial: st.Partial, Source: st.Source,
		TotalBytes: uint64(st.Total), DoneBytes: uint64(st.Done), Percent: st.Percent, BytesPerSecond: st.Rate,
		EtaSeconds: st.ETA.Seconds(), Error: st.Err}
	if !st.Started.IsZero() {
		m.StartedUnixNano = st.Started.UnixNano()
	}
	if !st.Finished.IsZero() {
		m.FinishedUnixNano = st.Finished.UnixNano()
	}
	return m
}
