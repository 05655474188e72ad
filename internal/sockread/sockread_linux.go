package sockread

import (
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reader reads payloads from one TCP connection (see the package comment).
// Its zero value is not usable; New makes one.
type Reader struct {
	c  *net.TCPConn
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

// New returns a Reader for c, or nil (a nil *Reader reads with
// io.ReadFull) when c is not a TCP connection, is a Multipath TCP one, or
// the kernel lacks the fixes that make SO_RCVLOWAT safe to wait on (see
// kernelOK).
func New(c net.Conn) *Reader {
	tc, ok := c.(*net.TCPConn)
	if !ok || !kernelOK() {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	proto := -1
	rc.Control(func(fd uintptr) {
		proto, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
	})
	// A Multipath TCP connection (Go's listeners accept them) honours the
	// mark with fewer escapes than TCP's: read it as before.
	if err != nil || proto != unix.IPPROTO_TCP {
		return nil
	}
	r := &Reader{c: tc, rc: rc}
	r.readFn = r.read
	// Linux keeps 0 (what an accepted socket reports) as 1: the same.
	r.resetFn = func(fd uintptr) {
		if err := r.setLowat(fd, 1); err != nil && r.err == nil {
			r.err = err // the read's own error, if any, says more
		}
	}
	return r
}

// readFull fills p from the socket (br is already drained).
func (r *Reader) readFull(p []byte) (int, error) {
	r.p, r.n, r.err = p, 0, nil
	if err := r.rc.Read(r.readFn); err != nil && r.err == nil {
		r.err = err // a deadline, or the connection closed
	}
	if r.lowat {
		// A closed connection skips resetFn: nothing reads it any more.
		// A mark that cannot come down fails the read (resetFn).
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
// receive buffer and wakes the reader early when the receive window or
// memory could not take the rest (see kernelOK), so the wait always ends.
func (r *Reader) read(fd uintptr) bool {
	for r.n < len(r.p) {
		m, err := unix.Read(int(fd), r.p[r.n:])
		switch {
		case m > 0:
			r.n += m
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			var serr error
			if left := len(r.p) - r.n; left >= MinLowat {
				serr = r.setLowat(fd, left)
			} else if r.lowat {
				serr = r.setLowat(fd, 1)
			}
			if serr != nil && r.lowat {
				// The mark could not come down to what is still
				// missing: waiting might never end.
				r.err = serr
				return true
			}
			return false
		case err != nil:
			r.err = &net.OpError{Op: "read", Net: "tcp", Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: err}
			return true
		default:
			r.err = io.EOF
			return true
		}
	}
	return true
}

// setLowat sets SO_RCVLOWAT. Raising it may fail harmlessly (the read then
// wakes as often as before); a failure to lower it is the caller's error.
func (r *Reader) setLowat(fd uintptr, v int) error {
	if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, v); err != nil {
		return &net.OpError{Op: "setsockopt SO_RCVLOWAT", Net: "tcp", Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: err}
	}
	r.lowat = v > 1
	return nil
}

// kernelOK reports whether the running kernel has every fix that keeps a
// reader waiting on SO_RCVLOWAT from stalling: the held-back wake-up
// re-checked when the mark is set (4.18), wake-ups under receive-memory
// pressure (5.7, 5.8), when the window left is under one segment (5.10)
// and under TCP's global memory pressure (5.12). That is 5.12 and later,
// or the stable releases that took them all: 5.10.20, 5.4.102, 4.19.178.
var kernelOK = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	return releaseOK(unix.ByteSliceToString(u.Release[:]))
})

// releaseOK is kernelOK for a release string such as "6.1.0-18-amd64".
func releaseOK(release string) bool {
	var v [3]int
	fields := strings.SplitN(release, ".", 3)
	if len(fields) < 2 {
		return false
	}
	for i, f := range fields {
		// Each field ends at its first non-digit ("0-18-amd64" is 0).
		end := strings.IndexFunc(f, func(c rune) bool { return c < '0' || c > '9' })
		if end >= 0 {
			f = f[:end]
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			if i < 2 {
				return false
			}
			break
		}
		v[i] = n
	}
	switch maj, min, patch := v[0], v[1], v[2]; {
	case maj > 5 || maj == 5 && min >= 12:
		return true
	case maj == 5 && min == 10:
		return patch >= 20
	case maj == 5 && min == 4:
		return patch >= 102
	case maj == 4 && min == 19:
		return patch >= 178
	}
	return false
}
