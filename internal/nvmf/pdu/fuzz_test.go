package pdu

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

const fuzzMaxData = 64 << 10

// FuzzDecode feeds arbitrary bytes to the decoder, with and without
// digests: it must never panic, never report more data than its limit, and
// always make progress or stop.
func FuzzDecode(f *testing.F) {
	for _, s := range seedStreams() {
		f.Add(s, false, false)
		f.Add(s, true, true)
	}
	f.Fuzz(func(t *testing.T, b []byte, hd, dd bool) {
		d := NewDecoder(bytes.NewReader(b), fuzzMaxData)
		d.HeaderDigest, d.DataDigest = hd, dd
		var sqe SQE
		for range 64 {
			h, err := d.Next()
			if err != nil {
				var pe *Error
				if errors.As(err, &pe) && (pe.FES == 0 || pe.FES > FESUnsupportedParameter) {
					t.Fatalf("FES %d out of range", pe.FES)
				}
				return
			}
			if HeaderLen(h.Type) != int(h.HLen) {
				t.Fatalf("accepted %v with HLEN %d", h.Type, h.HLen)
			}
			n := d.DataLen()
			if n < 0 || n > fuzzMaxData {
				t.Fatalf("data length %d beyond the limit", n)
			}
			switch h.Type {
			case TypeCapsuleCmd:
				d.SQE(&sqe)
				_ = sqe.SGL()
			case TypeCapsuleResp:
				_ = d.CQE()
			case TypeH2CData, TypeC2HData:
				if dh := d.DataHeader(); int(dh.DataL) != n {
					t.Fatalf("DATAL %d but %d bytes of data", dh.DataL, n)
				}
			case TypeR2T:
				_ = d.R2T()
			case TypeICReq:
				_ = d.ICReq()
			case TypeICResp:
				_ = d.ICResp()
			case TypeH2CTermReq, TypeC2HTermReq:
				if tr := d.TermReq(); len(tr.Data) > MaxTermReqData {
					t.Fatalf("TermReq data %d bytes", len(tr.Data))
				}
			}
			if n > 0 {
				err := d.ReadData(make([]byte, n))
				var dde *DataDigestError
				if err != nil && !errors.As(err, &dde) {
					if err != io.ErrUnexpectedEOF {
						t.Fatalf("ReadData: %v", err)
					}
					return
				}
			}
		}
	})
}

// FuzzConnectData decodes arbitrary Connect data.
func FuzzConnectData(f *testing.F) {
	b := make([]byte, ConnectDataLen)
	(&ConnectData{CNTLID: 0xFFFF, SubNQN: "nqn.2024-11.io.nexstor:replica:x", HostNQN: "nqn.2014-08.org.nvmexpress:uuid:1"}).Marshal(b)
	f.Add(b)
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		cd, ok := UnmarshalConnectData(b)
		if ok != (len(b) >= ConnectDataLen) {
			t.Fatalf("ok %v for %d bytes", ok, len(b))
		}
		if len(cd.SubNQN) > NQNLen || len(cd.HostNQN) > NQNLen {
			t.Fatal("NQN longer than its field")
		}
	})
}

// seedStreams returns valid PDU streams of every type.
func seedStreams() [][]byte {
	var out [][]byte
	for _, dg := range []bool{false, true} {
		e, bw, buf := pipe(dg, dg, 0)
		var sqe SQE
		sqe.SetOpcode(1)
		sqe.SetSGL(SGL{Length: 8, Type: SGLDataBlockOffset})
		e.WriteCapsuleCmd(&sqe, []byte("12345678"))
		e.WriteCapsuleResp(&CQE{CID: 1})
		e.WriteR2T(R2T{CCCID: 1, TTag: 1, R2TL: 512})
		e.WriteH2CData(DataHeader{CCCID: 1, TTag: 1}, FlagLast, make([]byte, 512))
		e.WriteC2HData(DataHeader{CCCID: 1}, FlagLast|FlagSuccess, make([]byte, 512))
		e.WriteTermReq(TypeC2HTermReq, TermReq{FES: 1, Data: []byte{1, 2, 3}})
		bw.Flush()
		out = append(out, bytes.Clone(buf.Bytes()))
	}
	e, bw, buf := pipe(false, false, 0)
	e.WriteICReq(ICReq{HeaderDigest: true, DataDigest: true})
	e.WriteICResp(ICResp{MaxH2CData: 1 << 20})
	bw.Flush()
	out = append(out, bytes.Clone(buf.Bytes()))
	return out
}
