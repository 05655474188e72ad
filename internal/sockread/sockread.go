// Package sockread reads a long payload of known length from a TCP
// connection with as few wake-ups as the socket allows.
//
// A reader that asks for a 1 MiB payload over TCP is otherwise woken each
// time a burst of segments arrives: the NBD server, written to over
// loopback, made about nine reads and five context switches per 1 MiB
// write. On Linux, Reader sets the socket's SO_RCVLOWAT to the bytes still
// missing before it waits, so the kernel wakes it when all of them have
// arrived, and sets it back to one byte before it returns. The kernel wakes
// it earlier when the receive window or memory could not take the rest, on
// an error and at the peer's FIN, and caps the mark at half the largest TCP
// receive buffer (net.ipv4.tcp_rmem; 3 MiB by default), so a long
// remainder may take a few wake-ups. It grows the socket's receive buffer
// to about twice the mark, as its autotuning would for a bulk transfer.
// Only kernels with every fix that makes such waits safe use it (5.12 and
// later, or the stable releases that took the fixes); elsewhere, and on
// connections that are not plain TCP sockets, ReadFull is io.ReadFull.
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
// connection under br (see Reader), waiting in one piece when at least
// MinLowat bytes are missing. r may be nil (io.ReadFull on br). Like
// io.ReadFull it returns io.ErrUnexpectedEOF when the stream ends part way
// and io.EOF when it ends before the first byte; otherwise the error is a
// *net.OpError, and errors.Is finds os.ErrDeadlineExceeded, net.ErrClosed
// or the system's errno in it as in a net.Conn.Read error. br must read
// from the connection r was made for, and only one goroutine may read at a
// time. Unlike a read through br, it never reads past p: br is empty
// afterwards even when more of the stream has arrived.
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
