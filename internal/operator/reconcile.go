// Package operator is Nexstor's Kubernetes operator: a controller-runtime
// manager whose DiskPool reconciler makes every DiskPool (api/k8s/v1alpha1)
// a pool on its node's engine, reports the pool's state and space in the
// DiskPool's status, and destroys the pool when the DiskPool is deleted,
// but only once no replica is left in it.
//
// The reconciler is level-triggered and idempotent: each pass reads the
// DiskPool, the system's members and the engine's pool, does at most the
// one step that is missing (import, create, destroy) and writes the status
// it observed; it runs again on every change of the DiskPool and every
// Resync, so it converges whatever it missed. It never formats a disk that
// holds a pool or anything the engine does not take for blank (no force),
// and never destroys a pool with replicas (the engine refuses that too).
package operator

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	v1alpha1 "github.com/nexstor/nexstor/api/k8s/v1alpha1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fault"
)

// DefaultResync is how often a DiskPool is looked at again when nothing
// about it changed: its pool's space and state are refreshed that often.
const DefaultResync = 30 * time.Second

// callTimeout bounds the calls of one reconcile pass to the system.
const callTimeout = 30 * time.Second

// Reconciler reconciles DiskPools. Client is the Kubernetes client, System
// the Nexstor system; Resync (DefaultResync when zero) is the period of the
// level-triggered pass; Log may be nil.
type Reconciler struct {
	Client client.Client
	System System
	Resync time.Duration
	Log    *slog.Logger
}

// SetupWithManager registers the reconciler for DiskPools with mgr.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).For(&v1alpha1.DiskPool{}).Named("diskpool").Complete(r)
}

func (r *Reconciler) resync() time.Duration {
	if r.Resync > 0 {
		return r.Resync
	}
	return DefaultResync
}

func (r *Reconciler) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.Default()
}

// Reconcile brings one DiskPool's pool and status in line with its spec
// (or, when it is being deleted, destroys its pool and then lets it go).
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var dp v1alpha1.DiskPool
	if err := r.Client.Get(ctx, req.NamespacedName, &dp); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !dp.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, &dp)
	}
	if !controllerutil.ContainsFinalizer(&dp, v1alpha1.Finalizer) {
		// The finalizer goes on before the pool exists, so that no pool is
		// ever made for a DiskPool that could vanish without destroying it.
		controllerutil.AddFinalizer(&dp, v1alpha1.Finalizer)
		if err := r.Client.Update(ctx, &dp); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding the finalizer to DiskPool %s: %w", dp.Name, err)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	st := r.ensure(cctx, &dp)
	cancel()
	if err := r.writeStatus(ctx, &dp, st); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: r.resync()}, nil
}

// ensure makes the DiskPool's pool exist and returns the status observed.
// Figures the engine did not give this time are kept as they were, with a
// state that says they may be stale.
func (r *Reconciler) ensure(ctx context.Context, dp *v1alpha1.DiskPool) v1alpha1.DiskPoolStatus {
	st := dp.Status
	st.BlockedBy = nil
	eng, why, state := r.engineOf(ctx, dp.Spec.Node)
	if eng == nil {
		st.State, st.Message = state, why
		return st
	}
	name := dp.Name
	p, err := eng.GetPool(ctx, &enginev1.GetPoolRequest{Name: name})
	if fault.KindOf(err) == fault.NotFound || isNotFound(err) {
		// Import first: a disk that already holds this pool (a reinstalled
		// node, a DiskPool made again) keeps its data. Only a disk the
		// engine takes for blank is formatted, and never with force.
		p, err = eng.ImportPool(ctx, &enginev1.ImportPoolRequest{Name: name, Disk: dp.Spec.Disk})
		if err != nil && blank(err) {
			r.log().Info("creating pool", "diskpool", name, "node", dp.Spec.Node, "disk", dp.Spec.Disk)
			p, err = eng.CreatePool(ctx, &enginev1.CreatePoolRequest{Name: name, Disk: dp.Spec.Disk})
		} else if err == nil {
			r.log().Info("imported pool", "diskpool", name, "node", dp.Spec.Node, "disk", dp.Spec.Disk)
		}
		if err != nil {
			st.State, st.Message = v1alpha1.StateError, explain(err)
			return st
		}
	} else if err != nil {
		st.State, st.Message = v1alpha1.StateUnknown, fmt.Sprintf("node %s did not answer: %s", dp.Spec.Node, explain(err))
		return st
	}
	// The engine records the disk with its engine (a bare path as
	// uring://...): compare the disks, not the strings.
	if !bdev.SameDisk(p.GetDisk(), dp.Spec.Disk) {
		st.State = v1alpha1.StateError
		st.Message = fmt.Sprintf("node %s already has a pool %q, on disk %s, not %s; it is left alone: name the DiskPool otherwise",
			dp.Spec.Node, name, p.GetDisk(), dp.Spec.Disk)
		return st
	}
	if !maps.Equal(p.GetLabels(), dp.Spec.Labels) {
		if p, err = eng.SetPoolLabels(ctx, &enginev1.SetPoolLabelsRequest{Name: name, Labels: dp.Spec.Labels}); err != nil {
			st.State, st.Message = v1alpha1.StateError, "setting the pool's labels: "+explain(err)
			return st
		}
	}
	fill(&st, p)
	return st
}

// blank reports whether an import failed because the disk holds no pool
// (and nothing else the engine recognises), or does not exist (a file://
// disk with ?size= that CreatePool makes), so that it may be formatted:
// nothing on it can be lost.
func blank(err error) bool {
	c := fault.CodeOf(err)
	return c == "pool.not_pool" || c == "bdev.not_found"
}

// fill copies the engine's view of p into st.
func fill(st *v1alpha1.DiskPoolStatus, p *enginev1.Pool) {
	st.UUID = p.GetUuid()
	st.Capacity = int64(p.GetCapacity())
	st.Used = int64(p.GetAllocated())
	st.Available = int64(p.GetFreeClusters() * p.GetClusterSize())
	st.Committed = int64(p.GetCommitted())
	st.Replicas = int32(p.GetReplicaCount())
	switch p.GetState() {
	case enginev1.PoolState_POOL_STATE_ONLINE:
		st.State, st.Message = v1alpha1.StateOnline, ""
	default:
		st.State, st.Message = v1alpha1.StateFaulted, p.GetReason()
		if st.Message == "" {
			st.Message = "the engine reports the pool as " + p.GetState().String()
		}
	}
}

// engineOf returns the pool calls of node's engine, or nil with why not
// and the state that says so.
func (r *Reconciler) engineOf(ctx context.Context, node string) (PoolEngine, string, string) {
	m, err := r.System.Member(ctx, node)
	if err != nil {
		return nil, "the management service did not answer: " + explain(err), v1alpha1.StateUnknown
	}
	if m == nil {
		return nil, fmt.Sprintf("node %s is not a member of the Nexstor system (nexctl node list shows the members)", node), v1alpha1.StatePending
	}
	if m.GetState() != "joined" {
		why := fmt.Sprintf("node %s is %s", node, m.GetState())
		if m.GetInfo() != "" {
			why += ": " + m.GetInfo()
		}
		return nil, why, v1alpha1.StateUnknown
	}
	eng, err := r.System.Pools(m.GetAddress())
	if err != nil {
		return nil, fmt.Sprintf("node %s at %s: %s", node, m.GetAddress(), explain(err)), v1alpha1.StateUnknown
	}
	return eng, "", ""
}

// finalize destroys the pool of a DiskPool being deleted and then removes
// the finalizer. A pool that holds replicas stays, and the status names the
// volumes they belong to; so does a pool whose node cannot be asked.
func (r *Reconciler) finalize(ctx context.Context, dp *v1alpha1.DiskPool) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(dp, v1alpha1.Finalizer) {
		return ctrl.Result{}, nil
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	st, done := r.destroy(cctx, dp)
	cancel()
	if done {
		controllerutil.RemoveFinalizer(dp, v1alpha1.Finalizer)
		if err := r.Client.Update(ctx, dp); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		return ctrl.Result{}, nil
	}
	if err := r.writeStatus(ctx, dp, st); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: r.resync()}, nil
}

// destroy destroys dp's pool when nothing is left in it; done is true once
// the pool is gone (or never existed on a node the system still has).
func (r *Reconciler) destroy(ctx context.Context, dp *v1alpha1.DiskPool) (v1alpha1.DiskPoolStatus, bool) {
	st := dp.Status
	st.State = v1alpha1.StateDeleting
	m, err := r.System.Member(ctx, dp.Spec.Node)
	if err != nil {
		st.Message = "the management service did not answer: " + explain(err)
		return st, false
	}
	if m == nil {
		// A node that left the system takes its pools with it: there is
		// nothing this operator could destroy, and its disk is untouched.
		r.log().Info("node is not a member; letting the DiskPool go", "diskpool", dp.Name, "node", dp.Spec.Node)
		return st, true
	}
	eng, why, _ := r.engineOf(ctx, dp.Spec.Node)
	if eng == nil {
		st.Message = why + "; the pool is destroyed once it answers"
		return st, false
	}
	p, err := eng.GetPool(ctx, &enginev1.GetPoolRequest{Name: dp.Name})
	if fault.KindOf(err) == fault.NotFound || isNotFound(err) {
		return st, true
	}
	if err != nil {
		st.Message = fmt.Sprintf("node %s did not answer: %s", dp.Spec.Node, explain(err))
		return st, false
	}
	if !bdev.SameDisk(p.GetDisk(), dp.Spec.Disk) {
		// Another pool of that name, not this DiskPool's: never destroy it.
		return st, true
	}
	fill(&st, p)
	st.State = v1alpha1.StateDeleting
	vols, err := r.System.Volumes(ctx)
	if err != nil {
		st.Message = explain(err)
		return st, false
	}
	st.BlockedBy = blockers(vols, dp.Spec.Node, dp.Name, int(p.GetReplicaCount()))
	if len(st.BlockedBy) > 0 {
		st.Message = fmt.Sprintf("the pool holds replicas of %s; it is destroyed once they have moved (nexctl volume set-replicas, nexctl node drain) or the volumes are deleted",
			strings.Join(st.BlockedBy, ", "))
		return st, false
	}
	// Without force: should a replica have been placed since the volumes
	// were listed, the engine refuses, and the next pass names it.
	if _, err := eng.DestroyPool(ctx, &enginev1.DestroyPoolRequest{Name: dp.Name}); err != nil &&
		fault.KindOf(err) != fault.NotFound && !isNotFound(err) {
		st.Message = "destroying the pool: " + explain(err)
		return st, false
	}
	r.log().Info("destroyed pool", "diskpool", dp.Name, "node", dp.Spec.Node, "disk", dp.Spec.Disk)
	return st, true
}

// blockers names what keeps pool on node from being destroyed: the
// volumes with a replica in it ("volume v1"), and, when the engine counts
// more replicas than volumes account for, those ("2 replicas of no
// volume").
func blockers(vols []*mgmtv1.Volume, node, pool string, replicas int) []string {
	var out []string
	n := 0
	for _, v := range vols {
		for _, rep := range v.GetStatus().GetReplicas() {
			if rep.GetNode() == node && rep.GetPool() == pool {
				n++
				name := "volume " + v.GetSpec().GetName()
				if !slices.Contains(out, name) {
					out = append(out, name)
				}
			}
		}
	}
	slices.Sort(out)
	if extra := replicas - n; extra > 0 {
		out = append(out, fmt.Sprintf("%d replica(s) of no volume (nexctl replica list --node %s)", extra, node))
	}
	return out
}

// writeStatus writes st as dp's status when it differs from what is there.
func (r *Reconciler) writeStatus(ctx context.Context, dp *v1alpha1.DiskPool, st v1alpha1.DiskPoolStatus) error {
	st.ObservedGeneration = dp.Generation
	if statusEqual(dp.Status, st) {
		return nil
	}
	if st.State != dp.Status.State || st.Message != dp.Status.Message {
		r.log().Info("diskpool status", "diskpool", dp.Name, "state", st.State, "message", st.Message)
	}
	dp.Status = st
	if err := r.Client.Status().Update(ctx, dp); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			// A newer DiskPool (or none) is there: its own event runs the
			// reconciler again.
			return nil
		}
		return fmt.Errorf("writing the status of DiskPool %s: %w", dp.Name, err)
	}
	return nil
}

func statusEqual(a, b v1alpha1.DiskPoolStatus) bool {
	return slices.Equal(a.BlockedBy, b.BlockedBy) && a.State == b.State && a.Message == b.Message &&
		a.UUID == b.UUID && a.Capacity == b.Capacity && a.Used == b.Used && a.Available == b.Available &&
		a.Committed == b.Committed && a.Replicas == b.Replicas && a.ObservedGeneration == b.ObservedGeneration
}

// explain is err's message with its resolution, for a status.
func explain(err error) string {
	msg := fault.Message(err)
	if res := fault.ResolutionOf(err); res != "" && !strings.Contains(msg, res) {
		msg += " (" + res + ")"
	}
	return msg
}
