package pdu

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// Decoder reads PDUs from a byte stream. It is not safe for concurrent use:
// one reader goroutine owns it.
//
// Next reads and validates one PDU header (and its header digest); the data,
// if any, must then be consumed with ReadData or DiscardData before the next
// call (Next discards leftovers itself). No length from the wire causes an
// allocation: data lands in caller buffers, and data longer than MaxData is
// rejected before it is read.
type Decoder struct {
	r io.Reader
	// HeaderDigest and DataDigest are the negotiated digest settings; both
	// are false until the ICReq/ICResp exchange enables them.
	HeaderDigest, DataDigest bool
	// MaxData bounds the data of any one PDU, in bytes.
	MaxData uint32
	// ReadFull, when set, reads PDU data (ReadData) in place of io.ReadFull
	// on the decoder's reader. It must read exactly len(p) bytes of the same
	// stream, starting with what that reader buffers: sockread's
	// Reader.ReadFull on the same bufio.Reader, which waits for long data
	// with one wake-up.
	ReadFull func(p []byte) (int, error)

	hdr     Header
	buf     [MaxHeaderLen]byte
	term    [MaxTermReqData]byte
	termLen int
	dataLen int // data bytes of the current PDU not yet consumed (0: none)
	pad     int // padding bytes before the data
	ddgst   bool
}

// NewDecoder returns a decoder reading from r that accepts PDU data up to
// maxData bytes.
func NewDecoder(r io.Reader, maxData uint32) *Decoder {
	return &Decoder{r: r, MaxData: maxData}
}

func hdrErr(fei uint32, format string, args ...any) *Error {
	return &Error{FES: FESInvalidHeaderField, FEI: fei, Msg: fmt.Sprintf(format, args...)}
}

// Next reads the next PDU header. Errors are *Error for malformed PDUs (the
// connection must then be terminated) or I/O errors from the stream.
func (d *Decoder) Next() (Header, error) {
	if d.dataLen > 0 {
		if err := d.DiscardData(); err != nil {
			var dd *DataDigestError
			if !errors.As(err, &dd) {
				return Header{}, err
			}
		}
	}
	d.termLen = 0
	if _, err := io.ReadFull(d.r, d.buf[:CommonHeaderLen]); err != nil {
		return Header{}, err
	}
	h := UnmarshalHeader(d.buf[:])
	d.hdr = h
	hlen := HeaderLen(h.Type)
	if hlen == 0 {
		return h, hdrErr(0, "unknown PDU type %#x", uint8(h.Type))
	}
	if int(h.HLen) != hlen {
		return h, hdrErr(2, "%v HLEN %d, want %d", h.Type, h.HLen, hlen)
	}
	hd, dd := false, false
	if digestible(h.Type) {
		hd = h.Flags&FlagHDGST != 0
		dd = h.Flags&FlagDDGST != 0
		if hd != d.HeaderDigest {
			return h, hdrErr(1, "%v HDGSTF %v, but header digests are %s", h.Type, hd, onOff(d.HeaderDigest))
		}
		if dd && !d.DataDigest {
			return h, hdrErr(1, "%v DDGSTF set, but data digests are off", h.Type)
		}
	} else if h.Flags&(FlagHDGST|FlagDDGST) != 0 {
		return h, hdrErr(1, "%v with digest flags %#x", h.Type, h.Flags)
	}
	hdrTotal := hlen
	if hd {
		hdrTotal += DigestLen
	}
	if h.PLen < uint32(hdrTotal) {
		return h, hdrErr(4, "%v PLEN %d shorter than its header (%d)", h.Type, h.PLen, hdrTotal)
	}
	d.dataLen, d.pad, d.ddgst = 0, 0, false
	switch {
	case h.Type == TypeH2CTermReq || h.Type == TypeC2HTermReq:
		if h.PLen > uint32(hlen+MaxTermReqData) {
			return h, hdrErr(4, "%v PLEN %d exceeds %d", h.Type, h.PLen, hlen+MaxTermReqData)
		}
		d.termLen = int(h.PLen) - hlen
	case !hasData(h.Type) || h.PLen == uint32(hdrTotal):
		if h.PDO != 0 {
			return h, hdrErr(3, "%v without data has PDO %d", h.Type, h.PDO)
		}
		if h.PLen != uint32(hdrTotal) {
			return h, hdrErr(4, "%v PLEN %d, want %d", h.Type, h.PLen, hdrTotal)
		}
		if h.Type == TypeH2CData || h.Type == TypeC2HData {
			return h, hdrErr(4, "%v without data", h.Type)
		}
	default:
		if int(h.PDO) < hdrTotal {
			return h, hdrErr(3, "%v PDO %d inside its header (%d bytes)", h.Type, h.PDO, hdrTotal)
		}
		rest := h.PLen - uint32(h.PDO)
		if dd {
			if rest < DigestLen {
				return h, hdrErr(4, "%v PLEN %d leaves no room for the data digest", h.Type, h.PLen)
			}
			rest -= DigestLen
		}
		if rest == 0 || h.PLen < uint32(h.PDO) {
			return h, hdrErr(4, "%v PLEN %d and PDO %d leave no data", h.Type, h.PLen, h.PDO)
		}
		if rest > d.MaxData {
			return h, &Error{FES: FESDataLimitExceeded, FEI: 4, Msg: fmt.Sprintf("%v carries %d bytes of data, limit %d", h.Type, rest, d.MaxData)}
		}
		d.pad = int(h.PDO) - hdrTotal
		d.ddgst = dd
		d.dataLen = int(rest)
	}
	if _, err := io.ReadFull(d.r, d.buf[CommonHeaderLen:hdrTotal]); err != nil {
		d.dataLen = 0
		return h, unexpected(err)
	}
	if hd {
		want := Digest(d.buf[:hlen])
		got := binary.LittleEndian.Uint32(d.buf[hlen:])
		if got != want {
			d.dataLen = 0
			return h, &Error{FES: FESHeaderDigestError, Msg: fmt.Sprintf("%v header digest %#08x, computed %#08x", h.Type, got, want)}
		}
	}
	switch h.Type {
	case TypeH2CData, TypeC2HData:
		if dl := binary.LittleEndian.Uint32(d.buf[16:]); dl != uint32(d.dataLen) {
			n := d.dataLen
			d.dataLen = 0
			return h, hdrErr(16, "%v DATAL %d, but the PDU carries %d bytes", h.Type, dl, n)
		}
	case TypeH2CTermReq, TypeC2HTermReq:
		if _, err := io.ReadFull(d.r, d.term[:d.termLen]); err != nil {
			return h, unexpected(err)
		}
	}
	return h, nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// DataLen is the number of data bytes the current PDU carries (0 if none or
// already consumed).
func (d *Decoder) DataLen() int { return d.dataLen }

// ReadData reads the current PDU's data into dst, which must be exactly
// DataLen bytes, and checks the data digest. A *DataDigestError leaves the
// stream in sync (the PDU was consumed whole).
func (d *Decoder) ReadData(dst []byte) error {
	if len(dst) != d.dataLen {
		return fmt.Errorf("nvme/tcp: ReadData with a %d-byte buffer for %d bytes of data", len(dst), d.dataLen)
	}
	d.dataLen = 0
	if err := d.skip(d.pad); err != nil {
		return err
	}
	var err error
	if d.ReadFull != nil {
		_, err = d.ReadFull(dst)
	} else {
		_, err = io.ReadFull(d.r, dst)
	}
	if err != nil {
		return unexpected(err)
	}
	if d.ddgst {
		if _, err := io.ReadFull(d.r, d.buf[:DigestLen]); err != nil {
			return unexpected(err)
		}
		got := binary.LittleEndian.Uint32(d.buf[:])
		if want := Digest(dst); got != want {
			return &DataDigestError{Got: got, Want: want}
		}
	}
	return nil
}

// skip consumes n bytes (padding) through the scratch buffer.
func (d *Decoder) skip(n int) error {
	for n > 0 {
		c := min(n, len(d.buf))
		if _, err := io.ReadFull(d.r, d.buf[:c]); err != nil {
			return unexpected(err)
		}
		n -= c
	}
	return nil
}

// DiscardData consumes the current PDU's data without keeping it (the data
// digest is still verified).
func (d *Decoder) DiscardData() error {
	n := d.dataLen
	d.dataLen = 0
	if err := d.skip(d.pad); err != nil {
		return err
	}
	crc := uint32(0)
	for n > 0 {
		c := min(n, len(d.buf))
		if _, err := io.ReadFull(d.r, d.buf[:c]); err != nil {
			return unexpected(err)
		}
		crc = UpdateDigest(crc, d.buf[:c])
		n -= c
	}
	if d.ddgst {
		if _, err := io.ReadFull(d.r, d.buf[:DigestLen]); err != nil {
			return unexpected(err)
		}
		if got := binary.LittleEndian.Uint32(d.buf[:]); got != crc {
			return &DataDigestError{Got: got, Want: crc}
		}
	}
	return nil
}

// RawHeader returns the bytes of the current PDU header as read (at most
// HLEN bytes; fewer if decoding failed early). It is what a TermReq quotes.
// The slice is valid until the next call to Next.
func (d *Decoder) RawHeader() []byte {
	n := int(d.hdr.HLen)
	if n < CommonHeaderLen || n > len(d.buf) {
		n = CommonHeaderLen
	}
	return d.buf[:n]
}

// ICReq decodes the current PDU as an ICReq.
func (d *Decoder) ICReq() ICReq {
	b := d.buf[:]
	return ICReq{
		PFV: binary.LittleEndian.Uint16(b[8:]), HPDA: b[10],
		HeaderDigest: b[11]&1 != 0, DataDigest: b[11]&2 != 0,
		MaxR2T: binary.LittleEndian.Uint32(b[12:]),
	}
}

// ICResp decodes the current PDU as an ICResp.
func (d *Decoder) ICResp() ICResp {
	b := d.buf[:]
	return ICResp{
		PFV: binary.LittleEndian.Uint16(b[8:]), CPDA: b[10],
		HeaderDigest: b[11]&1 != 0, DataDigest: b[11]&2 != 0,
		MaxH2CData: binary.LittleEndian.Uint32(b[12:]),
	}
}

// TermReq decodes the current PDU as a TermReq; Data aliases the decoder.
func (d *Decoder) TermReq() TermReq {
	b := d.buf[:]
	return TermReq{FES: binary.LittleEndian.Uint16(b[8:]), FEI: binary.LittleEndian.Uint32(b[10:]), Data: d.term[:d.termLen]}
}

// SQE decodes the current PDU as a CapsuleCmd and copies its command into s.
func (d *Decoder) SQE(s *SQE) { copy(s[:], d.buf[CommonHeaderLen:CommonHeaderLen+SQELen]) }

// CQE decodes the current PDU as a CapsuleResp.
func (d *Decoder) CQE() CQE { return UnmarshalCQE(d.buf[CommonHeaderLen:]) }

// DataHeader decodes the current PDU as an H2CData or C2HData.
func (d *Decoder) DataHeader() DataHeader {
	b := d.buf[:]
	return DataHeader{
		CCCID: binary.LittleEndian.Uint16(b[8:]), TTag: binary.LittleEndian.Uint16(b[10:]),
		DataO: binary.LittleEndian.Uint32(b[12:]), DataL: binary.LittleEndian.Uint32(b[16:]),
	}
}

// R2T decodes the current PDU as an R2T.
func (d *Decoder) R2T() R2T {
	b := d.buf[:]
	return R2T{
		CCCID: binary.LittleEndian.Uint16(b[8:]), TTag: binary.LittleEndian.Uint16(b[10:]),
		R2TO: binary.LittleEndian.Uint32(b[12:]), R2TL: binary.LittleEndian.Uint32(b[16:]),
	}
}

// Encoder writes PDUs to a buffered stream; the caller flushes it. It is
// not safe for concurrent use.
type Encoder struct {
	w *bufio.Writer
	// HeaderDigest and DataDigest are the negotiated digest settings.
	HeaderDigest, DataDigest bool
	// DataAlign is the peer's required data alignment in dwords, 0's based
	// (HPDA for a controller, CPDA for a host): PDO is padded to it.
	DataAlign uint8
	// Direct, when set, is the stream under w (the connection). A PDU
	// whose data is DirectMin bytes or more and does not fit in w's free
	// space is then written at once, after whatever w holds, with one
	// vectored write of its header, data and digest (net.Buffers: writev
	// on a TCP connection), instead of being copied through w in several
	// system calls. Nil writes everything through w.
	Direct io.Writer

	buf  [MaxHeaderLen + 128]byte
	tail [2*DigestLen + CapsuleRespLen]byte // data digest, then a CapsuleResp
	iovs [3][]byte
	iov  net.Buffers
}

// DirectMin is the least data, in bytes, that Encoder.Direct writes
// directly: below it, copying into the buffer costs less than a system call.
const DirectMin = 32 << 10

// NewEncoder returns an encoder writing to w.
func NewEncoder(w *bufio.Writer) *Encoder { return &Encoder{w: w} }

// Writer returns the underlying buffered writer (to Flush it).
func (e *Encoder) Writer() *bufio.Writer { return e.w }

// frame completes the header of a PDU whose specific header is in
// e.buf[8:hlen] and that carries dataLen bytes of data: common header,
// header digest and PDO padding. It returns how many bytes of e.buf go
// before the data and whether a data digest follows it.
func (e *Encoder) frame(t Type, flags uint8, hlen, dataLen int) (int, bool, error) {
	hd := e.HeaderDigest && digestible(t)
	dd := e.DataDigest && digestible(t) && dataLen > 0
	hdrTotal := hlen
	if hd {
		flags |= FlagHDGST
		hdrTotal += DigestLen
	}
	pdo := 0
	plen := hdrTotal
	if dataLen > 0 {
		if t == TypeH2CTermReq || t == TypeC2HTermReq {
			pdo = 0
			plen += dataLen
		} else {
			pdo = hdrTotal
			if e.DataAlign > 0 {
				a := (int(e.DataAlign) + 1) * 4
				pdo = (pdo + a - 1) / a * a
			}
			if pdo > 255 {
				return 0, false, fmt.Errorf("nvme/tcp: data alignment %d puts PDO beyond 255", e.DataAlign)
			}
			plen = pdo + dataLen
			if dd {
				flags |= FlagDDGST
				plen += DigestLen
			}
		}
	}
	Header{Type: t, Flags: flags, HLen: uint8(hlen), PDO: uint8(pdo), PLen: uint32(plen)}.Marshal(e.buf[:])
	if hd {
		binary.LittleEndian.PutUint32(e.buf[hlen:], Digest(e.buf[:hlen]))
	}
	end := hdrTotal
	if pdo > hdrTotal {
		clear(e.buf[hdrTotal:pdo])
		end = pdo
	}
	return end, dd, nil
}

// direct says whether a PDU of hdr header bytes and n data bytes goes out
// through Direct.
func (e *Encoder) direct(hdr, n int) bool {
	return e.Direct != nil && n >= DirectMin && hdr+n > e.w.Available()
}

// writeDirect flushes w, then writes e.buf[:hdr], data and tail with one
// vectored write.
func (e *Encoder) writeDirect(hdr int, data, tail []byte) error {
	if e.w.Buffered() > 0 {
		if err := e.w.Flush(); err != nil {
			return err
		}
	}
	e.iovs = [3][]byte{e.buf[:hdr], data, tail}
	n := 3
	if len(tail) == 0 {
		n = 2
	}
	e.iov = e.iovs[:n]
	_, err := e.iov.WriteTo(e.Direct)
	e.iovs = [3][]byte{}
	e.iov = nil
	return err
}

// write frames the header already in e.buf[8:hlen] with data.
func (e *Encoder) write(t Type, flags uint8, hlen int, data []byte) error {
	end, dd, err := e.frame(t, flags, hlen, len(data))
	if err != nil {
		return err
	}
	if e.direct(end, len(data)) {
		var tail []byte
		if dd {
			binary.LittleEndian.PutUint32(e.tail[:], Digest(data))
			tail = e.tail[:DigestLen]
		}
		return e.writeDirect(end, data, tail)
	}
	if _, err := e.w.Write(e.buf[:end]); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := e.w.Write(data); err != nil {
		return err
	}
	if dd {
		var dg [DigestLen]byte
		binary.LittleEndian.PutUint32(dg[:], Digest(data))
		if _, err := e.w.Write(dg[:]); err != nil {
			return err
		}
	}
	return nil
}

func (e *Encoder) zero(hlen int) { clear(e.buf[CommonHeaderLen:hlen]) }

// WriteICReq writes an ICReq (digests never apply to it).
func (e *Encoder) WriteICReq(r ICReq) error {
	e.zero(ICReqLen)
	binary.LittleEndian.PutUint16(e.buf[8:], r.PFV)
	e.buf[10] = r.HPDA
	e.buf[11] = digestBits(r.HeaderDigest, r.DataDigest)
	binary.LittleEndian.PutUint32(e.buf[12:], r.MaxR2T)
	return e.write(TypeICReq, 0, ICReqLen, nil)
}

// WriteICResp writes an ICResp.
func (e *Encoder) WriteICResp(r ICResp) error {
	e.zero(ICRespLen)
	binary.LittleEndian.PutUint16(e.buf[8:], r.PFV)
	e.buf[10] = r.CPDA
	e.buf[11] = digestBits(r.HeaderDigest, r.DataDigest)
	binary.LittleEndian.PutUint32(e.buf[12:], r.MaxH2CData)
	return e.write(TypeICResp, 0, ICRespLen, nil)
}

func digestBits(h, d bool) uint8 {
	var b uint8
	if h {
		b |= 1
	}
	if d {
		b |= 2
	}
	return b
}

// WriteTermReq writes an H2CTermReq or C2HTermReq; Data is cut to
// MaxTermReqData bytes.
func (e *Encoder) WriteTermReq(t Type, r TermReq) error {
	if t != TypeH2CTermReq && t != TypeC2HTermReq {
		return fmt.Errorf("nvme/tcp: WriteTermReq with type %v", t)
	}
	e.zero(TermReqLen)
	binary.LittleEndian.PutUint16(e.buf[8:], r.FES)
	binary.LittleEndian.PutUint32(e.buf[10:], r.FEI)
	data := r.Data
	if len(data) > MaxTermReqData {
		data = data[:MaxTermReqData]
	}
	return e.write(t, 0, TermReqLen, data)
}

// WriteCapsuleCmd writes a command capsule with optional in-capsule data.
func (e *Encoder) WriteCapsuleCmd(s *SQE, data []byte) error {
	copy(e.buf[CommonHeaderLen:], s[:])
	return e.write(TypeCapsuleCmd, 0, CapsuleCmdLen, data)
}

// WriteCapsuleResp writes a response capsule.
func (e *Encoder) WriteCapsuleResp(c *CQE) error {
	c.Marshal(e.buf[CommonHeaderLen:])
	return e.write(TypeCapsuleResp, 0, CapsuleRespLen, nil)
}

func (e *Encoder) putDataHeader(h DataHeader) {
	e.zero(DataHeaderLen)
	binary.LittleEndian.PutUint16(e.buf[8:], h.CCCID)
	binary.LittleEndian.PutUint16(e.buf[10:], h.TTag)
	binary.LittleEndian.PutUint32(e.buf[12:], h.DataO)
	binary.LittleEndian.PutUint32(e.buf[16:], uint32(h.DataL))
}

// WriteH2CData writes an H2CData PDU carrying data; h.DataL is set from
// len(data). flags may include FlagLast.
func (e *Encoder) WriteH2CData(h DataHeader, flags uint8, data []byte) error {
	h.DataL = uint32(len(data))
	e.putDataHeader(h)
	return e.write(TypeH2CData, flags&FlagLast, DataHeaderLen, data)
}

// WriteC2HData writes a C2HData PDU carrying data; h.TTag is ignored and
// flags may include FlagLast and FlagSuccess (which requires FlagLast).
func (e *Encoder) WriteC2HData(h DataHeader, flags uint8, data []byte) error {
	h.DataL = uint32(len(data))
	h.TTag = 0
	e.putDataHeader(h)
	return e.write(TypeC2HData, flags&(FlagLast|FlagSuccess), DataHeaderLen, data)
}

// WriteC2HDataResp writes the whole data of a command in one C2HData PDU
// (FlagLast), then its CapsuleResp c, or none when success is set: the
// C2HData then carries FlagSuccess, which the host must allow (SQ flow
// control disabled) and which requires c to be a plain success. Through
// Direct, both PDUs go out in one vectored write.
func (e *Encoder) WriteC2HDataResp(h DataHeader, success bool, data []byte, c *CQE) error {
	flags := FlagLast
	if success {
		flags |= FlagSuccess
	}
	if e.Direct == nil || len(data) < DirectMin {
		if err := e.WriteC2HData(h, flags, data); err != nil || success {
			return err
		}
		return e.WriteCapsuleResp(c)
	}
	// The CapsuleResp is framed first, in e.buf, and moved to the tail.
	var tail []byte
	if !success {
		c.Marshal(e.buf[CommonHeaderLen:])
		n, _, err := e.frame(TypeCapsuleResp, 0, CapsuleRespLen, 0)
		if err != nil {
			return err
		}
		tail = e.tail[DigestLen : DigestLen+copy(e.tail[DigestLen:], e.buf[:n])]
	}
	h.DataL = uint32(len(data))
	h.TTag = 0
	e.putDataHeader(h)
	end, dd, err := e.frame(TypeC2HData, flags, DataHeaderLen, len(data))
	if err != nil {
		return err
	}
	if !e.direct(end, len(data)+len(tail)) {
		// Room in the buffer after all: through it, as WriteC2HData.
		if _, err := e.w.Write(e.buf[:end]); err != nil {
			return err
		}
		if _, err := e.w.Write(data); err != nil {
			return err
		}
		if dd {
			var dg [DigestLen]byte
			binary.LittleEndian.PutUint32(dg[:], Digest(data))
			if _, err := e.w.Write(dg[:]); err != nil {
				return err
			}
		}
		_, err := e.w.Write(tail)
		return err
	}
	if dd {
		binary.LittleEndian.PutUint32(e.tail[:], Digest(data))
		if tail == nil {
			tail = e.tail[:DigestLen]
		} else {
			tail = e.tail[:DigestLen+len(tail)]
		}
	}
	return e.writeDirect(end, data, tail)
}

// WriteR2T writes an R2T.
func (e *Encoder) WriteR2T(r R2T) error {
	e.zero(R2TLen)
	binary.LittleEndian.PutUint16(e.buf[8:], r.CCCID)
	binary.LittleEndian.PutUint16(e.buf[10:], r.TTag)
	binary.LittleEndian.PutUint32(e.buf[12:], r.R2TO)
	binary.LittleEndian.PutUint32(e.buf[16:], r.R2TL)
	return e.write(TypeR2T, 0, R2TLen, nil)
}
