package mgmt

import (
	"context"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

// Scripted runs of the reconciler simulation's model (no random faults,
// no leader deaths): each replays a situation the simulation found, and
// checks the same invariants at every pass.

func newScenario(t *testing.T) *rsWorld {
	t.Helper()
	return newRSWorld(t, startEtcd(t), "scenario", 1)
}

func (w *rsWorld) vol(t *testing.T, name string) *volumeRecord {
	t.Helper()
	v, err := w.svc.getVolume(context.Background(), name)
	if err != nil || v == nil {
		t.Fatalf("volume %s: %v", name, err)
	}
	return v
}

func (w *rsWorld) nodeOf(id string) *rsNode {
	for _, n := range w.nodes {
		if n.uuid == id {
			return n
		}
	}
	return nil
}

// crashNode stops a node's engine, and the membership says so.
func (w *rsWorld) crashNode(t *testing.T, n *rsNode) {
	t.Helper()
	w.mu.Lock()
	n.up, n.downAt = false, w.clock.Now()
	w.tracef("%s crashes", n.name)
	w.mu.Unlock()
	w.syncMember(t, n, true)
}

// reviveNode starts a node again (mutate changes what it comes back
// with), and it rejoins.
func (w *rsWorld) reviveNode(t *testing.T, n *rsNode, mutate func(*rsNode)) {
	t.Helper()
	w.mu.Lock()
	w.bringUp(n, mutate)
	w.mu.Unlock()
	w.syncMember(t, n, true)
}

// writeTo makes k writes to a published volume; they must be
// acknowledged.
func (w *rsWorld) writeTo(t *testing.T, name string, k int) {
	t.Helper()
	v := w.vol(t, name)
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := 0; i < k; i++ {
		nx := w.serving(v)
		if nx == nil || !w.write(nx) {
			t.Fatalf("volume %s: a write was not acknowledged", name)
		}
	}
}

// pass is one pass of the leader, then the rebuilds progress and the
// invariants are checked.
func (w *rsWorld) pass(t *testing.T) {
	t.Helper()
	w.clock.Advance(10 * time.Second)
	if err := w.svc.VolumePass(context.Background()); err != nil {
		t.Logf("pass: %v", err)
	}
	vols := w.volumes(t)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.progress(rand.New(rand.NewSource(1)), 0)
	w.check(vols)
}

func (w *rsWorld) mustOK(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// finish converges and fails t with every violation found.
func (w *rsWorld) finish(t *testing.T) {
	t.Helper()
	w.converge(t, rand.New(rand.NewSource(1)))
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fail(t, t.Name())
}

// setup creates volume v with the given replicas, publishes it on the
// node of its first one, and writes to it.
func (w *rsWorld) setup(t *testing.T, replicas uint32, writes int) *volumeRecord {
	t.Helper()
	ctx := context.Background()
	_, err := w.svc.createVolume(ctx, &mgmtv1.VolumeSpec{Name: "v", Size: 16 << 20, Replicas: replicas})
	w.mustOK(t, "create", err)
	v := w.vol(t, "v")
	_, err = w.svc.publishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "v", Node: w.nodeOf(v.ReplicaSet[0].Node).name})
	w.mustOK(t, "publish", err)
	w.writeTo(t, "v", writes)
	return w.vol(t, "v")
}

func counts(v *volumeRecord, id string) bool {
	return slices.ContainsFunc(v.ReplicaSet, func(r replicaRef) bool { return r.UUID == id })
}

// TestHealKeepsTheOnlyCurrentCopyOnADownNode: the only replica of an
// unpublished volume is on a node that is down and drained. A replacement
// is placed, and it holds nothing: the replica on the down node must stay
// in the volume (it is the only copy of the data), and leaves only once
// the replacement was rebuilt from it.
func TestHealKeepsTheOnlyCurrentCopyOnADownNode(t *testing.T) {
	w := newScenario(t)
	ctx := context.Background()
	v := w.setup(t, 1, 3)
	_, err := w.svc.unpublishVolume(ctx, "v")
	w.mustOK(t, "unpublish", err)
	only := v.ReplicaSet[0]
	n := w.nodeOf(only.Node)
	w.crashNode(t, n)
	_, err = w.svc.drainNode(ctx, n.name)
	w.mustOK(t, "drain", err)
	for i := 0; i < 3; i++ {
		w.pass(t)
	}
	if !counts(w.vol(t, "v"), only.UUID) {
		t.Errorf("the only current replica, on a node that is down, left the volume: %+v", w.vol(t, "v"))
	}
	w.reviveNode(t, n, nil)
	w.finish(t)
	if slices.ContainsFunc(w.vol(t, "v").ReplicaSet, func(r replicaRef) bool { return r.Node == n.uuid }) {
		t.Errorf("the drained node still holds a replica of the volume")
	}
}

// TestHealPlacesOnARetiredReplicasNode: the only node that can take a
// replacement holds a retired replica of the volume (a replacement whose
// creation failed there). The retired replica is destroyed only once the
// volume has all its healthy replicas, so that node must not be excluded
// for good.
func TestHealPlacesOnARetiredReplicasNode(t *testing.T) {
	w := newScenario(t)
	ctx := context.Background()
	v := w.setup(t, 3, 2)
	var spare []*rsNode
	for _, n := range w.nodes {
		if !slices.ContainsFunc(v.ReplicaSet, func(r replicaRef) bool { return r.Node == n.uuid }) {
			spare = append(spare, n)
		}
	}
	_, err := w.svc.cordonNode(ctx, spare[0].name, true)
	w.mustOK(t, "cordon", err)
	away := w.nodeOf(v.ReplicaSet[2].Node)
	w.crashNode(t, away)
	w.writeTo(t, "v", 2)
	w.pass(t) // the replica is out from now
	w.clock.Advance(rsPartialWait)
	// The replacement's creation fails on the only node that can take it.
	w.mu.Lock()
	w.refuse = func(n *rsNode, what string) bool { return n == spare[1] && strings.HasPrefix(what, "create replica") }
	w.mu.Unlock()
	w.pass(t)
	if r := w.vol(t, "v").Retired; !slices.ContainsFunc(r, func(r replicaRef) bool { return r.Node == spare[1].uuid }) {
		t.Fatalf("the failed replacement is not retired: %+v", r)
	}
	w.mu.Lock()
	w.refuse = nil
	w.mu.Unlock()
	for i := 0; i < 4; i++ {
		w.pass(t)
	}
	if !slices.ContainsFunc(w.vol(t, "v").ReplicaSet, func(r replicaRef) bool { return r.Node == spare[1].uuid }) {
		t.Errorf("no replacement on the node of the retired replica: %+v", w.vol(t, "v"))
	}
	// The node returns without its replica: nothing comes back to heal
	// the volume but the replacement.
	w.reviveNode(t, away, func(n *rsNode) { w.lose(n, v.ReplicaSet[2].UUID) })
	w.finish(t)
}

// TestHealRemovesALostReplicaItDoesNotNeed: a volume asked to keep fewer
// replicas loses one (its node returns without it). It has its count
// without it, so nothing replaces it: it must leave the volume all the
// same, or every later publish fails on it.
func TestHealRemovesALostReplicaItDoesNotNeed(t *testing.T) {
	w := newScenario(t)
	ctx := context.Background()
	v := w.setup(t, 3, 2)
	_, err := w.svc.unpublishVolume(ctx, "v")
	w.mustOK(t, "unpublish", err)
	_, err = w.svc.setReplicas(ctx, "v", 2)
	w.mustOK(t, "set-replicas", err)
	gone := v.ReplicaSet[2]
	n := w.nodeOf(gone.Node)
	w.crashNode(t, n)
	w.reviveNode(t, n, func(n *rsNode) { w.lose(n, gone.UUID) })
	for i := 0; i < 2; i++ {
		w.pass(t)
	}
	if counts(w.vol(t, "v"), gone.UUID) {
		t.Errorf("the lost replica is still counted: %+v", w.vol(t, "v").ReplicaSet)
	}
	w.finish(t)
}

// TestHealDoesNotTrustAReplicaCreatedAgain: a replica of an unpublished
// volume is destroyed and created again under its UUID while its node is
// away. The health record still calls it online; the leader must see
// that it is another replica (its NGUID), report it not current, and
// never keep it over the replica that holds the data.
func TestHealDoesNotTrustAReplicaCreatedAgain(t *testing.T) {
	w := newScenario(t)
	ctx := context.Background()
	v := w.setup(t, 2, 3)
	_, err := w.svc.unpublishVolume(ctx, "v")
	w.mustOK(t, "unpublish", err)
	again := v.ReplicaSet[1]
	n := w.nodeOf(again.Node)
	w.crashNode(t, n)
	w.reviveNode(t, n, func(n *rsNode) { w.recreate(n, again.UUID) })
	got, err := w.svc.Volumes().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "v"})
	w.mustOK(t, "get", err)
	if got.Status.Healthy != 1 {
		t.Errorf("status: %d healthy replicas, want 1 (the other was created again): %+v", got.Status.Healthy, got.Status.Replicas)
	}
	_, err = w.svc.setReplicas(ctx, "v", 1)
	w.mustOK(t, "set-replicas", err)
	for i := 0; i < 2; i++ {
		w.pass(t)
	}
	if !counts(w.vol(t, "v"), v.ReplicaSet[0].UUID) {
		t.Errorf("the replica that holds the data left the volume: %+v", w.vol(t, "v").ReplicaSet)
	}
	w.finish(t)
}

// TestHealPlacesOnALostReplicasNode: a replica is lost (its node came
// back without it), and the only node that can take its replacement is
// that node. The lost replica leaves the volume only once it is replaced,
// so its node must not be excluded for good.
func TestHealPlacesOnALostReplicasNode(t *testing.T) {
	w := newScenario(t)
	ctx := context.Background()
	v := w.setup(t, 3, 2)
	var spare []*rsNode
	for _, n := range w.nodes {
		if !slices.ContainsFunc(v.ReplicaSet, func(r replicaRef) bool { return r.Node == n.uuid }) {
			spare = append(spare, n)
		}
	}
	_, err := w.svc.cordonNode(ctx, spare[0].name, true)
	w.mustOK(t, "cordon", err)
	w.crashNode(t, spare[1])
	gone := v.ReplicaSet[2]
	n := w.nodeOf(gone.Node)
	w.crashNode(t, n)
	w.writeTo(t, "v", 2)
	w.reviveNode(t, n, func(n *rsNode) { w.lose(n, gone.UUID) })
	// A replica its engine does not list is waited for like a node that
	// is away (a pool may still be importing): wait that out.
	w.pass(t)
	w.clock.Advance(rsPartialWait)
	for i := 0; i < 4; i++ {
		w.pass(t)
	}
	got := w.vol(t, "v")
	if counts(got, gone.UUID) || !slices.ContainsFunc(got.ReplicaSet, func(r replicaRef) bool { return r.Node == n.uuid }) {
		t.Errorf("the lost replica was not replaced on its node: %s", w.refs(got.ReplicaSet))
	}
	w.reviveNode(t, spare[1], nil)
	w.finish(t)
}

// TestMoveLeavesOutALostReplica: a replica of a published volume is lost
// (its node came back without it, within the partial wait), then the
// nexus's node stops: the nexus moves to another node, which the lost
// replica cannot be shared to. The move only rolls forward, and
// the volume's reconciler repairs nothing while it is under way, so it
// must start the nexus without the lost replica (as without a replica
// whose node is down) rather than fail on it at every pass: the volume
// would stay unpublished for good.
func TestMoveLeavesOutALostReplica(t *testing.T) {
	w := newScenario(t)
	v := w.setup(t, 3, 2)
	from, gone := w.nodeOf(v.ReplicaSet[0].Node), v.ReplicaSet[1]
	n := w.nodeOf(gone.Node)
	w.crashNode(t, n)
	w.writeTo(t, "v", 2)
	w.reviveNode(t, n, func(n *rsNode) { w.lose(n, gone.UUID) })
	w.writeTo(t, "v", 1)
	// The nexus goes to the third replica's node, and shares the others
	// to it from there.
	_, err := w.svc.cordonNode(context.Background(), n.name, true)
	w.mustOK(t, "cordon", err)
	w.crashNode(t, from)
	for i := 0; i < 3; i++ {
		w.pass(t)
	}
	got := w.vol(t, "v")
	if got.Op != nil || got.Target == nil || got.Target.Node == from.uuid {
		t.Fatalf("the nexus did not move off %s: target %+v, op %+v", from.name, got.Target, got.Op)
	}
	w.writeTo(t, "v", 2)
	w.reviveNode(t, from, nil)
	w.finish(t)
}

// TestMoveLeavesOutALostLocalReplica: as TestMoveLeavesOutALostReplica,
// but the node the nexus moves to is the one whose replica is lost (its
// health record still calls it online: nothing was written meanwhile),
// and nothing else is left out: the new nexus must start without it (its
// engine does not list it), not be refused as degraded.
func TestMoveLeavesOutALostLocalReplica(t *testing.T) {
	w := newScenario(t)
	ctx := context.Background()
	_, err := w.svc.createVolume(ctx, &mgmtv1.VolumeSpec{Name: "v", Size: 16 << 20, Replicas: 2})
	w.mustOK(t, "create", err)
	v := w.vol(t, "v")
	var from *rsNode
	for _, n := range w.nodes {
		if !slices.ContainsFunc(v.ReplicaSet, func(r replicaRef) bool { return r.Node == n.uuid }) {
			from = n
			break
		}
	}
	_, err = w.svc.publishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "v", Node: from.name})
	w.mustOK(t, "publish", err)
	w.writeTo(t, "v", 3)
	keep, gone := w.nodeOf(v.ReplicaSet[0].Node), v.ReplicaSet[1]
	n := w.nodeOf(gone.Node)
	w.crashNode(t, n)
	w.reviveNode(t, n, func(n *rsNode) { w.lose(n, gone.UUID) })
	// The nexus goes to the lost replica's node.
	_, err = w.svc.cordonNode(ctx, keep.name, true)
	w.mustOK(t, "cordon", err)
	w.crashNode(t, from)
	for i := 0; i < 3; i++ {
		w.pass(t)
	}
	got := w.vol(t, "v")
	if got.Op != nil || got.Target == nil || got.Target.Node != n.uuid {
		t.Fatalf("the nexus did not move to %s: target %+v, op %+v", n.name, got.Target, got.Op)
	}
	w.writeTo(t, "v", 2)
	w.reviveNode(t, from, nil)
	_, err = w.svc.cordonNode(ctx, keep.name, false)
	w.mustOK(t, "uncordon", err)
	w.finish(t)
}

// TestRemovalKeepsCountingAnAttachedReplica: a volume's count is lowered
// and the removal of the extra replica from the nexus fails. As long as
// it is a child it takes the writes, and the other replica may fail
// meanwhile: the volume must count it until it has left the nexus, or
// its only current copy would be one it no longer counts (and would
// destroy).
func TestRemovalKeepsCountingAnAttachedReplica(t *testing.T) {
	w := newScenario(t)
	ctx := context.Background()
	_, err := w.svc.createVolume(ctx, &mgmtv1.VolumeSpec{Name: "v", Size: 16 << 20, Replicas: 2})
	w.mustOK(t, "create", err)
	v := w.vol(t, "v")
	var from *rsNode
	for _, n := range w.nodes {
		if !slices.ContainsFunc(v.ReplicaSet, func(r replicaRef) bool { return r.Node == n.uuid }) {
			from = n
			break
		}
	}
	_, err = w.svc.publishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: "v", Node: from.name})
	w.mustOK(t, "publish", err)
	w.writeTo(t, "v", 2)
	_, err = w.svc.setReplicas(ctx, "v", 1)
	w.mustOK(t, "set-replicas", err)
	victim := ""
	w.mu.Lock()
	w.refuse = func(n *rsNode, what string) bool {
		if n == from && strings.HasPrefix(what, "remove child") {
			victim = replicaOfURI(what[strings.LastIndex(what, " ")+1:])
			return true
		}
		return false
	}
	w.mu.Unlock()
	w.pass(t)
	w.mu.Lock()
	w.refuse = nil
	w.mu.Unlock()
	if victim == "" {
		t.Fatalf("no replica was removed from the nexus: %s", w.refs(w.vol(t, "v").ReplicaSet))
	}
	// The other replica's node crashes: the extra replica, still a child,
	// takes the next writes alone.
	other := v.ReplicaSet[0]
	if other.UUID == victim {
		other = v.ReplicaSet[1]
	}
	n := w.nodeOf(other.Node)
	w.crashNode(t, n)
	w.writeTo(t, "v", 2)
	w.pass(t)
	w.reviveNode(t, n, nil)
	w.finish(t)
}

// TestMoveLeavesOutAReplicaCreatedAgain: a replica of a published volume
// is destroyed and created again under its UUID while its node is away,
// and nothing is written before the nexus's node stops: the health record
// still calls it online. The nexus moves, to another node (remote) or to
// that replica's node (local); the new nexus refuses a child of another
// identity than the recorded one, so the move must leave it out (and add
// it for a full rebuild), or it fails at every pass and the volume stays
// unpublished.
func TestMoveLeavesOutAReplicaCreatedAgain(t *testing.T) {
	for _, local := range []bool{false, true} {
		t.Run(map[bool]string{false: "remote", true: "local"}[local], func(t *testing.T) {
			w := newScenario(t)
			v := w.setup(t, 3, 2)
			from, again, third := w.nodeOf(v.ReplicaSet[0].Node), v.ReplicaSet[1], w.nodeOf(v.ReplicaSet[2].Node)
			n := w.nodeOf(again.Node)
			w.crashNode(t, n)
			w.reviveNode(t, n, func(n *rsNode) { w.recreate(n, again.UUID) })
			to, off := third, n
			if local {
				to, off = n, third
			}
			_, err := w.svc.cordonNode(context.Background(), off.name, true)
			w.mustOK(t, "cordon", err)
			w.crashNode(t, from)
			for i := 0; i < 3; i++ {
				w.pass(t)
			}
			got := w.vol(t, "v")
			if got.Op != nil || got.Target == nil || got.Target.Node != to.uuid {
				t.Fatalf("the nexus did not move to %s: target %+v, op %+v", to.name, got.Target, got.Op)
			}
			w.writeTo(t, "v", 2)
			w.reviveNode(t, from, nil)
			_, err = w.svc.cordonNode(context.Background(), off.name, false)
			w.mustOK(t, "uncordon", err)
			w.finish(t)
		})
	}
}

// TestMoveReplacesAFaultedInstance: a move's destination crashes after
// the nexus was created there, so the nexus goes elsewhere; the node
// returns and its engine restores that instance faulted (its record is
// refused). When the nexus later moves back to that node, the faulted
// instance must be destroyed and the nexus created again, not reused: it
// refuses the export at every pass.
func TestMoveReplacesAFaultedInstance(t *testing.T) {
	w := newScenario(t)
	ctx := context.Background()
	v := w.setup(t, 3, 2)
	from, off, to := w.nodeOf(v.ReplicaSet[0].Node), w.nodeOf(v.ReplicaSet[1].Node), w.nodeOf(v.ReplicaSet[2].Node)
	_, err := w.svc.cordonNode(ctx, off.name, true)
	w.mustOK(t, "cordon", err)
	w.mu.Lock()
	w.refuse = func(n *rsNode, what string) bool {
		if n == to && strings.HasPrefix(what, "publish nexus") {
			n.up = false // it crashes with the nexus created
			return true
		}
		return false
	}
	w.mu.Unlock()
	w.crashNode(t, from)
	w.pass(t)
	w.mu.Lock()
	w.refuse = nil
	w.mu.Unlock()
	w.syncMember(t, to, true)
	for i := 0; i < 2; i++ {
		w.pass(t)
	}
	got := w.vol(t, "v")
	if got.Target == nil || got.Target.Node == to.uuid {
		t.Fatalf("the nexus did not go elsewhere: target %+v, op %+v", got.Target, got.Op)
	}
	mid := w.nodeOf(got.Target.Node)
	w.reviveNode(t, to, nil)
	w.mu.Lock()
	faulted := to.nexuses["v"] != nil && to.nexuses["v"].faulted != ""
	w.mu.Unlock()
	if !faulted {
		t.Fatalf("%s did not restore its instance faulted", to.name)
	}
	w.writeTo(t, "v", 1)
	// Only that node can take the nexus now.
	for _, n := range w.nodes {
		if n != to && n != off {
			_, err = w.svc.cordonNode(ctx, n.name, true)
			w.mustOK(t, "cordon", err)
		}
	}
	w.crashNode(t, mid)
	for i := 0; i < 3; i++ {
		w.pass(t)
	}
	got = w.vol(t, "v")
	if got.Op != nil || got.Target == nil || got.Target.Node != to.uuid {
		t.Fatalf("the nexus did not move back to %s: target %+v, op %+v", to.name, got.Target, got.Op)
	}
	w.reviveNode(t, mid, nil)
	w.reviveNode(t, from, nil)
	for _, n := range w.nodes {
		_, err = w.svc.cordonNode(ctx, n.name, false)
		w.mustOK(t, "uncordon", err)
	}
	w.finish(t)
}
