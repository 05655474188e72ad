package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
)

// FuzzParseRequest checks the request parser and validator: no header makes
// them panic, an accepted request is in bounds and aligned, and a write's
// payload is always consumed, accepted or not.
func FuzzParseRequest(f *testing.F) {
	for _, r := range []request{
		{typ: cmdRead, handle: 1, offset: 0, length: 4096},
		{typ: cmdWrite, flags: cmdFlagFUA, handle: 2, offset: 8192, length: 512},
		{typ: cmdWriteZeroes, flags: cmdFlagNoHole, offset: 0, length: 1 << 30},
		{typ: cmdTrim, offset: 1 << 20, length: 4096},
		{typ: cmdFlush},
		{typ: cmdDisc},
		{typ: cmdRead, offset: 1<<64 - 512, length: 1024},
		{typ: 99, length: 10},
	} {
		f.Add(appendRequest(nil, r), uint64(1<<20), uint8(9), false)
	}
	f.Add([]byte("not a request at all, but 28+"), uint64(4096), uint8(12), true)
	f.Fuzz(func(t *testing.T, b []byte, size uint64, bsShift uint8, ro bool) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		if got := appendRequest(nil, r); !bytes.Equal(got, b[:requestSize]) {
			t.Fatalf("re-encoded %x, parsed from %x", got, b[:requestSize])
		}
		g := geometry{size: size, blockSize: 1 << (bsShift % 17), readOnly: ro, maxPayload: 1 << 20}
		v := checkRequest(r, g)
		if r.typ == cmdWrite && v.payload != r.length {
			t.Fatalf("write of %d bytes: verdict consumes %d", r.length, v.payload)
		}
		if r.typ != cmdWrite && v.payload != 0 {
			t.Fatalf("command %d: verdict consumes %d payload bytes", r.typ, v.payload)
		}
		if v.disconnect != (r.typ == cmdDisc) {
			t.Fatalf("command %d: disconnect %v", r.typ, v.disconnect)
		}
		if v.errno != 0 {
			if v.msg == "" {
				t.Fatal("error verdict without a message")
			}
			return
		}
		switch r.typ {
		case cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes:
			bs := uint64(g.blockSize)
			end := r.offset + uint64(r.length)
			if r.length == 0 || end < r.offset || end > size || r.offset%bs != 0 || uint64(r.length)%bs != 0 {
				t.Fatalf("accepted %+v on %+v", r, g)
			}
			if r.typ != cmdRead && ro {
				t.Fatalf("accepted a write on a read-only export: %+v", r)
			}
			if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > g.maxPayload {
				t.Fatalf("accepted an oversize request: %+v", r)
			}
		case cmdFlush, cmdDisc:
		default:
			t.Fatalf("accepted unknown command %d", r.typ)
		}
	})
}

// fakeCatalog serves negotiation tests without a Server.
type fakeCatalog []exportInfo

func (c fakeCatalog) find(name string) (exportInfo, bool) {
	for _, e := range c {
		if e.name == name {
			return e, true
		}
	}
	return exportInfo{}, false
}

func (c fakeCatalog) list() []exportInfo { return c }

var fuzzCatalog = fakeCatalog{
	{name: "disk0", description: "first", size: 1 << 20, blockSize: 512, maxPayload: MaxPayload},
	{name: "ro", size: 4096, blockSize: 4096, readOnly: true, maxPayload: MaxPayload},
}

// FuzzNegotiate feeds arbitrary client bytes to the option negotiation: it
// must end (with a choice or an error) without panicking, pick only exports
// that exist, and write only well-formed replies.
func FuzzNegotiate(f *testing.F) {
	for _, seed := range negotiationSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		n, err := negotiate(bytes.NewReader(in), w, fuzzCatalog)
		w.Flush()
		if err == nil {
			if _, ok := fuzzCatalog.find(n.export.name); !ok {
				t.Fatalf("negotiated unknown export %q", n.export.name)
			}
		}
		checkNegotiationOutput(t, out.Bytes())
	})
}

// checkNegotiationOutput parses what the server wrote: the greeting, then
// option replies, then at most the NBD_OPT_EXPORT_NAME answer.
func checkNegotiationOutput(t *testing.T, b []byte) {
	if len(b) < 18 || binary.BigEndian.Uint64(b) != nbdMagic || binary.BigEndian.Uint64(b[8:]) != optMagic {
		t.Fatalf("bad greeting %x", b[:min(len(b), 18)])
	}
	b = b[18:]
	for len(b) > 0 {
		if len(b) == 10 || len(b) == 134 {
			return // export-name answer
		}
		if len(b) < optionReplySize || binary.BigEndian.Uint64(b) != optReplyMagic {
			t.Fatalf("bad option reply %x", b[:min(len(b), optionReplySize)])
		}
		n := int(binary.BigEndian.Uint32(b[16:]))
		if len(b) < optionReplySize+n {
			t.Fatalf("option reply claims %d bytes, %d left", n, len(b)-optionReplySize)
		}
		b = b[optionReplySize+n:]
	}
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func cflags(f uint32) []byte { return binary.BigEndian.AppendUint32(nil, f) }

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func negotiationSeeds() [][]byte {
	fixed := cflags(flagCFixedNewstyle | flagCNoZeroes)
	return [][]byte{
		concat(fixed, optBytes(optStructuredReply, nil), optBytes(optGo, infoData("disk0", infoName, infoDescription, infoBlockSize))),
		concat(fixed, optBytes(optList, nil), optBytes(optInfo, infoData("ro")), optBytes(optAbort, nil)),
		concat(cflags(flagCFixedNewstyle), optBytes(optExportName, []byte("disk0"))),
		concat(fixed, optBytes(optExportName, []byte("missing"))),
		concat(fixed, optBytes(optGo, infoData("missing")), optBytes(optStartTLS, nil), optBytes(optSetMetaContext, []byte{0, 0, 0, 1, 'x'})),
		concat(fixed, optBytes(optInfo, []byte{0, 0, 0, 200, 'a'})),
		concat(fixed, optBytes(optGo, nil)),
		concat(cflags(0xffffffff)),
		concat(fixed, binary.BigEndian.AppendUint64(nil, optMagic), []byte{0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff}),
	}
}

// FuzzTransmission runs a whole connection: a valid negotiation followed by
// arbitrary request bytes. Whatever the bytes, the server must answer with
// well-formed replies and close the connection once the input ends, and
// never touch the device out of bounds.
func FuzzTransmission(f *testing.F) {
	for _, seed := range transmissionSeeds() {
		f.Add(seed, true)
		f.Add(seed, false)
	}
	f.Fuzz(func(t *testing.T, in []byte, structured bool) {
		dev, err := bdev.NewMalloc(64<<10, 512)
		if err != nil {
			t.Fatal(err)
		}
		s := NewServer(nil)
		if err := s.AddExport("disk0", dev, ExportOptions{}); err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		client, server := net.Pipe()
		s.startConn(server)
		defer client.Close()

		pre := cflags(flagCFixedNewstyle | flagCNoZeroes)
		if structured {
			pre = concat(pre, optBytes(optStructuredReply, nil))
		}
		pre = concat(pre, optBytes(optGo, infoData("disk0")))
		go func() {
			client.Write(pre)
			client.Write(in)
			// End of input: a client that stops sending and hangs up.
			client.Close()
		}()
		out, _ := io.ReadAll(client)
		checkReplies(t, out, structured)
	})
}

// checkReplies walks the server's output after the negotiation: each reply
// must start with a known magic. Simple read replies carry data of a length
// the stream does not state, so the walk stops at the first of those.
func checkReplies(t *testing.T, b []byte, structured bool) {
	// Skip greeting and option replies up to the NBD_OPT_GO acknowledgement.
	if len(b) < 18 {
		return // the pipe may close before the greeting is read
	}
	b = b[18:]
	for len(b) >= optionReplySize && binary.BigEndian.Uint64(b) == optReplyMagic {
		n := int(binary.BigEndian.Uint32(b[16:]))
		if len(b) < optionReplySize+n {
			return
		}
		b = b[optionReplySize+n:]
	}
	for len(b) >= 4 {
		switch binary.BigEndian.Uint32(b) {
		case simpleReplyMagic:
			if len(b) < simpleReplySize {
				t.Fatalf("truncated simple reply %x", b)
			}
			if binary.BigEndian.Uint32(b[4:]) == 0 && !structured {
				return // may be followed by read data
			}
			b = b[simpleReplySize:]
		case structuredReplyMagic:
			if !structured {
				t.Fatal("structured reply without negotiation")
			}
			if len(b) < structuredReplySize {
				t.Fatalf("truncated chunk header %x", b)
			}
			n := int(binary.BigEndian.Uint32(b[16:]))
			if len(b) < structuredReplySize+n {
				t.Fatalf("chunk claims %d bytes, %d left", n, len(b)-structuredReplySize)
			}
			b = b[structuredReplySize+n:]
		default:
			t.Fatalf("reply with bad magic %x", b[:4])
		}
	}
	if len(b) != 0 {
		t.Fatalf("%d stray bytes at the end of the replies", len(b))
	}
}

func transmissionSeeds() [][]byte {
	req := func(typ, flags uint16, h, off uint64, n uint32, payload []byte) []byte {
		return append(appendRequest(nil, request{typ: typ, flags: flags, handle: h, offset: off, length: n}), payload...)
	}
	return [][]byte{
		concat(req(cmdWrite, 0, 1, 0, 512, make([]byte, 512)), req(cmdRead, 0, 2, 0, 512, nil), req(cmdFlush, 0, 3, 0, 0, nil), req(cmdDisc, 0, 4, 0, 0, nil)),
		concat(req(cmdTrim, cmdFlagFUA, 1, 0, 4096, nil), req(cmdWriteZeroes, cmdFlagNoHole, 2, 4096, 4096, nil)),
		concat(req(cmdWrite, 0, 1, 64<<10, 512, make([]byte, 512)), req(cmdRead, 0, 2, 100, 512, nil)),
		concat(req(cmdWrite, 0, 1, 0, 1000, make([]byte, 10))),
		concat(req(77, 0xffff, 1, 0, 0, nil), []byte{0x25, 0x60}),
		[]byte("garbage instead of a request header"),
	}
}
