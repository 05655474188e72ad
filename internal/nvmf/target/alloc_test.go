//go:build !race

// The race detector makes sync.Pool drop items at random, so allocation
// counts are only meaningful without it.

package target

import (
	"bytes"
	"testing"

	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/pdu"
)

// TestHotPathDoesNotAllocate checks that steady-state 4 KiB and 128 KiB
// writes (in the capsule) and reads (C2HData, with and without the SUCCESS
// flag; a 128 KiB one goes out with its response in one vectored write)
// allocate nothing per command in the target, through a claimed namespace handle as
// through a plain device. testing.AllocsPerRun counts every goroutine: the
// wire-level host here reuses its buffers and its decoder does not
// allocate.
func TestHotPathDoesNotAllocate(t *testing.T) {
	for _, tc := range []struct {
		name           string
		noSQFC, claims bool
		size           int
	}{
		{"sqfc", false, false, 4096}, {"success-flag", true, false, 4096}, {"claimed", true, true, 4096},
		{"sqfc-128k", false, false, 128 << 10}, {"success-flag-128k", true, false, 128 << 10},
	} {
		noSQFC := tc.noSQFC
		t.Run(tc.name, func(t *testing.T) {
			var addr string
			if tc.claims {
				_, _, addr, _ = serveClaimable(t)
			} else {
				_, _, addr = serve(t)
			}
			admin := dialRaw(t, addr, false)
			cntlid := admin.adminUp(0)
			if tc.claims {
				wantStatus(t, "claim", admin.claimOp(1, nvme.ClaimOpClaim, ownerA, 1), nvme.StatusSuccess)
			}
			h := dialRaw(t, addr, false)
			h.connectIO(cntlid, 32, noSQFC)

			data := bytes.Repeat([]byte{0xC3}, tc.size)
			got := make([]byte, tc.size)
			var wr, rd pdu.SQE
			wr.SetOpcode(nvme.CmdWrite)
			wr.SetNSID(1)
			wr.SetCDW(10, 7)
			wr.SetCDW(12, uint32(tc.size/4096-1))
			rd.SetOpcode(nvme.CmdRead)
			rd.SetNSID(1)
			rd.SetCDW(10, 7)
			rd.SetCDW(12, uint32(tc.size/4096-1))
			var failed uint16
			roundTrip := func() {
				failed |= h.cmd(&wr, data, nil).Status
				failed |= h.cmd(&rd, nil, got).Status
			}
			roundTrip()
			if failed != 0 || !bytes.Equal(got, data) {
				t.Fatalf("write and read back: status %#x, data equal %v", failed, bytes.Equal(got, data))
			}
			// Two commands per run; a stray allocation now and then (a GC
			// emptying a pool) is tolerated, one per command is not.
			if n := testing.AllocsPerRun(200, roundTrip); n > 0.5 {
				t.Fatalf("%.2f allocations per write+read round trip, want none", n)
			}
			if failed != 0 {
				t.Fatalf("a command failed: status %#x", failed)
			}
		})
	}
}
