package mgmt

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/scheduler"
)

// Move stages (volumeOp.Stage).
const (
	stageRetire    = "retire"
	stageRepublish = "republish"
	stageDeleteOld = "delete old target"
)

// evMove is the event of a nexus moved to another node.
const evMove = "nexus.move"

// moveVolume implements VolumeService.MoveVolume.
func (s *Service) moveVolume(ctx context.Context, ref, to string) (*volumeRecord, error) {
	v, unlock, err := s.lockVolume(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer unlock()
	switch {
	case v.Status != volCreated:
		return nil, fault.New(fault.FailedPrecondition, CodeVolumeState, fmt.Sprintf("volume %s is %s", v.Name, v.Status), "")
	case v.Op != nil:
		return nil, busy(v)
	case v.Target == nil:
		return nil, fault.New(fault.FailedPrecondition, CodeVolumeState, fmt.Sprintf("volume %s is not published: there is no nexus to move", v.Name),
			fmt.Sprintf("publish it where it is needed (`nexctl volume publish %s --node NODE`)", v.Name))
	}
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	var dest *Member
	if to != "" {
		if dest, err = resolveNode(members, to); err != nil {
			return nil, err
		}
		if dest.UUID == v.Target.Node {
			return v, nil
		}
		if !alive(dest) {
			return nil, nodeDown(dest, dest.UUID)
		}
	}
	if err := s.startMove(ctx, v, members, dest, "asked by an administrator"); err != nil {
		return nil, err
	}
	return v, nil
}

// startMove records the move of v's nexus to dest (nil: the scheduler
// picks a node other than the current one) and carries it out; the caller
// holds the volume's lock. The record says what is under way, so that a
// new leader finishes the move (it is never rolled back: the volume must
// end up published).
func (s *Service) startMove(ctx context.Context, v *volumeRecord, members []*Member, dest *Member, cause string) error {
	from := v.Target.Node
	if dest == nil {
		var err error
		if dest, err = s.pickNexusNode(ctx, v, members, from); err != nil {
			return err
		}
	}
	v.Op = &volumeOp{Kind: opMove, Node: dest.UUID, From: from, Protocol: v.Target.Protocol, HostNQNs: v.Target.HostNQNs,
		StartedMs: s.nowMs(), Stage: stageRetire, Cause: cause}
	if err := s.putVolume(ctx, v); err != nil {
		return err
	}
	return s.finishMove(ctx, v, memberIndex(members))
}

// pickNexusNode chooses where a moved nexus goes: the scheduler's choice
// among joined, uncordoned nodes other than from, replica nodes first.
func (s *Service) pickNexusNode(ctx context.Context, v *volumeRecord, members []*Member, from string) (*Member, error) {
	vols, err := s.listVolumes(ctx)
	if err != nil {
		return nil, err
	}
	nexuses := map[string]int{}
	for _, x := range vols {
		if x.Target != nil {
			nexuses[x.Target.Node]++
		}
	}
	var replicaNodes []string
	for _, r := range v.ReplicaSet {
		if r.Node != from {
			replicaNodes = append(replicaNodes, r.Node)
		}
	}
	var nodes []scheduler.Node
	for _, m := range members {
		if m.UUID == from {
			continue
		}
		nodes = append(nodes, scheduler.Node{UUID: m.UUID, Name: m.DisplayName(), Rank: m.Rank, State: string(m.State),
			Cordoned: m.Cordoned, FaultDomain: m.FaultDomain, Labels: m.Labels, Nexuses: nexuses[m.UUID]})
	}
	choice, _, err := scheduler.PlaceNexus("", replicaNodes, nodes)
	if err != nil {
		return nil, fault.New(fault.FailedPrecondition, CodeVolumeNotPlaceable,
			fmt.Sprintf("volume %s: no other node can host its nexus: %v", v.Name, err), "start or uncordon a node")
	}
	return memberIndex(members)[choice.NodeUUID], nil
}

// finishMove carries a recorded move on from its stage, each stage
// persisted before the next begins so that a new leader resumes where this
// one stopped:
//
//   - retire: the old nexus stops serving. Over nvmf, where its node
//     answers, its publication is set ANA inaccessible: the call returns
//     once the I/O it was executing has finished, so no write of the old
//     nexus lands after it, and hosts hold or retry their I/O until the new
//     path is there (Linux native multipath queues I/O while a path of the
//     subsystem exists). Over nbd (no multipath) it is destroyed. A node
//     that does not answer leaves it as a stale target, fenced by the new
//     nexus's epoch and refused its health record, so never reopened.
//   - republish: the nexus is created on the new node from the replicas
//     the record calls current and exported as before, optimized, under the
//     same NQN and namespace identity, with the new node's controller ID
//     range. A destination that died meanwhile is replaced by another node.
//   - delete old target: after Config.MoveGrace (hosts connect the new
//     path meanwhile), the old (inaccessible) nexus is destroyed where its
//     node answers, else left as a stale target; hosts then drop their
//     path to it.
func (s *Service) finishMove(ctx context.Context, v *volumeRecord, idx map[string]*Member) error {
	op := v.Op
	if op.Stage != stageRepublish && op.Stage != stageDeleteOld { // retire, or a record without a stage
		s.retireOldNexus(ctx, v, idx)
		v.Target, op.Stage = nil, stageRepublish
		if err := s.putVolume(ctx, v); err != nil {
			return err
		}
	}
	if op.Stage == stageRepublish || v.Target == nil {
		if !alive(idx[op.Node]) {
			members := make([]*Member, 0, len(idx))
			for _, m := range idx {
				members = append(members, m)
			}
			slices.SortFunc(members, func(a, b *Member) int { return int(a.Rank) - int(b.Rank) })
			dest, err := s.pickNexusNode(ctx, v, members, op.From)
			if err != nil {
				return err
			}
			op.Node = dest.UUID
			if err := s.putVolume(ctx, v); err != nil {
				return err
			}
		}
		t, err := s.realizePublish(ctx, v, idx)
		if err != nil {
			return fmt.Errorf("volume %s: move to %s: %w", v.Name, nodeName(idx, op.Node), err)
		}
		v.Target, op.Stage = t, stageDeleteOld
		if err := s.putVolume(ctx, v); err != nil {
			return err
		}
	}
	if op.From != v.Target.Node && !slices.Contains(v.StaleTargets, op.From) {
		// The grace lets hosts connect the new path while the old one
		// still answers (inaccessible): their I/O moves by ANA, not by a
		// lost connection. A leader that stops meanwhile leaves the stage
		// recorded.
		if g := s.cfg.MoveGrace; g > 0 && op.Protocol != "nbd" && alive(idx[op.From]) {
			select {
			case <-time.After(g):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := s.destroyNexus(ctx, idx[op.From], v); err != nil {
			v.StaleTargets = append(v.StaleTargets, op.From)
			s.log.Warn("move: the old nexus is removed when its node answers", "volume", v.Name, "node", nodeName(idx, op.From), "err", err)
		}
	}
	v.Op = nil
	if err := s.putVolume(ctx, v); err != nil {
		return err
	}
	t := v.Target
	s.event(ctx, evMove, v.Name, nodeName(idx, t.Node), "", op.Cause, "the nexus of volume %s moved from %s to %s (%s)",
		v.Name, nodeName(idx, op.From), nodeName(idx, t.Node), t.URI)
	s.enqueue(v.UUID)
	return nil
}

// retireOldNexus stops the nexus on the node a move takes it from (see
// finishMove's retire stage). What it cannot reach becomes a stale target.
func (s *Service) retireOldNexus(ctx context.Context, v *volumeRecord, idx map[string]*Member) {
	op := v.Op
	from := idx[op.From]
	if from == nil || slices.Contains(v.StaleTargets, op.From) {
		return
	}
	err := s.setOldInaccessible(ctx, from, v)
	if err == nil {
		return
	}
	if alive(from) {
		s.log.Warn("move: the old nexus could not be set inaccessible: destroying it first", "volume", v.Name, "node", from.DisplayName(), "err", err)
		if err = s.destroyNexus(ctx, from, v); err == nil {
			return
		}
	}
	v.StaleTargets = append(v.StaleTargets, op.From)
	s.log.Warn("move: the old nexus's node does not answer: it stays as a stale target, fenced by the new nexus's epoch",
		"volume", v.Name, "node", from.DisplayName(), "err", err)
}

// setOldInaccessible sets the ANA state of the volume's nexus publication
// on m to inaccessible (nvmf only). A nexus that is not there, or is
// another volume's, needs nothing.
func (s *Service) setOldInaccessible(ctx context.Context, m *Member, v *volumeRecord) error {
	if v.Op.Protocol == "nbd" {
		return fmt.Errorf("nbd has no ANA states")
	}
	c, err := s.engineOf(m, m.UUID)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
	defer cancel()
	n, err := c.GetNexus(cctx, &enginev1.GetNexusRequest{Name: v.Name})
	if notFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nexus of volume %s on %s: %w", v.Name, m.DisplayName(), err)
	}
	if n.Uuid != v.UUID {
		return nil
	}
	if _, err := c.SetNexusAnaState(cctx, &enginev1.SetNexusAnaStateRequest{Name: v.Name, AnaState: enginev1.AnaState_ANA_STATE_INACCESSIBLE}); err != nil {
		return fmt.Errorf("set the nexus of volume %s on %s inaccessible: %w", v.Name, m.DisplayName(), err)
	}
	s.log.Info("move: the old nexus is inaccessible", "volume", v.Name, "node", m.DisplayName())
	return nil
}

// cntlidBlock is how many NVMe controller IDs each node's nexus
// publications hand out: a host connected to one volume's subsystem on two
// nodes (during a move) must get distinct controller IDs from them.
const cntlidBlock = 256

// cntlidRange is the controller ID range of a node's nexus publications,
// derived from its rank: ranks a multiple of 254 apart share one. The
// first block (1..256) is left out: a publication made without a range
// hands out IDs from 1 up, and a host may still hold one of those.
func cntlidRange(rank uint32) (lo, hi uint32) {
	const blocks = 65519/cntlidBlock - 1 // 254 ranges within 257..65280
	lo = (rank%blocks+1)*cntlidBlock + 1
	return lo, lo + cntlidBlock - 1
}

// failover moves the nexus of a published volume whose nexus's node is
// away; the caller holds the volume's lock. It reports whether a move was
// started.
func (s *Service) failover(ctx context.Context, v *volumeRecord, members []*Member) (bool, error) {
	idx := memberIndex(members)
	m := idx[v.Target.Node]
	if alive(m) {
		return false, nil
	}
	cause := fmt.Sprintf("its node %s is %s", nodeName(idx, v.Target.Node), stateOf(m))
	if err := s.startMove(ctx, v, members, nil, cause); err != nil {
		var f *fault.Fault
		if errors.As(err, &f) && f.Code == CodeVolumeNotPlaceable {
			return false, err
		}
		return true, err
	}
	return true, nil
}

// reportPathFailure implements VolumeService.ReportPathFailure: a host's
// path to the volume's target failed; the nexus is moved when a probe of
// its node confirms that it does not serve.
func (s *Service) reportPathFailure(ctx context.Context, ref, uri, host string) (*volumeRecord, error) {
	v, unlock, err := s.lockVolume(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer unlock()
	switch {
	case v.Target == nil:
		return nil, fault.New(fault.FailedPrecondition, CodeVolumeState, fmt.Sprintf("volume %s is not published", v.Name),
			"connect where the volume is published (`nexctl volume get`)")
	case v.Op != nil || (uri != "" && uri != v.Target.URI):
		return v, nil // under way, or moved already
	}
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	idx := memberIndex(members)
	m := idx[v.Target.Node]
	if !alive(m) {
		_, err := s.failover(ctx, v, members)
		return v, err
	}
	why, answered := s.probeNexus(ctx, m, v)
	if why == "" {
		s.log.Info("a host reported its path to a volume failed; the nexus serves", "volume", v.Name, "host", host, "node", m.DisplayName())
		return v, nil
	}
	cause := fmt.Sprintf("host %s reported its path failed, and on node %s %s", host, m.DisplayName(), why)
	if answered {
		return v, s.startMove(ctx, v, members, nil, cause)
	}
	// The engine did not answer: the node is taken for away, as the
	// heartbeat checker would (its next heartbeat rejoins it), so that
	// the move neither waits for it nor counts on its replica.
	if err := s.markUnresponsive(ctx, m, cause); err != nil {
		return nil, err
	}
	if members, err = listMembers(ctx, s.cfg.Etcd, s.k); err != nil {
		return nil, err
	}
	return v, s.startMove(ctx, v, members, nil, cause)
}

// probeNexus asks m's engine, within probeTimeout, whether the volume's
// nexus serves there; it returns why not ("" when it does), and whether
// the engine answered at all.
func (s *Service) probeNexus(ctx context.Context, m *Member, v *volumeRecord) (string, bool) {
	c, err := s.engineOf(m, m.UUID)
	if err != nil {
		return "the engine is out of reach: " + err.Error(), false
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	n, err := c.GetNexus(pctx, &enginev1.GetNexusRequest{Name: v.Name})
	switch {
	case notFound(err):
		return "its nexus is gone", true
	case err != nil:
		return "the engine did not answer: " + err.Error(), false
	case n.Uuid != v.UUID:
		return "its nexus is gone", true
	case n.State == enginev1.NexusState_NEXUS_STATE_FAULTED:
		return "its nexus is faulted: " + n.Reason, true
	case n.Share == nil:
		return "its nexus is not published", true
	}
	return "", true
}

// markUnresponsive records a joined member as unresponsive, as
// CheckMembers does for one whose heartbeats stopped; a heartbeat rejoins
// it.
func (s *Service) markUnresponsive(ctx context.Context, m *Member, why string) error {
	if m.State != StateJoined {
		return nil
	}
	prev := m.State
	m.State, m.PrevState, m.LastHB = StateUnresponsive, prev, s.lastHeartbeat(m)
	m.Info = why
	ok, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.member(m.UUID)), "=", m.modRev)},
		clientv3.OpPut(s.k.member(m.UUID), encodeMember(m)))
	if err != nil {
		return err
	}
	if ok {
		s.log.Warn("member unresponsive", "rank", m.Rank, "address", m.Address, "was", prev, "why", why)
		s.kickVolumes()
	}
	return nil
}

// ReportPathFailure implements VolumeService.ReportPathFailure.
func (vs *VolumeServer) ReportPathFailure(ctx context.Context, req *mgmtv1.ReportPathFailureRequest) (*mgmtv1.Volume, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	return vs.answer(ctx)(vs.s.reportPathFailure(ctx, req.Name, req.TargetUri, req.HostNqn))
}

// MoveVolume implements VolumeService.MoveVolume.
func (vs *VolumeServer) MoveVolume(ctx context.Context, req *mgmtv1.MoveVolumeRequest) (*mgmtv1.Volume, error) {
	ctx, done, err := vs.s.inTerm(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	defer done()
	return vs.answer(ctx)(vs.s.moveVolume(ctx, req.Name, req.Node))
}
