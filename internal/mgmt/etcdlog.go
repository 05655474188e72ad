package mgmt

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcdLog carries the embedded etcd member's zap logging into the server's
// slog logger, so that an operator reads one log in one format. Records
// keep their fields and gain component=etcd.
//
// While the member is being stopped, etcd reports each listener it closes
// as an error ("setting up serving from embedded etcd failed", with a stack
// trace). Those are the shutdown itself, not a fault: once stopping is set,
// that message is demoted to debug. Every other record keeps its level.
type etcdLog struct {
	log      *slog.Logger
	min      zapcore.Level
	stopping *atomic.Bool
	fields   []zapcore.Field
}

// etcdServeStopped is the message etcd logs for each listener it closes.
const etcdServeStopped = "setting up serving from embedded etcd failed."

// etcdStorageVersion is the message etcd logs, as an error, when its
// storage version monitor runs before the member has persisted its first
// term (etcdNoTermYet in the error): a new member that is stopped, or asked
// for its storage version, in its first moments. The monitor tries again on
// its next round, so it is carried as a warning.
const (
	etcdStorageVersion = "failed to update storage version"
	etcdNoTermYet      = "missing term information"
)

// newEtcdLogger returns a zap logger writing to log at min and above, and
// the flag that marks the member as stopping.
func newEtcdLogger(log *slog.Logger, min zapcore.Level) (*zap.Logger, *atomic.Bool) {
	stopping := new(atomic.Bool)
	return zap.New(&etcdLog{log: log.With("component", "etcd"), min: min, stopping: stopping}), stopping
}

// Enabled implements zapcore.LevelEnabler.
func (c *etcdLog) Enabled(l zapcore.Level) bool { return l >= c.min }

// With implements zapcore.Core.
func (c *etcdLog) With(fields []zapcore.Field) zapcore.Core {
	d := *c
	d.fields = append(append([]zapcore.Field(nil), c.fields...), fields...)
	return &d
}

// Check implements zapcore.Core.
func (c *etcdLog) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

// Write implements zapcore.Core.
func (c *etcdLog) Write(e zapcore.Entry, fields []zapcore.Field) error {
	level := slogLevel(e.Level)
	if c.stopping.Load() && e.Message == etcdServeStopped {
		level = slog.LevelDebug
	}
	if e.Message == etcdStorageVersion && level > slog.LevelWarn && hasError(fields, etcdNoTermYet) {
		level = slog.LevelWarn
	}
	ctx := context.Background()
	if !c.log.Enabled(ctx, level) {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields)+1)
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	c.log.LogAttrs(ctx, level, e.Message, attrs...)
	return nil
}

// Sync implements zapcore.Core.
func (c *etcdLog) Sync() error { return nil }

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

// hasError reports whether one of fields is an error whose text contains s.
func hasError(fields []zapcore.Field, s string) bool {
	for _, f := range fields {
		if err, ok := f.Interface.(error); ok && f.Type == zapcore.ErrorType && strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}
