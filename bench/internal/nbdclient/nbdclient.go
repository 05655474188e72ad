// Package nbdclient is a minimal NBD client presented as a bdev.Device, for
// the benchmarks and the soak of bench/: fixed newstyle negotiation, simple
// replies, several connections.
package nbdclient

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/nexstor/nexstor/internal/bdev"
)

// NBD wire constants (fixed newstyle negotiation, simple replies).
const (
	nbdMagic         = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic      = 0x49484156454f5054 // "IHAVEOPT"
	nbdOptReplyMagic = 0x3e889045565a9
	nbdRequestMagic  = 0x25609513
	nbdSimpleReply   = 0x67446698
	nbdOptGo         = 7
	nbdRepAck        = 1
	nbdRepInfo       = 3
	nbdInfoExport    = 0
	nbdInfoBlockSize = 3
	nbdCmdRead       = 0
	nbdCmdWrite      = 1
	nbdCmdDisc       = 2
	nbdCmdFlush      = 3
	nbdCmdTrim       = 4
	nbdCmdWriteZero  = 6
	nbdSlots         = 128 // requests in flight per connection
)

// Client is a minimal NBD client presented as a bdev.Device, so that
// the same load generator can drive NBD and NVMe/TCP. Requests are spread
// round-robin over its connections; each connection has one reader
// goroutine that completes requests by handle (the slot index), like the
// NVMe/TCP initiator's queues. Only simple replies are negotiated.
type Client struct {
	conns     []*nbdConn
	next      atomic.Uint32
	size      int64
	blockSize int
}

type nbdConn struct {
	nc    net.Conn
	wmu   sync.Mutex
	hdr   [28]byte // request header, guarded by wmu
	free  chan uint16
	slots [nbdSlots]nbdSlot
	err   atomic.Pointer[error]
}

type nbdSlot struct {
	buf  []byte // read destination
	done chan uint32
}

// Dial opens conns connections to export name at addr.
func Dial(ctx context.Context, addr, name string, conns int) (*Client, error) {
	c := &Client{}
	for range conns {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			c.Close()
			return nil, err
		}
		size, bs, err := nbdNegotiate(nc, name)
		if err != nil {
			nc.Close()
			c.Close()
			return nil, fmt.Errorf("nbd %s export %q: %w", addr, name, err)
		}
		c.size, c.blockSize = size, bs
		cn := &nbdConn{nc: nc, free: make(chan uint16, nbdSlots)}
		for i := range cn.slots {
			cn.slots[i].done = make(chan uint32, 1)
			cn.free <- uint16(i)
		}
		go cn.readLoop()
		c.conns = append(c.conns, cn)
	}
	return c, nil
}

func nbdNegotiate(nc net.Conn, name string) (size int64, blockSize int, err error) {
	r := bufio.NewReader(nc)
	var hs [18]byte
	if _, err := io.ReadFull(r, hs[:]); err != nil {
		return 0, 0, err
	}
	if binary.BigEndian.Uint64(hs[0:]) != nbdMagic || binary.BigEndian.Uint64(hs[8:]) != nbdOptMagic {
		return 0, 0, errors.New("not a newstyle NBD server")
	}
	// Client flags: fixed newstyle, no zeroes.
	msg := binary.BigEndian.AppendUint32(nil, 3)
	msg = binary.BigEndian.AppendUint64(msg, nbdOptMagic)
	msg = binary.BigEndian.AppendUint32(msg, nbdOptGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(name)+2+2))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	msg = binary.BigEndian.AppendUint16(msg, 1)
	msg = binary.BigEndian.AppendUint16(msg, nbdInfoBlockSize)
	if _, err := nc.Write(msg); err != nil {
		return 0, 0, err
	}
	blockSize = 512
	for {
		var h [20]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return 0, 0, err
		}
		if binary.BigEndian.Uint64(h[0:]) != nbdOptReplyMagic {
			return 0, 0, errors.New("bad option reply magic")
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return 0, 0, err
		}
		switch {
		case typ == nbdRepAck:
			if r.Buffered() > 0 {
				return 0, 0, errors.New("data after NBD_REP_ACK")
			}
			return size, blockSize, nil
		case typ == nbdRepInfo && len(data) >= 12 && binary.BigEndian.Uint16(data) == nbdInfoExport:
			size = int64(binary.BigEndian.Uint64(data[2:]))
		case typ == nbdRepInfo && len(data) >= 14 && binary.BigEndian.Uint16(data) == nbdInfoBlockSize:
			blockSize = int(binary.BigEndian.Uint32(data[2:]))
		case typ&(1<<31) != 0:
			return 0, 0, fmt.Errorf("NBD_OPT_GO refused (reply type %#x): %s", typ, data)
		}
	}
}

func (c *nbdConn) readLoop() {
	r := bufio.NewReaderSize(c.nc, 256<<10)
	var h [16]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			c.fail(err)
			return
		}
		if binary.BigEndian.Uint32(h[0:]) != nbdSimpleReply {
			c.fail(errors.New("nbd: bad reply magic"))
			return
		}
		errno, handle := binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
		if handle >= nbdSlots {
			c.fail(errors.New("nbd: unknown handle"))
			return
		}
		s := &c.slots[handle]
		if errno == 0 && s.buf != nil {
			if _, err := io.ReadFull(r, s.buf); err != nil {
				c.fail(err)
				return
			}
		}
		s.done <- errno
	}
}

func (c *nbdConn) fail(err error) {
	c.err.Store(&err)
	c.nc.Close()
	// Wake every waiter; a slot's done has room for one value.
	for i := range c.slots {
		select {
		case c.slots[i].done <- ^uint32(0):
		default:
		}
	}
}

func (c *nbdConn) do(typ uint16, off int64, length uint32, payload, dst []byte) error {
	h := <-c.free
	s := &c.slots[h]
	s.buf = dst
	c.wmu.Lock()
	b := c.hdr[:]
	binary.BigEndian.PutUint32(b[0:], nbdRequestMagic)
	binary.BigEndian.PutUint16(b[4:], 0)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], uint64(h))
	binary.BigEndian.PutUint64(b[16:], uint64(off))
	binary.BigEndian.PutUint32(b[24:], length)
	_, err := c.nc.Write(b)
	if err == nil && payload != nil {
		_, err = c.nc.Write(payload)
	}
	c.wmu.Unlock()
	if err != nil {
		c.fail(err)
	}
	errno := <-s.done
	s.buf = nil
	c.free <- h
	if p := c.err.Load(); p != nil && errno == ^uint32(0) {
		return fmt.Errorf("nbd: connection failed: %w", *p)
	}
	if errno != 0 {
		return fmt.Errorf("nbd: request failed with errno %d", errno)
	}
	return nil
}

func (c *Client) conn() *nbdConn {
	return c.conns[int(c.next.Add(1))%len(c.conns)]
}

// ReadAt reads len(p) bytes at off, a multiple of the block size; an
// error for a failed request or a lost connection.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if err := bdev.CheckRange("read", off, int64(len(p)), c.size, c.blockSize); err != nil {
		return 0, err
	}
	if err := c.conn().do(nbdCmdRead, off, uint32(len(p)), nil, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt writes p at off; it returns once the server acknowledged the
// write.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	if err := bdev.CheckRange("write", off, int64(len(p)), c.size, c.blockSize); err != nil {
		return 0, err
	}
	if err := c.conn().do(nbdCmdWrite, off, uint32(len(p)), p, nil); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush sends NBD_CMD_FLUSH and waits for its reply.
func (c *Client) Flush() error { return c.conn().do(nbdCmdFlush, 0, 0, nil, nil) }

// Unmap sends NBD_CMD_TRIM for the range.
func (c *Client) Unmap(off, length int64) error {
	return c.conn().do(nbdCmdTrim, off, uint32(length), nil, nil)
}

// WriteZeroes sends NBD_CMD_WRITE_ZEROES for the range.
func (c *Client) WriteZeroes(off, length int64) error {
	return c.conn().do(nbdCmdWriteZero, off, uint32(length), nil, nil)
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// BlockSize is the export's preferred block size (512 when it names none).
func (c *Client) BlockSize() int { return c.blockSize }

// Close disconnects every connection; requests in flight fail.
func (c *Client) Close() error {
	for _, cn := range c.conns {
		cn.wmu.Lock()
		var b [28]byte
		binary.BigEndian.PutUint32(b[0:], nbdRequestMagic)
		binary.BigEndian.PutUint16(b[6:], nbdCmdDisc)
		cn.nc.Write(b[:])
		cn.wmu.Unlock()
		cn.nc.Close()
	}
	return nil
}
