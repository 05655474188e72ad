//go:build !linux

package sockread

import (
	"net"
	"testing"
)

// lowat is 1 where Reader never changes it.
func lowat(*testing.T, net.Conn) int { return 1 }

// lowatCap is never consulted where New returns nil.
func lowatCap(*testing.T) int { return 1 }

// wantReader: New returns nil outside Linux.
func wantReader() bool { return false }
