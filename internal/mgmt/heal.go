package mgmt

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/scheduler"
)

// CodeLastHealthyCopy is the fault of a removal refused because it would
// take away the last healthy copy of a volume.
const CodeLastHealthyCopy = "volume.last_healthy_copy"

// Repair kinds (Repair.kind in volume.proto).
const (
	repResyncing  = "resyncing"
	repRebuilding = "rebuilding"
	repReplacing  = "replacing"
	repWaiting    = "waiting"
	repRemoving   = "removing"
	repBlocked    = "blocked"
)

// maxRebuildFailures is how many rebuilds of one replica may fail before
// it is given up on and replaced elsewhere.
const maxRebuildFailures = 3

// replicaHealth is what one pass found of one replica of a volume.
type replicaHealth struct {
	// ref is a copy of the replica's entry when the pass read it; changes
	// go to the record through volumeRecord.ref, by UUID (entries move
	// when others are removed).
	ref  replicaRef
	node *Member
	// up: the node is joined and its engine answered.
	up bool
	// exists: the engine has the replica (meaningful when up).
	exists bool
	// healthy: an online child of the nexus (published), or a replica the
	// health record calls current on a node that is up (unpublished).
	healthy bool
	// syncing: a child being rebuilt or resynced.
	syncing bool
	partial bool
	percent float64
	child   *enginev1.Child // nil when not a child
	// lost: given up on (gone, another identity, away too long, or
	// rebuilds keep failing); it is replaced.
	lost     bool
	lostWhy  string
	draining bool
	// removed: taken out of the volume by this pass.
	removed bool
}

func (h *replicaHealth) nodeName() string {
	if h.node == nil {
		return h.ref.Node
	}
	return h.node.DisplayName()
}

func (h *replicaHealth) toReplace() bool { return h.lost || h.draining }

// volHeal is the leader's memory of one volume's repairs: what the last
// pass found (shown by GetVolume), the repairs under way (for metrics),
// and since when the volume is degraded.
type volHeal struct {
	// isWhole: the last pass found every replica healthy, nothing to do.
	isWhole       bool
	repairs       []*mgmtv1.Repair
	degradedSince time.Time
	running       map[string]string // repair kind, by replica UUID
	failures      map[string]int    // failed rebuilds by replica UUID
}

// healState is the leader's memory of every volume's repairs; a new leader
// starts it afresh (what is persisted is in the volume records).
type healState struct {
	mu   sync.Mutex
	vols map[string]*volHeal
	// counters by repair kind (resync, rebuild, replace).
	started, finished, failed map[string]uint64
	// healSeconds are the durations of degraded periods that ended.
	healSeconds []float64
}

func (h *healState) vol(id string) *volHeal {
	if h.vols == nil {
		h.vols = map[string]*volHeal{}
	}
	vh := h.vols[id]
	if vh == nil {
		vh = &volHeal{running: map[string]string{}, failures: map[string]int{}}
		h.vols[id] = vh
	}
	return vh
}

func (h *healState) count(m *map[string]uint64, kind string) {
	if *m == nil {
		*m = map[string]uint64{}
	}
	(*m)[kind]++
}

// RepairStats are the leader's repair counters, for metrics.
type RepairStats struct {
	// Started, Finished and Failed count repairs by kind: resync (partial
	// rebuild of a returning replica), rebuild (full rebuild of a replica
	// of the volume) and replace (a new replica for a lost one).
	Started, Finished, Failed map[string]uint64
	// HealSeconds are the durations, in seconds, of the degraded periods
	// that ended since this replica became leader (from when a volume was
	// first seen with fewer healthy replicas than asked for, to when it had
	// them all again).
	HealSeconds []float64
}

// RepairStats returns a copy of the repair counters of this replica's
// current (or last) term as leader.
func (s *Service) RepairStats() RepairStats {
	h := &s.healing
	h.mu.Lock()
	defer h.mu.Unlock()
	cp := func(m map[string]uint64) map[string]uint64 {
		out := map[string]uint64{}
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	return RepairStats{Started: cp(h.started), Finished: cp(h.finished), Failed: cp(h.failed), HealSeconds: slices.Clone(h.healSeconds)}
}

// repairsOf returns what the last pass found pending or running for a
// volume.
func (s *Service) repairsOf(id string) []*mgmtv1.Repair {
	s.healing.mu.Lock()
	defer s.healing.mu.Unlock()
	if vh := s.healing.vols[id]; vh != nil {
		return vh.repairs
	}
	return nil
}

// reconcileVolume is the reconciler of one volume: it finishes or rolls
// back an operation left recorded, finishes a delete, removes nexuses left
// behind, and heals a created volume. It is idempotent and level-
// triggered: it looks at the volume's record and the engines' live state,
// never at what changed. It returns when to look again (0: at the next
// resync).
func (s *Service) reconcileVolume(ctx context.Context, id string) (time.Duration, error) {
	l := s.vols.lock(id)
	if !l.TryLock() {
		return time.Second, nil // an operation holds it: look again soon
	}
	defer l.Unlock()
	v, err := s.getVolumeByUUID(ctx, id)
	if err != nil {
		return 0, err
	}
	if v == nil {
		s.healing.mu.Lock()
		delete(s.healing.vols, id)
		s.healing.mu.Unlock()
		return 0, nil
	}
	if v.Status != volCreated || v.Op != nil || len(v.StaleTargets) > 0 {
		if err := s.resumeVolume(ctx, id); err != nil {
			return 0, err
		}
		if v, err = s.getVolumeByUUID(ctx, id); err != nil || v == nil {
			return 0, err
		}
		if v.Status != volCreated || v.Op != nil {
			return 0, nil
		}
	}
	return s.healVolume(ctx, v)
}

// healVolume brings a created volume to its replica count of healthy replicas:
// returning replicas are resynced, faulted ones rebuilt, lost ones
// replaced, extra ones removed, retired ones destroyed. The caller holds
// the volume's lock.
func (s *Service) healVolume(ctx context.Context, v *volumeRecord) (time.Duration, error) {
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return 0, err
	}
	idx := memberIndex(members)
	now := s.nowMs()
	var repairs []*mgmtv1.Repair
	block := func(format string, a ...any) {
		repairs = append(repairs, &mgmtv1.Repair{Kind: repBlocked, Reason: fmt.Sprintf(format, a...)})
	}
	defer func() { s.setRepairs(v, repairs) }()
	s.healing.mu.Lock()
	s.healing.vol(v.UUID).isWhole = false // until this pass says otherwise
	s.healing.mu.Unlock()

	// The nexus, when published: repairs go through it.
	var nx *enginev1.Nexus
	var target *Member
	var tc engineAPI
	if v.Target != nil {
		target = idx[v.Target.Node]
		if !alive(target) {
			// The nexus's node is away: the nexus moves to another node
			// (the replicas are repaired from there).
			moved, err := s.failover(ctx, v, members)
			if !moved {
				block("the nexus's node %s is %s, and the nexus cannot move: %v", nodeName(idx, v.Target.Node), stateOf(target), err)
				return 0, nil
			}
			if err != nil {
				block("the nexus is moving from %s (%s): %v", nodeName(idx, v.Op.From), stateOf(target), err)
				return 0, err
			}
			return time.Second, nil
		}
		// A drain takes the nexus off its node too: a planned move (ANA
		// inaccessible there, optimized on the new node), so hosts that
		// follow moves see no error.
		if target.Draining && v.Op == nil {
			err := s.startMove(ctx, v, members, nil, fmt.Sprintf("its node %s is being drained", target.DisplayName()))
			var f *fault.Fault
			switch {
			case err == nil:
				return time.Second, nil
			case errors.As(err, &f) && f.Code == CodeVolumeNotPlaceable:
				block("node %s is being drained, and the nexus cannot move: %v", target.DisplayName(), err)
			default:
				return 0, err
			}
		}
		if tc, err = s.engineOf(target, v.Target.Node); err != nil {
			return 0, err
		}
		cctx, cancel := context.WithTimeout(ctx, probeTimeout)
		nx, err = tc.GetNexus(cctx, &enginev1.GetNexusRequest{Name: v.Name})
		cancel()
		switch {
		case notFound(err):
			block("the nexus is missing on %s (its engine restarted without it): republish the volume", target.DisplayName())
			return 0, nil
		case err != nil:
			block("the nexus's node %s does not answer: %v", target.DisplayName(), err)
			return 0, err
		case nx.Uuid != v.UUID:
			block("node %s has another nexus named %s", target.DisplayName(), v.Name)
			return 0, nil
		case nx.State == enginev1.NexusState_NEXUS_STATE_FAULTED:
			block("the nexus is faulted: %s", nx.Reason)
			return 0, nil
		}
	}
	nodes := map[string]bool{}
	volumeNodes(v, nodes)
	for _, r := range v.Retired {
		nodes[r.Node] = true
	}
	views := s.observe(ctx, idx, nodes)
	var recorded map[string]string
	if nx == nil {
		if recorded, err = s.recordedChildren(ctx, v.UUID, views); err != nil {
			return 0, err
		}
	}
	hs := s.assess(v, idx, views, nx, recorded)

	s.healing.mu.Lock()
	vh := s.healing.vol(v.UUID)
	s.healing.mu.Unlock()

	healthy := 0
	for _, h := range hs {
		if h.healthy {
			healthy++
		}
	}
	changed := false
	var errs []error
	// 1. Bring back what can be brought back, and decide what is lost.
	for _, h := range hs {
		r := &h.ref
		if h.healthy || h.syncing {
			if h.healthy && (r.OutSinceMs != 0 || (r.Replaces != "" && !slices.ContainsFunc(v.ReplicaSet, func(x replicaRef) bool { return x.UUID == r.Replaces }))) {
				// In sync: no longer out, and done replacing once the
				// replaced replica has left.
				r.OutSinceMs, changed = 0, true
				v.ref(r.UUID).OutSinceMs = 0
				if !slices.ContainsFunc(v.ReplicaSet, func(x replicaRef) bool { return x.UUID == r.Replaces }) {
					r.Replaces = ""
					v.ref(r.UUID).Replaces = ""
				}
			}
			continue
		}
		if r.OutSinceMs == 0 {
			r.OutSinceMs, changed = now, true
			v.ref(r.UUID).OutSinceMs = now
		}
		if h.lost {
			continue
		}
		if nx != nil && h.up && h.exists {
			// A refusal (another identity) faults the child: the next
			// pass finds it lost.
			if err := s.bringBack(ctx, v, tc, target, h, vh); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if nx == nil && h.up && h.exists {
			repairs = append(repairs, &mgmtv1.Repair{Kind: repWaiting, Replica: r.UUID, Node: nodeName(idx, r.Node),
				Reason: "it missed writes; it is rebuilt when the volume is next published", StartedMs: r.OutSinceMs})
			continue
		}
		deadline := r.OutSinceMs + s.cfg.PartialWait.Milliseconds()
		if s.cfg.PartialWait < 0 {
			deadline = r.OutSinceMs
		}
		// Nothing is given up on while no healthy copy is known: a new
		// replica would have nothing to be copied from.
		switch {
		case healthy == 0:
			repairs = append(repairs, &mgmtv1.Repair{Kind: repWaiting, Replica: r.UUID, Node: nodeName(idx, r.Node),
				Reason: fmt.Sprintf("its node is %s, and no healthy copy is known to replace it from", stateOf(h.node)), StartedMs: r.OutSinceMs})
		case healthy == 1 && nx != nil && !alive(h.node):
			// The volume is written through one copy: no waiting. (Only
			// on the membership's word that the node is away, not on one
			// probe that went unanswered; and not for an unpublished
			// volume, whose replicas miss no writes.)
			h.lost, h.lostWhy = true, fmt.Sprintf("its node %s is %s and only one healthy copy is left", nodeName(idx, r.Node), stateOf(h.node))
		case now >= deadline:
			h.lost, h.lostWhy = true, fmt.Sprintf("it has been away since %s (%s), longer than rebuild.partial_wait (%v)",
				msTime(r.OutSinceMs), awayWhy(h), max(s.cfg.PartialWait, 0))
		default:
			repairs = append(repairs, &mgmtv1.Repair{Kind: repWaiting, Replica: r.UUID, Node: nodeName(idx, r.Node),
				Reason: awayWhy(h) + "; it is replaced if it is not back by then", UntilMs: deadline, StartedMs: r.OutSinceMs})
		}
	}

	// 2. Place replacements for what is lost or drained, and new replicas
	// for a larger count. The record lists a replica before it exists.
	var active []*replicaHealth
	var uncovered []*replicaHealth
	covered := map[string]bool{}
	for _, h := range hs {
		if h.ref.Replaces != "" {
			covered[h.ref.Replaces] = true
		}
	}
	for _, h := range hs {
		if !h.toReplace() {
			active = append(active, h)
		} else if !covered[h.ref.UUID] {
			uncovered = append(uncovered, h)
		}
	}
	if deficit := v.Replicas - len(active); deficit > 0 {
		replacing := map[string]bool{}
		for _, h := range hs {
			if h.toReplace() {
				replacing[h.ref.UUID] = true
			}
		}
		added, err := s.addReplicas(ctx, v, members, deficit, uncovered, replacing)
		if err != nil {
			var np *scheduler.NotPlaceableError
			if errors.As(err, &np) {
				block("no node can take a new replica: %v", err)
			} else {
				errs = append(errs, err)
			}
		}
		for _, a := range added {
			covered[a.Replaces] = true
			nh := &replicaHealth{ref: a, node: idx[a.Node], up: true, exists: true}
			hs = append(hs, nh)
			active = append(active, nh)
			if nx != nil {
				if err := s.attach(ctx, v, tc, target, nh, vh); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if len(added) > 0 {
			changed = false // addReplicas wrote the record
		}
	}

	// 3. Remove what is replaced, and extras beyond the count. A replica
	// to replace that no replacement covers goes too once the others hold
	// the count (it was lowered meanwhile): nothing would ever replace it.
	for _, h := range hs {
		spare := !covered[h.ref.UUID] && countActive(hs) >= v.Replicas
		if !h.toReplace() || (!covered[h.ref.UUID] && !spare) {
			continue
		}
		if h.healthy {
			// A drained replica goes once every replacement is healthy,
			// or, with none, while the others are healthy enough.
			if (covered[h.ref.UUID] && !replacementsHealthy(hs, h.ref.UUID)) || (spare && countHealthy(hs)-1 < v.Replicas) {
				why := "its node is drained; it is removed once its replacement is in sync"
				if nx == nil {
					why = "its node is drained; the volume is not published: its replacement is copied at the next publish, then it is removed"
				}
				repairs = append(repairs, &mgmtv1.Repair{Kind: repRemoving, Replica: h.ref.UUID, Node: nodeName(idx, h.ref.Node), Reason: why})
				continue
			}
		}
		why := h.lostWhy
		if h.draining && !h.lost {
			why = "its node is drained"
		}
		if err := s.removeReplica(ctx, v, hs, h, nx, tc, idx, why); err != nil {
			errs = append(errs, err)
		}
	}
	if extra := countActive(hs) - v.Replicas; extra > 0 {
		for _, h := range removalOrder(hs, v) {
			if extra == 0 {
				break
			}
			if h.healthy && countHealthy(hs)-1 < v.Replicas {
				continue // never below the count of healthy replicas by a removal
			}
			if err := s.removeReplica(ctx, v, hs, h, nx, tc, idx, fmt.Sprintf("the volume keeps %d replicas", v.Replicas)); err != nil {
				errs = append(errs, err)
				continue
			}
			extra--
		}
	}

	// 4. Children the volume does not count on (replaced or removed
	// replicas still attached) leave the nexus.
	if nx != nil {
		s.detachStrangers(ctx, v, hs, nx, tc)
	}

	// 5. Retired replicas are destroyed once their nodes answer, and only
	// while the volume has all its healthy replicas: until then a retired
	// replica may be the best copy a person could still recover.
	if countHealthy(hs) >= v.Replicas && s.destroyRetired(ctx, v, idx, views, nx) {
		changed = true
	}
	if changed {
		if err := s.putVolume(ctx, v); err != nil {
			errs = append(errs, err)
		}
	}

	// What is pending now, for GetVolume; metrics; the healed event.
	for _, h := range hs {
		if h.syncing {
			kind := repRebuilding
			if h.partial {
				kind = repResyncing
			}
			if h.ref.Replaces != "" {
				kind = repReplacing
			}
			repairs = append(repairs, &mgmtv1.Repair{Kind: kind, Replica: h.ref.UUID, Node: nodeName(idx, h.ref.Node),
				Percent: h.percent, Replaces: h.ref.Replaces, StartedMs: h.ref.AddedMs})
		}
		if h.toReplace() && !covered[h.ref.UUID] && len(repairs) == 0 {
			block("replica %s must be replaced (%s), and no replacement could be placed yet", h.ref.UUID, h.lostWhy)
		}
	}
	s.track(ctx, v, hs, vh, idx)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return nextLook(repairs, now), nil
}

// nextLook is when a volume's reconciler looks again by itself: soon
// while a repair runs (to follow it), when the first wait for a node ends,
// else at the resync (member changes and nexus record saves wake it
// anyway).
func nextLook(repairs []*mgmtv1.Repair, nowMs int64) time.Duration {
	var until int64
	for _, r := range repairs {
		switch r.Kind {
		case repWaiting:
			if r.UntilMs > 0 && (until == 0 || r.UntilMs < until) {
				until = r.UntilMs
			}
		case repBlocked:
		default:
			return 2 * time.Second
		}
	}
	if until == 0 {
		return 0
	}
	return max(time.Duration(until-nowMs)*time.Millisecond, time.Second)
}

// assess classifies every replica of v from the engines' views and the
// nexus (nil when unpublished; recorded is then the health record's view).
func (s *Service) assess(v *volumeRecord, idx map[string]*Member, views map[string]*nodeView, nx *enginev1.Nexus,
	recorded map[string]string) []*replicaHealth {
	children := map[string]*enginev1.Child{}
	if nx != nil {
		for _, c := range nx.Children {
			children[replicaOfURI(c.Uri)] = c
		}
	}
	s.healing.mu.Lock()
	vh := s.healing.vol(v.UUID)
	failures := maps.Clone(vh.failures)
	s.healing.mu.Unlock()
	out := make([]*replicaHealth, 0, len(v.ReplicaSet))
	for _, r := range v.ReplicaSet {
		h := &replicaHealth{ref: r, node: idx[r.Node]}
		nv := views[r.Node]
		h.up = alive(h.node) && nv != nil && nv.err == nil
		h.draining = h.node != nil && h.node.Draining
		// A replica its engine does not list is treated as away, not as
		// gone: a pool still being imported lists nothing yet.
		h.exists = h.up && nv.replicas[r.UUID] != nil
		if c := children[r.UUID]; c != nil {
			h.child = c
			switch c.State {
			case enginev1.ChildState_CHILD_STATE_ONLINE:
				// An idle nexus notices nothing of a dead child: the
				// membership's word that the node is away counts.
				h.healthy = alive(h.node)
			case enginev1.ChildState_CHILD_STATE_REBUILDING:
				h.syncing = true
				if c.Rebuild != nil {
					h.partial, h.percent = c.Rebuild.Partial, c.Rebuild.Percent
				}
			case enginev1.ChildState_CHILD_STATE_FAULTED:
				if c.Reason == "identity-changed" {
					h.lost, h.lostWhy = true, "the replica on its node is another one now (identity changed)"
				}
			}
		} else if nx == nil && h.up && h.exists {
			st, ok := recorded[r.UUID]
			h.healthy = recorded == nil || (ok && st == "online")
			if st == stateIdentityChanged {
				h.lost, h.lostWhy = true, "the replica on its node is another one now (identity changed)"
			}
		}
		if !h.healthy && !h.syncing && failures[r.UUID] >= maxRebuildFailures && !h.lost {
			h.lost, h.lostWhy = true, fmt.Sprintf("its rebuild failed %d times", failures[r.UUID])
		}
		out = append(out, h)
	}
	return out
}

// bringBack returns a replica that is out of its nexus to it: an offline
// child (its node returned) is resynced from the write-intent bitmap; a
// faulted child, or a replica that is not a child, is added for a full
// rebuild. A FailedPrecondition error means the nexus refuses the replica
// (another identity).
func (s *Service) bringBack(ctx context.Context, v *volumeRecord, tc engineAPI, target *Member, h *replicaHealth, vh *volHeal) error {
	r := h.ref
	if h.child != nil && h.child.State == enginev1.ChildState_CHILD_STATE_OFFLINE {
		// The bitmap is kept under the child's URI: a replica shared
		// elsewhere now (its node's address changed) is rebuilt in full.
		uri := "bdev:///" + r.UUID
		if r.Node != target.UUID {
			var err error
			if uri, err = s.shareReplica(ctx, h.node, v, r, target.HostNQN); err != nil {
				return err
			}
		}
		if uri != h.child.Uri {
			return s.attach(ctx, v, tc, target, h, vh)
		}
		cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
		defer cancel()
		if _, err := tc.OnlineChild(cctx, &enginev1.ChildRequest{Nexus: v.Name, Child: h.child.Uri}); err != nil {
			return fmt.Errorf("bring replica %s back into volume %s: %w", r.UUID, v.Name, err)
		}
		s.startRepair(vh, r.UUID, "resync")
		h.syncing, h.partial = true, true
		s.event(ctx, evResync, v.Name, h.nodeName(), r.UUID,
			fmt.Sprintf("its child was offline (%s) and its node answers again", h.child.Reason),
			"replica %s is back: copying only the writes it missed", r.UUID)
		return nil
	}
	return s.attach(ctx, v, tc, target, h, vh)
}

// attach shares a replica to the nexus's node (when remote) and adds it to
// the nexus, which rebuilds it in full.
func (s *Service) attach(ctx context.Context, v *volumeRecord, tc engineAPI, target *Member, h *replicaHealth, vh *volHeal) error {
	r := h.ref
	uri := "bdev:///" + r.UUID
	if r.Node != target.UUID {
		var err error
		if uri, err = s.shareReplica(ctx, h.node, v, r, target.HostNQN); err != nil {
			return err
		}
	}
	if h.child != nil && h.child.Uri != uri {
		// The replica is a child under an older URI (its node moved):
		// that child goes first.
		if err := s.detach(ctx, v, tc, h.child.Uri); err != nil {
			return err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
	defer cancel()
	if _, err := tc.AddChild(cctx, &enginev1.ChildRequest{Nexus: v.Name, Child: uri}); err != nil {
		return fmt.Errorf("add replica %s to the nexus of volume %s: %w", r.UUID, v.Name, err)
	}
	kind, ev, cause := "rebuild", evRebuild, "the replica is not in sync (not a child of the nexus)"
	switch {
	case r.Replaces != "":
		kind, ev, cause = "replace", evReplace, "it replaces replica "+r.Replaces
	case h.child == nil && r.AddedMs != 0 && r.OutSinceMs == 0:
		ev, cause = evAdd, "the volume has fewer replicas than it keeps"
	case h.child != nil:
		cause = fmt.Sprintf("its child was %s (%s)", childStateName(h.child.State), h.child.Reason)
	}
	s.startRepair(vh, r.UUID, kind)
	h.syncing = true // from now on the nexus rebuilds it
	s.event(ctx, ev, v.Name, h.nodeName(), r.UUID, cause, "replica %s is copied in full from the volume's healthy replicas", r.UUID)
	return nil
}

// addReplicas places n new replicas for v (away from its nodes), records
// them, creates them, and returns them. uncovered are replicas to replace
// that no new replica replaces yet: the first ones are linked. replacing
// are the replicas given up on (their nodes are avoided, their fault
// domains free).
func (s *Service) addReplicas(ctx context.Context, v *volumeRecord, members []*Member, n int, uncovered []*replicaHealth,
	replacing map[string]bool) ([]replicaRef, error) {
	s.vols.placeMu.Lock()
	defer s.vols.placeMu.Unlock()
	vols, err := s.listVolumes(ctx)
	if err != nil {
		return nil, err
	}
	// The nodes of replicas being given up on are avoided, but their fault
	// domains are free for the replicas that take over from them.
	var exclude, avoid []string
	for _, r := range v.ReplicaSet {
		if replacing[r.UUID] {
			avoid = append(avoid, r.Node)
		} else {
			exclude = append(exclude, r.Node)
		}
	}
	for _, r := range v.Retired {
		avoid = append(avoid, r.Node)
	}
	nodes := s.schedNodes(ctx, members, vols)
	// As many as can be placed now: a second loss that has nowhere to go
	// must not hold up the first one's replacement.
	//
	// The avoided nodes are taken when no other node can: a lost
	// replica's node, or one holding only a retired replica (destroyed
	// only once the volume is whole again), may be the only one left, and
	// refusing it would keep the volume short for good.
	var choices []scheduler.Choice
	var placeErr error
	for _, av := range [][]string{avoid, nil} {
		for k := n; k > 0 && len(choices) == 0; k-- {
			choices, err = scheduler.Place(scheduler.Request{Size: v.Size, Replicas: k, Thin: v.Thin, NodeSelector: v.NodeSelector,
				PoolSelector: v.PoolSelector, Exclude: exclude, Avoid: av}, nodes)
			if err == nil {
				break
			}
			if placeErr == nil {
				placeErr = err
			}
			var np *scheduler.NotPlaceableError
			if !errors.As(err, &np) {
				return nil, err
			}
		}
		if len(choices) > 0 {
			break // placed away from them (the rest, if any, at a later pass)
		}
	}
	if len(choices) == 0 {
		return nil, placeErr
	}
	var added []replicaRef
	for i, c := range choices {
		cluster := uint64(1)
		for _, nd := range nodes {
			if nd.UUID == c.NodeUUID {
				for _, p := range nd.Pools {
					if p.Name == c.Pool {
						cluster = p.ClusterSize
					}
				}
			}
		}
		r := replicaRef{UUID: uuid.NewString(), Node: c.NodeUUID, Pool: c.Pool, Size: roundUp(v.Size, cluster), AddedMs: s.nowMs()}
		if i < len(uncovered) {
			r.Replaces = uncovered[i].ref.UUID
		}
		added = append(added, r)
	}
	v.ReplicaSet = append(v.ReplicaSet, added...)
	if err := s.putVolume(ctx, v); err != nil {
		return nil, err
	}
	idx := memberIndex(members)
	var out []replicaRef
	var errs []error
	for _, a := range added {
		if err := s.createReplica(ctx, idx[a.Node], v, a); err != nil {
			// Taken out again; whatever the engine made of it is destroyed
			// as a retired replica.
			s.failRepair("replace")
			s.event(ctx, evRepairFailed, v.Name, nodeName(idx, a.Node), a.UUID, err.Error(), "a new replica could not be created")
			v.ReplicaSet = slices.DeleteFunc(v.ReplicaSet, func(x replicaRef) bool { return x.UUID == a.UUID })
			v.Retired = append(v.Retired, a)
			errs = append(errs, err)
			continue
		}
		out = append(out, a)
	}
	if len(errs) > 0 {
		if err := s.putVolume(ctx, v); err != nil {
			errs = append(errs, err)
		}
	}
	if len(choices) < n {
		errs = append(errs, placeErr)
	}
	return out, errors.Join(errs...)
}

// removeReplica takes h out of the volume: it leaves the nexus, then the
// replica set, and is destroyed (now, or once its node answers). It never
// takes the last healthy copy (mayRemove).
//
// The nexus lets the replica go before the record does: while it is a
// child it takes every write, and the others may fail meanwhile (the
// engine keeps the last online child), so until it has left the nexus it
// may be the only current copy, and the volume must count it. Should the
// record not follow (the leader dies), the next pass finds a replica of
// the set that is no child, and adds it back or removes it again.
func (s *Service) removeReplica(ctx context.Context, v *volumeRecord, hs []*replicaHealth, h *replicaHealth, nx *enginev1.Nexus,
	tc engineAPI, idx map[string]*Member, why string) error {
	if err := mayRemove(v, hs, h); err != nil {
		s.log.Error("refused to remove a replica", "volume", v.Name, "replica", h.ref.UUID, "err", err)
		return err
	}
	r := h.ref
	if nx != nil && h.child != nil {
		if err := s.detach(ctx, v, tc, h.child.Uri); err != nil {
			return err // the pass after retries; the volume still counts it
		}
		h.child, h.healthy, h.syncing = nil, false, false
	}
	v.ReplicaSet = slices.DeleteFunc(v.ReplicaSet, func(x replicaRef) bool { return x.UUID == r.UUID })
	r.Replaces = ""
	v.Retired = append(v.Retired, r)
	if err := s.putVolume(ctx, v); err != nil {
		return err
	}
	h.lost, h.draining, h.healthy, h.syncing = false, false, false, false
	h.removed = true
	s.event(ctx, evRemove, v.Name, nodeName(idx, r.Node), r.UUID, why, "replica %s leaves the volume", r.UUID)
	return nil
}

// mayRemove is the last check before a replica leaves a volume: a removal
// that would leave the volume without a healthy copy is refused, whatever
// the caller thought. A healthy replica may go only while another healthy
// one stays.
//
// Nothing at all is removed while no other healthy copy is known: an
// out-of-service replica may then be the best copy left, for a person to
// recover from.
func mayRemove(v *volumeRecord, hs []*replicaHealth, h *replicaHealth) error {
	others := 0
	for _, o := range hs {
		if o != h && o.healthy && !o.removed {
			others++
		}
	}
	if others == 0 {
		return lastCopy(v, h)
	}
	return nil
}

func lastCopy(v *volumeRecord, h *replicaHealth) error {
	return fault.New(fault.FailedPrecondition, CodeLastHealthyCopy,
		fmt.Sprintf("volume %s: replica %s is its last healthy copy; it is not removed", v.Name, h.ref.UUID),
		"bring another replica of the volume in sync first")
}

// detach removes a child from the nexus. The engine refuses to remove the
// last healthy child too.
func (s *Service) detach(ctx context.Context, v *volumeRecord, tc engineAPI, uri string) error {
	cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
	defer cancel()
	if _, err := tc.RemoveChild(cctx, &enginev1.ChildRequest{Nexus: v.Name, Child: uri}); err != nil && !notFound(err) {
		return fmt.Errorf("remove child %s from the nexus of volume %s: %w", uri, v.Name, err)
	}
	return nil
}

// detachStrangers removes children that are no replica of the volume's
// set (retired, or unknown): never the last online child.
func (s *Service) detachStrangers(ctx context.Context, v *volumeRecord, hs []*replicaHealth, nx *enginev1.Nexus, tc engineAPI) {
	in := map[string]bool{}
	for _, r := range v.ReplicaSet {
		in[r.UUID] = true
	}
	online := 0
	for _, c := range nx.Children {
		if c.State == enginev1.ChildState_CHILD_STATE_ONLINE && in[replicaOfURI(c.Uri)] {
			online++
		}
	}
	for _, c := range nx.Children {
		if in[replicaOfURI(c.Uri)] {
			continue
		}
		if online == 0 {
			return // nothing the volume counts on is online: keep every child
		}
		if err := s.detach(ctx, v, tc, c.Uri); err != nil {
			s.log.Warn("a child the volume does not count on could not be removed", "volume", v.Name, "child", c.Uri, "err", err)
		}
	}
}

// destroyRetired destroys the retired replicas whose nodes answer, as the
// volume's own (the engine refuses a replica another owner holds); it
// reports whether the record changed. A retired replica that is still a
// child of the nexus stays until it has left it.
func (s *Service) destroyRetired(ctx context.Context, v *volumeRecord, idx map[string]*Member, views map[string]*nodeView, nx *enginev1.Nexus) bool {
	if len(v.Retired) == 0 {
		return false
	}
	attached := map[string]bool{}
	if nx != nil {
		for _, c := range nx.Children {
			attached[replicaOfURI(c.Uri)] = true
		}
	}
	var left []replicaRef
	for _, r := range v.Retired {
		nv := views[r.Node]
		m := idx[r.Node]
		if attached[r.UUID] || (m != nil && (!alive(m) || nv == nil || nv.err != nil)) {
			left = append(left, r)
			continue
		}
		if err := s.destroyReplica(ctx, m, v, r); err != nil {
			s.log.Warn("a retired replica could not be destroyed yet", "volume", v.Name, "replica", r.UUID, "err", err)
			left = append(left, r)
			continue
		}
		s.event(ctx, evReplicaGC, v.Name, nodeName(idx, r.Node), r.UUID, "it was taken out of the volume", "replica %s destroyed", r.UUID)
	}
	if len(left) == len(v.Retired) {
		return false
	}
	v.Retired = left
	return true
}

func replacementsHealthy(hs []*replicaHealth, id string) bool {
	n := 0
	for _, h := range hs {
		if h.ref.Replaces == id {
			if !h.healthy {
				return false
			}
			n++
		}
	}
	return n > 0
}

func countActive(hs []*replicaHealth) int {
	n := 0
	for _, h := range hs {
		if !h.removed && !h.toReplace() {
			n++
		}
	}
	return n
}

func countHealthy(hs []*replicaHealth) int {
	n := 0
	for _, h := range hs {
		if !h.removed && h.healthy {
			n++
		}
	}
	return n
}

// removalOrder is the order in which extra replicas go: out of service
// first, then those being rebuilt, then healthy ones, the nexus's local
// replica last; among equals the newest first.
func removalOrder(hs []*replicaHealth, v *volumeRecord) []*replicaHealth {
	var c []*replicaHealth
	for _, h := range hs {
		if !h.removed && !h.toReplace() {
			c = append(c, h)
		}
	}
	rank := func(h *replicaHealth) int {
		switch {
		case !h.healthy && !h.syncing:
			return 0
		case h.syncing:
			return 1
		case v.Target != nil && h.ref.Node == v.Target.Node:
			return 3
		}
		return 2
	}
	sort.SliceStable(c, func(i, j int) bool {
		if ri, rj := rank(c[i]), rank(c[j]); ri != rj {
			return ri < rj
		}
		return c[i].ref.AddedMs > c[j].ref.AddedMs
	})
	return c
}

// setRepairs publishes what a pass found.
func (s *Service) setRepairs(v *volumeRecord, repairs []*mgmtv1.Repair) {
	s.healing.mu.Lock()
	defer s.healing.mu.Unlock()
	s.healing.vol(v.UUID).repairs = repairs
}

func (s *Service) startRepair(vh *volHeal, replica, kind string) {
	s.healing.mu.Lock()
	defer s.healing.mu.Unlock()
	vh.running[replica] = kind
	s.healing.count(&s.healing.started, kind)
}

func (s *Service) failRepair(kind string) {
	s.healing.mu.Lock()
	defer s.healing.mu.Unlock()
	s.healing.count(&s.healing.failed, kind)
}

// track updates the repair counters from what a pass found: a repair whose
// replica is healthy finished; one whose replica fell out again failed. It
// also times degraded periods and records the healed event.
func (s *Service) track(ctx context.Context, v *volumeRecord, hs []*replicaHealth, vh *volHeal, idx map[string]*Member) {
	s.healing.mu.Lock()
	var failedNow []string
	for _, h := range hs {
		id := h.ref.UUID
		kind, ok := vh.running[id]
		if h.healthy {
			delete(vh.failures, id)
		}
		switch {
		case !ok || h.syncing:
		case h.healthy:
			delete(vh.running, id)
			s.healing.count(&s.healing.finished, kind)
		default:
			delete(vh.running, id)
			vh.failures[id]++
			s.healing.count(&s.healing.failed, kind)
			failedNow = append(failedNow, id)
		}
	}
	healthy := countHealthy(hs)
	full := healthy >= v.Replicas && len(v.ReplicaSet) == v.Replicas
	vh.isWhole = full && len(v.Retired) == 0
	var healedAfter time.Duration
	switch {
	case !full && vh.degradedSince.IsZero():
		// From when the first replica was seen out, if that is known.
		vh.degradedSince = s.cfg.Now()
		for _, h := range hs {
			if ms := h.ref.OutSinceMs; ms > 0 && time.UnixMilli(ms).Before(vh.degradedSince) {
				vh.degradedSince = time.UnixMilli(ms)
			}
		}
	case full && !vh.degradedSince.IsZero():
		healedAfter = s.cfg.Now().Sub(vh.degradedSince)
		vh.degradedSince = time.Time{}
		s.healing.healSeconds = append(s.healing.healSeconds, healedAfter.Seconds())
		if len(s.healing.healSeconds) > 10000 {
			s.healing.healSeconds = s.healing.healSeconds[len(s.healing.healSeconds)-10000:]
		}
	}
	s.healing.mu.Unlock()
	for _, id := range failedNow {
		s.event(ctx, evRepairFailed, v.Name, "", id, "the replica fell out of service during its rebuild", "the repair of replica %s failed", id)
	}
	if healedAfter > 0 {
		s.event(ctx, evHealed, v.Name, "", "", fmt.Sprintf("it had fewer than %d healthy replicas", v.Replicas),
			"volume %s has %d healthy replicas again after %s", v.Name, healthy, healedAfter.Round(time.Millisecond))
	}
}

// awayWhy says why a replica is out of reach.
func awayWhy(h *replicaHealth) string {
	if h.up && !h.exists {
		return fmt.Sprintf("node %s does not list it (its pool may not be imported yet)", h.nodeName())
	}
	return fmt.Sprintf("its node %s is %s", h.nodeName(), stateOf(h.node))
}

func stateOf(m *Member) string {
	if m == nil {
		return "no longer a member"
	}
	if m.State == StateJoined {
		return "not answering"
	}
	return string(m.State)
}

func msTime(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339) }

// whole reports whether the last reconcile of a volume found it whole
// (false when it was never reconciled in this term).
func (h *healState) whole(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	vh := h.vols[id]
	return vh != nil && vh.isWhole
}

// reset forgets the repairs of a previous term (a new leader recomputes
// them from the records and the engines); counters stay.
func (h *healState) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.vols = nil
}
