//go:build !race

// The race detector makes sync.Pool drop items at random, so allocation
// counts are only meaningful without it.

package nbd

import (
	"encoding/binary"
	"io"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
)

// TestHotPathDoesNotAllocate checks that steady-state reads and writes, in
// both reply modes, allocate nothing per request on the server (the client
// here reuses its buffers, and testing.AllocsPerRun counts every goroutine).
func TestHotPathDoesNotAllocate(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(modeName(structured), func(t *testing.T) {
			addr := startServer(t, map[string]bdev.Device{"disk0": newMalloc(t, 1<<20, 512)})
			tc := dialClient(t, addr)
			tc.open("disk0", structured)

			const bs = 4096
			wreq := appendRequest(nil, request{typ: cmdWrite, handle: 1, offset: 8192, length: bs})
			wreq = append(wreq, pattern(bs, 6)...)
			rreq := appendRequest(nil, request{typ: cmdRead, handle: 2, offset: 8192, length: bs})
			wrep := make([]byte, simpleReplySize)
			rrep := make([]byte, simpleReplySize+bs)
			if structured {
				rrep = make([]byte, structuredReplySize+8+bs)
			}
			roundTrip := func() {
				if _, err := tc.c.Write(wreq); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(tc.r, wrep); err != nil {
					t.Fatal(err)
				}
				if _, err := tc.c.Write(rreq); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(tc.r, rrep); err != nil {
					t.Fatal(err)
				}
			}
			roundTrip()
			if e := binary.BigEndian.Uint32(wrep[4:]); e != 0 {
				t.Fatalf("write errno %d", e)
			}
			// Two requests per run; a stray allocation now and then (a GC
			// emptying a pool) is tolerated, one per request is not.
			if n := testing.AllocsPerRun(500, roundTrip); n > 0.5 {
				t.Fatalf("%.2f allocations per write+read round trip, want none", n)
			}
			// Two reads sent together: the first finds the second already
			// buffered, so they go through the workers, not the reader.
			pair := append(appendRequest(nil, request{typ: cmdRead, handle: 3, offset: 0, length: bs}),
				appendRequest(nil, request{typ: cmdRead, handle: 4, offset: bs, length: bs})...)
			pipelined := func() {
				if _, err := tc.c.Write(pair); err != nil {
					t.Fatal(err)
				}
				for range 2 {
					if _, err := io.ReadFull(tc.r, rrep); err != nil {
						t.Fatal(err)
					}
				}
			}
			pipelined()
			if n := testing.AllocsPerRun(500, pipelined); n > 0.5 {
				t.Fatalf("%.2f allocations per pair of pipelined reads, want none", n)
			}
		})
	}
}
