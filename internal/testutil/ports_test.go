package testutil

import (
	"net"
	"strconv"
	"testing"
)

// TestFreePortsDistinct asks for many ports and ranges and checks that none
// is handed out twice and that each can be bound.
func TestFreePortsDistinct(t *testing.T) {
	seen := map[int]bool{}
	take := func(p int) {
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		if p < portLow || p >= portHigh {
			t.Fatalf("port %d outside [%d,%d)", p, portLow, portHigh)
		}
		seen[p] = true
	}
	for i := 0; i < 200; i++ {
		p := FreePort(t)
		take(p)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d not bindable: %v", p, err)
		}
		l.Close()
	}
	for i := 0; i < 20; i++ {
		base := FreePortRange(t, 5)
		for j := 0; j < 5; j++ {
			take(base + j)
		}
	}
}
