package mgmt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/scheduler"
	"github.com/nexstor/nexstor/internal/units"
)

// Fault codes of volumes.
const (
	CodeVolumeBadSpec      = "volume.bad_spec"
	CodeVolumeNotFound     = "volume.not_found"
	CodeVolumeExists       = "volume.exists"
	CodeVolumeNotPlaceable = "volume.not_placeable"
	CodeVolumePublished    = "volume.published"
	CodeVolumeBusy         = "volume.busy"
	CodeVolumeState        = "volume.state"
	CodeVolumeUnknownNode  = "volume.unknown_node"
	CodeVolumeNodeDown     = "volume.node_down"
	CodeVolumeConflict     = "volume.conflict"
)

// VolumeBlockSize is the granularity of volume sizes in bytes.
const VolumeBlockSize = 4096

// HealthStoreSystem is the engine's name of the health store the
// management service keeps (CreateNexusRequest.health_store).
const HealthStoreSystem = "system"

var volumeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// VolumeServer serves VolumeService for a Service: only its leader
// answers.
type VolumeServer struct {
	mgmtv1.UnimplementedVolumeServiceServer
	s *Service
}

// Volumes returns the VolumeService of s.
func (s *Service) Volumes() *VolumeServer { return &VolumeServer{s: s} }

// volumes is the leader's volume machinery: engine clients and the locks
// that serialise operations.
type volumes struct {
	eng engines
	// placeMu serialises placement and replica creation, so that two
	// creates never count the same free space.
	placeMu sync.Mutex
	mu      sync.Mutex
	locks   map[string]*sync.Mutex // per volume UUID
}

func (v *volumes) lock(id string) *sync.Mutex {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.locks == nil {
		v.locks = map[string]*sync.Mutex{}
	}
	l, ok := v.locks[id]
	if !ok {
		l = &sync.Mutex{}
		v.locks[id] = l
	}
	return l
}

func badSpec(format string, a ...any) error {
	return fault.New(fault.InvalidArgument, CodeVolumeBadSpec, fmt.Sprintf(format, a...), "")
}

func volumeNotFound(ref string) error {
	return fault.New(fault.NotFound, CodeVolumeNotFound, fmt.Sprintf("volume %q does not exist", ref),
		"list the volumes with `nexctl volume list`")
}

// validateSpec checks a create request against the system's members;
// it changes nothing.
func validateSpec(spec *mgmtv1.VolumeSpec, members []*Member) error {
	if spec == nil {
		return badSpec("volume create: no spec")
	}
	if !volumeNameRE.MatchString(spec.Name) {
		return fault.New(fault.InvalidArgument, CodeVolumeBadSpec,
			fmt.Sprintf("volume name %q is not valid", spec.Name),
			"use 1-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit")
	}
	if spec.Uuid != "" {
		if _, err := uuid.Parse(spec.Uuid); err != nil {
			return fault.New(fault.InvalidArgument, CodeVolumeBadSpec, fmt.Sprintf("volume %s: %q is not a UUID", spec.Name, spec.Uuid),
				"leave --uuid out to generate one")
		}
	}
	if spec.Size == 0 {
		return fault.New(fault.InvalidArgument, CodeVolumeBadSpec, fmt.Sprintf("volume %s: size 0", spec.Name),
			"give a size such as --size 10GiB")
	}
	if spec.Size%VolumeBlockSize != 0 {
		up := (spec.Size + VolumeBlockSize - 1) / VolumeBlockSize * VolumeBlockSize
		return fault.New(fault.InvalidArgument, CodeVolumeBadSpec,
			fmt.Sprintf("volume %s: size %d is not a multiple of %d bytes", spec.Name, spec.Size, VolumeBlockSize),
			fmt.Sprintf("use --size %s", units.FormatSizeExact(int64(up))))
	}
	if spec.Replicas == 0 {
		return fault.New(fault.InvalidArgument, CodeVolumeBadSpec, fmt.Sprintf("volume %s: 0 replicas", spec.Name),
			"give --replicas 1 or more (3 survives two node failures)")
	}
	if spec.Replicas > uint32(len(members)) {
		return fault.New(fault.InvalidArgument, CodeVolumeBadSpec,
			fmt.Sprintf("volume %s: %d replicas need %d nodes, and the system has %d", spec.Name, spec.Replicas, spec.Replicas, len(members)),
			fmt.Sprintf("give --replicas %d or fewer, or add nodes", max(len(members), 1)))
	}
	switch spec.Protocol {
	case "", "nvmf", "nbd":
	default:
		return fault.New(fault.InvalidArgument, CodeVolumeBadSpec, fmt.Sprintf("volume %s: protocol %q", spec.Name, spec.Protocol),
			"use --protocol nvmf or --protocol nbd")
	}
	keys := map[string]bool{}
	for _, m := range members {
		for k := range m.Labels {
			keys[k] = true
		}
	}
	for k := range spec.GetPlacement().GetNodeSelector() {
		if !keys[k] {
			known := slices.Sorted(maps.Keys(keys))
			hint := "no node declares labels; set `labels` in the nodes' server.yaml"
			if len(known) > 0 {
				hint = "node label keys in this system: " + strings.Join(known, ", ")
			}
			return fault.New(fault.InvalidArgument, CodeVolumeBadSpec,
				fmt.Sprintf("volume %s: selector key %q is not a label of any node", spec.Name, k), hint)
		}
	}
	return nil
}

// sameSpec names the first difference between a request and an existing
// volume ("" when they match).
func sameSpec(spec *mgmtv1.VolumeSpec, v *volumeRecord) string {
	proto := spec.Protocol
	if proto == "" {
		proto = "nvmf"
	}
	switch {
	case spec.Uuid != "" && spec.Uuid != v.UUID:
		return fmt.Sprintf("uuid %s, not %s", v.UUID, spec.Uuid)
	case spec.Size != v.Size:
		return fmt.Sprintf("size %s, not %s", units.FormatSizeExact(int64(v.Size)), units.FormatSizeExact(int64(spec.Size)))
	case int(spec.Replicas) != v.Replicas:
		return fmt.Sprintf("%d replicas, not %d", v.Replicas, spec.Replicas)
	case spec.Thin != v.Thin:
		return fmt.Sprintf("thin=%v, not %v", v.Thin, spec.Thin)
	case proto != v.Protocol:
		return fmt.Sprintf("protocol %s, not %s", v.Protocol, proto)
	case !maps.Equal(spec.GetPlacement().GetNodeSelector(), v.NodeSelector) && len(spec.GetPlacement().GetNodeSelector())+len(v.NodeSelector) > 0:
		return "another node selector"
	case !maps.Equal(spec.GetPlacement().GetPoolSelector(), v.PoolSelector) && len(spec.GetPlacement().GetPoolSelector())+len(v.PoolSelector) > 0:
		return "another pool selector"
	case spec.FromSnapshot != v.FromSnapshot:
		return fmt.Sprintf("content from snapshot %q, not %q", v.FromSnapshot, spec.FromSnapshot)
	}
	return ""
}

// memberIndex finds members by UUID.
func memberIndex(members []*Member) map[string]*Member {
	out := make(map[string]*Member, len(members))
	for _, m := range members {
		out[m.UUID] = m
	}
	return out
}

// resolveNode finds a member by name, rank, UUID or address.
func resolveNode(members []*Member, ref string) (*Member, error) {
	for _, m := range members {
		if m.DisplayName() == ref || m.UUID == ref || m.Address == ref {
			return m, nil
		}
	}
	if r, err := strconv.ParseUint(ref, 10, 32); err == nil {
		for _, m := range members {
			if m.Rank == uint32(r) {
				return m, nil
			}
		}
	}
	names := make([]string, 0, len(members))
	for _, m := range members {
		names = append(names, m.DisplayName())
	}
	return nil, fault.New(fault.NotFound, CodeVolumeUnknownNode, fmt.Sprintf("node %q is not a member of the system", ref),
		"give a node name, rank or UUID from `nexctl node list`: "+strings.Join(names, ", "))
}

// alive reports whether the leader may expect a member's engine to
// answer: joined and heartbeating.
func alive(m *Member) bool { return m != nil && m.State == StateJoined }

// schedNodes turns members into scheduler input, with pools read fresh
// from every live engine (falling back to the last report when the engine
// does not answer).
func (s *Service) schedNodes(ctx context.Context, members []*Member, vols []*volumeRecord) []scheduler.Node {
	nexuses := map[string]int{}
	for _, v := range vols {
		if v.Target != nil {
			nexuses[v.Target.Node]++
		}
	}
	out := make([]scheduler.Node, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		out[i] = scheduler.Node{UUID: m.UUID, Name: m.DisplayName(), Rank: m.Rank, State: string(m.State), Cordoned: m.Cordoned,
			FaultDomain: m.FaultDomain, Labels: m.Labels, Nexuses: nexuses[m.UUID]}
		if !alive(m) {
			continue
		}
		wg.Add(1)
		go func(n *scheduler.Node, m *Member) {
			defer wg.Done()
			reported, _ := s.reports.get(m.UUID)
			labels := map[string]map[string]string{}
			for _, p := range reported {
				labels[p.Name] = p.Labels
			}
			cctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			var pools []*enginev1.Pool
			if c, err := s.vols.eng.get(m.Address); err == nil {
				if resp, err := c.ListPools(cctx, &enginev1.ListPoolsRequest{}); err == nil {
					pools = resp.Pools
				}
			}
			if pools == nil {
				for _, p := range reported {
					n.Pools = append(n.Pools, scheduler.Pool{Name: p.Name, UUID: p.Uuid, State: p.State, Capacity: p.Capacity,
						Free: p.Free, Committed: p.Committed, OvercommitPercent: p.OvercommitPercent, ClusterSize: p.ClusterSize,
						Labels: p.Labels, Replicas: int(p.Replicas)})
				}
				return
			}
			for _, p := range pools {
				st := "faulted"
				if p.State == enginev1.PoolState_POOL_STATE_ONLINE {
					st = "online"
				}
				n.Pools = append(n.Pools, scheduler.Pool{Name: p.Name, UUID: p.Uuid, State: st, Capacity: p.Capacity,
					Free: p.FreeClusters * p.ClusterSize, Committed: p.Committed, OvercommitPercent: p.OvercommitPercent,
					ClusterSize: p.ClusterSize, Labels: labels[p.Name], Replicas: int(p.ReplicaCount)})
			}
		}(&out[i], m)
	}
	wg.Wait()
	return out
}

func roundUp(n, to uint64) uint64 {
	if to <= 1 {
		return n
	}
	return (n + to - 1) / to * to
}

// createVolume places and creates a volume; see VolumeService.CreateVolume.
func (s *Service) createVolume(ctx context.Context, spec *mgmtv1.VolumeSpec) (*volumeRecord, error) {
	if err := s.requireLeader(ctx); err != nil {
		return nil, err
	}
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	var snap *snapshotRecord
	if spec != nil && spec.FromSnapshot != "" {
		// A restore: the volume's size and thinness are the snapshot's.
		spec = proto.Clone(spec).(*mgmtv1.VolumeSpec)
		if snap, err = s.resolveSnapshot(ctx, spec.FromSnapshot); err != nil {
			// A repeated create of a volume restored from a snapshot
			// deleted since finds the volume.
			ex, gerr := s.getVolume(ctx, spec.Name)
			if gerr != nil || ex == nil || ex.FromSnapshot == "" || ex.FromSnapshot != strings.ToLower(spec.FromSnapshot) {
				return nil, err
			}
			spec.FromSnapshot, spec.Thin = ex.FromSnapshot, true
			if spec.Size == 0 {
				spec.Size = ex.Size
			}
		} else {
			spec.FromSnapshot, spec.Thin = snap.UUID, true
			if spec.Size == 0 {
				spec.Size = snap.Size
			}
		}
	}
	if err := validateSpec(spec, members); err != nil {
		return nil, err
	}
	s.vols.placeMu.Lock()
	defer s.vols.placeMu.Unlock()
	if v, err := s.getVolume(ctx, spec.Name); err != nil {
		return nil, err
	} else if v != nil {
		if d := sameSpec(spec, v); d != "" {
			return nil, fault.New(fault.AlreadyExists, CodeVolumeExists, fmt.Sprintf("volume %s exists with %s", spec.Name, d),
				"choose another name, or delete the volume first")
		}
		if v.Status == volDeleting {
			return nil, fault.New(fault.FailedPrecondition, CodeVolumeState, fmt.Sprintf("volume %s is being deleted", spec.Name),
				"wait until `nexctl volume get` no longer finds it, then create it again")
		}
		if v.Op != nil && v.Op.Kind == opCreate {
			// An earlier create of the same spec did not finish: finish it.
			return v, s.finishCreate(ctx, v)
		}
		return v, nil
	}
	vols, err := s.listVolumes(ctx)
	if err != nil {
		return nil, err
	}
	if spec.Uuid != "" {
		for _, v := range vols {
			if v.UUID == spec.Uuid {
				return nil, fault.New(fault.AlreadyExists, CodeVolumeExists, fmt.Sprintf("UUID %s belongs to volume %s", v.UUID, v.Name),
					"leave --uuid out to generate one")
			}
		}
	}
	if snap != nil {
		return s.createRestored(ctx, spec, memberIndex(members))
	}
	nodes := s.schedNodes(ctx, members, vols)
	req := scheduler.Request{Size: spec.Size, Replicas: int(spec.Replicas), Thin: spec.Thin,
		NodeSelector: spec.GetPlacement().GetNodeSelector(), PoolSelector: spec.GetPlacement().GetPoolSelector()}
	choices, err := scheduler.Place(req, nodes)
	if err != nil {
		var np *scheduler.NotPlaceableError
		if errors.As(err, &np) {
			return nil, fault.New(fault.FailedPrecondition, CodeVolumeNotPlaceable,
				fmt.Sprintf("volume %s cannot be placed: %v", spec.Name, err),
				"add nodes or pools, free space, relax the selectors, or ask for fewer replicas")
		}
		return nil, badSpec("volume %s: %v", spec.Name, err)
	}
	id := spec.Uuid
	if id == "" {
		id = uuid.NewString()
	}
	proto := spec.Protocol
	if proto == "" {
		proto = "nvmf"
	}
	v := &volumeRecord{UUID: id, Name: spec.Name, Size: spec.Size, Replicas: int(spec.Replicas), Thin: spec.Thin, Protocol: proto,
		NodeSelector: spec.GetPlacement().GetNodeSelector(), PoolSelector: spec.GetPlacement().GetPoolSelector(),
		Status: volCreating, CreatedMs: s.nowMs(), Op: &volumeOp{Kind: opCreate, StartedMs: s.nowMs()}}
	for _, c := range choices {
		cluster := uint64(1)
		for _, n := range nodes {
			if n.UUID == c.NodeUUID {
				for _, p := range n.Pools {
					if p.Name == c.Pool {
						cluster = p.ClusterSize
					}
				}
			}
		}
		v.ReplicaSet = append(v.ReplicaSet, replicaRef{UUID: uuid.NewString(), Node: c.NodeUUID, Pool: c.Pool, Size: roundUp(spec.Size, cluster)})
	}
	ok, err := s.createVolumeRecord(ctx, v)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fault.New(fault.AlreadyExists, CodeVolumeExists, fmt.Sprintf("volume %s was created by another call", spec.Name),
			"get it with `nexctl volume get`")
	}
	s.log.Info("volume placed", "volume", v.Name, "uuid", v.UUID, "replicas", len(v.ReplicaSet))
	return v, s.finishCreate(ctx, v)
}

// createRestored records and creates a volume whose replicas are clones
// of a snapshot's copies (see restorePlan); the caller holds placeMu and
// has checked that no volume has the name.
func (s *Service) createRestored(ctx context.Context, spec *mgmtv1.VolumeSpec, idx map[string]*Member) (*volumeRecord, error) {
	snap, refs, err := s.restorePlan(ctx, spec, idx)
	if err != nil {
		return nil, err
	}
	id := spec.Uuid
	if id == "" {
		id = uuid.NewString()
	}
	protocol := spec.Protocol
	if protocol == "" {
		protocol = "nvmf"
	}
	v := &volumeRecord{UUID: id, Name: spec.Name, Size: spec.Size, Replicas: int(spec.Replicas), Thin: true, Protocol: protocol,
		NodeSelector: spec.GetPlacement().GetNodeSelector(), PoolSelector: spec.GetPlacement().GetPoolSelector(),
		Status: volCreating, CreatedMs: s.nowMs(), Op: &volumeOp{Kind: opCreate, StartedMs: s.nowMs()},
		ReplicaSet: refs, FromSnapshot: snap.UUID}
	ok, err := s.createVolumeRecord(ctx, v)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fault.New(fault.AlreadyExists, CodeVolumeExists, fmt.Sprintf("volume %s was created by another call", spec.Name),
			"get it with `nexctl volume get`")
	}
	s.log.Info("volume restored from a snapshot", "volume", v.Name, "snapshot", snap.Name, "of", snap.VolumeName,
		"clones", len(refs), "replicas", v.Replicas)
	return v, s.finishCreate(ctx, v)
}

// finishCreate creates the replicas of a volume whose create is recorded,
// then marks it created. When a replica cannot be created, the volume is
// rolled back: it turns deleting and its replicas are destroyed (now, or
// when their nodes return).
func (s *Service) finishCreate(ctx context.Context, v *volumeRecord) error {
	l := s.vols.lock(v.UUID)
	l.Lock()
	defer l.Unlock()
	// Another call or the leader's pass may have finished or rolled back
	// the create while this one waited for the lock.
	cur, err := s.getVolumeByUUID(ctx, v.UUID)
	if err != nil {
		return err
	}
	if cur == nil || cur.Op == nil || cur.Op.Kind != opCreate {
		if cur == nil || cur.Status != volCreated {
			return fault.New(fault.Aborted, CodeVolumeConflict, fmt.Sprintf("volume %s was rolled back while its create waited", v.Name),
				"create it again")
		}
		*v = *cur
		return nil
	}
	*v = *cur
	return s.finishCreateLocked(ctx, v)
}

func (s *Service) finishCreateLocked(ctx context.Context, v *volumeRecord) error {
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return err
	}
	idx := memberIndex(members)
	errs := make([]error, len(v.ReplicaSet))
	var wg sync.WaitGroup
	for i, r := range v.ReplicaSet {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.createReplica(ctx, idx[r.Node], v, r)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		s.log.Warn("volume create failed: rolling back", "volume", v.Name, "err", err)
		v.Status, v.Op = volDeleting, &volumeOp{Kind: opDelete, StartedMs: s.nowMs()}
		if perr := s.putVolume(ctx, v); perr != nil {
			return errors.Join(err, perr)
		}
		if _, derr := s.finishDelete(ctx, v); derr != nil {
			s.log.Warn("volume rollback incomplete: retried in the background", "volume", v.Name, "err", derr)
		}
		return fmt.Errorf("volume %s: creating its replicas failed, and the volume was rolled back: %w", v.Name, err)
	}
	if v.FromSnapshot != "" {
		if err := s.seedRestoredHealth(ctx, v); err != nil {
			return err
		}
	}
	v.Status, v.Op = volCreated, nil
	if err := s.putVolume(ctx, v); err != nil {
		return err
	}
	s.log.Info("volume created", "volume", v.Name, "uuid", v.UUID)
	s.enqueue(v.UUID)
	return nil
}

func (s *Service) createReplica(ctx context.Context, m *Member, v *volumeRecord, r replicaRef) error {
	c, err := s.engineOf(m, r.Node)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
	defer cancel()
	if r.CloneOf != "" {
		sc, err := snapshotsOf(c, m)
		if err != nil {
			return err
		}
		if _, err := sc.CloneSnapshot(cctx, &enginev1.CloneSnapshotRequest{SnapshotUuid: r.CloneOf, Uuid: r.UUID, Name: r.UUID, Owner: v.UUID}); err != nil {
			return fmt.Errorf("clone of snapshot %s on %s: %w", r.CloneOf, m.DisplayName(), err)
		}
		return nil
	}
	_, err = c.CreateReplica(cctx, &enginev1.CreateReplicaRequest{Name: r.UUID, Uuid: r.UUID, Pool: r.Pool, Size: r.Size,
		Thin: v.Thin, Owner: v.UUID})
	if err != nil {
		return fmt.Errorf("replica on %s pool %s: %w", m.DisplayName(), r.Pool, err)
	}
	return nil
}

func nodeDown(m *Member, id string) error {
	if m == nil {
		return fault.New(fault.Unavailable, CodeVolumeNodeDown, fmt.Sprintf("node %s is no longer a member", id), "")
	}
	return fault.New(fault.Unavailable, CodeVolumeNodeDown, fmt.Sprintf("node %s (rank %d) is %s", m.DisplayName(), m.Rank, m.State),
		"start the node, or wait until it is joined again")
}

// finishDelete removes what is left of a deleting volume: its nexus, the
// nexuses left on nodes that were down, and its replicas, each destroyed
// only as the volume's own (the engine refuses a replica another owner
// holds). Replicas on nodes that do not answer stay in the record and are
// retried by the leader's background pass; once nothing is left the record
// goes. It returns the nodes still pending.
func (s *Service) finishDelete(ctx context.Context, v *volumeRecord) ([]string, error) {
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	idx := memberIndex(members)
	var pending []string
	var errs []error
	targets := slices.Clone(v.StaleTargets)
	if v.Target != nil {
		targets = append(targets, v.Target.Node)
	}
	var stale []string
	for _, node := range slices.Compact(slices.Sorted(slices.Values(targets))) {
		if err := s.destroyNexus(ctx, idx[node], v); err != nil {
			stale = append(stale, node)
			pending = append(pending, nodeName(idx, node)+" (nexus)")
			errs = append(errs, err)
		}
	}
	var left, retired []replicaRef
	for _, r := range v.ReplicaSet {
		if err := s.destroyReplica(ctx, idx[r.Node], v, r); err != nil {
			left = append(left, r)
			pending = append(pending, nodeName(idx, r.Node)+" (replica "+r.UUID+")")
			errs = append(errs, err)
		}
	}
	for _, r := range v.Retired {
		if err := s.destroyReplica(ctx, idx[r.Node], v, r); err != nil {
			retired = append(retired, r)
			pending = append(pending, nodeName(idx, r.Node)+" (replica "+r.UUID+")")
			errs = append(errs, err)
		}
	}
	// Only a node that is down is pending; any other refusal (an engine
	// that will not destroy what the volume does not own) is an error for
	// a person to look at.
	var other []error
	for _, e := range errs {
		if fault.CodeOf(e) != CodeVolumeNodeDown && !unreachable(e) {
			other = append(other, e)
		}
	}
	errs = other
	v.Target, v.StaleTargets, v.ReplicaSet, v.Retired = nil, stale, left, retired
	if len(left) == 0 && len(stale) == 0 && len(retired) == 0 {
		if err := s.removeVolumeRecord(ctx, v); err != nil {
			return pending, err
		}
		s.log.Info("volume deleted", "volume", v.Name, "uuid", v.UUID)
		return nil, nil
	}
	if err := s.putVolume(ctx, v); err != nil {
		return pending, err
	}
	return pending, errors.Join(errs...)
}

func nodeName(idx map[string]*Member, id string) string {
	if m := idx[id]; m != nil {
		return m.DisplayName()
	}
	return id
}

// destroyNexus destroys the volume's nexus on a node; a nexus that is not
// there is gone already.
func (s *Service) destroyNexus(ctx context.Context, m *Member, v *volumeRecord) error {
	if m == nil {
		return nil // the member was removed: so was its engine
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
		return nil // another volume's nexus of that name (the volume was recreated): not ours
	}
	if _, err := c.DestroyNexus(cctx, &enginev1.DestroyNexusRequest{Name: v.Name}); err != nil && !notFound(err) {
		return fmt.Errorf("destroy the nexus of volume %s on %s: %w", v.Name, m.DisplayName(), err)
	}
	return nil
}

// destroyReplica destroys one replica of the volume as its owner: never
// with force, so a replica another owner holds is refused by the engine.
func (s *Service) destroyReplica(ctx context.Context, m *Member, v *volumeRecord, r replicaRef) error {
	// The volume's replicas are named by their UUIDs.
	return s.destroyReplicaNamed(ctx, m, v.UUID, r.UUID, r.Node)
}

// destroyReplicaNamed destroys the replica of that engine name as owner
// (node names the member when m is nil); a replica that is not there is
// gone already.
func (s *Service) destroyReplicaNamed(ctx context.Context, m *Member, owner, name, node string) error {
	if m == nil {
		return nil
	}
	c, err := s.engineOf(m, node)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
	defer cancel()
	if _, err := c.UnshareReplica(cctx, &enginev1.UnshareReplicaRequest{Name: name, Owner: owner}); err != nil && !notFound(err) {
		return fmt.Errorf("unshare replica %s on %s: %w", name, m.DisplayName(), err)
	}
	if _, err := c.DestroyReplica(cctx, &enginev1.DestroyReplicaRequest{Name: name, Owner: owner}); err != nil && !notFound(err) {
		return fmt.Errorf("destroy replica %s on %s: %w", name, m.DisplayName(), err)
	}
	return nil
}

// deleteVolume implements VolumeService.DeleteVolume.
func (s *Service) deleteVolume(ctx context.Context, ref string, force bool) ([]string, error) {
	if err := s.requireLeader(ctx); err != nil {
		return nil, err
	}
	v, err := s.getVolume(ctx, ref)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, volumeNotFound(ref)
	}
	l := s.vols.lock(v.UUID)
	l.Lock()
	defer l.Unlock()
	if v, err = s.getVolumeByUUID(ctx, v.UUID); err != nil || v == nil {
		if v == nil && err == nil {
			return nil, volumeNotFound(ref)
		}
		return nil, err
	}
	if v.Target != nil && !force && v.Status != volDeleting {
		return nil, fault.New(fault.FailedPrecondition, CodeVolumePublished,
			fmt.Sprintf("volume %s is published (%s); deleting it would cut off its users", v.Name, v.Target.URI),
			fmt.Sprintf("unpublish it first (`nexctl volume unpublish %s`), or pass --force", v.Name))
	}
	// A delete overrides an operation left unfinished (this call holds
	// the volume's lock, so none is running): a half-done publish may have
	// left a nexus on its node, which the delete removes too.
	if v.Op != nil && (v.Op.Kind == opPublish || v.Op.Kind == opMove) && !slices.Contains(v.StaleTargets, v.Op.Node) {
		v.StaleTargets = append(v.StaleTargets, v.Op.Node)
	}
	// A move may have left the old nexus (inaccessible) where it was.
	if v.Op != nil && v.Op.Kind == opMove && v.Op.From != "" && !slices.Contains(v.StaleTargets, v.Op.From) {
		v.StaleTargets = append(v.StaleTargets, v.Op.From)
	}
	v.Status, v.Op = volDeleting, &volumeOp{Kind: opDelete, StartedMs: s.nowMs()}
	if err := s.putVolume(ctx, v); err != nil {
		return nil, err
	}
	pending, err := s.finishDelete(ctx, v)
	if err != nil {
		return pending, err
	}
	if len(pending) > 0 {
		s.log.Warn("volume delete pending on nodes that are down", "volume", v.Name, "pending", pending)
	}
	return pending, nil
}

func busy(v *volumeRecord) error {
	return fault.New(fault.Unavailable, CodeVolumeBusy, fmt.Sprintf("volume %s: a %s is under way", v.Name, v.Op.Kind),
		"retry when it has finished")
}

// lockVolume reads a volume under its operation lock; the caller unlocks.
func (s *Service) lockVolume(ctx context.Context, ref string) (*volumeRecord, func(), error) {
	if err := s.requireLeader(ctx); err != nil {
		return nil, nil, err
	}
	v, err := s.getVolume(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	if v == nil {
		return nil, nil, volumeNotFound(ref)
	}
	l := s.vols.lock(v.UUID)
	l.Lock()
	if v, err = s.getVolumeByUUID(ctx, v.UUID); err != nil || v == nil {
		l.Unlock()
		if err == nil {
			err = volumeNotFound(ref)
		}
		return nil, nil, err
	}
	return v, l.Unlock, nil
}

// publishVolume implements VolumeService.PublishVolume.
func (s *Service) publishVolume(ctx context.Context, req *mgmtv1.PublishVolumeRequest) (*volumeRecord, error) {
	switch req.Protocol {
	case "", "nvmf", "nbd":
	default:
		return nil, badSpec("volume %s: protocol %q: use nvmf or nbd", req.Name, req.Protocol)
	}
	v, unlock, err := s.lockVolume(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if v.Status != volCreated {
		return nil, fault.New(fault.FailedPrecondition, CodeVolumeState, fmt.Sprintf("volume %s is %s", v.Name, v.Status),
			"publish it once it is created")
	}
	if v.Op != nil {
		return nil, busy(v)
	}
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	idx := memberIndex(members)
	var want *Member
	if req.Node != "" {
		if want, err = resolveNode(members, req.Node); err != nil {
			return nil, err
		}
	}
	protocol := req.Protocol
	if protocol == "" {
		protocol = v.Protocol
	}
	if v.Target != nil {
		// A 1-replica volume's nexus is always on its replica's node,
		// whatever node was asked for: asking again is the same publish.
		pinned := len(v.ReplicaSet) == 1 && v.ReplicaSet[0].Node == v.Target.Node
		if (want == nil || want.UUID == v.Target.Node || pinned) && protocol == v.Target.Protocol &&
			sameStrings(req.HostNqns, v.Target.HostNQNs) {
			return v, nil
		}
		return nil, fault.New(fault.FailedPrecondition, CodeVolumePublished,
			fmt.Sprintf("volume %s is published on %s over %s (%s)", v.Name, nodeName(idx, v.Target.Node), v.Target.Protocol, v.Target.URI),
			fmt.Sprintf("unpublish it first (`nexctl volume unpublish %s`)", v.Name))
	}
	if protocol == "nbd" && len(req.HostNqns) > 0 {
		return nil, badSpec("volume %s: --host-nqn restricts NVMe hosts; NBD clients carry no identity: leave it out for nbd", v.Name)
	}
	vols, err := s.listVolumes(ctx)
	if err != nil {
		return nil, err
	}
	var replicaNodes []string
	for _, r := range v.ReplicaSet {
		replicaNodes = append(replicaNodes, r.Node)
	}
	nodes := make([]scheduler.Node, 0, len(members))
	nexuses := map[string]int{}
	for _, x := range vols {
		if x.Target != nil {
			nexuses[x.Target.Node]++
		}
	}
	for _, m := range members {
		nodes = append(nodes, scheduler.Node{UUID: m.UUID, Name: m.DisplayName(), Rank: m.Rank, State: string(m.State),
			Cordoned: m.Cordoned, FaultDomain: m.FaultDomain, Labels: m.Labels, Nexuses: nexuses[m.UUID]})
	}
	pref := ""
	if want != nil {
		pref = want.UUID
	}
	choice, passed, err := scheduler.PlaceNexus(pref, replicaNodes, nodes)
	if err != nil {
		return nil, fault.New(fault.FailedPrecondition, CodeVolumeNotPlaceable, fmt.Sprintf("volume %s: no node can host its nexus: %v", v.Name, err),
			"start the volume's nodes, or uncordon one")
	}
	for _, r := range passed {
		s.log.Info("nexus placement", "volume", v.Name, "node", r.Node, "passed over", r.Reason)
	}
	node := idx[choice.NodeUUID]
	v.Op = &volumeOp{Kind: opPublish, Node: node.UUID, Protocol: protocol, HostNQNs: req.HostNqns, StartedMs: s.nowMs()}
	if err := s.putVolume(ctx, v); err != nil {
		return nil, err
	}
	t, err := s.realizePublish(ctx, v, idx)
	if err != nil {
		s.log.Warn("volume publish failed: rolling back", "volume", v.Name, "node", node.DisplayName(), "err", err)
		s.rollbackPublish(ctx, v, idx)
		v.Op = nil
		if perr := s.putVolume(ctx, v); perr != nil {
			return nil, errors.Join(err, perr)
		}
		return nil, err
	}
	v.Target, v.Op = t, nil
	if err := s.putVolume(ctx, v); err != nil {
		return nil, err
	}
	s.log.Info("volume published", "volume", v.Name, "node", node.DisplayName(), "uri", t.URI)
	s.enqueue(v.UUID) // a degraded publish is repaired from here on
	return v, nil
}

func sameStrings(a, b []string) bool {
	return slices.Equal(slices.Compact(slices.Sorted(slices.Values(a))), slices.Compact(slices.Sorted(slices.Values(b))))
}

// realizePublish does the side effects of a recorded publish: share the
// remote replicas to the nexus node's host NQN only, create the nexus with
// the system health store, export it. Every step is idempotent, so a new
// leader may run it again.
func (s *Service) realizePublish(ctx context.Context, v *volumeRecord, idx map[string]*Member) (*targetRef, error) {
	op := v.Op
	node := idx[op.Node]
	if !alive(node) {
		return nil, nodeDown(node, op.Node)
	}
	// The health record says which replicas are current: only those (and
	// offline ones, which the nexus resyncs from their bitmaps) may be
	// children of the new nexus; the others are added back with a full
	// rebuild once it serves. A replica created again since the record
	// admitted it (the engines' lists name its identity) is not current,
	// whatever the record says: the nexus would refuse it.
	nodes := map[string]bool{}
	for _, r := range v.ReplicaSet {
		nodes[r.Node] = true
	}
	views := s.observe(ctx, idx, nodes)
	recorded, err := s.recordedChildren(ctx, v.UUID, views)
	if err != nil {
		return nil, err
	}
	// A replica its engine does not list is left out like one whose node
	// is down (its pool may not be imported yet, or it is lost): the
	// nexus starts without it, and the reconcilers wait for it or replace
	// it. Failing on it, or on a replica created again, would hold up for
	// good a move, which only rolls forward, and during which the
	// volume's reconciler replaces nothing.
	var children, rebuild, skipped []string
	for _, r := range v.ReplicaSet {
		if nv := views[r.Node]; nv != nil && nv.err == nil && nv.replicas[r.UUID] == nil {
			skipped = append(skipped, fmt.Sprintf("replica %s is not on %s", r.UUID, nodeName(idx, r.Node)))
			continue
		}
		var uri string
		if r.Node == node.UUID {
			uri = "bdev:///" + r.UUID
		} else {
			m := idx[r.Node]
			if !alive(m) {
				skipped = append(skipped, fmt.Sprintf("node %s is %s", nodeName(idx, r.Node), stateOf(m)))
				continue
			}
			if node.HostNQN == "" {
				return nil, fault.New(fault.FailedPrecondition, CodeVolumeState,
					fmt.Sprintf("volume %s: node %s reported no NVMe host NQN, so its nexus's remote replicas could not be shared to it alone", v.Name, node.DisplayName()),
					"restart that node's server so that it rejoins with its host NQN, or publish on another node")
			}
			if uri, err = s.shareReplica(ctx, m, v, r, node.HostNQN); notFound(err) {
				skipped = append(skipped, fmt.Sprintf("replica %s is not on %s", r.UUID, m.DisplayName()))
				continue
			} else if err != nil {
				return nil, err
			}
		}
		if st, ok := recorded[r.UUID]; recorded == nil || (ok && (st == "online" || st == "offline")) {
			children = append(children, uri)
		} else {
			rebuild = append(rebuild, uri)
		}
	}
	if len(children) == 0 {
		return nil, fault.New(fault.Unavailable, CodeVolumeNodeDown,
			fmt.Sprintf("volume %s: no replica recorded current is reachable (%s)", v.Name, strings.Join(skipped, "; ")),
			"start the nodes of the volume's current replicas; the others cannot be trusted alone")
	}
	c, err := s.vols.eng.get(node.Address)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
	defer cancel()
	n, err := c.GetNexus(cctx, &enginev1.GetNexusRequest{Name: v.Name})
	if err == nil && n.Uuid == v.UUID && (slices.Contains(v.StaleTargets, node.UUID) || n.State == enginev1.NexusState_NEXUS_STATE_FAULTED) {
		// An instance left from an earlier publish (its node was down
		// when the volume was unpublished, or its engine restored it
		// faulted, refused its record): fenced by now, never reused; a
		// faulted one would refuse the export at every try.
		if _, err = c.DestroyNexus(cctx, &enginev1.DestroyNexusRequest{Name: v.Name}); err != nil {
			return nil, fmt.Errorf("remove the stale nexus of volume %s on %s: %w", v.Name, node.DisplayName(), err)
		}
		v.StaleTargets = slices.DeleteFunc(v.StaleTargets, func(x string) bool { return x == node.UUID })
		_, err = c.GetNexus(cctx, &enginev1.GetNexusRequest{Name: v.Name})
	}
	switch {
	case notFound(err):
		n, err = c.CreateNexus(cctx, &enginev1.CreateNexusRequest{Name: v.Name, Uuid: v.UUID, Size: v.Size, Children: children,
			HealthStore: HealthStoreSystem, AllowDegraded: len(skipped) > 0})
		if err != nil {
			return nil, fmt.Errorf("create the nexus of volume %s on %s: %w", v.Name, node.DisplayName(), err)
		}
		for _, uri := range rebuild {
			if _, err := c.AddChild(cctx, &enginev1.ChildRequest{Nexus: v.Name, Child: uri}); err != nil {
				// The volume serves degraded, and says so.
				s.log.Warn("publish: a replica not recorded current could not be added for rebuild", "volume", v.Name, "child", uri, "err", err)
			}
		}
	case err != nil:
		return nil, fmt.Errorf("nexus of volume %s on %s: %w", v.Name, node.DisplayName(), err)
	case n.Uuid != v.UUID:
		return nil, fault.New(fault.AlreadyExists, CodeVolumeExists,
			fmt.Sprintf("node %s has another nexus named %s (uuid %s)", node.DisplayName(), v.Name, n.Uuid),
			"destroy that nexus on the node, or publish the volume elsewhere")
	}
	pub := &enginev1.PublishNexusRequest{Name: v.Name, Protocol: op.Protocol, AllowedHosts: op.HostNQNs}
	if op.Protocol != "nbd" {
		// The node's own controller ID range, so that a host may hold a
		// path to this node and to another (during a move) at once; and
		// optimized, whatever state an earlier instance left.
		pub.MinCntlid, pub.MaxCntlid = cntlidRange(node.Rank)
		pub.AnaState = enginev1.AnaState_ANA_STATE_OPTIMIZED
	}
	n, err = c.PublishNexus(cctx, pub)
	if err != nil {
		return nil, fmt.Errorf("export the nexus of volume %s on %s: %w", v.Name, node.DisplayName(), err)
	}
	t := &targetRef{Node: node.UUID, Protocol: op.Protocol, HostNQNs: op.HostNQNs}
	if n.Share != nil {
		t.URI = n.Share.Uri
		if op.Protocol == "nvmf" {
			if i := strings.LastIndex(t.URI, "/"); i >= 0 {
				t.NQN = t.URI[i+1:]
			}
		}
	}
	return t, nil
}

// shareReplica shares a remote replica over NVMe/TCP to host only and
// returns the child URI. A share for another host (an earlier nexus node)
// is replaced.
func (s *Service) shareReplica(ctx context.Context, m *Member, v *volumeRecord, r replicaRef, host string) (string, error) {
	c, err := s.vols.eng.get(m.Address)
	if err != nil {
		return "", err
	}
	cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
	defer cancel()
	var hosts []string
	if host != "" {
		hosts = []string{host}
	}
	req := &enginev1.ShareReplicaRequest{Name: r.UUID, Protocol: "nvmf", AllowedHosts: hosts}
	rep, err := c.ShareReplica(cctx, req)
	if fault.CodeOf(err) == "replica.shared" {
		if _, err = c.UnshareReplica(cctx, &enginev1.UnshareReplicaRequest{Name: r.UUID, Owner: v.UUID}); err == nil {
			rep, err = c.ShareReplica(cctx, req)
		}
	}
	if err != nil {
		return "", fmt.Errorf("share replica %s on %s: %w", r.UUID, m.DisplayName(), err)
	}
	for _, sh := range rep.Shares {
		if sh.Protocol == "nvmf" {
			return sh.Uri, nil
		}
	}
	return "", fmt.Errorf("share replica %s on %s: the engine returned no nvmf share", r.UUID, m.DisplayName())
}

// rollbackPublish undoes a publish that failed or was abandoned: the
// nexus on the op's node goes (if it is this volume's).
func (s *Service) rollbackPublish(ctx context.Context, v *volumeRecord, idx map[string]*Member) {
	if v.Op == nil {
		return
	}
	if err := s.destroyNexus(ctx, idx[v.Op.Node], v); err != nil {
		v.StaleTargets = append(v.StaleTargets, v.Op.Node)
		s.log.Warn("publish rollback: the nexus is removed when its node answers", "volume", v.Name, "err", err)
	}
}

// unpublishVolume implements VolumeService.UnpublishVolume.
func (s *Service) unpublishVolume(ctx context.Context, ref string) (*volumeRecord, error) {
	v, unlock, err := s.lockVolume(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if v.Target == nil {
		return v, nil
	}
	if v.Op != nil {
		return nil, busy(v)
	}
	v.Op = &volumeOp{Kind: opUnpublish, Node: v.Target.Node, StartedMs: s.nowMs()}
	if err := s.putVolume(ctx, v); err != nil {
		return nil, err
	}
	return v, s.finishUnpublish(ctx, v)
}

// finishUnpublish destroys the nexus; a node that is down keeps it as a
// stale target, destroyed when the node answers again (and fenced by the
// epoch of any later nexus in the meantime).
func (s *Service) finishUnpublish(ctx context.Context, v *volumeRecord) error {
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return err
	}
	idx := memberIndex(members)
	if v.Target != nil {
		if err := s.destroyNexus(ctx, idx[v.Target.Node], v); err != nil {
			s.log.Warn("unpublish: the nexus is removed when its node answers", "volume", v.Name, "err", err)
			v.StaleTargets = append(v.StaleTargets, v.Target.Node)
		}
	}
	v.Target, v.Op = nil, nil
	if err := s.putVolume(ctx, v); err != nil {
		return err
	}
	s.log.Info("volume unpublished", "volume", v.Name)
	return nil
}

// resizeVolume implements VolumeService.ResizeVolume.
func (s *Service) resizeVolume(ctx context.Context, ref string, size uint64) (*volumeRecord, error) {
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
	case size == v.Size:
		return v, nil
	case size < v.Size:
		return nil, fault.New(fault.InvalidArgument, CodeVolumeBadSpec,
			fmt.Sprintf("volume %s: %s is smaller than its size %s; volumes only grow", v.Name,
				units.FormatSizeExact(int64(size)), units.FormatSizeExact(int64(v.Size))), "give a larger size")
	case size%VolumeBlockSize != 0:
		return nil, fault.New(fault.InvalidArgument, CodeVolumeBadSpec,
			fmt.Sprintf("volume %s: size %d is not a multiple of %d bytes", v.Name, size, VolumeBlockSize),
			fmt.Sprintf("use %s", units.FormatSizeExact(int64(roundUp(size, VolumeBlockSize)))))
	}
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	idx := memberIndex(members)
	for _, r := range v.ReplicaSet {
		if !alive(idx[r.Node]) {
			return nil, fault.New(fault.Unavailable, CodeVolumeNodeDown,
				fmt.Sprintf("volume %s: the replica on %s cannot be grown: the node is down", v.Name, nodeName(idx, r.Node)),
				"start the node first; every replica grows together")
		}
	}
	v.Op = &volumeOp{Kind: opResize, Size: size, StartedMs: s.nowMs()}
	if err := s.putVolume(ctx, v); err != nil {
		return nil, err
	}
	return v, s.finishResize(ctx, v, idx)
}

// finishResize grows every replica, then the nexus, then records the
// size. On failure the size stays (replicas that grew are only larger than
// needed) and the operation is cleared.
func (s *Service) finishResize(ctx context.Context, v *volumeRecord, idx map[string]*Member) error {
	size := v.Op.Size
	// Once anything grew, the resize only rolls forward: a nexus that may
	// have grown (an error can come after it did) must never be recreated
	// at the old size under a file system that grew with it.
	grew := false
	err := func() error {
		for i, r := range v.ReplicaSet {
			m := idx[r.Node]
			c, err := s.engineOf(m, r.Node)
			if err != nil {
				return err
			}
			cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
			rep, err := c.GetReplica(cctx, &enginev1.GetReplicaRequest{Name: r.UUID})
			if err == nil && rep.Size < size {
				// Replica sizes are whole clusters of their pool.
				var p *enginev1.Pool
				if p, err = c.GetPool(cctx, &enginev1.GetPoolRequest{Name: r.Pool}); err == nil {
					grew = true // from here on, an error may come after the grow
					rep, err = c.ResizeReplica(cctx, &enginev1.ResizeReplicaRequest{Name: r.UUID, Size: roundUp(size, p.ClusterSize), Owner: v.UUID})
				}
			} else if err == nil && rep.Size >= size && v.ReplicaSet[i].Size < size {
				grew = true // grown by an earlier attempt
			}
			cancel()
			if err != nil {
				return fmt.Errorf("grow replica %s on %s: %w", r.UUID, m.DisplayName(), err)
			}
			v.ReplicaSet[i].Size = rep.Size
		}
		if v.Target != nil {
			m := idx[v.Target.Node]
			c, err := s.engineOf(m, v.Target.Node)
			if err != nil {
				return err
			}
			cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
			defer cancel()
			grew = true
			if _, err := c.ResizeNexus(cctx, &enginev1.ResizeNexusRequest{Name: v.Name, Size: size}); err != nil {
				return fmt.Errorf("grow the nexus of volume %s on %s: %w", v.Name, m.DisplayName(), err)
			}
		}
		return nil
	}()
	switch {
	case err == nil:
		v.Size, v.Op = size, nil
	case !grew:
		v.Op = nil // nothing changed: the resize simply failed
	default:
		// Kept: the leader's pass finishes it once the nodes answer.
		err = fmt.Errorf("volume %s: the resize to %s is under way and is finished in the background: %w",
			v.Name, units.FormatSizeExact(int64(size)), err)
	}
	if perr := s.putVolume(ctx, v); perr != nil {
		return errors.Join(err, perr)
	}
	if err != nil {
		return err
	}
	s.log.Info("volume resized", "volume", v.Name, "size", size)
	return nil
}

// verifyVolume implements VolumeService.VerifyVolume.
func (s *Service) verifyVolume(ctx context.Context, ref string) (*enginev1.VerifyResponse, error) {
	if err := s.requireLeader(ctx); err != nil {
		return nil, err
	}
	v, err := s.getVolume(ctx, ref)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, volumeNotFound(ref)
	}
	if v.Target == nil {
		return nil, fault.New(fault.FailedPrecondition, CodeVolumeState, fmt.Sprintf("volume %s is not published", v.Name),
			fmt.Sprintf("verify compares the replicas through the nexus: publish it first (`nexctl volume publish %s`)", v.Name))
	}
	m, err := getMember(ctx, s.cfg.Etcd, s.k, v.Target.Node)
	if err != nil {
		return nil, err
	}
	c, err := s.engineOf(m, v.Target.Node)
	if err != nil {
		return nil, err
	}
	return c.Verify(ctx, &enginev1.VerifyRequest{Nexus: v.Name})
}

// sortRefs orders replica refs by node name for stable output.
func sortRefs(rs []*mgmtv1.VolumeReplica) {
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Rank < rs[j].Rank })
}

// engineOf returns the engine client of a member that is alive, or why
// not (id names the member when m is nil).
func (s *Service) engineOf(m *Member, id string) (engineAPI, error) {
	if !alive(m) {
		return nil, nodeDown(m, id)
	}
	return s.vols.eng.get(m.Address)
}

// stateIdentityChanged is what recordedChildren reports for a replica
// that its engine lists under another identity than the one the record
// admitted: destroyed and created again under its UUID, it holds none of
// the volume's data, whatever the record says of the child.
const stateIdentityChanged = "identity-changed"

// recordedChildren reads the volume nexus's health record: the recorded
// state of each child by replica UUID (see the nexus's childKey); nil when
// there is no record yet (the volume was never published). views, when
// given, are the engines' lists: a replica created again since the record
// admitted it (another NGUID) is reported stateIdentityChanged, never
// current.
func (s *Service) recordedChildren(ctx context.Context, id string, views map[string]*nodeView) (map[string]string, error) {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.health(id))
	if err != nil {
		return nil, storeErr(err, "read the health record of volume "+id)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var rec struct {
		Children []struct {
			URI      string `json:"uri"`
			State    string `json:"state"`
			Identity string `json:"identity"` // <uuid>/<nguid>
		} `json:"children"`
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return nil, fault.Wrap(err, fault.Internal, CodeCorruptHealth, "volume "+id+": its health record is corrupt",
			"recreate the volume's nexus from a replica you trust (nexus create --source)")
	}
	listed := func(id string) *enginev1.Replica {
		for _, nv := range views {
			if nv != nil && nv.err == nil && nv.replicas[id] != nil {
				return nv.replicas[id]
			}
		}
		return nil
	}
	out := map[string]string{}
	for _, c := range rec.Children {
		id := replicaOfURI(c.URI)
		out[id] = c.State
		_, nguid, ok := strings.Cut(c.Identity, "/")
		if r := listed(id); ok && r != nil && r.Nguid != "" && !strings.EqualFold(nguid, r.Nguid) {
			out[id] = stateIdentityChanged
		}
	}
	return out, nil
}
