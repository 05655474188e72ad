package pdu

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// pipe returns an encoder and a decoder over one buffer with the given
// digest settings.
func pipe(hd, dd bool, align uint8) (*Encoder, *bufio.Writer, *bytes.Buffer) {
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	e := NewEncoder(bw)
	e.HeaderDigest, e.DataDigest, e.DataAlign = hd, dd, align
	return e, bw, &buf
}

func decoder(buf *bytes.Buffer, hd, dd bool) *Decoder {
	d := NewDecoder(buf, 1<<20)
	d.HeaderDigest, d.DataDigest = hd, dd
	return d
}

func TestRoundTripAllPDUs(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 300)
	for _, hd := range []bool{false, true} {
		for _, dd := range []bool{false, true} {
			for _, align := range []uint8{0, 7} {
				e, bw, buf := pipe(hd, dd, align)
				var sqe SQE
				sqe.SetOpcode(0x01)
				sqe.SetFlags(PSDTSGL)
				sqe.SetCID(0xBEEF)
				sqe.SetNSID(7)
				sqe.SetSGL(SGL{Address: 0, Length: uint32(len(data)), Type: SGLDataBlockOffset})
				sqe.SetCDW(10, 0x11223344)
				sqe.SetCDW(15, 0x55667788)
				cqe := CQE{Result: 0x0102030405060708, SQHD: 9, SQID: 3, CID: 0xBEEF, Status: 0x4184}
				must(t, e.WriteICReq(ICReq{PFV: 0, HPDA: 3, HeaderDigest: hd, DataDigest: dd, MaxR2T: 5}))
				must(t, e.WriteICResp(ICResp{PFV: 0, CPDA: 1, HeaderDigest: hd, DataDigest: dd, MaxH2CData: 131072}))
				must(t, e.WriteCapsuleCmd(&sqe, data))
				must(t, e.WriteCapsuleCmd(&sqe, nil))
				must(t, e.WriteCapsuleResp(&cqe))
				must(t, e.WriteR2T(R2T{CCCID: 1, TTag: 2, R2TO: 4096, R2TL: 8192}))
				must(t, e.WriteH2CData(DataHeader{CCCID: 1, TTag: 2, DataO: 4096}, FlagLast, data[:1000]))
				must(t, e.WriteC2HData(DataHeader{CCCID: 4, DataO: 512}, FlagLast|FlagSuccess, data[:2048]))
				must(t, e.WriteTermReq(TypeC2HTermReq, TermReq{FES: FESHeaderDigestError, FEI: 42, Data: data[:200]}))
				must(t, e.WriteTermReq(TypeH2CTermReq, TermReq{FES: FESDataOutOfRange, FEI: 12}))
				must(t, bw.Flush())

				d := decoder(buf, false, false)
				h := next(t, d, TypeICReq)
				if got := d.ICReq(); got != (ICReq{PFV: 0, HPDA: 3, HeaderDigest: hd, DataDigest: dd, MaxR2T: 5}) || h.PLen != ICReqLen {
					t.Fatalf("ICReq %+v plen %d", got, h.PLen)
				}
				next(t, d, TypeICResp)
				if got := d.ICResp(); got != (ICResp{CPDA: 1, HeaderDigest: hd, DataDigest: dd, MaxH2CData: 131072}) {
					t.Fatalf("ICResp %+v", got)
				}
				d.HeaderDigest, d.DataDigest = hd, dd
				h = next(t, d, TypeCapsuleCmd)
				var got SQE
				d.SQE(&got)
				if got != sqe {
					t.Fatalf("SQE mismatch")
				}
				if got.CID() != 0xBEEF || got.NSID() != 7 || got.CDW(10) != 0x11223344 || got.CDW(15) != 0x55667788 || got.SGL() != (SGL{Length: uint32(len(data)), Type: SGLDataBlockOffset}) {
					t.Fatalf("SQE fields %x", got)
				}
				if align > 0 && int(h.PDO)%32 != 0 {
					t.Fatalf("PDO %d not aligned to 32", h.PDO)
				}
				readData(t, d, data)
				next(t, d, TypeCapsuleCmd)
				if d.DataLen() != 0 {
					t.Fatal("capsule without data reports data")
				}
				next(t, d, TypeCapsuleResp)
				if got := d.CQE(); got != cqe {
					t.Fatalf("CQE %+v, want %+v", got, cqe)
				}
				next(t, d, TypeR2T)
				if got := d.R2T(); got != (R2T{CCCID: 1, TTag: 2, R2TO: 4096, R2TL: 8192}) {
					t.Fatalf("R2T %+v", got)
				}
				h = next(t, d, TypeH2CData)
				if got := d.DataHeader(); got != (DataHeader{CCCID: 1, TTag: 2, DataO: 4096, DataL: 1000}) || h.Flags&FlagLast == 0 {
					t.Fatalf("H2CData %+v flags %#x", got, h.Flags)
				}
				readData(t, d, data[:1000])
				h = next(t, d, TypeC2HData)
				if got := d.DataHeader(); got != (DataHeader{CCCID: 4, DataO: 512, DataL: 2048}) || h.Flags&(FlagLast|FlagSuccess) != FlagLast|FlagSuccess {
					t.Fatalf("C2HData %+v flags %#x", got, h.Flags)
				}
				// Discarding also checks the digest and keeps the stream in sync.
				must(t, d.DiscardData())
				next(t, d, TypeC2HTermReq)
				if tr := d.TermReq(); tr.FES != FESHeaderDigestError || tr.FEI != 42 || !bytes.Equal(tr.Data, data[:MaxTermReqData]) {
					t.Fatalf("TermReq %+v", tr)
				}
				next(t, d, TypeH2CTermReq)
				if tr := d.TermReq(); tr.FES != FESDataOutOfRange || tr.FEI != 12 || len(tr.Data) != 0 {
					t.Fatalf("TermReq %+v", tr)
				}
				if _, err := d.Next(); err != io.EOF {
					t.Fatalf("at end: %v", err)
				}
			}
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func next(t *testing.T, d *Decoder, want Type) Header {
	t.Helper()
	h, err := d.Next()
	if err != nil {
		t.Fatalf("decoding %v: %v", want, err)
	}
	if h.Type != want {
		t.Fatalf("got %v, want %v", h.Type, want)
	}
	return h
}

func readData(t *testing.T, d *Decoder, want []byte) {
	t.Helper()
	got := make([]byte, d.DataLen())
	must(t, d.ReadData(got))
	if !bytes.Equal(got, want) {
		t.Fatalf("data differs (%d bytes, want %d)", len(got), len(want))
	}
}

func TestDigestKnownValue(t *testing.T) {
	// CRC32C check value from RFC 3720 (iSCSI) and the NVMe/TCP spec.
	if got := Digest([]byte("123456789")); got != 0xE3069283 {
		t.Fatalf("CRC32C = %#x", got)
	}
	if got := Digest(make([]byte, 32)); got != 0x8A9136AA {
		t.Fatalf("CRC32C of 32 zero bytes = %#x", got)
	}
}

func TestSGLAndCQEEncoding(t *testing.T) {
	var b [16]byte
	d := SGL{Address: 0x1122334455667788, Length: 0xAABBCCDD, Type: SGLTransportDataBlock}
	d.Marshal(b[:])
	want := []byte{0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xDD, 0xCC, 0xBB, 0xAA, 0, 0, 0, 0x5A}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("SGL bytes % x", b)
	}
	if UnmarshalSGL(b[:]) != d {
		t.Fatal("SGL round trip")
	}
	c := CQE{Status: 0x184 | 1<<14}
	c.Marshal(b[:])
	if binary.LittleEndian.Uint16(b[14:]) != (0x184|1<<14)<<1 {
		t.Fatalf("status field %#x: the phase bit must be bit 0", binary.LittleEndian.Uint16(b[14:]))
	}
	cd := ConnectData{HostID: [16]byte{9}, CNTLID: 0xFFFF, SubNQN: "nqn.a", HostNQN: "nqn.b"}
	buf := make([]byte, ConnectDataLen)
	cd.Marshal(buf)
	if buf[256] != 'n' || buf[512] != 'n' || binary.LittleEndian.Uint16(buf[16:]) != 0xFFFF {
		t.Fatal("connect data layout")
	}
	if got, ok := UnmarshalConnectData(buf); !ok || got != cd {
		t.Fatalf("connect data %+v", got)
	}
}

// TestHostileHeaders checks that malformed headers produce the right FES
// and FEI.
func TestHostileHeaders(t *testing.T) {
	valid := func(hd, dd bool) []byte {
		e, bw, buf := pipe(hd, dd, 0)
		var sqe SQE
		e.WriteCapsuleCmd(&sqe, []byte("data"))
		bw.Flush()
		return buf.Bytes()
	}
	cases := []struct {
		name   string
		mutate func([]byte) []byte
		hd, dd bool
		fes    uint16
		fei    uint32
	}{
		{"unknown type", func(b []byte) []byte { b[0] = 0x0F; return b }, false, false, FESInvalidHeaderField, 0},
		{"wrong hlen", func(b []byte) []byte { b[2] = 80; return b }, false, false, FESInvalidHeaderField, 2},
		{"pdo inside header", func(b []byte) []byte { b[3] = 10; return b }, false, false, FESInvalidHeaderField, 3},
		{"plen shorter than header", func(b []byte) []byte { binary.LittleEndian.PutUint32(b[4:], 20); return b }, false, false, FESInvalidHeaderField, 4},
		{"data too long", func(b []byte) []byte { binary.LittleEndian.PutUint32(b[4:], 1<<30); return b }, false, false, FESDataLimitExceeded, 4},
		{"header digest flag missing", func(b []byte) []byte { return b }, false, false, FESInvalidHeaderField, 1},
		{"bad header digest", func(b []byte) []byte { b[72] ^= 1; return b }, true, false, FESHeaderDigestError, 0},
		{"digest flag without digests", func(b []byte) []byte { b[1] |= FlagDDGST; return b }, false, false, FESInvalidHeaderField, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hd := c.hd
			if c.name == "header digest flag missing" {
				hd = true // decoder expects digests, encoder sent none
			}
			b := c.mutate(valid(c.hd, c.dd))
			d := NewDecoder(bytes.NewReader(b), 64<<10)
			d.HeaderDigest, d.DataDigest = hd, c.dd
			_, err := d.Next()
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want a PDU error", err)
			}
			if pe.FES != c.fes || pe.FEI != c.fei {
				t.Fatalf("FES %d FEI %d, want %d %d (%v)", pe.FES, pe.FEI, c.fes, c.fei, pe)
			}
		})
	}
}

func TestDataDigestErrorKeepsSync(t *testing.T) {
	e, bw, buf := pipe(true, true, 0)
	var sqe SQE
	e.WriteCapsuleCmd(&sqe, []byte("payload!"))
	e.WriteCapsuleResp(&CQE{CID: 5})
	bw.Flush()
	b := buf.Bytes()
	b[CapsuleCmdLen+DigestLen+2] ^= 0xFF // corrupt the data
	d := NewDecoder(bytes.NewReader(b), 4096)
	d.HeaderDigest, d.DataDigest = true, true
	next(t, d, TypeCapsuleCmd)
	err := d.ReadData(make([]byte, d.DataLen()))
	var dde *DataDigestError
	if !errors.As(err, &dde) {
		t.Fatalf("got %v, want a data digest error", err)
	}
	next(t, d, TypeCapsuleResp)
	if d.CQE().CID != 5 {
		t.Fatal("stream out of sync after a data digest error")
	}
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	e, bw, buf := pipe(true, true, 0)
	var sqe SQE
	data := make([]byte, 4096)
	for range 10 {
		e.WriteCapsuleCmd(&sqe, data)
	}
	bw.Flush()
	raw := buf.Bytes()
	r := bytes.NewReader(raw)
	d := NewDecoder(r, 8192)
	d.HeaderDigest, d.DataDigest = true, true
	dst := make([]byte, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(raw)
		for range 10 {
			if _, err := d.Next(); err != nil {
				t.Fatal(err)
			}
			if err := d.ReadData(dst); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per 10 PDUs", allocs)
	}
}

// countingWriter counts the Write calls that reach the stream.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (w *countingWriter) Write(p []byte) (int, error) { w.writes++; return w.Buffer.Write(p) }

// TestDirectWritesSameStream: with Direct set, PDUs with large data go out
// past the buffer, byte for byte the stream the buffered path writes
// (digests, PDO padding, what was buffered before them first).
func TestDirectWritesSameStream(t *testing.T) {
	big := make([]byte, 3*DirectMin)
	for i := range big {
		big[i] = byte(i*13 + 5)
	}
	cqe := CQE{Result: 0, SQHD: 0xFFFF, SQID: 1, CID: 9}
	var sqe SQE
	sqe.SetCID(9)
	sqe.SetSGL(SGL{Length: uint32(len(big)), Type: SGLDataBlockOffset})
	seq := func(e *Encoder, bw *bufio.Writer) {
		must(t, e.WriteCapsuleResp(&cqe)) // buffered ahead of a direct write
		must(t, e.WriteC2HDataResp(DataHeader{CCCID: 9}, false, big, &cqe))
		must(t, e.WriteC2HDataResp(DataHeader{CCCID: 9}, true, big, &cqe))
		must(t, e.WriteC2HDataResp(DataHeader{CCCID: 9}, false, big[:100], &cqe))
		must(t, e.WriteCapsuleCmd(&sqe, big))
		must(t, e.WriteH2CData(DataHeader{CCCID: 9, TTag: 3}, FlagLast, big[:DirectMin]))
		must(t, bw.Flush())
	}
	for _, hd := range []bool{false, true} {
		for _, dd := range []bool{false, true} {
			for _, align := range []uint8{0, 7} {
				var ref bytes.Buffer
				rbw := bufio.NewWriterSize(&ref, 64<<10)
				re := NewEncoder(rbw)
				re.HeaderDigest, re.DataDigest, re.DataAlign = hd, dd, align
				seq(re, rbw)

				var got countingWriter
				dbw := bufio.NewWriterSize(&got, 64<<10)
				de := NewEncoder(dbw)
				de.HeaderDigest, de.DataDigest, de.DataAlign, de.Direct = hd, dd, align, &got
				seq(de, dbw)
				if !bytes.Equal(got.Bytes(), ref.Bytes()) {
					t.Fatalf("hd %v dd %v align %d: direct stream differs from the buffered one (%d and %d bytes)", hd, dd, align, got.Len(), ref.Len())
				}

				// Decodable, with the data intact.
				d := decoder(&got.Buffer, hd, dd)
				next(t, d, TypeCapsuleResp)
				h := next(t, d, TypeC2HData)
				in := make([]byte, len(big))
				must(t, d.ReadData(in))
				if h.Flags&FlagSuccess != 0 || !bytes.Equal(in, big) {
					t.Fatalf("C2HData flags %#x, data intact %v", h.Flags, bytes.Equal(in, big))
				}
				next(t, d, TypeCapsuleResp)
				if c := d.CQE(); c.CID != 9 {
					t.Fatalf("CapsuleResp CID %d", c.CID)
				}
				h = next(t, d, TypeC2HData)
				must(t, d.ReadData(in))
				if h.Flags&(FlagSuccess|FlagLast) != FlagSuccess|FlagLast {
					t.Fatalf("C2HData with SUCCESS: flags %#x", h.Flags)
				}
			}
		}
	}
}

// TestReadFullHook: a decoder with ReadFull set reads PDU data through it,
// exactly the data (padding and digest stay the decoder's), and still
// checks the digest.
func TestReadFullHook(t *testing.T) {
	data := bytes.Repeat([]byte("nexstor!"), 1024)
	for _, dd := range []bool{false, true} {
		e, bw, buf := pipe(false, dd, 7)
		var sqe SQE
		sqe.SetOpcode(0x01)
		sqe.SetFlags(PSDTSGL)
		sqe.SetSGL(SGL{Length: uint32(len(data)), Type: SGLDataBlockOffset})
		must(t, e.WriteCapsuleCmd(&sqe, data))
		must(t, bw.Flush())
		if dd {
			buf.Bytes()[buf.Len()-1] ^= 0xFF // the data digest's last byte
		}
		d := decoder(buf, false, dd)
		var calls, asked int
		d.ReadFull = func(p []byte) (int, error) {
			calls++
			asked += len(p)
			return io.ReadFull(buf, p)
		}
		next(t, d, TypeCapsuleCmd)
		got := make([]byte, d.DataLen())
		err := d.ReadData(got)
		if calls != 1 || asked != len(data) {
			t.Fatalf("data digest %v: ReadFull called %d times for %d bytes, want once for %d", dd, calls, asked, len(data))
		}
		var de *DataDigestError
		if dd && !errors.As(err, &de) {
			t.Fatalf("a corrupted digest read through ReadFull: %v, want a DataDigestError", err)
		}
		if !dd && err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("data digest %v: the data read differ from the data sent", dd)
		}
		if _, err := d.Next(); err != io.EOF {
			t.Fatalf("data digest %v: after the PDU: %v, want EOF", dd, err)
		}
	}
}
