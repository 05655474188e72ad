package server

import (
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/mgmt"
)

// TestTuneHeartbeats: the leader looks for silent members at the heartbeat
// interval, but never less often than once a second, so that a longer
// interval does not make a failed member take longer to be marked
// unresponsive.
func TestTuneHeartbeats(t *testing.T) {
	for _, c := range []struct {
		opts                     Options
		interval, check, timeout time.Duration
	}{
		{Options{}, 0, 0, 0}, // the mgmt defaults
		{Options{HeartbeatInterval: 250 * time.Millisecond}, 250 * time.Millisecond, 250 * time.Millisecond, 0},
		{Options{HeartbeatInterval: 2 * time.Second}, 2 * time.Second, mgmt.DefaultHeartbeatInterval, 0},
		{Options{HeartbeatInterval: 3 * time.Second, HeartbeatTimeout: 10 * time.Second}, 3 * time.Second, mgmt.DefaultHeartbeatInterval, 10 * time.Second},
		{Options{HeartbeatTimeout: 3 * time.Second}, 0, 0, 3 * time.Second},
	} {
		var cfg mgmt.Config
		c.opts.tuneHeartbeats(&cfg)
		if cfg.HeartbeatInterval != c.interval || cfg.CheckInterval != c.check || cfg.HeartbeatTimeout != c.timeout {
			t.Errorf("%+v: interval %v, check %v, timeout %v; want %v, %v, %v", c.opts,
				cfg.HeartbeatInterval, cfg.CheckInterval, cfg.HeartbeatTimeout, c.interval, c.check, c.timeout)
		}
	}
}

// TestDevHeartbeats: a dev system's members beat every DevHeartbeatInterval
// unless told otherwise, within the default 5 s timeout, which stays; the
// leader still checks every second.
func TestDevHeartbeats(t *testing.T) {
	opts := DevOptions{}.nodeOptions()
	if opts.HeartbeatInterval != DevHeartbeatInterval || opts.HeartbeatTimeout != 0 {
		t.Fatalf("default dev heartbeats: %+v", opts)
	}
	var cfg mgmt.Config
	opts.tuneHeartbeats(&cfg)
	if cfg.CheckInterval != mgmt.DefaultHeartbeatInterval || cfg.HeartbeatInterval >= mgmt.DefaultHeartbeatTimeout {
		t.Fatalf("dev management service: interval %v, check %v (timeout %v)", cfg.HeartbeatInterval, cfg.CheckInterval, mgmt.DefaultHeartbeatTimeout)
	}
	// Settings given are kept as they are.
	for _, o := range []DevOptions{
		{HeartbeatInterval: 100 * time.Millisecond},
		{HeartbeatTimeout: 1500 * time.Millisecond},
		{HeartbeatInterval: time.Second, HeartbeatTimeout: 3 * time.Second},
	} {
		if got := o.nodeOptions(); got.HeartbeatInterval != o.HeartbeatInterval || got.HeartbeatTimeout != o.HeartbeatTimeout {
			t.Errorf("%+v became %+v", o, got)
		}
	}
}
