package nvme

import (
	"errors"
	"strings"
	"testing"
)

func TestDiscoveryEntryRoundTrip(t *testing.T) {
	e := DiscoveryEntry{TrType: TrTypeTCP, AdrFam: AdrFamIPv6, SubType: SubTypeNVMe, TReq: TreqDisableSQFC,
		PortID: 7, CNTLID: 0xFFFF, ASQSZ: 32, TrSvcID: "4420", SubNQN: "nqn.2024-11.io.nexstor:nexus:x", TrAddr: "fd00::1"}
	b := make([]byte, DiscLogEntryLen)
	e.Marshal(b)
	if b[0] != 3 || b[1] != 2 || b[2] != 2 || string(b[32:36]) != "4420" || string(b[512:519]) != "fd00::1" {
		t.Fatalf("layout % x", b[:40])
	}
	if got := UnmarshalDiscoveryEntry(b); got != e {
		t.Fatalf("got %+v", got)
	}
	// Space-padded fields, as some targets send them, are trimmed.
	copy(b[32:64], "8009                            ")
	if got := UnmarshalDiscoveryEntry(b); got.TrSvcID != "8009" {
		t.Fatalf("trsvcid %q", got.TrSvcID)
	}
}

func TestStatus(t *testing.T) {
	s := StatusConnectInvalidHost
	if s.SCT() != SCTSpecific || s.SC() != 0x84 || s.Success() || s&DNR == 0 {
		t.Fatalf("%#x", uint16(s))
	}
	var err error = s
	if !errors.Is(err, StatusConnectInvalidHost) || !strings.Contains(err.Error(), "connect invalid host") {
		t.Fatal(err)
	}
	if !StatusSuccess.Success() {
		t.Fatal("success")
	}
	if AENResult(AENTypeNotice, AENNoticeNSChanged, LogChangedNS) != 0x040002 {
		t.Fatalf("%#x", AENResult(AENTypeNotice, AENNoticeNSChanged, LogChangedNS))
	}
}

func TestClaimCommandRoundTrip(t *testing.T) {
	c := ClaimCommand{Op: ClaimOpRaise, Epoch: 0x0102030405060708, Owner: [16]byte{0xAB, 15: 0xCD}}
	b := make([]byte, ClaimCommandLen)
	c.Marshal(b)
	if string(b[:4]) != "NXCL" || b[4] != 2 || b[8] != 8 || b[15] != 1 || b[16] != 0xAB || b[31] != 0xCD {
		t.Fatalf("layout % x", b)
	}
	if got, ok := UnmarshalClaimCommand(b); !ok || got != c {
		t.Fatalf("got %+v %v", got, ok)
	}
	bad := func(name string, mutate func([]byte) []byte) {
		t.Helper()
		x := mutate(append([]byte(nil), b...))
		if _, ok := UnmarshalClaimCommand(x); ok {
			t.Errorf("%s: accepted", name)
		}
	}
	bad("short", func(x []byte) []byte { return x[:31] })
	bad("long", func(x []byte) []byte { return append(x, 0) })
	bad("signature", func(x []byte) []byte { x[0] = 'n'; return x })
	bad("reserved", func(x []byte) []byte { x[6] = 1; return x })
	bad("operation 0", func(x []byte) []byte { x[4] = 0; return x })
	bad("operation 4", func(x []byte) []byte { x[4] = 4; return x })
}

func TestClaimLogRoundTrip(t *testing.T) {
	l := ClaimLog{UUID: [16]byte{1, 15: 2}, NGUID: [16]byte{3, 15: 4}, Owner: [16]byte{5, 15: 6}, Epoch: 77, Blank: true}
	b := make([]byte, 4096)
	for i := range b {
		b[i] = 0xEE // Marshal clears the page, not only its fields
	}
	l.Marshal(b)
	if string(b[:4]) != "NXCS" || b[4] != 1 || b[6] != 1 || b[8] != 77 || b[16] != 1 || b[32] != 3 || b[48] != 5 || b[64] != 0 || b[127] != 0 {
		t.Fatalf("layout % x", b[:ClaimLogLen])
	}
	if got, ok := UnmarshalClaimLog(b[:ClaimLogLen]); !ok || got != l {
		t.Fatalf("got %+v %v", got, ok)
	}
	if _, ok := UnmarshalClaimLog(b[:ClaimLogLen-1]); ok {
		t.Error("short page accepted")
	}
	b[5] = 1 // version 257
	if _, ok := UnmarshalClaimLog(b); ok {
		t.Error("unknown version accepted")
	}
	if _, ok := UnmarshalClaimLog(make([]byte, ClaimLogLen)); ok {
		t.Error("a page without the signature accepted")
	}
	var err error = StatusReservationConflict
	if StatusReservationConflict.SC() != 0x83 || StatusReservationConflict.SCT() != SCTGeneric || !strings.Contains(err.Error(), "reservation conflict") {
		t.Fatal(err)
	}
}
