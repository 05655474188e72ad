package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPoolLabel: nexctl pool label sets a pool's labels on a real engine
// (shown by pool get), clears them when given none, and refuses a bad key
// before calling.
func TestPoolLabel(t *testing.T) {
	s := startEngine(t, "127.0.0.1:0")
	nx := func(args ...string) result {
		return nexctlRun(t, time.Minute, append([]string{"--engine", s.GRPCAddr(), "--insecure"}, args...)...)
	}
	if r := nx("pool", "create", "p0", fmt.Sprintf("file://%s?size=%d", filepath.Join(t.TempDir(), "d0.img"), 64<<20)); r.status != 0 {
		t.Fatalf("pool create: %+v", r)
	}
	r := nx("pool", "label", "p0", "tier=nvme", "zone=a")
	if r.status != 0 || !strings.Contains(r.stdout, "tier=nvme,zone=a") {
		t.Fatalf("pool label: %+v", r)
	}
	labels := func() map[string]string {
		r := nx("pool", "get", "p0", "-o", "json")
		var v struct {
			Labels map[string]string `json:"labels"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
			t.Fatalf("pool get: %v: %+v", err, r)
		}
		return v.Labels
	}
	if got := labels(); !maps.Equal(got, map[string]string{"tier": "nvme", "zone": "a"}) {
		t.Fatalf("labels %v", got)
	}
	wantError(t, nx("pool", "label", "p0", "zone-=a"), exitUsage, "cli.usage", "not a label key")
	if r := nx("pool", "label", "p0"); r.status != 0 {
		t.Fatalf("clearing: %+v", r)
	}
	if got := labels(); len(got) != 0 {
		t.Fatalf("labels after clearing %v", got)
	}
}
