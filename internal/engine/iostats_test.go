package engine

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// TestIOStatsCountHostIO checks that what hosts do through a published
// nexus and a shared replica shows in IOStats, per device, and that the
// nexus's counters outlive an unpublish.
func TestIOStatsCountHostIO(t *testing.T) {
	r := &nexusRig{dir: t.TempDir()}
	r.start(t)
	e := r.e
	defer func() { e.Close() }()
	if _, err := e.CreatePool(context.Background(), PoolSpec{Name: "p0", Disk: fmt.Sprintf("file://%s?size=%d", filepath.Join(r.dir, "d0.img"), 32<<20), ClusterSize: 1 << 20, Force: false}); err != nil {
		t.Fatal(err)
	}
	r1, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r1", Pool: "p0", Size: 4 << 20, Thin: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r2", Pool: "p0", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateNexus(context.Background(), CreateNexusOptions{Name: "n0", Children: []string{"bdev:///" + r1.UUID}}); err != nil {
		t.Fatal(err)
	}
	if got := e.IOStats(); len(got) != 1 || got[0].Kind != DeviceNexus || got[0].Name != "n0" || got[0].Stats.Write.Count != 0 {
		t.Fatalf("IOStats before any I/O: %+v", got)
	}
	if _, err := e.PublishNexus(context.Background(), "n0", "nbd", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ShareReplica(context.Background(), "r2", "nbd", nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	nx := r.dev(t, "n0")
	for range 3 {
		if _, err := nx.WriteAt(buf, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nx.ReadAt(buf[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if err := nx.Flush(); err != nil {
		t.Fatal(err)
	}
	r.nbd.mu.Lock()
	rep := r.nbd.exports["r2"]
	r.nbd.mu.Unlock()
	if _, err := rep.WriteAt(buf[:8192], 1<<20); err != nil {
		t.Fatal(err)
	}

	got := e.IOStats()
	if len(got) != 2 {
		t.Fatalf("IOStats %+v, want the nexus and the replica share", got)
	}
	n, s := got[0], got[1]
	if n.Kind != DeviceNexus || n.Name != "n0" || n.Pool != "" {
		t.Fatalf("first device %+v, want nexus n0", n)
	}
	if n.Stats.Write.Count != 3 || n.Stats.Write.Bytes != 3*64<<10 || n.Stats.Read.Count != 1 ||
		n.Stats.Read.Bytes != 4096 || n.Stats.Flush.Count != 1 || n.Stats.Errors() != 0 {
		t.Fatalf("nexus counters %+v", n.Stats)
	}
	if n.Stats.Write.Latency.Count() != 3 {
		t.Fatalf("nexus write latency histogram holds %d samples, want 3", n.Stats.Write.Latency.Count())
	}
	if s.Kind != DeviceReplica || s.Name != "r2" || s.Pool != "p0" || s.Protocol != ProtocolNBD ||
		s.Stats.Write.Count != 1 || s.Stats.Write.Bytes != 8192 || s.Stats.Read.Count != 0 {
		t.Fatalf("replica share %+v", s)
	}

	// Unpublishing keeps the nexus's counters; unsharing drops the share's.
	if _, err := e.UnpublishNexus(context.Background(), "n0"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.UnshareReplica(context.Background(), "r2", Access{}); err != nil {
		t.Fatal(err)
	}
	got = e.IOStats()
	if len(got) != 1 || got[0].Name != "n0" || got[0].Stats.Write.Count != 3 {
		t.Fatalf("IOStats after unpublish and unshare: %+v", got)
	}
	ni, err := e.Nexus("n0")
	if err != nil {
		t.Fatal(err)
	}
	if ni.Stats.Retired != 0 || ni.Stats.RebuildBytes != 0 {
		t.Fatalf("nexus stats %+v, want no retirement and no rebuild", ni.Stats)
	}
}
