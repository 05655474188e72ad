// Package initiator is an NVMe/TCP host: it discovers subsystems, connects a
// controller's admin queue and N I/O queues (one TCP connection each), and
// presents namespaces as bdev.Devices.
//
// Each queue has one reader goroutine that completes commands by CID;
// callers block on a per-command channel allocated once per slot. A command
// that does not complete within Options.CommandTimeout fails with ErrTimeout
// and resets its connection. When a connection drops, the commands on it fail
// with ErrConnectionLost and the controller reconnects in the background;
// commands issued meanwhile wait for the new connection up to their timeout.
// Close ends a reconnect in progress, its waits included.
//
// # Claims
//
// A Namespace is a bdev.Claimer when its target serves a claimable device
// over Nexstor's claim extension (see package target): ClaimState reads the
// claim state log page, Claim sends the claim Set Features and returns a
// *ClaimedNamespace, and refusals come back as the bdev contract's errors.
//
// On the target the claim belongs to the association (the controller this
// host connected): every I/O of the Controller to the namespace runs under
// it, through the ClaimedNamespace or the Namespace alike. When a connection
// is lost, the Controller reconnects and restores its claims on the new
// association before it lets any command through, so that commands waiting
// for the reconnect never run unclaimed. If the device refuses a claim
// there (a newer claim or another owner holds it), the Controller is fenced
// for good: every later call fails with an error wrapping bdev.ErrFenced,
// and it does not reconnect again (Controller.Err says so). Commands the old
// association had sent, should a healed partition deliver them late, run on
// the target through the old controller's claimed handle, which the newer
// claim fenced: they are refused too.
package initiator

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// maxTransfer caps one command's data, whatever MDTS the controller allows.
const maxTransfer = 1 << 20

// maxQueueEntries caps the entries of an I/O queue the host asks for,
// whatever CAP.MQES allows.
const maxQueueEntries = 1024

// adminDepth is the admin queue size in entries (the host keeps at most
// adminDepth-1 admin commands in flight); adminInline the in-capsule data
// the host assumes an admin queue takes (enough for Connect).
const (
	adminDepth  = 32
	adminInline = 8192 - pdu.SQELen
)

// shutdownWait bounds how long Close waits for the controller to
// acknowledge a normal shutdown.
const shutdownWait = 5 * time.Second

// Options configure a host connection. Zero values mean the defaults.
type Options struct {
	// HostNQN identifies the host; default nqn.2014-08.org.nvmexpress:uuid:<HostID>.
	HostNQN string
	// HostID is the host identifier; default a random UUID per process.
	HostID [16]byte
	// IOQueues is the number of I/O queues; default min(4, GOMAXPROCS).
	IOQueues int
	// QueueDepth is the most commands in flight per I/O queue; default
	// 128, at most 1023, and no more than the controller takes (CAP.MQES,
	// MAXCMD). Any depth from 1 connects: each queue is created with one
	// entry more than its depth, as a queue of N entries holds N-1 commands.
	QueueDepth int
	// HeaderDigest and DataDigest request CRC32C digests.
	HeaderDigest, DataDigest bool
	// CommandTimeout bounds every command, waiting for a connection
	// included; default 30s.
	CommandTimeout time.Duration
	// KeepAlive is the keep-alive timeout (KATO) sent in Connect; the host
	// sends Keep Alive every KeepAlive/2. Default 5s; negative disables.
	KeepAlive time.Duration
	// ReconnectDelay is the pause between reconnect attempts; default 1s.
	ReconnectDelay time.Duration
	// MaxReconnect is the number of reconnect attempts after a connection
	// loss before the controller gives up (and fails every command); 0
	// means retry until Close.
	MaxReconnect int
	// Logger receives connection events; default discard.
	Logger *slog.Logger
	// OnEvent, when set, receives the controller's asynchronous events:
	// Connect enables namespace attribute notices, and every association
	// keeps an Asynchronous Event Request outstanding. It is called from
	// a goroutine of the Controller, one event at a time and in order, and
	// must not block for long nor call Close. For a namespace attribute
	// change (Event.NamespaceChanged) the Changed Namespace List has been
	// read, which clears the event on the controller; a Namespace listed
	// learns its new size with Revalidate. Events raised while the
	// Controller is reconnecting are lost: revalidate after a reconnect
	// if a change may have happened meanwhile.
	OnEvent func(Event)
}

// Event is an asynchronous event a controller reported.
type Event struct {
	// Type, Info and LogPage are the fields of the Asynchronous Event
	// Request completion: the event type (2: notice), its information (a
	// notice 0: namespace attribute changed) and the log page that holds
	// its details.
	Type, Info, LogPage uint8
	// Changed are the namespace IDs of the Changed Namespace List, for a
	// namespace attribute change; nil when the list overflowed (any
	// namespace may have changed) or could not be read.
	Changed []uint32
}

// NamespaceChanged reports whether the event is a Namespace Attribute
// Changed notice: a namespace was added, removed or resized.
func (e Event) NamespaceChanged() bool {
	return e.Type == nvme.AENTypeNotice && e.Info == nvme.AENNoticeNSChanged
}

var defaultHostID = func() [16]byte {
	var id [16]byte
	rand.Read(id[:])
	id[6] = id[6]&0x0F | 0x40
	id[8] = id[8]&0x3F | 0x80
	return id
}()

func (o Options) withDefaults() Options {
	var zero [16]byte
	if o.HostID == zero {
		o.HostID = defaultHostID
	}
	if o.HostNQN == "" {
		o.HostNQN = "nqn.2014-08.org.nvmexpress:uuid:" + uuid.UUID(o.HostID).String()
	}
	if o.IOQueues <= 0 {
		o.IOQueues = min(4, runtime.GOMAXPROCS(0))
	}
	if o.QueueDepth <= 0 {
		o.QueueDepth = 128
	}
	o.QueueDepth = min(o.QueueDepth, maxQueueEntries-1)
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 30 * time.Second
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 5 * time.Second
	}
	if o.ReconnectDelay <= 0 {
		o.ReconnectDelay = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// ctrlInfo is what Identify Controller told us.
type ctrlInfo struct {
	cntlid    uint16
	maxXfer   int // bytes per command
	ioInline  int // in-capsule data on I/O queues
	nn        uint32
	vwc       bool
	oncs      uint16
	subNQN    string
	maxQueues int
	// ioDepth is the most commands an I/O queue may hold in flight: one
	// less than the largest queue (CAP.MQES+1 entries), and no more than
	// MAXCMD.
	ioDepth int
}

// session is one established association: admin queue plus I/O queues.
// Once installed, its fields do not change.
type session struct {
	admin *hqueue
	io    []*hqueue // appended to under mu while establishing
	info  ctrlInfo
	stop  chan struct{}
	once  sync.Once
	mu    sync.Mutex
}

func (s *session) close() { s.closeWith(ErrClosed) }

// closeWith kills every queue of the session with err, the reason their
// outstanding commands fail: ErrClosed when the controller is closed, the
// failed queue's reason when one queue's death takes the association down,
// so a caller whose command sat on a healthy sibling still learns why (a
// command timeout, a reset) rather than a bare "closed".
func (s *session) closeWith(err error) {
	s.once.Do(func() {
		close(s.stop)
		s.mu.Lock()
		qs := s.io
		s.mu.Unlock()
		for _, q := range qs {
			q.kill(err)
		}
		s.admin.kill(err)
	})
}

// addIO adds an I/O queue while establishing; a session closed meanwhile
// (its establishment abandoned) kills it.
func (s *session) addIO(q *hqueue) {
	s.mu.Lock()
	s.io = append(s.io, q)
	s.mu.Unlock()
	if isClosed(s.stop) {
		q.kill(ErrClosed)
	}
}

// Controller is a connected NVMe/TCP controller. Methods are safe for
// concurrent use.
type Controller struct {
	addr, subNQN string
	opts         Options
	log          *slog.Logger

	// ctx is canceled by Close: it ends a reconnect in progress.
	ctx    context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup // the reconnect goroutine, which Close waits for
	// claimMu orders claim commands against the restoring of claims on a
	// new association (see claim.go).
	claimMu sync.Mutex

	mu      sync.Mutex
	cur     *session      // nil while reconnecting
	waitCh  chan struct{} // closed when cur changes or the controller fails
	failErr error         // permanent failure
	closed  bool
	claims  map[uint32]*claimState // by NSID
	rr      atomic.Uint32
}

// Connect connects to subsystem subNQN at addr ("host:port"): admin queue,
// controller enable, Identify, and opts.IOQueues I/O queues. ctx bounds the
// connection only, not the Controller's life.
func Connect(ctx context.Context, addr, subNQN string, opts Options) (*Controller, error) {
	opts = opts.withDefaults()
	c := &Controller{addr: addr, subNQN: subNQN, opts: opts, log: opts.Logger, waitCh: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	s, err := c.establish(ctx, false)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.install(s)
	return c, nil
}

// Err returns why the Controller is unusable for good, or nil while it is
// connected or reconnecting: ErrClosed after Close, an error wrapping
// ErrGaveUp once Options.MaxReconnect attempts failed, and an error
// wrapping bdev.ErrFenced when a reconnect could not restore a claim.
func (c *Controller) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return ErrClosed
	case c.failErr != nil:
		return c.failErr
	}
	return nil
}

func (c *Controller) install(s *session) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		s.close()
		return
	}
	c.cur = s
	close(c.waitCh)
	c.waitCh = make(chan struct{})
	c.mu.Unlock()
	death := func(q *hqueue) { c.lost(s, q) }
	s.admin.onDeath.Store(&death)
	for _, q := range s.io {
		q.onDeath.Store(&death)
	}
	// A queue may have died before onDeath was set.
	for _, q := range append([]*hqueue{s.admin}, s.io...) {
		select {
		case <-q.readerEnd:
			c.lost(s, q)
		default:
		}
	}
	if c.opts.KeepAlive > 0 {
		go c.keepAlive(s)
	}
	if c.opts.OnEvent != nil {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		c.bg.Add(1) // under mu, before Close can start waiting
		c.mu.Unlock()
		go func() {
			defer c.bg.Done()
			c.asyncEvents(s)
		}()
	}
}

// asyncEvents keeps an Asynchronous Event Request outstanding on session s
// and hands each event to Options.OnEvent, until s ends.
func (c *Controller) asyncEvents(s *session) {
	for {
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.AdminAsyncEvent)
		cqe, err := s.admin.submitFor(&sqe, nil, false, 0)
		if err != nil {
			if !isClosed(s.stop) {
				c.log.Debug("nvmf initiator: asynchronous event request failed", "addr", c.addr, "subnqn", c.subNQN, "err", err)
			}
			return
		}
		ev := Event{Type: uint8(cqe.Result & 7), Info: uint8(cqe.Result >> 8), LogPage: uint8(cqe.Result >> 16)}
		if ev.NamespaceChanged() {
			page := make([]byte, nvme.ChangedNSLength)
			if err := getLogPage(s.admin, nvme.LogChangedNS, 0, page); err != nil {
				c.log.Warn("nvmf initiator: reading the changed namespace list", "addr", c.addr, "subnqn", c.subNQN, "err", err)
			} else if first := binary.LittleEndian.Uint32(page); first != 0xFFFFFFFF {
				ev.Changed = []uint32{}
				for i := 0; i+4 <= len(page); i += 4 {
					id := binary.LittleEndian.Uint32(page[i:])
					if id == 0 {
						break
					}
					ev.Changed = append(ev.Changed, id)
				}
			}
		}
		c.opts.OnEvent(ev)
	}
}

// lost handles the failure of queue q of session s: tear it all down, the
// other queues failing with q's reason, and reconnect in the background.
func (c *Controller) lost(s *session, q *hqueue) {
	c.mu.Lock()
	if c.cur != s || c.closed {
		c.mu.Unlock()
		return
	}
	c.cur = nil
	c.bg.Add(1) // under mu, before Close can start waiting
	c.mu.Unlock()
	cause := q.reason()
	s.closeWith(fmt.Errorf("queue %d of the association failed: %w", q.qid, cause))
	c.log.Warn("nvmf initiator: connection lost, reconnecting", "addr", c.addr, "subnqn", c.subNQN, "qid", q.qid, "err", cause)
	go func() {
		defer c.bg.Done()
		c.reconnect()
	}()
}

// reconnect establishes a new association, restores the claims on it and
// installs it, or fails the controller for good. Close ends it at any point.
func (c *Controller) reconnect() {
	for attempt := 1; ; attempt++ {
		wait := time.NewTimer(c.opts.ReconnectDelay)
		select {
		case <-wait.C:
		case <-c.ctx.Done():
			wait.Stop()
			return
		}
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.CommandTimeout)
		s, err := c.establish(ctx, true)
		cancel()
		if err == nil {
			c.log.Info("nvmf initiator: reconnected", "addr", c.addr, "subnqn", c.subNQN, "attempt", attempt)
			c.install(s)
			return
		}
		if c.ctx.Err() != nil {
			return // closed
		}
		if errors.Is(err, bdev.ErrFenced) {
			c.log.Warn("nvmf initiator: fenced: a claim could not be restored after reconnecting", "addr", c.addr, "subnqn", c.subNQN, "err", err)
			c.fail(err)
			return
		}
		c.log.Debug("nvmf initiator: reconnect failed", "addr", c.addr, "attempt", attempt, "err", err)
		if c.opts.MaxReconnect > 0 && attempt >= c.opts.MaxReconnect {
			c.fail(fmt.Errorf("%w: %s %s after %d attempts: %w", ErrGaveUp, c.addr, c.subNQN, attempt, err))
			return
		}
	}
}

// fail makes err the controller's permanent failure and wakes every waiter.
func (c *Controller) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		// Close already woke the waiters and closed waitCh.
		return
	}
	c.failErr = err
	close(c.waitCh)
	c.waitCh = make(chan struct{})
}

func (c *Controller) keepAlive(s *session) {
	t := time.NewTicker(c.opts.KeepAlive / 2)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.AdminKeepAlive)
		if _, err := s.admin.submit(&sqe, nil, false); err != nil {
			c.log.Warn("nvmf initiator: keep alive failed", "addr", c.addr, "err", err)
			s.admin.kill(err)
			return
		}
	}
}

// session returns the connected session, waiting for a reconnect up to the
// command timeout. The connected path allocates nothing.
func (c *Controller) session() (*session, error) {
	var deadline *time.Timer
	defer func() {
		if deadline != nil {
			deadline.Stop()
		}
	}()
	for {
		c.mu.Lock()
		s, ch, closed, ferr := c.cur, c.waitCh, c.closed, c.failErr
		c.mu.Unlock()
		switch {
		case closed:
			return nil, ErrClosed
		case ferr != nil:
			return nil, ferr
		case s != nil:
			return s, nil
		}
		if deadline == nil {
			deadline = time.NewTimer(c.opts.CommandTimeout)
		}
		select {
		case <-ch:
		case <-deadline.C:
			return nil, fmt.Errorf("%w: waiting for a connection to %s", ErrTimeout, c.addr)
		}
	}
}

// Close disconnects (shutting the controller down cleanly when it is
// connected). Later calls on the controller and its namespaces return
// ErrClosed.
func (c *Controller) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	s := c.cur
	c.cur = nil
	close(c.waitCh)
	c.mu.Unlock()
	c.cancel() // ends a reconnect: its wait, dial, handshake or commands
	defer c.bg.Wait()
	if s != nil {
		// Orderly shutdown: CC.SHN normal, so the controller may flush.
		var sqe pdu.SQE
		propertySetSQE(&sqe, nvme.PropCC, uint64(ccValue()|1<<nvme.CCShnShift))
		done := make(chan struct{})
		go func() {
			s.admin.submit(&sqe, nil, false)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(shutdownWait):
		}
		s.close() // also ends a shutdown still in flight
		<-done
	}
	return nil
}

// establish connects a whole association and, when reclaim is set, restores
// the controller's claims on it. Cancelling ctx abandons it at any step.
func (c *Controller) establish(ctx context.Context, reclaim bool) (*session, error) {
	admin, err := dialQueue(ctx, c.addr, &c.opts, adminDepth-1)
	if err != nil {
		return nil, err
	}
	admin.inline = adminInline
	s := &session{admin: admin, stop: make(chan struct{})}
	// Commands do not take a context: ctx ends them by closing the
	// association under them.
	abandon := context.AfterFunc(ctx, s.close)
	fail := func(err error) (*session, error) {
		abandon()
		s.close()
		if ctx.Err() != nil && !errors.Is(err, bdev.ErrFenced) {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		if errors.Is(err, bdev.ErrFenced) {
			return nil, err
		}
		return nil, fmt.Errorf("nvmf initiator: %s %s: %w", c.addr, c.subNQN, err)
	}
	kato := uint32(0)
	if c.opts.KeepAlive > 0 {
		kato = uint32(c.opts.KeepAlive / time.Millisecond)
	}
	cntlid, err := connectQueue(admin, 0, 0xFFFF, kato, c.subNQN, &c.opts)
	if err != nil {
		return fail(err)
	}
	s.info.cntlid = cntlid
	capv, err := enable(admin)
	if err != nil {
		return fail(err)
	}
	id := make([]byte, nvme.IdentifyDataLength)
	if err := identify(admin, nvme.CNSController, 0, id); err != nil {
		return fail(fmt.Errorf("identify controller: %w", err))
	}
	s.info.parse(id, capv)
	if cntrl := id[nvme.IDCtrlCNTRLTYPE]; cntrl != 0 && cntrl != nvme.CtrlIO {
		return fail(fmt.Errorf("controller type %d is not an I/O controller", cntrl))
	}
	nq := c.opts.IOQueues
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminSetFeatures)
	sqe.SetCDW(10, nvme.FeatNumQueues)
	sqe.SetCDW(11, uint32(nq-1)|uint32(nq-1)<<16)
	cqe, err := admin.submit(&sqe, nil, false)
	if err != nil {
		return fail(fmt.Errorf("set number of queues: %w", err))
	}
	nq = min(nq, int(cqe.Result&0xFFFF)+1, int(cqe.Result>>16&0xFFFF)+1)
	if c.opts.OnEvent != nil {
		// Before install: a change from then on raises an event.
		sqe = pdu.SQE{}
		sqe.SetOpcode(nvme.AdminSetFeatures)
		sqe.SetCDW(10, nvme.FeatAsyncEvent)
		sqe.SetCDW(11, nvme.OAESNSAttr)
		if _, err := admin.submit(&sqe, nil, false); err != nil {
			return fail(fmt.Errorf("enable asynchronous events: %w", err))
		}
	}
	depth := max(min(c.opts.QueueDepth, s.info.ioDepth), 1)
	for qid := 1; qid <= nq; qid++ {
		q, err := dialQueue(ctx, c.addr, &c.opts, depth)
		if err != nil {
			return fail(err)
		}
		q.qid = uint16(qid)
		q.inline = 0 // until Connect completes; Connect data then goes by R2T if it must
		if s.info.ioInline >= pdu.ConnectDataLen {
			q.inline = s.info.ioInline
		}
		s.addIO(q)
		if _, err := connectQueue(q, uint16(qid), cntlid, 0, c.subNQN, &c.opts); err != nil {
			return fail(fmt.Errorf("connect I/O queue %d: %w", qid, err))
		}
		q.inline = s.info.ioInline
	}
	if reclaim {
		// Before install: no command may run on the association
		// without the claims it is due.
		c.claimMu.Lock()
		err := c.reclaim(s)
		c.claimMu.Unlock()
		if err != nil {
			return fail(err)
		}
	}
	if !abandon() {
		return fail(errors.New("abandoned"))
	}
	return s, nil
}

func (i *ctrlInfo) parse(id []byte, capv uint64) {
	i.maxXfer = maxTransfer
	if m := id[nvme.IDCtrlMDTS]; m != 0 {
		mps := 4096 << ((capv >> 48) & 0xF)
		if x := mps << m; x < i.maxXfer && x > 0 {
			i.maxXfer = x
		}
	}
	ioccsz := int(binary.LittleEndian.Uint32(id[nvme.IDCtrlIOCCSZ:]))
	i.ioInline = max(ioccsz*16-pdu.SQELen, 0)
	if binary.LittleEndian.Uint32(id[nvme.IDCtrlSGLS:])&(1<<20) == 0 {
		i.ioInline = 0 // no offset data blocks: no in-capsule data
	}
	i.nn = binary.LittleEndian.Uint32(id[nvme.IDCtrlNN:])
	i.vwc = id[nvme.IDCtrlVWC]&1 != 0
	i.oncs = binary.LittleEndian.Uint16(id[nvme.IDCtrlONCS:])
	i.subNQN = pdu.CString(id[nvme.IDCtrlSUBNQN : nvme.IDCtrlSUBNQN+256])
	// CAP.MQES is 0's based: the largest queue has MQES+1 entries, so
	// holds MQES commands (a queue is full when its head is one past its
	// tail). MAXCMD, when set, bounds the commands in flight directly.
	i.ioDepth = int(capv & 0xFFFF)
	if mc := int(binary.LittleEndian.Uint16(id[nvme.IDCtrlMAXCMD:])); mc > 0 && mc < i.ioDepth {
		i.ioDepth = mc
	}
}

// connectQueue sends the Fabrics Connect for qid and returns the CNTLID.
//
// The queue is created with one entry more than q's command slots. SQSIZE
// is 0's based, so the value sent equals the slot count: NVMe sizes a
// queue of N entries to hold N-1 commands (full when the head is one past
// the tail), the smallest queue has two entries (a target refuses SQSIZE
// 0 with Connect Invalid Parameters), and the Linux host likewise sends
// SQSIZE = queue_size-1 and keeps fewer commands than entries in flight.
// One slot therefore connects, as a two-entry queue.
func connectQueue(q *hqueue, qid, cntlid uint16, kato uint32, subNQN string, opts *Options) (uint16, error) {
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.Fabrics)
	sqe.SetFCType(nvme.FctConnect)
	sqe.SetCDW(10, uint32(qid)<<16)
	sqe.SetCDW(11, uint32(len(q.cmds))|(1<<2)<<16) // CATTR: disable SQ flow control
	sqe.SetCDW(12, kato)
	data := make([]byte, pdu.ConnectDataLen)
	cd := pdu.ConnectData{HostID: opts.HostID, CNTLID: cntlid, SubNQN: subNQN, HostNQN: opts.HostNQN}
	cd.Marshal(data)
	cqe, err := q.submit(&sqe, data, true)
	if err != nil {
		return 0, fmt.Errorf("connect queue %d: %w", qid, err)
	}
	return uint16(cqe.Result), nil
}

func propertySetSQE(sqe *pdu.SQE, off uint32, v uint64) {
	sqe.SetOpcode(nvme.Fabrics)
	sqe.SetFCType(nvme.FctPropertySet)
	sqe[40] = 0 // 4 bytes
	sqe.SetCDW(11, off)
	binary.LittleEndian.PutUint64(sqe[48:], v)
}

func propertyGet(q *hqueue, off uint32, size8 bool) (uint64, error) {
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.Fabrics)
	sqe.SetFCType(nvme.FctPropertyGet)
	if size8 {
		sqe[40] = 1
	}
	sqe.SetCDW(11, off)
	cqe, err := q.submit(&sqe, nil, false)
	if err != nil {
		return 0, fmt.Errorf("property get %#x: %w", off, err)
	}
	return cqe.Result, nil
}

// ccValue is CC with EN, 64-byte SQEs and 16-byte CQEs, NVM command set,
// 4 KiB pages.
func ccValue() uint32 { return nvme.CCEnable | 6<<16 | 4<<20 }

// enable reads CAP, sets CC.EN and waits for CSTS.RDY.
func enable(q *hqueue) (uint64, error) {
	capv, err := propertyGet(q, nvme.PropCAP, true)
	if err != nil {
		return 0, err
	}
	var sqe pdu.SQE
	propertySetSQE(&sqe, nvme.PropCC, uint64(ccValue()))
	if _, err := q.submit(&sqe, nil, false); err != nil {
		return 0, fmt.Errorf("property set CC: %w", err)
	}
	to := time.Duration((capv>>24)&0xFF)*500*time.Millisecond + time.Second
	deadline := time.Now().Add(to)
	for {
		csts, err := propertyGet(q, nvme.PropCSTS, false)
		if err != nil {
			return 0, err
		}
		if csts&nvme.CSTSFatal != 0 {
			return 0, errors.New("controller fatal status")
		}
		if csts&nvme.CSTSReady != 0 {
			return capv, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("controller not ready after %v", to)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func identify(q *hqueue, cns uint8, nsid uint32, dst []byte) error {
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminIdentify)
	sqe.SetNSID(nsid)
	sqe.SetCDW(10, uint32(cns))
	_, err := q.submit(&sqe, dst, false)
	return err
}

// getLogPage reads len(dst) bytes of log page lid from offset lpo.
func getLogPage(q *hqueue, lid uint8, lpo uint64, dst []byte) error {
	var sqe pdu.SQE
	numd := uint32(len(dst)/4 - 1)
	sqe.SetOpcode(nvme.AdminGetLogPage)
	sqe.SetCDW(10, uint32(lid)|numd<<16)
	sqe.SetCDW(11, numd>>16)
	sqe.SetCDW(12, uint32(lpo))
	sqe.SetCDW(13, uint32(lpo>>32))
	_, err := q.submit(&sqe, dst, false)
	return err
}

// DiscoveryEntry is one record of a discovery log.
type DiscoveryEntry = nvme.DiscoveryEntry

// Discover connects to the discovery controller at addr (port 8009 by
// convention) and returns its discovery log entries.
func Discover(ctx context.Context, addr string, opts Options) ([]DiscoveryEntry, error) {
	opts = opts.withDefaults()
	q, err := dialQueue(ctx, addr, &opts, adminDepth-1)
	if err != nil {
		return nil, err
	}
	q.inline = adminInline
	defer q.kill(ErrClosed)
	if _, err := connectQueue(q, 0, 0xFFFF, 0, nvme.DiscoveryNQN, &opts); err != nil {
		return nil, fmt.Errorf("nvmf initiator: discovery at %s: %w", addr, err)
	}
	if _, err := enable(q); err != nil {
		return nil, fmt.Errorf("nvmf initiator: discovery at %s: %w", addr, err)
	}
	var entries []DiscoveryEntry
	for range 5 {
		hdr := make([]byte, nvme.DiscLogHeaderLen)
		if err := getLogPage(q, nvme.LogDiscovery, 0, hdr); err != nil {
			return nil, fmt.Errorf("nvmf initiator: discovery log at %s: %w", addr, err)
		}
		gen := binary.LittleEndian.Uint64(hdr)
		n := binary.LittleEndian.Uint64(hdr[8:])
		if n > 1024 {
			return nil, fmt.Errorf("nvmf initiator: discovery log at %s claims %d records", addr, n)
		}
		entries = entries[:0]
		if n > 0 {
			buf := make([]byte, int(n)*nvme.DiscLogEntryLen)
			for off := 0; off < len(buf); off += maxTransfer {
				end := min(off+maxTransfer, len(buf))
				if err := getLogPage(q, nvme.LogDiscovery, uint64(nvme.DiscLogHeaderLen+off), buf[off:end]); err != nil {
					return nil, fmt.Errorf("nvmf initiator: discovery log at %s: %w", addr, err)
				}
			}
			for i := range int(n) {
				entries = append(entries, nvme.UnmarshalDiscoveryEntry(buf[i*nvme.DiscLogEntryLen:]))
			}
		}
		if err := getLogPage(q, nvme.LogDiscovery, 0, hdr); err != nil {
			return nil, fmt.Errorf("nvmf initiator: discovery log at %s: %w", addr, err)
		}
		if binary.LittleEndian.Uint64(hdr) == gen {
			var sqe pdu.SQE
			propertySetSQE(&sqe, nvme.PropCC, uint64(ccValue()|1<<nvme.CCShnShift))
			q.submit(&sqe, nil, false)
			return entries, nil
		}
	}
	return nil, fmt.Errorf("nvmf initiator: discovery log at %s keeps changing", addr)
}

// admin runs an admin command on the current session.
func (c *Controller) admin(sqe *pdu.SQE, data []byte, write bool) (pdu.CQE, error) {
	s, err := c.session()
	if err != nil {
		return pdu.CQE{}, err
	}
	return s.admin.submit(sqe, data, write)
}

// CNTLID returns the controller ID of the current association (it changes
// on reconnect), or 0 while disconnected.
func (c *Controller) CNTLID() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return 0
	}
	return c.cur.info.cntlid
}

// ActiveNamespaces lists the controller's active namespace IDs.
func (c *Controller) ActiveNamespaces() ([]uint32, error) {
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminIdentify)
	sqe.SetCDW(10, nvme.CNSActiveNSList)
	b := make([]byte, nvme.IdentifyDataLength)
	if _, err := c.admin(&sqe, b, false); err != nil {
		return nil, fmt.Errorf("nvmf initiator: %s: active namespace list: %w", c.subNQN, err)
	}
	var ids []uint32
	for i := 0; i+4 <= len(b); i += 4 {
		id := binary.LittleEndian.Uint32(b[i:])
		if id == 0 {
			break
		}
		ids = append(ids, id)
	}
	return ids, nil
}
