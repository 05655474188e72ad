// Package target is an NVMe over Fabrics target on the TCP transport. It
// exports bdev.Devices as namespaces of NVM subsystems to any NVMe/TCP host
// (the Linux kernel's nvme-tcp, this module's initiator), and serves the
// discovery subsystem.
//
// Controllers follow the dynamic model: a host connects an admin queue with
// CNTLID 0xFFFF, gets a fresh controller, and connects its I/O queues to it,
// one TCP connection per queue. A controller lives as long as its admin
// connection and its keep-alive timer.
//
// Per connection, one reader goroutine decodes PDUs and a fixed pool of
// workers executes commands; on an idle I/O queue (nothing in flight, no
// more input buffered) the reader executes the command itself. Whoever
// executed a command sends its data and response itself when the
// connection's write side is free, so that a response does not wait for
// another goroutine to be woken; when the write side is busy, the response
// goes to the connection's writer goroutine, which also sends R2Ts and
// termination requests. Whoever writes last flushes, so bursts of
// completions are coalesced into as few system calls as load allows. Data
// buffers come from size-classed pools; a steady stream of I/O allocates
// nothing per command.
//
// # Claims: replica identity, ownership and fencing in-band
//
// A namespace whose device implements bdev.Claimer (a pool replica) can be
// claimed by a host through the target as a nexus claims a local replica, so
// that a nexus on one node owns and fences a replica on another exactly as
// it does a local one. Everything stays within the vendor-specific ranges of
// the NVMe spec (feature and log page identifiers C0h-FFh), so that hosts
// that know nothing of it, the Linux kernel among them, are unaffected:
//
//   - Identity: Identify Namespace and the namespace identification
//     descriptors report NamespaceOptions.NGUID (the replica's NGUID) and
//     UUID (the replica's UUID).
//   - Set Features, FID C0h (nvme.FeatClaim), not saveable, NSID naming the
//     namespace, with 32 bytes of host-to-controller data (nvme.ClaimCommand:
//     signature, operation, epoch, owner UUID). Claim calls the device's
//     Claim; from then on this controller's I/O to the namespace goes
//     through the bdev.Claimed handle it returned. Raise and release go to
//     that handle; after a release the controller's I/O goes to the device
//     itself again. A namespace whose device takes no claims refuses with
//     Invalid Field; a raise or release without a claim with Command
//     Sequence Error.
//   - Get Log Page, LID C0h (nvme.LogClaim), NSID naming the namespace: the
//     device's bdev.ClaimState (identity, owner, epoch, blank) as an
//     nvme.ClaimLog.
//   - I/O or a claim refused because a newer claim or another owner holds
//     the device (bdev.ErrFenced, bdev.ErrOwned) completes with Reservation
//     Conflict (generic 83h, DNR), which real NVMe answers a host that a
//     reservation fences; a write refused because a thin device's store is
//     full (bdev.ErrNoSpace) completes with Capacity Exceeded (generic 81h,
//     DNR). DNR, because retrying cannot help: the kernel then fails the
//     I/O at once.
//
// Why this shape:
//
//   - The claim belongs to the controller (the association), not to the host
//     NQN: the association is what goes stale in a partition. A host that
//     reconnects gets a new controller and claims again before it issues
//     I/O on it (the Go initiator does); commands of the old association
//     that a healed partition delivers late run through the old handle,
//     which the device fenced when the newer claim arrived, and are refused.
//   - The handle is closed when the controller is torn down or the
//     namespace removed, and closing it keeps the device's claim: a host
//     whose connection dropped keeps its ownership until it claims again.
//     Commands executing on a handle hold a reference, so it is closed
//     only after them.
//   - Other controllers (a host that never claimed, such as the kernel
//     connecting directly) use the device itself, which refuses writes while
//     the replica is owned: a plain share of an owned replica cannot corrupt
//     the mirror.
//   - A vendor feature rather than NVMe reservations (Reservation
//     Register/Acquire): reservations key holders by host, have no epoch,
//     and hosts use them for their own purposes. The signatures in the data
//     and in the page keep another vendor's command or page with the same
//     identifier from being mistaken for these.
//   - The I/O path finds the controller's claimed handle with one atomic load
//     of a copy-on-write map and allocates nothing; controllers without
//     claims pay only that load.
package target

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
)

// Limits and geometry advertised to hosts.
const (
	// MaxTransfer is the largest data transfer of one command (MDTS), bytes.
	MaxTransfer = 1 << 20
	mdts        = 8 // 2^8 * 4 KiB pages = MaxTransfer
	// InCapsuleDataSize is how much write data a host may put in a command
	// capsule on I/O queues (IOCCSZ = (64 + this) / 16): MaxTransfer, so
	// that a host sends every write with its command instead of waiting
	// for an R2T, which saves a round trip (and, in the target, a hand-off
	// to the writer goroutine) per write of any size. It costs no memory
	// per queue slot: the data lands in a pooled buffer of the write's own
	// size, as R2T data does. Writes a host chooses to send without data
	// still get their R2T.
	InCapsuleDataSize = MaxTransfer
	// adminCapsuleData is the in-capsule data limit on admin queues, enough
	// for Connect and small admin writes.
	adminCapsuleData = 8 << 10
	// MaxQueueEntries is the largest queue (CAP.MQES + 1, MAXCMD).
	MaxQueueEntries = 1024
	// MaxAdminEntries is the largest admin queue.
	MaxAdminEntries = 32
	// MaxIOQueues is the number of I/O queues a controller may have.
	MaxIOQueues = 64
	// MaxNamespaces is NN: namespace IDs run from 1 to MaxNamespaces.
	MaxNamespaces = 1024
	maxH2CData    = MaxTransfer
	aerLimit      = 4
	kasUnits      = 10 // KAS: keep-alive granularity in 100 ms units
	// MaxCNTLID is the highest controller ID (FFF0h and above are
	// reserved); controller IDs run from 1 to MaxCNTLID.
	MaxCNTLID = 0xFFEF
	// ANAGroupID is the ANA group of every namespace of a subsystem: the
	// subsystem's ANA state is that of its one group.
	ANAGroupID = 1
	// ANATransitionTime is ANATT, in seconds: the longest a subsystem is
	// to stay in the change state. Linux resets the controller when a
	// group stays in it twice as long.
	ANATransitionTime = 10
)

// NQNPrefix is the NQN prefix of every subsystem Nexstor exports.
const NQNPrefix = "nqn.2024-11.io.nexstor"

// NQN returns the subsystem NQN for a shared object, e.g.
// NQN("replica", id) = "nqn.2024-11.io.nexstor:replica:<id>".
func NQN(kind, uuid string) string { return NQNPrefix + ":" + kind + ":" + uuid }

// Errors callers may branch on.
var (
	ErrClosed        = errors.New("nvmf target: closed")
	ErrExists        = errors.New("nvmf target: subsystem already exists")
	ErrNotFound      = errors.New("nvmf target: no such subsystem")
	ErrNSNotFound    = errors.New("nvmf target: no such namespace")
	ErrTooManyNS     = errors.New("nvmf target: namespace limit reached")
	ErrInvalidNQN    = errors.New("nvmf target: invalid NQN")
	ErrBadBlockSize  = errors.New("nvmf target: unsupported block size")
	ErrDuplicateUUID = errors.New("nvmf target: namespace UUID already in use in this subsystem")
	// ErrDuplicateNGUID: another namespace of the subsystem has the NGUID.
	ErrDuplicateNGUID = errors.New("nvmf target: namespace NGUID already in use in this subsystem")
	// ErrShrink: a namespace's device reports fewer blocks than exported;
	// namespaces only grow.
	ErrShrink = errors.New("nvmf target: a namespace cannot shrink")
	// ErrCNTLIDRange: SubsystemOptions.MinCNTLID and MaxCNTLID do not make
	// a range within 1..MaxCNTLID.
	ErrCNTLIDRange = errors.New("nvmf target: invalid controller ID range")
	// ErrANAState: not one of the five ANA states.
	ErrANAState = errors.New("nvmf target: invalid ANA state")
)

// SubsystemOptions configure a subsystem.
type SubsystemOptions struct {
	// AllowedHosts are the host NQNs that may connect. Others get a Connect
	// Invalid Host error unless AllowAnyHost is set.
	AllowedHosts []string
	AllowAnyHost bool
	// Serial and Model are reported in Identify Controller (at most 20 and
	// 40 ASCII bytes; longer values are cut).
	Serial, Model string
	// MinCNTLID and MaxCNTLID bound the IDs of the controllers this target
	// creates for the subsystem (inclusive; 0 means 1 and MaxCNTLID). IDs
	// are unique within the subsystem on this target and handed out in
	// turn, so that a reconnecting host gets a fresh one. When several
	// targets export the same subsystem (one per node, for multipath),
	// give each a disjoint range: a host refuses a controller whose ID it
	// already has in the subsystem (Linux: "Duplicate cntlid"). When the
	// range is used up, Connect fails with Controller Busy.
	MinCNTLID, MaxCNTLID uint16
	// ANAState is the subsystem's ANA state when it is created; 0 means
	// nvme.ANAOptimized. See Subsystem.SetANAState.
	ANAState nvme.ANAState
}

// NamespaceOptions configure a namespace.
type NamespaceOptions struct {
	// UUID identifies the namespace to hosts; keep it stable across
	// restarts so that hosts recognise the namespace. All zeroes means
	// none. A replica's share uses the replica's UUID.
	UUID [16]byte
	// NGUID is the namespace's globally unique identifier, as Identify
	// Namespace and the identification descriptors report it. A replica's
	// share uses the replica's NGUID (bdev.Identity.NGUID), so that hosts
	// tell its incarnations apart. All zeroes derives it from UUID (its
	// halves swapped), which keeps the NGUID of a nexus export stable
	// across restarts.
	NGUID [16]byte
}

// Target is an NVMe/TCP target: subsystems, their controllers, and the
// listeners that accept host connections. All methods are safe for
// concurrent use.
type Target struct {
	log *slog.Logger

	mu    sync.Mutex
	subs  map[string]*Subsystem
	ctrls map[cntlKey]*controller
	// nextDiscCntl is the next controller ID to try for the discovery
	// subsystem; a subsystem keeps its own (Subsystem.nextCntl).
	nextDiscCntl uint16
	listeners    map[net.Listener]bool // true: discovery
	queues       map[*queue]struct{}
	ports        []string // advertised I/O ports; nil: listener addresses
	closed       bool
	genctr       atomic.Uint64
}

// New returns an empty target. logger may be nil.
func New(logger *slog.Logger) *Target {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	t := &Target{
		log:          logger,
		subs:         make(map[string]*Subsystem),
		ctrls:        make(map[cntlKey]*controller),
		listeners:    make(map[net.Listener]bool),
		queues:       make(map[*queue]struct{}),
		nextDiscCntl: 1,
	}
	return t
}

// ValidNQN reports whether s is usable as an NQN: "nqn." prefix, printable
// ASCII, at most 223 bytes.
func ValidNQN(s string) bool {
	if len(s) < 5 || len(s) > 223 || !strings.HasPrefix(s, "nqn.") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// AddSubsystem creates an NVM subsystem. It fails with ErrExists if the NQN is
// taken, ErrInvalidNQN if it is malformed or the discovery NQN,
// ErrCNTLIDRange if the controller ID range is empty or out of bounds and
// ErrANAState if the initial ANA state is not one.
func (t *Target) AddSubsystem(nqn string, opts SubsystemOptions) (*Subsystem, error) {
	if !ValidNQN(nqn) || nqn == nvme.DiscoveryNQN {
		return nil, fmt.Errorf("subsystem %q: %w: use nqn.<yyyy-mm>.<reverse domain>:<name>, at most 223 bytes", nqn, ErrInvalidNQN)
	}
	minID, maxID := opts.MinCNTLID, opts.MaxCNTLID
	if minID == 0 {
		minID = 1
	}
	if maxID == 0 {
		maxID = MaxCNTLID
	}
	if minID > maxID || maxID > MaxCNTLID {
		return nil, fmt.Errorf("subsystem %q: controller IDs %d..%d: %w: give 1 <= min <= max <= %d", nqn, minID, maxID, ErrCNTLIDRange, MaxCNTLID)
	}
	ana := opts.ANAState
	if ana == 0 {
		ana = nvme.ANAOptimized
	}
	if !ana.Valid() {
		return nil, fmt.Errorf("subsystem %q: %v: %w", nqn, ana, ErrANAState)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	if _, ok := t.subs[nqn]; ok {
		return nil, fmt.Errorf("subsystem %q: %w", nqn, ErrExists)
	}
	s := &Subsystem{
		t:     t,
		nqn:   nqn,
		opts:  opts,
		hosts: make(map[string]bool),
		nss:   make(map[uint32]*namespace),
		ctrls: make(map[*controller]struct{}),

		minCntl: minID, maxCntl: maxID, nextCntl: minID,
		anaChange: 1,
	}
	s.ana.Store(uint32(ana))
	s.allowAny = opts.AllowAnyHost
	for _, h := range opts.AllowedHosts {
		s.hosts[h] = true
	}
	t.subs[nqn] = s
	t.genctr.Add(1)
	t.discoveryChangedLocked()
	return s, nil
}

// Subsystem returns the subsystem with the given NQN, or nil.
func (t *Target) Subsystem(nqn string) *Subsystem {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.subs[nqn]
}

// RemoveSubsystem deletes a subsystem and disconnects every controller that
// uses it. Its namespaces' devices are not closed (the caller owns them).
func (t *Target) RemoveSubsystem(nqn string) error {
	t.mu.Lock()
	s, ok := t.subs[nqn]
	if !ok {
		t.mu.Unlock()
		return fmt.Errorf("subsystem %q: %w", nqn, ErrNotFound)
	}
	delete(t.subs, nqn)
	t.genctr.Add(1)
	t.discoveryChangedLocked()
	t.mu.Unlock()

	s.mu.Lock()
	s.removed = true
	ctrls := make([]*controller, 0, len(s.ctrls))
	for c := range s.ctrls {
		ctrls = append(ctrls, c)
	}
	s.mu.Unlock()
	for _, c := range ctrls {
		c.shutdown("subsystem removed")
	}
	return nil
}

// SetPorts sets the I/O ports ("host:port") that the discovery log
// advertises, instead of the addresses of the listeners given to Serve. A
// host of 0.0.0.0 or :: stands for the address the discovery host connected
// to.
func (t *Target) SetPorts(addrs ...string) {
	t.mu.Lock()
	t.ports = slices.Clone(addrs)
	t.genctr.Add(1)
	t.discoveryChangedLocked()
	t.mu.Unlock()
}

// Serve accepts NVMe/TCP connections on l (an I/O port, 4420 by convention)
// until ctx is done, l fails, or the target is closed. It closes l on return.
// Hosts may also reach the discovery subsystem through it.
func (t *Target) Serve(ctx context.Context, l net.Listener) error {
	return t.serve(ctx, l, false)
}

// ServeDiscovery accepts connections to the discovery subsystem (port 8009 by
// convention). Its discovery log lists every subsystem the connecting host is
// allowed to use, on the I/O ports of SetPorts or of the Serve listeners.
func (t *Target) ServeDiscovery(ctx context.Context, l net.Listener) error {
	return t.serve(ctx, l, true)
}

func (t *Target) serve(ctx context.Context, l net.Listener, discovery bool) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	t.listeners[l] = discovery
	if !discovery {
		t.genctr.Add(1)
		t.discoveryChangedLocked()
	}
	t.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer func() {
		stop()
		l.Close()
		t.mu.Lock()
		delete(t.listeners, l)
		t.mu.Unlock()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			t.mu.Lock()
			closed := t.closed
			t.mu.Unlock()
			if closed {
				return ErrClosed
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("nvmf target: accept on %s: %w", l.Addr(), err)
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		q := newQueue(t, c, discovery)
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			c.Close()
			return ErrClosed
		}
		t.queues[q] = struct{}{}
		t.mu.Unlock()
		go q.run()
	}
}

func (t *Target) dropQueue(q *queue) {
	t.mu.Lock()
	delete(t.queues, q)
	t.mu.Unlock()
}

// Close stops every listener and closes every connection. Namespaces'
// devices are not closed.
func (t *Target) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	ls := make([]net.Listener, 0, len(t.listeners))
	for l := range t.listeners {
		ls = append(ls, l)
	}
	qs := make([]*queue, 0, len(t.queues))
	for q := range t.queues {
		qs = append(qs, q)
	}
	ctrls := make([]*controller, 0, len(t.ctrls))
	for _, c := range t.ctrls {
		ctrls = append(ctrls, c)
	}
	t.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, c := range ctrls {
		c.shutdown("target closed")
	}
	for _, q := range qs {
		q.close()
	}
	return nil
}

// cntlKey names a controller: controller IDs are unique per subsystem (sub
// nil: the discovery subsystem).
type cntlKey struct {
	sub *Subsystem
	id  uint16
}

// addController gives c the next free controller ID of its subsystem's
// range and registers it. It fails when the range is used up or the target
// is closed.
func (t *Target) addController(c *controller) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	lo, hi, next := uint16(1), uint16(MaxCNTLID), &t.nextDiscCntl
	if c.sub != nil {
		lo, hi, next = c.sub.minCntl, c.sub.maxCntl, &c.sub.nextCntl
	}
	for range int(hi-lo) + 1 {
		id := *next
		if *next >= hi {
			*next = lo
		} else {
			*next++
		}
		if _, used := t.ctrls[cntlKey{c.sub, id}]; !used {
			c.id = id
			t.ctrls[cntlKey{c.sub, id}] = c
			return true
		}
	}
	return false
}

// controller returns controller id of subsystem sub, or nil.
func (t *Target) controller(sub *Subsystem, id uint16) *controller {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ctrls[cntlKey{sub, id}]
}

func (t *Target) removeController(c *controller) {
	t.mu.Lock()
	if k := (cntlKey{c.sub, c.id}); t.ctrls[k] == c {
		delete(t.ctrls, k)
	}
	t.mu.Unlock()
}

// discoveryChangedLocked raises a discovery log change event on every
// discovery controller. t.mu is held.
func (t *Target) discoveryChangedLocked() {
	for _, c := range t.ctrls {
		if c.discovery {
			go c.event(nvme.OAESDiscChanged, nvme.AENResult(nvme.AENTypeNotice, nvme.AENNoticeDiscChanged, nvme.LogDiscovery), 0)
		}
	}
}

// discoveryEntries lists the subsystems hostNQN may use, on every I/O port.
// local is the address the host reached the discovery controller on.
func (t *Target) discoveryEntries(hostNQN string, local net.Addr) []nvme.DiscoveryEntry {
	t.mu.Lock()
	ports := slices.Clone(t.ports)
	if ports == nil {
		for l, disc := range t.listeners {
			if !disc {
				ports = append(ports, l.Addr().String())
			}
		}
		slices.Sort(ports)
	}
	subs := make([]*Subsystem, 0, len(t.subs))
	for _, s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	slices.SortFunc(subs, func(a, b *Subsystem) int { return strings.Compare(a.nqn, b.nqn) })

	localIP := ""
	if ta, ok := local.(*net.TCPAddr); ok {
		localIP = ta.IP.String()
	}
	var out []nvme.DiscoveryEntry
	for _, s := range subs {
		if !s.allowed(hostNQN) {
			continue
		}
		for i, p := range ports {
			host, svc, err := net.SplitHostPort(p)
			if err != nil {
				continue
			}
			if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
				host = localIP
			}
			fam := uint8(nvme.AdrFamIPv4)
			if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
				fam = nvme.AdrFamIPv6
			}
			out = append(out, nvme.DiscoveryEntry{
				TrType:  nvme.TrTypeTCP,
				AdrFam:  fam,
				SubType: nvme.SubTypeNVMe,
				TReq:    nvme.TreqNotSpecified | nvme.TreqDisableSQFC,
				PortID:  uint16(i + 1),
				CNTLID:  0xFFFF,
				ASQSZ:   MaxAdminEntries,
				TrSvcID: svc,
				SubNQN:  s.nqn,
				TrAddr:  host,
			})
		}
	}
	return out
}

// Subsystem is an NVM subsystem: a set of namespaces and the hosts allowed to
// reach them. Methods are safe for concurrent use.
type Subsystem struct {
	t    *Target
	nqn  string
	opts SubsystemOptions

	mu       sync.RWMutex
	hosts    map[string]bool
	allowAny bool
	nss      map[uint32]*namespace
	ctrls    map[*controller]struct{}
	removed  bool
	// anaChange is the ANA log page's change count: incremented when the
	// state or the group's namespaces change.
	anaChange uint64

	// minCntl..maxCntl is the controller ID range; nextCntl, guarded by
	// t.mu, the next ID to try.
	minCntl, maxCntl, nextCntl uint16

	// ana is the ANA state (an nvme.ANAState), read on every I/O command.
	ana atomic.Uint32
	// inflight counts the I/O commands executing, so that SetANAState can
	// wait for those that started before the state refused I/O.
	inflight atomic.Int64
	// anaMu serializes SetANAState.
	anaMu sync.Mutex

	stats struct {
		readBytes, writeBytes, reads, writes atomic.Uint64
	}
}

type namespace struct {
	id      uint32
	dev     bdev.Device
	claimer bdev.Claimer // dev, when it takes claims; else nil
	uuid    [16]byte
	nguid   [16]byte
	bs      int
	shift   uint
	// blocks is the capacity in blocks; it only grows (ResizeNamespace).
	blocks atomic.Uint64
}

// NQN returns the subsystem's NQN.
func (s *Subsystem) NQN() string { return s.nqn }

// AddNamespace exports dev as the next free namespace ID and announces it to
// connected hosts (a Namespace Attribute Changed event). dev's block size must
// be a power of two from 512 to 64 KiB. When dev implements bdev.Claimer,
// hosts may claim the namespace in-band (see the package documentation);
// otherwise claims are refused.
func (s *Subsystem) AddNamespace(dev bdev.Device, opts NamespaceOptions) (uint32, error) {
	bs := dev.BlockSize()
	if bs < 512 || bs > 65536 || bs&(bs-1) != 0 {
		return 0, fmt.Errorf("subsystem %q: block size %d: %w: use a power of two from 512 to 65536", s.nqn, bs, ErrBadBlockSize)
	}
	ns := &namespace{dev: dev, uuid: opts.UUID, nguid: opts.NGUID, bs: bs}
	ns.blocks.Store(uint64(dev.Size()) / uint64(bs))
	ns.claimer, _ = dev.(bdev.Claimer)
	for ns.shift = 0; 1<<ns.shift < bs; ns.shift++ {
	}
	var zero [16]byte
	if ns.nguid == zero {
		// The UUID with its halves swapped: stable, distinct from the
		// UUID bytes, and unique whenever the UUID is.
		copy(ns.nguid[:8], opts.UUID[8:])
		copy(ns.nguid[8:], opts.UUID[:8])
	}
	s.mu.Lock()
	if s.removed {
		s.mu.Unlock()
		return 0, fmt.Errorf("subsystem %q: %w", s.nqn, ErrNotFound)
	}
	for _, o := range s.nss {
		if opts.UUID != zero && o.uuid == opts.UUID {
			s.mu.Unlock()
			return 0, fmt.Errorf("subsystem %q: %w", s.nqn, ErrDuplicateUUID)
		}
		if ns.nguid != zero && o.nguid == ns.nguid {
			s.mu.Unlock()
			return 0, fmt.Errorf("subsystem %q: NGUID %x: %w", s.nqn, ns.nguid, ErrDuplicateNGUID)
		}
	}
	for id := uint32(1); id <= MaxNamespaces; id++ {
		if _, used := s.nss[id]; !used {
			ns.id = id
			break
		}
	}
	if ns.id == 0 {
		s.mu.Unlock()
		return 0, fmt.Errorf("subsystem %q: %w (%d)", s.nqn, ErrTooManyNS, MaxNamespaces)
	}
	s.nss[ns.id] = ns
	s.anaChange++ // the group's NSIDs changed
	ctrls := s.controllersLocked()
	s.mu.Unlock()
	for _, c := range ctrls {
		c.event(nvme.OAESNSAttr, nvme.AENResult(nvme.AENTypeNotice, nvme.AENNoticeNSChanged, nvme.LogChangedNS), ns.id)
	}
	return ns.id, nil
}

// RemoveNamespace stops exporting a namespace and announces the change. The
// device is not closed; the controllers' claimed handles of it are, once the
// commands already executing on them finish (the device's claims stay).
func (s *Subsystem) RemoveNamespace(nsid uint32) error {
	s.mu.Lock()
	ns, ok := s.nss[nsid]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("subsystem %q namespace %d: %w", s.nqn, nsid, ErrNSNotFound)
	}
	delete(s.nss, nsid)
	s.anaChange++
	ctrls := s.controllersLocked()
	s.mu.Unlock()
	for _, c := range ctrls {
		c.namespaceRemoved(ns)
		c.event(nvme.OAESNSAttr, nvme.AENResult(nvme.AENTypeNotice, nvme.AENNoticeNSChanged, nvme.LogChangedNS), nsid)
	}
	return nil
}

// ResizeNamespace makes namespace nsid take the current size of its device
// (after the device grew) and announces it to connected hosts: a Namespace
// Attribute Changed event, with nsid in the Changed Namespace List (log
// page 04h), as for AddNamespace; a Linux host rescans the namespace and
// sees the new capacity. It returns the size in bytes now exported. The
// size only grows: a device that reports fewer blocks than exported (I/O
// in flight could be cut off under the hosts) fails with ErrShrink and
// changes nothing. Resizing to the same size announces nothing.
func (s *Subsystem) ResizeNamespace(nsid uint32) (int64, error) {
	s.mu.Lock()
	ns, ok := s.nss[nsid]
	if !ok {
		s.mu.Unlock()
		return 0, fmt.Errorf("subsystem %q namespace %d: %w", s.nqn, nsid, ErrNSNotFound)
	}
	cur := ns.blocks.Load()
	blocks := uint64(ns.dev.Size()) / uint64(ns.bs)
	switch {
	case blocks < cur:
		s.mu.Unlock()
		return 0, fmt.Errorf("subsystem %q namespace %d: the device has %d blocks, %d are exported: %w",
			s.nqn, nsid, blocks, cur, ErrShrink)
	case blocks == cur:
		s.mu.Unlock()
		return int64(cur << ns.shift), nil
	}
	ns.blocks.Store(blocks)
	ctrls := s.controllersLocked()
	s.mu.Unlock()
	for _, c := range ctrls {
		c.event(nvme.OAESNSAttr, nvme.AENResult(nvme.AENTypeNotice, nvme.AENNoticeNSChanged, nvme.LogChangedNS), nsid)
	}
	return int64(blocks << ns.shift), nil
}

func (s *Subsystem) controllersLocked() []*controller {
	out := make([]*controller, 0, len(s.ctrls))
	for c := range s.ctrls {
		out = append(out, c)
	}
	return out
}

// AllowHost adds a host NQN to the allow-list. It affects later Connects.
func (s *Subsystem) AllowHost(hostNQN string) {
	s.mu.Lock()
	s.hosts[hostNQN] = true
	s.mu.Unlock()
	s.t.mu.Lock()
	s.t.genctr.Add(1)
	s.t.discoveryChangedLocked()
	s.t.mu.Unlock()
}

// DisallowHost removes a host NQN from the allow-list and disconnects that
// host's controllers of this subsystem.
func (s *Subsystem) DisallowHost(hostNQN string) {
	s.mu.Lock()
	delete(s.hosts, hostNQN)
	var drop []*controller
	if !s.allowAny {
		for c := range s.ctrls {
			if c.hostNQN == hostNQN {
				drop = append(drop, c)
			}
		}
	}
	s.mu.Unlock()
	s.t.mu.Lock()
	s.t.genctr.Add(1)
	s.t.discoveryChangedLocked()
	s.t.mu.Unlock()
	for _, c := range drop {
		c.shutdown("host no longer allowed")
	}
}

// SetAllowAnyHost switches the allow-list off (true) or on (false).
func (s *Subsystem) SetAllowAnyHost(allow bool) {
	s.mu.Lock()
	s.allowAny = allow
	s.mu.Unlock()
}

func (s *Subsystem) allowed(hostNQN string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.allowAny || s.hosts[hostNQN]
}

func (s *Subsystem) namespace(nsid uint32) *namespace {
	s.mu.RLock()
	ns := s.nss[nsid]
	s.mu.RUnlock()
	return ns
}

func (s *Subsystem) nsids() []uint32 {
	s.mu.RLock()
	ids := make([]uint32, 0, len(s.nss))
	for id := range s.nss {
		ids = append(ids, id)
	}
	s.mu.RUnlock()
	slices.Sort(ids)
	return ids
}
