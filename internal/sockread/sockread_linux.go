package sockread

import (
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reader reads payloads from one TCP connection (see the package comment).
// Its zero value is not usable; New makes one.
type Reader struct {
	rc syscall.RawConn
	// Results of the last callback of readFull, kept here rather than in a
	// closure so that a read allocates nothing.
	p       []byte
	n       int
	err     error
	lowat   bool // SO_RCVLOWAT is above one byte
	readFn  func(fd uintptr) bool
	resetFn func(fd uintptr)
}

// New returns a Reader for c, or nil when c is not a TCP connection (a
// nil *Reader reads with io.ReadFull).
func New(c net.Conn) *Reader {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &Reader{rc: rc}
	r.readFn = r.read
	// Linux keeps 0 (what an accepted socket reports) as 1: the same.
	r.resetFn = func(fd uintptr) { r.setLowat(fd, 1) }
	return r
}

// readFull fills p from the socket (br is already drained).
func (r *Reader) readFull(p []byte) (int, error) {
	r.p, r.n, r.err = p, 0, nil
	if err := r.rc.Read(r.readFn); err != nil && r.err == nil {
		r.err = err // a deadline, or the connection closed
	}
	if r.lowat {
		r.rc.Control(r.resetFn)
	}
	n, err := r.n, r.err
	r.p, r.err = nil, nil
	return n, err
}

// read is the raw-read callback: it reads what the socket holds and, when
// more is missing, raises SO_RCVLOWAT to the remainder and asks to wait. A
// remainder short of MinLowat is waited for byte-wise: the setsockopt would
// cost more than it saves. The kernel caps the value at half the largest
// receive buffer and wakes the reader early when the receive window could
// not take the rest, so the wait always ends.
func (r *Reader) read(fd uintptr) bool {
	for r.n < len(r.p) {
		m, err := unix.Read(int(fd), r.p[r.n:])
		switch {
		case m > 0:
			r.n += m
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			if left := len(r.p) - r.n; left >= MinLowat {
				r.setLowat(fd, left)
			} else if r.lowat {
				r.setLowat(fd, 1)
			}
			return false
		case err != nil:
			r.err = &net.OpError{Op: "read", Net: "tcp", Err: err}
			return true
		default:
			r.err = io.EOF
			return true
		}
	}
	return true
}

// setLowat sets SO_RCVLOWAT. A failure only costs wake-ups: the value in
// force is still one the reader sets back to a byte before it returns.
func (r *Reader) setLowat(fd uintptr, v int) {
	if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, v) == nil {
		r.lowat = v > 1
	}
}
