package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/units"
)

// mapPoolErr gives an error from the layers below a kind and context. Faults
// (the backend's translation of pool errors) pass through unchanged.
func mapPoolErr(err error, kind, name string) error {
	var f *fault.Fault
	if errors.As(err, &f) {
		return err
	}
	desc := fmt.Sprintf("%s %q", kind, name)
	if kind == "replica" {
		return fault.Wrap(err, fault.Internal, "replica.io", desc, "see the server log")
	}
	return fault.Wrap(err, fault.Internal, "pool.io", desc, "see the server log")
}

// PoolSpec describes a pool to create.
type PoolSpec struct {
	Name string
	Disk string
	// ClusterSize in bytes; 0 for the default.
	ClusterSize int64
	// Overcommit is the thin over-commit limit in percent of the capacity;
	// 0 for the default (250).
	Overcommit int
	// Force formats a disk that already holds a pool.
	Force bool
}

// CreatePool formats a disk as a new pool and remembers it. A disk that
// already holds a pool is refused unless Force is set; a disk already used
// by one of this engine's pools, or held open by another process, is always
// refused. The same spec again returns the existing pool (idempotent).
func (e *Engine) CreatePool(ctx context.Context, spec PoolSpec) (PoolInfo, error) {
	name, disk, clusterSize, force := spec.Name, spec.Disk, spec.ClusterSize, spec.Force
	if err := live(ctx); err != nil {
		return PoolInfo{}, err
	}
	if err := checkName("pool", name); err != nil {
		return PoolInfo{}, err
	}
	if disk == "" {
		return PoolInfo{}, fault.New(fault.InvalidArgument, "pool.disk_missing",
			fmt.Sprintf("pool %q: no disk given", name),
			"give a disk URI, e.g. file:///var/lib/nexstor/d0.img?size=10GiB or /dev/sdb")
	}
	disk, err := e.resolveDisk(disk)
	if err != nil {
		return PoolInfo{}, err
	}
	if clusterSize < 0 {
		return PoolInfo{}, fault.New(fault.InvalidArgument, "pool.cluster_size",
			fmt.Sprintf("pool %q: cluster size %d is negative", name, clusterSize),
			"give a power of two such as 4MiB, or 0 for the default")
	}
	if err := checkOvercommit(name, spec.Overcommit); err != nil {
		return PoolInfo{}, err
	}
	key := "disk/" + diskKey(disk)
	e.mu.Lock()
	if err := e.checkOpenLocked(); err != nil {
		e.mu.Unlock()
		return PoolInfo{}, err
	}
	if p, ok := e.pools[name]; ok && (p.h != nil || diskKey(p.disk) != diskKey(disk)) {
		// The same pool asked for again is not an error: a caller that
		// retries after a lost reply gets what it created.
		var diff string
		switch {
		case diskKey(p.disk) != diskKey(disk):
			diff = fmt.Sprintf("on disk %s, not %s", p.disk, disk)
		case force:
			diff = "(force would format its disk again)"
		case clusterSize != 0 && clusterSize != p.h.Stats().ClusterSize:
			diff = fmt.Sprintf("with cluster size %s, not %s", units.FormatSize(p.h.Stats().ClusterSize), units.FormatSize(clusterSize))
		case spec.Overcommit != 0 && spec.Overcommit != p.h.Stats().Overcommit:
			diff = fmt.Sprintf("with an over-commit limit of %d%%, not %d%%", p.h.Stats().Overcommit, spec.Overcommit)
		}
		e.mu.Unlock()
		if diff == "" {
			return e.Pool(name)
		}
		return PoolInfo{}, fault.New(fault.AlreadyExists, "pool.exists",
			fmt.Sprintf("pool %q already exists %s", name, diff),
			"choose another name, or destroy the existing pool first")
	}
	if other := e.poolOnDiskLocked(disk); other != "" {
		e.mu.Unlock()
		return PoolInfo{}, fault.New(fault.FailedPrecondition, "pool.disk_in_use",
			fmt.Sprintf("disk %s is already used by pool %q", disk, other),
			"use another disk, or destroy that pool first")
	}
	if e.busy["pool/"+name] || e.busy[key] {
		e.mu.Unlock()
		return PoolInfo{}, busyErr(fmt.Sprintf("pool %q", name))
	}
	e.busy["pool/"+name], e.busy[key] = true, true
	e.mu.Unlock()

	h, err := e.cfg.Backend.CreatePool(disk, CreatePoolOptions{Name: name, ClusterSize: clusterSize, Force: force,
		Overcommit: spec.Overcommit})

	e.mu.Lock()
	delete(e.busy, "pool/"+name)
	delete(e.busy, key)
	if err != nil {
		e.mu.Unlock()
		return PoolInfo{}, diskFault(disk, err)
	}
	pe := &poolEntry{name: name, uuid: h.UUID(), disk: disk, h: h}
	e.pools[name] = pe
	e.gen++
	e.mu.Unlock()
	e.log.Info("pool created", "pool", name, "disk", disk, "uuid", pe.uuid)
	if err := e.save(); err != nil {
		return PoolInfo{}, err
	}
	return poolInfo(pe), nil
}

// poolOnDiskLocked returns the name of the pool that uses disk, or "".
func (e *Engine) poolOnDiskLocked(disk string) string {
	k := diskKey(disk)
	for _, p := range e.pools {
		if p.h != nil && diskKey(p.disk) == k {
			return p.name
		}
	}
	return ""
}

// ImportPool opens the pool on disk and remembers it. When name is set it
// must match the name recorded on the disk. Nothing is written to a disk that
// holds no pool.
func (e *Engine) ImportPool(ctx context.Context, name, disk string) (PoolInfo, error) {
	if err := live(ctx); err != nil {
		return PoolInfo{}, err
	}
	if name != "" {
		if err := checkName("pool", name); err != nil {
			return PoolInfo{}, err
		}
	}
	if disk == "" {
		return PoolInfo{}, fault.New(fault.InvalidArgument, "pool.disk_missing",
			"no disk given to import", "give the disk URI or path of the pool")
	}
	key := "disk/" + diskKey(disk)
	e.mu.Lock()
	if err := e.checkOpenLocked(); err != nil {
		e.mu.Unlock()
		return PoolInfo{}, err
	}
	if other := e.poolOnDiskLocked(disk); other != "" {
		e.mu.Unlock()
		return PoolInfo{}, fault.New(fault.AlreadyExists, "pool.imported",
			fmt.Sprintf("disk %s holds pool %q, which is already imported", disk, other),
			"nothing to do; see `nexctl pool get "+other+"`")
	}
	if e.busy[key] {
		e.mu.Unlock()
		return PoolInfo{}, busyErr("disk " + disk)
	}
	e.busy[key] = true
	e.mu.Unlock()

	h, err := e.cfg.Backend.ImportPool(importURI(disk))

	e.mu.Lock()
	delete(e.busy, key)
	if err == nil {
		err = e.checkImportedLocked(h, name, disk)
		if err != nil {
			e.mu.Unlock()
			if cerr := h.Close(); cerr != nil {
				e.log.Error("closing pool", "pool", h.Name(), "err", cerr)
			}
			return PoolInfo{}, err
		}
	}
	if err != nil {
		e.mu.Unlock()
		return PoolInfo{}, diskFault(disk, err)
	}
	pe := &poolEntry{name: h.Name(), uuid: h.UUID(), disk: disk, h: h}
	e.pools[pe.name] = pe
	for _, r := range h.Replicas() {
		e.replicas[r.Name] = pe.name
	}
	e.gen++
	e.mu.Unlock()
	e.log.Info("pool imported", "pool", pe.name, "disk", disk, "uuid", pe.uuid)
	if err := e.save(); err != nil {
		return PoolInfo{}, err
	}
	e.restoreSharesOf(pe.name)
	return poolInfo(pe), nil
}

// checkImportedLocked refuses an imported pool whose name does not fit.
func (e *Engine) checkImportedLocked(h PoolHandle, want, disk string) error {
	got := h.Name()
	if want != "" && got != want {
		return fault.New(fault.InvalidArgument, "pool.name_mismatch",
			fmt.Sprintf("disk %s holds pool %q, not %q", disk, got, want),
			fmt.Sprintf("import it as %q, or leave the name out", got))
	}
	if p, ok := e.pools[got]; ok && (p.h != nil || e.busy["pool/"+got]) {
		return fault.New(fault.AlreadyExists, "pool.exists",
			fmt.Sprintf("a pool named %q already exists (on disk %s)", got, p.disk),
			"export or destroy that pool first")
	}
	if e.busy["pool/"+got] {
		return busyErr(fmt.Sprintf("pool %q", got))
	}
	var clash []string
	for _, r := range h.Replicas() {
		if owner, ok := e.replicas[r.Name]; ok {
			clash = append(clash, fmt.Sprintf("%s (also in pool %s)", r.Name, owner))
		}
	}
	if len(clash) > 0 {
		return fault.New(fault.AlreadyExists, "pool.replica_names",
			fmt.Sprintf("pool %q holds replicas whose names are already used on this node: %s", got, strings.Join(clash, ", ")),
			"export the pool that holds the other replicas first")
	}
	return nil
}

// DestroyPool erases the pool and forgets it. A pool with replicas needs
// force; a pool with shared replicas is refused. A faulted pool is only
// forgotten: its disk is not touched.
func (e *Engine) DestroyPool(ctx context.Context, name string, force bool) error {
	if err := live(ctx); err != nil {
		return err
	}
	return e.removePool(name, force, true)
}

// ExportPool closes the pool cleanly and forgets it; the data stays on the
// disk, ready to be imported again.
func (e *Engine) ExportPool(ctx context.Context, name string) error {
	if err := live(ctx); err != nil {
		return err
	}
	return e.removePool(name, true, false)
}

func (e *Engine) removePool(name string, force, destroy bool) error {
	e.mu.Lock()
	if err := e.checkOpenLocked(); err != nil {
		e.mu.Unlock()
		return err
	}
	pe, ok := e.pools[name]
	if !ok {
		e.mu.Unlock()
		return poolNotFound(name)
	}
	if pe.exclusive || pe.ops > 0 {
		e.mu.Unlock()
		return busyErr(fmt.Sprintf("pool %q", name))
	}
	if pe.h == nil {
		delete(e.pools, name)
		e.gen++
		e.mu.Unlock()
		e.log.Info("faulted pool forgotten", "pool", name, "disk", pe.disk)
		return e.save()
	}
	var reps, shared []string
	for r, p := range e.replicas {
		if p == name {
			reps = append(reps, r)
			if len(e.sharesOfLocked(r)) > 0 {
				shared = append(shared, r)
			}
		}
	}
	if len(shared) > 0 {
		e.mu.Unlock()
		return fault.New(fault.FailedPrecondition, "pool.shared",
			fmt.Sprintf("pool %q has shared replicas: %s", name, strings.Join(sortedStrings(shared), ", ")),
			"unshare them first (`nexctl replica unshare NAME`)")
	}
	if users := e.nexusesUsingLocked(pe.h); len(users) > 0 {
		e.mu.Unlock()
		return fault.New(fault.FailedPrecondition, "pool.nexus_child",
			fmt.Sprintf("pool %q has replicas that are children of nexuses: %s", name, strings.Join(users, ", ")),
			"remove those children from their nexuses (`nexctl nexus remove-child`) or destroy the nexuses first")
	}
	if destroy && len(reps) > 0 && !force {
		e.mu.Unlock()
		return fault.New(fault.FailedPrecondition, "pool.not_empty",
			fmt.Sprintf("pool %q holds %d replicas: %s", name, len(reps), strings.Join(sortedStrings(reps), ", ")),
			"destroy the replicas first, or pass --force to destroy them with the pool")
	}
	pe.exclusive = true
	e.mu.Unlock()

	// Snapshots are data too: destroying them needs force like replicas.
	if sn, ok := pe.h.(Snapshotter); ok && destroy && !force {
		if list := sn.Snapshots(); len(list) > 0 {
			var names []string
			for _, s := range list {
				names = append(names, s.Name)
			}
			e.mu.Lock()
			pe.exclusive = false
			e.mu.Unlock()
			return fault.New(fault.FailedPrecondition, "pool.not_empty",
				fmt.Sprintf("pool %q holds %d snapshots: %s", name, len(names), strings.Join(sortedStrings(names), ", ")),
				"delete the snapshots first (`nexctl snapshot delete`), or pass --force to destroy them with the pool")
		}
	}
	var err error
	if destroy {
		err = pe.h.Destroy()
	} else {
		err = pe.h.Close()
	}

	e.mu.Lock()
	pe.exclusive = false
	if err != nil {
		e.mu.Unlock()
		return mapPoolErr(err, "pool", name)
	}
	delete(e.pools, name)
	for r, p := range e.replicas {
		if p == name {
			delete(e.replicas, r)
		}
	}
	e.gen++
	e.mu.Unlock()
	if destroy {
		e.log.Info("pool destroyed", "pool", name, "disk", pe.disk)
	} else {
		e.log.Info("pool exported", "pool", name, "disk", pe.disk)
	}
	return e.save()
}

// Pools lists the pools, sorted by name, faulted ones included.
func (e *Engine) Pools() []PoolInfo {
	e.mu.Lock()
	entries := make([]*poolEntry, 0, len(e.pools))
	for _, name := range sortedKeys(e.pools) {
		entries = append(entries, e.pools[name])
	}
	e.mu.Unlock()
	out := make([]PoolInfo, 0, len(entries))
	for _, pe := range entries {
		out = append(out, poolInfo(pe))
	}
	return out
}

// Pool returns one pool.
func (e *Engine) Pool(name string) (PoolInfo, error) {
	e.mu.Lock()
	pe, ok := e.pools[name]
	e.mu.Unlock()
	if !ok {
		return PoolInfo{}, poolNotFound(name)
	}
	return poolInfo(pe), nil
}

// SetPoolLabels replaces the labels of pool name (an empty map clears them)
// and saves them in the state file, so that they outlast restarts. Label
// keys follow the rules of server.yaml `labels`. Setting the labels a pool
// has is a no-op.
func (e *Engine) SetPoolLabels(ctx context.Context, name string, labels map[string]string) (PoolInfo, error) {
	if err := live(ctx); err != nil {
		return PoolInfo{}, err
	}
	for k := range labels {
		if len(k) > 63 || !poolLabelKeyRE.MatchString(k) {
			return PoolInfo{}, fault.New(fault.InvalidArgument, "pool.label_invalid",
				fmt.Sprintf("pool %q: label key %q is not valid", name, k), "")
		}
	}
	e.mu.Lock()
	pe, ok := e.pools[name]
	if !ok {
		e.mu.Unlock()
		return PoolInfo{}, poolNotFound(name)
	}
	changed := !maps.Equal(pe.labels, labels)
	if changed {
		pe.labels = maps.Clone(labels)
		if len(pe.labels) == 0 {
			pe.labels = nil
		}
		e.gen++
	}
	e.mu.Unlock()
	if changed {
		e.log.Info("pool labels set", "pool", name, "labels", labels)
		if err := e.save(); err != nil {
			return PoolInfo{}, err
		}
	}
	return e.Pool(name)
}

// poolLabelKeyRE is the form of a label key (as config's labels).
var poolLabelKeyRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$`)

// poolInfo reads a pool's figures; the handle is safe to use unlocked.
func poolInfo(pe *poolEntry) PoolInfo {
	pi := PoolInfo{Name: pe.name, UUID: pe.uuid, Disk: pe.disk, State: PoolOnline, Labels: maps.Clone(pe.labels)}
	if pe.h == nil {
		pi.State, pi.Reason = PoolFaulted, pe.reason
		return pi
	}
	pi.Stats = pe.h.Stats()
	return pi
}

func sortedStrings(s []string) []string {
	return slices.Sorted(slices.Values(s))
}

// restoreSharesOf exports again the remembered shares of a pool's replicas
// that could not be restored before (the pool was not imported at start).
// Failures are logged and leave the replica faulted.
func (e *Engine) restoreSharesOf(pool string) {
	type pending struct {
		name, protocol string
		allowed        []string
	}
	var todo []pending
	e.mu.Lock()
	for _, s := range e.shares {
		if s.dev == nil && e.replicas[s.replica] == pool {
			todo = append(todo, pending{s.replica, s.protocol, slices.Clone(s.allowed)})
		}
	}
	e.mu.Unlock()
	for _, p := range todo {
		if _, err := e.ShareReplica(context.Background(), p.name, p.protocol, p.allowed); err != nil {
			e.log.Error("share not restored", "replica", p.name, "err", err)
		}
	}
}

// checkOvercommit validates a thin over-commit limit in percent (0 means the
// default).
func checkOvercommit(pool string, pct int) error {
	if pct != 0 && (pct < 100 || pct > 100000) {
		return fault.New(fault.InvalidArgument, "pool.overcommit_invalid",
			fmt.Sprintf("pool %q: over-commit limit %d%% is out of range", pool, pct),
			"give a limit from 100% (no over-commit) to 100000%, or 0 for the default of 250%")
	}
	return nil
}

// live refuses to start an operation whose caller has given up: its
// context is done. Operations check it before they change anything.
func live(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fault.Wrap(err, fault.Unavailable, "engine.cancelled", "the request was cancelled or timed out before it started",
			"retry with a longer timeout")
	}
	return nil
}
