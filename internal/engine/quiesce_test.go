package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nexus"
)

// TestQuiesceNexus holds a nexus's writes across two calls while its
// replicas are snapshotted: a write issued during the hold is in no
// snapshot and completes after the resume; a child named failed is faulted
// (snapshot-failed); a hold that expires before the resume reports
// held=false; bad requests get their exact codes.
func TestQuiesceNexus(t *testing.T) {
	const size = 4 << 20
	r := &nexusRig{dir: t.TempDir()}
	r.start(t)
	e := r.e
	defer func() { e.Close() }()
	ctx := context.Background()
	if _, err := e.CreatePool(ctx, PoolSpec{Name: "p0", Disk: fmt.Sprintf("file://%s?size=%d", filepath.Join(r.dir, "d0.img"), 48<<20), ClusterSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	var uris, ids []string
	for _, name := range []string{"r1", "r2"} {
		ri, err := e.CreateReplica(ctx, CreateReplicaOptions{Name: name, Pool: "p0", Size: size, Thin: true})
		if err != nil {
			t.Fatal(err)
		}
		uris, ids = append(uris, "bdev:///"+ri.UUID), append(ids, ri.UUID)
	}
	ni, err := e.CreateNexus(ctx, CreateNexusOptions{Name: "n0", Children: uris})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.PublishNexus(ctx, "n0", "nbd", nil); err != nil {
		t.Fatal(err)
	}
	dev := r.dev(t, "n0")
	before := make([]byte, size)
	rand.Read(before)
	if _, err := dev.WriteAt(before, 0); err != nil {
		t.Fatal(err)
	}

	_, err = e.QuiesceNexus(ctx, "n0", MaxQuiesceHold+time.Second)
	wantFault(t, err, fault.InvalidArgument)
	_, err = e.QuiesceNexus(ctx, "nope", 0)
	wantFault(t, err, fault.NotFound, "nope")
	_, err = e.ResumeNexus(ctx, "n0", "9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e", nil)
	wantFault(t, err, fault.NotFound)

	q, err := e.QuiesceNexus(ctx, ni.UUID, 0) // by uuid
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(slices.Sorted(slices.Values(q.Online)), slices.Sorted(slices.Values(uris))) {
		t.Fatalf("online %v, want %v", q.Online, uris)
	}
	_, err = e.QuiesceNexus(ctx, "n0", 0)
	wantFault(t, err, fault.FailedPrecondition, "n0")
	// A write issued during the hold waits for the resume.
	during := bytes.Repeat([]byte{0xAB}, 4096)
	wrote := make(chan error, 1)
	go func() { _, err := dev.WriteAt(during, 0); wrote <- err }()
	at := time.Now()
	for i, id := range ids {
		if _, err := e.CreateSnapshot(ctx, CreateSnapshotOptions{ReplicaUUID: id, UUID: fmt.Sprintf("5e1f0000-0000-4000-8000-00000000000%d", i+1), Name: fmt.Sprintf("s%d", i+1), Created: at}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := e.ResumeNexus(ctx, "n0", q.ID, []string{uris[1]})
	if err != nil || !res.Held || res.Err != nil || res.Paused <= 0 {
		t.Fatalf("resume: %+v, %v", res, err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	for i := range ids {
		c, err := e.CloneSnapshot(ctx, CloneSnapshotOptions{SnapshotUUID: fmt.Sprintf("5e1f0000-0000-4000-8000-00000000000%d", i+1),
			UUID: fmt.Sprintf("c1000000-0000-4000-8000-00000000000%d", i+1), Name: fmt.Sprintf("c%d", i+1)})
		if err != nil {
			t.Fatal(err)
		}
		if got := readReplica(t, e, c.UUID, size); !bytes.Equal(got, before) {
			t.Fatalf("snapshot of %s does not hold exactly the writes acknowledged before the quiesce", ids[i])
		}
	}
	ni, err = e.Nexus("n0")
	if err != nil {
		t.Fatal(err)
	}
	if c := childOf(t, ni, uris[1]); c.State != nexus.StateFaulted || c.Reason != nexus.ReasonSnapshotFailed {
		t.Fatalf("the failed child is %v (%v), want faulted (snapshot-failed)", c.State, c.Reason)
	}

	// A hold that expires before the resume: writes resumed, held=false.
	q, err = e.QuiesceNexus(ctx, "n0", time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	e.qmu.Lock()
	h := e.holds[q.ID]
	e.qmu.Unlock()
	<-h.done
	res, err = e.ResumeNexus(ctx, "n0", q.ID, nil)
	if err != nil || res.Held {
		t.Fatalf("resume after the hold expired: %+v, %v; want held=false", res, err)
	}
	if _, err := dev.WriteAt(during, 4096); err != nil {
		t.Fatalf("a write after an expired hold: %v", err)
	}
}
