package target

import (
	"bufio"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/internal/iobuf"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
	"github.com/nexstor/nexstor/internal/sockread"
)

// icTimeout bounds how long a new connection may take to send its ICReq, and
// then its Connect.
const icTimeout = 10 * time.Second

// sendKind says what the writer does with a request.
type sendKind uint8

const (
	sendResp sendKind = iota // C2HData (if any) and CapsuleResp
	sendR2T                  // an R2T for the request's write data
	sendTerm                 // a C2HTermReq, then close
)

// sendItem is one unit of work for the write side. R2Ts carry their own
// fields so that the writer never reads a request the reader is still
// filling.
type sendItem struct {
	r    *request
	kind sendKind
	cid  uint16
	ttag uint16
	r2tl uint32
}

// request is one command slot of a queue. Slots are preallocated; the slot
// index is the R2T transfer tag.
type request struct {
	q      *queue
	slot   uint16
	sqe    pdu.SQE
	cqe    pdu.CQE
	status nvme.Status // set before execution fails early (e.g. data digest)
	buf    []byte      // command data (pooled), len = transfer length
	pooled *[]byte
	c2h    int // bytes of buf to send to the host
	xfer   int // H2C bytes received so far
	r2tLen int // H2C bytes expected
	inR2T  bool
	aer    bool // an AER held by the controller: not sent at once
	// turn is the claim command's place in its admin queue's order, from
	// 1 (see queue.claimOrder); 0 for every other command.
	turn    uint64
	closeIt bool         // close the connection once the response is written
	term    *pdu.TermReq // sendTerm only
}

// queue is one NVMe/TCP connection: an admin or an I/O queue.
type queue struct {
	t         *Target
	conn      net.Conn
	discovery bool // accepted on a discovery listener
	br        *bufio.Reader
	dec       *pdu.Decoder

	// The write side. Once the connection is initialized, bw and enc are
	// used only under wmu, by whoever holds it: a worker sending its own
	// command's response, or the writer goroutine draining sendq. pending
	// counts the items in (or on their way into) sendq; whoever writes
	// while holding wmu flushes only when pending is zero, because
	// otherwise someone is bound to take wmu after it, write, and look
	// again ("last writer out flushes"): a burst of completions goes out
	// in one system call and none waits for a flush that never comes.
	wmu     sync.Mutex
	pending atomic.Int32
	bw      *bufio.Writer
	enc     *pdu.Encoder

	// Set by Connect (in the reader) before any later command is read.
	ctrl     *controller
	qid      uint16
	entries  int
	sqfcOff  bool // SQ flow control disabled: C2HData may carry SUCCESS
	inlineSz int

	sqhd atomic.Uint32
	// busy counts the I/O commands read but not yet executed: waiting for
	// their R2T data or for a worker, or executing in one. The reader
	// reads it to decide whether a command can run inline, and respond to
	// decide whether to yield before it flushes (counting commands still
	// waiting for data too: a yield then costs latency, not correctness).
	busy  atomic.Int32
	slots []*request // by slot index; grown only by the reader
	free  chan uint16
	work  chan *request
	sendq chan sendItem

	// Claim commands (Set Features, nvme.FeatClaim) on an admin queue run
	// in the order the host sent them although several workers execute
	// admin commands: the reader numbers them (claimIssued, its own), and
	// each waits under claimMu until claimNext is its turn.
	claimIssued uint64
	claimMu     sync.Mutex
	claimCond   *sync.Cond
	claimNext   uint64
	claimClosed bool // the queue is torn down: no turn is waited for

	done      chan struct{}
	closeOnce sync.Once
	// goroutines counts the writer and the workers: with the reader, every
	// goroutine that may hold a request's buffer (see releaseAll).
	goroutines sync.WaitGroup
	// swept is closed once releaseAll has run (for a connection that got
	// past initialize); nswept holds how many buffers it returned (read it
	// only after the close).
	swept  chan struct{}
	nswept int
}

func newQueue(t *Target, c net.Conn, discovery bool) *queue {
	q := &queue{
		t:         t,
		conn:      c,
		discovery: discovery,
		br:        bufio.NewReaderSize(c, 64<<10),
		bw:        bufio.NewWriterSize(c, 64<<10),
		done:      make(chan struct{}),
		swept:     make(chan struct{}),
	}
	q.dec = pdu.NewDecoder(q.br, max(adminCapsuleData, InCapsuleDataSize, maxH2CData))
	if pr := sockread.New(c); pr != nil {
		// Long write data arrives with one wake-up, not one per burst.
		q.dec.ReadFull = func(p []byte) (int, error) { return pr.ReadFull(q.br, p) }
	}
	q.enc = pdu.NewEncoder(q.bw)
	q.enc.Direct = c // large reads: header, data and response in one writev
	return q
}

// close tears the connection down; safe to call many times.
func (q *queue) close() {
	q.closeOnce.Do(func() {
		close(q.done)
		q.conn.Close()
		// Claim commands waiting for their turn behind one dropped at
		// teardown (see startWorkers) give up.
		q.claimMu.Lock()
		q.claimClosed = true
		if q.claimCond != nil {
			q.claimCond.Broadcast()
		}
		q.claimMu.Unlock()
	})
}

func (q *queue) run() {
	defer q.t.dropQueue(q)
	defer q.close()
	if err := q.initialize(); err != nil {
		q.t.log.Debug("nvmf: connection initialization failed", "remote", q.conn.RemoteAddr(), "err", err)
		return
	}
	q.setupSlots()
	// Every buffer still held once the queue is gone goes back to iobuf
	// (see releaseAll), once the writer and the workers, which return only
	// after close, have returned.
	defer func() {
		go func() {
			q.goroutines.Wait()
			q.nswept = q.releaseAll()
			if q.nswept > 0 {
				q.t.log.Debug("nvmf: returned the buffers of requests cut off by the connection's end", "remote", q.conn.RemoteAddr(), "qid", q.qid, "buffers", q.nswept)
			}
			close(q.swept)
		}()
	}()
	q.goroutines.Add(1)
	go q.writer()
	err := q.reader()
	q.t.log.Debug("nvmf: connection closed", "remote", q.conn.RemoteAddr(), "qid", q.qid, "err", err)
	var pe *pdu.Error
	if errors.As(err, &pe) {
		// The writer sends the queued C2HTermReq, then closes.
		select {
		case <-q.done:
		case <-time.After(2 * time.Second):
		}
	}
	q.close()
	if c := q.ctrl; c != nil {
		c.queueGone(q)
	}
}

// initialize performs the ICReq/ICResp exchange.
func (q *queue) initialize() error {
	q.conn.SetReadDeadline(time.Now().Add(icTimeout))
	h, err := q.dec.Next()
	if err != nil {
		var pe *pdu.Error
		if errors.As(err, &pe) {
			q.termNow(pe.FES, pe.FEI, q.dec.RawHeader())
		}
		return err
	}
	if h.Type != pdu.TypeICReq {
		q.termNow(pdu.FESSequenceError, 0, q.dec.RawHeader())
		return errors.New("first PDU is not an ICReq")
	}
	ic := q.dec.ICReq()
	if ic.PFV != pdu.PFV0 {
		q.termNow(pdu.FESUnsupportedParameter, 8, q.dec.RawHeader())
		return errors.New("unsupported PDU format version")
	}
	if ic.HPDA > 31 {
		q.termNow(pdu.FESUnsupportedParameter, 10, q.dec.RawHeader())
		return errors.New("HPDA out of range")
	}
	// The deadline stays until Connect succeeds: a connection that never
	// connects a queue does not hold resources forever.
	q.conn.SetReadDeadline(time.Now().Add(icTimeout))
	resp := pdu.ICResp{PFV: pdu.PFV0, CPDA: 0, HeaderDigest: ic.HeaderDigest, DataDigest: ic.DataDigest, MaxH2CData: maxH2CData}
	if err := q.enc.WriteICResp(resp); err != nil {
		return err
	}
	if err := q.bw.Flush(); err != nil {
		return err
	}
	q.dec.HeaderDigest, q.dec.DataDigest = ic.HeaderDigest, ic.DataDigest
	q.enc.HeaderDigest, q.enc.DataDigest = ic.HeaderDigest, ic.DataDigest
	q.enc.DataAlign = ic.HPDA
	return nil
}

// termNow writes a C2HTermReq directly (before the writer runs).
func (q *queue) termNow(fes uint16, fei uint32, hdr []byte) {
	q.conn.SetWriteDeadline(time.Now().Add(time.Second))
	q.enc.WriteTermReq(pdu.TypeC2HTermReq, pdu.TermReq{FES: fes, FEI: fei, Data: hdr})
	q.bw.Flush()
}

// The slot table is sized for the largest queue up front (pointers only);
// request structs are allocated when Connect fixes the queue size. Twice the
// queue size in slots covers commands whose responses are written but whose
// slots the writer has not yet freed when the host, having seen the
// completion, submits more.
const maxSlots = 2 * MaxQueueEntries

func (q *queue) setupSlots() {
	q.slots = make([]*request, maxSlots)
	q.free = make(chan uint16, maxSlots)
	q.work = make(chan *request, maxSlots)
	q.sendq = make(chan sendItem, maxSlots+2)
	q.inlineSz = adminCapsuleData
	q.grow(1)
}

// grow makes 2*n slots available. Only the reader calls it.
func (q *queue) grow(n int) {
	for i := 0; i < 2*n && i < maxSlots; i++ {
		if q.slots[i] == nil {
			q.slots[i] = &request{q: q, slot: uint16(i)}
			q.free <- uint16(i)
		}
	}
}

// term queues a C2HTermReq; the writer sends it and closes.
func (q *queue) term(fes uint16, fei uint32, hdr []byte) error {
	r := &request{q: q}
	r.term = &pdu.TermReq{FES: fes, FEI: fei, Data: append([]byte(nil), hdr...)}
	q.pending.Add(1)
	select {
	case q.sendq <- sendItem{r: r, kind: sendTerm}:
	default:
		q.close()
	}
	return &pdu.Error{FES: fes, FEI: fei, Msg: "terminated"}
}

// enqueue hands it to the writer goroutine. It does not block once the
// connection is closing (the writer may be gone).
func (q *queue) enqueue(it sendItem) {
	q.pending.Add(1)
	select {
	case q.sendq <- it:
	case <-q.done:
	}
}

// startWorkers runs n command workers. Only the reader calls it.
func (q *queue) startWorkers(n int) {
	q.goroutines.Add(n)
	for range n {
		go func() {
			defer q.goroutines.Done()
			for {
				select {
				case r := <-q.work:
					// select picks at random when the queue is also
					// torn down: a command not yet started then never
					// reaches the device. Its host has lost the
					// connection and may already have moved on (a
					// mirror retiring this child, a rebuild copying over
					// the range); a write executed now would land late.
					select {
					case <-q.done:
						r.release()
					default:
						q.execute(r)
					}
					if q.qid != 0 {
						q.busy.Add(-1)
					}
				case <-q.done:
					return
				}
			}
		}()
	}
}

// reader decodes PDUs until the connection fails or is terminated.
func (q *queue) reader() error {
	q.startWorkers(1)
	for {
		h, err := q.dec.Next()
		if err != nil {
			var pe *pdu.Error
			if errors.As(err, &pe) {
				return q.term(pe.FES, pe.FEI, q.dec.RawHeader())
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch h.Type {
		case pdu.TypeCapsuleCmd:
			err = q.capsule()
		case pdu.TypeH2CData:
			err = q.h2cData()
		case pdu.TypeH2CTermReq:
			tr := q.dec.TermReq()
			q.t.log.Info("nvmf: host terminated the connection", "remote", q.conn.RemoteAddr(), "fes", tr.FES, "fei", tr.FEI)
			return nil
		case pdu.TypeICReq:
			return q.term(pdu.FESSequenceError, 0, q.dec.RawHeader())
		default:
			// A controller-to-host PDU sent to the controller.
			return q.term(pdu.FESInvalidHeaderField, 0, q.dec.RawHeader())
		}
		if err != nil {
			return err
		}
	}
}

// dataDirection: 1 host-to-controller, 2 controller-to-host, 0 none.
func dataDirection(s *pdu.SQE) uint8 {
	if s.Opcode() == nvme.Fabrics {
		return s.FCType() & 3
	}
	return s.Opcode() & 3
}

func (q *queue) capsule() error {
	var slot uint16
	select {
	case slot = <-q.free:
	default:
		return q.term(pdu.FESSequenceError, 0, q.dec.RawHeader())
	}
	r := q.slots[slot]
	r.status, r.c2h, r.xfer, r.r2tLen, r.inR2T, r.aer, r.closeIt, r.turn = nvme.StatusSuccess, 0, 0, 0, false, false, false, 0
	r.buf, r.pooled = nil, nil
	q.dec.SQE(&r.sqe)
	r.cqe = pdu.CQE{CID: r.sqe.CID(), SQID: q.qid}
	if !q.sqfcOff && q.entries > 0 {
		for {
			old := q.sqhd.Load()
			if q.sqhd.CompareAndSwap(old, (old+1)%uint32(q.entries)) {
				break
			}
		}
	}
	isConnect := r.sqe.Opcode() == nvme.Fabrics && r.sqe.FCType() == nvme.FctConnect
	if q.ctrl == nil && !isConnect {
		q.free <- slot
		return q.term(pdu.FESSequenceError, 0, q.dec.RawHeader())
	}
	sgl := r.sqe.SGL()
	dir := dataDirection(&r.sqe)
	inCapsule := q.dec.DataLen()
	if inCapsule > 0 {
		limit := q.inlineSz
		if q.qid == 0 {
			limit = adminCapsuleData
		}
		if inCapsule > limit {
			q.free <- slot
			return q.term(pdu.FESDataLimitExceeded, 0, q.dec.RawHeader())
		}
		r.getBuf(inCapsule)
		err := q.dec.ReadData(r.buf)
		switch {
		case err != nil:
			if !isDigestErr(err) {
				return err
			}
			r.status = nvme.StatusTransientTransport
		case sgl.Type != pdu.SGLDataBlockOffset || dir != 1:
			r.status = nvme.StatusSGLInvalidType
		case sgl.Address != 0:
			r.status = nvme.StatusSGLInvalidOffset
		case int(sgl.Length) != inCapsule:
			r.status = nvme.StatusSGLInvalidDataLength
		}
		q.dispatch(r)
		return nil
	}
	if sgl.Length > 0 && sgl.Type == pdu.SGLTransportDataBlock && dir == 1 {
		if sgl.Length > MaxTransfer {
			r.status = nvme.StatusSGLInvalidDataLength
			q.dispatch(r)
			return nil
		}
		r.getBuf(int(sgl.Length))
		r.r2tLen = int(sgl.Length)
		r.inR2T = true
		q.busy.Add(1)
		// Through the writer goroutine, so that the reader goes straight
		// back to reading: the host may be sending more meanwhile.
		q.enqueue(sendItem{kind: sendR2T, cid: r.sqe.CID(), ttag: r.slot, r2tl: uint32(r.r2tLen)})
		return nil
	}
	if sgl.Length > 0 && sgl.Type != pdu.SGLTransportDataBlock {
		r.status = nvme.StatusSGLInvalidType
	}
	q.dispatch(r)
	return nil
}

func (q *queue) h2cData() error {
	dh := q.dec.DataHeader()
	if int(dh.TTag) >= len(q.slots) || q.slots[dh.TTag] == nil {
		return q.term(pdu.FESInvalidHeaderField, 10, q.dec.RawHeader())
	}
	r := q.slots[dh.TTag]
	if !r.inR2T {
		return q.term(pdu.FESInvalidHeaderField, 10, q.dec.RawHeader())
	}
	if r.sqe.CID() != dh.CCCID {
		return q.term(pdu.FESInvalidHeaderField, 8, q.dec.RawHeader())
	}
	if int(dh.DataO) != r.xfer {
		return q.term(pdu.FESDataOutOfRange, 12, q.dec.RawHeader())
	}
	if uint64(dh.DataO)+uint64(dh.DataL) > uint64(r.r2tLen) {
		return q.term(pdu.FESDataOutOfRange, 16, q.dec.RawHeader())
	}
	if dh.DataL > maxH2CData {
		return q.term(pdu.FESDataLimitExceeded, 16, q.dec.RawHeader())
	}
	if err := q.dec.ReadData(r.buf[dh.DataO : dh.DataO+dh.DataL]); err != nil {
		if !isDigestErr(err) {
			return err
		}
		r.status = nvme.StatusTransientTransport
	}
	r.xfer += int(dh.DataL)
	if r.xfer == r.r2tLen {
		r.inR2T = false
		q.busy.Add(-1)
		q.dispatch(r)
	}
	return nil
}

// isDigestErr reports a data digest mismatch: the PDU was consumed whole and
// only its command fails (Transient Transport Error), per NVMe/TCP.
func isDigestErr(err error) bool {
	var dde *pdu.DataDigestError
	return errors.As(err, &dde)
}

// inlineExecMax is the largest transfer, in bytes, that the reader executes
// itself on an idle queue (see dispatch). Above it the hand-off to a worker
// is small next to the transfer, and the reader would block longer.
const inlineExecMax = 16 << 10

// dispatch runs fabrics commands inline (they must take effect before the
// next capsule is decoded) and queues the rest for the workers, except on
// an idle I/O queue: when no other command is in the target and no more
// bytes from the host are buffered, the reader executes a small command
// and sends its response itself. Nothing else could run meanwhile, and
// handing it to a worker would only add a goroutine wake-up (often of
// another thread) to its latency: this is what makes queue depth 1 fast.
// A command that arrives while the reader is busy waits for it, at most one
// small device call; by then commands are in flight and the workers take
// over.
func (q *queue) dispatch(r *request) {
	if r.sqe.Opcode() == nvme.Fabrics && r.status.Success() {
		q.fabrics(r)
		return
	}
	if q.qid == 0 {
		if r.status.Success() && r.sqe.Opcode() == nvme.AdminSetFeatures && uint8(r.sqe.CDW(10)) == nvme.FeatClaim {
			q.claimIssued++
			r.turn = q.claimIssued
		}
		q.work <- r // admin commands are rare: not worth blocking the reader
		return
	}
	if q.busy.Load() == 0 && q.br.Buffered() == 0 && r.sqe.SGL().Length <= inlineExecMax {
		q.execute(r)
		return
	}
	q.busy.Add(1)
	q.work <- r
}

// execute runs one command in a worker (or in the reader, see dispatch) and
// sends its response.
func (q *queue) execute(r *request) {
	if r.status.Success() {
		c := q.ctrl
		if q.qid == 0 {
			if r.turn != 0 && !q.claimOrder(r.turn) {
				// Torn down meanwhile: dropped, as in startWorkers.
				r.release()
				return
			}
			c.admin(r)
			if r.turn != 0 {
				q.claimDone()
			}
		} else {
			c.io(r)
		}
		if r.aer {
			return // held by the controller until an event
		}
	}
	q.respond(r)
}

// claimOrder waits until claim command number turn (from 1) is the next to
// run on this admin queue, and reports true; or false once the queue is
// torn down, when a command before it may have been dropped. Every numbered
// command that is not dropped reaches execute (a failing one too: admin
// sets its status), so the order stalls only on a dropped one.
func (q *queue) claimOrder(turn uint64) bool {
	q.claimMu.Lock()
	defer q.claimMu.Unlock()
	if q.claimCond == nil {
		q.claimCond = sync.NewCond(&q.claimMu)
	}
	for q.claimNext+1 != turn && !q.claimClosed {
		q.claimCond.Wait()
	}
	return !q.claimClosed
}

// claimDone passes the turn to the next claim command.
func (q *queue) claimDone() {
	q.claimMu.Lock()
	q.claimNext++
	if q.claimCond != nil {
		q.claimCond.Broadcast()
	}
	q.claimMu.Unlock()
}

// respond sends a finished request's data and response from the goroutine
// that executed it, when the write side is free: after a device call that
// blocked its thread, handing the response to a parked writer goroutine
// would cost a wake-up on another thread (a futex and a context switch)
// before anything is sent. When the write side is busy, whoever holds it
// is already sending, so the response joins the writer goroutine's queue
// and goes out in the same batch instead of waiting on the lock.
func (q *queue) respond(r *request) {
	r.cqe.Status = uint16(r.status)
	it := sendItem{r: r, kind: sendResp}
	if !q.wmu.TryLock() {
		q.enqueue(it)
		return
	}
	err := q.write(it)
	if err == nil && q.pending.Load() == 0 {
		if q.busy.Load() > 1 {
			// Other commands are in the target: some may be about to
			// respond.
			err = q.flushSoon()
		} else {
			err = q.bw.Flush()
		}
	}
	q.wmu.Unlock()
	if err != nil {
		q.close()
	}
}

// flushSoon flushes the responses buffered so far, after letting the
// goroutines that are ready to run go first: under load those are workers
// about to respond, whose responses then share this one system call (on few
// CPUs workers seldom overlap on wmu otherwise, and a loopback or LAN write
// costs several microseconds per call whatever it carries). Only for when
// other commands are in flight: yielding wakes another thread to look for
// work, which at queue depth 1 would cost more than it saves. Must hold
// wmu; releases and retakes it, and flushes whatever is buffered when it
// retakes it.
func (q *queue) flushSoon() error {
	q.wmu.Unlock()
	runtime.Gosched()
	q.wmu.Lock()
	if q.bw.Buffered() == 0 {
		return nil
	}
	return q.bw.Flush()
}

// complete hands a finished request to the writer goroutine. It is for
// goroutines that must not block on the connection: the reader (Fabrics
// commands) and event sources completing a held AER.
func (q *queue) complete(r *request) {
	r.cqe.Status = uint16(r.status)
	q.enqueue(sendItem{r: r, kind: sendResp})
}

// getBuf gives the request a data buffer of n bytes from package iobuf:
// power-of-two classes that a steady I/O mix reuses, and from 128 KiB on
// huge-page regions, which the direct I/O of large transfers needs (see
// iobuf's package doc). Region memory is outside the Go heap and not
// reclaimed by the garbage collector, so every buffer taken goes back to
// iobuf exactly once: with the request's response (write), from the worker
// that drops the request at teardown, or from releaseAll once nothing that
// could touch a request is left.
func (r *request) getBuf(n int) {
	r.pooled = iobuf.Get(n)
	r.buf = (*r.pooled)[:n]
}

// releaseAll returns the buffers that the requests of a torn-down queue
// still hold: those of commands whose data never arrived whole (the
// connection failed during an in-capsule or H2C transfer), of commands left
// in the workers' channel, and of responses left in the writer's. It runs
// once the reader, the writer and every worker have returned, so nothing
// else touches a request's buffer: a worker whose device call never returns
// keeps its buffer, which that call may still be using. Requests the
// controller holds (AERs) carry no buffer. It returns how many buffers it
// returned.
func (q *queue) releaseAll() int {
	n := 0
	for _, r := range q.slots {
		if r != nil && r.pooled != nil {
			r.release()
			n++
		}
	}
	return n
}

// release returns the request's data buffer, if it has one.
func (r *request) release() {
	if r.pooled != nil {
		iobuf.Put(r.pooled)
		r.pooled, r.buf = nil, nil
	}
}

// writer sends what was queued for it (R2Ts, responses the workers could
// not send themselves, C2HTermReqs), draining the queue under one hold of
// the write side and flushing when nothing more is pending.
func (q *queue) writer() {
	defer q.goroutines.Done()
	for {
		var it sendItem
		select {
		case it = <-q.sendq:
		case <-q.done:
			return
		}
		q.wmu.Lock()
		err := q.write(it)
		q.pending.Add(-1)
	drain:
		for err == nil {
			select {
			case it = <-q.sendq:
				err = q.write(it)
				q.pending.Add(-1)
			default:
				break drain
			}
		}
		if err == nil && q.pending.Load() == 0 {
			err = q.bw.Flush()
		}
		q.wmu.Unlock()
		if err != nil {
			q.close()
			return
		}
	}
}

// write encodes one item into bw; q.wmu is held. It frees the request's
// slot once the response is encoded: the host may see the completion (a
// large C2HData bypasses bw's buffer) and reuse the command ID at once.
func (q *queue) write(it sendItem) error {
	r := it.r
	switch it.kind {
	case sendTerm:
		q.conn.SetWriteDeadline(time.Now().Add(time.Second))
		q.enc.WriteTermReq(pdu.TypeC2HTermReq, *r.term)
		q.bw.Flush()
		q.close()
		return errors.New("terminated")
	case sendR2T:
		return q.enc.WriteR2T(pdu.R2T{CCCID: it.cid, TTag: it.ttag, R2TO: 0, R2TL: it.r2tl})
	}
	if q.sqfcOff {
		r.cqe.SQHD = 0xFFFF
	} else {
		r.cqe.SQHD = uint16(q.sqhd.Load())
	}
	closeIt := r.closeIt
	var err error
	if r.c2h > 0 && nvme.Status(r.cqe.Status).Success() {
		success := q.sqfcOff && r.cqe.Result == 0
		err = q.enc.WriteC2HDataResp(pdu.DataHeader{CCCID: r.sqe.CID(), DataO: 0}, success, r.buf[:r.c2h], &r.cqe)
	} else {
		err = q.enc.WriteCapsuleResp(&r.cqe)
	}
	r.release()
	q.free <- r.slot
	if closeIt {
		q.bw.Flush()
		q.close()
		return errors.New("disconnect")
	}
	return err
}
