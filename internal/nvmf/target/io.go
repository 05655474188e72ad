package target

import (
	"context"
	"encoding/binary"
	"errors"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// io executes an NVM command in a worker, if the subsystem's ANA state lets
// it.
func (c *controller) io(r *request) {
	c.touch()
	s := c.sub
	// Counted before the state is read: SetANAState stores the state
	// before it waits for the count to drop, so a command either sees the
	// new state or is waited for.
	s.inflight.Add(1)
	if st := s.ANAState(); !st.Accessible() {
		s.inflight.Add(-1)
		r.status = st.IOStatus()
		return
	}
	c.ioAccessible(r)
	if r.status == nvme.StatusANAInaccessible && s.ANAState().Accessible() {
		// The device was superseded (devStatus): from now on the whole
		// subsystem reports inaccessible, in its ANA log too, so that the
		// host, rereading the log after this status, keeps its I/O on its
		// other paths. SetANAState waits for the I/O under way, this
		// command included: it runs on its own.
		go func() {
			if err := s.SetANAState(context.Background(), nvme.ANAInaccessible); err != nil {
				s.t.log.Warn("nvmf: could not report a superseded subsystem inaccessible", "subnqn", s.nqn, "err", err)
			}
		}()
	}
	s.inflight.Add(-1)
}

// ioAccessible executes an NVM command.
func (c *controller) ioAccessible(r *request) {
	op := r.sqe.Opcode()
	if op == nvme.CmdFlush {
		c.flush(r)
		return
	}
	ns := c.sub.namespace(r.sqe.NSID())
	if ns == nil {
		r.status = nvme.StatusInvalidNS
		return
	}
	dev, cl, st := c.device(ns)
	if !st.Success() {
		r.status = st
		return
	}
	c.ioOn(r, ns, dev)
	if cl != nil {
		cl.put()
	}
}

// ioOn executes a read, write, write-zeroes or dataset management command on
// dev, the device of ns that this controller's I/O goes through.
func (c *controller) ioOn(r *request, ns *namespace, dev bdev.Device) {
	op := r.sqe.Opcode()
	switch op {
	case nvme.CmdRead, nvme.CmdWrite, nvme.CmdWriteZeroes:
		slba := uint64(r.sqe.CDW(10)) | uint64(r.sqe.CDW(11))<<32
		nlb := uint64(r.sqe.CDW(12)&0xFFFF) + 1
		if blocks := ns.blocks.Load(); slba >= blocks || nlb > blocks-slba {
			r.status = nvme.StatusLBAOutOfRange
			return
		}
		off, n := int64(slba<<ns.shift), int64(nlb<<ns.shift)
		switch op {
		case nvme.CmdRead:
			c.read(r, dev, off, n)
		case nvme.CmdWrite:
			c.write(r, dev, off, n)
		default:
			var err error
			if r.sqe.CDW(12)&(1<<25) != 0 { // DEAC
				err = dev.Unmap(off, n)
			} else {
				err = dev.WriteZeroes(off, n)
			}
			r.status = devStatus(err, nvme.StatusWriteFault)
		}
	case nvme.CmdDSM:
		c.dsm(r, ns, dev)
	default:
		r.status = nvme.StatusInvalidOpcode
	}
}

func (c *controller) read(r *request, dev bdev.Device, off, n int64) {
	sgl := r.sqe.SGL()
	if sgl.Type != pdu.SGLTransportDataBlock {
		r.status = nvme.StatusSGLInvalidType
		return
	}
	if int64(sgl.Length) != n || n > MaxTransfer {
		r.status = nvme.StatusSGLInvalidDataLength
		return
	}
	r.getBuf(int(n))
	if _, err := dev.ReadAt(r.buf, off); err != nil {
		r.status = devStatus(err, nvme.StatusUnrecoveredReadError)
		return
	}
	r.c2h = int(n)
	c.sub.stats.reads.Add(1)
	c.sub.stats.readBytes.Add(uint64(n))
}

func (c *controller) write(r *request, dev bdev.Device, off, n int64) {
	if int64(len(r.buf)) != n {
		r.status = nvme.StatusSGLInvalidDataLength
		return
	}
	if _, err := dev.WriteAt(r.buf, off); err != nil {
		r.status = devStatus(err, nvme.StatusWriteFault)
		return
	}
	c.mu.Lock()
	wce := c.wce
	c.mu.Unlock()
	if fua := r.sqe.CDW(12)&(1<<30) != 0; fua || !wce {
		if err := dev.Flush(); err != nil {
			r.status = devStatus(err, nvme.StatusWriteFault)
			return
		}
	}
	c.sub.stats.writes.Add(1)
	c.sub.stats.writeBytes.Add(uint64(n))
}

func (c *controller) flush(r *request) {
	nsid := r.sqe.NSID()
	if nsid == 0xFFFFFFFF {
		for _, id := range c.sub.nsids() {
			if ns := c.sub.namespace(id); ns != nil {
				if r.status = c.flushNS(ns); !r.status.Success() {
					return
				}
			}
		}
		return
	}
	ns := c.sub.namespace(nsid)
	if ns == nil {
		r.status = nvme.StatusInvalidNS
		return
	}
	r.status = c.flushNS(ns)
}

// flushNS flushes ns through the device this controller's I/O goes to.
func (c *controller) flushNS(ns *namespace) nvme.Status {
	dev, cl, st := c.device(ns)
	if !st.Success() {
		return st
	}
	st = devStatus(dev.Flush(), nvme.StatusWriteFault)
	if cl != nil {
		cl.put()
	}
	return st
}

func (c *controller) dsm(r *request, ns *namespace, dev bdev.Device) {
	// The data holds NR+1 ranges of 16 bytes. It may be longer: Linux
	// sends a whole page of ranges whatever NR is.
	nr := int(r.sqe.CDW(10)&0xFF) + 1
	if len(r.buf) < nr*16 {
		r.status = nvme.StatusSGLInvalidDataLength
		return
	}
	if r.sqe.CDW(11)&(1<<2) == 0 {
		return // only deallocate does anything; hints are accepted
	}
	for i := range nr {
		e := r.buf[i*16:]
		nlb := uint64(binary.LittleEndian.Uint32(e[4:]))
		slba := binary.LittleEndian.Uint64(e[8:])
		if nlb == 0 {
			continue
		}
		if blocks := ns.blocks.Load(); slba >= blocks || nlb > blocks-slba {
			r.status = nvme.StatusLBAOutOfRange
			return
		}
		if err := dev.Unmap(int64(slba<<ns.shift), int64(nlb<<ns.shift)); err != nil {
			r.status = devStatus(err, nvme.StatusWriteFault)
			return
		}
	}
}

// devStatus maps a device error to an NVMe status.
func devStatus(err error, ioStatus nvme.Status) nvme.Status {
	if err == nil {
		return nvme.StatusSuccess
	}
	var re *bdev.RangeError
	var ae *bdev.AlignmentError
	switch {
	case errors.As(err, &re):
		return nvme.StatusLBAOutOfRange
	case errors.As(err, &ae):
		return nvme.StatusInvalidField
	case errors.Is(err, bdev.ErrClosed):
		return nvme.StatusNamespaceNotReady
	case errors.Is(err, bdev.ErrSuperseded):
		// A newer instance serves the namespace on another path: the host
		// retries there (no DNR); never a reservation conflict, which
		// fails the I/O at the host.
		return nvme.StatusANAInaccessible
	case errors.Is(err, bdev.ErrFenced), errors.Is(err, bdev.ErrOwned):
		// What NVMe answers a host that a reservation fences.
		return nvme.StatusReservationConflict
	case errors.Is(err, bdev.ErrNoSpace):
		return nvme.StatusCapacityExceeded
	}
	return ioStatus
}
