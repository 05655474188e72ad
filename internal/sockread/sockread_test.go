package sockread

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// pattern returns n bytes that differ at every offset of a stream.
func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// sendSlowly writes b in pieces of at most piece bytes with a pause between
// them, as a peer whose payload arrives in bursts.
func sendSlowly(c net.Conn, b []byte, piece int, pause time.Duration) error {
	for len(b) > 0 {
		n := min(piece, len(b))
		if _, err := c.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
		time.Sleep(pause)
	}
	return nil
}

// TestReadFullStream reads a stream of headers and payloads of many sizes,
// around MinLowat, from a peer that sends them in bursts, as a protocol
// server does: every byte must arrive in order, and the socket's low-water
// mark must be one byte (0, as Linux reports an accepted socket's, means
// the same) after every payload (a header read would
// otherwise wait for bytes that never come).
func TestReadFullStream(t *testing.T) {
	client, server := tcpPair(t)
	r := New(server)
	if wantReader() && r == nil {
		t.Fatal("New returned nil for a TCP connection on a kernel that can wait on SO_RCVLOWAT")
	}
	sizes := []int{0, 1, 4096, MinLowat - 1, MinLowat, MinLowat + 1, 200 << 10, 1 << 20, 3<<20 + 17}
	const hdr = 28
	stream := &bytes.Buffer{}
	for i, n := range sizes {
		stream.Write(pattern(uint64(i), hdr))
		stream.Write(pattern(uint64(100+i), n))
	}
	want := stream.Bytes()
	errc := make(chan error, 1)
	go func() { errc <- sendSlowly(client, want, 48<<10, time.Millisecond) }()

	br := bufio.NewReaderSize(server, 128<<10)
	got := make([]byte, 0, len(want))
	h := make([]byte, hdr)
	for i, n := range sizes {
		if _, err := io.ReadFull(br, h); err != nil {
			t.Fatalf("header %d: %v", i, err)
		}
		got = append(got, h...)
		p := make([]byte, n)
		m, err := r.ReadFull(br, p)
		if err != nil || m != n {
			t.Fatalf("payload %d (%d bytes): read %d, %v", i, n, m, err)
		}
		got = append(got, p...)
		if lw := lowat(t, server); lw > 1 {
			t.Fatalf("after payload %d (%d bytes) SO_RCVLOWAT is %d, want 1 (or 0)", i, n, lw)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes read differ from the bytes sent")
	}
}

// TestReadFullPeerCloses: a peer that closes part way through a payload
// ends the read with io.ErrUnexpectedEOF, not a wait for bytes that cannot
// come; one that closes before it yields io.EOF.
func TestReadFullPeerCloses(t *testing.T) {
	client, server := tcpPair(t)
	r := New(server)
	go func() {
		sendSlowly(client, pattern(1, 300<<10), 64<<10, 2*time.Millisecond)
		client.Close()
	}()
	br := bufio.NewReader(server)
	p := make([]byte, 1<<20)
	n, err := r.ReadFull(br, p)
	if !errors.Is(err, io.ErrUnexpectedEOF) || n != 300<<10 {
		t.Fatalf("read %d bytes, %v; want %d, %v", n, err, 300<<10, io.ErrUnexpectedEOF)
	}
	if n, err := r.ReadFull(br, p); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after the end: read %d bytes, %v; want 0, EOF", n, err)
	}
}

// TestReadFullDeadline: a read deadline ends a wait for the rest of a
// payload, as it ends a net.Conn read, and the socket is left with a
// one-byte low-water mark.
func TestReadFullDeadline(t *testing.T) {
	client, server := tcpPair(t)
	r := New(server)
	if _, err := client.Write(pattern(2, 100<<10)); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	p := make([]byte, 1<<20)
	n, err := r.ReadFull(bufio.NewReader(server), p)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d bytes, %v; want a deadline error", n, err)
	}
	// Part of what was sent may still be on its way when the mark goes
	// up, and then waits under it for the deadline.
	if n > 100<<10 {
		t.Fatalf("read %d bytes, more than the %d sent", n, 100<<10)
	}
	if lw := lowat(t, server); lw > 1 {
		t.Fatalf("SO_RCVLOWAT is %d after the deadline, want 1 (or 0)", lw)
	}
}

// TestNotTCP: other connections read with io.ReadFull.
func TestNotTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	r := New(b)
	if r != nil {
		t.Fatal("New made a Reader for a net.Pipe")
	}
	want := pattern(3, 256<<10)
	go a.Write(want)
	got := make([]byte, len(want))
	if _, err := r.ReadFull(bufio.NewReader(b), got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read through a nil Reader: %v", err)
	}
}

// TestReadFullWaitsForTheRest: with part of a long payload read, the
// reader waits with the socket's low-water mark raised to the bytes still
// missing (on Linux; more when the first part has not all been read yet,
// fewer where the kernel caps it), and the rest arriving in one write ends
// the wait.
func TestReadFullWaitsForTheRest(t *testing.T) {
	client, server := tcpPair(t)
	r := New(server)
	want := pattern(4, 1<<20)
	const first = 100 << 10
	if _, err := client.Write(want[:first]); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	got := make([]byte, len(want))
	go func() {
		_, err := r.ReadFull(bufio.NewReader(server), got)
		done <- err
	}()
	if r != nil {
		deadline := time.Now().Add(10 * time.Second)
		for lowat(t, server) < min(len(want)-first, lowatCap(t)) {
			if time.Now().After(deadline) {
				t.Fatalf("SO_RCVLOWAT is %d while %d bytes are missing (cap %d)", lowat(t, server), len(want)-first, lowatCap(t))
			}
			time.Sleep(time.Millisecond)
		}
	}
	if _, err := client.Write(want[first:]); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes read differ from the bytes sent")
	}
	if lw := lowat(t, server); lw > 1 {
		t.Fatalf("SO_RCVLOWAT is %d after the read, want 1 (or 0)", lw)
	}
}

// TestReadFullDoesNotAllocate: reading a long payload, waits included,
// allocates nothing (it is on the write path of every frontend).
func TestReadFullDoesNotAllocate(t *testing.T) {
	client, server := tcpPair(t)
	r := New(server)
	const size, runs = 512 << 10, 100
	payload := pattern(5, size)
	go func() {
		// One more for the warm-up call AllocsPerRun makes.
		for range runs + 1 {
			if sendSlowly(client, payload, 128<<10, 0) != nil {
				return
			}
		}
	}()
	br := bufio.NewReaderSize(server, 64<<10)
	p := make([]byte, size)
	n := testing.AllocsPerRun(runs, func() {
		if _, err := r.ReadFull(br, p); err != nil {
			t.Fatal(err)
		}
	})
	if n > 0.05 {
		t.Fatalf("%.2f allocations per %d KiB payload, want none", n, size>>10)
	}
}
