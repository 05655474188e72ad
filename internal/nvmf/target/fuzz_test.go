package target

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
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
	tgt := New(nil)
	sub, err := tgt.AddSubsystem(subNQN, SubsystemOptions{AllowAnyHost: true})
	if err != nil {
		f.Fatal(err)
	}
	dev, err := bdev.NewMalloc(1<<20, 512)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := sub.AddNamespace(dev, NamespaceOptions{UUID: [16]byte{1}}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		host, ctrl := net.Pipe()
		q := newQueue(tgt, ctrl, false)
		done := make(chan struct{})
		go func() { q.run(); close(done) }()
		go io.Copy(io.Discard, host)
		host.SetWriteDeadline(time.Now().Add(2 * time.Second))
		host.Write(b)
		host.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("connection handler did not finish after the host closed")
		}
	})
}

// connectionSeeds are valid host streams: ICReq, Connect, enable, and a few
// admin and I/O commands.
func connectionSeeds() [][]byte {
	var out [][]byte
	for _, dg := range []bool{false, true} {
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
		s = pdu.SQE{}
		s.SetOpcode(nvme.AdminAsyncEvent)
		cmd(&s, nil, 0)
		bw.Flush()
		out = append(out, bytes.Clone(buf.Bytes()))
	}
	return out
}
