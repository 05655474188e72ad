package mgmt

import (
	"context"
	"fmt"
	"strings"
	"sync"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

// Volume phases users see (VolumeStatus.phase).
const (
	PhaseCreating = "creating"
	PhaseOnline   = "online"
	PhaseDegraded = "degraded"
	PhaseFaulted  = "faulted"
	PhaseUnknown  = "unknown"
	PhaseDeleting = "deleting"
)

// nodeView is what one engine reported when a status was derived.
type nodeView struct {
	err      error // the engine did not answer (or the node is down)
	replicas map[string]*enginev1.Replica
	nexuses  map[string]*enginev1.Nexus
}

// observe reads the replicas and nexuses of the given nodes from their
// engines, in parallel, each bounded by probeTimeout. Nodes that are not
// joined are not asked: their view carries the reason.
func (s *Service) observe(ctx context.Context, idx map[string]*Member, nodes map[string]bool) map[string]*nodeView {
	out := make(map[string]*nodeView, len(nodes))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id := range nodes {
		m := idx[id]
		if !alive(m) {
			mu.Lock()
			out[id] = &nodeView{err: nodeDown(m, id)}
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			nv := &nodeView{replicas: map[string]*enginev1.Replica{}, nexuses: map[string]*enginev1.Nexus{}}
			cctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			c, err := s.vols.eng.get(m.Address)
			if err == nil {
				var rr *enginev1.ListReplicasResponse
				if rr, err = c.ListReplicas(cctx, &enginev1.ListReplicasRequest{}); err == nil {
					for _, r := range rr.Replicas {
						nv.replicas[r.Uuid] = r
					}
					var nr *enginev1.ListNexusesResponse
					if nr, err = c.ListNexuses(cctx, &enginev1.ListNexusesRequest{}); err == nil {
						for _, n := range nr.Nexuses {
							nv.nexuses[n.Name] = n
						}
					}
				}
			}
			if err != nil {
				nv = &nodeView{err: err}
			}
			mu.Lock()
			out[id] = nv
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// volumeNodes are the nodes whose engines hold parts of v.
func volumeNodes(v *volumeRecord, into map[string]bool) {
	for _, r := range v.ReplicaSet {
		into[r.Node] = true
	}
	if v.Target != nil {
		into[v.Target.Node] = true
	}
}

func childStateName(s enginev1.ChildState) string {
	switch s {
	case enginev1.ChildState_CHILD_STATE_ONLINE:
		return "online"
	case enginev1.ChildState_CHILD_STATE_FAULTED:
		return "faulted"
	case enginev1.ChildState_CHILD_STATE_OFFLINE:
		return "offline"
	case enginev1.ChildState_CHILD_STATE_REBUILDING:
		return "rebuilding"
	}
	return "unknown"
}

func nexusStateName(s enginev1.NexusState) string {
	switch s {
	case enginev1.NexusState_NEXUS_STATE_ONLINE:
		return PhaseOnline
	case enginev1.NexusState_NEXUS_STATE_DEGRADED:
		return PhaseDegraded
	case enginev1.NexusState_NEXUS_STATE_FAULTED:
		return PhaseFaulted
	}
	return PhaseUnknown
}

// volumeProto derives a volume's status from the engines' views. It never
// reports better than it knows: a replica or nexus whose node does not
// answer is unknown, and a volume with an unknown part is not online.
//
// recorded is the nexus health record's state of each replica (nil when the
// volume was never published): an unpublished volume counts only the
// replicas it records current, since the others missed writes.
func volumeProto(v *volumeRecord, idx map[string]*Member, views map[string]*nodeView, recorded map[string]string) *mgmtv1.Volume {
	out := &mgmtv1.Volume{CreatedMs: v.CreatedMs, Spec: &mgmtv1.VolumeSpec{Name: v.Name, Uuid: v.UUID, Size: v.Size,
		Replicas: uint32(v.Replicas), Thin: v.Thin, Protocol: v.Protocol, FromSnapshot: v.FromSnapshot,
		Placement: &mgmtv1.Placement{NodeSelector: v.NodeSelector, PoolSelector: v.PoolSelector}}}
	st := &mgmtv1.VolumeStatus{}
	out.Status = st
	if v.Op != nil {
		st.Operation = v.Op.Kind
	}
	var nx *enginev1.Nexus
	nexusUnknown := false
	if v.Target != nil {
		m := idx[v.Target.Node]
		t := &mgmtv1.VolumeTarget{Node: nodeName(idx, v.Target.Node), NodeUuid: v.Target.Node, Protocol: v.Target.Protocol,
			Uri: v.Target.URI, Nqn: v.Target.NQN, HostNqns: v.Target.HostNQNs, State: PhaseUnknown}
		if m != nil {
			t.Rank = m.Rank
		}
		nv := views[v.Target.Node]
		switch {
		case nv == nil || nv.err != nil:
			nexusUnknown = true
			if nv != nil {
				t.Reason = nv.err.Error()
			}
		case nv.nexuses[v.Name] == nil || nv.nexuses[v.Name].Uuid != v.UUID:
			t.State, t.Reason = PhaseFaulted, "the nexus is missing on its node (the engine restarted without it)"
		case nv.nexuses[v.Name].State == enginev1.NexusState_NEXUS_STATE_FAULTED && strings.HasPrefix(nv.nexuses[v.Name].Reason, "restoring"):
			// The engine is still reading the nexus's record after a
			// restart: not known yet either way.
			nexusUnknown = true
			t.Reason = nv.nexuses[v.Name].Reason
		default:
			nx = nv.nexuses[v.Name]
			t.State, t.Reason, t.Epoch = nexusStateName(nx.State), nx.Reason, nx.Epoch
		}
		st.Target = t
	}
	children := map[string]*enginev1.Child{} // by replica UUID
	if nx != nil {
		for _, c := range nx.Children {
			children[replicaOfURI(c.Uri)] = c
		}
	}
	onlineReplicas, unknown := 0, 0
	for _, r := range v.ReplicaSet {
		vr := &mgmtv1.VolumeReplica{Uuid: r.UUID, Node: nodeName(idx, r.Node), NodeUuid: r.Node, Pool: r.Pool, State: PhaseUnknown}
		if m := idx[r.Node]; m != nil {
			vr.Rank = m.Rank
		}
		vr.Local = v.Target != nil && v.Target.Node == r.Node
		nv := views[r.Node]
		switch {
		case nv == nil || nv.err != nil:
			unknown++
			if nv != nil {
				vr.Reason = nv.err.Error()
			}
		case nv.replicas[r.UUID] == nil:
			vr.State, vr.Reason = "missing", "the engine has no such replica"
		default:
			rep := nv.replicas[r.UUID]
			vr.Owner, vr.Epoch, vr.Reason = rep.Owner, rep.Epoch, rep.Reason
			if rep.State == enginev1.ReplicaState_REPLICA_STATE_ONLINE {
				vr.State = "online"
				if st, ok := recorded[r.UUID]; recorded == nil || (ok && st == "online") {
					onlineReplicas++
				} else if v.Target == nil {
					vr.Reason = "not current: the nexus recorded it " + cmpOr(st, "absent") + "; the next publish rebuilds it"
				}
			} else {
				vr.State = "faulted"
			}
			if nx != nil {
				if c := children[r.UUID]; c != nil {
					vr.ChildState, vr.Reason = childStateName(c.State), c.Reason
					if c.Rebuild != nil {
						vr.RebuildPercent = c.Rebuild.Percent
					}
				}
			}
		}
		st.Replicas = append(st.Replicas, vr)
	}
	sortRefs(st.Replicas)
	switch {
	case v.Status == volCreating:
		st.Phase = PhaseCreating
	case v.Status == volDeleting:
		st.Phase = PhaseDeleting
	case v.Target != nil:
		if nx == nil {
			st.Phase = PhaseFaulted
			if nexusUnknown {
				st.Phase = PhaseUnknown
			}
			st.Reason = st.Target.Reason
			break
		}
		for _, r := range st.Replicas {
			if r.ChildState == "online" {
				st.Healthy++
			}
		}
		st.Phase = nexusStateName(nx.State)
		if st.Phase == PhaseOnline && int(st.Healthy) < v.Replicas {
			st.Phase = PhaseDegraded
		}
		if st.Phase != PhaseOnline {
			st.Reason = fmt.Sprintf("%d of %d replicas in sync", st.Healthy, v.Replicas)
			if nx.Reason != "" {
				st.Reason += "; " + nx.Reason
			}
		}
	default:
		st.Healthy = uint32(onlineReplicas)
		switch {
		case onlineReplicas >= v.Replicas:
			st.Phase = PhaseOnline
		case onlineReplicas == 0 && unknown > 0:
			st.Phase, st.Reason = PhaseUnknown, "no replica's node answers"
		case onlineReplicas == 0:
			st.Phase, st.Reason = PhaseFaulted, "no replica is online"
		default:
			st.Phase, st.Reason = PhaseDegraded, fmt.Sprintf("%d of %d replicas online and current", onlineReplicas, v.Replicas)
		}
	}
	return out
}

// volumeStatuses derives the status of every volume in vs, reading each
// involved engine once.
func (s *Service) volumeStatuses(ctx context.Context, vs []*volumeRecord) ([]*mgmtv1.Volume, error) {
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	idx := memberIndex(members)
	nodes := map[string]bool{}
	for _, v := range vs {
		volumeNodes(v, nodes)
	}
	views := s.observe(ctx, idx, nodes)
	out := make([]*mgmtv1.Volume, 0, len(vs))
	for _, v := range vs {
		var recorded map[string]string
		if v.Target == nil {
			if recorded, err = s.recordedChildren(ctx, v.UUID, views); err != nil {
				return nil, err
			}
		}
		vp := volumeProto(v, idx, views, recorded)
		if v.Status == volCreated {
			vp.Status.Repairs = s.repairsOf(v.UUID)
		}
		out = append(out, vp)
	}
	return out, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// replicaOfURI is the replica UUID a child URI ends with (bdev:///<uuid>,
// or a share's NQN ending in :<uuid>), as the nexus keys its health record.
func replicaOfURI(uri string) string {
	return uri[strings.LastIndexAny(uri, "/:")+1:]
}
