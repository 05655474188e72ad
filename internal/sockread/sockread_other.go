//go:build !linux

package sockread

import (
	"io"
	"net"
)

// Reader reads payloads from one connection. Outside Linux it is never
// made: New returns nil, and ReadFull is io.ReadFull.
type Reader struct{}

// New returns nil: only Linux sockets wait for a whole payload.
func New(net.Conn) *Reader { return nil }

func (r *Reader) readFull(p []byte) (int, error) { return 0, io.ErrNoProgress }
