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
