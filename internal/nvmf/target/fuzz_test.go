package target

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/claimtest"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// FuzzConnection feeds a whole connection's worth of host bytes to the
// target: after the ICReq, anything may follow (commands with hostile
// fields, bad data lengths, garbage). The target must never panic, and must
// finish with the connection once the host goes away.
func FuzzConnection(f *testing.F) {
	for _, s := range connectionSeeds() {
		f.Add(s)
	}
	tgt, _ := fuzzTarget(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		host := startConnection(tgt)
		host.SetWriteDeadline(time.Now().Add(2 * time.Second))
		host.Write(b)
		host.close(t)
	})
}

// fuzzTarget is the target FuzzConnection drives: one subsystem whose
// namespace 1 takes claims, so that claim commands reach a device.
func fuzzTarget(tb testing.TB) (*Target, *claimtest.Device) {
	tgt := New(nil)
	sub, err := tgt.AddSubsystem(subNQN, SubsystemOptions{AllowAnyHost: true})
	if err != nil {
		tb.Fatal(err)
	}
	dev, err := bdev.NewMalloc(1<<20, 512)
	if err != nil {
		tb.Fatal(err)
	}
	rep := claimtest.New(dev, bdev.Identity{UUID: [16]byte{1}, NGUID: [16]byte{2}})
	if _, err := sub.AddNamespace(rep, NamespaceOptions{UUID: [16]byte{1}, NGUID: [16]byte{2}}); err != nil {
		tb.Fatal(err)
	}
	return tgt, rep
}

// pipeHost is the host end of an in-memory connection to a target; what the
// target sends is discarded.
type pipeHost struct {
	net.Conn
	done chan struct{}
}

func startConnection(tgt *Target) *pipeHost {
	host, ctrl := net.Pipe()
	q := newQueue(tgt, ctrl, false)
	h := &pipeHost{Conn: host, done: make(chan struct{})}
	go func() { q.run(); close(h.done) }()
	go io.Copy(io.Discard, host)
	return h
}

// close hangs up and checks that the target finishes with the connection.
func (h *pipeHost) close(t *testing.T) {
	t.Helper()
	h.Conn.Close()
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		t.Fatal("connection handler did not finish after the host closed")
	}
}

// TestConnectionSeedsClaim: the seed streams reach the claim paths (a claim,
// a raise and a release of namespace 1), so that fuzzing starts from them.
func TestConnectionSeedsClaim(t *testing.T) {
	tgt, rep := fuzzTarget(t)
	defer tgt.Close()
	for i, s := range connectionSeeds() {
		host := startConnection(tgt)
		host.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := host.Write(s); err != nil {
			t.Fatal(err)
		}
		// The admin workers execute the claims after the reader took
		// them: wait, then check that the release came last.
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, _ := rep.ClaimState(context.Background())
			if rep.Claims() == int64(i+1) && st.Owner == uuid.Nil && st.Epoch == uint64(10*i+2) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("seed %d: %d claims, state %+v; want claim, raise to %d, release", i, rep.Claims(), st, 10*i+2)
			}
			time.Sleep(time.Millisecond)
		}
		host.close(t)
	}
}

// connectionSeeds are valid host streams: ICReq, Connect, enable, and a few
// admin and I/O commands.
func connectionSeeds() [][]byte {
	var out [][]byte
	for d, dg := range []bool{false, true} {
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		e := pdu.NewEncoder(bw)
		e.WriteICReq(pdu.ICReq{HeaderDigest: dg, DataDigest: dg})
		e.HeaderDigest, e.DataDigest = dg, dg
		cid := uint16(0)
		cmd := func(s *pdu.SQE, data []byte, xfer uint32) {
			cid++
			s.SetCID(cid)
			s.SetFlags(pdu.PSDTSGL)
			if len(data) > 0 {
				s.SetSGL(pdu.SGL{Type: pdu.SGLDataBlockOffset, Length: uint32(len(data))})
			} else {
				s.SetSGL(pdu.SGL{Type: pdu.SGLTransportDataBlock, Length: xfer})
			}
			e.WriteCapsuleCmd(s, data)
		}
		var s pdu.SQE
		s.SetOpcode(nvme.Fabrics)
		s.SetFCType(nvme.FctConnect)
		s.SetCDW(11, 31)
		s.SetCDW(12, 1000)
		cd := make([]byte, pdu.ConnectDataLen)
		(&pdu.ConnectData{CNTLID: 0xFFFF, SubNQN: subNQN, HostNQN: hostNQN}).Marshal(cd)
		cmd(&s, cd, 0)
		s = pdu.SQE{}
		s.SetOpcode(nvme.Fabrics)
		s.SetFCType(nvme.FctPropertySet)
		s.SetCDW(11, nvme.PropCC)
		s[48] = 1
		cmd(&s, nil, 0)
		for _, cns := range []uint32{nvme.CNSController, nvme.CNSNamespace, nvme.CNSActiveNSList, nvme.CNSNSDescList} {
			s = pdu.SQE{}
			s.SetOpcode(nvme.AdminIdentify)
			s.SetNSID(1)
			s.SetCDW(10, cns)
			cmd(&s, nil, 4096)
		}
		s = pdu.SQE{}
		s.SetOpcode(nvme.AdminGetLogPage)
		s.SetCDW(10, nvme.LogSMART|(512/4-1)<<16)
		cmd(&s, nil, 512)
		s = pdu.SQE{}
		s.SetOpcode(nvme.AdminSetFeatures)
		s.SetCDW(10, nvme.FeatNumQueues)
		s.SetCDW(11, 3|3<<16)
		cmd(&s, nil, 0)
		// Claim namespace 1, raise, release, reading its claim state
		// after each; each stream at higher epochs than the last.
		for i, op := range []nvme.ClaimOp{nvme.ClaimOpClaim, nvme.ClaimOpRaise, nvme.ClaimOpRelease} {
			s = pdu.SQE{}
			s.SetOpcode(nvme.AdminSetFeatures)
			s.SetNSID(1)
			s.SetCDW(10, nvme.FeatClaim)
			data := make([]byte, nvme.ClaimCommandLen)
			(&nvme.ClaimCommand{Op: op, Owner: [16]byte{0xAB}, Epoch: uint64(10*d + i + 1)}).Marshal(data)
			cmd(&s, data, 0)
			s = pdu.SQE{}
			s.SetOpcode(nvme.AdminGetLogPage)
			s.SetNSID(1)
			s.SetCDW(10, nvme.LogClaim|(nvme.ClaimLogLen/4-1)<<16)
			cmd(&s, nil, nvme.ClaimLogLen)
		}
		s = pdu.SQE{}
		s.SetOpcode(nvme.AdminAsyncEvent)
		cmd(&s, nil, 0)
		bw.Flush()
		out = append(out, bytes.Clone(buf.Bytes()))
	}
	return out
}
