package main

import (
	"strings"
	"testing"
)

func TestExpandEngines(t *testing.T) {
	hosts, err := expandEngines("--host-list", "node-[1-2]")
	if err != nil || len(hosts) != 2 || hosts[0] != "node-1:10124" || hosts[1] != "node-2:10124" {
		t.Fatalf("expand: %v %v", hosts, err)
	}
	for _, bad := range []string{"", "node-[3-1]"} {
		if _, err := expandEngines("--access-points", bad); err == nil || !strings.HasPrefix(err.Error(), "--access-points: ") {
			t.Fatalf("host list %q: %v, want an error naming the flag", bad, err)
		}
	}
}
