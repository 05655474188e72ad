package sockread

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// lowat returns the connection's SO_RCVLOWAT.
func lowat(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// lowatCap is the highest mark the kernel accepts: half tcp_rmem's maximum.
func lowatCap(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_rmem")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		t.Fatalf("tcp_rmem %q", b)
	}
	n, err := strconv.Atoi(f[2])
	if err != nil {
		t.Fatal(err)
	}
	return n / 2
}

// wantReader: New must make a Reader for a TCP connection here.
func wantReader() bool { return kernelOK() }

func TestReleaseOK(t *testing.T) {
	for release, want := range map[string]bool{
		"6.18.44-fc-v1272":      true,
		"6.1.0-18-amd64":        true,
		"5.12.0":                true,
		"5.15.0-91-generic":     true,
		"5.11.22":               false,
		"5.10.19":               false,
		"5.10.20-rt":            true,
		"5.10":                  false,
		"5.4.101":               false,
		"5.4.102":               true,
		"5.6.0":                 false,
		"4.19.178":              true,
		"4.19.177":              false,
		"4.18.0-553.el8.x86_64": false,
		"10.0":                  true,
		"":                      false,
		"garbage":               false,
		"6":                     false,
	} {
		if got := releaseOK(release); got != want {
			t.Errorf("releaseOK(%q) = %v, want %v", release, got, want)
		}
	}
}
