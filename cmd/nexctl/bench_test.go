package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/target"
)

const benchHost = "nqn.2014-08.org.nvmexpress:uuid:2f9c1b4e-8d7a-4c3b-9e6f-5a4b3c2d1e0f"

// startTarget serves a RAM device over NVMe/TCP in-process, admitting only
// benchHost, and returns its nvmf:// URI.
func startTarget(t *testing.T) string {
	t.Helper()
	tg := target.New(nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tg.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); tg.Close(); ln.Close(); <-done })
	id := uuid.New()
	nqn := target.NQN("replica", id.String())
	sub, err := tg.AddSubsystem(nqn, target.SubsystemOptions{AllowedHosts: []string{benchHost}})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := bdev.NewMalloc(16<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.AddNamespace(dev, target.NamespaceOptions{UUID: id}); err != nil {
		t.Fatal(err)
	}
	return "nvmf://" + ln.Addr().String() + "/" + nqn
}

func runNexctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	a := &app{out: &out}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetErr(&bytes.Buffer{})
	err := root.Execute()
	if a.eng != nil {
		t.Errorf("%v dialed the engine", args)
	}
	return out.String(), err
}

// TestBenchNVMf runs a verified mixed load through the NVMe/TCP initiator
// against an in-process target and checks the report.
func TestBenchNVMf(t *testing.T) {
	uri := startTarget(t)
	out, err := runNexctl(t, "bench", uri, "--hostnqn", benchHost, "--rw", "mixed", "--read-pct", "50",
		"--bs", "8KiB", "--qd", "8", "--queues", "2", "--time", "300ms", "--verify", "--digest", "-o", "json")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	var r benchResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("decode %v:\n%s", err, out)
	}
	if r.Errors != 0 || r.Reads == 0 || r.Writes == 0 || r.Ops != r.Reads+r.Writes ||
		r.Bytes != r.Ops*8192 || r.IOPS <= 0 || r.Bandwidth <= 0 || r.BlockSize != 8192 || r.ReadPct != 50 || !r.Verify {
		t.Fatalf("result %+v", r)
	}
	l := r.LatencyUS
	if !(l.Min > 0 && l.Min <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
		t.Fatalf("latency percentiles out of order: %+v", l)
	}

	// The table names every figure.
	out, err = runNexctl(t, "bench", uri, "--hostnqn", benchHost, "--pattern", "sequential", "--rw", "write", "--time", "100ms")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	for _, want := range []string{"IOPS", "Bandwidth", "MiB/s", "p99.9", "sequential write"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}

	// A host that is not on the allow-list is refused.
	if _, err := runNexctl(t, "bench", uri, "--time", "100ms"); err == nil {
		t.Fatal("a host off the allow-list could bench the subsystem")
	}
}

// TestBenchNVMfQueueDepthOne runs the shallowest load over NVMe/TCP: one
// I/O in flight on one queue (the queue is created with two entries, as a
// target refuses a one-entry queue).
func TestBenchNVMfQueueDepthOne(t *testing.T) {
	uri := startTarget(t)
	out, err := runNexctl(t, "bench", uri, "--hostnqn", benchHost, "--rw", "mixed", "--qd", "1", "--queues", "1",
		"--time", "200ms", "--verify", "-o", "json")
	if err != nil {
		t.Fatalf("bench --qd 1: %v\n%s", err, out)
	}
	var r benchResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("decode %v:\n%s", err, out)
	}
	if r.Errors != 0 || r.QueueDepth != 1 || r.Reads == 0 || r.Writes == 0 || r.Ops != r.Reads+r.Writes {
		t.Fatalf("result %+v", r)
	}
}

// TestBenchDisk measures a RAM disk through bdev.Open, the baseline without
// a network.
func TestBenchDisk(t *testing.T) {
	out, err := runNexctl(t, "bench", "malloc:///ram?size=8MiB", "--time", "100ms", "--qd", "4", "--verify", "--rw", "mixed", "-o", "yaml")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	if !strings.Contains(out, "iops:") || !strings.Contains(out, "p99_9:") || !strings.Contains(out, "errors: 0") {
		t.Fatalf("yaml report:\n%s", out)
	}
}

func TestBenchBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "nvmf://127.0.0.1:1/nqn.x", "--rw", "trim"},
		{"bench", "nvmf://127.0.0.1:1/nqn.x", "--pattern", "zigzag"},
		{"bench", "nvmf://127.0.0.1:1/nqn.x", "--bs", "lots"},
		{"bench", "nvmf://127.0.0.1:1/nqn.x", "--qd", "0"},
		{"bench", "nvmf://127.0.0.1:1/nqn.x", "--rw", "mixed", "--read-pct", "101"},
		{"bench", "nvmf://127.0.0.1:1", "--time", "10ms"},
		{"bench", "malloc:///ram?size=1MiB", "--bs", "1000"},
	} {
		if _, err := runNexctl(t, args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
