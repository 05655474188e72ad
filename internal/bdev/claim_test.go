package bdev

import (
	"errors"
	"testing"

	"github.com/google/uuid"
)

func TestIdentityRoundTrip(t *testing.T) {
	id := Identity{UUID: uuid.UUID{0x9b, 0x2e, 0x8c, 0x1a, 0x3f, 0x4d, 0x4c, 0x55, 0x8e, 0x21, 0x0d, 0x6f, 0x1b, 0x7a, 0x9c, 0x3e},
		NGUID: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}
	s := id.String()
	if s != "9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e/0102030405060708090a0b0c0d0e0f10" {
		t.Fatalf("String = %q", s)
	}
	got, err := ParseIdentity(s)
	if err != nil || got != id {
		t.Fatalf("ParseIdentity(%q) = %v, %v", s, got, err)
	}
	if z, err := ParseIdentity(""); err != nil || !z.IsZero() || z.String() != "" {
		t.Fatalf("empty identity: %v %v", z, err)
	}
	for _, bad := range []string{"x", s[:40], s[:36] + "-" + s[37:], "zb2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e/0102030405060708090a0b0c0d0e0f10", s[:37] + "zz" + s[39:]} {
		if _, err := ParseIdentity(bad); err == nil {
			t.Errorf("ParseIdentity(%q) accepted", bad)
		}
	}
}

func TestClaimErrors(t *testing.T) {
	var owner uuid.UUID
	owner[0] = 0xab
	err := error(&OwnedError{Owner: owner})
	if !errors.Is(err, ErrOwned) || errors.Is(err, ErrFenced) {
		t.Fatalf("OwnedError matches wrong sentinels")
	}
	if err.Error() != "bdev: owned by nexus ab000000-0000-0000-0000-000000000000" {
		t.Fatalf("OwnedError = %q", err)
	}
	if s := (&StaleEpochError{Epoch: 3, Current: 5}); !errors.Is(s, ErrFenced) {
		t.Fatalf("StaleEpochError does not match ErrFenced")
	}
}
