package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/stats"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/target"
	"github.com/nexstor/nexstor/internal/units"
)

// NexusHealthDir is the directory, in the data dir, of the file health
// store of the node's nexuses.
const NexusHealthDir = "nexus-health"

// nexusOpenTimeout bounds opening a nexus's children (remote ones connect
// over the network) at create and at restore.
const nexusOpenTimeout = 30 * time.Second

// DefaultNexusRemote are the initiator options of remote children: a dead
// node must turn into a retired child within seconds, not the initiator's
// default 30s per command, so that the nexus keeps serving.
var DefaultNexusRemote = initiator.Options{
	IOQueues:       2,
	CommandTimeout: 5 * time.Second,
	KeepAlive:      5 * time.Second,
	ReconnectDelay: 250 * time.Millisecond,
	MaxReconnect:   2,
}

// NexusState is the state of a nexus in the engine.
type NexusState string

// Nexus states.
const (
	NexusOnline   NexusState = "online"   // every child online
	NexusDegraded NexusState = "degraded" // serving; some child is not online
	NexusFaulted  NexusState = "faulted"  // not serving; see Reason
)

// NexusInfo describes a nexus.
type NexusInfo struct {
	Name      string
	UUID      string
	Size      int64 // bytes
	BlockSize int
	State     NexusState
	Reason    string
	Children  []NexusChild
	Share     *ShareInfo // nil when not published
	// Stats are the nexus's cumulative counters (rebuilt bytes, retired
	// children, ...) since it was created or restored in this process;
	// zero when it is faulted.
	Stats nexus.Stats
	// LeftOut are the children left out when the nexus was recreated at a
	// start: the health store did not record them as current. They are not
	// children any more, but the nexus counts them as missing (it is
	// degraded) until they are added again, which rebuilds them, or
	// removed.
	LeftOut []LeftOutChild
	// Epoch is the nexus's fencing epoch (0 when it is faulted).
	Epoch uint64
	// HealthStore is where its health record is kept: HealthStoreLocal
	// or HealthStoreSystem.
	HealthStore string
}

// LeftOutChild is a child left out when its nexus was recreated, with what
// the health store recorded about it ("unknown" when nothing).
type LeftOutChild struct {
	URI    string `json:"uri"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

func (l LeftOutChild) String() string {
	if l.Reason != "" {
		return fmt.Sprintf("%s %s (%s)", l.URI, l.State, l.Reason)
	}
	return l.URI + " " + l.State
}

// NexusChild is one child of a nexus with its rebuild, if one is running.
type NexusChild struct {
	nexus.ChildStatus
	Rebuild *nexus.RebuildStatus
}

// Health stores a nexus may keep its health record in
// (CreateNexusOptions.HealthStore).
const (
	// HealthStoreLocal is the node's file store, in the data dir: a nexus
	// recreated on this node finds its record.
	HealthStoreLocal = "local"
	// HealthStoreSystem is Config.SystemHealth, the management service's
	// store, which every node of the system shares: a nexus of the same
	// UUID recreated on any node finds its record. Volumes use it.
	HealthStoreSystem = "system"
)

// storeKind normalizes a health store name: "" is the local store.
func storeKind(s string) string {
	if s == "" {
		return HealthStoreLocal
	}
	return s
}

// healthStore returns the store of a kind that storeKind normalized.
func (e *Engine) healthStore(kind string) (nexus.HealthStore, error) {
	switch kind {
	case HealthStoreLocal:
		return e.health, nil
	case HealthStoreSystem:
		if e.cfg.SystemHealth == nil {
			return nil, fault.New(fault.FailedPrecondition, "nexus.no_system_store",
				"this engine has no system health store (it is not serving a system's management service)",
				"run the node as a member of a system (nexstor server, formatted and joined), or use the local health store (--health-store local)")
		}
		return e.cfg.SystemHealth, nil
	}
	return nil, fault.New(fault.InvalidArgument, "nexus.health_store",
		fmt.Sprintf("health store %q is unknown", kind), "use --health-store local or --health-store system")
}

// CreateNexusOptions describe a nexus to create.
type CreateNexusOptions struct {
	Name     string
	UUID     string   // "" generates one
	Size     int64    // bytes; 0 = the smallest child
	Children []string // bdev:///<replica-uuid> or nvmf://host:port/<nqn>
	Force    bool     // trust every child whatever the health store says
	// AllowDegraded creates the nexus even when some children cannot be
	// opened; otherwise that fails the call, naming each child and why.
	AllowDegraded bool
	// Source and VerifyInSync decide, for a nexus without a health
	// record, which child the others are rebuilt from (see nexus.Config).
	Source       string
	VerifyInSync bool
	// HealthStore is where the nexus keeps its health record: "" or
	// HealthStoreLocal, or HealthStoreSystem (refused when the engine has
	// none). It is remembered: the nexus is restored from the same store.
	HealthStore string
}

type nexusEntry struct {
	name, uuid string
	store      string // HealthStoreLocal or HealthStoreSystem
	size       int64
	children   []string      // membership when the nexus could not be recreated
	n          *nexus.Nexus  // nil when faulted
	io         *stats.Device // wraps n for its exports; nil when faulted
	reason     string
	share      *shareEntry    // nil when not published
	leftOut    []LeftOutChild // children dropped at a restore, until added or removed
	busy       bool
}

func nexusNotFound(name string) error {
	return fault.New(fault.NotFound, "nexus.not_found", fmt.Sprintf("nexus %q not found", name),
		"list the nexuses with `nexctl nexus list`")
}

// nexusExportName is the export name of a published nexus: it keeps NBD
// export names of nexuses apart from those of replicas.
func nexusExportName(name string) string { return "nexus/" + name }

// nexusOpener opens the children of the engine's nexuses: bdev:///<uuid>
// is a replica of one of this engine's pools, nvmf:// a remote namespace.
func (e *Engine) nexusOpener() *nexus.Router {
	remote := e.cfg.NexusRemote
	if remote == nil {
		opts := DefaultNexusRemote
		opts.HostNQN = e.cfg.HostNQN
		remote = nexus.NVMfRemote(opts)
	}
	return &nexus.Router{Local: e.openReplicaByUUID, Remote: remote}
}

// restoreRetryWindow is how long, from the engine's start, restoring
// nexuses retries remote children that refuse connections: nodes of a
// system restarted together come up in any order, a moment apart.
const restoreRetryWindow = 5 * time.Second

// restoreRemote wraps remote so that a failed open is retried, a quarter
// second apart, until deadline; after it, one attempt each. A child still
// unreachable then is recorded offline by the nexus (see nexus.New).
func restoreRemote(remote func(context.Context, string, string) (bdev.Device, error), deadline time.Time,
) func(context.Context, string, string) (bdev.Device, error) {
	return func(ctx context.Context, addr, nqn string) (bdev.Device, error) {
		for {
			d, err := remote(ctx, addr, nqn)
			if err == nil || time.Now().Add(250*time.Millisecond).After(deadline) {
				return d, err
			}
			select {
			case <-ctx.Done():
				return nil, err
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
}

// openReplicaByUUID opens a replica of an online pool by its UUID.
func (e *Engine) openReplicaByUUID(_ context.Context, id string) (bdev.Device, error) {
	e.mu.Lock()
	var hs []PoolHandle
	for _, name := range sortedKeys(e.pools) {
		if p := e.pools[name]; p.h != nil {
			hs = append(hs, p.h)
		}
	}
	e.mu.Unlock()
	for _, h := range hs {
		for _, r := range h.Replicas() {
			if strings.EqualFold(r.UUID, id) {
				return h.OpenReplica(r.Name)
			}
		}
	}
	return nil, fmt.Errorf("replica %s: %w", id, errReplicaUUIDNotFound)
}

var errReplicaUUIDNotFound = errors.New("no replica with this UUID in the node's online pools")

// isIdentityChanged reports a stale-child refusal that names a replaced
// replica, which no --force can admit.
func isIdentityChanged(err error) bool {
	var stale *nexus.StaleChildError
	return errors.As(err, &stale) && slices.ContainsFunc(stale.Children, func(c nexus.StaleChild) bool {
		return c.State == nexus.StateIdentityChanged
	})
}

// nexusFault gives the nexus package's errors a kind and a resolution.
func nexusFault(name string, err error) error {
	var f *fault.Fault
	switch {
	case errors.As(err, &f):
		return err
	case errors.Is(err, nexus.ErrFencedNexus):
		return fault.Wrap(err, fault.FailedPrecondition, "nexus.fenced", fmt.Sprintf("nexus %q", name),
			"a newer instance of this nexus (on this or another node) holds its children; destroy this one")
	case errors.Is(err, nexus.ErrIdentityChanged):
		return fault.Wrap(err, fault.FailedPrecondition, "nexus.identity_changed", fmt.Sprintf("nexus %q", name),
			"the replica was destroyed and created again and holds none of the data: add it with `nexctl nexus add-child` for a full rebuild")
	case errors.Is(err, bdev.ErrOwned):
		return fault.Wrap(err, fault.FailedPrecondition, "nexus.child_owned", fmt.Sprintf("nexus %q", name),
			"a replica belongs to one nexus: remove it from its owner first, or use another replica")
	case isIdentityChanged(err):
		return fault.Wrap(err, fault.FailedPrecondition, "nexus.identity_changed", fmt.Sprintf("nexus %q", name),
			"leave the replaced replica out and add it afterwards (`nexctl nexus add-child`) for a full rebuild")
	case errors.Is(err, nexus.ErrStaleChild):
		return fault.Wrap(err, fault.FailedPrecondition, "nexus.stale_child", fmt.Sprintf("nexus %q", name),
			"leave the stale child out and add it afterwards (`nexctl nexus add-child`) so that it is rebuilt, or use --force if you know it is current")
	case errors.Is(err, nexus.ErrUnknownChild):
		return fault.Wrap(err, fault.NotFound, "nexus.child_not_found", fmt.Sprintf("nexus %q", name),
			"see the children with `nexctl nexus get "+name+"`")
	case errors.Is(err, nexus.ErrLastChild):
		return fault.Wrap(err, fault.FailedPrecondition, "nexus.last_child", fmt.Sprintf("nexus %q", name),
			"add and rebuild another child first")
	case errors.Is(err, nexus.ErrNoRebuild):
		return fault.Wrap(err, fault.FailedPrecondition, "nexus.no_rebuild", fmt.Sprintf("nexus %q", name),
			"see the rebuilds with `nexctl nexus rebuild status "+name+"`")
	case errors.Is(err, nexus.ErrNoHealthyChild):
		return fault.Wrap(err, fault.Unavailable, "nexus.no_healthy_child", fmt.Sprintf("nexus %q", name),
			"check that the children's replicas exist and their nodes are reachable")
	case errors.Is(err, nexus.ErrNexusFailed):
		return fault.Wrap(err, fault.Unavailable, "nexus.failed", fmt.Sprintf("nexus %q", name),
			"check its health store (the data dir's disk, or the system's management service), then destroy and create the nexus again; a store that refused the save because another instance of the nexus saved first means that one is current: destroy this one")
	case errors.Is(err, nexus.ErrShrink):
		return fault.Wrap(err, fault.InvalidArgument, "nexus.shrink", fmt.Sprintf("nexus %q", name),
			"a nexus only grows: give a size larger than its size")
	case errors.Is(err, nexus.ErrInvalidSize):
		return fault.Wrap(err, fault.InvalidArgument, "nexus.size", fmt.Sprintf("nexus %q", name),
			"give a size that is a multiple of the nexus's block size")
	case errors.Is(err, nexus.ErrChildTooSmall):
		return fault.Wrap(err, fault.FailedPrecondition, "nexus.child_too_small", fmt.Sprintf("nexus %q", name),
			"grow every child's replica to at least that size first (nexctl replica resize NAME SIZE --owner <nexus-uuid>), then resize the nexus")
	case errors.Is(err, nexus.ErrRebuilding):
		return fault.Wrap(err, fault.Unavailable, "nexus.rebuilding", fmt.Sprintf("nexus %q", name),
			"wait for the rebuild (or the resync) to finish, or stop it, and retry")
	case errors.Is(err, context.DeadlineExceeded):
		return fault.Wrap(err, fault.Unavailable, "nexus.timeout", fmt.Sprintf("nexus %q", name),
			"check that the children's nodes are reachable and retry")
	}
	return fault.Wrap(err, fault.FailedPrecondition, "nexus.error", fmt.Sprintf("nexus %q", name),
		"check the child URIs (bdev:///<replica-uuid>, nvmf://host:port/<nqn>) and the server log")
}

// restoreNexus recreates a remembered nexus from its health store (see
// recreateNexus). Called by New, before the engine serves: a nexus of the
// local store is recreated now; one of the system store is marked busy
// and recreated in the background once New returns (restoreSystemNexus),
// since that store may be a moment away when the node starts.
func (e *Engine) restoreNexus(sn stateNexus) {
	ne := &nexusEntry{name: sn.Name, uuid: sn.UUID, size: sn.Size, children: slices.Clone(sn.Children),
		leftOut: slices.Clone(sn.LeftOut), store: storeKind(sn.HealthStore)}
	e.nexuses[sn.Name] = ne
	if sn.Share != nil {
		ne.share = &shareEntry{replica: sn.Name, protocol: sn.Share.Protocol, allowed: sn.Share.AllowedHosts}
		if sn.Share.Protocol == ProtocolNVMf {
			s := ne.share
			s.minCntl, s.maxCntl = cntlidRange(sn.Share.MinCNTLID, sn.Share.MaxCNTLID)
			s.ana = nvme.ANAOptimized
			if sn.Share.ANAState != "" {
				st, err := nvme.ParseANAState(sn.Share.ANAState)
				if err != nil {
					// Never report a path better than it may be.
					st = nvme.ANAInaccessible
					e.log.Error("nexus publication: unreadable ANA state in the engine state; publishing it inaccessible",
						"nexus", sn.Name, "err", err)
				}
				s.ana = st
			}
		}
	}
	store, err := e.healthStore(ne.store)
	if err != nil {
		ne.reason = err.Error()
		e.log.Error("nexus not restored", "nexus", sn.Name, "health_store", ne.store, "reason", ne.reason)
		return
	}
	if ne.store == HealthStoreSystem {
		ne.busy = true
		ne.reason = "restoring: reading its health record from the system health store"
		e.pending = append(e.pending, func() { e.restoreSystemNexus(ne, sn, store) })
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), nexusOpenTimeout)
	defer cancel()
	rec, err := store.Load(ctx, sn.UUID)
	r := e.recreateNexus(ctx, sn, store, rec, err, false)
	ne.apply(r)
	e.restorePublication(ne)
}

// startRestores starts the restores New left for the background.
func (e *Engine) startRestores() {
	for _, f := range e.pending {
		e.restoring.Add(1)
		go func() {
			defer e.restoring.Done()
			f()
		}()
	}
	e.pending = nil
}

// systemRestoreTimeout bounds how long the restore of a nexus of the
// system store retries a store that cannot be read, and opens the children.
var systemRestoreTimeout = nexusOpenTimeout

// restoreSystemNexus recreates, in the background, a nexus whose health
// record is in the system store. An unreachable store is retried until
// systemRestoreTimeout; the nexus is never recreated without its record
// (no guess at which children are current): it stays faulted, with the
// reason, when the record cannot be read or is gone.
func (e *Engine) restoreSystemNexus(ne *nexusEntry, sn stateNexus, store nexus.HealthStore) {
	ctx, cancel := context.WithTimeout(e.restoreCtx, systemRestoreTimeout)
	defer cancel()
	rec, err := loadRetrying(ctx, store, sn.UUID)
	r := e.recreateNexus(ctx, sn, store, rec, err, true)
	e.mu.Lock()
	if e.closed || e.quiesced {
		e.mu.Unlock()
		if r.n != nil {
			if err := r.n.Close(); err != nil {
				e.log.Warn("closing a nexus restored while the engine shut down", "nexus", sn.Name, "err", err)
			}
		}
		return
	}
	ne.apply(r)
	e.mu.Unlock()
	// Still busy: no publish or destroy runs into the restored export.
	e.restorePublication(ne)
	e.mu.Lock()
	ne.busy = false
	e.gen++
	e.mu.Unlock()
	if err := e.save(); err != nil {
		e.log.Error("saving the engine state after restoring a nexus", "nexus", sn.Name, "err", err)
	}
}

// loadRetrying loads a health record, retrying errors other than
// ErrNoRecord until ctx ends; the last error says how long it tried.
func loadRetrying(ctx context.Context, store nexus.HealthStore, id string) (nexus.HealthRecord, error) {
	start := time.Now()
	wait := 100 * time.Millisecond
	for {
		rec, err := store.Load(ctx, id)
		if err == nil || errors.Is(err, nexus.ErrNoRecord) {
			return rec, err
		}
		select {
		case <-ctx.Done():
			return rec, fmt.Errorf("%w (still failing after %s)", err, time.Since(start).Round(time.Second))
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// recreated is the outcome of recreateNexus.
type recreated struct {
	n        *nexus.Nexus // nil when faulted
	reason   string
	children []string
	leftOut  []LeftOutChild
	size     int64
}

// apply records r in ne; the caller holds e.mu or is New.
func (ne *nexusEntry) apply(r recreated) {
	ne.leftOut, ne.reason = r.leftOut, r.reason
	if r.n != nil {
		ne.n, ne.io, ne.size, ne.children = r.n, stats.New(r.n), r.size, r.children
	}
}

// restorePublication exports a restored nexus again, as it was published.
func (e *Engine) restorePublication(ne *nexusEntry) {
	e.mu.Lock()
	s, n := ne.share, ne.n
	e.mu.Unlock()
	if s == nil || n == nil {
		return
	}
	uri, err := e.exportNexus(ne, s)
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		s.reason = err.Error()
		e.log.Error("nexus publication not restored", "nexus", ne.name, "err", err)
		return
	}
	s.uri, s.dev = uri, n
}

// recreateNexus recreates a remembered nexus from its health record (rec,
// or loadErr when it could not be loaded): children the record holds as
// neither online nor offline are left out (they may be stale) and
// reported; the nexus is faulted if none is left or it cannot be created.
// Without a record, a nexus of the local store starts as a new one would;
// one of the system store (needRecord) is faulted: its record is gone
// because the nexus was destroyed or moved elsewhere, and its children are
// not to be trusted from a guess.
func (e *Engine) recreateNexus(ctx context.Context, sn stateNexus, store nexus.HealthStore, rec nexus.HealthRecord, loadErr error, needRecord bool) recreated {
	// Children left out at an earlier start stay left out (and counted)
	// until an administrator adds or removes them.
	r := recreated{leftOut: slices.Clone(sn.LeftOut)}
	children := sn.Children
	dropped := slices.Clone(sn.LeftOut)
	switch {
	case loadErr == nil:
		state := map[string]nexus.ChildHealth{}
		for _, h := range rec.Children {
			state[h.URI] = h
		}
		children = nil
		for _, c := range sn.Children {
			h, ok := state[c]
			if ok && (h.State == nexus.StateOnline || h.State == nexus.StateOffline) {
				children = append(children, c)
				continue
			}
			lo := LeftOutChild{URI: c, State: "unknown"}
			if ok {
				lo.State, lo.Reason = h.State.String(), string(h.Reason)
			}
			dropped = append(dropped, lo)
		}
	case errors.Is(loadErr, nexus.ErrNoRecord) && !needRecord:
	case errors.Is(loadErr, nexus.ErrNoRecord):
		r.reason = "its health record is not in the system health store (the nexus was destroyed, or recreated on another node): " +
			"its children are not trusted without it; destroy this nexus"
		e.log.Error("nexus not restored", "nexus", sn.Name, "reason", r.reason)
		return r
	default:
		r.reason = fmt.Sprintf("health record unreadable: %v", loadErr)
		e.log.Error("nexus not restored", "nexus", sn.Name, "reason", r.reason)
		return r
	}
	r.leftOut = dropped
	if len(dropped) > len(sn.LeftOut) {
		e.log.Warn("nexus children left out at restore: the health store does not record them as current; add them again to rebuild them",
			"nexus", sn.Name, "children", dropped[len(sn.LeftOut):])
	}
	if len(children) == 0 {
		var what []string
		for _, d := range dropped {
			what = append(what, d.String())
		}
		r.reason = "no current child left: " + strings.Join(what, "; ")
		e.log.Error("nexus not restored", "nexus", sn.Name, "reason", r.reason)
		return r
	}
	opener := e.nexusOpener()
	opener.Remote = restoreRemote(opener.Remote, e.started.Add(restoreRetryWindow))
	cfg := nexus.Config{Name: sn.Name, UUID: sn.UUID, Size: sn.Size, Children: children,
		Store: store, Opener: opener, Logger: e.log}
	n, err := nexus.New(ctx, cfg)
	var stale *nexus.StaleChildError
	if errors.As(err, &stale) {
		// A replica destroyed and created again under the same UUID holds
		// none of the data: it is left out like a stale child, and the
		// nexus comes back over the others.
		var replaced []LeftOutChild
		for _, c := range stale.Children {
			if c.State == nexus.StateIdentityChanged {
				replaced = append(replaced, LeftOutChild{URI: c.URI, State: "faulted", Reason: string(nexus.ReasonIdentityChanged)})
			}
		}
		if len(replaced) == len(stale.Children) {
			r.leftOut = append(r.leftOut, replaced...)
			e.log.Warn("nexus children left out at restore: another replica is behind the URI now (destroyed and created again); add it again to rebuild it",
				"nexus", sn.Name, "children", replaced)
			cfg.Children = slices.DeleteFunc(slices.Clone(children), func(c string) bool {
				return slices.ContainsFunc(replaced, func(l LeftOutChild) bool { return l.URI == c })
			})
			if len(cfg.Children) == 0 {
				err = fmt.Errorf("no current child left: %w", err)
			} else {
				n, err = nexus.New(ctx, cfg)
			}
		}
	}
	if err != nil {
		r.reason = err.Error()
		e.log.Error("nexus not restored", "nexus", sn.Name, "err", err)
		return r
	}
	r.n, r.size, r.children = n, n.Size(), childURIs(n)
	e.log.Info("nexus restored", "nexus", sn.Name, "children", len(children), "left_out", len(dropped))
	return r
}

func (e *Engine) exportNexus(ne *nexusEntry, s *shareEntry) (string, error) {
	protocol := s.protocol
	if err := e.checkProtocol(protocol); err != nil {
		return "", err
	}
	uri, err := e.exporter(protocol).AddExport(ExportSpec{Name: nexusExportName(ne.name), UUID: ne.uuid, Kind: "nexus",
		Description: "nexstor nexus " + ne.name, AllowedHosts: s.allowed,
		MinCNTLID: s.minCntl, MaxCNTLID: s.maxCntl, ANAState: s.ana}, ne.io)
	if err != nil {
		return "", fault.Wrap(err, fault.Internal, "nexus.publish",
			fmt.Sprintf("nexus %q cannot be published over %s", ne.name, protocol), "see the server log")
	}
	return uri, nil
}

// beginNexusOp marks a nexus busy; the returned function undoes that.
func (e *Engine) beginNexusOp(name string, needServing bool) (*nexusEntry, func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.checkOpenLocked(); err != nil {
		return nil, nil, err
	}
	ne, ok := e.nexuses[name]
	if !ok {
		return nil, nil, nexusNotFound(name)
	}
	if ne.busy {
		return nil, nil, busyErr(fmt.Sprintf("nexus %q", name))
	}
	if needServing && ne.n == nil {
		return nil, nil, fault.New(fault.FailedPrecondition, "nexus.faulted",
			fmt.Sprintf("nexus %q is faulted: %s", name, ne.reason),
			"destroy it and create it again over current children")
	}
	ne.busy = true
	return ne, func() {
		e.mu.Lock()
		ne.busy = false
		e.mu.Unlock()
	}, nil
}

// CreateNexus creates a nexus over children and remembers it across
// restarts. Its children's health is kept in the node's health store.
func (e *Engine) CreateNexus(ctx context.Context, o CreateNexusOptions) (NexusInfo, error) {
	if err := live(ctx); err != nil {
		return NexusInfo{}, err
	}
	if err := checkName("nexus", o.Name); err != nil {
		return NexusInfo{}, err
	}
	uuidGiven := o.UUID != ""
	if o.UUID == "" {
		o.UUID = uuid.NewString()
	} else if _, err := uuid.Parse(o.UUID); err != nil {
		return NexusInfo{}, fault.Wrap(err, fault.InvalidArgument, "nexus.uuid",
			fmt.Sprintf("nexus %q: uuid %q is invalid", o.Name, o.UUID), "give a UUID, or leave it out to have one generated")
	}
	if len(o.Children) == 0 {
		return NexusInfo{}, fault.New(fault.InvalidArgument, "nexus.no_children",
			fmt.Sprintf("nexus %q: no children given", o.Name),
			"give at least one child: --child bdev:///<replica-uuid> or --child nvmf://host:port/<nqn>")
	}
	for _, c := range o.Children {
		if _, err := nexus.ParseChildURI(c); err != nil {
			return NexusInfo{}, fault.Wrap(err, fault.InvalidArgument, "nexus.child_uri",
				fmt.Sprintf("nexus %q: child %q", o.Name, c), "use bdev:///<replica-uuid> or nvmf://host:port/<nqn>")
		}
	}
	if o.Size < 0 {
		return NexusInfo{}, fault.New(fault.InvalidArgument, "nexus.size",
			fmt.Sprintf("nexus %q: size %d is negative", o.Name, o.Size), "give a size such as 1GiB, or 0 for the smallest child")
	}
	if o.Source != "" && !slices.Contains(o.Children, o.Source) {
		return NexusInfo{}, fault.New(fault.InvalidArgument, "nexus.source",
			fmt.Sprintf("nexus %q: source %q is not one of its children", o.Name, o.Source), "name one of the --child URIs as --source")
	}
	o.HealthStore = storeKind(o.HealthStore)
	store, err := e.healthStore(o.HealthStore)
	if err != nil {
		return NexusInfo{}, err
	}
	e.mu.Lock()
	if err := e.checkOpenLocked(); err != nil {
		e.mu.Unlock()
		return NexusInfo{}, err
	}
	if old, ok := e.nexuses[o.Name]; ok {
		diff := nexusSpecDiff(old, o, uuidGiven)
		e.mu.Unlock()
		if diff == "" {
			// The same nexus asked for again (a retry after a lost
			// reply): not an error.
			return e.Nexus(o.Name)
		}
		return NexusInfo{}, fault.New(fault.AlreadyExists, "nexus.exists",
			fmt.Sprintf("nexus %q already exists %s", o.Name, diff), "choose another name, or destroy the existing nexus first")
	}
	for _, other := range e.nexuses {
		if strings.EqualFold(other.uuid, o.UUID) {
			e.mu.Unlock()
			return NexusInfo{}, fault.New(fault.AlreadyExists, "nexus.uuid_exists",
				fmt.Sprintf("nexus %q already has uuid %s", other.name, o.UUID), "give another uuid or leave it out")
		}
	}
	ne := &nexusEntry{name: o.Name, uuid: o.UUID, size: o.Size, children: slices.Clone(o.Children), store: o.HealthStore, busy: true}
	e.nexuses[o.Name] = ne
	e.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, nexusOpenTimeout)
	defer cancel()
	_, lerr := store.Load(ctx, o.UUID)
	hadRecord := lerr == nil
	n, err := nexus.New(ctx, nexus.Config{Name: o.Name, UUID: o.UUID, Size: o.Size, Children: o.Children,
		Force: o.Force, Source: o.Source, VerifyInSync: o.VerifyInSync, Store: store, Opener: e.nexusOpener(), Logger: e.log})
	if err == nil && !o.AllowDegraded {
		if failed := unopened(n); len(failed) > 0 {
			// Undo: a nexus that never served is withdrawn whole; its
			// record is kept only if it existed before this call.
			if hadRecord {
				err = n.Close()
			} else {
				err = n.Destroy(context.WithoutCancel(ctx))
			}
			if err != nil {
				e.log.Warn("withdrawing a nexus that would start degraded", "nexus", o.Name, "err", err)
			}
			err = fault.New(fault.FailedPrecondition, "nexus.degraded",
				fmt.Sprintf("nexus %q would start degraded: %s", o.Name, strings.Join(failed, "; ")),
				"make those children reachable and retry, leave them out, or pass --allow-degraded to create it without them")
		}
	}
	e.mu.Lock()
	ne.busy = false
	if err != nil {
		delete(e.nexuses, o.Name)
		e.mu.Unlock()
		return NexusInfo{}, nexusFault(o.Name, err)
	}
	ne.n, ne.io, ne.size = n, stats.New(n), n.Size()
	e.gen++
	e.mu.Unlock()
	if err := e.save(); err != nil {
		return NexusInfo{}, err
	}
	e.log.Info("nexus created", "nexus", o.Name, "uuid", o.UUID, "size", n.Size(), "children", o.Children, "health_store", o.HealthStore)
	return e.Nexus(o.Name)
}

// unopened names each child of a new nexus that could not be opened, with
// why.
func unopened(n *nexus.Nexus) []string {
	var out []string
	for _, c := range n.Children() {
		if (c.State == nexus.StateFaulted || c.State == nexus.StateOffline) && c.Reason == nexus.ReasonOpenFailed {
			out = append(out, fmt.Sprintf("child %s cannot be opened: %s", c.URI, c.LastError))
		}
	}
	return out
}

// nexusSpecDiff says how a create request differs from the existing nexus
// of that name; "" when it asks for exactly that nexus (by UUID: a request
// without one always differs). Called with e.mu held.
func nexusSpecDiff(ne *nexusEntry, o CreateNexusOptions, uuidGiven bool) string {
	members := slices.Clone(ne.children)
	for _, l := range ne.leftOut {
		members = append(members, l.URI)
	}
	switch {
	case !uuidGiven:
		return "(uuid " + ne.uuid + ")"
	case !strings.EqualFold(ne.uuid, o.UUID):
		return "with uuid " + ne.uuid
	case !sameSet(members, o.Children):
		return "with children " + strings.Join(members, ", ")
	case o.Size != 0 && o.Size != ne.size:
		return "with size " + units.FormatSizeExact(ne.size)
	case storeKind(o.HealthStore) != ne.store:
		return "with health store " + ne.store
	}
	return ""
}

// ResizeNexus grows a nexus to size bytes (a multiple of its block size)
// while I/O continues, and tells its export: over NVMe/TCP the namespace
// takes the new size and connected hosts get a Namespace Attribute Changed
// event (a Linux host rescans it); over NBD, clients see the new size when
// they connect again (NBD tells a client the size only when it connects).
// Every online child must already hold size bytes: grow the replicas first.
// The new size is in the engine's state before the nexus serves it, so a
// nexus restored after a crash is never smaller than what was written to
// it. Idempotent: the current size returns the nexus (and announces the
// size again); a smaller one is refused (nexus.shrink). It is refused while
// a rebuild or resync runs (nexus.rebuilding, retry later).
func (e *Engine) ResizeNexus(ctx context.Context, name string, size int64) (NexusInfo, error) {
	if err := live(ctx); err != nil {
		return NexusInfo{}, err
	}
	if size <= 0 {
		return NexusInfo{}, fault.New(fault.InvalidArgument, "nexus.size",
			fmt.Sprintf("nexus %q: size %d is not positive", name, size), "give the new size, such as 20GiB")
	}
	ne, done, err := e.beginNexusOp(name, true)
	if err != nil {
		return NexusInfo{}, err
	}
	defer done()
	n := ne.n
	if size%int64(n.BlockSize()) != 0 {
		return NexusInfo{}, fault.New(fault.InvalidArgument, "nexus.size",
			fmt.Sprintf("nexus %q: size %d bytes is not a multiple of its %d-byte blocks", name, size, n.BlockSize()),
			"give a size that is a multiple of the nexus's block size")
	}
	rctx, cancel := context.WithTimeout(ctx, nexusOpenTimeout)
	defer cancel()
	from := n.Size()
	err = n.ResizeWith(rctx, size, func(context.Context) error {
		e.mu.Lock()
		ne.size = size
		e.gen++
		e.mu.Unlock()
		if err := e.save(); err != nil {
			e.mu.Lock()
			ne.size = from
			e.gen++
			e.mu.Unlock()
			return err
		}
		return nil
	})
	if err != nil {
		return NexusInfo{}, nexusFault(name, err)
	}
	if size != from {
		e.log.Info("nexus resized", "nexus", name, "from", from, "to", size)
	}
	if err := e.announceNexusSize(ne); err != nil {
		return NexusInfo{}, err
	}
	return e.Nexus(name)
}

// announceNexusSize makes the export of a published nexus take its size.
func (e *Engine) announceNexusSize(ne *nexusEntry) error {
	e.mu.Lock()
	s := ne.share
	e.mu.Unlock()
	if s == nil || s.dev == nil {
		return nil
	}
	rs, ok := e.exporter(s.protocol).(Resizer)
	if !ok {
		return nil
	}
	if err := rs.ResizeExport(nexusExportName(ne.name)); err != nil {
		return fault.Wrap(err, fault.Internal, "nexus.export_resize",
			fmt.Sprintf("nexus %q was resized, but its %s export could not take the new size", ne.name, s.protocol),
			"see the server log; resize it again to retry, or unpublish and publish it")
	}
	return nil
}

// Nexus returns one nexus.
func (e *Engine) Nexus(name string) (NexusInfo, error) {
	e.mu.Lock()
	ne, ok := e.nexuses[name]
	e.mu.Unlock()
	if !ok {
		return NexusInfo{}, nexusNotFound(name)
	}
	return e.nexusInfo(ne), nil
}

// Nexuses lists the nexuses, sorted by name.
func (e *Engine) Nexuses() []NexusInfo {
	e.mu.Lock()
	var nes []*nexusEntry
	for _, k := range sortedKeys(e.nexuses) {
		nes = append(nes, e.nexuses[k])
	}
	e.mu.Unlock()
	out := make([]NexusInfo, 0, len(nes))
	for _, ne := range nes {
		out = append(out, e.nexusInfo(ne))
	}
	return out
}

func (e *Engine) nexusInfo(ne *nexusEntry) NexusInfo {
	e.mu.Lock()
	ni := NexusInfo{Name: ne.name, UUID: ne.uuid, Size: ne.size, Reason: ne.reason, LeftOut: slices.Clone(ne.leftOut),
		HealthStore: ne.store}
	n := ne.n
	if s := ne.share; s != nil {
		ni.Share = &ShareInfo{Protocol: s.protocol, URI: s.uri, AllowedHosts: slices.Clone(s.allowed),
			ANAState: s.ana, MinCNTLID: s.minCntl, MaxCNTLID: s.maxCntl}
		if s.reason != "" && ni.Reason == "" {
			ni.Reason = "publication not restored: " + s.reason
		}
	}
	children := slices.Clone(ne.children)
	e.mu.Unlock()
	if n == nil {
		ni.State = NexusFaulted
		for _, c := range children {
			ni.Children = append(ni.Children, NexusChild{ChildStatus: nexus.ChildStatus{URI: c, State: nexus.StateFaulted}})
		}
		return ni
	}
	ni.BlockSize = n.BlockSize()
	ni.State = NexusOnline
	ni.Stats = n.Stats()
	running := map[string]nexus.RebuildStatus{}
	for _, r := range n.Rebuilds() {
		running[r.Child] = r
	}
	for _, c := range n.Children() {
		nc := NexusChild{ChildStatus: c}
		if r, ok := running[c.URI]; ok {
			nc.Rebuild = &r
		}
		if c.State != nexus.StateOnline {
			ni.State = NexusDegraded
		}
		ni.Children = append(ni.Children, nc)
	}
	if len(ni.LeftOut) > 0 {
		// Fewer children than it was created with: never "online".
		ni.State = NexusDegraded
	}
	ni.Epoch = n.Epoch()
	switch {
	case n.Fenced():
		ni.State = NexusFaulted
		ni.Reason = nexus.ErrFencedNexus.Error()
	case n.Failed():
		// The store's own words: a refused save (another instance of
		// the nexus saved first) says so.
		ni.State = NexusFaulted
		ni.Reason = nexus.ErrNexusFailed.Error()
		if err := n.Err(); err != nil {
			ni.Reason = err.Error()
		}
	}
	return ni
}

// DestroyNexus unpublishes and closes a nexus, releases its children,
// deletes its health record (in the store it was created with) and forgets
// it. The children's data is not touched. A nexus that stopped (fenced, or
// failed on its store) leaves what may be a newer instance's (see
// nexus.Destroy). A nexus of the system store (a volume's) is closed
// instead: its claims belong to the volume and stay, and its record is the
// volume's (the management service keeps it while the volume exists); a
// faulted one, never recreated here, is only forgotten.
func (e *Engine) DestroyNexus(ctx context.Context, name string) error {
	if err := live(ctx); err != nil {
		return err
	}
	ne, done, err := e.beginNexusOp(name, false)
	if err != nil {
		return err
	}
	e.unpublishNexus(ne)
	// The destroy goes through once started: a half-destroyed nexus would
	// keep its children claimed.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), nexusOpenTimeout)
	defer cancel()
	if ne.store == HealthStoreSystem {
		// A volume's nexus: the owner of the claims is the volume (the
		// nexus UUID is the volume's), which outlives this instance. The
		// nexus closes cleanly, so its record says which children are
		// current for the next instance on any node, and the claims stay:
		// that instance takes them at a higher epoch, fencing this one.
		// A faulted one, never recreated here, leaves them to whichever
		// instance is current (it may run on another node).
		if ne.n != nil {
			failed := ne.n.Err() != nil
			if err := ne.n.Close(); err != nil {
				e.log.Warn("closing the nexus of a volume", "nexus", name, "err", err)
			}
			// The store decides: the management service keeps a
			// volume's record for as long as the volume exists. A nexus
			// that failed on its store (another instance saved since)
			// leaves the record to that instance.
			if store, err := e.healthStore(ne.store); err == nil && !failed {
				if err := store.Delete(ctx, ne.uuid); err != nil && !errors.Is(err, nexus.ErrNoRecord) {
					e.log.Warn("deleting nexus health record", "nexus", name, "health_store", ne.store, "err", err)
				}
			}
		} else {
			e.log.Warn("forgetting a faulted nexus of the system health store; its children's claims and its record are left as they are",
				"nexus", name, "reason", ne.reason)
		}
	} else if ne.n != nil {
		// Releases every child's claim and deletes the health record.
		if err := ne.n.Destroy(ctx); err != nil {
			e.log.Warn("destroying nexus: some children keep its claim (destroy them with --force, or claim them with a nexus of the same uuid)",
				"nexus", name, "err", err)
		}
	} else {
		e.releaseClaims(ctx, ne)
		// From the store it was created with (the system store's record
		// is left when this engine has none now: nothing may delete it).
		if store, err := e.healthStore(ne.store); err != nil {
			e.log.Warn("not deleting nexus health record", "nexus", name, "health_store", ne.store, "err", err)
		} else if err := store.Delete(ctx, ne.uuid); err != nil && !errors.Is(err, nexus.ErrNoRecord) {
			e.log.Warn("deleting nexus health record", "nexus", name, "health_store", ne.store, "err", err)
		}
	}
	done()
	e.mu.Lock()
	delete(e.nexuses, name)
	e.gen++
	e.mu.Unlock()
	e.log.Info("nexus destroyed", "nexus", name)
	return e.save()
}

// releaseClaims gives up the claims of a nexus that could not be recreated
// (faulted): each child it can open that it owns is claimed once more at
// its own epoch and released. Children it cannot reach keep the claim,
// which is logged.
func (e *Engine) releaseClaims(ctx context.Context, ne *nexusEntry) {
	owner, err := uuid.Parse(ne.uuid)
	if err != nil {
		return
	}
	opener := e.nexusOpener()
	for _, uri := range append(slices.Clone(ne.children), leftOutURIs(ne.leftOut)...) {
		err := func() error {
			dev, err := opener.Open(ctx, uri)
			if err != nil {
				return err
			}
			defer dev.Close()
			cl, ok := dev.(bdev.Claimer)
			if !ok {
				return nil
			}
			st, err := cl.ClaimState(ctx)
			if err != nil || st.Owner != owner {
				return err
			}
			h, err := cl.Claim(ctx, bdev.Claim{Owner: owner, Epoch: st.Epoch})
			if err != nil {
				return err
			}
			defer h.Close()
			return h.Release(ctx)
		}()
		if err != nil {
			e.log.Warn("destroying a faulted nexus: the child keeps its claim", "nexus", ne.name, "child", uri, "err", err)
		}
	}
}

func leftOutURIs(l []LeftOutChild) []string {
	out := make([]string, 0, len(l))
	for _, c := range l {
		out = append(out, c.URI)
	}
	return out
}

// unpublishNexus withdraws a nexus's export, if any, and forgets it.
func (e *Engine) unpublishNexus(ne *nexusEntry) {
	e.mu.Lock()
	s := ne.share
	ne.share = nil
	if s != nil {
		e.gen++
	}
	e.mu.Unlock()
	if s != nil && s.dev != nil {
		if err := e.exporter(s.protocol).RemoveExport(nexusExportName(ne.name)); err != nil {
			e.log.Error("removing nexus export", "nexus", ne.name, "err", err)
		}
	}
}

// PublishNexus exports a nexus over protocol ("" means nvmf) and remembers
// the publication. Publishing again the same way returns the existing one;
// another protocol or other hosts are refused until it is unpublished. It is
// PublishNexusWith with the default controller ID range and ANA state.
func (e *Engine) PublishNexus(ctx context.Context, name, protocol string, allowedHosts []string) (NexusInfo, error) {
	return e.PublishNexusWith(ctx, name, PublishNexusOptions{Protocol: protocol, AllowedHosts: allowedHosts})
}

// PublishNexusOptions say how PublishNexusWith exports a nexus.
type PublishNexusOptions struct {
	// Protocol is ProtocolNVMf ("" too) or ProtocolNBD.
	Protocol string
	// AllowedHosts are the host NQNs admitted over nvmf; empty admits any.
	AllowedHosts []string
	// MinCNTLID and MaxCNTLID bound the NVMe controller IDs of an nvmf
	// publication (inclusive; 0 means 1 and target.MaxCNTLID). Publish a
	// nexus on several nodes (multipath) with disjoint ranges.
	MinCNTLID, MaxCNTLID uint16
	// ANAState is the nvmf publication's ANA state: 0 means optimized for
	// a new publication and the current state for an existing one.
	ANAState nvme.ANAState
}

// cntlidRange fills in the defaults of a controller ID range.
func cntlidRange(lo, hi uint16) (uint16, uint16) {
	if lo == 0 {
		lo = 1
	}
	if hi == 0 {
		hi = target.MaxCNTLID
	}
	return lo, hi
}

// PublishNexusWith exports a nexus as o says and remembers the publication
// (its controller ID range and ANA state with it) across restarts.
// Publishing again with the same protocol, hosts and range returns the
// existing publication, after setting o.ANAState if given and different
// (as SetNexusANAState); another protocol, other hosts or another range are
// refused until it is unpublished. A range or ANA state for nbd is refused.
func (e *Engine) PublishNexusWith(ctx context.Context, name string, o PublishNexusOptions) (NexusInfo, error) {
	if err := live(ctx); err != nil {
		return NexusInfo{}, err
	}
	protocol, allowedHosts := o.Protocol, o.AllowedHosts
	if protocol == "" {
		protocol = ProtocolNVMf
	}
	if err := e.checkProtocol(protocol); err != nil {
		return NexusInfo{}, err
	}
	if protocol == ProtocolNBD && len(allowedHosts) > 0 {
		return NexusInfo{}, fault.New(fault.InvalidArgument, "share.allowed_hosts",
			fmt.Sprintf("nexus %q: nbd cannot restrict hosts (NBD clients carry no identity)", name),
			"leave --allowed-host out for nbd, or publish over nvmf")
	}
	if protocol == ProtocolNBD && (o.MinCNTLID != 0 || o.MaxCNTLID != 0 || o.ANAState != 0) {
		return NexusInfo{}, fault.New(fault.InvalidArgument, "nexus.nvmf_only",
			fmt.Sprintf("nexus %q: controller IDs and ANA states are NVMe notions; nbd has neither", name),
			"leave the controller ID range and the ANA state out for nbd, or publish over nvmf")
	}
	for _, h := range allowedHosts {
		if !target.ValidNQN(h) {
			return NexusInfo{}, fault.New(fault.InvalidArgument, "share.host_nqn",
				fmt.Sprintf("nexus %q: allowed host %q is not an NVMe host NQN", name, h),
				"give host NQNs such as nqn.2014-08.org.nvmexpress:uuid:<uuid>")
		}
	}
	want := shareEntry{replica: name, protocol: protocol, allowed: slices.Clone(allowedHosts)}
	if protocol == ProtocolNVMf {
		want.minCntl, want.maxCntl = cntlidRange(o.MinCNTLID, o.MaxCNTLID)
		if want.minCntl > want.maxCntl || want.maxCntl > target.MaxCNTLID {
			return NexusInfo{}, fault.New(fault.InvalidArgument, "nexus.cntlid_range",
				fmt.Sprintf("nexus %q: controller IDs %d..%d are not a range within 1..%d", name, want.minCntl, want.maxCntl, target.MaxCNTLID),
				fmt.Sprintf("give 1 <= min <= max <= %d, disjoint from the ranges of the nexus's publications on other nodes", target.MaxCNTLID))
		}
		if o.ANAState != 0 && !o.ANAState.Valid() {
			return NexusInfo{}, anaStateFault(name, o.ANAState)
		}
		want.ana = o.ANAState
	}
	ne, done, err := e.beginNexusOp(name, true)
	if err != nil {
		return NexusInfo{}, err
	}
	if s := ne.share; s != nil {
		same := s.protocol == protocol && sameSet(s.allowed, allowedHosts) && s.minCntl == want.minCntl && s.maxCntl == want.maxCntl
		if !same || s.dev != nil {
			if !same {
				done()
				return NexusInfo{}, fault.New(fault.FailedPrecondition, "nexus.published",
					fmt.Sprintf("nexus %q is already published over %s (other hosts or controller IDs)", name, s.protocol),
					fmt.Sprintf("unpublish it first: nexctl nexus unpublish %s", name))
			}
			if want.ana == 0 || want.ana == s.ana {
				done()
				return e.Nexus(name)
			}
			err := e.setNexusANAState(ctx, ne, want.ana)
			done()
			if err != nil {
				return NexusInfo{}, err
			}
			return e.Nexus(name)
		}
		// The same publication could not be restored at start: retry it,
		// in the state it had unless another is asked for.
		if want.ana == 0 {
			want.ana = s.ana
		}
	}
	if protocol == ProtocolNVMf && want.ana == 0 {
		want.ana = nvme.ANAOptimized
	}
	uri, err := e.exportNexus(ne, &want)
	if err != nil {
		done()
		return NexusInfo{}, err
	}
	want.uri, want.dev = uri, ne.n
	e.mu.Lock()
	ne.share = &want
	e.gen++
	e.mu.Unlock()
	done()
	if err := e.save(); err != nil {
		return NexusInfo{}, err
	}
	e.log.Info("nexus published", "nexus", name, "uri", uri, "ana_state", want.ana, "cntlid_min", want.minCntl, "cntlid_max", want.maxCntl)
	return e.Nexus(name)
}

func anaStateFault(name string, st nvme.ANAState) error {
	return fault.New(fault.InvalidArgument, "nexus.ana_state",
		fmt.Sprintf("nexus %q: %v", name, st),
		"use optimized, non-optimized, inaccessible, persistent-loss or change")
}

// SetNexusANAState sets the ANA state of the nexus's nvmf publication on
// this node, announces it to connected hosts (an ANA change event) and
// remembers it with the publication across restarts. A state that refuses
// I/O (inaccessible, persistent loss, change) is in force for new I/O at
// once, and the call returns after the I/O already executing finished, so
// that no write of this node lands after it returns; ctx bounds that wait
// (on its end the state is set and remembered all the same, and the call
// fails Unavailable: call it again to wait again). Setting the current
// state changes nothing. A nexus not published over nvmf is refused
// (FailedPrecondition).
func (e *Engine) SetNexusANAState(ctx context.Context, name string, st nvme.ANAState) (NexusInfo, error) {
	if err := live(ctx); err != nil {
		return NexusInfo{}, err
	}
	if !st.Valid() {
		return NexusInfo{}, anaStateFault(name, st)
	}
	ne, done, err := e.beginNexusOp(name, false)
	if err != nil {
		return NexusInfo{}, err
	}
	err = e.setNexusANAState(ctx, ne, st)
	done()
	if err != nil {
		return NexusInfo{}, err
	}
	return e.Nexus(name)
}

// setNexusANAState does SetNexusANAState for a nexus marked busy.
func (e *Engine) setNexusANAState(ctx context.Context, ne *nexusEntry, st nvme.ANAState) error {
	e.mu.Lock()
	s := ne.share
	if s == nil || s.protocol != ProtocolNVMf {
		e.mu.Unlock()
		return fault.New(fault.FailedPrecondition, "nexus.not_published_nvmf",
			fmt.Sprintf("nexus %q is not published over nvmf: it has no ANA state", ne.name),
			fmt.Sprintf("publish it over nvmf first: nexctl nexus publish %s", ne.name))
	}
	exported, changed := s.dev != nil, s.ana != st
	s.ana = st
	if changed {
		e.gen++
	}
	e.mu.Unlock()
	if changed {
		if err := e.save(); err != nil {
			return err
		}
	}
	if !exported {
		// Not restored at start: the state applies when it is.
		return nil
	}
	setter, ok := e.exporter(ProtocolNVMf).(ANASetter)
	if !ok {
		return fault.New(fault.Internal, "nexus.publish",
			fmt.Sprintf("nexus %q: this node's nvmf exporter has no ANA states", ne.name), "see the server log")
	}
	if err := setter.SetExportANAState(ctx, nexusExportName(ne.name), st); err != nil {
		if ctx.Err() != nil {
			return fault.Wrap(err, fault.Unavailable, "nexus.ana_drain",
				fmt.Sprintf("nexus %q: the ANA state is %v, but I/O begun before is still executing", ne.name, st),
				"call again to wait for it; no new I/O is accepted meanwhile")
		}
		return fault.Wrap(err, fault.Internal, "nexus.publish",
			fmt.Sprintf("nexus %q: setting the ANA state %v", ne.name, st), "see the server log")
	}
	if changed {
		e.log.Info("nexus ANA state set", "nexus", ne.name, "ana_state", st)
	}
	return nil
}

// UnpublishNexus withdraws a nexus's export; connected clients are dropped.
// Unpublishing an unpublished nexus succeeds.
func (e *Engine) UnpublishNexus(ctx context.Context, name string) (NexusInfo, error) {
	if err := live(ctx); err != nil {
		return NexusInfo{}, err
	}
	ne, done, err := e.beginNexusOp(name, false)
	if err != nil {
		return NexusInfo{}, err
	}
	e.unpublishNexus(ne)
	done()
	if err := e.save(); err != nil {
		return NexusInfo{}, err
	}
	return e.Nexus(name)
}

// ChildAction is an administrative change to one child of a nexus.
type ChildAction string

// Child actions.
const (
	ChildAdd     ChildAction = "add"     // add, or re-add, with a full rebuild
	ChildRemove  ChildAction = "remove"  // remove from the nexus
	ChildFault   ChildAction = "fault"   // take out of service (admin)
	ChildOffline ChildAction = "offline" // take out of service for a while
	ChildOnline  ChildAction = "online"  // bring back with a partial rebuild
)

// NexusChildOp applies action to the child uri of nexus name. Membership
// changes (add, remove) are remembered across restarts; health changes are
// persisted by the nexus in the health store before this returns.
func (e *Engine) NexusChildOp(ctx context.Context, name string, action ChildAction, uri string) (NexusInfo, error) {
	if err := live(ctx); err != nil {
		return NexusInfo{}, err
	}
	if uri == "" {
		return NexusInfo{}, fault.New(fault.InvalidArgument, "nexus.child_missing",
			fmt.Sprintf("nexus %q: no child URI given", name), "give the child URI, as `nexctl nexus get` shows it")
	}
	if action == ChildAdd {
		if _, err := nexus.ParseChildURI(uri); err != nil {
			return NexusInfo{}, fault.Wrap(err, fault.InvalidArgument, "nexus.child_uri",
				fmt.Sprintf("nexus %q: child %q", name, uri), "use bdev:///<replica-uuid> or nvmf://host:port/<nqn>")
		}
	}
	ne, done, err := e.beginNexusOp(name, true)
	if err != nil {
		return NexusInfo{}, err
	}
	if action == ChildRemove && e.dropLeftOut(ne, uri) {
		// Removing a child that was left out at a restore: it is no child
		// of the running nexus, only missing from it.
		done()
		if err := e.save(); err != nil {
			return NexusInfo{}, err
		}
		e.log.Info("left-out child removed", "nexus", name, "child", uri)
		return e.Nexus(name)
	}
	ctx, cancel := context.WithTimeout(ctx, nexusOpenTimeout)
	defer cancel()
	n := ne.n
	switch action {
	case ChildAdd:
		err = n.AddChild(ctx, uri)
	case ChildRemove:
		err = n.RemoveChild(ctx, uri)
	case ChildFault:
		err = n.FaultChild(ctx, uri, nexus.ReasonAdmin)
	case ChildOffline:
		err = n.OfflineChild(ctx, uri)
	case ChildOnline:
		err = n.OnlineChild(ctx, uri)
	default:
		err = fault.New(fault.InvalidArgument, "nexus.child_action", fmt.Sprintf("child action %q is unknown", action),
			"use add, remove, fault, offline or online")
	}
	if err != nil {
		done()
		return NexusInfo{}, nexusFault(name, err)
	}
	e.mu.Lock()
	ne.children = childURIs(n)
	e.mu.Unlock()
	e.dropLeftOut(ne, uri)
	done()
	if err := e.save(); err != nil {
		return NexusInfo{}, err
	}
	e.log.Info("nexus child changed", "nexus", name, "action", string(action), "child", uri)
	return e.Nexus(name)
}

// dropLeftOut forgets uri as a left-out child of ne and reports whether it
// was one; the state changes either way (the caller saves it).
func (e *Engine) dropLeftOut(ne *nexusEntry, uri string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := len(ne.leftOut)
	ne.leftOut = slices.DeleteFunc(ne.leftOut, func(l LeftOutChild) bool { return l.URI == uri })
	e.gen++
	return len(ne.leftOut) < n
}

func childURIs(n *nexus.Nexus) []string {
	var out []string
	for _, c := range n.Children() {
		out = append(out, c.URI)
	}
	return out
}

// servingNexus returns the nexus of a serving entry.
func (e *Engine) servingNexus(name string) (*nexus.Nexus, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ne, ok := e.nexuses[name]
	if !ok {
		return nil, nexusNotFound(name)
	}
	if ne.n == nil {
		return nil, fault.New(fault.FailedPrecondition, "nexus.faulted",
			fmt.Sprintf("nexus %q is faulted: %s", name, ne.reason), "destroy it and create it again over current children")
	}
	return ne.n, nil
}

// NexusRebuilds returns the running rebuilds of a nexus and the last
// finished one of each child (of child only, when set), sorted by child.
func (e *Engine) NexusRebuilds(name, child string) ([]nexus.RebuildStatus, error) {
	n, err := e.servingNexus(name)
	if err != nil {
		return nil, err
	}
	if child != "" {
		st, err := n.RebuildStatus(child)
		if err != nil {
			return nil, nexusFault(name, err)
		}
		return []nexus.RebuildStatus{st}, nil
	}
	by := map[string]nexus.RebuildStatus{}
	for _, r := range n.RebuildHistory() {
		by[r.Child] = r
	}
	for _, r := range n.Rebuilds() {
		by[r.Child] = r
	}
	out := make([]nexus.RebuildStatus, 0, len(by))
	for _, k := range sortedKeys(by) {
		out = append(out, by[k])
	}
	return out, nil
}

// ControlRebuild pauses, resumes or stops the rebuild of a child.
func (e *Engine) ControlRebuild(ctx context.Context, name, child string, action nexus.RebuildAction) (nexus.RebuildStatus, error) {
	if err := live(ctx); err != nil {
		return nexus.RebuildStatus{}, err
	}
	n, err := e.servingNexus(name)
	if err != nil {
		return nexus.RebuildStatus{}, err
	}
	if err := n.Rebuild(child, action); err != nil {
		return nexus.RebuildStatus{}, nexusFault(name, err)
	}
	if action == nexus.RebuildStop {
		// The stop completes asynchronously; report its final state.
		ctx, cancel := context.WithTimeout(ctx, nexusOpenTimeout)
		defer cancel()
		st, err := n.WaitRebuild(ctx, child)
		if err != nil {
			return st, nexusFault(name, err)
		}
		return st, nil
	}
	st, err := n.RebuildStatus(child)
	if err != nil {
		return st, nexusFault(name, err)
	}
	return st, nil
}

// VerifyNexus compares the online children of a nexus while I/O continues.
func (e *Engine) VerifyNexus(ctx context.Context, name string) (nexus.VerifyReport, error) {
	n, err := e.servingNexus(name)
	if err != nil {
		return nexus.VerifyReport{}, err
	}
	rep, err := n.Verify(ctx)
	if err != nil {
		return rep, nexusFault(name, err)
	}
	return rep, nil
}

// nexusesUsingLocked names the nexuses ("nexus/replica") that have a
// replica of the pool h as a local child. PoolHandle methods take no engine
// lock, so calling them under e.mu is safe.
func (e *Engine) nexusesUsingLocked(h PoolHandle) []string {
	byUUID := map[string]string{}
	for _, r := range h.Replicas() {
		byUUID[strings.ToLower(r.UUID)] = r.Name
	}
	var out []string
	for _, name := range sortedKeys(e.nexuses) {
		for _, c := range e.nexuses[name].children {
			if cu, err := nexus.ParseChildURI(c); err == nil && cu.Scheme == "bdev" {
				if r, ok := byUUID[strings.ToLower(cu.Name)]; ok {
					out = append(out, name+"/"+r)
				}
			}
		}
	}
	return out
}

// closeNexuses unpublishes and closes every nexus (at engine close), before
// the pools their local children live in are exported.
func (e *Engine) closeNexuses(nexuses map[string]*nexusEntry) []error {
	var errs []error
	for name, ne := range nexuses {
		if s := ne.share; s != nil && s.dev != nil {
			if err := e.exporter(s.protocol).RemoveExport(nexusExportName(name)); err != nil {
				errs = append(errs, fmt.Errorf("unpublish nexus %q: %w", name, err))
			}
		}
		if ne.n != nil {
			if err := ne.n.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close nexus %q: %w", name, err))
			}
		}
	}
	return errs
}
