package engine

import (
	"context"
	"testing"

	"github.com/nexstor/nexstor/internal/fault"
)

// TestCreateIsIdempotent: creating a pool or a replica (with a UUID) again
// with the same spec returns the existing one; another spec is refused
// naming the difference, and nothing changes.
func TestCreateIsIdempotent(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	defer e.Close()
	const disk = "malloc:///p0?size=64MiB"
	p, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: disk, ClusterSize: 0, Force: false})
	if err != nil {
		t.Fatal(err)
	}
	again, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: disk, ClusterSize: 0, Force: false})
	if err != nil || again.UUID != p.UUID {
		t.Fatalf("the same pool again: %+v, %v", again, err)
	}
	_, err = e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: "malloc:///other?size=64MiB", ClusterSize: 0, Force: false})
	wantFault(t, err, fault.AlreadyExists, "p0", "malloc:///other")

	const id = "9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e"
	o := CreateReplicaOptions{Name: "r0", Pool: "p0", Size: 8 << 20, Thin: true, UUID: id}
	ri, err := e.CreateReplica(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	ri2, err := e.CreateReplica(context.Background(), o)
	if err != nil || ri2.UUID != ri.UUID || ri2.Name != "r0" {
		t.Fatalf("the same replica again: %+v, %v", ri2, err)
	}
	bigger := o
	bigger.Size = 16 << 20
	_, err = e.CreateReplica(context.Background(), bigger)
	wantFault(t, err, fault.AlreadyExists, "r0", "size 8MiB")
	thick := o
	thick.Thin = false
	_, err = e.CreateReplica(context.Background(), thick)
	wantFault(t, err, fault.AlreadyExists, "r0", "thin")
	renamed := o
	renamed.Name = "r1"
	_, err = e.CreateReplica(context.Background(), renamed)
	wantFault(t, err, fault.AlreadyExists, "r0", id)
	otherID := o
	otherID.UUID = "1b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e"
	_, err = e.CreateReplica(context.Background(), otherID)
	wantFault(t, err, fault.AlreadyExists, "r0", "uuid "+id)
	// Without a UUID a second create of the name is refused as before.
	_, err = e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: 8 << 20, Thin: true})
	wantFault(t, err, fault.AlreadyExists, "r0")
	list, _ := e.Replicas("")
	if len(list) != 1 {
		t.Fatalf("replicas %+v, want only r0", list)
	}
}
