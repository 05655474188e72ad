package netproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echoServer echoes every connection back until closed.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func newProxy(t *testing.T) *Proxy {
	t.Helper()
	p, err := Listen(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends msg and reads it back within d.
func roundTrip(c net.Conn, msg string, d time.Duration) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	return expect(c, msg, d)
}

func expect(c net.Conn, msg string, d time.Duration) error {
	c.SetReadDeadline(time.Now().Add(d))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, []byte(msg)) {
		return errors.New("echo mismatch: " + string(got))
	}
	return nil
}

func TestForward(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	for _, m := range []string{"hello", "world", string(bytes.Repeat([]byte("x"), 100<<10))} {
		if err := roundTrip(c, m, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// A blackholed connection stays open and delivers nothing, in either
// direction, until Restore, which delivers what was held.
func TestBlackhole(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	if err := roundTrip(c, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Blackhole()
	err := roundTrip(c, "during", 200*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackholed round trip: %v, want a read timeout", err)
	}
	// A connection made during the partition is accepted but silent too.
	late := dial(t, p)
	if err := roundTrip(late, "late", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection while blackholed: %v, want a read timeout", err)
	}
	p.Restore()
	if err := expect(c, "during", 5*time.Second); err != nil {
		t.Fatalf("held bytes after restore: %v", err)
	}
	if err := expect(late, "late", 5*time.Second); err != nil {
		t.Fatalf("held bytes of the late connection: %v", err)
	}
	if err := roundTrip(c, "after", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// Drop resets live connections and refuses new ones until Restore.
func TestDrop(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	if err := roundTrip(c, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Drop()
	if err := roundTrip(c, "during", 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("dropped connection: %v, want a connection error", err)
	}
	// The reset may come before connect returns or after.
	if refused, err := net.Dial("tcp", p.Addr()); err == nil {
		err = roundTrip(refused, "refused", 5*time.Second)
		refused.Close()
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("new connection while dropped: %v, want a connection error", err)
		}
	}
	p.Restore()
	if err := roundTrip(dial(t, p), "after", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// Close ends blackholed connections too, and stops listening.
func TestClose(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	p.Blackhole()
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := expect(c, "held", 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after Close: %v, want a connection error", err)
	}
	if c2, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c2.Close()
		t.Fatal("proxy still accepting after Close")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
