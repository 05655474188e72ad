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

// recordLocked builds the health record of the current state.
func (n *Nexus) recordLocked() HealthRecord {
	rec := HealthRecord{NexusUUID: n.uuid, Generation: n.gen + 1, SegmentSize: n.seg, Clean: n.cleanClose}
	for _, c := range n.children {
		h := ChildHealth{URI: c.uri, State: c.st()}
		if h.State == StateFaulted || h.State == StateOffline {
			h.Reason = c.reason
		}
		if h.State == StateOffline && c.dirty != nil {
			h.Bitmap = c.dirty.bytes()
		}
		rec.Children = append(rec.Children, h)
	}
	return rec
}

// saveLocked persists the current state (with patch applied to the record
// first, when given). On failure the nexus is failed for good: memory and
// store no longer agree, and serving on could acknowledge a write that a
// recreated nexus would not find.
func (n *Nexus) saveLocked(ctx context.Context, patch func(*HealthRecord)) error {
	if n.failed.Load() {
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	rec := n.recordLocked()
	if patch != nil {
		patch(&rec)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if err := n.store.Save(sctx, rec); err != nil {
		n.failed.Store(true)
		n.log.Error("health store write failed; the nexus stops serving I/O", "err", err)
		return fmt.Errorf("nexus %s: %w: %w", n.name, ErrNexusFailed, err)
	}
	n.gen = rec.Generation
	return nil
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

// enter admits an I/O; exit must follow when it returns nil.
func (n *Nexus) enter() error {
	n.inflight.Add(1)
	if n.closed.Load() {
		n.inflight.Add(-1)
		return bdev.ErrClosed
	}
	if n.failed.Load() {
		n.inflight.Add(-1)
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	return nil
}

func (n *Nexus) exit() { n.inflight.Add(-1) }

type opKind uint8

const (
	opWrite opKind = iota
	opZeroes
	opUnmap
	opFlush
)

var opNames = [...]string{"write", "write-zeroes", "unmap", "flush"}

func (k opKind) String() string { return opNames[k] }

// fanOp is one I/O fanned out to the writable children of a view. It is
// recycled through a free list: the fan-out does not allocate.
//
// The submitting goroutine hands the children after the first to the
// workers, does the first itself, and then takes back (claims) any child I/O
// no worker has started yet: when every CPU is busy, a woken worker would only
// run after the submitter blocks, so doing the work inline saves two
// context switches per child, while idle workers still give parallelism.
type fanOp struct {
	kind    opKind
	p       []byte
	off     int64
	length  int64
	members []*child
	errs    []error
	claimed []atomic.Bool
	// done receives one token per child I/O a worker ran; its capacity
	// covers every queued one, so a worker never blocks on it.
	done chan struct{}
	// refs counts the submitter and every queued child I/O; the last to
	// let go returns the op to the free list.
	refs atomic.Int32
}

func (o *fanOp) run(i int) error {
	d := o.members[i].dev
	switch o.kind {
	case opWrite:
		_, err := d.WriteAt(o.p, o.off)
		return err
	case opZeroes:
		return d.WriteZeroes(o.off, o.length)
	case opUnmap:
		return d.Unmap(o.off, o.length)
	default:
		return d.Flush()
	}
}

// childIO is the I/O of one child of a fanOp, queued for the workers.
type childIO struct {
	op *fanOp
	i  int
}

func (n *Nexus) worker() {
	defer n.wgWk.Done()
	for t := range n.queue {
		o := t.op
		if o.claimed[t.i].CompareAndSwap(false, true) {
			o.errs[t.i] = o.run(t.i)
			o.done <- struct{}{}
		}
		n.release(o)
	}
}

func (n *Nexus) release(o *fanOp) {
	if o.refs.Add(-1) == 0 {
		clear(o.errs)
		o.p, o.members = nil, nil
		select {
		case n.ops <- o:
		default:
		}
	}
}

// ReadAt implements io.ReaderAt. The read goes to the local online child
// when there is one, else round-robin over online children; a child that
// fails it is retired (persisted first) and the read is retried on
// another. Rebuilding children are never read.
func (n *Nexus) ReadAt(p []byte, off int64) (int, error) {
	if err := n.enter(); err != nil {
		return 0, err
	}
	defer n.exit()
	if err := bdev.CheckRange("read", off, int64(len(p)), n.size, n.bs); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var triedBuf [8]*child
	tried := triedBuf[:0]
	var lastErr error
	for {
		c := n.pickReader(n.view.Load(), tried, off, int64(len(p)))
		if c == nil {
			if lastErr != nil {
				return 0, fmt.Errorf("nexus %s: read at %d: every online child failed: %w", n.name, off, lastErr)
			}
			return 0, fmt.Errorf("nexus %s: read at %d: %w", n.name, off, ErrNoHealthyChild)
		}
		_, err := c.dev.ReadAt(p, off)
		if err == nil {
			return len(p), nil
		}
		lastErr = fmt.Errorf("child %s: %w", c.uri, err)
		if rerr := n.retireForRead(c, err); rerr != nil {
			return 0, rerr
		}
		n.readRetries.Add(1)
		tried = append(tried, c)
	}
}

// pickReader chooses the child to read [off, off+length) from: the resync
// authority while that range is not resynced, else the local online child,
// else the next online child round-robin; never one in tried.
func (n *Nexus) pickReader(v *view, tried []*child, off, length int64) *child {
	if a := n.resyncFrom.Load(); a != nil && off+length > n.resyncPos.Load() && a.st() == StateOnline && !contains(tried, a) {
		return a
	}
	if v.local != nil && !contains(tried, v.local) {
		return v.local
	}
	k := len(v.online)
	if k == 0 {
		return nil
	}
	start := int(n.rr.Add(1) % uint64(k))
	for i := 0; i < k; i++ {
		c := v.online[(start+i)%k]
		if !contains(tried, c) {
			return c
		}
	}
	return nil
}

func contains(s []*child, c *child) bool {
	for _, x := range s {
		if x == c {
			return true
		}
	}
	return false
}

// retireForRead retires c after it failed a read, unless it is no longer
// online (then there is nothing to do) or it is the last online child (then
// the read fails with the child's error and the child stays: retiring it
// would leave nothing to serve from). It returns nil when the caller may
// retry on another child.
func (n *Nexus) retireForRead(c *child, cause error) error {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if n.failed.Load() {
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	if c.st() != StateOnline {
		return nil
	}
	if n.onlineCountLocked() <= 1 {
		return fmt.Errorf("nexus %s: read failed on the last online child %s: %w", n.name, c.uri, cause)
	}
	n.faultLocked(c, ReasonIOError, cause)
	if err := n.saveLocked(nil, nil); err != nil {
		return err
	}
	n.publishLocked()
	return nil
}

func (n *Nexus) faultLocked(c *child, reason FaultReason, cause error) {
	c.state.Store(int32(StateFaulted))
	c.reason = reason
	if cause != nil {
		c.lastErr = cause.Error()
	}
	if reason == ReasonIOError {
		n.retired.Add(1)
	}
	if j := n.jobs[c]; j != nil {
		j.wake() // a paused rebuild of c ends now
	}
	n.log.Warn("child retired", "child", c.uri, "reason", reason, "err", cause)
}

// WriteAt implements io.WriterAt: the write reaches every online and
// rebuilding child and is acknowledged once they all completed it; a child
// that failed it is retired and persisted first.
func (n *Nexus) WriteAt(p []byte, off int64) (int, error) {
	if err := n.mutate(opWrite, p, off, int64(len(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteZeroes implements bdev.Device with the semantics of WriteAt.
func (n *Nexus) WriteZeroes(off, length int64) error {
	return n.mutate(opZeroes, nil, off, length)
}

// Unmap implements bdev.Device with the semantics of WriteAt: every child
// discards the range, so they keep reading back the same zeroes.
func (n *Nexus) Unmap(off, length int64) error {
	return n.mutate(opUnmap, nil, off, length)
}

// Flush implements bdev.Device: it fans out to every online and rebuilding
// child; one that fails is retired, and the flush succeeds when an online
// child that survives it succeeded.
func (n *Nexus) Flush() error {
	if err := n.enter(); err != nil {
		return err
	}
	defer n.exit()
	return n.fanOut(n.view.Load(), opFlush, nil, 0, 0)
}

func (n *Nexus) mutate(kind opKind, p []byte, off, length int64) error {
	if err := n.enter(); err != nil {
		return err
	}
	defer n.exit()
	if err := bdev.CheckRange(kind.String(), off, length, n.size, n.bs); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	e := n.locks.lock(off, length)
	defer n.locks.unlock(e)
	if n.failed.Load() {
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	// The view is loaded under the range lock: a rebuild copy of this
	// range, which needs the same lock, either completed before (and the
	// view already has the child rebuilding) or starts after this write.
	v := n.view.Load()
	if len(v.offline) > 0 {
		var err error
		if v, err = n.markDirty(v, off, length); err != nil {
			return err
		}
	}
	return n.fanOut(v, kind, p, off, length)
}

// markDirty makes sure every offline child has the bits of the segments
// [off, off+length) set and persisted before the write is issued, so that a
// crash after the write reached the online children still leaves the
// segment in the bitmap. Only the first write to a segment pays a store
// write. It returns the view to write with, loaded under stateMu so that it
// agrees with the bits (a child brought online meanwhile is in it).
func (n *Nexus) markDirty(v *view, off, length int64) (*view, error) {
	first, last := off/n.seg, (off+length-1)/n.seg
	need := false
	for _, c := range v.offline {
		if !c.dirty.allSet(first, last) {
			need = true
			break
		}
	}
	if !need {
		return v, nil
	}
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	var pending []*child
	for _, c := range n.children {
		if c.st() == StateOffline && !c.dirty.allSet(first, last) {
			pending = append(pending, c)
		}
	}
	if len(pending) > 0 {
		// Bits go live (visible to the lock-free check above) only after
		// the store has them: a concurrent write to the same segment
		// must not skip the store on a bit that is not yet durable.
		err := n.saveLocked(nil, func(rec *HealthRecord) {
			for i, c := range n.children {
				if contains(pending, c) {
					bm := rec.Children[i].Bitmap
					for s := first; s <= last; s++ {
						bm[s/8] |= 1 << (s % 8)
					}
				}
			}
		})
		if err != nil {
			return nil, err
		}
		for _, c := range pending {
			for s := first; s <= last; s++ {
				c.dirty.set(s)
			}
		}
	}
	return n.view.Load(), nil
}

func (n *Nexus) getOp(k int) *fanOp {
	var o *fanOp
	select {
	case o = <-n.ops:
	default:
		o = &fanOp{}
	}
	if cap(o.errs) < k {
		o.errs = make([]error, k)
		o.claimed = make([]atomic.Bool, k)
		o.done = make(chan struct{}, k)
	}
	o.errs, o.claimed = o.errs[:k], o.claimed[:k]
	return o
}

func (n *Nexus) fanOut(v *view, kind opKind, p []byte, off, length int64) error {
	w := v.writable
	if len(v.online) == 0 {
		return fmt.Errorf("nexus %s: %s at %d: %w", n.name, kind, off, ErrNoHealthyChild)
	}
	o := n.getOp(len(w))
	o.kind, o.p, o.off, o.length, o.members = kind, p, off, length, w
	o.refs.Store(int32(len(w)))
	for i := 1; i < len(w); i++ {
		o.claimed[i].Store(false)
		n.queue <- childIO{op: o, i: i}
	}
	o.errs[0] = o.run(0)
	running := 0
	for i := 1; i < len(w); i++ {
		if o.claimed[i].CompareAndSwap(false, true) {
			o.errs[i] = o.run(i)
		} else {
			running++
		}
	}
	for ; running > 0; running-- {
		<-o.done
	}
	var err error
	for _, e := range o.errs {
		if e != nil {
			err = n.handleFailures(w, o.errs, kind, off)
			break
		}
	}
	n.release(o)
	return err
}

// handleFailures decides the fate of an I/O that failed on some children.
// It is acknowledged only if an online child that survives this decision
// completed it; then every child that failed it is retired, and the new
// health set is persisted before returning. Otherwise the I/O fails and the
// online children that failed it stay (nobody is known to be better), while
// rebuilding children that failed it are retired since they no longer match.
func (n *Nexus) handleFailures(members []*child, errs []error, kind opKind, off int64) error {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if n.failed.Load() {
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	ok := false
	var firstErr error
	for i, c := range members {
		if errs[i] == nil && c.st() == StateOnline {
			ok = true
		}
		if errs[i] != nil && firstErr == nil {
			firstErr = fmt.Errorf("child %s: %w", c.uri, errs[i])
		}
	}
	changed := false
	for i, c := range members {
		if errs[i] == nil {
			continue
		}
		switch st := c.st(); {
		case st == StateRebuilding, st == StateOnline && ok:
			n.faultLocked(c, ReasonIOError, errs[i])
			changed = true
		}
	}
	if changed {
		if err := n.saveLocked(nil, nil); err != nil {
			return err
		}
		n.publishLocked()
	}
	if !ok {
		return fmt.Errorf("nexus %s: %s at %d failed on every online child: %w", n.name, kind, off, firstErr)
	}
	return nil
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

// drain waits until every write that may still use a view older than the
// current one has completed: they all hold range locks taken before.
func (n *Nexus) drain() {
	e := n.locks.lock(0, n.size)
	n.locks.unlock(e)
}

// closeChild drains and closes the device of a child that is out of every
// view. Reads still in flight on it fail and are retried elsewhere.
func (n *Nexus) closeChild(c *child) {
	n.stateMu.Lock()
	if c.dev == nil || c.closed {
		n.stateMu.Unlock()
		return
	}
	c.closed = true
	n.stateMu.Unlock()
	n.drain()
	if err := c.dev.Close(); err != nil && !errors.Is(err, bdev.ErrClosed) {
		n.log.Warn("closing child", "child", c.uri, "err", err)
	}
}

// FaultChild takes an online or rebuilding child out of service with the
// given reason (ReasonAdmin when empty), persisted before it returns. The
// last online child cannot be faulted (ErrLastChild).
func (n *Nexus) FaultChild(ctx context.Context, uri string, reason FaultReason) error {
	if reason == "" {
		reason = ReasonAdmin
	}
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	_, c := n.findLocked(uri)
	if c == nil {
		return fmt.Errorf("nexus %s: fault %s: %w", n.name, uri, ErrUnknownChild)
	}
	switch c.st() {
	case StateOnline:
		if n.onlineCountLocked() <= 1 {
			return fmt.Errorf("nexus %s: fault %s: %w", n.name, uri, ErrLastChild)
		}
	case StateRebuilding:
	default:
		return fmt.Errorf("nexus %s: fault %s: the child is %s already", n.name, uri, c.st())
	}
	n.faultLocked(c, reason, nil)
	if err := n.saveLocked(ctx, nil); err != nil {
		return err
	}
	n.publishLocked()
	return nil
}

// OfflineChild takes an online child out of service temporarily: its
// device is closed, and the segments written from now on are recorded (and
// persisted) in a write-intent bitmap so that OnlineChild can bring it back
// by copying only those. The last online child cannot go offline.
func (n *Nexus) OfflineChild(ctx context.Context, uri string) error {
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	n.stateMu.Lock()
	_, c := n.findLocked(uri)
	switch {
	case c == nil:
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: offline %s: %w", n.name, uri, ErrUnknownChild)
	case c.st() != StateOnline:
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: offline %s: the child is %s; only an online child can go offline", n.name, uri, c.st())
	case n.onlineCountLocked() <= 1:
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: offline %s: %w", n.name, uri, ErrLastChild)
	}
	c.dirty = newBitmap(n.nseg)
	c.reason = ReasonAdmin
	c.state.Store(int32(StateOffline))
	if err := n.saveLocked(ctx, nil); err != nil {
		n.stateMu.Unlock()
		return err
	}
	n.publishLocked()
	n.stateMu.Unlock()
	n.log.Info("child offline", "child", uri)
	n.closeChild(c)
	return nil
}

// RemoveChild stops any rebuild of the child, removes it from the nexus
// (persisted) and closes it. The last online child cannot be removed.
func (n *Nexus) RemoveChild(ctx context.Context, uri string) error {
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	n.stateMu.Lock()
	i, c := n.findLocked(uri)
	if c == nil {
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: remove %s: %w", n.name, uri, ErrUnknownChild)
	}
	if c.st() == StateOnline && n.onlineCountLocked() <= 1 {
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: remove %s: %w", n.name, uri, ErrLastChild)
	}
	job := n.jobs[c]
	n.stateMu.Unlock()
	if job != nil {
		job.control(RebuildStop)
		<-job.doneCh
	}
	n.stateMu.Lock()
	if i, c = n.findLocked(uri); c == nil {
		n.stateMu.Unlock()
		return nil
	}
	n.children = append(n.children[:i:i], n.children[i+1:]...)
	if err := n.saveLocked(ctx, nil); err != nil {
		n.stateMu.Unlock()
		return err
	}
	n.publishLocked()
	n.stateMu.Unlock()
	n.log.Info("child removed", "child", uri)
	n.closeChild(c)
	return nil
}

// Close stops rebuilds (their children stay recorded as rebuilding, hence
// stale for a recreated nexus), waits for in-flight I/O, records the clean
// shutdown in the store and closes every child. The health record is kept;
// destroy it with HealthStore.Delete. An error means the clean shutdown
// could not be recorded; the nexus is closed all the same.
func (n *Nexus) Close() error {
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	if n.closed.Swap(true) {
		return bdev.ErrClosed
	}
	n.cancel()
	n.stateMu.Lock()
	for _, j := range n.jobs {
		j.wake()
	}
	n.stateMu.Unlock()
	n.jobsWG.Wait()
	for n.inflight.Load() > 0 {
		time.Sleep(time.Millisecond)
	}
	close(n.queue)
	n.wgWk.Wait()
	// A clean record tells the next instance that its online children
	// agree. Their volatile caches must be on stable storage first: a
	// child whose node crashed after this close would otherwise have lost
	// a tail the others kept.
	flushErrs := n.flushOnline()
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	var err error
	if !n.failed.Load() {
		// Clean only when the children agree: a resync cut short by
		// Close must run again in the next instance.
		n.cleanClose = !n.Resyncing()
		for c, ferr := range flushErrs {
			if c.st() != StateOnline {
				continue
			}
			if n.onlineCountLocked() > 1 {
				n.faultLocked(c, ReasonIOError, fmt.Errorf("flush at close: %w", ferr))
			} else {
				n.cleanClose = false // the next instance resyncs
			}
		}
		err = n.saveLocked(nil, nil)
	}
	n.closeAll()
	n.log.Info("nexus closed")
	return err
}

// flushOnline flushes the online children in parallel and returns the
// failures by child.
func (n *Nexus) flushOnline() map[*child]error {
	online := n.view.Load().online
	errs := make([]error, len(online))
	var wg sync.WaitGroup
	for i, c := range online {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.dev.Flush()
		}()
	}
	wg.Wait()
	out := map[*child]error{}
	for i, err := range errs {
		if err != nil {
			out[online[i]] = err
		}
	}
	return out
}

// remapBitmap converts a stored bitmap of oldSeg-sized segments to newSeg
// segments, conservatively (every new segment touching a dirty old one is
// dirty).
func remapBitmap(p []byte, oldSeg, newSeg int64) *bitmap {
	if oldSeg <= 0 || oldSeg == newSeg {
		return bitmapFromBytes(int64(len(p))*8, p)
	}
	old := bitmapFromBytes(int64(len(p))*8, p)
	out := newBitmap((int64(len(p))*8*oldSeg + newSeg - 1) / newSeg)
	for i := int64(0); i < old.n; i++ {
		if old.test(i) {
			for s := i * oldSeg / newSeg; s <= ((i+1)*oldSeg-1)/newSeg && s < out.n; s++ {
				out.set(s)
			}
		}
	}
	return out
}

// resizeBitmap returns b with exactly bits bits (extra bits dropped).
func resizeBitmap(b *bitmap, bits int64) *bitmap {
	out := newBitmap(bits)
	for i := int64(0); i < bits && i < b.n; i++ {
		if b.test(i) {
			out.set(i)
		}
	}
	return out
}
