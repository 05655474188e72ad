package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

func newMalloc(t testing.TB, size int64, bs int) *bdev.Malloc {
	t.Helper()
	d, err := bdev.NewMalloc(size, bs)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestRegistry(t *testing.T) {
	s := NewServer(nil)
	dev := newMalloc(t, 1<<20, 512)
	for _, n := range []string{"b", "a", "c"} {
		if err := s.AddExport(n, dev, ExportOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddExport("a", dev, ExportOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate AddExport: %v, want ErrExists", err)
	}
	if got := s.Exports(); len(got) != 3 || got[0] != "a" || got[1] != "b" || got[2] != "c" {
		t.Fatalf("Exports() = %v", got)
	}
	if err := s.RemoveExport("b"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveExport("b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second RemoveExport: %v, want ErrNotFound", err)
	}
	if err := s.AddExport(string(make([]byte, maxNameLen+1)), dev, ExportOptions{}); err == nil {
		t.Fatal("AddExport accepted an over-long name")
	}
	s.Close()
	if err := s.Serve(context.Background(), mustListen(t)); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Close: %v", err)
	}
}

func mustListen(t testing.TB) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestNegotiationOptions(t *testing.T) {
	s, addr := startServerS(t, map[string]bdev.Device{"disk0": newMalloc(t, 1<<20, 512), "disk1": newMalloc(t, 2<<20, 4096)})
	if err := s.AddExport("ro", newMalloc(t, 1<<20, 512), ExportOptions{ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	tc := dialClient(t, addr)
	tc.greet(flagCFixedNewstyle)

	tc.sendOpt(optList, nil)
	var names []string
	for {
		r := tc.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repServer {
			t.Fatalf("NBD_OPT_LIST reply %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n]))
	}
	if len(names) != 3 || names[0] != "disk0" || names[1] != "disk1" || names[2] != "ro" {
		t.Fatalf("NBD_OPT_LIST = %v", names)
	}

	for _, c := range []struct {
		name string
		opt  uint32
		data []byte
		want uint32
	}{
		{"list with data", optList, []byte{1}, repErrInvalid},
		{"starttls", optStartTLS, nil, repErrUnsup},
		{"unknown option", 99, nil, repErrUnsup},
		{"set meta context", optSetMetaContext, []byte{0, 0, 0, 0}, repErrUnsup},
		{"extended headers", optExtendedHeaders, nil, repErrUnsup},
		{"structured reply with data", optStructuredReply, []byte{1}, repErrInvalid},
		{"info truncated", optInfo, []byte{0, 0, 0, 9, 'd'}, repErrInvalid},
		{"info trailing bytes", optInfo, append(infoData("disk0"), 0), repErrInvalid},
		{"go name too long", optGo, infoData(string(make([]byte, maxNameLen+1))), repErrInvalid},
		{"info unknown export", optInfo, infoData("nope"), repErrUnknown},
		{"go unknown export", optGo, infoData("nope", infoName), repErrUnknown},
	} {
		tc.sendOpt(c.opt, c.data)
		r := tc.readOptReply()
		if r.opt != c.opt || r.typ != c.want {
			t.Errorf("%s: reply option %d type %#x, want option %d type %#x", c.name, r.opt, r.typ, c.opt, c.want)
		}
	}

	infos, r := tc.info(optInfo, "disk1", infoName, infoDescription, infoBlockSize)
	if r.typ != repAck {
		t.Fatalf("NBD_OPT_INFO: %#x", r.typ)
	}
	exp := infos[infoExport]
	if size := binary.BigEndian.Uint64(exp); size != 2<<20 {
		t.Errorf("NBD_INFO_EXPORT size %d", size)
	}
	wantFlags := uint16(flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes | flagCanMultiConn)
	if f := binary.BigEndian.Uint16(exp[8:]); f != wantFlags {
		t.Errorf("transmission flags %#x, want %#x", f, wantFlags)
	}
	if n := string(infos[infoName]); n != "disk1" {
		t.Errorf("NBD_INFO_NAME %q", n)
	}
	if d := string(infos[infoDescription]); d != "test export disk1" {
		t.Errorf("NBD_INFO_DESCRIPTION %q", d)
	}
	bs := infos[infoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 4096 || binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != testMaxPayload {
		t.Errorf("NBD_INFO_BLOCK_SIZE %x", bs)
	}

	infos, _ = tc.info(optInfo, "ro")
	if f := binary.BigEndian.Uint16(infos[infoExport][8:]); f&flagReadOnly == 0 {
		t.Errorf("read-only export flags %#x", f)
	}

	// After all that, the connection still works: pick an export and use it.
	tc.sendOpt(optStructuredReply, nil)
	if r := tc.readOptReply(); r.typ != repAck {
		t.Fatalf("NBD_OPT_STRUCTURED_REPLY: %#x", r.typ)
	}
	tc.structured = true
	if _, r := tc.info(optGo, "disk0"); r.typ != repAck {
		t.Fatalf("NBD_OPT_GO: %#x", r.typ)
	}
	tc.mustWrite(512, pattern(1024, 1), 0)
	mustEqual(t, "read back", tc.mustRead(512, 1024), pattern(1024, 1))
}

func TestExportName(t *testing.T) {
	addr := startServer(t, map[string]bdev.Device{"disk0": newMalloc(t, 1<<20, 512)})
	for _, noZeroes := range []bool{false, true} {
		tc := dialClient(t, addr)
		cflags := uint32(flagCFixedNewstyle)
		if noZeroes {
			cflags |= flagCNoZeroes
		}
		tc.greet(cflags)
		tc.sendOpt(optExportName, []byte("disk0"))
		b := tc.read(10)
		if size := binary.BigEndian.Uint64(b); size != 1<<20 {
			t.Fatalf("size %d", size)
		}
		if f := binary.BigEndian.Uint16(b[8:]); f&flagHasFlags == 0 || f&flagCanMultiConn == 0 {
			t.Fatalf("flags %#x", f)
		}
		if !noZeroes {
			if z := tc.read(124); !bytesZero(z) {
				t.Fatal("124 padding bytes are not zero")
			}
		}
		tc.mustWrite(0, pattern(512, 3), 0)
		mustEqual(t, "read back", tc.mustRead(0, 512), pattern(512, 3))
	}

	// An unknown name cannot be refused in words: the server hangs up.
	tc := dialClient(t, addr)
	tc.greet(flagCFixedNewstyle)
	tc.sendOpt(optExportName, []byte("nope"))
	tc.expectClosed()

	// The empty name is the default export when there is only one.
	tc = dialClient(t, addr)
	tc.open("", false)
	if tc.size != 1<<20 {
		t.Fatalf("default export size %d", tc.size)
	}
}

func bytesZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func TestAbort(t *testing.T) {
	addr := startServer(t, map[string]bdev.Device{"disk0": newMalloc(t, 1<<20, 512)})
	tc := dialClient(t, addr)
	tc.greet(flagCFixedNewstyle)
	tc.sendOpt(optAbort, nil)
	if r := tc.readOptReply(); r.opt != optAbort || r.typ != repAck {
		t.Fatalf("NBD_OPT_ABORT reply %d %#x", r.opt, r.typ)
	}
	tc.expectClosed()
}

func TestCommands(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(modeName(structured), func(t *testing.T) {
			dev := faulty.New(newMalloc(t, 4<<20, 512), 1)
			flushes := dev.AddRule(faulty.Rule{Ops: faulty.OpFlush, Latency: 1}) // counts flushes
			addr := startServer(t, map[string]bdev.Device{"disk0": dev})
			tc := dialClient(t, addr)
			tc.open("disk0", structured)

			data := pattern(64<<10, 9)
			tc.mustWrite(1<<20, data, 0)
			mustEqual(t, "read after write", tc.mustRead(1<<20, 64<<10), data)
			if n := dev.Fired(flushes); n != 0 {
				t.Fatalf("%d flushes before any was asked for", n)
			}

			tc.mustWrite(2<<20, data[:4096], cmdFlagFUA)
			if n := dev.Fired(flushes); n != 1 {
				t.Fatalf("FUA write: %d flushes, want 1", n)
			}
			if r := tc.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
				t.Fatalf("flush: errno %d", r.errno)
			}
			if n := dev.Fired(flushes); n != 2 {
				t.Fatalf("after flush: %d flushes, want 2", n)
			}

			if r := tc.do(cmdTrim, 0, 1<<20, 8192, nil); r.errno != 0 {
				t.Fatalf("trim: errno %d", r.errno)
			}
			got := tc.mustRead(1<<20, 64<<10)
			if !bytesZero(got[:8192]) {
				t.Fatal("trimmed range does not read as zeroes")
			}
			mustEqual(t, "data after trimmed range", got[8192:], data[8192:])

			if r := tc.do(cmdWriteZeroes, cmdFlagNoHole|cmdFlagFUA, 1<<20+16384, 4096, nil); r.errno != 0 {
				t.Fatalf("write zeroes: errno %d", r.errno)
			}
			if n := dev.Fired(flushes); n != 3 {
				t.Fatalf("FUA write-zeroes: %d flushes, want 3", n)
			}
			got = tc.mustRead(1<<20+16384, 8192)
			if !bytesZero(got[:4096]) {
				t.Fatal("write-zeroes range does not read as zeroes")
			}
			mustEqual(t, "data after zeroed range", got[4096:], data[16384+4096:16384+8192])

			// Trim and write-zeroes are not limited by the maximum payload.
			if r := tc.do(cmdWriteZeroes, 0, 0, 4<<20, nil); r.errno != 0 {
				t.Fatalf("write zeroes of the whole device: errno %d", r.errno)
			}

			tc.send(cmdDisc, 0, 7, 0, 0, nil)
			tc.expectClosed()
		})
	}
}

// TestMaxPayload moves the largest request the server accepts each way.
func TestMaxPayload(t *testing.T) {
	big := make([]byte, testMaxPayload)
	rand.NewChaCha8([32]byte{1}).Read(big)
	addr := startServer(t, map[string]bdev.Device{"big": newMalloc(t, testMaxPayload, 512)})
	tc := dialClient(t, addr)
	tc.open("big", true)
	tc.mustWrite(0, big, 0)
	mustEqual(t, "max payload", tc.mustRead(0, testMaxPayload), big)
}

func TestErrorReplies(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(modeName(structured), func(t *testing.T) {
			const size = 1 << 20
			dev := faulty.New(newMalloc(t, size, 4096), 1)
			dev.AddRule(faulty.Rule{Ops: faulty.OpRead, Off: 8192, Len: 4096, Err: errors.New("media error")})
			dev.AddRule(faulty.Rule{Ops: faulty.OpWrite, Off: 12288, Len: 4096, Err: syscall.ENOSPC})
			s, addr := startServerS(t, map[string]bdev.Device{"disk0": dev})
			if err := s.AddExport("ro", newMalloc(t, size, 512), ExportOptions{ReadOnly: true}); err != nil {
				t.Fatal(err)
			}
			tc := dialClient(t, addr)
			tc.open("disk0", structured)
			tc.mustWrite(0, pattern(4096, 5), 0)

			block := pattern(4096, 2)
			for _, c := range []struct {
				name    string
				typ     uint16
				flags   uint16
				off     uint64
				length  uint32
				payload []byte
				want    uint32
			}{
				{"unaligned read offset", cmdRead, 0, 512, 4096, nil, errInval},
				{"unaligned read length", cmdRead, 0, 0, 1000, nil, errInval},
				{"read beyond end", cmdRead, 0, size, 4096, nil, errInval},
				{"read straddling end", cmdRead, 0, size - 4096, 8192, nil, errInval},
				{"read huge offset", cmdRead, 0, 1<<64 - 4096, 4096, nil, errInval},
				{"zero-length read", cmdRead, 0, 0, 0, nil, errInval},
				{"oversize read", cmdRead, 0, 0, testMaxPayload + 4096, nil, errInval},
				{"write beyond end", cmdWrite, 0, size, 4096, block, errNoSpc},
				{"unaligned write", cmdWrite, 0, 100, 4096, block, errInval},
				{"oversize write", cmdWrite, 0, 0, testMaxPayload + 4096, make([]byte, testMaxPayload+4096), errInval},
				{"trim beyond end", cmdTrim, 0, size - 4096, 8192, nil, errNoSpc},
				{"unaligned write zeroes", cmdWriteZeroes, 0, 4096, 100, nil, errInval},
				{"unknown command", 42, 0, 0, 4096, nil, errInval},
				{"unknown flag", cmdRead, 1 << 9, 0, 4096, nil, errInval},
				{"no-hole on write", cmdWrite, cmdFlagNoHole, 0, 4096, block, errInval},
				{"device read error", cmdRead, 0, 8192, 4096, nil, errIO},
				{"device out of space", cmdWrite, 0, 12288, 4096, block, errNoSpc},
			} {
				r := tc.do(c.typ, c.flags, c.off, c.length, c.payload)
				if r.errno != c.want {
					t.Errorf("%s: errno %d, want %d", c.name, r.errno, c.want)
				}
				if r.data != nil {
					t.Errorf("%s: error reply carries %d data bytes", c.name, len(r.data))
				}
				if structured && r.msg == "" {
					t.Errorf("%s: structured error without a message", c.name)
				}
				// The connection stays usable.
				mustEqual(t, c.name+": read afterwards", tc.mustRead(0, 4096), pattern(4096, 5))
			}

			ro := dialClient(t, addr)
			ro.open("ro", structured)
			if ro.flags&flagReadOnly == 0 {
				t.Fatal("read-only export without NBD_FLAG_READ_ONLY")
			}
			for _, typ := range []uint16{cmdWrite, cmdTrim, cmdWriteZeroes} {
				var p []byte
				if typ == cmdWrite {
					p = block[:512]
				}
				if r := ro.do(typ, 0, 0, 512, p); r.errno != errPerm {
					t.Errorf("command %d on a read-only export: errno %d, want EPERM", typ, r.errno)
				}
			}
			if r := ro.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
				t.Errorf("flush on a read-only export: errno %d", r.errno)
			}
			ro.mustRead(0, 512)
		})
	}
}

// TestMalformed sends broken negotiations and requests; each closes only its
// own connection while an established one keeps working.
func TestMalformed(t *testing.T) {
	addr := startServer(t, map[string]bdev.Device{"disk0": newMalloc(t, 1<<20, 512)})
	good := dialClient(t, addr)
	good.open("disk0", true)
	good.mustWrite(0, pattern(512, 8), 0)

	optHeader := func(magic uint64, opt, length uint32) []byte {
		b := binary.BigEndian.AppendUint64(nil, magic)
		b = binary.BigEndian.AppendUint32(b, opt)
		return binary.BigEndian.AppendUint32(b, length)
	}
	for _, c := range []struct {
		name   string
		cflags uint32
		send   []byte
	}{
		{"unknown client flags", 1 << 7, nil},
		{"bad option magic", flagCFixedNewstyle, optHeader(0x1122334455667788, optList, 0)},
		{"oversize option", flagCFixedNewstyle, optHeader(optMagic, optGo, maxOptionLen+1)},
		{"garbage", flagCFixedNewstyle, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"truncated option", flagCFixedNewstyle, optHeader(optMagic, optGo, 100)[:12]},
	} {
		t.Run(c.name, func(t *testing.T) {
			tc := dialClient(t, addr)
			tc.greet(c.cflags)
			tc.write(c.send)
			if c.name == "truncated option" {
				tc.c.(*net.TCPConn).CloseWrite()
			}
			tc.expectClosed()
			mustEqual(t, "other connection", good.mustRead(0, 512), pattern(512, 8))
		})
	}

	t.Run("bad request magic", func(t *testing.T) {
		tc := dialClient(t, addr)
		tc.open("disk0", false)
		b := appendRequest(nil, request{typ: cmdRead, length: 512})
		b[0] ^= 0xff
		tc.write(b)
		tc.expectClosed()
		mustEqual(t, "other connection", good.mustRead(0, 512), pattern(512, 8))
	})
}

// gate is a Device whose reads at one offset block until released, so that
// tests can order completions without timing.
type gate struct {
	bdev.Device
	off     int64
	entered chan struct{}
	release chan struct{}
}

func (g *gate) ReadAt(p []byte, off int64) (int, error) {
	if off == g.off {
		g.entered <- struct{}{}
		<-g.release
	}
	return g.Device.ReadAt(p, off)
}

func TestPipelining(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(modeName(structured), func(t *testing.T) {
			const bs = 4096
			g := &gate{Device: newMalloc(t, 4<<20, 512), off: 0, entered: make(chan struct{}, 1), release: make(chan struct{})}
			addr := startServer(t, map[string]bdev.Device{"disk0": g})
			tc := dialClient(t, addr)
			tc.open("disk0", structured)

			// Write 256 distinct blocks without waiting for any reply.
			const n = 256
			for i := range n {
				tc.send(cmdWrite, 0, uint64(1000+i), uint64(bs*(i+1)), bs, pattern(bs, byte(i)))
			}
			seen := map[uint64]bool{}
			for range n {
				r := tc.readReply()
				if r.errno != 0 || r.handle < 1000 || r.handle >= 1000+n || seen[r.handle] {
					t.Fatalf("write reply handle %d errno %d", r.handle, r.errno)
				}
				seen[r.handle] = true
			}

			// A read that blocks in the device does not hold up the ones
			// behind it: their replies overtake it, matched by handle.
			tc.send(cmdRead, 0, 1, 0, bs, nil)
			<-g.entered
			for i := range n {
				tc.send(cmdRead, 0, uint64(2000+i), uint64(bs*(i+1)), bs, nil)
			}
			for range n {
				r := tc.readReply()
				if r.handle == 1 {
					t.Fatal("the blocked read was answered before it was released")
				}
				i := int(r.handle) - 2000
				if r.errno != 0 || i < 0 || i >= n {
					t.Fatalf("read reply handle %d errno %d", r.handle, r.errno)
				}
				mustEqual(t, "pipelined read", r.data, pattern(bs, byte(i)))
			}
			close(g.release)
			if r := tc.readReply(); r.handle != 1 || r.errno != 0 || len(r.data) != bs {
				t.Fatalf("released read: handle %d errno %d %d bytes", r.handle, r.errno, len(r.data))
			}
		})
	}
}

func TestMultiConn(t *testing.T) {
	dev := faulty.New(newMalloc(t, 4<<20, 512), 1)
	flushes := dev.AddRule(faulty.Rule{Ops: faulty.OpFlush, Latency: 1})
	addr := startServer(t, map[string]bdev.Device{"disk0": dev})
	const conns = 4
	cs := make([]*testClient, conns)
	for i := range cs {
		cs[i] = dialClient(t, addr)
		cs[i].open("disk0", i%2 == 0)
		if cs[i].flags&flagCanMultiConn == 0 {
			t.Fatal("NBD_FLAG_CAN_MULTI_CONN not advertised")
		}
	}
	// Each connection writes its own region concurrently.
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			for j := range 16 {
				off := uint64(i<<20 + j*4096)
				c.send(cmdWrite, 0, uint64(j), off, 4096, pattern(4096, byte(i*16+j)))
			}
			for range 16 {
				if r := c.readReply(); r.errno != 0 {
					t.Errorf("conn %d: write errno %d", i, r.errno)
				}
			}
		})
	}
	wg.Wait()
	// A flush on one connection flushes the device for all of them.
	if r := cs[3].do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
		t.Fatalf("flush: errno %d", r.errno)
	}
	if n := dev.Fired(flushes); n != 1 {
		t.Fatalf("device flushed %d times, want 1", n)
	}
	// Every connection sees every other connection's writes.
	for i := range cs {
		for j := range 16 {
			off := uint64(i<<20 + j*4096)
			mustEqual(t, "cross-connection read", cs[(i+1)%conns].mustRead(off, 4096), pattern(4096, byte(i*16+j)))
		}
	}
}

func TestRemoveExportDrains(t *testing.T) {
	g := &gate{Device: newMalloc(t, 1<<20, 512), off: 4096, entered: make(chan struct{}, 1), release: make(chan struct{})}
	s, addr := startServerS(t, map[string]bdev.Device{"disk0": g, "other": newMalloc(t, 1<<20, 512)})
	tc := dialClient(t, addr)
	tc.open("disk0", true)
	other := dialClient(t, addr)
	other.open("other", true)

	tc.send(cmdRead, 0, 5, 4096, 4096, nil)
	<-g.entered
	removed := make(chan error, 1)
	go func() { removed <- s.RemoveExport("disk0") }()

	// New clients no longer find it while the old one drains.
	for {
		nc := dialClient(t, addr)
		nc.greet(flagCFixedNewstyle)
		_, r := nc.info(optInfo, "disk0")
		if r.typ == repErrUnknown {
			break
		}
		if r.typ != repAck {
			t.Fatalf("NBD_OPT_INFO during removal: %#x", r.typ)
		}
	}
	select {
	case err := <-removed:
		t.Fatalf("RemoveExport returned (%v) with a request in flight", err)
	default:
	}
	close(g.release)
	if r := tc.readReply(); r.handle != 5 || r.errno != 0 || len(r.data) != 4096 {
		t.Fatalf("in-flight read: handle %d errno %d", r.handle, r.errno)
	}
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
	tc.expectClosed()
	other.mustRead(0, 512)
}

func TestCloseStopsEverything(t *testing.T) {
	s := NewServer(testLogger())
	if err := s.AddExport("disk0", newMalloc(t, 1<<20, 512), ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	l1, l2 := mustListen(t), mustListen(t)
	done := make(chan error, 2)
	go func() { done <- s.Serve(context.Background(), l1) }()
	go func() { done <- s.Serve(context.Background(), l2) }()
	a := dialClient(t, l1.Addr().String())
	a.open("disk0", false)
	b := dialClient(t, l2.Addr().String())
	b.greet(flagCFixedNewstyle) // still negotiating
	a.mustRead(0, 512)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve after Close: %v", err)
		}
	}
	a.expectClosed()
	b.expectClosed()
}
