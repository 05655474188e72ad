// Package sockread reads a long payload of known length from a TCP
// connection with as few wake-ups as the socket allows.
//
// A reader that asks for a 1 MiB payload over TCP is otherwise woken each
// time a burst of segments arrives: on a loopback or LAN connection that is
// eight or more system calls, wake-ups and context switches per MiB, each
// also sending the peer a window update. On Linux, Reader sets the socket's
// SO_RCVLOWAT to the bytes still missing before it waits, so the kernel
// wakes it once, when all of them have arrived (or when the receive window
// could not take them, or on an error or the peer's FIN: the kernel never
// holds back a wake-up that waiting could not end), and sets it back to one
// byte before it returns. Elsewhere, and on connections that are not TCP
// sockets, it is io.ReadFull.
package sockread

import (
	"bufio"
	"io"
)

// MinLowat is the shortest missing remainder that Reader waits for in one
// piece: below it, the two setsockopt calls cost more than the wake-ups they
// save.
const MinLowat = 64 << 10

// ReadFull reads exactly len(p) bytes: first what br holds, then from the
// connection under br (see Reader). r may be nil (io.ReadFull on br). It
// returns io.ErrUnexpectedEOF when the stream ends part way, io.EOF when it
// ends before the first byte, and otherwise the connection's error
// (deadlines and Close included, as for net.Conn.Read). br must read from
// the connection r was made for, and only one goroutine may read at a time.
func (r *Reader) ReadFull(br *bufio.Reader, p []byte) (int, error) {
	if r == nil || len(p)-br.Buffered() < MinLowat {
		return io.ReadFull(br, p)
	}
	n := 0
	for br.Buffered() > 0 && n < len(p) {
		m, _ := br.Read(p[n:]) // cannot fail: it copies what is buffered
		n += m
	}
	if n == len(p) {
		return n, nil
	}
	m, err := r.readFull(p[n:])
	n += m
	if err == io.EOF && n > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
