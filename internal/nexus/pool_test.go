package nexus

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/pool"
)

// poolRouter resolves bdev:///<replica-uuid> to a replica of one of the
// pools, as the engine does.
func poolRouter(pools ...*pool.Pool) *Router {
	return &Router{Local: func(_ context.Context, id string) (bdev.Device, error) {
		for _, p := range pools {
			for _, ri := range p.Replicas() {
				if ri.UUID == id {
					return p.OpenReplica(ri.Name)
				}
			}
		}
		return nil, fmt.Errorf("replica %s not found", id)
	}}
}

func newPoolReplicas(t *testing.T, k int, size int64) (*pool.Pool, []string) {
	t.Helper()
	d, err := bdev.NewMalloc(64<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.Create(d, pool.CreateOptions{Name: "p0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	var uris []string
	for i := range k {
		ri, err := p.CreateReplica(pool.ReplicaOptions{Name: fmt.Sprintf("r%d", i), Size: size, Thin: true})
		if err != nil {
			t.Fatal(err)
		}
		uris = append(uris, "bdev:///"+ri.UUID)
	}
	return p, uris
}

func TestPoolReplicaChildren(t *testing.T) {
	const size = 4 << 20
	p, uris := newPoolReplicas(t, 4, size)
	ctx := context.Background()
	// Real UUIDs: pool replicas are claimed with the nexus's UUID.
	cfg := Config{UUID: "1c6f0e52-3d4b-4a8e-b1f2-7a9c0d5e6f10", Size: size, Children: uris[:3], Store: NewMemStore(),
		Opener: poolRouter(p), RebuildSegment: 256 << 10, Logger: slog.New(slog.DiscardHandler)}
	nx, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitInSync(t, nx) // no record: one source, the others rebuilt (or blank)
	for _, c := range nx.Children() {
		if !c.Local {
			t.Fatalf("bdev:// child not local: %+v", c)
		}
	}
	m := newModel(size)
	w := startWorkload(t, nx, m, 4, true)
	waitAcked(t, w, 200)
	if err := nx.FaultChild(ctx, uris[1], ""); err != nil {
		t.Fatal(err)
	}
	if err := nx.AddChild(ctx, uris[3]); err != nil {
		t.Fatal(err)
	}
	st := waitRebuild(t, nx, uris[3])
	w.finish(t)
	if st.State != RebuildCompleted {
		t.Fatalf("rebuild %+v", st)
	}
	verifyClean(t, nx, 3)
	if err := m.checkDevice(nx); err != nil {
		t.Fatal(err)
	}
	// Destroyed for good: its claims go, so another nexus may use the
	// replicas.
	if err := nx.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}

	// The conformance suite over replicas (fresh store, new nexus).
	cfg.UUID, cfg.Store, cfg.Force = "2d7a1f63-4e5c-4b9f-82a3-8bad1e6f7021", NewMemStore(), false
	nx, err = New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitInSync(t, nx)
	if err := bdevtest.TestDevice(nx); err != nil {
		t.Fatal(err)
	}
}
