package nvme

import (
	"bytes"
	"testing"
)

// FuzzClaimData decodes arbitrary bytes as a claim command and as a claim
// log page: the decoders must never panic, and whatever they accept must
// encode back to the same bytes (a page only up to its defined fields and
// zero reserved bytes), so that no two encodings mean the same claim.
func FuzzClaimData(f *testing.F) {
	cmd := make([]byte, ClaimCommandLen)
	for _, op := range []ClaimOp{ClaimOpClaim, ClaimOpRaise, ClaimOpRelease} {
		(&ClaimCommand{Op: op, Epoch: 7, Owner: [16]byte{1, 15: 2}}).Marshal(cmd)
		f.Add(bytes.Clone(cmd))
	}
	page := make([]byte, ClaimLogLen)
	(&ClaimLog{UUID: [16]byte{3}, NGUID: [16]byte{4}, Owner: [16]byte{5}, Epoch: 9, Blank: true}).Marshal(page)
	f.Add(page)
	f.Add([]byte("NXCL"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, ok := UnmarshalClaimCommand(b); ok {
			out := make([]byte, ClaimCommandLen)
			c.Marshal(out)
			if !bytes.Equal(out, b) {
				t.Fatalf("claim command % x decodes to %+v, which encodes to % x", b, c, out)
			}
		}
		if l, ok := UnmarshalClaimLog(b); ok {
			out := make([]byte, ClaimLogLen)
			l.Marshal(out)
			// Flags other than blank and reserved bytes are ignored.
			want := bytes.Clone(b[:ClaimLogLen])
			want[6] &= 1
			want[7] = 0
			clear(want[64:])
			if !bytes.Equal(out, want) {
				t.Fatalf("claim log % x decodes to %+v, which encodes to % x", b[:ClaimLogLen], l, out)
			}
		}
	})
}
