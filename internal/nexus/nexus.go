// Package nexus implements the synchronous N-way mirror that sits between a
// volume's consumers and its replicas.
//
// A Nexus is itself a bdev.Device. Writes fan out to every online and
// rebuilding child and are acknowledged when all of them have completed;
// overlapping writes are serialized by a range lock so that children apply
// them in the same order and stay identical. Reads go to one online child.
// A child that fails an I/O is retired, and the new health set is written to
// a HealthStore before the I/O that caused it is acknowledged; a nexus
// recreated from the store therefore never reads a child that missed an
// acknowledged write. When the store cannot be written the nexus fails
// closed: every later I/O returns ErrNexusFailed.
//
// Children are added with a full rebuild (AddChild), brought back from a
// short absence with a partial rebuild of the segments written meanwhile
// (OfflineChild, OnlineChild), and compared with Verify. After a crash of
// the process hosting it, a recreated nexus resyncs its children from one
// of them, since writes in flight at the crash may have reached only some.
//
// Lock order: adminMu, then range locks, then stateMu. Writes hold their
// range lock while they persist a retirement, so no write that overlaps a
// rebuild copy or a resync can slip between a state change and its use.
package nexus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

// Config describes a nexus to create.
type Config struct {
	// Name is a human label used in logs and errors.
	Name string
	// UUID identifies the nexus in the HealthStore. Required.
	UUID string
	// Size is the capacity in bytes, a multiple of the children's block
	// size; every child must be at least this large. Zero means the size
	// of the smallest child that opens.
	Size int64
	// Children are the child URIs (see Router). At least one.
	Children []string
	// Store persists the health set. Required.
	Store HealthStore
	// Opener opens child URIs. Required. When it implements
	// LocalityOpener, reads prefer local children.
	Opener Opener
	// RebuildSegment is the unit of rebuild copies, verification and of
	// the offline write-intent bitmaps, in bytes (default 1 MiB; a
	// multiple of the block size).
	RebuildSegment int64
	// RebuildConcurrency bounds the segments a rebuild copies in
	// parallel (default 4).
	RebuildConcurrency int
	// Force trusts every listed child as current, whatever the store
	// says. Use it only when you know the children hold the same data.
	Force bool
	// Logger receives state changes; slog.Default() when nil.
	Logger *slog.Logger
}

// DefaultRebuildSegment is the default Config.RebuildSegment.
const DefaultRebuildSegment = 1 << 20

// storeTimeout bounds one HealthStore.Save issued from the I/O path, which
// has no context of its own.
const storeTimeout = 30 * time.Second

// fanWorkers is the number of goroutines that issue child I/O for the
// fan-out. The submitting goroutine issues the first child's I/O itself, so
// a one-child nexus never hands off.
const fanWorkers = 128

// Nexus is a mirror over its children. It implements bdev.Device; all
// methods are safe for concurrent use.
type Nexus struct {
	name  string
	uuid  string
	size  int64
	bs    int
	seg   int64
	nseg  int64
	conc  int
	store HealthStore
	open  Opener
	log   *slog.Logger

	locks    rangeLock
	view     atomic.Pointer[view]
	failed   atomic.Bool
	closed   atomic.Bool
	inflight atomic.Int64

	// adminMu serializes administrative changes (add, remove, offline,
	// online, fault, close); they may block on I/O drains and opens.
	adminMu sync.Mutex
	// stateMu guards children, child states and gen, and serializes
	// store writes, so that the stored record always matches the view
	// that is published after it.
	stateMu  sync.Mutex
	children []*child
	gen      uint64
	jobs     map[*child]*rebuildJob
	history  []RebuildStatus

	rr    atomic.Uint64
	queue chan childIO
	wgWk  sync.WaitGroup
	// ops is the free list of fan-out ops. Not a sync.Pool: ops are
	// released by workers on other Ps, where a Pool would park them in
	// per-P slots the submitters never see.
	ops chan *fanOp

	ctx    context.Context
	cancel context.CancelFunc
	jobsWG sync.WaitGroup

	unclean    bool // the previous instance was not closed
	cleanClose bool // guarded by stateMu: the final record of Close

	// Resync after an unclean shutdown (resync.go).
	resyncFrom     atomic.Pointer[child] // the authority; nil when in sync
	resyncPos      atomic.Int64          // bytes below it are in sync
	resyncDone     chan struct{}
	resyncErr      error // set before resyncDone is closed
	resyncRepaired atomic.Int64

	rebuildBytes atomic.Int64
	retired      atomic.Int64
	readRetries  atomic.Int64
}

// child is one child device. uri, dev and local never change after the
// child is published; a child that is reopened (rebuilt, brought online)
// is replaced by a new child value, so a pointer identifies one open.
type child struct {
	uri   string
	dev   bdev.Device
	local bool

	state atomic.Int32 // ChildState; written under stateMu
	// The rest is guarded by stateMu.
	reason  FaultReason
	dirty   *bitmap // offline children: segments written while away
	lastErr string
	closed  bool
}

func (c *child) st() ChildState { return ChildState(c.state.Load()) }

// view is an immutable snapshot of the children that I/O uses; it is
// replaced (never modified) under stateMu after every persisted change.
type view struct {
	online   []*child // readable, in configuration order
	writable []*child // online then rebuilding: every write goes to all
	offline  []*child // need write-intent bits
	local    *child   // first local online child
}

// New opens the children and returns a serving nexus. It consults the
// health store: a child the store records as anything but online (or does
// not know, when a record exists) is refused with a *StaleChildError unless
// Force is set; children recorded offline are kept offline with their
// write-intent bitmap, ready for OnlineChild. A child that fails to open is
// recorded offline (open-failed, with an empty bitmap) when the store
// records it online after a clean close, and faulted (open-failed)
// otherwise; at least one must open.
func New(ctx context.Context, cfg Config) (*Nexus, error) {
	if cfg.UUID == "" {
		return nil, errors.New("nexus: a UUID is required")
	}
	label := cfg.Name
	if label == "" {
		label = cfg.UUID
	}
	if len(cfg.Children) == 0 {
		return nil, fmt.Errorf("nexus %s: at least one child URI is required", label)
	}
	if cfg.Store == nil || cfg.Opener == nil {
		return nil, fmt.Errorf("nexus %s: a health store and an opener are required", label)
	}
	seen := map[string]bool{}
	for _, u := range cfg.Children {
		if u == "" || seen[u] {
			return nil, fmt.Errorf("nexus %s: child URI %q is empty or listed twice", label, u)
		}
		seen[u] = true
	}
	seg := cfg.RebuildSegment
	if seg == 0 {
		seg = DefaultRebuildSegment
	}
	if seg < 512 {
		return nil, fmt.Errorf("nexus %s: rebuild segment %d is too small: use at least 512 bytes", label, seg)
	}
	conc := cfg.RebuildConcurrency
	if conc <= 0 {
		conc = 4
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("nexus", label)

	rec, err := cfg.Store.Load(ctx, cfg.UUID)
	fresh := errors.Is(err, ErrNoRecord)
	if err != nil && !fresh {
		if !cfg.Force {
			return nil, fmt.Errorf("nexus %s: %w", label, err)
		}
		// Force trusts the listed children over an unreadable record.
		log.Warn("health record unreadable; forced to trust every listed child", "err", err)
		rec, fresh = HealthRecord{}, true
	}
	recorded := map[string]ChildHealth{}
	for _, h := range rec.Children {
		recorded[h.URI] = h
	}
	type plan struct {
		uri    string
		state  ChildState
		reason FaultReason
		bits   []byte
		// current: the store records the child online after a clean
		// close (not merely forced in)
		current bool
	}
	var plans []plan
	stale := &StaleChildError{Nexus: label}
	for _, u := range cfg.Children {
		h, ok := recorded[u]
		switch {
		case fresh || cfg.Force || (ok && h.State == StateOnline):
			plans = append(plans, plan{uri: u, state: StateOnline, current: !fresh && rec.Clean && ok && h.State == StateOnline})
		case ok && h.State == StateOffline:
			plans = append(plans, plan{uri: u, state: StateOffline, reason: h.Reason, bits: h.Bitmap})
		case ok:
			stale.Children = append(stale.Children, StaleChild{URI: u, State: h.State.String(), Reason: h.Reason})
		default:
			stale.Children = append(stale.Children, StaleChild{URI: u, State: "unknown"})
		}
	}
	if len(stale.Children) > 0 {
		return nil, stale
	}

	n := &Nexus{
		name: label, uuid: cfg.UUID, seg: seg, conc: conc, unclean: !fresh && !rec.Clean,
		store: cfg.Store, open: cfg.Opener, log: log,
		gen:  rec.Generation,
		jobs: map[*child]*rebuildJob{},
	}
	lo, _ := cfg.Opener.(LocalityOpener)
	var minSize int64 = -1
	for _, p := range plans {
		c := &child{uri: p.uri, local: lo != nil && lo.IsLocal(p.uri)}
		n.children = append(n.children, c)
		if p.state == StateOffline {
			c.state.Store(int32(StateOffline))
			c.reason = p.reason
			c.dirty = remapBitmap(p.bits, rec.SegmentSize, seg)
			continue
		}
		dev, err := cfg.Opener.Open(ctx, p.uri)
		if err != nil {
			c.reason, c.lastErr, c.closed = ReasonOpenFailed, err.Error(), true
			if p.current {
				// In sync when the nexus last closed cleanly, and
				// unreachable now (its node not up yet, say): it waits
				// offline, and only what is written meanwhile is copied
				// when it comes back. After an unclean close it may have
				// missed writes that no bitmap recorded.
				log.Warn("child failed to open; it waits offline", "child", p.uri, "err", err)
				c.state.Store(int32(StateOffline))
				continue
			}
			log.Warn("child failed to open; recording it faulted", "child", p.uri, "err", err)
			c.state.Store(int32(StateFaulted))
			continue
		}
		c.dev = dev
		c.state.Store(int32(StateOnline))
		if n.bs == 0 {
			n.bs = dev.BlockSize()
		}
		if dev.BlockSize() != n.bs {
			n.closeAll()
			return nil, fmt.Errorf("nexus %s: child %s has %d-byte blocks but others have %d: children must share one block size", label, p.uri, dev.BlockSize(), n.bs)
		}
		if minSize < 0 || dev.Size() < minSize {
			minSize = dev.Size()
		}
	}
	if minSize < 0 {
		n.closeAll()
		return nil, fmt.Errorf("nexus %s: %w: no child could be opened", label, ErrNoHealthyChild)
	}
	n.size = cfg.Size
	if n.size == 0 {
		n.size = minSize / int64(n.bs) * int64(n.bs)
	}
	if n.size <= 0 || n.size%int64(n.bs) != 0 || n.size > minSize {
		n.closeAll()
		return nil, fmt.Errorf("nexus %s: size %d must be a positive multiple of the %d-byte block size and at most the smallest child (%d bytes)", label, n.size, n.bs, minSize)
	}
	if seg%int64(n.bs) != 0 {
		n.closeAll()
		return nil, fmt.Errorf("nexus %s: rebuild segment %d is not a multiple of the %d-byte block size", label, seg, n.bs)
	}
	n.nseg = (n.size + seg - 1) / seg
	for _, c := range n.children {
		switch {
		case c.dirty != nil:
			c.dirty = resizeBitmap(c.dirty, n.nseg)
		case c.st() == StateOffline:
			c.dirty = newBitmap(n.nseg)
		}
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.stateMu.Lock()
	err = n.saveLocked(ctx, nil)
	if err == nil {
		n.publishLocked()
	}
	n.stateMu.Unlock()
	if err != nil {
		n.cancel()
		n.closeAll()
		return nil, fmt.Errorf("nexus %s: %w", label, err)
	}
	n.queue = make(chan childIO, fanWorkers)
	// Up to fanWorkers child I/Os wait in the queue and fanWorkers run, each
	// op having at least one: this many free ops cover every op in flight.
	n.ops = make(chan *fanOp, 2*fanWorkers+64)
	for range fanWorkers {
		n.wgWk.Add(1)
		go n.worker()
	}
	n.startResync()
	log.Info("nexus created", "size", n.size, "children", len(n.children), "generation", n.gen)
	return n, nil
}

func (n *Nexus) closeAll() {
	for _, c := range n.children {
		if c.dev != nil && !c.closed {
			c.closed = true
			_ = c.dev.Close()
		}
	}
}

// Name returns the nexus name (its UUID when unnamed).
func (n *Nexus) Name() string { return n.name }

// UUID returns the nexus UUID.
func (n *Nexus) UUID() string { return n.uuid }

// Size implements bdev.Device.
func (n *Nexus) Size() int64 { return n.size }

// BlockSize implements bdev.Device: the children's common block size.
func (n *Nexus) BlockSize() int { return n.bs }

// SegmentSize is the rebuild, verify and bitmap granularity in bytes.
func (n *Nexus) SegmentSize() int64 { return n.seg }

// UncleanShutdown reports whether the store showed that the previous
// instance of this nexus ended without Close (a crash). Writes in flight at
// that moment were never acknowledged, but each may have reached some
// children and not others; the nexus therefore resyncs its children from
// one of them in the background (see Resyncing, WaitResync).
func (n *Nexus) UncleanShutdown() bool { return n.unclean }

// Failed reports whether the nexus stopped serving after a store failure.
func (n *Nexus) Failed() bool { return n.failed.Load() }

// Generation is the generation of the last saved health record.
func (n *Nexus) Generation() uint64 {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	return n.gen
}

// Stats returns cumulative counters.
func (n *Nexus) Stats() Stats {
	return Stats{RebuildBytes: n.rebuildBytes.Load(), Retired: n.retired.Load(), ReadRetries: n.readRetries.Load(),
		ResyncRepaired: n.resyncRepaired.Load()}
}

// publishLocked installs a new view built from the current states.
func (n *Nexus) publishLocked() {
	v := &view{}
	var rebuilding []*child
	for _, c := range n.children {
		switch c.st() {
		case StateOnline:
			v.online = append(v.online, c)
			if c.local && v.local == nil {
				v.local = c
			}
		case StateRebuilding:
			rebuilding = append(rebuilding, c)
		case StateOffline:
			v.offline = append(v.offline, c)
		}
	}
	v.writable = append(append(v.writable, v.online...), rebuilding...)
	n.view.Store(v)
}

func (n *Nexus) onlineCountLocked() int {
	k := 0
	for _, c := range n.children {
		if c.st() == StateOnline {
			k++
		}
	}
	return k
}

// Children returns the status of every child, in configuration order.
func (n *Nexus) Children() []ChildStatus {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	out := make([]ChildStatus, 0, len(n.children))
	for _, c := range n.children {
		s := ChildStatus{URI: c.uri, State: c.st(), Local: c.local, LastError: c.lastErr}
		if s.State == StateFaulted || s.State == StateOffline {
			s.Reason = c.reason
		}
		if s.State == StateOffline && c.dirty != nil {
			s.DirtyBytes = c.dirty.count() * n.seg
		}
		out = append(out, s)
	}
	return out
}

func (n *Nexus) findLocked(uri string) (int, *child) {
	for i, c := range n.children {
		if c.uri == uri {
			return i, c
		}
	}
	return -1, nil
}
