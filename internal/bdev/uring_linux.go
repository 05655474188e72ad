package bdev

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/fault"
)

// The io_uring ABI (include/uapi/linux/io_uring.h), the parts used here.
const (
	ioringOpNop   = 0
	ioringOpFsync = 3
	ioringOpRead  = 22 // Linux 5.6
	ioringOpWrite = 23 // Linux 5.6

	ioringFsyncDatasync = 1 << 0

	ioringEnterGetevents = 1 << 0

	ioringFeatSingleMmap = 1 << 0
	// ioringFeatRWCurPos arrived in Linux 5.6 together with IORING_OP_READ
	// and IORING_OP_WRITE: its absence means the kernel lacks them.
	ioringFeatRWCurPos = 1 << 3

	ioringOffSQRing = 0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000

	// uringEntries is the submission ring size, and so the bound on
	// in-flight requests per File: well above the queue depths the
	// frontends drive (32 per NBD connection), small enough that the rings
	// take a few tens of KiB.
	uringEntries = 256
	// uringMaxIO bounds one request's length (the kernel caps a single read
	// or write near 2 GiB anyway); longer ones continue as short ones do.
	uringMaxIO = 1 << 30
	// closeTag is the user_data of the NOP that Close submits to wake the
	// completion goroutine for the last time.
	closeTag = ^uint64(0)
)

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

// uringSQE is the 64-byte submission queue entry.
type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32 // rw_flags, fsync_flags...
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	pad2        uint64
}

// uringCQE is the 16-byte completion queue entry.
type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// Compile-time checks of the ABI sizes.
var (
	_ [64 - unsafe.Sizeof(uringSQE{})]struct{}
	_ [unsafe.Sizeof(uringSQE{}) - 64]struct{}
	_ [16 - unsafe.Sizeof(uringCQE{})]struct{}
	_ [120 - unsafe.Sizeof(uringParams{})]struct{}
	_ [unsafe.Sizeof(uringParams{}) - 120]struct{}
)

// uring is one io_uring instance that serves a File's reads, writes and
// fdatasyncs (without O_DIRECT: the reads the page cache cannot serve, and
// fdatasyncs; see FileOptions.URing). Any number of goroutines submit.
//
// Submission: a request takes a free slot (which bounds in-flight requests
// by the ring size, so neither ring can overflow), fills the next SQE under
// mu and publishes the tail. The goroutine that leaves mu with nobody else
// queued for it calls io_uring_enter for every SQE written so far: a burst
// of requests costs one system call, not one each.
//
// Completion: each CQE's user_data is the slot index, and the slot's
// buffered channel wakes its waiter. One goroutine at a time reaps the CQ,
// and which one depends on the load:
//
//   - A request submitted while nothing else is in flight (queue depth 1)
//     reaps for itself: its goroutine submits and waits in one
//     io_uring_enter(to_submit, min_complete=1, GETEVENTS) and takes its
//     own CQE (the owner). No other goroutine or thread is woken, and the
//     kernel runs the completion's task work in the thread that waits.
//   - Requests that arrive while an owner waits are reaped by the owner
//     until its own completes; if any are left then, it hands them to the
//     reaper goroutine, which sits in io_uring_enter(GETEVENTS,
//     min_complete=1) while requests are in flight and parks on a channel
//     once none is.
//
// Nothing polls, and nothing is allocated per request.
type uring struct {
	fd     int
	sqRing []byte // mmapped SQ ring; with IORING_FEAT_SINGLE_MMAP the CQ ring too
	cqRing []byte // mmapped CQ ring; aliases sqRing with IORING_FEAT_SINGLE_MMAP
	sqeMem []byte // mmapped SQE array

	sqHead *uint32 // written by the kernel
	sqTail *uint32 // written by us, store-release
	sqMask uint32
	sqes   []uringSQE
	cqHead *uint32 // written by us, store-release
	cqTail *uint32 // written by the kernel, load-acquire
	cqMask uint32
	cqes   []uringCQE

	pending atomic.Int32 // submitters that have announced themselves but not yet left mu

	mu          sync.Mutex // guards the fields below and the SQEs between the kernel's head and tail
	tail        uint32     // our copy of the SQ tail
	unsubmitted uint32     // SQEs published but not yet passed to io_uring_enter
	inflight    int        // requests published and not yet reaped (or withdrawn)
	owner       bool       // a submitter reaps the CQ (see uring)
	parked      bool       // the reaper goroutine waits on wake, not in the kernel
	entering    bool       // the owner is in io_uring_enter with SQEs it took from unsubmitted
	enterDone   sync.Cond  // signalled (on mu) when entering becomes false
	wake        chan struct{}

	cqmu sync.Mutex // one CQ consumer at a time

	slots []uringSlot
	free  chan uint32 // indexes of idle slots

	reaperDone chan struct{}
}

// uringSlot is one in-flight request.
type uringSlot struct {
	done chan struct{} // buffered (1): the reaper never blocks on a slow waiter
	res  int32         // the CQE's res, written before done is signalled
	// buf references the caller's buffer until the kernel is done with it:
	// the garbage collector must not free it, and storing it here also
	// keeps it off goroutine stacks, which move while their owner waits.
	buf []byte
	// busy is set before the SQE is published and read by the reaper
	// before it writes res: the kernel carries the request from one to the
	// other, and this gives the Go memory model (and the race detector) the
	// edge that the kernel's ordering provides.
	busy atomic.Bool
}

// newURing sets up a ring of at least entries submission entries and starts
// its completion goroutine. Errors name the failing step; the caller turns
// them into a fault.
func newURing(entries uint32) (*uring, error) {
	var p uringParams
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("io_uring_setup(%d entries): %w", entries, e)
	}
	r := &uring{fd: int(fd)}
	if err := r.mmap(&p); err != nil {
		r.unmap()
		unix.Close(r.fd)
		return nil, err
	}
	r.slots = make([]uringSlot, p.sqEntries)
	r.free = make(chan uint32, p.sqEntries)
	for i := range r.slots {
		r.slots[i].done = make(chan struct{}, 1)
		r.free <- uint32(i)
	}
	r.enterDone.L = &r.mu
	r.wake = make(chan struct{}, 1)
	r.reaperDone = make(chan struct{})
	go r.reap()
	return r, nil
}

func (r *uring) mmap(p *uringParams) error {
	if p.features&ioringFeatRWCurPos == 0 {
		return errors.New("io_uring without IORING_OP_READ/IORING_OP_WRITE (Linux older than 5.6)")
	}
	prot, flags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(uringCQE{}))
	single := p.features&ioringFeatSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	if r.sqRing, err = unix.Mmap(r.fd, ioringOffSQRing, sqSize, prot, flags); err != nil {
		return fmt.Errorf("io_uring: mmap SQ ring (%d bytes): %w", sqSize, err)
	}
	r.cqRing = r.sqRing
	if !single {
		if r.cqRing, err = unix.Mmap(r.fd, ioringOffCQRing, cqSize, prot, flags); err != nil {
			r.cqRing = nil
			return fmt.Errorf("io_uring: mmap CQ ring (%d bytes): %w", cqSize, err)
		}
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(uringSQE{}))
	if r.sqeMem, err = unix.Mmap(r.fd, ioringOffSQEs, sqeSize, prot, flags); err != nil {
		return fmt.Errorf("io_uring: mmap SQEs (%d bytes): %w", sqeSize, err)
	}

	word := func(ring []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&ring[off])) }
	r.sqHead = word(r.sqRing, p.sqOff.head)
	r.sqTail = word(r.sqRing, p.sqOff.tail)
	r.sqMask = *word(r.sqRing, p.sqOff.ringMask)
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqHead = word(r.cqRing, p.cqOff.head)
	r.cqTail = word(r.cqRing, p.cqOff.tail)
	r.cqMask = *word(r.cqRing, p.cqOff.ringMask)
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Pointer(&r.cqRing[p.cqOff.cqes])), p.cqEntries)
	// The SQ array maps ring positions to SQE indexes. With at most
	// sqEntries requests in flight, position i can always use SQE i&mask:
	// the kernel has copied that SQE before its position comes round again.
	array := unsafe.Slice((*uint32)(unsafe.Pointer(&r.sqRing[p.sqOff.array])), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.tail = atomic.LoadUint32(r.sqTail)
	return nil
}

func (r *uring) unmap() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.cqRing != nil && &r.cqRing[0] != &r.sqRing[0] {
		unix.Munmap(r.cqRing)
	}
	if r.sqRing != nil {
		unix.Munmap(r.sqRing)
	}
	r.sqeMem, r.cqRing, r.sqRing = nil, nil, nil
}

func uringEnter(fd int, toSubmit, minComplete, flags uint32) (int, unix.Errno) {
	n, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(fd), uintptr(toSubmit), uintptr(minComplete), uintptr(flags), 0, 0)
	return int(n), e
}

// transient reports whether io_uring_enter, or a request, failed only for
// now and is worth trying again.
func transient(e unix.Errno) bool {
	return e == unix.EINTR || e == unix.EAGAIN || e == unix.EBUSY
}

// do runs one request and returns its CQE's res: bytes transferred, or a
// negated errno. p may be nil (fsync); the kernel reads or writes it until
// do returns.
func (r *uring) do(op uint8, fd int, p []byte, off int64, opFlags uint32) int32 {
	slot := <-r.free
	s := &r.slots[slot]
	s.buf = p
	s.busy.Store(true)
	var addr uintptr
	if len(p) > 0 {
		addr = uintptr(unsafe.Pointer(&p[0]))
	}
	if claimed, own := r.submit(uringSQE{opcode: op, fd: int32(fd), off: uint64(off), addr: uint64(addr), len: uint32(len(p)), opFlags: opFlags, userData: uint64(slot)}, true); own {
		r.own(s, claimed)
	} else {
		<-s.done
	}
	res := s.res
	s.buf = nil
	s.busy.Store(false)
	runtime.KeepAlive(p)
	r.free <- slot
	return res
}

// submit publishes one SQE and makes sure that io_uring_enter passes it to
// the kernel: this goroutine calls it unless another submitter is queued
// behind it, which then does so for both.
//
// With mayOwn, when no goroutine reaps the CQ, the caller becomes the owner
// (own reports so) and must call r.own, which passes the claimed SQEs
// (those published and not yet submitted, its own among them, or none when
// a submitter queued behind it does so) to the kernel.
func (r *uring) submit(e uringSQE, mayOwn bool) (claimed uint32, own bool) {
	r.pending.Add(1)
	r.mu.Lock()
	r.sqes[r.tail&r.sqMask] = e
	r.tail++
	// Store-release of the tail after the SQE is written (Go's atomics are
	// sequentially consistent), so the kernel never sees a half-written SQE.
	atomic.StoreUint32(r.sqTail, r.tail)
	r.unsubmitted++
	r.inflight++
	last := r.pending.Add(-1) == 0
	if r.parked && !r.owner {
		if mayOwn {
			r.owner, own = true, true
			if last {
				claimed, r.unsubmitted = r.unsubmitted, 0
				r.entering = claimed > 0
			}
			r.mu.Unlock()
			return claimed, true
		}
		r.unparkLocked()
	}
	if last {
		r.enterLocked()
	}
	r.mu.Unlock()
	return 0, false
}

// unparkLocked sets the reaper goroutine reaping. Must hold mu.
func (r *uring) unparkLocked() {
	if r.parked {
		r.parked = false
		r.wake <- struct{}{}
	}
}

// own waits for the owner's request s, reaping the CQ meanwhile; the first
// io_uring_enter also submits the claimed SQEs. Once s has completed, the
// requests still in flight, if any, go to the reaper goroutine.
func (r *uring) own(s *uringSlot, claimed uint32) {
	for {
		select {
		case <-s.done:
			r.mu.Lock()
			r.owner = false
			if r.inflight > 0 {
				r.unparkLocked()
			}
			r.mu.Unlock()
			return
		default:
		}
		n, e := uringEnter(r.fd, claimed, 1, ioringEnterGetevents)
		if claimed > 0 {
			// The kernel waits only once it has taken every SQE asked of
			// it; what it did not take goes back, and enterLocked deals
			// with the failure.
			if e != 0 {
				n = 0
			}
			r.mu.Lock()
			r.entering = false
			r.unsubmitted += claimed - uint32(n)
			if r.unsubmitted > 0 && r.pending.Load() == 0 {
				r.enterLocked()
			}
			r.enterDone.Broadcast()
			r.mu.Unlock()
			claimed = 0
		} else if e != 0 && !transient(e) {
			// Not expected on a live ring; do not spin.
			slog.Error("io_uring: waiting for completions failed", "err", e)
			time.Sleep(10 * time.Millisecond)
		}
		r.reapCQ()
	}
}

// enterLocked hands every unsubmitted SQE to the kernel. On an error other
// than a transient one the SQEs the kernel did not take are withdrawn and
// their waiters get the error as their result.
func (r *uring) enterLocked() {
	for r.unsubmitted > 0 {
		n, e := uringEnter(r.fd, r.unsubmitted, 0, 0)
		switch {
		case e == 0:
			r.unsubmitted -= uint32(n)
		case transient(e):
			runtime.Gosched()
		default:
			// The kernel only consumes SQEs inside io_uring_enter with
			// to_submit > 0, which happens only under mu or while the
			// owner is entering: once that is over, its head is stable
			// and everything from it to our tail is ours to undo.
			for r.entering {
				r.enterDone.Wait()
			}
			head := atomic.LoadUint32(r.sqHead)
			for i := head; i != r.tail; i++ {
				r.inflight--
				ud := r.sqes[i&r.sqMask].userData
				if ud == closeTag {
					continue
				}
				s := &r.slots[ud]
				s.res = -int32(e)
				s.done <- struct{}{}
			}
			r.tail = head
			atomic.StoreUint32(r.sqTail, r.tail)
			r.unsubmitted = 0
			slog.Error("io_uring: submission failed; requests fail with the error", "err", e)
		}
	}
}

// reapCQ hands the completions in the CQ to their waiters. It reports
// whether it reaped the close NOP.
func (r *uring) reapCQ() (stop bool) {
	r.cqmu.Lock()
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail) // load-acquire: the CQEs up to tail are written
	n := int(tail - head)
	for ; head != tail; head++ {
		c := &r.cqes[head&r.cqMask]
		if c.userData == closeTag {
			stop = true
			continue
		}
		s := &r.slots[c.userData]
		if !s.busy.Load() {
			slog.Error("io_uring: completion for an idle slot", "slot", c.userData)
			continue
		}
		s.res = c.res
		s.done <- struct{}{}
	}
	// Store-release of the head after the CQEs are read: the kernel may
	// reuse their space from now on.
	atomic.StoreUint32(r.cqHead, head)
	r.cqmu.Unlock()
	if n > 0 {
		r.mu.Lock()
		r.inflight -= n
		r.mu.Unlock()
	}
	return stop
}

// reap is the reaper goroutine: it reaps while requests are in flight that
// no owner reaps, parks while there are none, and returns once it reaps the
// close NOP.
func (r *uring) reap() {
	defer close(r.reaperDone)
	for {
		r.mu.Lock()
		if r.inflight == 0 || r.owner {
			r.parked = true
			r.mu.Unlock()
			<-r.wake
			continue
		}
		r.mu.Unlock()
		if atomic.LoadUint32(r.cqHead) == atomic.LoadUint32(r.cqTail) {
			if _, e := uringEnter(r.fd, 0, 1, ioringEnterGetevents); e != 0 && !transient(e) {
				// Not expected on a live ring; do not spin.
				slog.Error("io_uring: waiting for completions failed", "err", e)
				time.Sleep(10 * time.Millisecond)
			}
		}
		if r.reapCQ() {
			return
		}
	}
}

// close stops the reaper and releases the ring. The caller guarantees that
// no request is in flight and none will be submitted.
func (r *uring) close() error {
	r.mu.Lock()
	before := r.tail
	r.mu.Unlock()
	r.submit(uringSQE{opcode: ioringOpNop, fd: -1, userData: closeTag}, false)
	r.mu.Lock()
	withdrawn := r.tail == before
	r.mu.Unlock()
	if withdrawn {
		// The NOP could not be submitted, so the reaper may still be in the
		// kernel: leak the ring rather than unmap memory it reads.
		return errors.New("io_uring: cannot submit the closing NOP; the ring is left mapped")
	}
	<-r.reaperDone
	r.unmap()
	if err := unix.Close(r.fd); err != nil {
		return fmt.Errorf("io_uring: close: %w", err)
	}
	return nil
}

// ringRW runs a read or write of p at off through the ring, continuing short
// transfers and retrying transient failures.
func (f *File) ringRW(op uint8, name string, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, uringMaxIO)
		res := f.ring.do(op, f.fd, p[done:done+n], off+int64(done), 0)
		switch e := unix.Errno(-res); {
		case res > 0:
			done += int(res)
		case res == 0 && op == ioringOpRead:
			// The file shrank under us (truncated by someone else).
			return done, &fs.PathError{Op: name, Path: f.path, Err: io.ErrUnexpectedEOF}
		case res == 0:
			return done, &fs.PathError{Op: name, Path: f.path, Err: io.ErrShortWrite}
		case transient(e) || e == unix.ECANCELED:
			// ECANCELED: the kernel cancels the requests of a thread that
			// exits; the request itself is sound.
			continue
		default:
			return done, &fs.PathError{Op: name, Path: f.path, Err: e}
		}
	}
	return done, nil
}

// readCached copies into p what the page cache holds of the file from off
// on, up to the first byte it lacks, with non-blocking preadv2 calls
// (RWF_NOWAIT), and returns how many bytes it copied. It never waits for
// the disk and reports no error: the caller reads whatever it did not, and
// that read reports the failure if there is one. refused reports that the
// file does not take RWF_NOWAIT reads at all (tmpfs, some filesystems, a
// seccomp filter without preadv2); readCached then stops asking. Only for
// a File opened without O_DIRECT.
func (f *File) readCached(p []byte, off int64) (done int, refused bool) {
	if f.noNowait.Load() {
		return 0, true
	}
	for done < len(p) {
		n, e := preadv2NoWait(f.fd, p[done:], off+int64(done))
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EOPNOTSUPP || e == unix.EINVAL || e == unix.ENOSYS || e == unix.EPERM:
			f.noNowait.Store(true)
			return done, true
		case e != 0 || n <= 0:
			return done, false // EAGAIN: not cached; 0: end of file
		}
		done += n
	}
	return done, false
}

// preadv2NoWait is preadv2(fd, {p}, off, RWF_NOWAIT). len(p) > 0. The
// iovec lives on the stack, so the call does not allocate (x/sys's Preadv2
// takes a slice of buffers and builds its iovecs on the heap).
func preadv2NoWait(fd int, p []byte, off int64) (int, unix.Errno) {
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	// preadv2 takes the offset as two longs, low then high (zero on a
	// 64-bit kernel).
	n, _, e := unix.Syscall6(unix.SYS_PREADV2, uintptr(fd), uintptr(unsafe.Pointer(&iov)), 1,
		uintptr(off), uintptr(uint64(off)>>(bits.UintSize-1)>>1), unix.RWF_NOWAIT)
	return int(n), e
}

// ringFdatasync is fdatasync through the ring.
func (f *File) ringFdatasync() error {
	for {
		res := f.ring.do(ioringOpFsync, f.fd, nil, 0, ioringFsyncDatasync)
		if e := unix.Errno(-res); res < 0 {
			if transient(e) || e == unix.ECANCELED {
				continue
			}
			return e
		}
		return nil
	}
}

// uringUnavailable is the fault for a ring that cannot be set up.
func uringUnavailable(path string, err error) error {
	return fault.Wrap(err, fault.FailedPrecondition, "bdev.uring_unavailable",
		fmt.Sprintf("file %q: io_uring is unavailable on this kernel or in this container: %v", path, err),
		fmt.Sprintf("use aio://%s (the same backend with pread/pwrite), or allow io_uring (sysctl kernel.io_uring_disabled=0, a seccomp profile that permits io_uring_setup, Linux 5.6 or later)", path))
}
