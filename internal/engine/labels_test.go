package engine

import (
	"context"
	"maps"
	"testing"

	"github.com/nexstor/nexstor/internal/fault"
)

// TestSetPoolLabels: labels set on a pool are reported with it and
// remembered across a restart; an empty map clears them; a bad key and an
// unknown pool are refused.
func TestSetPoolLabels(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	e := r.start(t)
	if _, err := e.CreatePool(ctx, PoolSpec{Name: "p0", Disk: "/d0"}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"tier": "nvme", "nexstor.io/zone": "a"}
	p, err := e.SetPoolLabels(ctx, "p0", want)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(p.Labels, want) {
		t.Fatalf("labels %v, want %v", p.Labels, want)
	}
	wantFault(t, second(e.SetPoolLabels(ctx, "p0", map[string]string{"-bad": "x"})), fault.InvalidArgument, "-bad")
	wantFault(t, second(e.SetPoolLabels(ctx, "nope", want)), fault.NotFound, "nope")
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	e = r.start(t)
	p, err = e.Pool("p0")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(p.Labels, want) {
		t.Fatalf("labels after a restart %v, want %v", p.Labels, want)
	}
	if p, err = e.SetPoolLabels(ctx, "p0", nil); err != nil || len(p.Labels) != 0 {
		t.Fatalf("clearing the labels: %v, %v", p.Labels, err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e = r.start(t)
	defer e.Close()
	if p, _ := e.Pool("p0"); len(p.Labels) != 0 {
		t.Fatalf("cleared labels came back after a restart: %v", p.Labels)
	}
}
