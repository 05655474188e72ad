package mgmt

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

// TestGarbageCollection: after the grace period, replicas and nexuses that
// a deleted volume (its tombstone) or a live volume positively disowns are
// destroyed; a replica of an unknown owner is reported and kept, and a
// replica nobody claims is not touched.
func TestGarbageCollection(t *testing.T) {
	vs := newVolSystem(t, []int64{256 << 20, 256 << 20, 256 << 20}, nil)
	vs.svc.cfg.Now = time.Now
	vs.svc.cfg.GCGrace = 300 * time.Millisecond
	ctx := context.Background()
	keep, err := vs.vols().CreateVolume(ctx, create("keep", 16<<20, 2))
	if err != nil {
		t.Fatal(err)
	}
	gone, err := vs.vols().CreateVolume(ctx, create("gone", 16<<20, 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vs.vols().DeleteVolume(ctx, &mgmtv1.DeleteVolumeRequest{Name: "gone"}); err != nil {
		t.Fatal(err)
	}
	n := vs.nodes[0]
	mk := func(name, owner string) {
		t.Helper()
		if _, err := n.cl.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: name, Uuid: uuid.NewString(), Pool: "p0",
			Size: 4 << 20, Thin: true, Owner: owner}); err != nil {
			t.Fatal(err)
		}
	}
	mk("of-deleted", gone.Spec.Uuid)      // a node that returns with a replica of a deleted volume
	mk("disowned", keep.Spec.Uuid)        // claims a live volume that does not list it
	mk("unknown-owner", uuid.NewString()) // no volume this system knows of
	mk("by-hand", "")                     // unclaimed
	// A nexus of "keep" where keep is not published.
	child := uuid.NewString()
	if _, err := n.cl.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "nx-child", Uuid: child, Pool: "p0", Size: 4 << 20, Thin: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.cl.CreateNexus(ctx, &enginev1.CreateNexusRequest{Name: "keep", Uuid: keep.Spec.Uuid, Children: []string{"bdev:///" + child}}); err != nil {
		t.Fatal(err)
	}
	names := func() []string {
		rr, err := n.cl.ListReplicas(ctx, &enginev1.ListReplicasRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rr.Replicas {
			out = append(out, r.Name)
		}
		nr, err := n.cl.ListNexuses(ctx, &enginev1.ListNexusesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range nr.Nexuses {
			out = append(out, "nexus "+x.Name)
		}
		slices.Sort(out)
		return out
	}
	if err := vs.svc.VolumePass(ctx); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"of-deleted", "disowned", "nexus keep"} {
		if !slices.Contains(names(), want) {
			t.Fatalf("%s was collected before the grace period: %v", want, names())
		}
	}
	time.Sleep(400 * time.Millisecond)
	if err := vs.svc.VolumePass(ctx); err != nil {
		t.Fatal(err)
	}
	got := names()
	for _, x := range []string{"of-deleted", "disowned", "nexus keep"} {
		if slices.Contains(got, x) {
			t.Fatalf("%s was not collected: %v", x, got)
		}
	}
	for _, x := range []string{"unknown-owner", "by-hand", "nx-child"} {
		if !slices.Contains(got, x) {
			t.Fatalf("%s was collected: %v", x, got)
		}
	}
	// keep's own replicas are untouched, and it is still whole.
	g, err := vs.vols().GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: "keep"})
	if err != nil || g.Status.Phase != PhaseOnline || g.Status.Healthy != 2 {
		t.Fatalf("keep: %v %v", err, g.GetStatus())
	}
	resp, err := vs.vols().ListEvents(ctx, &mgmtv1.ListEventsRequest{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range resp.Events {
		kinds[e.Kind]++
		if e.Kind == evReplicaOrph && !strings.Contains(e.Message, "left alone") {
			t.Fatalf("orphan event: %+v", e)
		}
	}
	if kinds[evReplicaGC] != 2 || kinds[evNexusGC] != 1 || kinds[evReplicaOrph] != 1 {
		t.Fatalf("events: %v", kinds)
	}
}
