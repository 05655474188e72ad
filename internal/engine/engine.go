// Package engine is the registry of one storage node's pools, replicas and
// shares, and the gRPC service over it (api/engine/v1).
//
// The engine owns object lifetimes and names; the packages below it (bdev,
// pool, nbd) stay pure mechanisms. Its methods are plain Go, usable without
// gRPC; the gRPC handlers in grpc.go only convert messages.
//
// Concurrency: one mutex guards the registry and is never held across I/O.
// An operation marks the objects it works on as busy under the lock, does its
// I/O unlocked, then records the result under the lock again; a conflicting
// operation on a busy object fails with Unavailable and may be retried.
//
// Durability: which pools exist on which disks and which replicas are shared
// how is kept in a JSON state file in the data dir, replaced atomically after
// every change. Replicas themselves live on the pools' disks.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/stats"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fsutil"
	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/target"
)

// Config configures an Engine.
type Config struct {
	// DataDir holds the state file; it is created when missing.
	DataDir string
	// Backend opens disks and pools. Required.
	Backend Backend
	// NBD serves shared replicas over NBD; nil disables the nbd protocol.
	NBD Exporter
	// NVMf serves shared replicas over NVMe/TCP; nil disables nvmf.
	NVMf Exporter
	// Pools are imported at start, before the pools remembered in the state
	// file. A listed disk that holds no pool is reported as a faulted pool
	// and never written to.
	Pools []PoolConfig
	// Logger receives the engine's logs; nil means slog.Default().
	Logger *slog.Logger
	// NexusRemote opens nvmf:// children of nexuses; nil means the NVMe/TCP
	// initiator with DefaultNexusRemote (and HostNQN).
	NexusRemote func(ctx context.Context, addr, nqn string) (bdev.Device, error)
	// HostNQN is the NVMe host NQN the engine's initiator connects to
	// remote nexus children with, so that a replica shared only to this
	// node (allowed hosts) admits its nexuses. Empty: the initiator's
	// default, a host NQN drawn at random when the process starts. Unused
	// when NexusRemote is set.
	HostNQN string
	// SystemHealth is the "system" health store: the management service's,
	// which every node shares, so that a nexus of the same UUID created on
	// another node finds the record. Nexuses created with health store
	// "system" keep their health there; nil refuses them. Its Save must
	// refuse (with an error that says so) a record whose generation does
	// not follow the stored one.
	SystemHealth nexus.HealthStore
}

// PoolConfig is a pool the server configuration lists.
type PoolConfig struct {
	Name        string
	Disk        string
	ClusterSize int64 // bytes; used when the pool is created, 0 = default
	// Overcommit is the thin over-commit limit in percent; 0 keeps the
	// pool's own. A pool imported with another limit gets this one.
	Overcommit int
}

// PoolState is the state of a pool in the engine.
type PoolState string

// Pool states.
const (
	PoolOnline  PoolState = "online"
	PoolFaulted PoolState = "faulted" // known but not imported; see Reason
)

// ReplicaState is the state of a replica in the engine.
type ReplicaState string

// Replica states.
const (
	ReplicaOnline  ReplicaState = "online"
	ReplicaFaulted ReplicaState = "faulted" // its share could not be restored
)

// Protocols a replica can be shared with.
const (
	ProtocolNBD  = "nbd"
	ProtocolNVMf = "nvmf"
)

// PoolInfo describes a pool.
type PoolInfo struct {
	Name   string
	UUID   string
	Disk   string
	State  PoolState
	Reason string
	Stats  PoolStats
	// Labels are those set with SetPoolLabels (nil when none).
	Labels map[string]string
}

// ReplicaInfo describes a replica.
type ReplicaInfo struct {
	Name      string
	UUID      string
	Pool      string
	Size      int64
	Thin      bool
	Allocated int64
	State     ReplicaState
	Reason    string
	Share     *ShareInfo  // the first of Shares; nil when not shared
	Shares    []ShareInfo // one per protocol, sorted by protocol
	// NGUID identifies this incarnation of the replica; Owner is the UUID
	// of the nexus that claimed it ("" when unowned) and Epoch the highest
	// fencing epoch it accepted.
	NGUID [16]byte
	Owner string
	Epoch uint64
	// Origin is, for a clone, the UUID of the snapshot it was made from;
	// Exclusive the bytes in clusters only this replica holds.
	Origin    string
	Exclusive int64
}

// ShareInfo says how a replica is shared.
type ShareInfo struct {
	Protocol     string
	URI          string
	AllowedHosts []string
	// ANAState, MinCNTLID and MaxCNTLID describe an NVMe-oF publication of
	// a nexus: its ANA state and the controller IDs it gives hosts. Zero
	// otherwise.
	ANAState             nvme.ANAState
	MinCNTLID, MaxCNTLID uint16
}

type poolEntry struct {
	name, uuid, disk string
	labels           map[string]string // SetPoolLabels; remembered
	h                PoolHandle        // nil when faulted
	reason           string
	ops              int  // replica operations in flight
	exclusive        bool // destroy or export in flight
}

// shareEntry is one export of a replica; a replica has at most one per
// protocol. The registry keys it by shareKey(replica, protocol).
type shareEntry struct {
	replica  string
	protocol string
	allowed  []string
	uri      string
	dev      bdev.Device // nil when the share could not be restored
	reason   string
	// nvmf publications of a nexus: the ANA state and the controller ID
	// range (zero for other shares).
	ana              nvme.ANAState
	minCntl, maxCntl uint16
}

// Engine is the registry of one node's pools, replicas and shares. All
// methods are safe for concurrent use.
type Engine struct {
	cfg       Config
	log       *slog.Logger
	statePath string

	mu       sync.Mutex
	pools    map[string]*poolEntry
	replicas map[string]string      // replica name -> pool name
	shares   map[string]*shareEntry // shareKey(replica, protocol) -> share
	nexuses  map[string]*nexusEntry
	health   nexus.HealthStore // the node's file store ("local")
	busy     map[string]bool   // "replica/<name>", "pool/<name>", "disk/<key>"
	gen      uint64            // bumped on every change of persistent state
	closed   bool
	// quiesced: the nexuses are closed for a shutdown (Quiesce); nexus
	// operations fail as on a closed engine, replicas keep being served.
	quiesced bool
	started  time.Time

	stateMu  sync.Mutex // serializes state file writes
	savedGen uint64

	// Nexuses of the system health store are restored in the background
	// (restoreSystemNexus): the store may be a moment away at start.
	// Close cancels them and waits.
	restoreCtx    context.Context
	restoreCancel context.CancelFunc
	restoring     sync.WaitGroup
	pending       []func() // restores New leaves for the background

	lock *fsutil.Lock // of the data dir, released by Close

	// holds are the quiesces of nexuses for snapshots (QuiesceNexus), by
	// quiesce id; qmu guards it.
	qmu   sync.Mutex
	holds map[string]*quiesceHold
}

// LockFileName is the lock file in the data dir that keeps a second engine
// off it while one runs.
const LockFileName = "engine.lock"

// dataDirInUse explains a data dir that another engine holds.
func dataDirInUse(dir string, err error) error {
	var held *fsutil.HeldError
	if !errors.As(err, &held) {
		return fault.Wrap(err, fault.Internal, "engine.data_dir_lock", fmt.Sprintf("data dir %s cannot be locked", dir),
			"check that the data dir is on a local file system that supports flock")
	}
	return fault.Wrap(err, fault.FailedPrecondition, "engine.data_dir_in_use",
		fmt.Sprintf("data dir %s is in use by %s (another nexstor server)", dir, held.Holder()),
		"stop the other server, or give this one its own data dir (--data-dir, data_dir)")
}

// New starts an engine: it loads the state file, imports the configured and
// remembered pools, and restores the shares. Pools or shares that cannot be
// restored are reported (faulted, with a reason), not fatal; only an
// unreadable data dir or state file is.
func New(cfg Config) (*Engine, error) {
	if cfg.Backend == nil {
		return nil, errors.New("engine: no backend")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("engine: no data dir")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HostNQN != "" && !target.ValidNQN(cfg.HostNQN) {
		return nil, fault.New(fault.InvalidArgument, "engine.host_nqn",
			fmt.Sprintf("host NQN %q is not an NVMe NQN", cfg.HostNQN),
			"give a host NQN such as nqn.2014-08.org.nvmexpress:uuid:<uuid> (see /etc/nvme/hostnqn), or leave it empty")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("engine: data dir: %w", err)
	}
	// Two engines on one data dir would import the same pools and hand out
	// the same clusters: the second is refused before it reads anything.
	lock, err := fsutil.LockFile(filepath.Join(cfg.DataDir, LockFileName))
	if err != nil {
		return nil, dataDirInUse(cfg.DataDir, err)
	}
	e := &Engine{
		lock:      lock,
		cfg:       cfg,
		log:       cfg.Logger,
		statePath: filepath.Join(cfg.DataDir, StateFileName),
		pools:     map[string]*poolEntry{},
		replicas:  map[string]string{},
		shares:    map[string]*shareEntry{},
		nexuses:   map[string]*nexusEntry{},
		busy:      map[string]bool{},
		started:   time.Now(),
	}
	e.restoreCtx, e.restoreCancel = context.WithCancel(context.Background())
	st, err := loadState(e.statePath)
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	if e.health, err = nexus.NewFileStore(filepath.Join(cfg.DataDir, NexusHealthDir)); err != nil {
		lock.Unlock()
		return nil, fmt.Errorf("engine: nexus health store: %w", err)
	}
	wanted := slices.Clone(cfg.Pools)
	for _, p := range st.Pools {
		wanted = append(wanted, PoolConfig{Name: p.Name, Disk: p.Disk})
	}
	uuids := map[string]string{}
	for _, p := range st.Pools {
		uuids[p.Name] = p.UUID
	}
	for i, p := range wanted {
		if _, dup := e.pools[p.Name]; dup {
			continue
		}
		e.restorePool(p, uuids[p.Name], i < len(cfg.Pools))
	}
	for _, p := range st.Pools {
		if pe, ok := e.pools[p.Name]; ok && len(p.Labels) > 0 {
			pe.labels = maps.Clone(p.Labels)
		}
	}
	for _, s := range st.Shares {
		e.restoreShare(s)
	}
	// Nexuses last: their local children are replicas of the pools above.
	for _, n := range st.Nexuses {
		if _, dup := e.nexuses[n.Name]; !dup {
			e.restoreNexus(n)
		}
	}
	e.gen++
	if err := e.save(); err != nil {
		e.Close()
		return nil, err
	}
	e.startRestores()
	return e, nil
}

// restorePool imports a configured or remembered pool. A RAM disk
// (malloc://) never holds a pool when the engine starts, so its pool is
// created instead: there is nothing on it to lose. The disk of a configured
// pool is resolved (DiskResolver) as a new pool's is; a remembered one is
// used as recorded.
func (e *Engine) restorePool(p PoolConfig, uuid string, configured bool) {
	pe := &poolEntry{name: p.Name, uuid: uuid, disk: p.Disk}
	e.pools[p.Name] = pe
	if configured {
		disk, err := e.resolveDisk(p.Disk)
		if err != nil {
			pe.reason = err.Error()
			e.log.Error("pool not imported", "pool", p.Name, "disk", p.Disk, "err", pe.reason)
			return
		}
		p.Disk, pe.disk = disk, disk
	}
	for _, other := range e.pools {
		if other != pe && other.h != nil && diskKey(other.disk) == diskKey(p.Disk) {
			pe.reason = fmt.Sprintf("disk %s is already used by pool %q", p.Disk, other.name)
			e.log.Error("pool not imported", "pool", p.Name, "disk", p.Disk, "reason", pe.reason)
			return
		}
	}
	var h PoolHandle
	var err error
	if isRAMDisk(p.Disk) {
		h, err = e.cfg.Backend.CreatePool(p.Disk, CreatePoolOptions{Name: p.Name, ClusterSize: p.ClusterSize, Overcommit: p.Overcommit})
	} else {
		h, err = e.cfg.Backend.ImportPool(importURI(p.Disk))
	}
	if err != nil {
		pe.reason = diskFault(p.Disk, err).Error()
		e.log.Error("pool not imported", "pool", p.Name, "disk", p.Disk, "err", pe.reason)
		return
	}
	if h.Name() != p.Name {
		pe.reason = fmt.Sprintf("disk %s holds pool %q, not %q", p.Disk, h.Name(), p.Name)
		e.log.Error("pool not imported", "pool", p.Name, "disk", p.Disk, "reason", pe.reason)
		if err := h.Close(); err != nil {
			e.log.Error("closing pool", "pool", h.Name(), "err", err)
		}
		return
	}
	if p.Overcommit != 0 && h.Stats().Overcommit != p.Overcommit {
		// The configuration changed the limit: it applies from now on.
		if err := h.SetOvercommit(p.Overcommit); err != nil {
			e.log.Error("pool over-commit limit not changed", "pool", p.Name, "limit", p.Overcommit, "err", err)
		} else {
			e.log.Info("pool over-commit limit changed by the configuration", "pool", p.Name, "limit", p.Overcommit)
		}
	}
	if uuid != "" && h.UUID() != uuid && !isRAMDisk(p.Disk) {
		e.log.Warn("pool has a new uuid (it was formatted again)", "pool", p.Name, "was", uuid, "now", h.UUID())
	}
	pe.h, pe.uuid = h, h.UUID()
	for _, r := range h.Replicas() {
		if owner, dup := e.replicas[r.Name]; dup {
			e.log.Error("replica name used in two pools; serving the first", "replica", r.Name, "pool", owner, "ignored_pool", p.Name)
			continue
		}
		e.replicas[r.Name] = p.Name
	}
	e.log.Info("pool imported", "pool", p.Name, "disk", p.Disk, "uuid", pe.uuid)
}

func (e *Engine) restoreShare(s stateShare) {
	se := &shareEntry{replica: s.Replica, protocol: s.Protocol, allowed: s.AllowedHosts}
	e.shares[shareKey(s.Replica, s.Protocol)] = se
	poolName, ok := e.replicas[s.Replica]
	if !ok {
		se.reason = fmt.Sprintf("replica %q not found in any imported pool", s.Replica)
		e.log.Error("share not restored", "replica", s.Replica, "reason", se.reason)
		return
	}
	dev, uri, err := e.export(e.pools[poolName].h, s.Replica, s.Protocol, s.AllowedHosts)
	if err != nil {
		se.reason = err.Error()
		e.log.Error("share not restored", "replica", s.Replica, "err", err)
		return
	}
	se.dev, se.uri = dev, uri
	e.log.Info("replica shared", "replica", s.Replica, "uri", uri)
}

// export opens a replica and adds it to the protocol's server. The device
// returned (and served) is the replica wrapped in a *stats.Device.
func (e *Engine) export(h PoolHandle, name, protocol string, allowed []string) (bdev.Device, string, error) {
	if err := e.checkProtocol(protocol); err != nil {
		return nil, "", err
	}
	rs, err := h.ReplicaInfo(name)
	if err != nil {
		return nil, "", mapPoolErr(err, "replica", name)
	}
	raw, err := h.OpenReplica(name)
	if err != nil {
		return nil, "", mapPoolErr(err, "replica", name)
	}
	// Counting costs a few atomics per I/O and allocates nothing; IOStats
	// reads the counters.
	dev := stats.New(raw)
	uri, err := e.exporter(protocol).AddExport(ExportSpec{Name: name, UUID: rs.UUID, NGUID: rs.NGUID,
		Description: fmt.Sprintf("nexstor replica %s (nguid %x)", name, rs.NGUID), AllowedHosts: allowed}, dev.Claimable())
	if err != nil {
		dev.Close()
		return nil, "", fault.Wrap(err, fault.Internal, "share.export",
			fmt.Sprintf("replica %q cannot be exported over %s", name, protocol), "see the server log")
	}
	return dev, uri, nil
}

// exporter returns the server of a protocol that checkProtocol accepted.
func (e *Engine) exporter(protocol string) Exporter {
	switch protocol {
	case ProtocolNBD:
		return e.cfg.NBD
	case ProtocolNVMf:
		return e.cfg.NVMf
	}
	return nil
}

func (e *Engine) checkProtocol(protocol string) error {
	switch protocol {
	case ProtocolNBD:
		if e.cfg.NBD == nil {
			return fault.New(fault.FailedPrecondition, "share.nbd_disabled",
				"the nbd protocol is not enabled on this server",
				"start the server with an NBD listen address (nbd.listen in the config, or --nbd)")
		}
		return nil
	case ProtocolNVMf:
		if e.cfg.NVMf == nil {
			return fault.New(fault.FailedPrecondition, "share.nvmf_disabled",
				"the nvmf protocol is not enabled on this server",
				"start the server with an NVMe/TCP listen address (nvmf.listen in the config, or --nvmf)")
		}
		return nil
	}
	return fault.New(fault.InvalidArgument, "share.protocol_invalid",
		fmt.Sprintf("protocol %q is unknown", protocol), "use --protocol nbd or --protocol nvmf")
}

// save writes the state file if the registry changed since the last write.
// It is called without e.mu held.
func (e *Engine) save() error {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	e.mu.Lock()
	gen := e.gen
	if gen == e.savedGen {
		e.mu.Unlock()
		return nil
	}
	st := e.snapshotLocked()
	e.mu.Unlock()
	if err := saveState(e.statePath, st); err != nil {
		return fault.Wrap(err, fault.Unavailable, "engine.state",
			"the engine state file cannot be written", "check the data dir's disk and permissions")
	}
	e.savedGen = gen
	return nil
}

func (e *Engine) snapshotLocked() persistentState {
	st := persistentState{Version: stateVersion, Pools: []statePool{}, Shares: []stateShare{}}
	for _, name := range sortedKeys(e.nexuses) {
		ne := e.nexuses[name]
		sn := stateNexus{Name: ne.name, UUID: ne.uuid, Size: ne.size, Children: slices.Clone(ne.children),
			LeftOut: slices.Clone(ne.leftOut)}
		if ne.store != HealthStoreLocal {
			sn.HealthStore = ne.store
		}
		if ne.share != nil {
			sn.Share = &stateShare{Protocol: ne.share.protocol, AllowedHosts: ne.share.allowed,
				MinCNTLID: ne.share.minCntl, MaxCNTLID: ne.share.maxCntl}
			if ne.share.ana != 0 {
				sn.Share.ANAState = ne.share.ana.String()
			}
		}
		st.Nexuses = append(st.Nexuses, sn)
	}
	for _, name := range sortedKeys(e.pools) {
		p := e.pools[name]
		st.Pools = append(st.Pools, statePool{Name: p.name, UUID: p.uuid, Disk: p.disk, Labels: maps.Clone(p.labels)})
	}
	for _, name := range sortedKeys(e.shares) {
		s := e.shares[name]
		st.Shares = append(st.Shares, stateShare{Replica: s.replica, Protocol: s.protocol, AllowedHosts: s.allowed})
	}
	return st
}

// Close stops every share and exports every pool, keeping the state file: a
// new Engine on the same data dir shares and imports them again.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	// Restores in the background end first: they open children of the
	// pools closed below.
	e.restoreCancel()
	e.restoring.Wait()
	// Holds of quiesced nexuses end now (their snapshots fail: the
	// caller's ResumeNexus finds no hold): writes resume before the
	// nexuses close.
	e.endHolds()
	e.mu.Lock()
	// Copies: operations still in flight may record their results.
	shares := maps.Clone(e.shares)
	pools := maps.Clone(e.pools)
	var nexuses map[string]*nexusEntry
	if !e.quiesced {
		nexuses = maps.Clone(e.nexuses)
	}
	e.mu.Unlock()
	// Nexuses first: their children are replicas of the pools.
	errs := e.closeNexuses(nexuses)
	for _, s := range shares {
		if s.dev == nil {
			continue
		}
		if err := e.exporter(s.protocol).RemoveExport(s.replica); err != nil {
			errs = append(errs, fmt.Errorf("unshare replica %q (%s): %w", s.replica, s.protocol, err))
		}
		if err := s.dev.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close replica %q: %w", s.replica, err))
		}
	}
	for name, p := range pools {
		if p.h == nil {
			continue
		}
		if err := p.h.Close(); err != nil {
			errs = append(errs, fmt.Errorf("export pool %q: %w", name, err))
		} else {
			e.log.Info("pool exported", "pool", name)
		}
	}
	// Last: another engine may take the data dir once the pools are closed.
	if err := e.lock.Unlock(); err != nil {
		errs = append(errs, fmt.Errorf("unlock the data dir: %w", err))
	}
	return errors.Join(errs...)
}

// Quiesce is the first half of a shutdown that spans several nodes: it
// unpublishes and closes every nexus, flushing its children and recording a
// clean shutdown, while every node still serves its replicas. Stopping a
// node whose replicas are children of another node's nexus before that
// nexus closed would fail the closing flush and fault those children, so a
// system restarted together would come back degraded. After Quiesce, nexus
// operations fail as on a closed engine; replicas and shares keep working
// until Close. The nexuses stay remembered and are restored at the next
// start. Quiesce is idempotent.
func (e *Engine) Quiesce() error {
	e.mu.Lock()
	if e.closed || e.quiesced {
		e.mu.Unlock()
		return nil
	}
	e.quiesced = true
	e.mu.Unlock()
	// A restore still running is pointless now: it ends, and closes what
	// it opened.
	e.restoreCancel()
	e.restoring.Wait()
	e.mu.Lock()
	nexuses := maps.Clone(e.nexuses)
	e.mu.Unlock()
	return errors.Join(e.closeNexuses(nexuses)...)
}

func (e *Engine) checkOpenLocked() error {
	if e.closed || e.quiesced {
		return fault.New(fault.Unavailable, "engine.closed", "the engine is shutting down", "retry when the server is back")
	}
	return nil
}

func busyErr(what string) error {
	return fault.New(fault.Unavailable, "engine.busy",
		fmt.Sprintf("%s is busy with another operation", what), "retry in a moment")
}

// diskKey identifies the disk behind a URI, so that two spellings of one
// disk (file:///a?size=1GiB, /a) are recognised as the same.
func diskKey(uri string) string {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme == "" {
		return filepath.Clean(uri)
	}
	if u.Scheme == "malloc" {
		return "malloc:" + strings.TrimPrefix(u.Path, "/") + u.Host
	}
	return filepath.Clean(u.Path)
}

// resolveDisk returns the disk URI to open and record for a new pool: the
// backend's choice where it is a DiskResolver, else uri.
func (e *Engine) resolveDisk(uri string) (string, error) {
	r, ok := e.cfg.Backend.(DiskResolver)
	if !ok {
		return uri, nil
	}
	disk, err := r.ResolveDisk(uri)
	if err != nil {
		return "", diskFault(uri, err)
	}
	return disk, nil
}

// isRAMDisk reports whether uri names a malloc:// RAM disk.
func isRAMDisk(uri string) bool { return strings.HasPrefix(uri, "malloc:") }

// fileScheme reports whether a disk URI scheme names a file or block device
// (file://, aio://, uring://), the schemes whose size key creates a file.
func fileScheme(s string) bool {
	return s == bdev.SchemeFile || s == bdev.SchemeAIO || s == bdev.SchemeURing
}

// importURI drops the size parameter of a file-backed disk URI: importing
// must never create a missing file, only open an existing one.
func importURI(uri string) string {
	u, err := url.Parse(uri)
	if err != nil || !fileScheme(u.Scheme) {
		return uri
	}
	q := u.Query()
	if !q.Has("size") {
		return uri
	}
	q.Del("size")
	u.RawQuery = q.Encode()
	return u.String()
}

// shareKey is the registry key of a replica's share over one protocol.
// Replica names cannot hold '/', so the key is unambiguous.
func shareKey(replica, protocol string) string { return replica + "/" + protocol }

// sharesOfLocked returns the shares of a replica, sorted by protocol.
func (e *Engine) sharesOfLocked(replica string) []*shareEntry {
	var out []*shareEntry
	for _, k := range sortedKeys(e.shares) {
		if s := e.shares[k]; s.replica == replica {
			out = append(out, s)
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
