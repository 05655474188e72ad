package mgmt

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
)

// The volume simulation: the leader's volume operations run against
// simulated engines that fail calls at random (before doing anything, or
// after doing it with the answer lost), and the leader "dies" at random
// points of an operation (its context ends: no engine call and no store
// write gets through any more, as after a SIGKILL). The next leader's
// passes, under the same faults and then without, must converge to:
// every created volume has all its replicas, owned by it; no replica and
// no nexus is left that no volume owns; no replica was destroyed while its
// volume still counted on it; nothing was ever destroyed with force or as
// another owner.
//
// The seed fixes the sequence of operations and the fault rates; engine
// calls that an operation makes in parallel may interleave differently
// from run to run. NEXSTOR_SIM_SEED reruns one seed.

type simWorld struct {
	mu         sync.Mutex
	rng        *rand.Rand
	failP      float64 // a call fails before it does anything
	lostP      float64 // a call does its work, and its answer is lost
	crashAt    int     // the call at which the leader dies (0: never)
	calls      int
	crash      context.CancelFunc
	engines    map[string]*simEngine
	violations []string
	// counted reports whether a created volume counts on the replica.
	counted func(replica string) bool
}

type simEngine struct {
	addr     string
	replicas map[string]*simReplica
	nexuses  map[string]*simNexus
}

type simReplica struct {
	uuid, pool, owner string
	size              uint64
	hosts             []string
	shared            bool
}

type simNexus struct {
	name, uuid string
	size       uint64
	children   []string
	published  bool
	protocol   string
}

func (w *simWorld) violate(format string, a ...any) {
	w.violations = append(w.violations, fmt.Sprintf(format, a...))
}

// enter is the start of every engine call, under w.mu: a dead leader's
// calls fail, the crash point kills the leader, and some calls fail.
func (w *simWorld) enter(ctx context.Context, what string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w.calls++
	if w.crashAt != 0 && w.calls >= w.crashAt && w.crash != nil {
		w.crash()
		return context.Canceled
	}
	if w.rng.Float64() < w.failP {
		return fault.New(fault.Unavailable, "engine.unreachable", what+": simulated unreachable engine", "")
	}
	return nil
}

// leave is the end of a call that did its work: its answer may be lost.
func (w *simWorld) leave(what string) error {
	if w.rng.Float64() < w.lostP {
		return fault.New(fault.Unavailable, "rpc.deadline_exceeded", what+": simulated lost answer", "")
	}
	return nil
}

func simNotFound(what string) error {
	return fault.New(fault.NotFound, "replica.not_found", what+" not found", "")
}

type simClient struct {
	w *simWorld
	e *simEngine
}

func (c simClient) do(ctx context.Context, what string, f func() error) error {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	if err := c.w.enter(ctx, what); err != nil {
		return err
	}
	if err := f(); err != nil {
		return err
	}
	return c.w.leave(what)
}

func (c simClient) replicaProto(r *simReplica) *enginev1.Replica {
	out := &enginev1.Replica{Name: r.uuid, Uuid: r.uuid, Pool: r.pool, Size: r.size, Owner: r.owner,
		State: enginev1.ReplicaState_REPLICA_STATE_ONLINE}
	if r.shared {
		sh := &enginev1.Share{Protocol: "nvmf", Uri: "nvmf://" + c.e.addr + "/nqn.2024-11.io.nexstor:replica:" + r.uuid, AllowedHosts: r.hosts}
		out.Share, out.Shares = sh, []*enginev1.Share{sh}
	}
	return out
}

func (c simClient) nexusProto(n *simNexus) *enginev1.Nexus {
	out := &enginev1.Nexus{Name: n.name, Uuid: n.uuid, Size: n.size, State: enginev1.NexusState_NEXUS_STATE_ONLINE}
	for _, ch := range n.children {
		out.Children = append(out.Children, &enginev1.Child{Uri: ch, State: enginev1.ChildState_CHILD_STATE_ONLINE})
	}
	if n.published {
		out.Share = &enginev1.Share{Protocol: n.protocol, Uri: n.protocol + "://" + c.e.addr + "/nqn.2024-11.io.nexstor:nexus:" + n.uuid}
	}
	return out
}

func (c simClient) ListPools(ctx context.Context, _ *enginev1.ListPoolsRequest) (*enginev1.ListPoolsResponse, error) {
	var out *enginev1.ListPoolsResponse
	err := c.do(ctx, "list pools", func() error {
		var committed uint64
		for _, r := range c.e.replicas {
			committed += r.size
		}
		out = &enginev1.ListPoolsResponse{Pools: []*enginev1.Pool{{Name: "p0", Uuid: "p0-" + c.e.addr, State: enginev1.PoolState_POOL_STATE_ONLINE,
			Capacity: 4 << 30, ClusterSize: 1 << 20, FreeClusters: (4<<30 - committed) >> 20, Committed: committed,
			ReplicaCount: uint32(len(c.e.replicas)), OvercommitPercent: 250}}}
		return nil
	})
	return out, err
}

func (c simClient) GetPool(ctx context.Context, _ *enginev1.GetPoolRequest) (*enginev1.Pool, error) {
	r, err := c.ListPools(ctx, nil)
	if err != nil {
		return nil, err
	}
	return r.Pools[0], nil
}

func (c simClient) CreateReplica(ctx context.Context, req *enginev1.CreateReplicaRequest) (*enginev1.Replica, error) {
	var out *enginev1.Replica
	err := c.do(ctx, "create replica", func() error {
		if r, ok := c.e.replicas[req.Uuid]; ok {
			if r.owner != req.Owner {
				return fault.New(fault.AlreadyExists, "replica.exists", "another owner", "")
			}
			out = c.replicaProto(r)
			return nil
		}
		r := &simReplica{uuid: req.Uuid, pool: req.Pool, owner: req.Owner, size: req.Size}
		c.e.replicas[r.uuid] = r
		out = c.replicaProto(r)
		return nil
	})
	return out, err
}

func (c simClient) GetReplica(ctx context.Context, req *enginev1.GetReplicaRequest) (*enginev1.Replica, error) {
	var out *enginev1.Replica
	err := c.do(ctx, "get replica", func() error {
		r, ok := c.e.replicas[req.Name]
		if !ok {
			return simNotFound("replica " + req.Name)
		}
		out = c.replicaProto(r)
		return nil
	})
	return out, err
}

func (c simClient) ListReplicas(ctx context.Context, _ *enginev1.ListReplicasRequest) (*enginev1.ListReplicasResponse, error) {
	out := &enginev1.ListReplicasResponse{}
	err := c.do(ctx, "list replicas", func() error {
		for _, r := range c.e.replicas {
			out.Replicas = append(out.Replicas, c.replicaProto(r))
		}
		return nil
	})
	return out, err
}

func (c simClient) DestroyReplica(ctx context.Context, req *enginev1.DestroyReplicaRequest) (*enginev1.DestroyReplicaResponse, error) {
	err := c.do(ctx, "destroy replica", func() error {
		r, ok := c.e.replicas[req.Name]
		if !ok {
			return simNotFound("replica " + req.Name)
		}
		if req.Force {
			c.w.violate("replica %s destroyed with force", req.Name)
		}
		if r.owner != "" && r.owner != req.Owner {
			c.w.violate("replica %s of %s destroyed as %q", req.Name, r.owner, req.Owner)
			return fault.New(fault.FailedPrecondition, "replica.owned", "owned by "+r.owner, "")
		}
		if c.w.counted(req.Name) {
			c.w.violate("replica %s destroyed while its created volume counts on it", req.Name)
		}
		delete(c.e.replicas, req.Name)
		return nil
	})
	return &enginev1.DestroyReplicaResponse{}, err
}

func (c simClient) ResizeReplica(ctx context.Context, req *enginev1.ResizeReplicaRequest) (*enginev1.Replica, error) {
	var out *enginev1.Replica
	err := c.do(ctx, "resize replica", func() error {
		r, ok := c.e.replicas[req.Name]
		if !ok {
			return simNotFound("replica " + req.Name)
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

func (c simClient) ShareReplica(ctx context.Context, req *enginev1.ShareReplicaRequest) (*enginev1.Replica, error) {
	var out *enginev1.Replica
	err := c.do(ctx, "share replica", func() error {
		r, ok := c.e.replicas[req.Name]
		if !ok {
			return simNotFound("replica " + req.Name)
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

func (c simClient) UnshareReplica(ctx context.Context, req *enginev1.UnshareReplicaRequest) (*enginev1.Replica, error) {
	var out *enginev1.Replica
	err := c.do(ctx, "unshare replica", func() error {
		r, ok := c.e.replicas[req.Name]
		if !ok {
			return simNotFound("replica " + req.Name)
		}
		r.shared, r.hosts = false, nil
		out = c.replicaProto(r)
		return nil
	})
	return out, err
}

func (c simClient) GetNexus(ctx context.Context, req *enginev1.GetNexusRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "get nexus", func() error {
		n, ok := c.e.nexuses[req.Name]
		if !ok {
			return simNotFound("nexus " + req.Name)
		}
		out = c.nexusProto(n)
		return nil
	})
	return out, err
}

func (c simClient) ListNexuses(ctx context.Context, _ *enginev1.ListNexusesRequest) (*enginev1.ListNexusesResponse, error) {
	out := &enginev1.ListNexusesResponse{}
	err := c.do(ctx, "list nexuses", func() error {
		for _, n := range c.e.nexuses {
			out.Nexuses = append(out.Nexuses, c.nexusProto(n))
		}
		return nil
	})
	return out, err
}

func (c simClient) CreateNexus(ctx context.Context, req *enginev1.CreateNexusRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "create nexus", func() error {
		if n, ok := c.e.nexuses[req.Name]; ok {
			out = c.nexusProto(n)
			return nil
		}
		for _, ch := range req.Children {
			id := ch[strings.LastIndexAny(ch, "/:")+1:]
			var r *simReplica
			for _, e := range c.w.engines {
				if x, ok := e.replicas[id]; ok {
					r = x
				}
			}
			if r == nil || r.owner != req.Uuid {
				return fault.New(fault.FailedPrecondition, "nexus.child", "child "+ch+" is not a replica of "+req.Uuid, "")
			}
		}
		n := &simNexus{name: req.Name, uuid: req.Uuid, size: req.Size, children: slices.Clone(req.Children)}
		c.e.nexuses[req.Name] = n
		out = c.nexusProto(n)
		return nil
	})
	return out, err
}

func (c simClient) DestroyNexus(ctx context.Context, req *enginev1.DestroyNexusRequest) (*enginev1.DestroyNexusResponse, error) {
	err := c.do(ctx, "destroy nexus", func() error {
		if _, ok := c.e.nexuses[req.Name]; !ok {
			return simNotFound("nexus " + req.Name)
		}
		delete(c.e.nexuses, req.Name)
		return nil
	})
	return &enginev1.DestroyNexusResponse{}, err
}

func (c simClient) PublishNexus(ctx context.Context, req *enginev1.PublishNexusRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "publish nexus", func() error {
		n, ok := c.e.nexuses[req.Name]
		if !ok {
			return simNotFound("nexus " + req.Name)
		}
		n.published, n.protocol = true, req.Protocol
		out = c.nexusProto(n)
		return nil
	})
	return out, err
}

func (c simClient) SetNexusAnaState(ctx context.Context, req *enginev1.SetNexusAnaStateRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "set nexus ana state", func() error {
		n, ok := c.e.nexuses[req.Name]
		if !ok {
			return simNotFound("nexus " + req.Name)
		}
		out = c.nexusProto(n)
		return nil
	})
	return out, err
}

func (c simClient) ResizeNexus(ctx context.Context, req *enginev1.ResizeNexusRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "resize nexus", func() error {
		n, ok := c.e.nexuses[req.Name]
		if !ok {
			return simNotFound("nexus " + req.Name)
		}
		n.size = max(n.size, req.Size)
		out = c.nexusProto(n)
		return nil
	})
	return out, err
}

func (c simClient) AddChild(ctx context.Context, req *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "add child", func() error {
		n, ok := c.e.nexuses[req.Nexus]
		if !ok {
			return simNotFound("nexus " + req.Nexus)
		}
		if !slices.Contains(n.children, req.Child) {
			n.children = append(n.children, req.Child)
		}
		out = c.nexusProto(n)
		return nil
	})
	return out, err
}

func (c simClient) RemoveChild(ctx context.Context, req *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "remove child", func() error {
		n, ok := c.e.nexuses[req.Nexus]
		if !ok {
			return simNotFound("nexus " + req.Nexus)
		}
		n.children = slices.DeleteFunc(n.children, func(x string) bool { return x == req.Child })
		out = c.nexusProto(n)
		return nil
	})
	return out, err
}

func (c simClient) OnlineChild(ctx context.Context, req *enginev1.ChildRequest) (*enginev1.Nexus, error) {
	var out *enginev1.Nexus
	err := c.do(ctx, "online child", func() error {
		n, ok := c.e.nexuses[req.Nexus]
		if !ok {
			return simNotFound("nexus " + req.Nexus)
		}
		out = c.nexusProto(n)
		return nil
	})
	return out, err
}

func (c simClient) Verify(ctx context.Context, req *enginev1.VerifyRequest) (*enginev1.VerifyResponse, error) {
	return &enginev1.VerifyResponse{}, c.do(ctx, "verify", func() error { return nil })
}

func TestVolumeSimulation(t *testing.T) {
	seeds := []int64{time.Now().UnixNano()}
	if s := os.Getenv("NEXSTOR_SIM_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seeds = []int64{n}
	} else {
		for i := 1; i < 8; i++ {
			seeds = append(seeds, seeds[0]+int64(i))
		}
	}
	cli := startEtcd(t)
	for i, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (rerun with NEXSTOR_SIM_SEED=%d)", seed, seed)
			runVolumeSim(t, cli, fmt.Sprintf("sim%d", i), seed)
		})
	}
}

func runVolumeSim(t *testing.T, cli *clientv3.Client, system string, seed int64) {
	svc := newService(t, cli, system, nil)
	svc.cfg.VolumePass = -1
	waitLeader(t, svc)
	w := &simWorld{rng: rand.New(rand.NewSource(seed)), engines: map[string]*simEngine{}}
	svc.vols.eng.dial = func(addr string) (engineAPI, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		e, ok := w.engines[addr]
		if !ok {
			return nil, fmt.Errorf("no engine at %s", addr)
		}
		return simClient{w: w, e: e}, nil
	}
	ctx := context.Background()
	w.counted = func(replica string) bool {
		vols, err := svc.listVolumes(ctx)
		if err != nil {
			return false
		}
		for _, v := range vols {
			for _, r := range v.ReplicaSet {
				if r.UUID == replica && v.Status == volCreated {
					return true
				}
			}
		}
		return false
	}
	const nodes = 4
	for i := 0; i < nodes; i++ {
		addr := fmt.Sprintf("sim-node-%d:10124", i)
		w.engines[addr] = &simEngine{addr: addr, replicas: map[string]*simReplica{}, nexuses: map[string]*simNexus{}}
		req := joinReq(system, uuid.New(), addr)
		req.Name, req.HostNqn = fmt.Sprintf("node-%d", i), "nqn.2014-08.org.nvmexpress:uuid:"+uuid.NewString()
		if _, err := svc.Join(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	// ops picks from the seed alone: the fault draws happen under w.mu.
	ops := rand.New(rand.NewSource(seed ^ 0x5eed))
	names := []string{"a", "b", "c", "d"}
	w.mu.Lock()
	w.failP, w.lostP = 0.08, 0.04
	w.mu.Unlock()
	for step := 0; step < 80; step++ {
		name := names[ops.Intn(len(names))]
		octx, cancel := context.WithCancel(ctx)
		w.mu.Lock()
		w.crash, w.crashAt = cancel, 0
		if ops.Intn(3) == 0 {
			w.crashAt = w.calls + 1 + ops.Intn(8)
		}
		w.mu.Unlock()
		var err error
		switch k := ops.Intn(6); k {
		case 0, 1:
			_, err = svc.createVolume(octx, &mgmtv1.VolumeSpec{Name: name, Size: 16 << 20, Replicas: uint32(1 + ops.Intn(3))})
		case 2:
			_, err = svc.publishVolume(octx, &mgmtv1.PublishVolumeRequest{Name: name, Node: fmt.Sprintf("node-%d", ops.Intn(nodes))})
		case 3:
			_, err = svc.unpublishVolume(octx, name)
		case 4:
			_, err = svc.resizeVolume(octx, name, uint64(16+4*ops.Intn(8))<<20)
		case 5:
			_, err = svc.deleteVolume(octx, name, ops.Intn(2) == 0)
		}
		cancel()
		w.mu.Lock()
		died := w.crashAt != 0 && w.calls >= w.crashAt
		w.crashAt, w.crash = 0, nil
		w.mu.Unlock()
		_ = err
		if died || ops.Intn(4) == 0 {
			// The next leader's pass, still under faults.
			_ = svc.VolumePass(ctx)
		}
	}
	// The faults stop; the leader's passes converge.
	w.mu.Lock()
	w.failP, w.lostP = 0, 0
	w.mu.Unlock()
	for i := 0; i < 5; i++ {
		if err := svc.VolumePass(ctx); err != nil {
			t.Fatal(err)
		}
	}
	vols, err := svc.listVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	owned := map[string]string{} // replica -> volume
	for _, v := range vols {
		if v.Op != nil || v.Status != volCreated {
			w.violate("volume %s did not converge: status %s, op %+v", v.Name, v.Status, v.Op)
		}
		for _, r := range v.ReplicaSet {
			owned[r.UUID] = v.UUID
			found := false
			for _, e := range w.engines {
				if x, ok := e.replicas[r.UUID]; ok {
					found = true
					if x.owner != v.UUID {
						w.violate("replica %s of volume %s is owned by %q", r.UUID, v.Name, x.owner)
					}
				}
			}
			if !found {
				w.violate("volume %s lost its replica %s", v.Name, r.UUID)
			}
		}
		if v.Target != nil {
			found := false
			for _, e := range w.engines {
				if n, ok := e.nexuses[v.Name]; ok && n.uuid == v.UUID {
					found = true
				}
			}
			if !found {
				w.violate("volume %s is published but has no nexus", v.Name)
			}
		}
	}
	for _, e := range w.engines {
		for id, r := range e.replicas {
			if owned[id] == "" {
				w.violate("orphan replica %s (owner %s) on %s", id, r.owner, e.addr)
			}
		}
		for name, n := range e.nexuses {
			ok := false
			for _, v := range vols {
				if v.UUID == n.uuid && v.Target != nil {
					ok = true
				}
			}
			if !ok {
				w.violate("stray nexus %s on %s", name, e.addr)
			}
		}
	}
	if len(w.violations) > 0 {
		t.Fatalf("seed %d: %d violations:\n%s", seed, len(w.violations), strings.Join(w.violations, "\n"))
	}
	t.Logf("seed %d: %d volumes, %d engine calls", seed, len(vols), w.calls)
}
