//go:build !linux

package sockread

import (
	"net"
	"testing"
)

// lowat is 1 where Reader never changes it.
func lowat(*testing.T, net.Conn) int { return 1 }
