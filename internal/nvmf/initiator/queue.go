package initiator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
	"github.com/nexstor/nexstor/internal/sockread"
)

// Errors callers may branch on.
var (
	// ErrTimeout: a command did not complete within Options.CommandTimeout.
	// The queue it was on is reset, as NVMe error recovery prescribes.
	ErrTimeout = errors.New("nvmf initiator: command timed out")
	// ErrConnectionLost: the connection carrying a command failed before
	// the command completed; whether it executed is unknown.
	ErrConnectionLost = errors.New("nvmf initiator: connection lost")
	// ErrClosed: the controller or namespace is closed. It wraps
	// bdev.ErrClosed, so Namespace honours the Device contract.
	ErrClosed = fmt.Errorf("nvmf initiator: %w", bdev.ErrClosed)
	// ErrGaveUp is returned once the controller has spent its
	// Options.MaxReconnect attempts: the target is considered gone for good
	// and the Controller must be closed and connected anew.
	ErrGaveUp = errors.New("nvmf initiator: gave up reconnecting")
)

// errNotSent wraps the reason a command could not even be sent: it is safe
// to retry on another connection.
type errNotSent struct{ err error }

func (e errNotSent) Error() string { return e.err.Error() }
func (e errNotSent) Unwrap() error { return e.err }

// cmd is one command slot of a host queue, indexed by CID.
type cmd struct {
	q   *hqueue
	cid uint16
	// ns and off name a write started by Namespace.startWrite, for its
	// error; set by its submitter after send.
	ns   *Namespace
	off  int64
	done chan struct{} // one token per completion
	// timer kills the queue when the command outlives the timeout. Killing
	// rather than signalling the submitter also ends a write blocked on a
	// peer that stopped reading.
	timer    *time.Timer
	timedOut atomic.Bool
	deadline time.Time // when the active command times out; under mu
	active   bool
	write    bool
	data     []byte // caller buffer: read destination or write source
	got      int    // read bytes received
	// badDigest: some of the read data failed its data digest.
	badDigest bool
	cqe       pdu.CQE
	err       error
}

// hqueue is one host queue: an admin or I/O queue on its own connection.
type hqueue struct {
	qid     uint16
	conn    net.Conn
	dec     *pdu.Decoder
	wmu     sync.Mutex   // serializes writes to the connection
	writers atomic.Int32 // writers waiting for wmu (see lockWrite)
	enc     *pdu.Encoder
	bw      *bufio.Writer
	inline  int    // in-capsule data limit
	maxH2C  uint32 // the controller's MAXH2CDATA
	timeout time.Duration

	mu   sync.Mutex // guards cmds' fields and failed between submitters and the reader
	cmds []cmd
	free chan uint16
	// failed is set by the reader, under mu, once it has failed every
	// outstanding command and will complete no more: a command activated
	// after that would wait forever.
	failed bool

	dead      chan struct{}
	deadErr   atomic.Pointer[error]
	closeOnce sync.Once
	readerEnd chan struct{}
	onDeath   atomic.Pointer[func(*hqueue)] // set once the session is installed
}

// dialQueue connects and initializes one queue (ICReq/ICResp), and starts
// its reader. depth is the number of command slots, the most commands in
// flight; Connect then asks for one queue entry more (see connectQueue).
func dialQueue(ctx context.Context, addr string, opts *Options, depth int) (*hqueue, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("nvmf initiator: dial %s: %w", addr, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
		// Every close of this connection is abortive (SO_LINGER 0: a
		// reset, and whatever this host's kernel still holds unsent or
		// unacknowledged is discarded), even the kernel's own when the
		// process dies. An ordinary close would leave the kernel
		// retransmitting those bytes, write capsules among them, until the
		// peer takes them: after a partition heals, a write the caller was
		// told had failed, and that a mirror has since rebuilt over, could
		// still land. This fences only what the host still holds: bytes
		// the target's kernel had already received may still be read and
		// executed there. A clean disconnect has waited for its last
		// response before closing, so it loses nothing.
		tc.SetLinger(0)
	}
	q := &hqueue{
		conn:      conn,
		bw:        bufio.NewWriterSize(conn, 64<<10),
		timeout:   opts.CommandTimeout,
		dead:      make(chan struct{}),
		readerEnd: make(chan struct{}),
		free:      make(chan uint16, depth),
		cmds:      make([]cmd, depth),
	}
	q.enc = pdu.NewEncoder(q.bw)
	q.enc.Direct = conn // large writes: header and data in one writev
	br := bufio.NewReaderSize(conn, 64<<10)
	q.dec = pdu.NewDecoder(br, maxTransfer)
	if pr := sockread.New(conn); pr != nil {
		// Long read data arrives with one wake-up, not one per burst.
		q.dec.ReadFull = func(p []byte) (int, error) { return pr.ReadFull(br, p) }
	}
	for i := range q.cmds {
		c := &q.cmds[i]
		c.q, c.cid = q, uint16(i)
		c.done = make(chan struct{}, 1)
		c.timer = time.AfterFunc(time.Hour, func() { q.expire(c) })
		c.timer.Stop()
		q.free <- uint16(i)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(opts.CommandTimeout))
	}
	// Cancelling ctx ends the handshake at once.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	err = q.initialize(opts)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("nvmf initiator: %s: %w", addr, err)
	}
	conn.SetDeadline(time.Time{})
	go q.reader()
	return q, nil
}

func (q *hqueue) initialize(opts *Options) error {
	if err := q.enc.WriteICReq(pdu.ICReq{PFV: pdu.PFV0, HeaderDigest: opts.HeaderDigest, DataDigest: opts.DataDigest}); err != nil {
		return err
	}
	if err := q.bw.Flush(); err != nil {
		return err
	}
	h, err := q.dec.Next()
	if err != nil {
		return fmt.Errorf("reading ICResp: %w", err)
	}
	if h.Type == pdu.TypeC2HTermReq {
		tr := q.dec.TermReq()
		return fmt.Errorf("controller terminated the connection (FES %#x)", tr.FES)
	}
	if h.Type != pdu.TypeICResp {
		return fmt.Errorf("got %v instead of ICResp", h.Type)
	}
	ic := q.dec.ICResp()
	switch {
	case ic.PFV != pdu.PFV0:
		return fmt.Errorf("ICResp PFV %d unsupported", ic.PFV)
	case ic.HeaderDigest != opts.HeaderDigest || ic.DataDigest != opts.DataDigest:
		return fmt.Errorf("controller does not agree to digests (header %v, data %v)", ic.HeaderDigest, ic.DataDigest)
	case ic.MaxH2CData < 4096 || ic.MaxH2CData%4 != 0:
		return fmt.Errorf("ICResp MAXH2CDATA %d invalid", ic.MaxH2CData)
	case ic.CPDA > 31:
		return fmt.Errorf("ICResp CPDA %d invalid", ic.CPDA)
	}
	q.maxH2C = ic.MaxH2CData
	q.dec.HeaderDigest, q.dec.DataDigest = ic.HeaderDigest, ic.DataDigest
	q.enc.HeaderDigest, q.enc.DataDigest = ic.HeaderDigest, ic.DataDigest
	q.enc.DataAlign = ic.CPDA
	return nil
}

// kill closes the connection (abortively, see dialQueue) with err as the
// reason; the reader then fails every outstanding command.
func (q *hqueue) kill(err error) {
	q.closeOnce.Do(func() {
		q.deadErr.Store(&err)
		close(q.dead)
		q.conn.Close()
	})
}

// expire runs when c's timer fires: it kills the queue if c's command has
// outlived its deadline. Stop cannot recall a callback already started, so
// the firing may belong to an earlier command of the slot, which completed:
// then the command now in the slot is left alone.
func (q *hqueue) expire(c *cmd) {
	q.mu.Lock()
	expired := c.active && !time.Now().Before(c.deadline)
	q.mu.Unlock()
	if expired {
		c.timedOut.Store(true)
		q.kill(ErrTimeout)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (q *hqueue) reason() error {
	if p := q.deadErr.Load(); p != nil {
		return *p
	}
	return ErrConnectionLost
}

// submit sends a command and waits for its completion. data is the write
// source (write) or read destination; it is not retained after return. The
// SQE's CID, flags and SGL are filled here. A command that outlives the
// queue's timeout kills the queue.
func (q *hqueue) submit(sqe *pdu.SQE, data []byte, write bool) (pdu.CQE, error) {
	return q.submitFor(sqe, data, write, q.timeout)
}

// submitFor is submit with its own timeout; 0 waits until the command
// completes or the queue dies (an Asynchronous Event Request, which the
// controller holds until an event).
func (q *hqueue) submitFor(sqe *pdu.SQE, data []byte, write bool, timeout time.Duration) (pdu.CQE, error) {
	c, err := q.send(sqe, data, write, timeout)
	if err != nil {
		return pdu.CQE{}, err
	}
	return q.wait(c)
}

// send takes a command slot, arms the command's timer and sends its capsule
// (for a write, with its data when it fits in the capsule). The command then
// completes through wait, which must follow exactly once: until then it
// holds its slot, and data must stay as it is. An error wrapping errNotSent
// means nothing was sent.
func (q *hqueue) send(sqe *pdu.SQE, data []byte, write bool, timeout time.Duration) (*cmd, error) {
	var cid uint16
	select {
	case cid = <-q.free:
	case <-q.dead:
		return nil, errNotSent{q.reason()}
	}
	c := &q.cmds[cid]
	q.mu.Lock()
	// select picks at random between a free slot and a dead queue, so a
	// slot can be had after the queue died, even after the reader is gone
	// (nobody would complete the command). Nothing is sent yet: the
	// command may go on another connection.
	if q.failed || isClosed(q.dead) {
		q.mu.Unlock()
		q.free <- cid
		return nil, errNotSent{q.reason()}
	}
	c.active, c.write, c.data, c.got, c.err, c.badDigest = true, write, data, 0, nil, false
	c.cqe = pdu.CQE{}
	c.timedOut.Store(false)
	if timeout > 0 {
		c.deadline = time.Now().Add(timeout)
	} else {
		c.deadline = time.Now().Add(100 * 365 * 24 * time.Hour)
	}
	q.mu.Unlock()
	if timeout > 0 {
		c.timer.Reset(timeout)
	}

	sqe.SetCID(cid)
	sqe.SetFlags(pdu.PSDTSGL)
	var inline []byte
	switch {
	case len(data) == 0:
		sqe.SetSGL(pdu.SGL{Type: pdu.SGLTransportDataBlock})
	case write && len(data) <= q.inline:
		sqe.SetSGL(pdu.SGL{Type: pdu.SGLDataBlockOffset, Length: uint32(len(data))})
		inline = data
	default:
		sqe.SetSGL(pdu.SGL{Type: pdu.SGLTransportDataBlock, Length: uint32(len(data))})
	}
	q.lockWrite()
	err := q.enc.WriteCapsuleCmd(sqe, inline)
	q.unlockWrite(&err)
	if err != nil {
		q.kill(fmt.Errorf("%w: %v", ErrConnectionLost, err))
	}
	return c, nil
}

// wait blocks until command c, sent by send, completes, frees its slot and
// returns its completion.
func (q *hqueue) wait(c *cmd) (pdu.CQE, error) {
	// The reader completes the command, or fails it when the connection
	// dies: the timer's kill included.
	<-c.done
	c.timer.Stop()
	q.mu.Lock()
	cqe, cerr := c.cqe, c.err
	c.data = nil
	q.mu.Unlock()
	timedOut := c.timedOut.Load()
	q.free <- c.cid
	if cerr != nil {
		if timedOut {
			return cqe, ErrTimeout
		}
		return cqe, cerr
	}
	if st := nvme.Status(cqe.Status); !st.Success() {
		return cqe, st
	}
	return cqe, nil
}

// finish completes command c; q.mu is held.
func (q *hqueue) finishLocked(c *cmd, err error) {
	if !c.active {
		return
	}
	c.active = false
	c.err = err
	c.done <- struct{}{}
}

// reader completes commands until the connection fails, then fails every
// outstanding command.
func (q *hqueue) reader() {
	err := q.readLoop()
	q.kill(err)
	q.mu.Lock()
	q.failed = true
	for i := range q.cmds {
		if q.cmds[i].active {
			q.finishLocked(&q.cmds[i], fmt.Errorf("%w: %v", ErrConnectionLost, q.reason()))
		}
	}
	q.mu.Unlock()
	close(q.readerEnd)
	if f := q.onDeath.Load(); f != nil {
		(*f)(q)
	}
}

func (q *hqueue) protocolError(fes uint16, fei uint32, msg string) error {
	q.wmu.Lock()
	q.conn.SetWriteDeadline(time.Now().Add(time.Second))
	q.enc.WriteTermReq(pdu.TypeH2CTermReq, pdu.TermReq{FES: fes, FEI: fei, Data: q.dec.RawHeader()})
	q.bw.Flush()
	q.wmu.Unlock()
	return fmt.Errorf("%w: protocol error: %s", ErrConnectionLost, msg)
}

func (q *hqueue) lookup(cid uint16) *cmd {
	if int(cid) >= len(q.cmds) {
		return nil
	}
	c := &q.cmds[cid]
	if !c.active {
		return nil
	}
	return c
}

func (q *hqueue) readLoop() error {
	for {
		h, err := q.dec.Next()
		if err != nil {
			var pe *pdu.Error
			if errors.As(err, &pe) {
				return q.protocolError(pe.FES, pe.FEI, pe.Msg)
			}
			return fmt.Errorf("%w: %v", ErrConnectionLost, err)
		}
		switch h.Type {
		case pdu.TypeCapsuleResp:
			cqe := q.dec.CQE()
			q.mu.Lock()
			c := q.lookup(cqe.CID)
			if c == nil {
				q.mu.Unlock()
				return q.protocolError(pdu.FESInvalidHeaderField, 20, "response for an unknown CID")
			}
			c.cqe = cqe
			if !c.write && nvme.Status(cqe.Status).Success() && (c.got != len(c.data) || c.badDigest) {
				c.cqe.Status = uint16(nvme.StatusDataTransferError)
			}
			q.finishLocked(c, nil)
			q.mu.Unlock()
		case pdu.TypeC2HData:
			dh := q.dec.DataHeader()
			q.mu.Lock()
			c := q.lookup(dh.CCCID)
			if c == nil || c.write {
				q.mu.Unlock()
				return q.protocolError(pdu.FESInvalidHeaderField, 8, "C2HData for an unknown or write command")
			}
			if uint64(dh.DataO)+uint64(dh.DataL) > uint64(len(c.data)) || int(dh.DataO) != c.got {
				q.mu.Unlock()
				return q.protocolError(pdu.FESDataOutOfRange, 12, "C2HData outside the command's buffer")
			}
			dst := c.data[dh.DataO : dh.DataO+dh.DataL]
			q.mu.Unlock()
			// The submitter is blocked until completion, so dst stays valid.
			badDigest := false
			if err := q.dec.ReadData(dst); err != nil {
				var dde *pdu.DataDigestError
				if !errors.As(err, &dde) {
					return fmt.Errorf("%w: %v", ErrConnectionLost, err)
				}
				// The stream is intact; only this command's data is bad.
				badDigest = true
			}
			q.mu.Lock()
			c.badDigest = c.badDigest || badDigest
			c.got += int(dh.DataL)
			if h.Flags&pdu.FlagSuccess != 0 {
				if h.Flags&pdu.FlagLast == 0 || c.got != len(c.data) {
					q.mu.Unlock()
					return q.protocolError(pdu.FESInvalidHeaderField, 1, "SUCCESS without the whole data")
				}
				c.cqe = pdu.CQE{CID: dh.CCCID, SQID: q.qid}
				if c.badDigest {
					c.cqe.Status = uint16(nvme.StatusDataTransferError)
				}
				q.finishLocked(c, nil)
			}
			q.mu.Unlock()
		case pdu.TypeR2T:
			r2t := q.dec.R2T()
			q.mu.Lock()
			c := q.lookup(r2t.CCCID)
			if c == nil || !c.write || uint64(r2t.R2TO)+uint64(r2t.R2TL) > uint64(len(c.data)) || r2t.R2TL == 0 {
				q.mu.Unlock()
				return q.protocolError(pdu.FESInvalidHeaderField, 8, "R2T for an unknown command or outside its data")
			}
			src := c.data[r2t.R2TO : r2t.R2TO+r2t.R2TL]
			q.mu.Unlock()
			if err := q.sendH2C(r2t, src); err != nil {
				return fmt.Errorf("%w: %v", ErrConnectionLost, err)
			}
		case pdu.TypeC2HTermReq:
			tr := q.dec.TermReq()
			return fmt.Errorf("%w: controller terminated the connection (FES %#x, FEI %d)", ErrConnectionLost, tr.FES, tr.FEI)
		default:
			return q.protocolError(pdu.FESInvalidHeaderField, 0, "unexpected "+h.Type.String())
		}
	}
}

// sendH2C answers an R2T with H2CData PDUs of at most MAXH2CDATA bytes.
// A failed flush (in unlockWrite) is its error too: the capsules of other
// submitters may have been in that buffer, and the reader kills the queue on
// it.
func (q *hqueue) sendH2C(r2t pdu.R2T, src []byte) (err error) {
	q.lockWrite()
	defer q.unlockWrite(&err)
	off := r2t.R2TO
	for len(src) > 0 {
		n := min(len(src), int(q.maxH2C))
		var flags uint8
		if n == len(src) {
			flags = pdu.FlagLast
		}
		if err = q.enc.WriteH2CData(pdu.DataHeader{CCCID: r2t.CCCID, TTag: r2t.TTag, DataO: off}, flags, src[:n]); err != nil {
			return err
		}
		src = src[n:]
		off += uint32(n)
	}
	return nil
}

// lockWrite takes the write side of the connection. Writers that queue up
// behind each other share one flush: only the last one out flushes, so a
// burst of submissions costs one syscall.
func (q *hqueue) lockWrite() {
	q.writers.Add(1)
	q.wmu.Lock()
	q.writers.Add(-1)
}

// unlockWrite flushes unless another writer is waiting (it will flush), and
// releases the write side. *err receives the flush error, if any.
//
// While other commands are in flight, it first lets the goroutines that
// are ready to run go: under load those are submitters whose commands just
// completed, about to write their next capsules, which then share this one
// system call. On few CPUs submitters seldom overlap on wmu otherwise, and
// a loopback or LAN write costs several microseconds per call whatever it
// carries. Alone (queue depth 1) it flushes at once: yielding wakes another
// thread to look for work, which would cost more than it saves. Whoever
// holds wmu when the buffer is non-empty and no writer is waiting flushes
// it, so every capsule goes out.
func (q *hqueue) unlockWrite(err *error) {
	if *err != nil || q.writers.Load() != 0 {
		q.wmu.Unlock()
		return
	}
	if cap(q.free)-len(q.free) <= 1 {
		*err = q.bw.Flush()
		q.wmu.Unlock()
		return
	}
	q.wmu.Unlock()
	runtime.Gosched()
	q.wmu.Lock()
	if q.bw.Buffered() > 0 {
		*err = q.bw.Flush()
	}
	q.wmu.Unlock()
}
