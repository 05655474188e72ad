package nvme

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

func TestANAStates(t *testing.T) {
	for _, c := range []struct {
		s          ANAState
		name       string
		accessible bool
		status     Status
	}{
		{ANAOptimized, "optimized", true, StatusSuccess},
		{ANANonOptimized, "non-optimized", true, StatusSuccess},
		{ANAInaccessible, "inaccessible", false, MakeStatus(3, 0x02)},
		{ANAPersistentLoss, "persistent-loss", false, MakeStatus(3, 0x01)},
		{ANAChange, "change", false, MakeStatus(3, 0x03)},
	} {
		if !c.s.Valid() || c.s.String() != c.name || c.s.Accessible() != c.accessible || c.s.IOStatus() != c.status {
			t.Errorf("%#x: valid %v name %q accessible %v status %#x", uint8(c.s), c.s.Valid(), c.s, c.s.Accessible(), uint16(c.s.IOStatus()))
		}
		if c.s.IOStatus()&DNR != 0 {
			t.Errorf("%v: the status has DNR; a multipath host would fail the I/O instead of retrying it on another path", c.s)
		}
		if p, err := ParseANAState(c.name); err != nil || p != c.s {
			t.Errorf("ParseANAState(%q) = %v, %v", c.name, p, err)
		}
	}
	for _, s := range []ANAState{0, 5, 0x0E, 0x10, 0xFF} {
		if s.Valid() || s.Accessible() {
			t.Errorf("%#x is valid or accessible", uint8(s))
		}
	}
	if _, err := ParseANAState("active"); err == nil {
		t.Error("ParseANAState accepted a name that is no state")
	}
	if StatusANAInaccessible.Error() != "nvme status asymmetric access inaccessible (SCT 3, SC 0x02)" {
		t.Errorf("%q", StatusANAInaccessible.Error())
	}
	if AENResult(AENTypeNotice, AENNoticeANAChange, LogANA) != 0x0C0302 {
		t.Errorf("ANA change event %#x", AENResult(AENTypeNotice, AENNoticeANAChange, LogANA))
	}
}

func TestANALogLayout(t *testing.T) {
	l := ANALog{ChangeCount: 0x0102030405060708, Groups: []ANAGroup{
		{ID: 1, ChangeCount: 9, State: ANAOptimized, NSIDs: []uint32{1, 3}},
		{ID: 7, ChangeCount: 10, State: ANAChange, NSIDs: []uint32{2}},
	}}
	if n := l.Len(false); n != 16+32+8+32+4 {
		t.Fatalf("Len %d", n)
	}
	b := bytes.Repeat([]byte{0xEE}, l.Len(false)+8)
	l.Marshal(b, false)
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(b[o:]) }
	le64 := func(o int) uint64 { return binary.LittleEndian.Uint64(b[o:]) }
	switch {
	case le64(0) != l.ChangeCount || binary.LittleEndian.Uint16(b[8:]) != 2 || !bytes.Equal(b[10:16], make([]byte, 6)):
		t.Fatalf("header % x", b[:16])
	case le32(16) != 1 || le32(20) != 2 || le64(24) != 9 || b[32] != 1 || !bytes.Equal(b[33:48], make([]byte, 15)):
		t.Fatalf("first descriptor % x", b[16:48])
	case le32(48) != 1 || le32(52) != 3:
		t.Fatalf("first NSIDs % x", b[48:56])
	case le32(56) != 7 || le32(60) != 1 || le64(64) != 10 || b[72] != 0x0F || le32(88) != 2:
		t.Fatalf("second descriptor % x", b[56:92])
	case !bytes.Equal(b[92:], bytes.Repeat([]byte{0xEE}, 8)):
		t.Fatalf("Marshal wrote past the page: % x", b[92:])
	}
	got, err := UnmarshalANALog(b, 1024)
	if err != nil || !reflect.DeepEqual(got, l) {
		t.Fatalf("decoded %+v, %v", got, err)
	}

	// Return Groups Only: the descriptors, NNSIDs 0, no NSIDs.
	if n := l.Len(true); n != 16+2*32 {
		t.Fatalf("Len(rgo) %d", n)
	}
	r := make([]byte, l.Len(true))
	l.Marshal(r, true)
	if binary.LittleEndian.Uint32(r[20:]) != 0 || binary.LittleEndian.Uint32(r[48:]) != 7 || r[64] != 0x0F {
		t.Fatalf("rgo page % x", r)
	}
	got, err = UnmarshalANALog(r, 1024)
	if err != nil || len(got.Groups) != 2 || got.Groups[0].NSIDs != nil || got.Groups[1].State != ANAChange {
		t.Fatalf("rgo decoded %+v, %v", got, err)
	}

	// An empty page is a header.
	e := make([]byte, 16)
	(&ANALog{ChangeCount: 3}).Marshal(e, false)
	if got, err := UnmarshalANALog(e, 0); err != nil || got.ChangeCount != 3 || len(got.Groups) != 0 {
		t.Fatalf("empty page: %+v %v", got, err)
	}
}

func TestANALogRefusesMalformedPages(t *testing.T) {
	good := ANALog{ChangeCount: 1, Groups: []ANAGroup{{ID: 1, ChangeCount: 1, State: ANAOptimized, NSIDs: []uint32{1, 2}}}}
	page := func(edit func(b []byte)) []byte {
		b := make([]byte, good.Len(false))
		good.Marshal(b, false)
		edit(b)
		return b
	}
	for name, b := range map[string][]byte{
		"short header":         make([]byte, 15),
		"group count too high": page(func(b []byte) { b[8] = 2 }),
		"group ID 0":           page(func(b []byte) { b[16] = 0 }),
		"state 0":              page(func(b []byte) { b[32] = 0 }),
		"state 5":              page(func(b []byte) { b[32] = 5 }),
		"NSIDs past the end":   page(func(b []byte) { b[20] = 3 }),
		"NSID 0":               page(func(b []byte) { b[48] = 0 }),
		"NSIDs descending":     page(func(b []byte) { b[48] = 5 }),
		"huge NNSIDs":          page(func(b []byte) { binary.LittleEndian.PutUint32(b[20:], 0xFFFFFFFF) }),
	} {
		if _, err := UnmarshalANALog(b, 1024); !errors.Is(err, ErrANALog) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := UnmarshalANALog(page(func([]byte) {}), 1); !errors.Is(err, ErrANALog) {
		t.Errorf("more NSIDs than allowed: %v", err)
	}
}

// FuzzANALog decodes arbitrary bytes as an ANA log page: the decoder must
// never panic, and a page it accepts must encode back to the bytes it was
// read from, apart from reserved bytes and the state field's reserved
// high bits.
func FuzzANALog(f *testing.F) {
	l := ANALog{ChangeCount: 5, Groups: []ANAGroup{
		{ID: 1, ChangeCount: 5, State: ANAInaccessible, NSIDs: []uint32{1, 2, 9}},
		{ID: 2, ChangeCount: 4, State: ANANonOptimized},
	}}
	for _, rgo := range []bool{false, true} {
		b := make([]byte, l.Len(rgo))
		l.Marshal(b, rgo)
		f.Add(b)
	}
	f.Add(make([]byte, 16))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := UnmarshalANALog(b, 64)
		if err != nil {
			return
		}
		out := make([]byte, got.Len(false))
		got.Marshal(out, false)
		want := bytes.Clone(b[:len(out)])
		clear(want[10:16])
		for p, i := ANALogHeaderLen, 0; i < len(got.Groups); i++ {
			want[p+16] &= 0x0F
			clear(want[p+17 : p+32])
			p += ANAGroupDescLen + 4*len(got.Groups[i].NSIDs)
		}
		if !bytes.Equal(out, want) {
			t.Fatalf("page % x decodes to %+v, which encodes to % x", b, got, out)
		}
	})
}
