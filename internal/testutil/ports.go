package testutil

import (
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// Ports are handed out from below the kernel's ephemeral range (32768 and
// up on Linux), so an outgoing connection's source port cannot take one
// between the probe and the bind, and not twice within portReuse in one
// process: asking the kernel for port 0 twice can return the same port once
// the first probe closed, and two servers of one test then collide. After
// portReuse a port may come back (if it can be bound), so that long runs
// (-count) do not exhaust the range.
const (
	portLow   = 20000
	portHigh  = 32768
	portReuse = 10 * time.Minute
)

var (
	portsMu  sync.Mutex
	portsOut = map[int]time.Time{} // when each port was handed out
)

// FreePort returns a loopback TCP port that was free a moment ago and that
// this process has not handed out in the last portReuse. Another process may take it
// before the caller binds it; tests that can should listen on port 0
// instead.
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePortRange(t, 1)
}

// FreeAddr returns a loopback address ("127.0.0.1:port") from FreePort,
// for a server that must come back on the same address.
func FreeAddr(t testing.TB) string {
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

// FreePortRange returns a port p such that p..p+n-1 on loopback were free a
// moment ago and none was handed out by this process in the last
// portReuse, for programs that number their ports from a base. Safe for
// concurrent use.
func FreePortRange(t testing.TB, n int) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for attempt := 0; attempt < 1000; attempt++ {
		base := portLow + rand.IntN(portHigh-portLow-n+1)
		if probeRange(base, n) {
			now := time.Now()
			for i := 0; i < n; i++ {
				portsOut[base+i] = now
			}
			return base
		}
	}
	t.Fatal("no free loopback port range")
	return 0
}

// probeRange reports whether base..base+n-1 are unused by this process's
// earlier answers and can each be listened on now. Called with portsMu.
func probeRange(base, n int) bool {
	for i := 0; i < n; i++ {
		if at, ok := portsOut[base+i]; ok && time.Since(at) < portReuse {
			return false
		}
	}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
		if err != nil {
			return false
		}
		ls = append(ls, l)
	}
	return true
}
