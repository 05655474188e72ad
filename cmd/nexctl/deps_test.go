package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLinksNoServer checks that nexctl, a client, links none of the
// servers: not the engine, the management service (and its embedded etcd),
// pools, nexuses or the NVMe/TCP target. The client packages are fine.
func TestLinksNoServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps listed only %v", deps)
	}
	const mod = "github.com/nexstor/nexstor/"
	forbidden := []string{mod + "internal/engine", mod + "internal/mgmt", mod + "internal/pool", mod + "internal/nexus",
		mod + "internal/nvmf/target", mod + "internal/control/server"}
	prefixes := []string{"go.etcd.io/etcd/server", "go.etcd.io/bbolt", "go.etcd.io/raft"}
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f {
				t.Errorf("nexctl links %s", d)
			}
		}
		for _, p := range prefixes {
			if strings.HasPrefix(d, p) {
				t.Errorf("nexctl links %s", d)
			}
		}
	}
}
