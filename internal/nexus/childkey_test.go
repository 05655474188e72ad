package nexus

import "testing"

// TestChildKey: a replica is the same record entry whether its nexus
// reaches it locally or through a share; other URIs are their own key.
func TestChildKey(t *testing.T) {
	const id = "0f8c9a8e-3d5c-4b8e-9d39-0f6a7c2b1e44"
	local, remote := "bdev:///"+id, "nvmf://10.0.0.2:4420/nqn.2024-11.io.nexstor:replica:"+id
	if childKey(local) != childKey(remote) {
		t.Fatalf("%q and %q have keys %q and %q", local, remote, childKey(local), childKey(remote))
	}
	for _, u := range []string{"malloc:///m0?size=64MiB", "bdev:///r0", "nbd://h:10809/" + id[:35]} {
		if childKey(u) != u {
			t.Errorf("childKey(%q) = %q, want the URI itself", u, childKey(u))
		}
	}
	if childKey("bdev:///"+id) == childKey("bdev:///1f8c9a8e-3d5c-4b8e-9d39-0f6a7c2b1e44") {
		t.Error("two replicas share a key")
	}
}
