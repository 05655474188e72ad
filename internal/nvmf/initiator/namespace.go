package initiator

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// Namespace is a namespace of a connected controller, as a bdev.Device, and
// a bdev.Claimer when the target takes claims for it (see claim.go).
// Alignment and range are checked locally before anything is sent. I/O is
// spread over the controller's I/O queues; transfers larger than the
// controller's limit are split. Close releases only the Namespace, not the
// Controller.
//
// Errors: a write refused because the pool under a thin namespace is full
// wraps bdev.ErrNoSpace; I/O refused because a newer claim superseded the
// Controller's wraps bdev.ErrFenced, and a write refused because another
// nexus owns a namespace this Controller did not claim wraps bdev.ErrOwned.
type Namespace struct {
	c     *Controller
	nsid  uint32
	bs    int
	shift uint
	// size is the capacity in bytes as Identify last reported it
	// (Revalidate asks again).
	size   atomic.Int64
	id     bdev.Identity
	cs     *claimState
	closed atomic.Bool
}

var (
	_ bdev.Device  = (*Namespace)(nil)
	_ bdev.Claimer = (*Namespace)(nil)
)

// identifyNamespace sends Identify Namespace for nsid into b and returns
// its size in blocks and the block size's power of two.
func (c *Controller) identifyNamespace(nsid uint32, b []byte) (nsze uint64, lbads uint, err error) {
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminIdentify)
	sqe.SetNSID(nsid)
	sqe.SetCDW(10, nvme.CNSNamespace)
	if _, err := c.admin(&sqe, b, false); err != nil {
		return 0, 0, fmt.Errorf("nvmf initiator: %s: identify namespace %d: %w", c.subNQN, nsid, err)
	}
	nsze = binary.LittleEndian.Uint64(b[nvme.IDNsNSZE:])
	if nsze == 0 {
		return 0, 0, fmt.Errorf("nvmf initiator: %s: namespace %d is not active", c.subNQN, nsid)
	}
	fmtIdx := int(b[nvme.IDNsFLBAS] & 0xF)
	lbads = uint(b[nvme.IDNsLBAF0+4*fmtIdx+2])
	if lbads < 9 || lbads > 16 {
		return 0, 0, fmt.Errorf("nvmf initiator: %s: namespace %d has unsupported block size 2^%d", c.subNQN, nsid, lbads)
	}
	if ms := binary.LittleEndian.Uint16(b[nvme.IDNsLBAF0+4*fmtIdx:]); ms != 0 {
		return 0, 0, fmt.Errorf("nvmf initiator: %s: namespace %d uses %d bytes of metadata per block, which is unsupported", c.subNQN, nsid, ms)
	}
	return nsze, lbads, nil
}

// Namespace identifies namespace nsid and returns it as a Device.
func (c *Controller) Namespace(nsid uint32) (*Namespace, error) {
	b := make([]byte, nvme.IdentifyDataLength)
	nsze, lbads, err := c.identifyNamespace(nsid, b)
	if err != nil {
		return nil, err
	}
	n := &Namespace{c: c, nsid: nsid, bs: 1 << lbads, shift: lbads, cs: c.claimState(nsid)}
	n.size.Store(int64(nsze) << lbads)
	copy(n.id.NGUID[:], b[nvme.IDNsNGUID:nvme.IDNsNGUID+16])
	// The UUID is in the identification descriptors (NVMe 1.3 and later);
	// a controller that has none leaves it zero.
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.AdminIdentify)
	sqe.SetNSID(nsid)
	sqe.SetCDW(10, nvme.CNSNSDescList)
	clear(b)
	if _, err := c.admin(&sqe, b, false); err == nil {
		n.id.UUID = descriptorUUID(b)
	} else if !errors.As(err, new(nvme.Status)) {
		return nil, fmt.Errorf("nvmf initiator: %s: identify namespace %d descriptors: %w", c.subNQN, nsid, err)
	}
	return n, nil
}

// descriptorUUID returns the UUID of a namespace identification descriptor
// list, or zero.
func descriptorUUID(b []byte) [16]byte {
	for p := 0; p+4 <= len(b); {
		typ, l := b[p], int(b[p+1])
		if typ == 0 || p+4+l > len(b) {
			break
		}
		if typ == nvme.NIDTUUID && l == 16 {
			return [16]byte(b[p+4 : p+20])
		}
		p += 4 + l
	}
	return [16]byte{}
}

// NSID returns the namespace ID.
func (n *Namespace) NSID() uint32 { return n.nsid }

// Identity is the namespace's identity as Identify reported it when the
// Namespace was made: the UUID of its identification descriptors and its
// NGUID. For a replica's share these are the replica's (bdev.Identity).
// Either is zero when the target reports none.
func (n *Namespace) Identity() bdev.Identity { return n.id }

// Size is the capacity in bytes, as Identify reported it when the
// Namespace was made or last revalidated.
func (n *Namespace) Size() int64 { return n.size.Load() }

// Revalidate identifies the namespace again and takes its current size
// (after the target grew it: see Options.OnEvent for how a host hears of
// that). A namespace that is gone, or now has another block size or
// another NGUID, fails it and keeps the size it had. Safe to call while I/O
// runs: I/O checks its range against the size it loads.
func (n *Namespace) Revalidate(ctx context.Context) error {
	if n.closed.Load() {
		return bdev.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b := make([]byte, nvme.IdentifyDataLength)
	nsze, lbads, err := n.c.identifyNamespace(n.nsid, b)
	if err != nil {
		return err
	}
	if lbads != n.shift {
		return fmt.Errorf("nvmf initiator: %s: namespace %d now has %d-byte blocks, not %d: connect again", n.c.subNQN, n.nsid, 1<<lbads, n.bs)
	}
	if got := [16]byte(b[nvme.IDNsNGUID : nvme.IDNsNGUID+16]); got != n.id.NGUID {
		return fmt.Errorf("nvmf initiator: %s: namespace %d now has NGUID %x, not %x: another namespace is behind the ID", n.c.subNQN, n.nsid, got, n.id.NGUID)
	}
	n.size.Store(int64(nsze) << lbads)
	return nil
}

// BlockSize is the logical block size in bytes.
func (n *Namespace) BlockSize() int { return n.bs }

// Close marks the namespace closed; the controller stays connected.
func (n *Namespace) Close() error {
	n.closed.Store(true)
	return nil
}

// io runs one command on an I/O queue, waiting for a connection if needed.
// A command that could not be sent because its connection had just failed
// is retried on the next connection, within the command timeout.
func (n *Namespace) io(sqe *pdu.SQE, data []byte, write bool) error {
	c, err := n.start(sqe, data, write)
	if err != nil {
		return err
	}
	if _, err := c.q.wait(c); err != nil {
		return n.ioError(err)
	}
	return nil
}

// start sends one command on an I/O queue as io does, and returns it to be
// waited for (hqueue.wait) once it was sent.
func (n *Namespace) start(sqe *pdu.SQE, data []byte, write bool) (*cmd, error) {
	c := n.c
	var deadline time.Time
	for {
		s, err := c.session()
		if err != nil {
			return nil, err
		}
		if len(s.io) == 0 {
			return nil, fmt.Errorf("nvmf initiator: %s: no I/O queues", c.subNQN)
		}
		q := s.io[int(c.rr.Add(1))%len(s.io)]
		cmd, err := q.send(sqe, data, write, q.timeout)
		if err == nil {
			return cmd, nil
		}
		var ns errNotSent
		if !errors.As(err, &ns) {
			return nil, n.ioError(err)
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(c.opts.CommandTimeout)
		} else if time.Now().After(deadline) {
			return nil, ns.err
		}
		// Let the controller notice the failure and start reconnecting.
		c.lost(s, q)
		time.Sleep(time.Millisecond)
	}
}

func (n *Namespace) maxBlocks() int64 {
	c := n.c
	c.mu.Lock()
	mx := maxTransfer
	if c.cur != nil {
		mx = c.cur.info.maxXfer
	}
	c.mu.Unlock()
	// At least one block, or a controller whose MDTS is below the block
	// size would have rw loop forever on empty chunks; the controller then
	// rejects the command instead.
	return max(min(int64(mx)>>n.shift, 65536), 1)
}

// rwSQE returns the command that reads or writes blocks blocks at byte
// offset off.
func (n *Namespace) rwSQE(opcode uint8, off, blocks int64) pdu.SQE {
	slba := uint64(off) >> n.shift
	var sqe pdu.SQE
	sqe.SetOpcode(opcode)
	sqe.SetNSID(n.nsid)
	sqe.SetCDW(10, uint32(slba))
	sqe.SetCDW(11, uint32(slba>>32))
	sqe.SetCDW(12, uint32(blocks-1))
	return sqe
}

func (n *Namespace) rwError(op string, off int64, length int, err error) error {
	return fmt.Errorf("nvmf %s nsid %d: %s at %d length %d: %w", n.c.subNQN, n.nsid, op, off, length, err)
}

// rw runs a read or a write, split into commands the controller takes. The
// caller checked that the Namespace (or handle) is open.
func (n *Namespace) rw(op string, opcode uint8, p []byte, off int64) (int, error) {
	if err := bdev.CheckRange(op, off, int64(len(p)), n.size.Load(), n.bs); err != nil {
		return 0, err
	}
	done := 0
	maxb := n.maxBlocks()
	for done < len(p) {
		blocks := min(int64(len(p)-done)>>n.shift, maxb)
		chunk := int(blocks << n.shift)
		sqe := n.rwSQE(opcode, off+int64(done), blocks)
		if err := n.io(&sqe, p[done:done+chunk], opcode == nvme.CmdWrite); err != nil {
			return done, n.rwError(op, off+int64(done), chunk, err)
		}
		done += chunk
	}
	return done, nil
}

// startWrite implements bdev.WriteStarter for the Namespace and its claimed
// handles: a write that one command carries is sent and left to
// pendingWrite.Wait; a longer one (several commands), or an empty one, runs
// synchronously. The caller checked that the Namespace (or handle) is open.
func (n *Namespace) startWrite(p []byte, off int64) (bdev.Pending, error) {
	if err := bdev.CheckRange("write", off, int64(len(p)), n.size.Load(), n.bs); err != nil {
		return nil, err
	}
	blocks := int64(len(p)) >> n.shift
	if blocks == 0 || blocks > n.maxBlocks() {
		_, err := n.rw("write", nvme.CmdWrite, p, off)
		return nil, err
	}
	sqe := n.rwSQE(nvme.CmdWrite, off, blocks)
	c, err := n.start(&sqe, p, true)
	if err != nil {
		return nil, n.rwError("write", off, len(p), err)
	}
	c.ns, c.off = n, off
	return (*pendingWrite)(c), nil
}

// pendingWrite is a write command sent by startWrite.
type pendingWrite cmd

// Wait implements bdev.Pending: it waits for the command, frees its slot
// and returns the write's result as WriteAt would.
func (w *pendingWrite) Wait() error {
	c := (*cmd)(w)
	// Read before the slot is freed: another command may take it at once.
	n, off, length := c.ns, c.off, len(c.data)
	if _, err := c.q.wait(c); err != nil {
		return n.rwError("write", off, length, n.ioError(err))
	}
	return nil
}

var _ bdev.WriteStarter = (*Namespace)(nil)

// StartWrite implements bdev.WriteStarter.
func (n *Namespace) StartWrite(p []byte, off int64) (bdev.Pending, error) {
	if n.closed.Load() {
		return nil, bdev.ErrClosed
	}
	return n.startWrite(p, off)
}

// ReadAt reads len(p) bytes at off.
func (n *Namespace) ReadAt(p []byte, off int64) (int, error) {
	if n.closed.Load() {
		return 0, bdev.ErrClosed
	}
	return n.rw("read", nvme.CmdRead, p, off)
}

// WriteAt writes p at off; it is acknowledged (not necessarily durable)
// when it returns nil.
func (n *Namespace) WriteAt(p []byte, off int64) (int, error) {
	if n.closed.Load() {
		return 0, bdev.ErrClosed
	}
	return n.rw("write", nvme.CmdWrite, p, off)
}

// Flush makes every acknowledged write durable (NVMe Flush).
func (n *Namespace) Flush() error {
	if n.closed.Load() {
		return bdev.ErrClosed
	}
	return n.flush()
}

func (n *Namespace) flush() error {
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.CmdFlush)
	sqe.SetNSID(n.nsid)
	if err := n.io(&sqe, nil, false); err != nil {
		return fmt.Errorf("nvmf %s nsid %d: flush: %w", n.c.subNQN, n.nsid, err)
	}
	return nil
}

// WriteZeroes zeroes the range (NVMe Write Zeroes, without deallocation).
func (n *Namespace) WriteZeroes(off, length int64) error {
	if n.closed.Load() {
		return bdev.ErrClosed
	}
	return n.zero("write-zeroes", off, length, false)
}

// Unmap deallocates the range (NVMe Write Zeroes with DEAC, so later reads
// return zeroes whatever the controller's deallocation behaviour).
func (n *Namespace) Unmap(off, length int64) error {
	if n.closed.Load() {
		return bdev.ErrClosed
	}
	return n.zero("unmap", off, length, true)
}

func (n *Namespace) zero(op string, off, length int64, deac bool) error {
	if err := bdev.CheckRange(op, off, length, n.size.Load(), n.bs); err != nil {
		return err
	}
	for length > 0 {
		blocks := min(length>>n.shift, 65536)
		slba := uint64(off) >> n.shift
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.CmdWriteZeroes)
		sqe.SetNSID(n.nsid)
		sqe.SetCDW(10, uint32(slba))
		sqe.SetCDW(11, uint32(slba>>32))
		cdw12 := uint32(blocks - 1)
		if deac {
			cdw12 |= 1 << 25
		}
		sqe.SetCDW(12, cdw12)
		if err := n.io(&sqe, nil, false); err != nil {
			return fmt.Errorf("nvmf %s nsid %d: %s at %d length %d: %w", n.c.subNQN, n.nsid, op, off, blocks<<n.shift, err)
		}
		off += blocks << n.shift
		length -= blocks << n.shift
	}
	return nil
}

// Deallocate sends a Dataset Management deallocate for the range: a hint
// that the blocks are unused (the controller reports whether they then read
// as zeroes).
func (n *Namespace) Deallocate(off, length int64) error {
	if n.closed.Load() {
		return bdev.ErrClosed
	}
	if err := bdev.CheckRange("deallocate", off, length, n.size.Load(), n.bs); err != nil {
		return err
	}
	var ranges [256 * 16]byte
	for length > 0 {
		nr := 0
		for length > 0 && nr < 256 {
			blocks := min(length>>n.shift, 1<<31)
			binary.LittleEndian.PutUint32(ranges[nr*16+4:], uint32(blocks))
			binary.LittleEndian.PutUint64(ranges[nr*16+8:], uint64(off)>>n.shift)
			nr++
			off += blocks << n.shift
			length -= blocks << n.shift
		}
		var sqe pdu.SQE
		sqe.SetOpcode(nvme.CmdDSM)
		sqe.SetNSID(n.nsid)
		sqe.SetCDW(10, uint32(nr-1))
		sqe.SetCDW(11, 1<<2)
		if err := n.io(&sqe, ranges[:nr*16], true); err != nil {
			return fmt.Errorf("nvmf %s nsid %d: deallocate: %w", n.c.subNQN, n.nsid, err)
		}
	}
	return nil
}
