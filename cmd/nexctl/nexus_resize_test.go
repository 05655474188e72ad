package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/engine"
)

// TestNexusResize grows a nexus with `nexctl nexus resize`: refused (exit 1,
// naming the child) while a child is too small, done once the replica grew.
func TestNexusResize(t *testing.T) {
	s := startEngine(t, "127.0.0.1:0")
	ctx := context.Background()
	e := s.Engine
	if _, err := e.CreatePool(ctx, engine.PoolSpec{Name: "p0", Disk: "malloc:///p0?size=64MiB", ClusterSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	ri, err := e.CreateReplica(ctx, engine.CreateReplicaOptions{Name: "r0", Pool: "p0", Size: 4 << 20, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	child := "bdev:///" + ri.UUID
	ni, err := e.CreateNexus(ctx, engine.CreateNexusOptions{Name: "n0", Children: []string{child}})
	if err != nil {
		t.Fatal(err)
	}
	nx := func(args ...string) result {
		return nexctlRun(t, time.Minute, append([]string{"--engine", s.GRPCAddr(), "--insecure"}, args...)...)
	}
	wantError(t, nx("nexus", "resize", "n0", "lots"), exitUsage, "cli.usage", "SIZE", "lots")
	wantError(t, nx("nexus", "resize", "n0", "8MiB"), 1, "nexus.child_too_small", child)
	wantError(t, nx("nexus", "resize", "n0", "2MiB"), 1, "nexus.shrink", "n0")
	if _, err := e.ResizeReplica(ctx, "r0", 8<<20, engine.Access{Owner: ni.UUID}); err != nil {
		t.Fatal(err)
	}
	r := nx("nexus", "resize", "n0", "8MiB", "-o", "json")
	if r.status != 0 {
		t.Fatalf("resize: %+v", r)
	}
	var v nexusView
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Size != 8<<20 {
		t.Fatalf("printed %s (%v)", r.stdout, err)
	}
	if ni, err := e.Nexus("n0"); err != nil || ni.Size != 8<<20 {
		t.Fatalf("nexus %+v %v", ni, err)
	}
}
