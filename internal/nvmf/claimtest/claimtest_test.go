package claimtest

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
)

func newDev(t *testing.T) *Device {
	t.Helper()
	m, err := bdev.NewMalloc(bdevtest.MinSize, 512)
	if err != nil {
		t.Fatal(err)
	}
	return New(m, bdev.Identity{UUID: uuid.New(), NGUID: [16]byte{9}})
}

func TestSemantics(t *testing.T) {
	ctx := context.Background()
	d := newDev(t)
	a, b := uuid.New(), uuid.New()
	buf := make([]byte, 512)
	if st, _ := d.ClaimState(ctx); !st.Blank || st.Owner != uuid.Nil || st.Identity.NGUID[0] != 9 {
		t.Fatalf("fresh state %+v", st)
	}
	h1, err := d.Claim(ctx, bdev.Claim{Owner: a, Epoch: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(buf, 0); !errors.Is(err, bdev.ErrOwned) {
		t.Fatalf("unclaimed write on an owned device: %v", err)
	}
	if _, err := d.ReadAt(buf, 0); err != nil {
		t.Fatalf("unclaimed read: %v", err)
	}
	if _, err := h1.WriteAt([]byte{1: 1, 511: 0}, 0); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.ClaimState(ctx); st.Blank || st.Owner != a || st.Epoch != 2 {
		t.Fatalf("state %+v", st)
	}
	var oe *bdev.OwnedError
	if _, err := d.Claim(ctx, bdev.Claim{Owner: b, Epoch: 9}); !errors.As(err, &oe) || oe.Owner != a {
		t.Fatalf("other owner: %v", err)
	}
	var se *bdev.StaleEpochError
	if _, err := d.Claim(ctx, bdev.Claim{Owner: a, Epoch: 1}); !errors.As(err, &se) || se.Epoch != 1 || se.Current != 2 {
		t.Fatalf("stale: %v", err)
	}
	h2, err := d.Claim(ctx, bdev.Claim{Owner: a, Epoch: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h1.WriteAt(buf, 0); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("superseded handle: %v", err)
	}
	if err := h1.Raise(ctx, 5); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("raise on a superseded handle: %v", err)
	}
	if err := h2.Raise(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := h2.Raise(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.ClaimState(ctx); st.Epoch != 5 {
		t.Fatalf("epoch after raises %d", st.Epoch)
	}
	if err := h2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h2.Flush(); !errors.Is(err, bdev.ErrFenced) {
		t.Fatalf("released handle: %v", err)
	}
	if st, _ := d.ClaimState(ctx); st.Owner != uuid.Nil || st.Epoch != 5 {
		t.Fatalf("after release %+v", st)
	}
	if _, err := d.WriteAt(buf, 0); err != nil {
		t.Fatalf("unclaimed write on an unowned device: %v", err)
	}
	if _, err := d.Claim(ctx, bdev.Claim{Owner: b, Epoch: 6}); err != nil {
		t.Fatalf("new owner after release: %v", err)
	}
	if d.OpenHandles() != 3 || d.Claims() != 3 || d.Refused() != 3 {
		t.Fatalf("open %d claims %d refused %d", d.OpenHandles(), d.Claims(), d.Refused())
	}
	h1.Close()
	h1.Close()
	if d.OpenHandles() != 2 {
		t.Fatalf("open %d after closing one handle twice", d.OpenHandles())
	}
}

func TestClaimedHandleConformance(t *testing.T) {
	d := newDev(t)
	h, err := d.Claim(context.Background(), bdev.Claim{Owner: uuid.New(), Epoch: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := bdevtest.TestDevice(h); err != nil {
		t.Fatal(err)
	}
}
