package target

import (
	"bufio"
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// connectIO connects an I/O queue of sqsize entries; noSQFC disables SQ flow
// control (CATTR bit 2), which lets the target complete reads with the
// C2HData SUCCESS flag.
func (r *raw) connectIO(cntlid uint16, sqsize int, noSQFC bool) {
	r.t.Helper()
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.Fabrics)
	sqe.SetFCType(nvme.FctConnect)
	sqe.SetCDW(10, 1<<16) // QID 1
	cdw11 := uint32(sqsize - 1)
	if noSQFC {
		cdw11 |= 1 << 2 << 16
	}
	sqe.SetCDW(11, cdw11)
	data := make([]byte, pdu.ConnectDataLen)
	(&pdu.ConnectData{CNTLID: cntlid, SubNQN: subNQN, HostNQN: hostNQN}).Marshal(data)
	if c := r.cmd(&sqe, data, nil); c.Status != 0 {
		r.t.Fatalf("I/O connect: %#x", c.Status)
	}
}

// TestPipelinedCommands keeps a queue full of writes (in-capsule and by
// R2T) and reads that check what the writes left, so that many commands
// complete at once: some responses are sent by the workers that executed
// them, others by the writer goroutine, and every one must arrive, exactly
// once, with its own data, or the host here waits until its deadline.
func TestPipelinedCommands(t *testing.T) {
	for _, tc := range []struct {
		name    string
		digests bool
		noSQFC  bool
	}{
		{"plain", false, false},
		{"digests", true, false},
		{"success-flag", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testPipelined(t, tc.digests, tc.noSQFC)
		})
	}
}

func testPipelined(t *testing.T, digests, noSQFC bool) {
	const (
		depth     = 32
		bs        = 4096
		regionBlk = 64 // blocks per command ID: room for the largest write
		perCID    = 40 // commands per command ID
	)
	large := 34 * bs // in the capsule or by R2T, at random
	if large > regionBlk*bs {
		t.Fatalf("test region of %d bytes too small for a %d-byte write", regionBlk*bs, large)
	}
	_, _, addr := serveSize(t, depth*regionBlk*bs)
	admin := dialRaw(t, addr, false)
	cntlid := admin.adminUp(0)
	h := dialRaw(t, addr, digests)
	h.connectIO(cntlid, 2*depth, noSQFC)

	// Each command ID owns one region and alternates between writing a
	// pattern to it and reading it back: its commands never overlap
	// another's, and every read knows what it must see.
	type slot struct {
		n       int    // commands issued
		write   bool   // the command in flight is a write
		want    []byte // what the region's first len(want) bytes hold
		out, in []byte
		got     int  // C2H bytes received
		done    bool // completion seen
	}
	rng := rand.New(rand.NewPCG(1, 2))
	pool := make([]byte, 4*large)
	for j := range pool {
		pool[j] = byte(rng.Uint32())
	}
	slots := make([]slot, depth)
	for i := range slots {
		slots[i].out = make([]byte, large)
		slots[i].in = make([]byte, large)
	}
	base := uint16(100) // CIDs 100..131, away from the Connect's
	issue := func(i int) {
		s := &slots[i]
		var sqe pdu.SQE
		sqe.SetCID(base + uint16(i))
		sqe.SetFlags(pdu.PSDTSGL)
		sqe.SetNSID(1)
		sqe.SetCDW(10, uint32(i*regionBlk))
		s.write = s.n%2 == 0
		s.n++
		s.got, s.done = 0, false
		if s.write {
			// Small writes in the capsule; larger ones in the capsule
			// or, as a host may choose, by R2T.
			n := []int{bs, 4 * bs, 32 * bs, large}[rng.IntN(4)]
			inCapsule := n <= 4*bs || rng.IntN(2) == 0
			// A window of the random pool at a random offset: every
			// write leaves different data, cheaply.
			data := s.out[:n]
			o := rng.IntN(len(pool)-n) &^ 7
			copy(data, pool[o:o+n])
			s.want = data
			sqe.SetOpcode(nvme.CmdWrite)
			sqe.SetCDW(12, uint32(n/bs-1))
			if inCapsule {
				sqe.SetSGL(pdu.SGL{Type: pdu.SGLDataBlockOffset, Length: uint32(n)})
				h.must(h.enc.WriteCapsuleCmd(&sqe, data))
				return
			}
			sqe.SetSGL(pdu.SGL{Type: pdu.SGLTransportDataBlock, Length: uint32(n)})
			h.must(h.enc.WriteCapsuleCmd(&sqe, nil))
			return
		}
		n := len(s.want)
		sqe.SetOpcode(nvme.CmdRead)
		sqe.SetCDW(12, uint32(n/bs-1))
		sqe.SetSGL(pdu.SGL{Type: pdu.SGLTransportDataBlock, Length: uint32(n)})
		h.must(h.enc.WriteCapsuleCmd(&sqe, nil))
	}
	slotOf := func(cid uint16) *slot {
		i := int(cid) - int(base)
		if i < 0 || i >= depth {
			t.Fatalf("PDU for CID %d, which was never sent", cid)
		}
		if slots[i].done {
			t.Fatalf("CID %d: PDU after its completion", cid)
		}
		return &slots[i]
	}
	finish := func(s *slot, cid uint16, status uint16) {
		if status != 0 {
			t.Fatalf("CID %d command %d (write %v): status %#x", cid, s.n, s.write, status)
		}
		if !s.write {
			if s.got != len(s.want) {
				t.Fatalf("CID %d: read completed after %d of %d bytes", cid, s.got, len(s.want))
			}
			if !bytes.Equal(s.in[:s.got], s.want) {
				t.Fatalf("CID %d: read returned other data than the last write", cid)
			}
		}
		s.done = true
	}

	for i := range slots {
		issue(i)
	}
	h.flush()
	outstanding := depth
	for outstanding > 0 {
		hd, err := h.dec.Next()
		if err != nil {
			t.Fatalf("%d commands outstanding: %v", outstanding, err)
		}
		var completed *slot
		var cid uint16
		switch hd.Type {
		case pdu.TypeR2T:
			r2t := h.dec.R2T()
			s := slotOf(r2t.CCCID)
			if !s.write || r2t.R2TO != 0 || int(r2t.R2TL) != len(s.want) {
				t.Fatalf("unexpected R2T %+v", r2t)
			}
			h.must(h.enc.WriteH2CData(pdu.DataHeader{CCCID: r2t.CCCID, TTag: r2t.TTag}, pdu.FlagLast, s.want))
			h.flush()
		case pdu.TypeC2HData:
			dh := h.dec.DataHeader()
			s := slotOf(dh.CCCID)
			if s.write || int(dh.DataO) != s.got || int(dh.DataO+dh.DataL) > len(s.want) {
				t.Fatalf("unexpected C2HData %+v", dh)
			}
			h.must(h.dec.ReadData(s.in[dh.DataO : dh.DataO+dh.DataL]))
			s.got += int(dh.DataL)
			if hd.Flags&pdu.FlagSuccess != 0 {
				if !noSQFC {
					t.Fatal("SUCCESS flag with SQ flow control on")
				}
				completed, cid = s, dh.CCCID
				finish(s, cid, 0)
			}
		case pdu.TypeCapsuleResp:
			cqe := h.dec.CQE()
			completed, cid = slotOf(cqe.CID), cqe.CID
			finish(completed, cid, cqe.Status)
		default:
			t.Fatalf("unexpected %v", hd.Type)
		}
		if completed == nil {
			continue
		}
		if completed.n < perCID {
			issue(int(cid - base))
			h.flush()
		} else {
			outstanding--
		}
	}
	for i := range slots {
		if slots[i].n != perCID {
			t.Fatalf("CID %d ran %d commands, want %d", base+uint16(i), slots[i].n, perCID)
		}
	}
}

// TestInCapsuleLimitOnIOQueues: an I/O queue takes writes of up to
// InCapsuleDataSize in the capsule (what IOCCSZ advertises); one block more
// is a fatal Data Limit Exceeded (from the PDU's length: FEI 4, PLEN).
func TestInCapsuleLimitOnIOQueues(t *testing.T) {
	_, _, addr := serve(t)
	admin := dialRaw(t, addr, false)
	cntlid := admin.adminUp(0)
	h := dialRaw(t, addr, false)
	h.connectIO(cntlid, 32, false)
	data := bytes.Repeat([]byte{0x3C}, InCapsuleDataSize)
	var sqe pdu.SQE
	sqe.SetOpcode(nvme.CmdWrite)
	sqe.SetNSID(1)
	sqe.SetCDW(12, uint32(len(data)/4096-1))
	if c := h.cmd(&sqe, data, nil); c.Status != 0 {
		t.Fatalf("in-capsule write of %d bytes: status %#x", len(data), c.Status)
	}
	got := make([]byte, len(data))
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.CmdRead)
	sqe.SetNSID(1)
	sqe.SetCDW(12, uint32(len(data)/4096-1))
	if c := h.cmd(&sqe, nil, got); c.Status != 0 || !bytes.Equal(got, data) {
		t.Fatalf("read back: status %#x, same data %v", c.Status, bytes.Equal(got, data))
	}
	sqe = pdu.SQE{}
	sqe.SetOpcode(nvme.CmdWrite)
	sqe.SetNSID(1)
	sqe.SetCDW(12, uint32(len(data)/4096))
	sqe.SetCID(77)
	sqe.SetFlags(pdu.PSDTSGL)
	sqe.SetSGL(pdu.SGL{Type: pdu.SGLDataBlockOffset, Length: uint32(len(data) + 4096)})
	// Only the header goes out: the target must refuse the PDU from its
	// length alone, before it reads any data.
	var pb bytes.Buffer
	pw := bufio.NewWriter(&pb)
	h.must(pdu.NewEncoder(pw).WriteCapsuleCmd(&sqe, append(data, make([]byte, 4096)...)))
	h.must(pw.Flush())
	_, err := h.bw.Write(pb.Bytes()[:pdu.CapsuleCmdLen])
	h.must(err)
	h.flush()
	h.expectTerm(pdu.FESDataLimitExceeded, 4)
}

// TestResponseSentWhileOthersHang: a response written while other commands
// are in the target is sent even if none of them ever responds. Both sides
// hold their flush back for a moment while other commands are in flight,
// so that responses (capsules) ready at the same time share one system
// call; whoever holds the buffer must still send it. Here a write hangs in
// the device while reads complete on the same queue. (The write is larger
// than inlineExecMax, so that a worker runs it, not the reader.)
func TestResponseSentWhileOthersHang(t *testing.T) {
	mem, err := bdev.NewMalloc(1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	dev := &gatedDevice{Device: mem, held: make(chan struct{}, 1), gate: make(chan struct{})}
	_, _, addr := serveDevice(t, dev)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, ns := connectGo(ctx, t, addr, initiator.Options{IOQueues: 1, QueueDepth: 8})
	wrote := make(chan error, 1)
	go func() {
		_, err := ns.WriteAt(bytes.Repeat([]byte{0x5a}, 2*inlineExecMax), 0)
		wrote <- err
	}()
	<-dev.held
	// Reads, alone and several at a time, while the write hangs.
	for round := range 20 {
		n := 1 + round%4
		errs := make(chan error, n)
		for i := range n {
			go func() {
				_, err := ns.ReadAt(make([]byte, 4096), int64(2*inlineExecMax+i*4096))
				errs <- err
			}()
		}
		for range n {
			select {
			case err := <-errs:
				if err != nil {
					t.Fatalf("round %d: read: %v", round, err)
				}
			case <-ctx.Done():
				t.Fatalf("round %d: a read's response never came while a write hung in the device", round)
			}
		}
	}
	close(dev.gate)
	if err := <-wrote; err != nil {
		t.Fatalf("the write, once let through: %v", err)
	}
}
