package mgmt

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/security"
)

// The reconciler simulation: the leader's reconcilers (VolumePass: heal,
// resume, garbage collection) and the volume operations run against a
// model of the nodes, their pools, replicas and nexuses, under random node
// crashes and returns, lost and failed engine calls, leader deaths, volume
// writes and rebuilds that progress and fail over the steps. After every
// step the model is checked:
//
//  1. No acknowledged write is lost: some replica of every volume holds
//     its latest acknowledged version, and the volume counts one of them.
//  2. A stale replica is never trusted: every online child of a serving
//     nexus holds the latest version, and no nexus is created or restored
//     trusting a replica that does not.
//  3. Nothing is destroyed with force or as another owner, and nothing a
//     live volume counts is destroyed (checked at each destroy).
//  4. Convergence: once the faults stop and every node is back, within a
//     bounded number of passes every volume has exactly its count of
//     online, up-to-date replicas, no repairs pending, nothing retired,
//     and no replica or nexus is left that no volume owns. Users publish
//     what is not published (an unpublished volume's stale replicas are
//     rebuilt only through a nexus), and a person republishes a volume
//     the reconcilers report blocked on its nexus (faulted: they do not
//     recreate a nexus).
//
// The environment (node crashes, replicas a returning node lost or has
// created again) never destroys the last copy of a volume's data itself,
// nor the last copy its health record calls online: invariant 1 is the
// reconcilers' to keep, not the hardware's.
//
// The model of the data: every acknowledged write bumps the volume's
// version; a replica holds every write up to its ver. The model of the
// nexus follows internal/nexus and the engine's restore:
//   - a write reaches the online and rebuilding children; an online child
//     that fails it goes offline (its bitmap is the version it last had:
//     since); a rebuilding child that fails it is faulted; the write is
//     acknowledged only if an online child took it and the new health set
//     was saved;
//   - a child's I/O fails while its node is down, while its replica is
//     gone or another one (identity), or while its share does not admit
//     the nexus's node; an online child keeps its state until an I/O
//     fails on it (a write, or a keep-alive). When the node is back, the
//     connection is restored (the initiator reconnects; the model assumes
//     it does so within its reconnect budget);
//   - OnlineChild of an offline child starts a partial rebuild; a replica
//     of another identity faults the child (identity-changed); AddChild
//     starts a full rebuild; RemoveChild refuses the last online child;
//   - a rebuild completes after some steps from an online child, or fails
//     (the child is faulted);
//   - the health record is saved to the management service
//     (saveHealth, with its generation fencing) on every change of the
//     health set; a nexus whose save is refused stops serving;
//   - CreateNexus trusts only the children its record calls online (and
//     takes offline ones with their bitmaps), refuses stale or replaced
//     ones, and without a record takes the replica with the most data as
//     the source of the others (the real nexus compares claim epochs);
//   - a node that crashes loses its nexuses; when it returns, its engine
//     restores each from the record: children recorded neither online nor
//     offline, and replaced ones, are left out; an online one that cannot
//     be opened is faulted (the record is never clean after a crash); a
//     nexus with no child left, or no record, is faulted;
//   - a nexus created or restored for a volume fences every other live
//     instance of it (the newer claim epoch): they stop serving.
//
// Simplifications: a write is atomic (no unacknowledged write lands on
// some replicas only, so an unclean stop needs no resync of its own);
// replicas and volumes are never resized; the bitmap of an offline child
// is the version it last held, not a set of segments; every crash is a
// crash of the whole node (its engine restarts when it returns), and a
// partitioned engine that keeps running is not modelled.
//
// The seed fixes the sequence of events, operations and faults: a call's
// fault draws depend on the seed and on the call (node, method, object,
// how many times), and UUIDs come from the seed, so the leader's parallel
// calls interleaving differently changes nothing but the order of trace
// lines (the leader dies only at calls that change something, which it
// makes in a fixed order). TestReconcilerSimulation runs it:
// NEXSTOR_SIM_SEED reruns one seed, NEXSTOR_SIM_SEEDS=N runs N random
// seeds (make sim), NEXSTOR_SIM_STEPS sets the number of steps,
// NEXSTOR_SIM_TRACE=1 prints what happened when a seed fails (=all:
// always).

type rsWorld struct {
	mu           sync.Mutex
	svc          *testService
	cli          *clientv3.Client
	clock        *fakeClock
	seed         int64
	drawn        map[string]int // fault draws by call key, under mu
	failP, lostP float64
	deathP       float64 // the chance that the leader dies at a call
	// refuse, when set, makes the calls it names fail before acting, as
	// an unreachable engine's (scripted faults).
	refuse     func(n *rsNode, what string) bool
	died       bool
	calls      int
	crash      context.CancelFunc
	nodes      []*rsNode
	byAddr     map[string]*rsNode
	latest     map[string]int // acknowledged version by volume UUID
	idents     int
	step       int
	violations []string
	seen       map[string]bool // violations reported, without their step
	stats      map[string]int
	trace      []string // NEXSTOR_SIM_TRACE=1: what happened, shown on failure
	tracing    bool
}

type rsNode struct {
	name, uuid, addr, hostNQN string
	up                        bool
	replicas                  map[string]*rsReplica
	// nexuses are live while the node is up; while it is down they are
	// what its engine remembers and restores when it starts again.
	nexuses map[string]*rsNexus
	// member is what the membership says (joined or not), and memberIn
	// is in how many steps it catches up with up (0: it has).
	memberUp bool
	memberIn int
	downAt   time.Time
}

type rsReplica struct {
	uuid, pool, owner string
	size              uint64
	ident             int // a new one whenever the replica is created again
	ver               int // it holds every write up to this version
	shared            bool
	hosts             []string
}

type rsNexus struct {
	name, uuid string
	size       uint64
	node       *rsNode
	children   []*rsChild
	published  bool
	protocol   string
	// inaccessible: its publication's ANA state refuses I/O (a move's
	// retired nexus).
	inaccessible bool
	gen          uint64
	faulted      string // why it does not serve; "" while it serves
}

type rsChild struct {
	uri      string
	state    enginev1.ChildState
	reason   string
	ident    int // the replica identity the nexus admitted
	since    int // offline: the version the replica held when it left
	partial  bool
	progress float64
}

// rsRecord is the model nexus's health record as stored by the
// management service: uri and state are what the leader reads
// (recordedChildren); since is the model's bitmap.
type rsRecord struct {
	NexusUUID  string       `json:"nexus_uuid"`
	Generation uint64       `json:"generation"`
	Clean      bool         `json:"clean"`
	Children   []rsRecChild `json:"children"`
}

type rsRecChild struct {
	URI      string `json:"uri"`
	State    string `json:"state"`
	Reason   string `json:"reason,omitempty"`
	Identity string `json:"identity,omitempty"` // <uuid>/<nguid>, as bdev.Identity
	Since    int    `json:"sim_since,omitempty"`
}

var rsStateNames = map[enginev1.ChildState]string{
	enginev1.ChildState_CHILD_STATE_ONLINE:     "online",
	enginev1.ChildState_CHILD_STATE_REBUILDING: "rebuilding",
	enginev1.ChildState_CHILD_STATE_FAULTED:    "faulted",
	enginev1.ChildState_CHILD_STATE_OFFLINE:    "offline",
}

const (
	rsOnline     = enginev1.ChildState_CHILD_STATE_ONLINE
	rsRebuilding = enginev1.ChildState_CHILD_STATE_REBUILDING
	rsFaulted    = enginev1.ChildState_CHILD_STATE_FAULTED
	rsOffline    = enginev1.ChildState_CHILD_STATE_OFFLINE
)

// violate records a violation once (a state that stays wrong is reported
// at the step it first appeared).
func (w *rsWorld) violate(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	w.tracef("VIOLATION %s", msg)
	if w.seen[msg] {
		return
	}
	w.seen[msg] = true
	w.violations = append(w.violations, fmt.Sprintf("step %d: %s", w.step, msg))
}

func (w *rsWorld) tracef(format string, a ...any) {
	if w.tracing {
		w.trace = append(w.trace, fmt.Sprintf("%4d ", w.step)+fmt.Sprintf(format, a...))
	}
}

func (w *rsWorld) count(what string) { w.stats[what]++ }

// ---- the engines ----

type rsClient struct {
	w *rsWorld
	n *rsNode
}

func rsUnreachable(what string) error {
	return fault.New(fault.Unavailable, "engine.unreachable", what+": simulated unreachable engine", "")
}

// draw returns the two fault draws of a call: they depend on the seed,
// the call (node, method, object) and how many times it was made, not on
// how the calls the leader makes in parallel interleave.
func (w *rsWorld) draw(key string) (fail, lost, death float64) {
	w.drawn[key]++
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%s/%d", w.seed, key, w.drawn[key])
	x := h.Sum64()
	// splitmix64's finalizer spreads FNV's bits.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>43) / (1 << 21), float64(x>>22&(1<<21-1)) / (1 << 21), float64(x&(1<<21-1)) / (1 << 21)
}

// do runs one engine call under w.mu: a dead leader's calls fail, the
// crash point kills the leader, a node that is down answers nothing, some
// calls fail before acting and some lose their answer after.
func (c rsClient) do(ctx context.Context, what string, f func() error) error {
	w := c.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	w.calls++
	failDraw, lostDraw, deathDraw := w.draw(c.n.name + " " + what)
	// The leader dies at a call that changes something: the reads it
	// makes in parallel would make the point of death depend on their
	// interleaving.
	quiet := strings.HasPrefix(what, "list") || strings.HasPrefix(what, "get")
	if !quiet && deathDraw < w.deathP && w.crash != nil {
		w.crash()
		w.died = true
		w.tracef("the leader dies at %s: %s", c.n.name, what)
		return context.Canceled
	}
	if !c.n.up || failDraw < w.failP || (w.refuse != nil && w.refuse(c.n, what)) {
		if !quiet {
			w.tracef("%s: %s: unreachable", c.n.name, what)
		}
		return rsUnreachable(what)
	}
	if err := f(); err != nil {
		if !quiet {
			w.tracef("%s: %s: %v", c.n.name, what, err)
		}
		return err
	}
	if lostDraw < w.lostP {
		if !quiet {
			w.tracef("%s: %s: done, answer lost", c.n.name, what)
		}
		return fault.New(fault.Unavailable, "rpc.deadline_exceeded", what+": simulated lost answer", "")
	}
	if !quiet {
		w.tracef("%s: %s: done", c.n.name, what)
	}
	return nil
}

func (c rsClient) replicaProto(r *rsReplica) *enginev1.Replica {
	out := &enginev1.Replica{Name: r.uuid, Uuid: r.uuid, Pool: r.pool, Size: r.size, Owner: r.owner,
		State: enginev1.ReplicaState_REPLICA_STATE_ONLINE, Nguid: rsNGUID(r.ident)}
	if r.shared {
		sh := &enginev1.Share{Protocol: "nvmf", Uri: "nvmf://" + c.n.addr + "/nqn.2024-11.io.nexstor:replica:" + r.uuid, AllowedHosts: r.hosts}
		out.Share, out.Shares = sh, []*enginev1.Share{sh}
	}
	return out
}

func (c rsClient) nexusProto(nx *rsNexus) *enginev1.Nexus {
	out := &enginev1.Nexus{Name: nx.name, Uuid: nx.uuid, Size: nx.size, State: enginev1.NexusState_NEXUS_STATE_ONLINE}
	for _, ch := range nx.children {
		pc := &enginev1.Child{Uri: ch.uri, State: ch.state, Reason: ch.reason}
		if ch.state == rsRebuilding {
			pc.Rebuild = &enginev1.Rebuild{Child: ch.uri, State: "running", Partial: ch.partial, Percent: ch.progress}
		}
		if ch.state != rsOnline {
			out.State = enginev1.NexusState_NEXUS_STATE_DEGRADED
		}
		out.Children = append(out.Children, pc)
	}
	if nx.faulted != "" {
		out.State, out.Reason = enginev1.NexusState_NEXUS_STATE_FAULTED, nx.faulted
	}
	if nx.published {
		out.Share = &enginev1.Share{Protocol: nx.protocol, Uri: nx.protocol + "://" + c.n.addr + "/nqn.2024-11.io.nexstor:nexus:" + nx.uuid}
	}
	return out
}

// rsNGUID is the NGUID of a replica identity of the model, and rsIdent
// the identity of a recorded "<uuid>/<nguid>".
func rsNGUID(ident int) string { return fmt.Sprintf("%032x", ident) }

func rsIdent(identity string) int {
	n, _ := strconv.ParseInt(identity[strings.LastIndex(identity, "/")+1:], 16, 64)
	return int(n)
}

func rsNotFound(what string) error {
	return fault.New(fault.NotFound, "sim.not_found", what+" not found", "")
}

func rsRefused(format string, a ...any) error {
	return fault.New(fault.FailedPrecondition, "sim.refused", fmt.Sprintf(format, a...), "")
}

func (c rsClient) ListPools(ctx context.Context, _ *enginev1.ListPoolsRequest) (*enginev1.ListPoolsResponse, error) {
	var out *enginev1.ListPoolsResponse
	err := c.do(ctx, "list pools", func() error {
		var committed uint64
		for _, r := range c.n.replicas {
			committed += r.size
		}
		out = &enginev1.ListPoolsResponse{Pools: []*enginev1.Pool{{Name: "p0", Uuid: "p0-" + c.n.addr, State: enginev1.PoolState_POOL_STATE_ONLINE,
			Capacity: 4 << 30, ClusterSize: 1 << 20, FreeClusters: (4<<30 - committed) >> 20, Committed: committed,
			ReplicaCount: uint32(len(c.n.replicas)), OvercommitPercent: 250}}}
		return nil
	})
	return out, err
}

func (c rsClient) GetPool(ctx context.Context, _ *enginev1.GetPoolRequest) (*enginev1.Pool, error) {
	r, err := c.ListPools(ctx, nil)
	if err != nil {
		return nil, err
	}
	return r.Pools[0], nil
}

func (c rsClient) CreateReplica(ctx context.Context, req *enginev1.CreateReplicaRequest) (*enginev1.Replica, error) {
	var out *enginev1.Replica
	err := c.do(ctx, "create replica "+req.Uuid, func() error {
		if r, ok := c.n.replicas[req.Uuid]; ok {
			if r.owner != req.Owner {
				return fault.New(fault.AlreadyExists, "replica.exists", "replica "+req.Uuid+" exists with another owner", "")
			}
			out = c.replicaProto(r)
			return nil
		}
		c.w.idents++
		r := &rsReplica{uuid: req.Uuid, pool: req.Pool, owner: req.Owner, size: req.Size, ident: c.w.idents}
		c.n.replicas[r.uuid] = r
		out = c.replicaProto(r)
		return nil
	})
	return out, err
}

func (c rsClient) GetReplica(ctx context.Context, req *enginev1.GetReplicaRequest) (*enginev1.Replica, error) {
	var out *enginev1.Replica
	err := c.do(ctx, "get replica "+req.Name, func() error {
		r, ok := c.n.replicas[req.Name]
		if !ok {
			return rsNotFound("replica " + req.Name)
		}
		out = c.replicaProto(r)
		return nil
	})
	return out, err
}

func (c rsClient) ListReplicas(ctx context.Context, _ *enginev1.ListReplicasRequest) (*enginev1.ListReplicasResponse, error) {
	out := &enginev1.ListReplicasResponse{}
	err := c.do(ctx, "list replicas", func() error {
		for _, r := range c.n.replicas {
			out.Replicas = append(out.Replicas, c.replicaProto(r))
		}
		return nil
	})
	return out, err
}

func (c rsClient) DestroyReplica(ctx context.Context, req *enginev1.DestroyReplicaRequest) (*enginev1.DestroyReplicaResponse, error) {
	err := c.do(ctx, "destroy replica "+req.Name, func() error {
		r, ok := c.n.replicas[req.Name]
		if !ok {
			return rsNotFound("replica " + req.Name)
		}
		if req.Force {
			c.w.violate("replica %s on %s destroyed with force", req.Name, c.n.name)
		}
		if r.owner != "" && r.owner != req.Owner {
			c.w.violate("replica %s of %s on %s destroyed as %q", req.Name, r.owner, c.n.name, req.Owner)
			return fault.New(fault.FailedPrecondition, "replica.owned", "owned by "+r.owner, "")
		}
		c.w.checkDestroyReplica(c.n, r)
		delete(c.n.replicas, req.Name)
		c.w.count("replicas destroyed")
		return nil
	})
	return &enginev1.DestroyReplicaResponse{}, err
}

func (c rsClient) ResizeReplica(ctx context.Context, req *enginev1.ResizeReplicaRequest) (*enginev1.Replica, error) {
	var out *enginev1.Replica
	err := c.do(ctx, "resize replica "+req.Name, func() error {
		r, ok := c.n.replicas[req.Name]
		if !ok {
			return rsNotFound("replica " + req.Name)
		}
		if r.owner != req.Owner {
			c.w.violate("replica %s of %s resized as %q", req.Name, r.owner, req.Owner)
		}
		r.size = max(r.size, req.Size)
		out = c.replicaProto(r)
		return nil
	})
	return out, err
}

func (c rsClient) ShareReplica(ctx context.Context, req *enginev1.ShareReplicaRequest) (*enginev1.Replica, error) {
	var out *enginev1.Replica
	err := c.do(ctx, "share replica "+req.Name, func() error {
		r, ok := c.n.replicas[req.Name]
		if !ok {
			return rsNotFound("replica " + req.Name)
		}
		if r.shared && !slices.Equal(r.hosts, req.AllowedHosts) {
			return fault.New(fault.FailedPrecondition, "replica.shared", "shared with other hosts", "")
		}
		r.shared, r.hosts = true, slices.Clone(req.AllowedHosts)
		out = c.replicaProto(r)
		return nil
	})
	return out, err
}

func (c rsClient) UnshareReplica(ctx context.Context, req *enginev1.UnshareReplicaRequest) (*enginev1.Replica, error) {
	var out *enginev1.Replica
	err := c.do(ctx, "unshare replica "+req.Name, func() error {
		r, ok := c.n.replicas[req.Name]
		if !ok {
			return rsNotFound("replica " + req.Name)
		}
		r.shared, r.hosts = false, nil
		out = c.replicaProto(r)
		return nil
	})
	return out, err
}

func (c rsClient) GetNexus(ctx context.Context, req *enginev1.GetNexusRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "get nexus "+req.Name, func() error {
		nx, ok := c.n.nexuses[req.Name]
		if !ok {
			return rsNotFound("nexus " + req.Name)
		}
		out = c.nexusProto(nx)
		return nil
	})
	return out, err
}

func (c rsClient) ListNexuses(ctx context.Context, _ *enginev1.ListNexusesRequest) (*enginev1.ListNexusesResponse, error) {
	out := &enginev1.ListNexusesResponse{}
	err := c.do(ctx, "list nexuses", func() error {
		for _, nx := range c.n.nexuses {
			out.Nexuses = append(out.Nexuses, c.nexusProto(nx))
		}
		return nil
	})
	return out, err
}

func (c rsClient) CreateNexus(ctx context.Context, req *enginev1.CreateNexusRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "create nexus "+req.Name, func() error {
		nx, err := c.w.createNexus(c.n, req)
		if err != nil {
			return err
		}
		out = c.nexusProto(nx)
		return nil
	})
	return out, err
}

func (c rsClient) DestroyNexus(ctx context.Context, req *enginev1.DestroyNexusRequest) (*enginev1.DestroyNexusResponse, error) {
	err := c.do(ctx, "destroy nexus "+req.Name, func() error {
		nx, ok := c.n.nexuses[req.Name]
		if !ok {
			return rsNotFound("nexus " + req.Name)
		}
		c.w.checkDestroyNexus(c.n, nx)
		delete(c.n.nexuses, req.Name)
		c.w.count("nexuses destroyed")
		if nx.faulted == "" {
			// The engine deletes the record; the management service keeps
			// the record of a volume that exists.
			if err := c.w.svc.deleteHealth(context.Background(), nx.uuid); err != nil {
				c.w.violate("nexus %s on %s: deleting its health record: %v", nx.name, c.n.name, err)
			}
		}
		return nil
	})
	return &enginev1.DestroyNexusResponse{}, err
}

func (c rsClient) PublishNexus(ctx context.Context, req *enginev1.PublishNexusRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "publish nexus "+req.Name, func() error {
		nx, ok := c.n.nexuses[req.Name]
		if !ok {
			return rsNotFound("nexus " + req.Name)
		}
		if nx.faulted != "" {
			return rsRefused("nexus %s is faulted: %s", nx.name, nx.faulted)
		}
		nx.published, nx.protocol = true, req.Protocol
		if req.AnaState != enginev1.AnaState_ANA_STATE_UNSPECIFIED {
			nx.inaccessible = req.AnaState != enginev1.AnaState_ANA_STATE_OPTIMIZED
		}
		out = c.nexusProto(nx)
		return nil
	})
	return out, err
}

func (c rsClient) SetNexusAnaState(ctx context.Context, req *enginev1.SetNexusAnaStateRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "set the ANA state of nexus "+req.Name, func() error {
		nx, ok := c.n.nexuses[req.Name]
		if !ok {
			return rsNotFound("nexus " + req.Name)
		}
		if !nx.published || nx.protocol == "nbd" {
			return rsRefused("nexus %s is not published over nvmf", nx.name)
		}
		nx.inaccessible = req.AnaState != enginev1.AnaState_ANA_STATE_OPTIMIZED
		out = c.nexusProto(nx)
		return nil
	})
	return out, err
}

func (c rsClient) ResizeNexus(ctx context.Context, req *enginev1.ResizeNexusRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "resize nexus "+req.Name, func() error {
		nx, ok := c.n.nexuses[req.Name]
		if !ok {
			return rsNotFound("nexus " + req.Name)
		}
		nx.size = max(nx.size, req.Size)
		out = c.nexusProto(nx)
		return nil
	})
	return out, err
}

func (c rsClient) AddChild(ctx context.Context, req *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return c.childOp(ctx, "add child", req, c.w.addChild)
}

func (c rsClient) RemoveChild(ctx context.Context, req *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return c.childOp(ctx, "remove child", req, c.w.removeChild)
}

func (c rsClient) OnlineChild(ctx context.Context, req *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	return c.childOp(ctx, "online child", req, c.w.onlineChild)
}

func (c rsClient) childOp(ctx context.Context, what string, req *enginev1.ChildRequest, f func(*rsNexus, string) error) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, what+" "+req.Nexus+" "+req.Child, func() error {
		nx, ok := c.n.nexuses[req.Nexus]
		if !ok {
			return rsNotFound("nexus " + req.Nexus)
		}
		if nx.faulted != "" {
			return rsRefused("nexus %s is faulted: %s", nx.name, nx.faulted)
		}
		if err := f(nx, req.Child); err != nil {
			return err
		}
		c.w.tracef("%s: nexus %s: %s %s: %s", c.n.name, nx.name, what, req.Child[max(0, len(req.Child)-8):], c.w.children(nx))
		out = c.nexusProto(nx)
		return nil
	})
	return out, err
}

func (c rsClient) Verify(ctx context.Context, req *enginev1.VerifyRequest) (*enginev1.VerifyResponse, error) {
	return &enginev1.VerifyResponse{}, c.do(ctx, "verify", func() error { return nil })
}

// ---- the nexus model (under w.mu) ----

// resolve names the node and replica UUID behind a child URI of nx.
func (w *rsWorld) resolve(nx *rsNexus, uri string) (*rsNode, string) {
	switch {
	case strings.HasPrefix(uri, "bdev:///"):
		return nx.node, strings.TrimPrefix(uri, "bdev:///")
	case strings.HasPrefix(uri, "nvmf://"):
		rest := strings.TrimPrefix(uri, "nvmf://")
		if i := strings.Index(rest, "/"); i > 0 {
			return w.byAddr[rest[:i]], replicaOfURI(uri)
		}
	}
	return nil, ""
}

// open returns the replica behind a child URI if nx can open it now: its
// node is up, it exists, and a remote one is shared to nx's node.
func (w *rsWorld) open(nx *rsNexus, uri string) (*rsReplica, error) {
	n, id := w.resolve(nx, uri)
	switch {
	case n == nil:
		return nil, rsRefused("child %s: no such node", uri)
	case !n.up:
		return nil, rsUnreachable("child " + uri)
	}
	r := n.replicas[id]
	switch {
	case r == nil:
		return nil, rsNotFound("child " + uri)
	case n != nx.node && (!r.shared || (len(r.hosts) > 0 && !slices.Contains(r.hosts, nx.node.hostNQN))):
		return nil, rsRefused("child %s is not shared to %s", uri, nx.node.name)
	}
	return r, nil
}

// usable returns the replica a child's I/O reaches, nil when it fails.
func (w *rsWorld) usable(nx *rsNexus, c *rsChild) *rsReplica {
	r, err := w.open(nx, c.uri)
	if err != nil || r.ident != c.ident {
		return nil
	}
	return r
}

func (w *rsWorld) findChild(nx *rsNexus, uri string) (int, *rsChild) {
	_, id := w.resolve(nx, uri)
	for i, c := range nx.children {
		if c.uri == uri || replicaOfURI(c.uri) == id {
			return i, c
		}
	}
	return -1, nil
}

func onlineCount(nx *rsNexus) int {
	n := 0
	for _, c := range nx.children {
		if c.state == rsOnline {
			n++
		}
	}
	return n
}

func (w *rsWorld) loadRecord(id string) (*rsRecord, error) {
	resp, err := w.cli.Get(context.Background(), w.svc.k.health(id))
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var rec rsRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

// save persists nx's health set; a refused save stops the nexus, as the
// real one stops when memory and store no longer agree.
func (w *rsWorld) save(nx *rsNexus) error {
	rec := rsRecord{NexusUUID: nx.uuid, Generation: nx.gen + 1}
	for _, c := range nx.children {
		rc := rsRecChild{URI: c.uri, State: rsStateNames[c.state], Reason: c.reason}
		if c.ident != 0 {
			rc.Identity = replicaOfURI(c.uri) + "/" + rsNGUID(c.ident)
		}
		if c.state == rsOffline {
			rc.Since = c.since
		}
		rec.Children = append(rec.Children, rc)
	}
	b, _ := json.Marshal(rec)
	if err := w.svc.saveHealth(context.Background(), nx.uuid, rec.Generation, b, nx.node.uuid); err != nil {
		nx.faulted = "health store: " + err.Error()
		w.count("nexus saves refused")
		return fault.New(fault.FailedPrecondition, "nexus.failed", nx.faulted, "")
	}
	nx.gen = rec.Generation
	return nil
}

// fence stops every other live instance of nx's volume: nx claimed the
// children at a newer epoch.
func (w *rsWorld) fence(nx *rsNexus) {
	for _, n := range w.nodes {
		if !n.up {
			continue
		}
		for _, o := range n.nexuses {
			if o != nx && o.uuid == nx.uuid && o.faulted == "" {
				o.faulted = "fenced: a newer instance of the nexus on " + nx.node.name + " holds its children"
				w.count("nexuses fenced")
			}
		}
	}
}

// admit builds the children of a nexus being created (restore: at its
// engine's start) from its health record, or reports why it cannot.
func (w *rsWorld) admit(nx *rsNexus, uris []string, rec *rsRecord, restore bool) ([]*rsChild, []string, error) {
	recorded := map[string]rsRecChild{}
	if rec != nil {
		for _, h := range rec.Children {
			recorded[replicaOfURI(h.URI)] = h
		}
	}
	var out []*rsChild
	var failed []string
	opened := 0
	for _, u := range uris {
		h, ok := recorded[replicaOfURI(u)]
		c := &rsChild{uri: u, ident: rsIdent(h.Identity)}
		switch {
		case rec == nil || (ok && h.State == "online"):
			r, err := w.open(nx, u)
			switch {
			case err != nil:
				failed = append(failed, u)
				c.state, c.reason = rsFaulted, "open-failed"
				if rec != nil && rec.Clean {
					c.state, c.since = rsOffline, w.latest[nx.uuid]
				}
			case c.ident != 0 && r.ident != c.ident:
				if restore {
					continue // left out: another replica behind the URI now
				}
				return nil, nil, rsRefused("nexus %s: child %s is another replica than the one recorded (identity-changed)", nx.name, u)
			default:
				c.state, c.ident = rsOnline, r.ident
				opened++
			}
		case ok && h.State == "offline":
			c.state, c.reason, c.since = rsOffline, h.Reason, h.Since
		case restore:
			continue // left out: may be stale
		case ok:
			return nil, nil, rsRefused("nexus %s: child %s is %s in the health store", nx.name, u, h.State)
		default:
			return nil, nil, rsRefused("nexus %s: child %s is unknown to the health store", nx.name, u)
		}
		out = append(out, c)
	}
	if opened == 0 {
		return nil, nil, rsRefused("nexus %s: no child could be opened", nx.name)
	}
	if rec == nil {
		// No record: the child with the most data is the source, and the
		// others are rebuilt from it unless they hold the same.
		best := -1
		for _, c := range out {
			if c.state == rsOnline {
				best = max(best, w.replicaOf(nx, c).ver)
			}
		}
		for _, c := range out {
			if c.state == rsOnline && w.replicaOf(nx, c).ver != best {
				c.state = rsRebuilding
			}
		}
	}
	return out, failed, nil
}

func (w *rsWorld) replicaOf(nx *rsNexus, c *rsChild) *rsReplica {
	n, id := w.resolve(nx, c.uri)
	if n == nil || !n.up {
		return nil
	}
	return n.replicas[id]
}

// trusted checks invariant 2 for a nexus just made: every online child
// holds the volume's latest version.
func (w *rsWorld) trusted(nx *rsNexus, how string) {
	for _, c := range nx.children {
		if c.state != rsOnline {
			continue
		}
		if r := w.replicaOf(nx, c); r != nil && r.ident == c.ident && r.ver != w.latest[nx.uuid] {
			w.violate("nexus %s on %s %s trusting child %s at version %d; the volume's latest is %d",
				nx.name, nx.node.name, how, c.uri, r.ver, w.latest[nx.uuid])
		}
	}
}

func (w *rsWorld) createNexus(n *rsNode, req *enginev1.CreateNexusRequest) (*rsNexus, error) {
	if req.Force {
		w.violate("nexus %s on %s created with force", req.Name, n.name)
	}
	if old, ok := n.nexuses[req.Name]; ok {
		var have []string
		for _, c := range old.children {
			have = append(have, c.uri)
		}
		if old.uuid == req.Uuid && sameStrings(have, req.Children) {
			return old, nil
		}
		return nil, fault.New(fault.AlreadyExists, "nexus.exists", "nexus "+req.Name+" exists with another spec", "")
	}
	for _, o := range n.nexuses {
		if o.uuid == req.Uuid {
			return nil, fault.New(fault.AlreadyExists, "nexus.uuid_exists", "nexus "+o.name+" has that uuid", "")
		}
	}
	rec, err := w.loadRecord(req.Uuid)
	if err != nil {
		return nil, err
	}
	nx := &rsNexus{name: req.Name, uuid: req.Uuid, size: req.Size, node: n}
	children, failed, err := w.admit(nx, req.Children, rec, false)
	if err != nil {
		return nil, err
	}
	nx.children = children
	if rec != nil {
		nx.gen = rec.Generation
	}
	if err := w.save(nx); err != nil {
		return nil, err
	}
	if len(failed) > 0 && !req.AllowDegraded {
		// Withdrawn; a record this call made stays while the volume
		// exists (the service keeps it).
		_ = w.svc.deleteHealth(context.Background(), nx.uuid)
		return nil, rsRefused("nexus %s would start degraded: %v", nx.name, failed)
	}
	w.fence(nx)
	n.nexuses[nx.name] = nx
	w.tracef("%s: nexus %s created: %s", n.name, nx.name, w.children(nx))
	w.trusted(nx, "created")
	w.count("nexuses created")
	return nx, nil
}

// restore recreates a remembered nexus at its engine's start.
func (w *rsWorld) restore(nx *rsNexus) {
	rec, err := w.loadRecord(nx.uuid)
	switch {
	case err != nil:
		nx.faulted = "health record unreadable: " + err.Error()
		return
	case rec == nil:
		nx.faulted = "its health record is not in the system health store"
		return
	}
	var uris []string
	for _, c := range nx.children {
		uris = append(uris, c.uri)
	}
	children, _, err := w.admit(nx, uris, rec, true)
	if err != nil {
		nx.faulted, nx.children = "not restored: "+err.Error(), nil
		return
	}
	nx.children, nx.gen, nx.faulted = children, rec.Generation, ""
	if w.save(nx) != nil {
		return
	}
	w.tracef("%s: nexus %s restored: %s", nx.node.name, nx.name, w.children(nx))
	w.fence(nx)
	w.trusted(nx, "restored")
	w.count("nexuses restored")
}

func (w *rsWorld) addChild(nx *rsNexus, uri string) error {
	i, old := w.findChild(nx, uri)
	if old != nil && (old.state == rsOnline || old.state == rsRebuilding) {
		return rsRefused("add child %s: the child is already %s", uri, rsStateNames[old.state])
	}
	r, err := w.open(nx, uri)
	if err != nil {
		return err
	}
	c := &rsChild{uri: uri, state: rsRebuilding, ident: r.ident}
	if i >= 0 {
		nx.children[i] = c
	} else {
		nx.children = append(nx.children, c)
	}
	w.count("full rebuilds started")
	return w.save(nx)
}

func (w *rsWorld) onlineChild(nx *rsNexus, uri string) error {
	_, old := w.findChild(nx, uri)
	switch {
	case old == nil:
		return rsNotFound("child " + uri)
	case old.state != rsOffline:
		return rsRefused("online child %s: the child is %s, not offline", uri, rsStateNames[old.state])
	}
	r, err := w.open(nx, uri)
	if err != nil {
		return err
	}
	if old.ident != 0 && r.ident != old.ident {
		old.state, old.reason = rsFaulted, "identity-changed"
		if err := w.save(nx); err != nil {
			return err
		}
		w.count("identity changes refused")
		return rsRefused("online child %s: the replica is another one than recorded", uri)
	}
	old.ident, old.state, old.partial, old.progress = r.ident, rsRebuilding, true, 0
	w.count("partial rebuilds started")
	return w.save(nx)
}

func (w *rsWorld) removeChild(nx *rsNexus, uri string) error {
	i, c := w.findChild(nx, uri)
	if c == nil {
		return rsNotFound("child " + uri)
	}
	if c.state == rsOnline && onlineCount(nx) <= 1 {
		return rsRefused("remove child %s: the last healthy child", uri)
	}
	nx.children = slices.Delete(nx.children, i, i+1)
	return w.save(nx)
}

// serving returns the nexus of a volume on its target node when it
// serves I/O.
func (w *rsWorld) serving(v *volumeRecord) *rsNexus {
	if v.Target == nil {
		return nil
	}
	for _, n := range w.nodes {
		if n.uuid == v.Target.Node && n.up {
			if nx := n.nexuses[v.Name]; nx != nil && nx.uuid == v.UUID && nx.faulted == "" && nx.published && !nx.inaccessible {
				return nx
			}
		}
	}
	return nil
}

// write is one write to nx: it is acknowledged only if an online child
// took it and the health set it changed was saved.
func (w *rsWorld) write(nx *rsNexus) bool {
	l := w.latest[nx.uuid]
	took := map[*rsChild]*rsReplica{}
	okOnline := 0
	for _, c := range nx.children {
		if c.state != rsOnline && c.state != rsRebuilding {
			continue
		}
		if r := w.usable(nx, c); r != nil {
			took[c] = r
			if c.state == rsOnline {
				okOnline++
			}
		}
	}
	changed := false
	for _, c := range nx.children {
		if (c.state != rsOnline && c.state != rsRebuilding) || took[c] != nil {
			continue
		}
		switch {
		case c.state == rsRebuilding:
			c.state, c.reason = rsFaulted, "io-error"
			changed = true
		case okOnline > 0:
			c.state, c.reason, c.since = rsOffline, "io-error", l
			changed = true
		}
	}
	if changed && w.save(nx) != nil {
		w.count("writes failed")
		w.tracef("nexus %s: write %d failed: %s", nx.name, l+1, nx.faulted)
		return false
	}
	if okOnline == 0 {
		w.count("writes failed")
		w.tracef("nexus %s: write %d failed: no online child took it: %s", nx.name, l+1, w.children(nx))
		return false
	}
	if changed {
		w.tracef("nexus %s: write %d: %s", nx.name, l+1, w.children(nx))
	}
	for c, r := range took {
		if c.state == rsOnline {
			if r.ver != l {
				w.violate("volume %s: online child %s took write %d at version %d", nx.name, c.uri, l+1, r.ver)
			}
			r.ver = l + 1
		}
	}
	w.latest[nx.uuid] = l + 1
	w.count("writes acknowledged")
	return true
}

// keepAlive is an I/O without data: online children it fails on go offline
// (never the last one).
func (w *rsWorld) keepAlive(nx *rsNexus) {
	changed := false
	for _, c := range nx.children {
		if c.state == rsOnline && w.usable(nx, c) == nil && onlineCount(nx) > 1 {
			c.state, c.reason, c.since = rsOffline, "io-error", w.latest[nx.uuid]
			changed = true
		}
	}
	if changed {
		w.tracef("%s: nexus %s: keep-alive: %s", nx.node.name, nx.name, w.children(nx))
		_ = w.save(nx)
	}
}

// progress advances the rebuilds of every serving nexus; failP is the
// chance that one fails this step.
func (w *rsWorld) progress(rng *rand.Rand, failP float64) {
	for _, n := range w.nodes {
		if !n.up {
			continue
		}
		for _, name := range slices.Sorted(mapsKeys(n.nexuses)) {
			nx := n.nexuses[name]
			if nx.faulted != "" {
				continue
			}
			changed := false
			for _, c := range nx.children {
				if c.state != rsRebuilding {
					continue
				}
				r := w.usable(nx, c)
				if r == nil || rng.Float64() < failP {
					c.state, c.reason = rsFaulted, "io-error"
					changed = true
					w.count("rebuilds failed")
					continue
				}
				c.progress += 25 + 50*rng.Float64()
				if c.progress < 100 {
					continue
				}
				var src *rsReplica
				for _, o := range nx.children {
					if o.state == rsOnline {
						if s := w.usable(nx, o); s != nil {
							src = s
							break
						}
					}
				}
				if src == nil {
					c.state, c.reason = rsFaulted, "io-error"
					changed = true
					w.count("rebuilds failed")
					continue
				}
				// A partial rebuild copies what was written since the
				// child left: complete only if the replica still holds
				// everything before that.
				if !c.partial || r.ver >= c.since {
					r.ver = src.ver
				}
				c.state, c.reason, c.partial, c.progress = rsOnline, "", false, 0
				changed = true
				w.count("rebuilds completed")
			}
			if changed {
				w.tracef("%s: nexus %s: rebuilds: %s", n.name, nx.name, w.children(nx))
				_ = w.save(nx)
			}
		}
	}
}

// children describes the children of nx with the model's view of each.
func (w *rsWorld) children(nx *rsNexus) string {
	var out []string
	for _, c := range nx.children {
		_, id := w.resolve(nx, c.uri)
		s := id[:min(8, len(id))] + " " + rsStateNames[c.state]
		if c.reason != "" {
			s += "(" + c.reason + ")"
		}
		if r := w.replicaOf(nx, c); r != nil {
			s += fmt.Sprintf(" v%d", r.ver)
		}
		out = append(out, s)
	}
	return "[" + strings.Join(out, ", ") + "]"
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// ---- checks ----

func (w *rsWorld) volumeByUUID(id string) *volumeRecord {
	v, err := w.svc.getVolumeByUUID(context.Background(), id)
	if err != nil {
		w.violate("read volume %s: %v", id, err)
	}
	return v
}

// checkDestroyReplica is invariant 3 (and 1) at a replica's destroy.
func (w *rsWorld) checkDestroyReplica(n *rsNode, r *rsReplica) {
	v := w.volumeByUUID(r.owner)
	if v == nil || v.Status == volDeleting {
		return
	}
	if slices.ContainsFunc(v.ReplicaSet, func(x replicaRef) bool { return x.UUID == r.uuid && x.Node == n.uuid }) {
		w.violate("replica %s on %s destroyed while volume %s counts on it", r.uuid, n.name, v.Name)
	}
	if l := w.latest[v.UUID]; l > 0 && r.ver == l {
		others := 0
		for _, m := range w.nodes {
			for _, o := range m.replicas {
				if o != r && o.owner == v.UUID && o.ver == l {
					others++
				}
			}
		}
		if others == 0 {
			w.violate("replica %s on %s destroyed: the last copy of volume %s's version %d", r.uuid, n.name, v.Name, l)
		}
	}
}

// checkDestroyNexus is invariant 3 at a nexus's destroy.
func (w *rsWorld) checkDestroyNexus(n *rsNode, nx *rsNexus) {
	v := w.volumeByUUID(nx.uuid)
	if v != nil && v.Status == volCreated && v.Op == nil && v.Target != nil && v.Target.Node == n.uuid && nx.faulted == "" {
		w.violate("nexus %s on %s destroyed while volume %s is published there", nx.name, n.name, v.Name)
	}
}

// check is invariants 1 and 2, after a step.
func (w *rsWorld) check(vols []*volumeRecord) {
	for _, v := range vols {
		l := w.latest[v.UUID]
		if l == 0 || v.Status == volDeleting {
			continue
		}
		held, counted := 0, 0
		for _, n := range w.nodes {
			for _, r := range n.replicas {
				if r.owner == v.UUID && r.ver == l {
					held++
					if slices.ContainsFunc(v.ReplicaSet, func(x replicaRef) bool { return x.UUID == r.uuid && x.Node == n.uuid }) {
						counted++
					}
				}
			}
		}
		switch {
		case held == 0:
			w.violate("volume %s: no replica holds its acknowledged version %d", v.Name, l)
		case counted == 0:
			w.violate("volume %s: it no longer counts any replica that holds its acknowledged version %d (replicas %s, retired %s)",
				v.Name, l, w.refs(v.ReplicaSet), w.refs(v.Retired))
		}
	}
	for _, n := range w.nodes {
		if !n.up {
			continue
		}
		for _, nx := range n.nexuses {
			if nx.faulted != "" {
				continue
			}
			for _, c := range nx.children {
				if c.state != rsOnline {
					continue
				}
				r := w.usable(nx, c)
				if r != nil && r.ver != w.latest[nx.uuid] {
					w.violate("nexus %s on %s: child %s is online at version %d; the volume's latest is %d",
						nx.name, n.name, c.uri, r.ver, w.latest[nx.uuid])
				}
			}
		}
	}
}

// refs describes replica refs with the model's view of each.
func (w *rsWorld) refs(rs []replicaRef) string {
	var out []string
	for _, x := range rs {
		s := x.UUID[:8] + "@"
		for _, n := range w.nodes {
			if n.uuid == x.Node {
				s += n.name
				if !n.up {
					s += "(down)"
				}
				if r := n.replicas[x.UUID]; r != nil {
					s += fmt.Sprintf(" v%d", r.ver)
				} else {
					s += " missing"
				}
			}
		}
		out = append(out, s)
	}
	return "[" + strings.Join(out, ", ") + "]"
}

// converged reports what keeps the system from invariant 4 ("" when it
// holds).
func (w *rsWorld) converged(vols []*volumeRecord) string {
	var why []string
	owned := map[string]bool{} // node/replica
	targets := map[string]bool{}
	for _, v := range vols {
		if v.Status != volCreated || v.Op != nil {
			why = append(why, fmt.Sprintf("volume %s is %s (op %v)", v.Name, v.Status, v.Op))
			continue
		}
		if len(v.Retired) > 0 || len(v.StaleTargets) > 0 {
			why = append(why, fmt.Sprintf("volume %s: retired %s, stale targets %v", v.Name, w.refs(v.Retired), v.StaleTargets))
		}
		if r := w.svc.repairsOf(v.UUID); len(r) > 0 {
			var s []string
			for _, x := range r {
				s = append(s, x.Kind+": "+x.Reason)
			}
			why = append(why, fmt.Sprintf("volume %s: repairs %s", v.Name, strings.Join(s, "; ")))
		}
		if len(v.ReplicaSet) != v.Replicas {
			why = append(why, fmt.Sprintf("volume %s: %d replicas, keeps %d", v.Name, len(v.ReplicaSet), v.Replicas))
		}
		for _, x := range v.ReplicaSet {
			owned[x.Node+"/"+x.UUID] = true
		}
		nx := w.serving(v)
		if nx == nil {
			why = append(why, fmt.Sprintf("volume %s: no serving nexus (target %v)", v.Name, v.Target))
			continue
		}
		targets[nx.node.uuid+"/"+nx.name] = true
		healthy := 0
		for _, c := range nx.children {
			r := w.usable(nx, c)
			n, id := w.resolve(nx, c.uri)
			counted := n != nil && slices.ContainsFunc(v.ReplicaSet, func(x replicaRef) bool { return x.UUID == id && x.Node == n.uuid })
			if c.state == rsOnline && r != nil && r.ver == w.latest[v.UUID] && counted {
				healthy++
				continue
			}
			why = append(why, fmt.Sprintf("volume %s: child %s is %s (counted %v)", v.Name, c.uri, rsStateNames[c.state], counted))
		}
		if healthy != v.Replicas {
			why = append(why, fmt.Sprintf("volume %s: %d healthy children, keeps %d", v.Name, healthy, v.Replicas))
		}
	}
	for _, n := range w.nodes {
		for id, r := range n.replicas {
			if !owned[n.uuid+"/"+id] {
				why = append(why, fmt.Sprintf("replica %s (owner %s) on %s: no volume counts it", id, r.owner, n.name))
			}
		}
		for name := range n.nexuses {
			if !targets[n.uuid+"/"+name] {
				why = append(why, fmt.Sprintf("nexus %s on %s: not a volume's target", name, n.name))
			}
		}
	}
	sort.Strings(why)
	return strings.Join(why, "\n  ")
}

// ---- the driver ----

// lockedReader makes a math/rand source safe for concurrent reads.
type lockedReader struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

// newQuietService is newService with the service's log discarded: the
// simulation makes the leader log thousands of lines.
func newQuietService(t testing.TB, cli *clientv3.Client, system string, clock *fakeClock) *testService {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	cfg := Config{System: system, Address: addr, Etcd: cli, SessionTTL: 10,
		HeartbeatInterval: 100 * time.Millisecond, HeartbeatTimeout: 5 * time.Second,
		Now: clock.Now, CheckInterval: -1, VolumePass: -1, PartialWait: rsPartialWait, GCGrace: rsGCGrace,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := &security.Authorizer{Policy: Policy(), Insecure: true}
	srv := grpc.NewServer(a.ServerOptions()...)
	mgmtv1.RegisterMgmtServiceServer(srv, svc)
	go srv.Serve(lis)
	svc.Start()
	t.Cleanup(func() {
		srv.Stop()
		svc.Close()
	})
	return &testService{svc, addr}
}

const (
	rsNodes       = 5
	rsPartialWait = 2 * time.Minute
	rsGCGrace     = time.Minute
	// rsConvergePasses bounds the passes after the faults stop.
	rsConvergePasses = 40
)

// newRSWorld starts a leader over rsNodes model nodes, all up and joined.
func newRSWorld(t *testing.T, cli *clientv3.Client, system string, seed int64) *rsWorld {
	clock := newFakeClock()
	svc := newQuietService(t, cli, system, clock)
	waitLeader(t, svc)
	// UUIDs (the leader's for new replicas too) come from the seed, so that
	// a seed replays the same placements.
	uuid.SetRand(&lockedReader{r: rand.New(rand.NewSource(seed ^ 0x0dd))})
	t.Cleanup(func() { uuid.SetRand(nil) })
	w := &rsWorld{svc: svc, cli: cli, clock: clock, seed: seed, drawn: map[string]int{},
		byAddr: map[string]*rsNode{}, latest: map[string]int{}, stats: map[string]int{}, seen: map[string]bool{},
		tracing: os.Getenv("NEXSTOR_SIM_TRACE") != ""}
	svc.vols.eng.dial = func(addr string) (engineAPI, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		n, ok := w.byAddr[addr]
		if !ok {
			return nil, fmt.Errorf("no engine at %s", addr)
		}
		return rsClient{w: w, n: n}, nil
	}
	ctx := context.Background()
	for i := 0; i < rsNodes; i++ {
		n := &rsNode{name: fmt.Sprintf("node-%d", i), uuid: uuid.NewString(), addr: fmt.Sprintf("rsim-node-%d:10124", i),
			up: true, memberUp: true, replicas: map[string]*rsReplica{}, nexuses: map[string]*rsNexus{}}
		n.hostNQN = "nqn.2014-08.org.nvmexpress:uuid:" + n.uuid
		w.nodes = append(w.nodes, n)
		w.byAddr[n.addr] = n
		req := joinReq(system, uuid.MustParse(n.uuid), n.addr)
		req.Name, req.HostNqn = n.name, n.hostNQN
		if _, err := svc.Join(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

func runReconcilerSim(t *testing.T, cli *clientv3.Client, system string, seed int64, steps int) {
	w := newRSWorld(t, cli, system, seed)
	svc, clock := w.svc, w.clock
	ops := rand.New(rand.NewSource(seed))
	names := []string{"a", "b", "c", "d"}
	w.mu.Lock()
	w.failP, w.lostP = 0.05, 0.03
	w.mu.Unlock()
	for step := 1; step <= steps; step++ {
		w.mu.Lock()
		w.step = step
		w.mu.Unlock()
		clock.Advance(time.Duration(1+ops.Intn(15)) * time.Second)
		w.nodeEvents(t, ops)
		// An operation, maybe cut short by the leader's death.
		if ops.Intn(2) == 0 {
			w.withDeath(ops, func(octx context.Context) { w.operation(octx, ops, names) })
		}
		// Users write to what is published.
		for _, v := range w.volumes(t) {
			if ops.Intn(3) != 0 {
				w.mu.Lock()
				if nx := w.serving(v); nx != nil {
					w.write(nx)
				}
				w.mu.Unlock()
			}
		}
		// The leader's pass; sometimes a new leader's, which remembers
		// nothing of the last one's repairs and collection candidates.
		if ops.Intn(3) == 0 {
			if ops.Intn(6) == 0 {
				w.newLeader()
			}
			w.mu.Lock()
			w.tracef("pass")
			w.mu.Unlock()
			w.withDeath(ops, func(octx context.Context) { _ = svc.VolumePass(octx) })
		}
		w.mu.Lock()
		w.progress(ops, 0.05)
		for _, n := range w.nodes {
			for _, name := range slices.Sorted(mapsKeys(n.nexuses)) {
				if nx := n.nexuses[name]; n.up && nx.faulted == "" && ops.Intn(4) == 0 {
					w.keepAlive(nx)
				}
			}
		}
		w.mu.Unlock()
		vols := w.volumes(t)
		w.mu.Lock()
		w.check(vols)
		w.mu.Unlock()
	}

	// The faults stop; every node returns; users publish what is not;
	// the leader's passes converge.
	w.mu.Lock()
	w.failP, w.lostP = 0, 0
	w.step = steps + 1
	for _, n := range w.nodes {
		if !n.up {
			w.bringUp(n, nil)
		}
	}
	w.mu.Unlock()
	for _, n := range w.nodes {
		w.syncMember(t, n, true)
	}
	w.converge(t, ops)
	w.mu.Lock()
	defer w.mu.Unlock()
	var stats []string
	for _, k := range slices.Sorted(mapsKeys(w.stats)) {
		stats = append(stats, fmt.Sprintf("%s %d", k, w.stats[k]))
	}
	t.Logf("seed %d: %d steps, %d engine calls; %s", seed, steps, w.calls, strings.Join(stats, ", "))
	w.fail(t, fmt.Sprintf("seed %d (rerun with NEXSTOR_SIM_SEED=%d)", seed, seed))
}

// fail fails t with the violations found (and the trace, when kept);
// the caller holds w.mu.
func (w *rsWorld) fail(t *testing.T, what string) {
	t.Helper()
	if (len(w.violations) > 0 || os.Getenv("NEXSTOR_SIM_TRACE") == "all") && w.tracing {
		t.Logf("trace:\n%s", strings.Join(w.trace, "\n"))
	}
	if len(w.violations) > 0 {
		t.Fatalf("%s: %d violations:\n%s", what, len(w.violations), strings.Join(w.violations, "\n"))
	}
}

// converge runs the leader's passes, without faults, until invariant 4
// holds (a violation when it does not within rsConvergePasses): users
// publish what is not published and write to what is, rebuilds progress,
// and a person republishes a volume the reconcilers report blocked on its
// nexus, as the report tells them.
func (w *rsWorld) converge(t *testing.T, rng *rand.Rand) {
	ctx, svc := context.Background(), w.svc
	why := ""
	for pass := 0; pass < rsConvergePasses; pass++ {
		w.clock.Advance(time.Minute)
		for _, v := range w.volumes(t) {
			if v.Status != volCreated || v.Op != nil {
				continue
			}
			// A person follows what the reconcilers report blocked on
			// the nexus (faulted, or missing): they republish.
			if v.Target != nil && w.nexusBlocked(v) {
				w.mu.Lock()
				w.count("republished by a person")
				w.tracef("a person republishes %s", v.Name)
				w.mu.Unlock()
				_, _ = svc.unpublishVolume(ctx, v.Name)
				v.Target = nil
			}
			if v.Target == nil {
				_, err := svc.publishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: v.Name})
				w.mu.Lock()
				w.tracef("publish %s: %v", v.Name, err)
				w.mu.Unlock()
			}
		}
		if err := svc.VolumePass(ctx); err != nil {
			t.Logf("pass %d: %v", pass, err)
		}
		vols := w.volumes(t)
		w.mu.Lock()
		for _, v := range vols {
			if nx := w.serving(v); nx != nil {
				w.write(nx)
			}
		}
		w.progress(rng, 0)
		w.check(vols)
		why = w.converged(vols)
		w.mu.Unlock()
		if why == "" {
			t.Logf("converged after %d passes", pass+1)
			return
		}
	}
	w.mu.Lock()
	w.violate("no convergence after %d passes:\n  %s", rsConvergePasses, why)
	w.mu.Unlock()
}

// nexusBlocked reports whether the reconcilers report v blocked on its
// nexus.
func (w *rsWorld) nexusBlocked(v *volumeRecord) bool {
	for _, r := range w.svc.repairsOf(v.UUID) {
		if r.Kind == repBlocked && strings.HasPrefix(r.Reason, "the nexus is") {
			return true
		}
	}
	return false
}

func (w *rsWorld) volumes(t *testing.T) []*volumeRecord {
	vols, err := w.svc.listVolumes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return vols
}

// withDeath runs f with a context the leader's death may end at a random
// engine call.
func (w *rsWorld) withDeath(ops *rand.Rand, f func(context.Context)) {
	octx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w.mu.Lock()
	w.crash, w.deathP, w.died = cancel, 0, false
	if ops.Intn(4) == 0 {
		w.deathP = 0.2
	}
	w.mu.Unlock()
	f(octx)
	w.mu.Lock()
	if w.died {
		w.count("leader deaths")
	}
	w.crash, w.deathP = nil, 0
	w.mu.Unlock()
}

// newLeader forgets what only the leader's memory held.
func (w *rsWorld) newLeader() {
	w.svc.healing.reset()
	w.svc.gc.mu.Lock()
	w.svc.gc.seen, w.svc.gc.reported = nil, nil
	w.svc.gc.mu.Unlock()
	w.mu.Lock()
	w.count("leader changes")
	w.mu.Unlock()
}

func (w *rsWorld) operation(ctx context.Context, ops *rand.Rand, names []string) {
	name := names[ops.Intn(len(names))]
	node := w.nodes[ops.Intn(len(w.nodes))].name
	svc := w.svc
	// Mostly what a user would do next with the volume; sometimes
	// anything at all.
	k := ops.Intn(100)
	if v, _ := svc.getVolume(context.Background(), name); ops.Intn(10) != 0 {
		switch {
		case v == nil:
			k = 0 // create
		case v.Status != volCreated:
			k = 95 // delete again
		case v.Target == nil && k < 50:
			k = 30 // publish
		case v.Target != nil && k < 40:
			k = -1 // nothing: the users write
		}
	}
	var err error
	what := ""
	switch {
	case k < 0:
		return
	case k < 20:
		what = "create"
		_, err = svc.createVolume(ctx, &mgmtv1.VolumeSpec{Name: name, Size: 16 << 20, Replicas: uint32(1 + ops.Intn(3))})
	case k < 50:
		what = "publish"
		if ops.Intn(2) == 0 {
			node = ""
		}
		_, err = svc.publishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: name, Node: node})
	case k < 58:
		what = "unpublish"
		_, err = svc.unpublishVolume(ctx, name)
	case k < 75:
		what = "set-replicas"
		_, err = svc.setReplicas(ctx, name, uint32(1+ops.Intn(3)))
	case k < 80:
		what = "cordon"
		if w.restricted() < 1 {
			_, err = svc.cordonNode(ctx, node, true)
		}
	case k < 85:
		what = "drain"
		if w.restricted() < 1 {
			_, err = svc.drainNode(ctx, node)
		}
	case k < 90:
		what = "uncordon"
		_, err = svc.cordonNode(ctx, node, false)
	default:
		what = "delete"
		_, err = svc.deleteVolume(ctx, name, ops.Intn(2) == 0)
	}
	w.mu.Lock()
	if err == nil {
		w.count(what + " ok")
	} else {
		w.count(what + " failed")
	}
	w.tracef("op %s %s %s: %v", what, name, node, err)
	w.mu.Unlock()
}

// restricted counts the cordoned or draining nodes: at most one at a time,
// so that every volume (at most 3 replicas) always has room.
func (w *rsWorld) restricted() int {
	members, err := listMembers(context.Background(), w.cli, w.svc.k)
	if err != nil {
		return 99
	}
	n := 0
	for _, m := range members {
		if m.Cordoned || m.Draining {
			n++
		}
	}
	return n
}

// nodeEvents crashes and returns nodes, and lets the membership catch up.
func (w *rsWorld) nodeEvents(t *testing.T, ops *rand.Rand) {
	w.mu.Lock()
	down := 0
	for _, n := range w.nodes {
		if !n.up {
			down++
		}
	}
	var catchUp []*rsNode
	for _, n := range w.nodes {
		switch {
		case n.up && down < 2 && ops.Intn(40) == 0:
			// A crash: the engine and its nexuses are gone; the
			// membership hears of it now or a few steps later.
			n.up, n.downAt = false, w.clock.Now()
			w.tracef("%s crashes", n.name)
			down++
			n.memberIn = ops.Intn(4)
			w.count("node crashes")
		case !n.up && ops.Intn(3) == 0:
			// Back after a short or a long time (the partial wait is
			// 2 minutes; steps are up to 15 s).
			if ops.Intn(2) == 0 && w.clock.Now().Sub(n.downAt) < rsPartialWait {
				continue
			}
			var mutate func(*rsNode)
			if ops.Intn(4) == 0 {
				mutate = w.loseSome(ops)
			}
			w.bringUp(n, mutate)
			n.memberIn = ops.Intn(3)
		}
		if n.memberIn > 0 {
			n.memberIn--
		} else if n.memberUp != n.up {
			catchUp = append(catchUp, n)
		}
	}
	w.mu.Unlock()
	for _, n := range catchUp {
		w.syncMember(t, n, ops.Intn(2) == 0)
	}
}

// bringUp starts a node's engine again (under w.mu); mutate, when set,
// changes what the node comes back with; then the engine restores its
// nexuses from their records.
func (w *rsWorld) bringUp(n *rsNode, mutate func(*rsNode)) {
	n.up = true
	w.count("node returns")
	w.tracef("%s returns", n.name)
	if mutate != nil {
		mutate(n)
	}
	for _, name := range slices.Sorted(mapsKeys(n.nexuses)) {
		w.restore(n.nexuses[name])
	}
}

// loseSome has a returning node come back without some of its replicas,
// or with them destroyed and created again (another identity, no data):
// never the last copy of a volume's data (spare).
func (w *rsWorld) loseSome(ops *rand.Rand) func(*rsNode) {
	return func(n *rsNode) {
		for _, id := range slices.Sorted(mapsKeys(n.replicas)) {
			if ops.Intn(3) != 0 || !w.spare(n, n.replicas[id]) {
				continue
			}
			if ops.Intn(2) == 0 {
				w.lose(n, id)
			} else {
				w.recreate(n, id)
			}
		}
	}
}

// lose deletes a replica as its node's engine lost it.
func (w *rsWorld) lose(n *rsNode, id string) {
	delete(n.replicas, id)
	w.tracef("%s: replica %s lost", n.name, id)
	w.count("replicas lost with their node")
}

// recreate gives a replica another identity and no data, as if it was
// destroyed and created again under its UUID.
func (w *rsWorld) recreate(n *rsNode, id string) {
	r := n.replicas[id]
	w.idents++
	r.ident, r.ver, r.shared, r.hosts = w.idents, 0, false, nil
	w.tracef("%s: replica %s created again", n.name, id)
	w.count("replicas recreated with their node")
}

// spare reports whether r may be lost with its node without the
// environment itself destroying the volume's data: another replica the
// volume counts holds what r holds, and is recorded online by the
// volume's health record when r is.
func (w *rsWorld) spare(n *rsNode, r *rsReplica) bool {
	if r.ver < w.latest[r.owner] {
		return true
	}
	v := w.volumeByUUID(r.owner)
	if v == nil {
		return true
	}
	rec, _ := w.loadRecord(r.owner)
	online := func(id string) bool {
		if rec == nil {
			return true
		}
		for _, c := range rec.Children {
			if replicaOfURI(c.URI) == id {
				return c.State == "online"
			}
		}
		return false
	}
	for _, m := range w.nodes {
		for id, o := range m.replicas {
			if o != r && o.owner == r.owner && o.ver >= r.ver && (!online(r.uuid) || online(id)) &&
				slices.ContainsFunc(v.ReplicaSet, func(x replicaRef) bool { return x.UUID == id && x.Node == m.uuid }) {
				return true
			}
		}
	}
	return false
}

// syncMember makes the membership say what the node is: stopped (by an
// operator) or unresponsive (as the checker would) while down, joined
// when up.
func (w *rsWorld) syncMember(t *testing.T, n *rsNode, byOperator bool) {
	ctx := context.Background()
	w.mu.Lock()
	up := n.up
	w.mu.Unlock()
	m, err := getMember(ctx, w.cli, w.svc.k, n.uuid)
	if err != nil || m == nil {
		t.Fatalf("member %s: %v", n.name, err)
	}
	want := StateJoined
	if !up {
		want = StateUnresponsive
		if byOperator && m.State == StateJoined {
			want = StateStopped
		}
	}
	if m.State != want {
		if want == StateStopped || (want == StateJoined && m.State == StateStopped) {
			var res *mgmtv1.SystemResultsResponse
			if want == StateStopped {
				res, err = w.svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: fmt.Sprint(m.Rank)})
			} else {
				res, err = w.svc.SystemStart(ctx, &mgmtv1.SystemStartRequest{Ranks: fmt.Sprint(m.Rank)})
			}
			if err != nil || len(res.Results) != 1 || res.Results[0].Errored {
				t.Fatalf("member %s to %s: %v %v", n.name, want, err, res)
			}
		} else {
			if want == StateUnresponsive {
				m.PrevState = m.State
			} else {
				m.PrevState = ""
			}
			m.State = want
			if _, err := w.cli.Put(ctx, w.svc.k.member(n.uuid), encodeMember(m)); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.mu.Lock()
	n.memberUp = up
	w.tracef("membership: %s is %s", n.name, want)
	w.mu.Unlock()
}

// rsSeeds are the seeds every run of TestReconcilerSimulation replays.
var rsSeeds = []int64{1, 2, 3, 4, 5, 6}

// TestReconcilerSimulation runs the reconciler simulation over the fixed
// seeds and one random seed (printed), each for NEXSTOR_SIM_STEPS steps
// (default 300; 100 with -short, which also runs only half the fixed
// seeds). NEXSTOR_SIM_SEED runs that one seed only; NEXSTOR_SIM_SEEDS=N
// runs N random seeds instead of the fixed ones (the soak of make sim).
// Each seed runs against its own etcd.
func TestReconcilerSimulation(t *testing.T) {
	steps := 300
	seeds := slices.Clone(rsSeeds)
	if testing.Short() {
		steps, seeds = 100, seeds[:len(seeds)/2]
	}
	if s := os.Getenv("NEXSTOR_SIM_STEPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("NEXSTOR_SIM_STEPS=%q: not a number of steps", s)
		}
		steps = n
	}
	random := time.Now().UnixNano()
	seeds = append(seeds, random)
	if s := os.Getenv("NEXSTOR_SIM_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("NEXSTOR_SIM_SEEDS=%q: not a number of seeds", s)
		}
		seeds = nil
		for i := 0; i < n; i++ {
			seeds = append(seeds, random+int64(i))
		}
	}
	if s := os.Getenv("NEXSTOR_SIM_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("NEXSTOR_SIM_SEED=%q: not a seed", s)
		}
		seeds = []int64{n}
	}
	t.Logf("%d seeds of %d steps (random seeds from %d)", len(seeds), steps, random)
	failed := 0
	for _, seed := range seeds {
		ok := t.Run(fmt.Sprint(seed), func(t *testing.T) {
			runReconcilerSim(t, startEtcd(t), "rsim", seed, steps)
		})
		if !ok {
			failed++
			t.Logf("seed %d failed (rerun with NEXSTOR_SIM_SEED=%d NEXSTOR_SIM_STEPS=%d NEXSTOR_SIM_TRACE=1)", seed, seed, steps)
		}
	}
	t.Logf("%d of %d seeds failed", failed, len(seeds))
}
