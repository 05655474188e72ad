package mgmt

import (
	"context"
	"fmt"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
)

// updateMember applies change to the member named ref (name, rank or
// UUID) with compare-and-swap, retrying when the record changed meanwhile
// (heartbeats write it too). change reports whether it changed anything.
func (s *Service) updateMember(ctx context.Context, ref string, change func(*Member) bool) (*Member, error) {
	if err := s.requireLeader(ctx); err != nil {
		return nil, err
	}
	for attempt := 0; attempt < maxTxnAttempts; attempt++ {
		members, err := listMembers(ctx, s.cfg.Etcd, s.k)
		if err != nil {
			return nil, err
		}
		m, err := resolveNode(members, ref)
		if err != nil {
			return nil, err
		}
		if !change(m) {
			return m, nil
		}
		ok, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.member(m.UUID)), "=", m.modRev)},
			clientv3.OpPut(s.k.member(m.UUID), encodeMember(m)))
		if err != nil {
			return nil, err
		}
		if ok {
			s.kickVolumes()
			return m, nil
		}
	}
	return nil, fault.New(fault.Unavailable, CodeStore, "node update: too many concurrent changes", "retry")
}

// cordonNode implements CordonNode (on true) and UncordonNode; uncordon
// also ends a drain.
func (s *Service) cordonNode(ctx context.Context, ref string, on bool) (*Member, error) {
	m, err := s.updateMember(ctx, ref, func(m *Member) bool {
		if m.Cordoned == on && (on || !m.Draining) {
			return false
		}
		m.Cordoned = on
		if !on {
			m.Draining, m.DrainStartedMs = false, 0
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	if on {
		s.event(ctx, evCordon, "", m.DisplayName(), "", "asked by an administrator", "node %s cordoned: no new replicas or nexuses go there", m.DisplayName())
	} else {
		s.event(ctx, evUncordon, "", m.DisplayName(), "", "asked by an administrator", "node %s uncordoned", m.DisplayName())
	}
	return m, nil
}

// drainNode implements DrainNode.
func (s *Service) drainNode(ctx context.Context, ref string) (*Member, error) {
	started := false
	m, err := s.updateMember(ctx, ref, func(m *Member) bool {
		if m.Draining {
			return false
		}
		m.Cordoned, m.Draining, m.DrainStartedMs = true, true, s.nowMs()
		started = true
		return true
	})
	if err != nil {
		return nil, err
	}
	if started {
		s.drained.forget(m.UUID)
		s.event(ctx, evDrain, "", m.DisplayName(), "", "asked by an administrator",
			"node %s is being drained: its replicas are replaced on other nodes", m.DisplayName())
	}
	return m, nil
}

// drainedNodes remembers which drains were reported finished in this term.
type drainedNodes struct {
	mu   sync.Mutex
	done map[string]bool
}

func (d *drainedNodes) forget(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.done, id)
}

// first reports whether id is reported drained for the first time.
func (d *drainedNodes) first(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done == nil {
		d.done = map[string]bool{}
	}
	if d.done[id] {
		return false
	}
	d.done[id] = true
	return true
}

// drainStatus is the progress of a draining member, from the volume
// records and the reconcilers' last findings.
func (s *Service) drainStatus(ctx context.Context, m *Member, vols []*volumeRecord) *mgmtv1.DrainStatus {
	if !m.Draining {
		return nil
	}
	st := &mgmtv1.DrainStatus{StartedMs: m.DrainStartedMs}
	for _, v := range vols {
		on := false
		for _, r := range v.ReplicaSet {
			if r.Node == m.UUID {
				st.ReplicasLeft++
				on = true
			}
		}
		for _, r := range v.Retired {
			if r.Node == m.UUID {
				st.ReplicasLeft++
				on = true
			}
		}
		if v.Target != nil && v.Target.Node == m.UUID {
			st.Nexuses++
			on = true
		}
		if !on {
			continue
		}
		if v.Target == nil {
			st.Blocked = append(st.Blocked, fmt.Sprintf("volume %s is not published: its replica here is copied to a new one when it is next published", v.Name))
		}
		for _, r := range s.repairsOf(v.UUID) {
			if r.Kind == repBlocked {
				st.Blocked = append(st.Blocked, fmt.Sprintf("volume %s: %s", v.Name, r.Reason))
			}
		}
	}
	st.State = "draining"
	if st.ReplicasLeft == 0 && st.Nexuses == 0 {
		st.State = "drained"
		if s.drained.first(m.UUID) {
			s.event(ctx, evDrained, "", m.DisplayName(), "", "every replica it held was replaced elsewhere, and every nexus moved",
				"node %s is drained", m.DisplayName())
		}
	}
	return st
}

// setReplicas implements SetVolumeReplicas.
func (s *Service) setReplicas(ctx context.Context, ref string, n uint32) (*volumeRecord, error) {
	v, unlock, err := s.lockVolume(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer unlock()
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	switch {
	case n == 0:
		return nil, fault.New(fault.InvalidArgument, CodeVolumeBadSpec, fmt.Sprintf("volume %s: 0 replicas", v.Name),
			"keep at least 1 replica; delete the volume to remove them all")
	case int(n) > len(members):
		return nil, fault.New(fault.InvalidArgument, CodeVolumeBadSpec,
			fmt.Sprintf("volume %s: %d replicas need %d nodes; the system has %d", v.Name, n, n, len(members)),
			fmt.Sprintf("ask for at most %d, or add nodes first", len(members)))
	case v.Status != volCreated:
		return nil, fault.New(fault.FailedPrecondition, CodeVolumeState, fmt.Sprintf("volume %s is %s", v.Name, v.Status), "")
	case v.Op != nil:
		return nil, busy(v)
	case int(n) == v.Replicas:
		return v, nil
	}
	from := v.Replicas
	v.Replicas = int(n)
	if err := s.putVolume(ctx, v); err != nil {
		return nil, err
	}
	s.log.Info("volume replica count changed", "volume", v.Name, "from", from, "to", n)
	s.enqueue(v.UUID)
	return v, nil
}
