package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/iobuf"
	"github.com/nexstor/nexstor/internal/sockread"
)

// Per-connection limits.
const (
	// maxInFlight is the number of requests one connection may have in
	// flight, and the number of worker goroutines it may use.
	maxInFlight = 128
	// maxInFlightBytes bounds the payload buffered for one connection.
	maxInFlightBytes = 128 << 20
	ioBufSize        = 128 << 10
)

// conn is one client connection.
type conn struct {
	s   *Server
	nc  net.Conn
	log *slog.Logger
	br  *bufio.Reader
	pr  *sockread.Reader  // WRITE payloads past maxInline; may be nil (see sockread)
	hdr [requestSize]byte // the request being read; the holder of the read role only

	// Set once negotiation is done, read-only afterwards.
	dev        bdev.Device
	geo        geometry
	structured bool

	// dmu orders shutdown against the end of negotiation, which clears the
	// handshake deadline (see shutdown).
	dmu      sync.Mutex
	stopping bool

	// Replies: one writer at a time; waiting counts repliers queued on wmu,
	// so that the last of a burst flushes for all of them.
	wmu     sync.Mutex
	bw      *bufio.Writer
	werr    error
	waiting atomic.Int32

	budget  *budget
	work    chan *job
	workers int          // goroutines so far; the holder of the read role only (see dispatch)
	idle    atomic.Int32 // workers waiting for a job
	queued  atomic.Int32 // jobs sent but not yet taken
	active  atomic.Int32 // requests dispatched or run inline and not yet finished
	wg      sync.WaitGroup

	inl inlineState // the server's watchdog's view of inline requests
}

// job is one request on its way through a worker. Jobs are pooled.
type job struct {
	req     request
	v       verdict
	payload *[]byte // WRITE data, nil otherwise
	cost    int64   // what was taken from the budget
	hdr     [structuredReplySize + 8]byte
}

var jobPool = sync.Pool{New: func() any { return new(job) }}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		s:      s,
		nc:     nc,
		log:    s.log.With("remote", nc.RemoteAddr().String()),
		br:     bufio.NewReaderSize(nc, ioBufSize),
		pr:     sockread.New(nc),
		bw:     bufio.NewWriterSize(nc, ioBufSize),
		budget: newBudget(maxInFlight, maxInFlightBytes),
		work:   make(chan *job, maxInFlight),
	}
}

// shutdown asks the connection to stop reading requests; the reader then
// waits for in-flight requests to be answered and closes the connection.
// Called with Server.mu held; it does not block.
func (c *conn) shutdown() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.stopping = true
	c.nc.SetReadDeadline(time.Now())
	// A client that stops reading replies must not hold the shutdown forever.
	c.nc.SetWriteDeadline(time.Now().Add(drainTimeout))
}

// serve runs the connection to its end and closes it.
func (c *conn) serve() {
	defer c.nc.Close()
	c.log.Debug("nbd client connected")
	c.nc.SetDeadline(time.Now().Add(handshakeTimeout))
	n, err := negotiate(c.br, c.bw, serverCatalog{c.s})
	if err != nil {
		if errors.Is(err, errAborted) || errors.Is(err, io.EOF) {
			c.log.Debug("nbd negotiation ended", "reason", err)
		} else {
			c.log.Info("nbd negotiation failed", "err", err)
		}
		return
	}
	c.dmu.Lock()
	if c.stopping {
		c.dmu.Unlock()
		return
	}
	c.nc.SetDeadline(time.Time{})
	c.dmu.Unlock()

	e := n.export.ref
	if !c.s.attach(c, e) {
		c.log.Debug("nbd export went away during negotiation", "export", n.export.name)
		return
	}
	defer c.s.detach(c, e)
	c.dev, c.structured = e.dev, n.structured
	c.geo = geometry{size: n.export.size, blockSize: n.export.blockSize, readOnly: n.export.readOnly, maxPayload: n.export.maxPayload}
	c.log = c.log.With("export", e.name)
	c.log.Debug("nbd transmission started", "structured_replies", c.structured)
	c.transmit()
	c.log.Debug("nbd client disconnected")
}

// transmit runs the transmission phase. It returns after every request
// has been answered and every goroutine of the connection has exited.
//
// One goroutine at a time reads requests (it holds the read role); it hands
// each to a worker, or executes it itself when nothing else is in flight
// (see inline), keeping the read role unless the server's watchdog passes
// it to a worker because the request has run for a tick (see inline.go),
// so that requests arriving meanwhile are read and run concurrently. A
// goroutine whose read role was passed on joins the workers.
func (c *conn) transmit() {
	c.s.watch.add(c)
	defer c.s.watch.remove(c)
	c.workers = 1 // this goroutine
	if c.read() {
		c.idle.Add(1)
		c.workLoop()
	}
	c.wg.Wait()
}

// readToken, sent on work, gives the read role to the worker that takes it.
var readToken job

// read reads requests and dispatches them while this goroutine holds the
// read role. It reports true when the role was passed on while it executed
// a request inline; false when reading has ended, after every request
// dispatched has been answered and work is closed.
func (c *conn) read() bool {
	hdr := c.hdr[:]
	for {
		if _, err := io.ReadFull(c.br, hdr); err != nil {
			c.readEnded(err)
			break
		}
		r, err := parseRequest(hdr)
		if err != nil {
			c.log.Info("nbd protocol error, closing connection", "err", err)
			break
		}
		v := checkRequest(r, c.geo)
		if v.disconnect {
			c.log.Debug("nbd client sent disconnect")
			break
		}
		// Only accepted reads and writes hold payload buffers.
		var cost int64
		if v.errno == 0 && (r.typ == cmdRead || r.typ == cmdWrite) {
			cost = int64(r.length)
		}
		c.budget.acquire(cost)
		j := jobPool.Get().(*job)
		j.req, j.v, j.cost, j.payload = r, v, cost, nil
		if v.payload > 0 {
			if v.errno != 0 {
				// The payload of a refused write must still be consumed
				// to keep the stream in step.
				if _, err := c.br.Discard(int(v.payload)); err != nil {
					c.budget.release(cost)
					jobPool.Put(j)
					c.readEnded(err)
					break
				}
			} else {
				// From iobuf: reused size classes, and huge pages for
				// the large payloads that direct I/O pins page by page.
				j.payload = iobuf.Get(int(v.payload))
				pr := c.pr
				if v.payload <= maxInline {
					// Through br alone, which also takes in what follows:
					// inline needs to see the next request.
					pr = nil
				}
				if _, err := pr.ReadFull(c.br, *j.payload); err != nil {
					iobuf.Put(j.payload)
					j.payload = nil
					c.budget.release(cost)
					jobPool.Put(j)
					c.readEnded(err)
					break
				}
			}
		}
		if c.inline(j) {
			c.active.Add(1)
			seq := c.beginInline()
			c.handle(j)
			kept := c.endInline(seq)
			c.finish(j)
			c.active.Add(-1)
			if !kept {
				return true
			}
			continue
		}
		c.active.Add(1)
		c.dispatch(j)
	}
	c.budget.wait()
	close(c.work)
	return false
}

// maxInline bounds the length of a READ or WRITE that the reading
// goroutine executes itself (see inline).
const maxInline = ioBufSize

// inline reports whether the goroutine that read j should execute it
// itself rather than hand it to a worker: when nothing else is in flight
// and no further request has arrived (the client waits for this reply, as
// at queue depth 1), a hand-off to another goroutine puts a wake-up and a
// context switch into the request's latency. Requests that may take long
// (FLUSH, TRIM, WRITE_ZEROES, long transfers) always go to a worker.
func (c *conn) inline(j *job) bool {
	if c.active.Load() != 0 || c.br.Buffered() != 0 {
		return false
	}
	if j.v.errno != 0 {
		return true
	}
	return (j.req.typ == cmdRead || j.req.typ == cmdWrite) && j.req.length <= maxInline
}

// finish returns what a handled job holds.
func (c *conn) finish(j *job) {
	if j.payload != nil {
		iobuf.Put(j.payload)
		j.payload = nil
	}
	c.budget.release(j.cost)
	jobPool.Put(j)
}

func (c *conn) readEnded(err error) {
	c.dmu.Lock()
	stopping := c.stopping
	c.dmu.Unlock()
	switch {
	case stopping:
		c.log.Debug("nbd connection shut down by the server")
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed):
		c.log.Debug("nbd client closed the connection")
	default:
		c.log.Info("nbd read failed, closing connection", "err", err)
	}
}

// dispatch hands a job, or the read role, to a worker, starting one when
// none is free. Only the holder of the read role calls it: the goroutine
// reading, or the server's watchdog once it has taken the role over from
// an inline request (see inlineWatch.scan), never both at once.
func (c *conn) dispatch(j *job) {
	if j == &readToken {
		c.inl.handoffs.Add(1)
	}
	if c.queued.Add(1) > c.idle.Load() && c.workers < maxInFlight {
		c.workers++
		c.idle.Add(1)
		c.wg.Add(1)
		go c.worker()
	}
	c.work <- j
}

func (c *conn) worker() {
	defer c.wg.Done()
	c.workLoop()
}

// workLoop executes jobs, and reads while it holds the read role, until
// work is closed. The caller has counted this goroutine idle.
func (c *conn) workLoop() {
	for j := range c.work {
		c.queued.Add(-1)
		c.idle.Add(-1)
		if j == &readToken {
			if !c.read() {
				return
			}
		} else {
			c.handle(j)
			c.finish(j)
			c.active.Add(-1)
		}
		c.idle.Add(1)
	}
}

// handle executes one request and sends its reply.
func (c *conn) handle(j *job) {
	r := &j.req
	if j.v.errno != 0 {
		c.log.Debug("nbd request refused", "cmd", cmdName(r.typ), "offset", r.offset, "length", r.length, "err", j.v.msg)
		c.replyError(j, j.v.errno, j.v.msg)
		return
	}
	off := int64(r.offset)
	var err error
	switch r.typ {
	case cmdRead:
		buf := iobuf.Get(int(r.length))
		if _, err = c.dev.ReadAt(*buf, off); err == nil {
			c.replyData(j, *buf)
		}
		iobuf.Put(buf)
	case cmdWrite:
		_, err = c.dev.WriteAt(*j.payload, off)
	case cmdFlush:
		err = c.dev.Flush()
	case cmdTrim:
		err = c.dev.Unmap(off, int64(r.length))
	case cmdWriteZeroes:
		err = c.dev.WriteZeroes(off, int64(r.length))
	}
	// FUA: the write is durable when acknowledged. Flush covers it because
	// it makes every acknowledged write durable.
	if err == nil && r.flags&cmdFlagFUA != 0 && r.typ != cmdRead && r.typ != cmdFlush {
		err = c.dev.Flush()
	}
	if err != nil {
		errno := errnoOf(err, r.typ != cmdRead)
		c.log.Info("nbd request failed", "cmd", cmdName(r.typ), "offset", r.offset, "length", r.length, "err", err)
		c.replyError(j, errno, err.Error())
		return
	}
	if r.typ != cmdRead {
		c.replyOK(j)
	}
}

// replyOK acknowledges a request without payload. A simple reply is allowed
// for every command but READ, structured replies or not.
func (c *conn) replyOK(j *job) {
	putSimpleReply(j.hdr[:], 0, j.req.handle)
	c.send(j.hdr[:simpleReplySize], nil, "")
}

// replyData sends the data of a successful READ.
func (c *conn) replyData(j *job, data []byte) {
	if !c.structured {
		putSimpleReply(j.hdr[:], 0, j.req.handle)
		c.send(j.hdr[:simpleReplySize], data, "")
		return
	}
	putChunkHeader(j.hdr[:], replyFlagDone, replyTypeOffsetData, j.req.handle, uint32(8+len(data)))
	binary.BigEndian.PutUint64(j.hdr[structuredReplySize:], j.req.offset)
	c.send(j.hdr[:structuredReplySize+8], data, "")
}

// replyError sends an error reply; with structured replies it carries msg.
func (c *conn) replyError(j *job, errno uint32, msg string) {
	if !c.structured {
		putSimpleReply(j.hdr[:], errno, j.req.handle)
		c.send(j.hdr[:simpleReplySize], nil, "")
		return
	}
	if len(msg) > maxNameLen {
		msg = msg[:maxNameLen]
	}
	putChunkHeader(j.hdr[:], replyFlagDone, replyTypeError, j.req.handle, uint32(6+len(msg)))
	binary.BigEndian.PutUint32(j.hdr[structuredReplySize:], errno)
	binary.BigEndian.PutUint16(j.hdr[structuredReplySize+4:], uint16(len(msg)))
	c.send(j.hdr[:structuredReplySize+6], nil, msg)
}

// send writes one reply. Replies never interleave; the last replier of a
// burst flushes the buffer for all of them, which batches small replies into
// few system calls under load.
func (c *conn) send(hdr, data []byte, msg string) {
	c.waiting.Add(1)
	c.wmu.Lock()
	c.waiting.Add(-1)
	if c.werr == nil {
		c.bw.Write(hdr)
		c.bw.Write(data)
		c.bw.WriteString(msg)
		if c.waiting.Load() == 0 {
			var err error
			if c.budget.inFlight() > 1 {
				// Other requests are in the server: some may be
				// about to reply.
				err = c.flushSoon()
			} else {
				err = c.bw.Flush()
			}
			// Said once, by the replier whose write failed.
			if err != nil && c.werr == nil {
				c.werr = err
				c.log.Info("nbd reply failed, closing connection", "err", err)
				// Wake the reader so that the connection winds down.
				c.nc.SetReadDeadline(time.Now())
			}
		}
	}
	c.wmu.Unlock()
}

// flushSoon flushes the replies buffered so far, after letting the
// goroutines that are ready to run go first: under load those are workers
// about to reply, whose replies then share this one system call (on few
// CPUs repliers seldom overlap on wmu otherwise, and a loopback or LAN
// write costs several microseconds per call whatever it carries). Only for
// when other requests are in flight: yielding wakes another thread to look
// for work, which at queue depth 1 would cost more than it saves. Must hold
// wmu; releases and retakes it, and flushes whatever is buffered when it
// retakes it.
func (c *conn) flushSoon() error {
	c.wmu.Unlock()
	runtime.Gosched()
	c.wmu.Lock()
	if c.werr != nil || c.bw.Buffered() == 0 {
		return nil // a failed write was reported by its replier
	}
	return c.bw.Flush()
}

// errnoOf maps a device error to the protocol's error numbers.
func errnoOf(err error, write bool) uint32 {
	var ae *bdev.AlignmentError
	var re *bdev.RangeError
	var en syscall.Errno
	switch {
	case errors.As(err, &ae):
		return errInval
	case errors.As(err, &re):
		if write {
			return errNoSpc
		}
		return errInval
	case errors.Is(err, bdev.ErrClosed):
		return errShutdown
	case errors.As(err, &en):
		switch en {
		case syscall.EPERM, syscall.EROFS, syscall.EACCES:
			return errPerm
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return errNoSpc
		case syscall.ENOMEM:
			return errNoMem
		case syscall.EINVAL:
			return errInval
		case syscall.EOVERFLOW:
			return errOverflow
		case syscall.ENOTSUP:
			return errNotSup
		case syscall.ESHUTDOWN:
			return errShutdown
		}
		return errIO
	case errors.Is(err, os.ErrPermission):
		return errPerm
	}
	switch fault.KindOf(err) {
	case fault.ResourceExhausted:
		return errNoSpc
	case fault.PermissionDenied:
		return errPerm
	case fault.InvalidArgument:
		return errInval
	}
	return errIO
}

// cmdName names a command for logs and errors.
func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disc"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdWriteZeroes:
		return "write-zeroes"
	}
	return fmt.Sprintf("cmd(%d)", t)
}
