package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nvmf/target"
	"github.com/nexstor/nexstor/internal/units"
)

// CreateReplicaOptions describe a replica to create.
type CreateReplicaOptions struct {
	Name string
	Pool string
	Size int64 // bytes, a positive multiple of the pool's cluster size
	Thin bool  // allocate clusters on first write instead of now
	UUID string
	// Owner, when set, is the UUID of the nexus the replica is created
	// for: it is claimed for that owner (at epoch 0) in the pool record
	// that creates it, durably before CreateReplica returns, so it is
	// never unowned; only a nexus of that UUID may open it, and destroy,
	// unshare and resize need that owner (Access.Owner) or force.
	Owner string
}

// beginReplicaOp marks a replica name busy and its pool in use; the returned
// function undoes that. The replica must exist unless create is set, in which
// case it must not.
func (e *Engine) beginReplicaOp(name, poolName string, create bool) (*poolEntry, func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.checkOpenLocked(); err != nil {
		return nil, nil, err
	}
	owner, exists := e.replicas[name]
	if create {
		if exists {
			return nil, nil, fault.New(fault.AlreadyExists, "replica.exists",
				fmt.Sprintf("replica %q already exists (in pool %s)", name, owner),
				"choose another name; replica names are unique on a node")
		}
	} else {
		if !exists {
			return nil, nil, replicaNotFound(name)
		}
		poolName = owner
	}
	pe, ok := e.pools[poolName]
	if !ok {
		return nil, nil, poolNotFound(poolName)
	}
	if pe.h == nil {
		return nil, nil, poolFaulted(poolName, pe.reason)
	}
	if pe.exclusive {
		return nil, nil, busyErr(fmt.Sprintf("pool %q", poolName))
	}
	if e.busy["replica/"+name] {
		return nil, nil, busyErr(fmt.Sprintf("replica %q", name))
	}
	e.busy["replica/"+name] = true
	pe.ops++
	return pe, func() {
		delete(e.busy, "replica/"+name)
		pe.ops--
	}, nil
}

// CreateReplica creates a replica in a pool. Sizes that are not a multiple of
// the pool's cluster size are refused, as is a thick replica larger than the
// pool's free space.
func (e *Engine) CreateReplica(ctx context.Context, o CreateReplicaOptions) (ReplicaInfo, error) {
	if err := live(ctx); err != nil {
		return ReplicaInfo{}, err
	}
	if err := checkName("replica", o.Name); err != nil {
		return ReplicaInfo{}, err
	}
	if o.Pool == "" {
		return ReplicaInfo{}, fault.New(fault.InvalidArgument, "replica.pool_missing",
			fmt.Sprintf("replica %q: no pool given", o.Name), "name the pool with --pool")
	}
	if o.Size <= 0 {
		return ReplicaInfo{}, fault.New(fault.InvalidArgument, "replica.size",
			fmt.Sprintf("replica %q: size must be positive", o.Name), "give a size such as --size 1GiB")
	}
	if o.UUID != "" {
		if _, err := uuid.Parse(o.UUID); err != nil {
			return ReplicaInfo{}, fault.Wrap(err, fault.InvalidArgument, "replica.uuid",
				fmt.Sprintf("replica %q: uuid %q is invalid", o.Name, o.UUID), "give a UUID such as 9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e, or leave it out to have one generated")
		}
	}
	if o.Owner != "" {
		id, err := uuid.Parse(o.Owner)
		if err != nil || id == uuid.Nil {
			if err == nil {
				err = errors.New("the nil UUID owns nothing")
			}
			return ReplicaInfo{}, fault.Wrap(err, fault.InvalidArgument, "replica.owner",
				fmt.Sprintf("replica %q: owner %q is not a nexus UUID", o.Name, o.Owner),
				"give the UUID of the nexus that will own the replica, or leave the owner out")
		}
		o.Owner = id.String()
	}
	if o.UUID != "" {
		if ri, found, err := e.existingReplica(o); found || err != nil {
			return ri, err
		}
	}
	pe, done, err := e.beginReplicaOp(o.Name, o.Pool, true)
	if err != nil {
		return ReplicaInfo{}, err
	}
	ri, err := e.createReplica(pe, o)
	e.mu.Lock()
	done()
	if err == nil {
		e.replicas[o.Name] = pe.name
	}
	e.mu.Unlock()
	if err != nil {
		return ReplicaInfo{}, err
	}
	e.log.Info("replica created", "replica", o.Name, "pool", pe.name, "size", o.Size, "thin", o.Thin, "owner", o.Owner)
	return ri, nil
}

// existingReplica makes CreateReplica with a UUID idempotent: when a
// replica of that name or UUID exists, it returns it if it has exactly the
// spec asked for, else AlreadyExists naming the difference; found is false
// when neither exists.
func (e *Engine) existingReplica(o CreateReplicaOptions) (ReplicaInfo, bool, error) {
	all, err := e.Replicas("")
	if err != nil {
		return ReplicaInfo{}, false, err
	}
	for _, ri := range all {
		sameName, sameUUID := ri.Name == o.Name, strings.EqualFold(ri.UUID, o.UUID)
		if !sameName && !sameUUID {
			continue
		}
		var diff []string
		if !sameName {
			diff = append(diff, fmt.Sprintf("uuid %s is replica %q's", o.UUID, ri.Name))
		}
		if !sameUUID {
			diff = append(diff, "uuid "+ri.UUID)
		}
		if ri.Pool != o.Pool {
			diff = append(diff, "pool "+ri.Pool)
		}
		if ri.Size != o.Size {
			diff = append(diff, "size "+units.FormatSize(ri.Size))
		}
		if ri.Thin != o.Thin {
			diff = append(diff, map[bool]string{true: "thin", false: "thick"}[ri.Thin])
		}
		if !strings.EqualFold(ri.Owner, o.Owner) {
			if ri.Owner == "" {
				diff = append(diff, "no owner")
			} else {
				diff = append(diff, "owner "+ri.Owner)
			}
		}
		if len(diff) == 0 {
			return ri, true, nil
		}
		return ReplicaInfo{}, true, fault.New(fault.AlreadyExists, "replica.exists",
			fmt.Sprintf("replica %q exists with another spec: %s", ri.Name, strings.Join(diff, ", ")),
			"choose another name and uuid, or destroy the existing replica first")
	}
	return ReplicaInfo{}, false, nil
}

func (e *Engine) createReplica(pe *poolEntry, o CreateReplicaOptions) (ReplicaInfo, error) {
	st := pe.h.Stats()
	if st.ClusterSize > 0 && o.Size%st.ClusterSize != 0 {
		up := (o.Size/st.ClusterSize + 1) * st.ClusterSize
		return ReplicaInfo{}, fault.New(fault.InvalidArgument, "replica.size_unaligned",
			fmt.Sprintf("replica %q: size %d bytes is not a multiple of pool %q's cluster size (%s)",
				o.Name, o.Size, pe.name, units.FormatSize(st.ClusterSize)),
			fmt.Sprintf("use a multiple of %s, e.g. %s", units.FormatSizeExact(st.ClusterSize), units.FormatSizeExact(up)))
	}
	if !o.Thin && st.ClusterSize > 0 && o.Size > st.FreeClusters*st.ClusterSize {
		return ReplicaInfo{}, fault.New(fault.ResourceExhausted, "replica.no_space",
			fmt.Sprintf("replica %q: a thick replica of %s does not fit in pool %q (%s free)",
				o.Name, units.FormatSize(o.Size), pe.name, units.FormatSizeExact(st.FreeClusters*st.ClusterSize)),
			"create a smaller or a thin replica (--thin), or use another pool")
	}
	rs, err := pe.h.CreateReplica(ReplicaSpec{Name: o.Name, UUID: o.UUID, Size: o.Size, Thin: o.Thin, Owner: o.Owner})
	if err != nil {
		return ReplicaInfo{}, mapPoolErr(err, "replica", o.Name)
	}
	return replicaInfo(pe.name, rs, nil), nil
}

// Access says on whose behalf an operation on a replica acts. A replica
// owned by a nexus belongs to its mirror: destroying, unsharing or resizing
// it behind the nexus's back would lose a child or its data, so such
// operations are refused unless the caller acts for the owner or forces.
type Access struct {
	// Force acts whatever the owner; destroy also clears the owner and
	// fences the owner's handles.
	Force bool
	// Owner, when set, is the UUID of the nexus the caller acts for (the
	// control plane changing its own volume's replica).
	Owner string
}

// checkOwner refuses an operation on an owned replica that a does not
// allow, naming the owner (and the local nexus when it is one of this
// node's).
func (e *Engine) checkOwner(pe *poolEntry, name, verb string, a Access) error {
	rs, err := pe.h.ReplicaInfo(name)
	if err != nil {
		return mapPoolErr(err, "replica", name)
	}
	if rs.Owner == "" || a.Force || strings.EqualFold(rs.Owner, a.Owner) {
		return nil
	}
	owner := "nexus " + rs.Owner
	e.mu.Lock()
	for _, ne := range e.nexuses {
		if strings.EqualFold(ne.uuid, rs.Owner) {
			owner = fmt.Sprintf("nexus %q (%s) on this node", ne.name, rs.Owner)
		}
	}
	e.mu.Unlock()
	res := "remove it from that nexus first (nexctl nexus remove-child), or destroy the nexus; --force does it anyway and the nexus loses this child"
	if verb == "resize" {
		res = fmt.Sprintf("to grow the nexus's child (before resizing the nexus), act for it: --owner %s", rs.Owner)
	}
	return fault.New(fault.FailedPrecondition, "replica.owned",
		fmt.Sprintf("replica %q is a child of %s: refusing to %s it", name, owner, verb), res)
}

// DestroyReplica destroys a replica. A shared replica is refused, and an
// owned one unless a allows it (see Access).
func (e *Engine) DestroyReplica(ctx context.Context, name string, a Access) error {
	if err := live(ctx); err != nil {
		return err
	}
	pe, done, err := e.beginReplicaOp(name, "", false)
	if err != nil {
		return err
	}
	if err := e.checkOwner(pe, name, "destroy", a); err != nil {
		e.mu.Lock()
		done()
		e.mu.Unlock()
		return err
	}
	e.mu.Lock()
	ss := e.sharesOfLocked(name)
	e.mu.Unlock()
	if len(ss) > 0 {
		e.mu.Lock()
		done()
		e.mu.Unlock()
		return fault.New(fault.FailedPrecondition, "replica.shared",
			fmt.Sprintf("replica %q is shared over %s", name, ss[0].protocol),
			fmt.Sprintf("unshare it first: nexctl replica unshare %s", name))
	}
	if a.Force {
		// The owner loses the replica: its claim goes first, so that
		// its handles are fenced before the clusters are freed.
		if rs, ierr := pe.h.ReplicaInfo(name); ierr == nil && rs.Owner != "" {
			if err := pe.h.Disown(name); err != nil {
				e.mu.Lock()
				done()
				e.mu.Unlock()
				return mapPoolErr(err, "replica", name)
			}
			e.log.Warn("owned replica disowned to be destroyed (forced)", "replica", name, "owner", rs.Owner)
		}
	}
	err = pe.h.DestroyReplica(name)
	e.mu.Lock()
	done()
	if err == nil {
		delete(e.replicas, name)
	}
	e.mu.Unlock()
	if err != nil {
		return mapPoolErr(err, "replica", name)
	}
	e.log.Info("replica destroyed", "replica", name, "pool", pe.name)
	return nil
}

// DisownReplica clears the owner of a replica whose nexus, owner, is gone
// for good, so that another nexus may claim it; its epoch stays, so that
// nexus stays fenced out. owner must be the current owner: a replica that
// another nexus has claimed since is refused. An unowned replica is
// returned as it is.
func (e *Engine) DisownReplica(ctx context.Context, name, owner string) (ReplicaInfo, error) {
	if err := live(ctx); err != nil {
		return ReplicaInfo{}, err
	}
	if owner == "" {
		return ReplicaInfo{}, fault.New(fault.InvalidArgument, "replica.owner_missing",
			fmt.Sprintf("replica %q: no owner given", name), "give the UUID of the nexus that is gone (--owner), as `nexctl replica get` shows it")
	}
	pe, done, err := e.beginReplicaOp(name, "", false)
	if err != nil {
		return ReplicaInfo{}, err
	}
	defer func() {
		e.mu.Lock()
		done()
		e.mu.Unlock()
	}()
	rs, err := pe.h.ReplicaInfo(name)
	if err != nil {
		return ReplicaInfo{}, mapPoolErr(err, "replica", name)
	}
	if rs.Owner != "" {
		if err := e.checkOwner(pe, name, "disown", Access{Owner: owner}); err != nil {
			return ReplicaInfo{}, err
		}
		if err := pe.h.Disown(name); err != nil {
			return ReplicaInfo{}, mapPoolErr(err, "replica", name)
		}
		e.log.Warn("replica disowned", "replica", name, "owner", rs.Owner, "epoch", rs.Epoch)
	}
	return e.replicaInfoOf(pe, name)
}

// ResizeReplica grows a replica to size bytes (a multiple of the pool's
// cluster size). Shrinking is refused, and so is an owned replica unless a
// allows it.
func (e *Engine) ResizeReplica(ctx context.Context, name string, size int64, a Access) (ReplicaInfo, error) {
	if err := live(ctx); err != nil {
		return ReplicaInfo{}, err
	}
	pe, done, err := e.beginReplicaOp(name, "", false)
	if err != nil {
		return ReplicaInfo{}, err
	}
	defer func() {
		e.mu.Lock()
		done()
		e.mu.Unlock()
	}()
	if err := e.checkOwner(pe, name, "resize", a); err != nil {
		return ReplicaInfo{}, err
	}
	cur, err := pe.h.ReplicaInfo(name)
	if err != nil {
		return ReplicaInfo{}, mapPoolErr(err, "replica", name)
	}
	if size <= cur.Size {
		return ReplicaInfo{}, fault.New(fault.InvalidArgument, "replica.shrink",
			fmt.Sprintf("replica %q: new size %s is not larger than its size %s", name, units.FormatSize(size), units.FormatSize(cur.Size)),
			"replicas can only grow; give a larger size")
	}
	if cs := pe.h.Stats().ClusterSize; cs > 0 && size%cs != 0 {
		return ReplicaInfo{}, fault.New(fault.InvalidArgument, "replica.size_unaligned",
			fmt.Sprintf("replica %q: size %d bytes is not a multiple of pool %q's cluster size (%s)", name, size, pe.name, units.FormatSize(cs)),
			fmt.Sprintf("use a multiple of %s", units.FormatSizeExact(cs)))
	}
	if err := pe.h.ResizeReplica(name, size); err != nil {
		return ReplicaInfo{}, mapPoolErr(err, "replica", name)
	}
	e.log.Info("replica resized", "replica", name, "from", cur.Size, "to", size)
	// Its shares tell their clients (a remote nexus learns the size when
	// it revalidates the child).
	e.mu.Lock()
	ss := e.sharesOfLocked(name)
	e.mu.Unlock()
	for _, s := range ss {
		if rs, ok := e.exporter(s.protocol).(Resizer); ok && s.dev != nil {
			if err := rs.ResizeExport(name); err != nil {
				return ReplicaInfo{}, fault.Wrap(err, fault.Internal, "replica.export_resize",
					fmt.Sprintf("replica %q was resized, but its %s share could not take the new size", name, s.protocol),
					"see the server log; unshare and share the replica again")
			}
		}
	}
	return e.replicaInfoOf(pe, name)
}

func (e *Engine) replicaInfoOf(pe *poolEntry, name string) (ReplicaInfo, error) {
	rs, err := pe.h.ReplicaInfo(name)
	if err != nil {
		return ReplicaInfo{}, mapPoolErr(err, "replica", name)
	}
	e.mu.Lock()
	sh := e.shareInfoLocked(name)
	e.mu.Unlock()
	return replicaInfo(pe.name, rs, sh), nil
}

// shareView is the public view of a share and, when it is faulted, why.
type shareView struct {
	info   *ShareInfo
	reason string
}

func (e *Engine) shareInfoLocked(name string) []shareView {
	var out []shareView
	for _, s := range e.sharesOfLocked(name) {
		out = append(out, shareView{
			info:   &ShareInfo{Protocol: s.protocol, URI: s.uri, AllowedHosts: slices.Clone(s.allowed)},
			reason: s.reason,
		})
	}
	return out
}

func replicaInfo(pool string, rs ReplicaStat, shares []shareView) ReplicaInfo {
	ri := ReplicaInfo{Name: rs.Name, UUID: rs.UUID, Pool: pool, Size: rs.Size, Thin: rs.Thin,
		Allocated: rs.Allocated, State: ReplicaOnline, NGUID: rs.NGUID, Owner: rs.Owner, Epoch: rs.Epoch,
		Origin: rs.Origin, Exclusive: rs.Exclusive}
	for _, sh := range shares {
		if ri.Share == nil {
			ri.Share = sh.info
		}
		ri.Shares = append(ri.Shares, *sh.info)
		if sh.reason != "" && ri.State != ReplicaFaulted {
			ri.State, ri.Reason = ReplicaFaulted, sh.info.Protocol+" share not restored: "+sh.reason
		}
	}
	return ri
}

// Replica returns one replica.
func (e *Engine) Replica(name string) (ReplicaInfo, error) {
	e.mu.Lock()
	owner, ok := e.replicas[name]
	var pe *poolEntry
	if ok {
		pe = e.pools[owner]
	}
	e.mu.Unlock()
	if !ok || pe == nil || pe.h == nil {
		return ReplicaInfo{}, replicaNotFound(name)
	}
	return e.replicaInfoOf(pe, name)
}

// Replicas lists the replicas of the online pools (of one pool when pool is
// set), sorted by name.
func (e *Engine) Replicas(pool string) ([]ReplicaInfo, error) {
	e.mu.Lock()
	var entries []*poolEntry
	if pool != "" {
		pe, ok := e.pools[pool]
		if !ok {
			e.mu.Unlock()
			return nil, poolNotFound(pool)
		}
		entries = append(entries, pe)
	} else {
		for _, name := range sortedKeys(e.pools) {
			entries = append(entries, e.pools[name])
		}
	}
	e.mu.Unlock()
	var out []ReplicaInfo
	for _, pe := range entries {
		if pe.h == nil {
			continue
		}
		for _, rs := range pe.h.Replicas() {
			e.mu.Lock()
			owner := e.replicas[rs.Name]
			sh := e.shareInfoLocked(rs.Name)
			e.mu.Unlock()
			if owner != pe.name {
				continue // a name clash at import; the other pool serves it
			}
			out = append(out, replicaInfo(pe.name, rs, sh))
		}
	}
	slices.SortFunc(out, func(a, b ReplicaInfo) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out, nil
}

// ShareReplica exports a replica over protocol ("" means nbd) and remembers
// the share across restarts. A replica may be shared over each protocol once
// (nbd and nvmf at the same time). Sharing again over the same protocol
// returns the existing share (and retries one that could not be restored);
// other allowed hosts are refused until the replica is unshared.
func (e *Engine) ShareReplica(ctx context.Context, name, protocol string, allowedHosts []string) (ReplicaInfo, error) {
	if err := live(ctx); err != nil {
		return ReplicaInfo{}, err
	}
	if protocol == "" {
		protocol = ProtocolNBD
	}
	if err := e.checkProtocol(protocol); err != nil {
		return ReplicaInfo{}, err
	}
	if protocol == ProtocolNBD && len(allowedHosts) > 0 {
		return ReplicaInfo{}, fault.New(fault.InvalidArgument, "share.allowed_hosts",
			fmt.Sprintf("replica %q: nbd cannot restrict hosts (NBD clients carry no identity)", name),
			"leave --allowed-host out for nbd and restrict the NBD port with a firewall, or share over nvmf")
	}
	for _, h := range allowedHosts {
		if !target.ValidNQN(h) {
			return ReplicaInfo{}, fault.New(fault.InvalidArgument, "share.host_nqn",
				fmt.Sprintf("replica %q: allowed host %q is not an NVMe host NQN", name, h),
				"give host NQNs such as nqn.2014-08.org.nvmexpress:uuid:<uuid> (see /etc/nvme/hostnqn on the host)")
		}
	}
	pe, done, err := e.beginReplicaOp(name, "", false)
	if err != nil {
		return ReplicaInfo{}, err
	}
	key := shareKey(name, protocol)
	e.mu.Lock()
	s, shared := e.shares[key]
	e.mu.Unlock()
	if shared && !sameSet(s.allowed, allowedHosts) {
		e.mu.Lock()
		done()
		e.mu.Unlock()
		return ReplicaInfo{}, fault.New(fault.FailedPrecondition, "replica.shared",
			fmt.Sprintf("replica %q is already shared over %s with other allowed hosts (%s)", name, protocol, strings.Join(s.allowed, ", ")),
			fmt.Sprintf("unshare it first: nexctl replica unshare %s", name))
	}
	if !shared || s.dev == nil {
		dev, uri, err := e.export(pe.h, name, protocol, allowedHosts)
		if err != nil {
			e.mu.Lock()
			done()
			e.mu.Unlock()
			return ReplicaInfo{}, err
		}
		e.mu.Lock()
		e.shares[key] = &shareEntry{replica: name, protocol: protocol, allowed: slices.Clone(allowedHosts), uri: uri, dev: dev}
		if !shared {
			e.gen++
		}
		done()
		e.mu.Unlock()
		if err := e.save(); err != nil {
			e.unexport(name, protocol)
			return ReplicaInfo{}, err
		}
		e.log.Info("replica shared", "replica", name, "uri", uri)
	} else {
		e.mu.Lock()
		done()
		e.mu.Unlock()
	}
	return e.replicaInfoOf(pe, name)
}

// sameSet reports whether a and b hold the same strings.
func sameSet(a, b []string) bool {
	return slices.Equal(slices.Compact(slices.Sorted(slices.Values(a))), slices.Compact(slices.Sorted(slices.Values(b))))
}

// unexport removes the shares of a replica (all of them when protocol is
// "") from the protocol servers and the registry.
func (e *Engine) unexport(name, protocol string) error {
	e.mu.Lock()
	var gone []*shareEntry
	for _, s := range e.sharesOfLocked(name) {
		if protocol == "" || s.protocol == protocol {
			delete(e.shares, shareKey(name, s.protocol))
			gone = append(gone, s)
			e.gen++
		}
	}
	e.mu.Unlock()
	var errs []error
	for _, s := range gone {
		if s.dev == nil {
			continue
		}
		if err := e.exporter(s.protocol).RemoveExport(name); err != nil {
			e.log.Error("removing export", "replica", name, "protocol", s.protocol, "err", err)
		}
		if err := s.dev.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// UnshareReplica stops exporting a replica over every protocol and forgets
// the shares. Unsharing an unshared replica succeeds.
func (e *Engine) UnshareReplica(ctx context.Context, name string, a Access) (ReplicaInfo, error) {
	if err := live(ctx); err != nil {
		return ReplicaInfo{}, err
	}
	// A remembered share of a replica that is gone (its pool faulted or
	// exported) can still be forgotten.
	e.mu.Lock()
	_, exists := e.replicas[name]
	ss := e.sharesOfLocked(name)
	if !exists && len(ss) > 0 && !e.busy["replica/"+name] {
		for _, s := range ss {
			delete(e.shares, shareKey(name, s.protocol))
		}
		e.gen++
		e.mu.Unlock()
		e.log.Info("stale share forgotten", "replica", name)
		return ReplicaInfo{Name: name}, e.save()
	}
	e.mu.Unlock()
	pe, done, err := e.beginReplicaOp(name, "", false)
	if err != nil {
		return ReplicaInfo{}, err
	}
	e.mu.Lock()
	shared := len(e.sharesOfLocked(name)) > 0
	e.mu.Unlock()
	if shared {
		// An owner reaches a remote child through its share.
		if err := e.checkOwner(pe, name, "unshare", a); err != nil {
			e.mu.Lock()
			done()
			e.mu.Unlock()
			return ReplicaInfo{}, err
		}
	}
	uerr := e.unexport(name, "")
	e.mu.Lock()
	done()
	e.mu.Unlock()
	if uerr != nil {
		e.log.Error("closing unshared replica", "replica", name, "err", uerr)
	}
	if err := e.save(); err != nil {
		return ReplicaInfo{}, err
	}
	e.log.Info("replica unshared", "replica", name)
	return e.replicaInfoOf(pe, name)
}
