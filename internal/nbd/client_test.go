package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// testClient is a minimal NBD client that speaks the wire protocol directly,
// so that tests can send anything, including what real clients never would.
type testClient struct {
	t          testing.TB
	c          net.Conn
	r          *bufio.Reader
	structured bool
	size       uint64
	flags      uint16
	// readLen remembers the length of outstanding simple-reply reads, which
	// the reply itself does not carry.
	readLen map[uint64]uint32
}

func dialClient(t testing.TB, addr string) *testClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A broken server must fail the test, not hang it.
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &testClient{t: t, c: c, r: bufio.NewReader(c), readLen: map[uint64]uint32{}}
}

func (tc *testClient) write(b []byte) {
	tc.t.Helper()
	if _, err := tc.c.Write(b); err != nil {
		tc.t.Fatalf("write: %v", err)
	}
}

func (tc *testClient) read(n int) []byte {
	tc.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(tc.r, b); err != nil {
		tc.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// greet reads the server greeting and sends the client flags.
func (tc *testClient) greet(cflags uint32) {
	tc.t.Helper()
	b := tc.read(18)
	if m := binary.BigEndian.Uint64(b[0:8]); m != nbdMagic {
		tc.t.Fatalf("greeting magic %#x", m)
	}
	if m := binary.BigEndian.Uint64(b[8:16]); m != optMagic {
		tc.t.Fatalf("greeting option magic %#x", m)
	}
	if f := binary.BigEndian.Uint16(b[16:18]); f != flagFixedNewstyle|flagNoZeroes {
		tc.t.Fatalf("handshake flags %#x", f)
	}
	tc.write(binary.BigEndian.AppendUint32(nil, cflags))
}

func (tc *testClient) sendOpt(opt uint32, data []byte) {
	tc.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	tc.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (tc *testClient) readOptReply() optReply {
	tc.t.Helper()
	h := tc.read(optionReplySize)
	if m := binary.BigEndian.Uint64(h[0:8]); m != optReplyMagic {
		tc.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:12]), typ: binary.BigEndian.Uint32(h[12:16])}
	r.data = tc.read(int(binary.BigEndian.Uint32(h[16:20])))
	return r
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// info sends NBD_OPT_INFO or NBD_OPT_GO and collects the NBD_REP_INFO
// payloads by type until the final reply, which it returns.
func (tc *testClient) info(opt uint32, name string, infos ...uint16) (map[uint16][]byte, optReply) {
	tc.t.Helper()
	tc.sendOpt(opt, infoData(name, infos...))
	got := map[uint16][]byte{}
	for {
		r := tc.readOptReply()
		if r.opt != opt {
			tc.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		if r.typ != repInfo {
			return got, r
		}
		if len(r.data) < 2 {
			tc.t.Fatalf("NBD_REP_INFO of %d bytes", len(r.data))
		}
		t := binary.BigEndian.Uint16(r.data)
		if _, dup := got[t]; dup {
			tc.t.Fatalf("info type %d sent twice", t)
		}
		got[t] = r.data[2:]
	}
}

// open negotiates structured replies (if asked) and enters transmission on
// the named export with NBD_OPT_GO.
func (tc *testClient) open(name string, structured bool) {
	tc.t.Helper()
	tc.greet(flagCFixedNewstyle | flagCNoZeroes)
	if structured {
		tc.sendOpt(optStructuredReply, nil)
		if r := tc.readOptReply(); r.typ != repAck {
			tc.t.Fatalf("NBD_OPT_STRUCTURED_REPLY: reply %#x", r.typ)
		}
		tc.structured = true
	}
	infos, r := tc.info(optGo, name, infoBlockSize)
	if r.typ != repAck {
		tc.t.Fatalf("NBD_OPT_GO %q: reply %#x %s", name, r.typ, r.data)
	}
	exp := infos[infoExport]
	if len(exp) != 10 {
		tc.t.Fatalf("NBD_INFO_EXPORT of %d bytes", len(exp))
	}
	tc.size = binary.BigEndian.Uint64(exp)
	tc.flags = binary.BigEndian.Uint16(exp[8:])
}

func (tc *testClient) send(typ, flags uint16, handle, off uint64, length uint32, payload []byte) {
	tc.t.Helper()
	b := appendRequest(make([]byte, 0, requestSize+len(payload)), request{flags: flags, typ: typ, handle: handle, offset: off, length: length})
	if typ == cmdRead {
		tc.readLen[handle] = length
	}
	tc.write(append(b, payload...))
}

type reply struct {
	handle uint64
	errno  uint32
	data   []byte
	offset uint64 // of the data, structured replies only
	msg    string
}

// readReply reads one complete reply (all chunks of a structured one).
func (tc *testClient) readReply() reply {
	tc.t.Helper()
	var rep reply
	for {
		h := tc.read(4)
		switch m := binary.BigEndian.Uint32(h); m {
		case simpleReplyMagic:
			b := tc.read(12)
			rep.errno = binary.BigEndian.Uint32(b[0:4])
			rep.handle = binary.BigEndian.Uint64(b[4:12])
			if tc.structured {
				if _, isRead := tc.readLen[rep.handle]; isRead {
					tc.t.Fatalf("simple reply to a read with structured replies negotiated")
				}
			}
			if n, ok := tc.readLen[rep.handle]; ok {
				delete(tc.readLen, rep.handle)
				if rep.errno == 0 {
					rep.data = tc.read(int(n))
				}
			}
			return rep
		case structuredReplyMagic:
			if !tc.structured {
				tc.t.Fatalf("structured reply without negotiation")
			}
			b := tc.read(16)
			flags := binary.BigEndian.Uint16(b[0:2])
			typ := binary.BigEndian.Uint16(b[2:4])
			rep.handle = binary.BigEndian.Uint64(b[4:12])
			p := tc.read(int(binary.BigEndian.Uint32(b[12:16])))
			switch typ {
			case replyTypeNone:
			case replyTypeOffsetData:
				rep.offset = binary.BigEndian.Uint64(p)
				rep.data = append(rep.data, p[8:]...)
			case replyTypeError, replyTypeErrorOffset:
				rep.errno = binary.BigEndian.Uint32(p)
				n := binary.BigEndian.Uint16(p[4:])
				rep.msg = string(p[6 : 6+n])
			default:
				tc.t.Fatalf("unexpected chunk type %d", typ)
			}
			if flags&replyFlagDone != 0 {
				delete(tc.readLen, rep.handle)
				return rep
			}
		default:
			tc.t.Fatalf("reply magic %#x", m)
		}
	}
}

// do sends one request and waits for its reply.
func (tc *testClient) do(typ, flags uint16, off uint64, length uint32, payload []byte) reply {
	tc.t.Helper()
	const h = 0xfeedface
	tc.send(typ, flags, h, off, length, payload)
	r := tc.readReply()
	if r.handle != h {
		tc.t.Fatalf("reply handle %#x, want %#x", r.handle, h)
	}
	return r
}

func (tc *testClient) mustRead(off uint64, n uint32) []byte {
	tc.t.Helper()
	r := tc.do(cmdRead, 0, off, n, nil)
	if r.errno != 0 {
		tc.t.Fatalf("read at %d length %d: errno %d %s", off, n, r.errno, r.msg)
	}
	if uint32(len(r.data)) != n {
		tc.t.Fatalf("read at %d: %d bytes, want %d", off, len(r.data), n)
	}
	if tc.structured && r.offset != off {
		tc.t.Fatalf("read at %d: data chunk at offset %d", off, r.offset)
	}
	return r.data
}

func (tc *testClient) mustWrite(off uint64, data []byte, flags uint16) {
	tc.t.Helper()
	if r := tc.do(cmdWrite, flags, off, uint32(len(data)), data); r.errno != 0 {
		tc.t.Fatalf("write at %d length %d: errno %d %s", off, len(data), r.errno, r.msg)
	}
}

// expectClosed asserts that the server closes the connection without
// sending anything more.
func (tc *testClient) expectClosed() {
	tc.t.Helper()
	b, err := io.ReadAll(tc.r)
	if len(b) != 0 {
		tc.t.Fatalf("expected the connection to close, got %d more bytes: %q", len(b), b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		tc.t.Fatalf("connection still open: %v", err)
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

func mustEqual(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: data differs (%d vs %d bytes)", what, len(got), len(want))
	}
}

func modeName(structured bool) string {
	return fmt.Sprintf("structured=%v", structured)
}
