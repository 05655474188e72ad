package nexus

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"
)

// A nexus whose record is not clean (its predecessor crashed) brings its
// children back into agreement from one of them, and records a clean
// shutdown only afterwards.
func TestResyncAfterUncleanShutdown(t *testing.T) {
	const seg = 64 << 10
	store := NewMemStore()
	r := newRig(t, 3, testSize, Config{Store: store, RebuildSegment: seg})
	ctx := context.Background()
	m := newModel(testSize)
	w := startWorkload(t, r.nx, m, 4, false)
	waitAcked(t, w, 100)
	w.finish(t)
	r.nx.Close()
	rec, _ := store.Load(ctx, r.nx.UUID())
	if !rec.Clean {
		t.Fatal("Close did not record a clean shutdown")
	}
	// What a crash during a write leaves: one child has the new data of
	// an unacknowledged write, the others the old; and no clean mark.
	junk := bytes.Repeat([]byte{0xA5}, 8192)
	if _, err := r.mem[r.uris[2]].WriteAt(junk, 3*seg+4096); err != nil {
		t.Fatal(err)
	}
	rec.Clean = false
	store.Save(ctx, rec)

	cfg := Config{UUID: r.nx.UUID(), Children: r.uris, Store: store, Opener: r.opener, RebuildSegment: seg,
		Logger: slog.New(slog.DiscardHandler)}
	nx, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !nx.UncleanShutdown() {
		t.Fatal("unclean shutdown not reported")
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := nx.WaitResync(wctx); err != nil {
		t.Fatal(err)
	}
	if nx.Resyncing() || nx.Stats().ResyncRepaired != seg {
		t.Fatalf("resyncing %v, stats %+v", nx.Resyncing(), nx.Stats())
	}
	verifyClean(t, nx, 3)
	// The authority is child 0 (no child is local): its version won.
	if err := m.checkDevice(r.mem[r.uris[2]]); err != nil {
		t.Fatal(err)
	}
	nx.Close()
	if rec, _ = store.Load(ctx, r.nx.UUID()); !rec.Clean {
		t.Fatal("no clean shutdown recorded after the resync")
	}
	nx, err = New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer nx.Close()
	if nx.UncleanShutdown() || nx.Resyncing() {
		t.Fatal("a clean nexus resyncs")
	}
}
