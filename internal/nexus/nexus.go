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
// A child that fails an I/O (or its connection, or its pool's space) goes
// offline with a write-intent bitmap: the segments it may lack (see
// dirty.go), and every segment written while it is away. OnlineChild brings
// it back by copying only those (a partial rebuild). Children are added with
// a full rebuild (AddChild), taken out for a while by an administrator
// (OfflineChild, OnlineChild), and compared with Verify. After a crash of the
// process hosting it, a recreated nexus resyncs its children from one of
// them, since writes in flight at the crash may have reached only some. A
// nexus created without a health record does not know which children are
// current: it serves one (Config.Source, else the claimable child with the
// highest epoch, else the first) and rebuilds the others from it.
//
// # Identity, claims and fencing epochs
//
// Children whose devices implement bdev.Claimer (pool replicas, remote
// namespaces) have an identity, which the health record keeps: a device
// that reports another one is a replica destroyed and created again, and is
// not admitted as the recorded child (New refuses it as stale, OnlineChild
// with ErrIdentityChanged). The nexus claims such children with its UUID and
// an epoch, and does all their I/O through the claimed handles; a newer
// claim fences the older handles, so an older instance of the nexus (one
// that was replaced, or cut off by a partition) can never land a write. The
// epoch follows one invariant: the online children always hold the nexus's
// highest epoch; a child that left or is being rebuilt holds a lower one.
// So when the record is lost, the child with the highest epoch is the one
// that stayed current longest. The rules:
//
//   - New reads every opened child's epoch, takes E = max(the record's
//     epoch, theirs) + 1, saves the record with E before claiming, and
//     claims the children at E (a rebuild target of a nexus without a
//     record at its own epoch, below E).
//   - When a child leaves (retired for an error, taken offline, faulted or
//     removed while online), E+1 is saved in the record that retires it,
//     then the remaining online children are raised to E+1; one whose raise
//     fails leaves too.
//   - A rebuild (AddChild, OnlineChild) claims its target at max(its epoch,
//     E), saves E' = max(E, its epoch) + 1 and raises the online children
//     to E'; the target is raised to the nexus's epoch when its copy is
//     complete, before it is recorded online.
//   - A child that reports bdev.ErrFenced (on I/O or a raise) has been
//     claimed by a newer instance: this nexus stops (ErrFencedNexus), and
//     never writes the health store again, which is the newer one's now.
//
// Devices that do not implement bdev.Claimer (RAM devices, files, test
// devices) are used without identity or fencing; the epoch still counts.
//
// # Locks
//
// Lock order: adminMu, then range locks, then stateMu; the leaf mutexes
// (the range lock's own, a rebuild job's, the write-intent group commit's,
// the flush group's) are held only briefly and never while another of these
// is taken, except that stateMu holders may take a rebuild job's mutex and
// the range lock's own (to list the writes in flight). Writes hold their
// range lock while they persist a retirement or their write-intent bits, so
// no write that overlaps a rebuild copy or a resync can slip between a state
// change and its use. A group-commit leader or a flush holds no lock while
// it waits for others; claims are raised under stateMu.
package nexus

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
)

// Config describes a nexus to create.
type Config struct {
	// Name is a human label used in logs and errors.
	Name string
	// UUID identifies the nexus in the HealthStore, and owns its
	// claimable children: it must parse as a UUID when a child is
	// claimable. Required.
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
	// Force trusts the children that the health record calls stale (or
	// does not list) as current. Use it only when you know they hold the
	// same data as the others. It changes nothing for a nexus without a
	// record (see Source), nor for a child whose identity changed or that
	// another nexus owns.
	Force bool
	// Source, for a nexus that has no health record, names the child (one
	// of Children) that holds the data: it is served, and the other
	// children are rebuilt from it in full before they are read. Without
	// it the source is the claimable child with the highest epoch that is
	// not blank (ties: the local one, then the first listed), else the
	// first child listed that is local, else the first listed. Children
	// that are all blank are all in sync without a copy. Ignored when a
	// record exists.
	Source string
	// VerifyInSync, for a nexus that has no health record, compares the
	// children's content before serving (reading all of it) and admits
	// them all online if it is identical; otherwise Source applies.
	VerifyInSync bool
	// Logger receives state changes; slog.Default() when nil.
	Logger *slog.Logger
}

// DefaultRebuildSegment is the default Config.RebuildSegment.
const DefaultRebuildSegment = 1 << 20

// storeTimeout bounds one HealthStore.Save (or claim raise) issued from the
// I/O path, which has no context of its own.
const storeTimeout = 30 * time.Second

// fanWorkers is the number of goroutines that issue child I/O for the
// fan-out. The submitting goroutine issues the first child's I/O itself, so
// a one-child nexus never hands off.
const fanWorkers = 128

// quickChild is the service time (an average, see child.observe) under
// which a child's write is issued inline by the submitting goroutine after
// the first child's, instead of being handed to a worker: below it the
// hand-off (a wake-up, two context switches and the channel operations,
// a few µs of CPU) costs more than the parallelism saves. RAM devices and
// page-cached files fall under it; disks and remote children do not.
const quickChild = 5 * time.Microsecond

// Nexus is a mirror over its children. It implements bdev.Device; all
// methods are safe for concurrent use.
type Nexus struct {
	name string
	uuid string
	// size (bytes) and nseg (segments) only grow (Resize), under adminMu,
	// stateMu and a range lock over everything; the I/O path loads them.
	size  atomic.Int64
	nseg  atomic.Int64
	bs    int
	seg   int64
	conc  int
	store HealthStore
	open  Opener
	log   *slog.Logger
	// owner is the UUID children are claimed with; ownerErr is why
	// cfg.UUID does not parse, which matters only once a child is
	// claimable.
	owner    uuid.UUID
	ownerErr error

	locks  rangeLock
	view   atomic.Pointer[view]
	failed atomic.Bool
	fenced atomic.Bool
	// failCause is the store error that failed the nexus (see Err).
	failCause atomic.Pointer[error]
	closed    atomic.Bool
	inflight  atomic.Int64
	// idle is closed once the nexus is closed and no I/O is in flight.
	idle     chan struct{}
	idleOnce sync.Once

	// uf tracks what was written since the last flush (dirty.go); Resize
	// replaces it with a larger one.
	uf atomic.Pointer[unflushed]
	dc dirtyCommit // write-intent bits group commit (dirty.go)
	fg flushGroup  // concurrent flushes share one (io.go)

	// adminMu serializes administrative changes (add, remove, offline,
	// online, fault, close); they may block on I/O drains and opens.
	adminMu sync.Mutex
	// stateMu guards children, child states, gen and epoch, and
	// serializes store writes, so that the stored record always matches
	// the view that is published after it.
	stateMu  sync.Mutex
	children []*child
	gen      uint64
	epoch    uint64
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

// child is one child device. uri, dev, base, claimed and local never change
// after the child is published; a child that is reopened (rebuilt, brought
// online) is replaced by a new child value, so a pointer identifies one
// open.
type child struct {
	uri string
	// dev is what I/O goes through: the claimed handle of a claimable
	// device, else the device the opener returned.
	dev bdev.Device
	// base is the device the opener returned; closed after dev.
	base bdev.Device
	// claimed is dev as a bdev.Claimed; nil when the device is not
	// claimable.
	claimed bdev.Claimed
	local   bool
	// seq orders the children of every view the same way (newChildSeq):
	// the fan-out starts writes in this order (see fanOut).
	seq uint64

	state atomic.Int32 // ChildState; written under stateMu
	// The rest is guarded by stateMu.
	reason   FaultReason
	dirty    *bitmap // offline children: the segments it may lack
	lastErr  string
	closed   bool
	identity string // bdev.Identity.String(); "" when unknown
	epoch    uint64 // the epoch the claim is at

	// cost is a moving average of the child's fan-out I/O service time in
	// nanoseconds (see observe); it only picks inline or handed-off issue
	// (quickChild), so lost updates between racing I/Os do not matter.
	cost atomic.Int64
}

func (c *child) st() ChildState { return ChildState(c.state.Load()) }

// childSeqs numbers the child values of the process (child.seq).
var childSeqs atomic.Uint64

func newChildSeq() uint64 { return childSeqs.Add(1) }

// observe folds one I/O's service time into cost, weighting it 1/8; the
// first one is the cost, so that a child is known quick or slow after its
// first I/O (an eighth of a 30 µs remote write would read as quick).
func (c *child) observe(d time.Duration) {
	old := c.cost.Load()
	if old == 0 {
		c.cost.Store(max(int64(d), 1))
		return
	}
	c.cost.Store(old + (int64(d)-old)/8)
}

// quick reports whether the child's I/O is cheaper to issue inline than to
// hand to a worker. A child not measured yet counts as quick: its first I/O
// measures it (runChild times every I/O until then).
func (c *child) quick() bool { return c.cost.Load() < int64(quickChild) }

// closeDevs closes the claimed handle (the claim stays) and the device it
// was claimed on, which are independent handles.
func (c *child) closeDevs() error {
	err := c.dev.Close()
	if c.base != nil && c.base != c.dev {
		if berr := c.base.Close(); err == nil && !errors.Is(berr, bdev.ErrClosed) {
			err = berr
		}
	}
	return err
}

// view is an immutable snapshot of the children that I/O uses; it is
// replaced (never modified) under stateMu after every persisted change.
type view struct {
	online   []*child // readable, in configuration order
	writable []*child // online then rebuilding: every write goes to all
	offline  []*child // need write-intent bits
	local    *child   // first local online child
	// starters are the writable children that are bdev.WriteStarters,
	// in child.seq order, and startMask has bit i set for each
	// writable[i]; both empty with more than 64 writable children (see
	// fanOut).
	starters  []starter
	startMask uint64
}

// starter is writable[i] of a view as a bdev.WriteStarter.
type starter struct {
	i  int
	ws bdev.WriteStarter
}

// New opens the children and returns a serving nexus. It consults the
// health store: a child the store records as anything but online (or does
// not know, when a record exists) is refused with a *StaleChildError unless
// Force is set, and so is a claimable child whose identity is not the
// recorded one (State "identity-changed"; Force does not admit it).
// Children recorded offline are kept offline with their write-intent bitmap,
// ready for OnlineChild. A child that fails to open is recorded offline
// (open-failed, with an empty bitmap) when the store records it online after
// a clean close, and faulted (open-failed) otherwise; at least one must
// open. Without a record, one child is the source and the others are
// rebuilt from it (see Config.Source). Claimable children are claimed (see
// the package documentation); one that another nexus owns fails New with an
// error that names it and its owner and matches bdev.ErrOwned.
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
	keys := map[string]string{}
	for _, u := range cfg.Children {
		if u == "" || seen[u] {
			return nil, fmt.Errorf("nexus %s: child URI %q is empty or listed twice", label, u)
		}
		if other, ok := keys[childKey(u)]; ok {
			// One record entry per replica: the same replica twice
			// (locally and through a share) would share it.
			return nil, fmt.Errorf("nexus %s: children %q and %q name the same replica; list it once", label, other, u)
		}
		seen[u], keys[childKey(u)] = true, u
	}
	if cfg.Source != "" && !seen[cfg.Source] {
		return nil, fmt.Errorf("nexus %s: source %q is not one of the children: name one of them", label, cfg.Source)
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
		// Force trusts the listed children over an unreadable record,
		// as it would without one: one source, the others rebuilt.
		log.Warn("health record unreadable; forced to go on as a nexus without a record", "err", err)
		rec, fresh = HealthRecord{}, true
	}
	recorded := map[string]ChildHealth{}
	for _, h := range rec.Children {
		recorded[childKey(h.URI)] = h
	}
	type plan struct {
		uri    string
		state  ChildState
		reason FaultReason
		bits   []byte
		// current: the store records the child online after a clean
		// close (not merely forced in)
		current  bool
		identity string
	}
	var plans []plan
	stale := &StaleChildError{Nexus: label}
	for _, u := range cfg.Children {
		h, ok := recorded[childKey(u)]
		switch {
		case fresh || cfg.Force || (ok && h.State == StateOnline):
			plans = append(plans, plan{uri: u, state: StateOnline, identity: h.Identity,
				current: !fresh && rec.Clean && ok && h.State == StateOnline})
		case ok && h.State == StateOffline:
			plans = append(plans, plan{uri: u, state: StateOffline, reason: h.Reason, bits: h.Bitmap, identity: h.Identity})
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
		gen: rec.Generation, epoch: rec.Epoch,
		jobs: map[*child]*rebuildJob{},
		idle: make(chan struct{}),
	}
	n.owner, n.ownerErr = uuid.Parse(cfg.UUID)
	lo, _ := cfg.Opener.(LocalityOpener)
	states := map[*child]bdev.ClaimState{}
	fail := func(err error) (*Nexus, error) {
		n.closeAll()
		return nil, err
	}
	var minSize int64 = -1
	var openErrs []string // why children did not open, for when none did
	for _, p := range plans {
		c := &child{uri: p.uri, local: lo != nil && lo.IsLocal(p.uri), identity: p.identity, seq: newChildSeq()}
		n.children = append(n.children, c)
		if p.state == StateOffline {
			c.state.Store(int32(StateOffline))
			c.reason = p.reason
			c.dirty = remapBitmap(p.bits, rec.SegmentSize, seg)
			continue
		}
		o, err := n.openChild(ctx, p.uri)
		if err != nil {
			openErrs = append(openErrs, err.Error())
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
		c.dev, c.base = o.dev, o.dev
		c.state.Store(int32(StateOnline))
		if o.cl != nil {
			states[c] = o.st
			if err := n.checkClaimable(p.uri, o.st); err != nil {
				return fail(err)
			}
			if cur := o.st.Identity.String(); p.identity != "" && cur != "" && cur != p.identity {
				stale.Children = append(stale.Children, StaleChild{URI: p.uri, State: StateIdentityChanged,
					Reason: ReasonIdentityChanged, Recorded: p.identity, Current: cur})
			} else if cur != "" {
				c.identity = cur
			}
		}
		if n.bs == 0 {
			n.bs = o.dev.BlockSize()
		}
		if o.dev.BlockSize() != n.bs {
			return fail(fmt.Errorf("nexus %s: child %s has %d-byte blocks but others have %d: children must share one block size", label, p.uri, o.dev.BlockSize(), n.bs))
		}
		if minSize < 0 || o.dev.Size() < minSize {
			minSize = o.dev.Size()
		}
	}
	if len(stale.Children) > 0 {
		return fail(stale)
	}
	if minSize < 0 {
		return fail(fmt.Errorf("nexus %s: %w: no child could be opened: %s", label, ErrNoHealthyChild, strings.Join(openErrs, "; ")))
	}
	size := cfg.Size
	if size == 0 {
		size = minSize / int64(n.bs) * int64(n.bs)
	}
	if size <= 0 || size%int64(n.bs) != 0 || size > minSize {
		return fail(fmt.Errorf("nexus %s: size %d must be a positive multiple of the %d-byte block size and at most the smallest child (%d bytes)", label, size, n.bs, minSize))
	}
	if seg%int64(n.bs) != 0 {
		return fail(fmt.Errorf("nexus %s: rebuild segment %d is not a multiple of the %d-byte block size", label, seg, n.bs))
	}
	nseg := (size + seg - 1) / seg
	n.size.Store(size)
	n.nseg.Store(nseg)
	n.uf.Store(newUnflushed(nseg))
	n.dc.cond.L = &n.dc.mu
	n.fg.cond.L = &n.fg.mu
	for _, c := range n.children {
		switch {
		case c.dirty != nil:
			c.dirty = resizeBitmap(c.dirty, nseg)
		case c.st() == StateOffline:
			c.dirty = newBitmap(nseg)
		}
	}
	var targets []*child
	if fresh {
		if targets, err = n.chooseSource(ctx, cfg, states); err != nil {
			return fail(err)
		}
	}
	for _, st := range states {
		n.epoch = max(n.epoch, st.Epoch)
	}
	n.epoch++
	n.ctx, n.cancel = context.WithCancel(context.Background())
	// The epoch is saved before any child is claimed with it: a claim
	// the record does not know could otherwise be above the record's
	// epoch after a crash, and the next instance would claim below it.
	n.stateMu.Lock()
	err = n.saveLocked(ctx, nil)
	n.stateMu.Unlock()
	if err != nil {
		n.cancel()
		return fail(fmt.Errorf("nexus %s: %w", label, err))
	}
	for _, c := range n.children {
		st, ok := states[c]
		if !ok {
			continue
		}
		e := n.epoch
		if c.st() == StateRebuilding {
			e = max(st.Epoch, rec.Epoch) // below the nexus's until rebuilt
		}
		if err := n.claim(ctx, c, e); err != nil {
			n.cancel()
			if fresh {
				// Nothing was served: give up the claims and forget
				// the record this call made, so that the children are
				// as they were and a retry starts afresh.
				for _, x := range n.children {
					if x.claimed != nil {
						_ = x.claimed.Release(context.WithoutCancel(ctx))
					}
				}
				_ = cfg.Store.Delete(context.WithoutCancel(ctx), cfg.UUID)
			}
			return fail(fmt.Errorf("nexus %s: %w", label, err))
		}
	}
	n.stateMu.Lock()
	n.publishLocked()
	n.stateMu.Unlock()
	n.queue = make(chan childIO, fanWorkers)
	// Up to fanWorkers child I/Os wait in the queue and fanWorkers run, each
	// op having at least one: this many free ops cover every op in flight.
	n.ops = make(chan *fanOp, 2*fanWorkers+64)
	for range fanWorkers {
		n.wgWk.Add(1)
		go n.worker()
	}
	n.stateMu.Lock()
	for _, c := range targets {
		n.launchLocked(c, false, nil)
	}
	n.stateMu.Unlock()
	n.startResync()
	log.Info("nexus created", "size", size, "children", len(n.children), "generation", n.gen, "epoch", n.epoch)
	return n, nil
}

// chooseSource decides, for a nexus without a health record, which opened
// children are in sync: all of them when VerifyInSync finds them identical
// or when they are all blank, else only the source (see Config.Source). The
// others are set rebuilding and returned, to be rebuilt from the source.
func (n *Nexus) chooseSource(ctx context.Context, cfg Config, states map[*child]bdev.ClaimState) ([]*child, error) {
	var open []*child
	for _, c := range n.children {
		if c.st() == StateOnline {
			open = append(open, c)
		}
	}
	if len(open) < 2 {
		return nil, nil
	}
	if cfg.VerifyInSync {
		same, err := n.sameContent(ctx, open)
		if err != nil {
			return nil, fmt.Errorf("nexus %s: comparing the children: %w", n.name, err)
		}
		if same {
			n.log.Info("no health record; the children hold the same data: all in sync")
			return nil, nil
		}
		n.log.Warn("no health record, and the children differ: serving one and rebuilding the others from it")
	}
	blank := true
	for _, c := range open {
		if st, ok := states[c]; !ok || !st.Blank {
			blank = false
		}
	}
	if blank {
		return nil, nil // all zeroes: nothing to copy
	}
	var src *child
	if cfg.Source != "" {
		_, src = n.findLocked(cfg.Source)
		if src.st() != StateOnline {
			return nil, fmt.Errorf("nexus %s: the source %s could not be opened (%s): bring it back or name another source", n.name, src.uri, src.lastErr)
		}
	} else {
		better := func(c, than *child) bool {
			if than == nil {
				return true
			}
			sc, oc := states[c], states[than]
			if sc.Epoch != oc.Epoch {
				return sc.Epoch > oc.Epoch
			}
			return c.local && !than.local
		}
		for _, c := range open {
			if st, ok := states[c]; ok && !st.Blank && better(c, src) {
				src = c
			}
		}
		if src == nil {
			// No claimable child holds data; the others have no epoch:
			// the first listed, preferring a local one.
			for _, c := range open {
				if _, ok := states[c]; !ok && (src == nil || c.local && !src.local) {
					src = c
				}
			}
		}
	}
	var targets []*child
	for _, c := range open {
		if c != src {
			c.state.Store(int32(StateRebuilding))
			targets = append(targets, c)
		}
	}
	n.log.Warn("no health record: which children are current is unknown; serving one and rebuilding the others from it",
		"source", src.uri, "rebuilding", len(targets))
	return targets, nil
}

// sameContent reports whether the children hold identical data over the
// nexus's size.
func (n *Nexus) sameContent(ctx context.Context, cs []*child) (bool, error) {
	a, b := make([]byte, n.seg), make([]byte, n.seg)
	for s := int64(0); s < n.nseg.Load(); s++ {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		off, l := s*n.seg, n.segLen(s)
		if _, err := cs[0].dev.ReadAt(a[:l], off); err != nil {
			return false, fmt.Errorf("child %s: %w", cs[0].uri, err)
		}
		for _, c := range cs[1:] {
			if _, err := c.dev.ReadAt(b[:l], off); err != nil {
				return false, fmt.Errorf("child %s: %w", c.uri, err)
			}
			if !bytes.Equal(a[:l], b[:l]) {
				return false, nil
			}
		}
	}
	return true, nil
}

func (n *Nexus) closeAll() {
	for _, c := range n.children {
		if c.dev != nil && !c.closed {
			c.closed = true
			_ = c.closeDevs()
		}
	}
}

// Name returns the nexus name (its UUID when unnamed).
func (n *Nexus) Name() string { return n.name }

// UUID returns the nexus UUID.
func (n *Nexus) UUID() string { return n.uuid }

// Size implements bdev.Device: the capacity in bytes. It only grows
// (Resize).
func (n *Nexus) Size() int64 { return n.size.Load() }

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

// Failed reports whether the nexus stopped serving: after a store failure,
// or because it was fenced (see Fenced).
func (n *Nexus) Failed() bool { return n.failed.Load() || n.fenced.Load() }

// Err says why the nexus stopped serving, nil while it serves: an error
// matching ErrFencedNexus, or one matching ErrNexusFailed that wraps the
// health store's error (a store that refused the save because another
// instance of the nexus saved first says so there).
func (n *Nexus) Err() error {
	if n.fenced.Load() {
		return n.fencedErr()
	}
	if n.failed.Load() {
		if p := n.failCause.Load(); p != nil {
			return fmt.Errorf("nexus %s: %w: %w", n.name, ErrNexusFailed, *p)
		}
		return fmt.Errorf("nexus %s: %w", n.name, ErrNexusFailed)
	}
	return nil
}

// Fenced reports whether a newer instance of this nexus claimed its
// children, so that this one stopped serving for good (ErrFencedNexus).
func (n *Nexus) Fenced() bool { return n.fenced.Load() }

// Epoch is the nexus's fencing epoch, as last saved: the epoch its online
// children are claimed at.
func (n *Nexus) Epoch() uint64 {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	return n.epoch
}

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
	if len(v.writable) <= 64 {
		for i, c := range v.writable {
			if ws, ok := c.dev.(bdev.WriteStarter); ok {
				v.starters = append(v.starters, starter{i: i, ws: ws})
				v.startMask |= 1 << i
			}
		}
		slices.SortFunc(v.starters, func(a, b starter) int {
			return cmp.Compare(v.writable[a.i].seq, v.writable[b.i].seq)
		})
	}
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
		s := ChildStatus{URI: c.uri, State: c.st(), Local: c.local, LastError: c.lastErr, Identity: c.identity}
		if c.claimed != nil && !c.closed {
			s.Epoch = c.epoch
		}
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

// childKey is what a child is known by in a health record: the replica
// UUID that ends its URI (bdev:///<uuid>, or an NVMe/TCP share's NQN
// ending in :<uuid>), so that a volume's nexus recreated on another node,
// where local children became remote and remote ones local, finds the
// record of each. Any other URI is its own key. The replica's identity,
// checked when the child opens, still tells a recreated replica of the
// same UUID apart.
func childKey(uri string) string {
	if i := strings.LastIndexAny(uri, "/:"); i >= 0 && len(uri)-i-1 == 36 {
		if _, err := uuid.Parse(uri[i+1:]); err == nil {
			return "replica:" + uri[i+1:]
		}
	}
	return uri
}
