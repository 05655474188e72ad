package mgmt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/nexstor/nexstor/internal/testutil"
)

// recorder is a slog.Handler that keeps every record.
type recorder struct {
	mu    *sync.Mutex
	recs  *[]slog.Record
	attrs []slog.Attr
}

func newRecorder() *recorder { return &recorder{mu: new(sync.Mutex), recs: new([]slog.Record)} }

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	rec = rec.Clone()
	rec.AddAttrs(r.attrs...)
	r.mu.Lock()
	*r.recs = append(*r.recs, rec)
	r.mu.Unlock()
	return nil
}
func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	d := *r
	d.attrs = append(append([]slog.Attr(nil), r.attrs...), as...)
	return &d
}
func (r *recorder) WithGroup(string) slog.Handler { return r }

func (r *recorder) records() []slog.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]slog.Record(nil), *r.recs...)
}

func attrsOf(rec slog.Record) map[string]string {
	m := map[string]string{}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	return m
}

func TestEtcdLogBridge(t *testing.T) {
	rec := newRecorder()
	zl, stopping := newEtcdLogger(slog.New(rec), zapcore.InfoLevel)
	zl.Debug("below the level")
	zl.With(zap.String("member", "m0")).Warn("slow fdatasync", zap.Duration("took", 2*time.Second), zap.Int("n", 3))
	zl.Error("failed to update storage version", zap.Error(errors.New("cannot detect storage schema version: missing term information")))
	zl.Error("failed to update storage version", zap.Error(errors.New("disk full")))
	stopping.Store(true)
	zl.Error("setting up serving from embedded etcd failed.", zap.Error(errors.New("http: Server closed")))

	got := rec.records()
	if len(got) != 4 {
		t.Fatalf("%d records, want 4 (the debug one is below the level): %v", len(got), got)
	}
	// A storage version update before the first term is persisted is
	// retried by etcd: a warning. Any other failure stays an error.
	if l := got[1].Level; l != slog.LevelWarn {
		t.Fatalf("storage version update before the first term logged at %v, want warn", l)
	}
	if l := got[2].Level; l != slog.LevelError {
		t.Fatalf("storage version update failing on the disk logged at %v, want error", l)
	}
	got = append(got[:1], got[3])
	w := got[0]
	a := attrsOf(w)
	if w.Level != slog.LevelWarn || w.Message != "slow fdatasync" || a["component"] != "etcd" || a["member"] != "m0" || a["took"] != "2s" || a["n"] != "3" {
		t.Fatalf("warning carried as %v %q %v", w.Level, w.Message, a)
	}
	if e := got[1]; e.Level != slog.LevelDebug || attrsOf(e)["error"] != "http: Server closed" {
		t.Fatalf("error while stopping carried as %v %v, want debug with its error", e.Level, attrsOf(e))
	}
}

// TestEmbeddedLogsThroughSlogAndStopsQuietly: a member's records reach the
// server's logger, and stopping it logs no error.
func TestEmbeddedLogsThroughSlogAndStopsQuietly(t *testing.T) {
	rec := newRecorder()
	peer := fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := StartEmbedded(ctx, EmbeddedConfig{Name: "m0", Dir: filepath.Join(t.TempDir(), "etcd"),
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t)), PeerURL: peer,
		InitialCluster: map[string]string{"m0": peer}, Token: "log", LogLevel: "info", Log: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	started := len(rec.records())
	if started == 0 {
		t.Fatal("no etcd record reached the logger at info level")
	}
	e.Close()
	for _, r := range rec.records()[started:] {
		if r.Level >= slog.LevelError {
			t.Errorf("error logged while stopping: %q %v", r.Message, attrsOf(r))
		}
	}
	if _, err := StartEmbedded(ctx, EmbeddedConfig{Name: "m1", LogLevel: "loud"}); err == nil {
		t.Error("log level \"loud\" accepted")
	}
}
