package main

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"-backing", "lat", "-lat", "0s"}, io.Discard)
	if err != nil {
		t.Fatalf("-backing lat -lat 0s: %v", err)
	}
	if c.lat != 0 || !c.noRebuild {
		t.Fatalf("config %+v", c)
	}
	// -backing file ignores -lat: one set of flags serves
	// both backings.
	if _, err := parseFlags([]string{"-lat", "1ms"}, io.Discard); err != nil {
		t.Fatalf("-lat with -backing file: %v", err)
	}
	c, err = parseFlags(nil, io.Discard)
	if err != nil || c.backing != "file" || c.lat != 100*time.Microsecond || c.runtime != 5*time.Second || c.segment <= 0 {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	if c, err = parseFlags([]string{"-remote"}, io.Discard); err != nil || !c.remote || !c.noRebuild {
		t.Fatalf("-remote: %+v, %v", c, err)
	}
	for _, args := range [][]string{
		{"-backing", "lat", "-lat", "-1ms"},
		{"-backing", "ram"},
		{"-t", "0"},
		{"-qd", "0"},
		{"-seq-qd", "-1"},
		{"-segment", "0"},
		{"-size", "8"},
		{"-r", "0"},
		{"-away", "-remote"},
		{"stray"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

// TestZeroLatencyBacking: the device -backing lat -lat 0s builds performs
// every operation; it used to fail them all.
func TestZeroLatencyBacking(t *testing.T) {
	m, err := bdev.NewMalloc(1<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	d := faulty.New(m, 1)
	id := d.AddRule(latencyRule(0))
	data := bytes.Repeat([]byte{0xc3}, 4096)
	if _, err := d.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := d.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs from what was written")
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if d.Fired(id) != 3 {
		t.Fatalf("the latency rule fired %d times for 3 operations", d.Fired(id))
	}
}

// TestTee: the no-nexus reference writes every device and reads the first.
func TestTee(t *testing.T) {
	var devs []bdev.Device
	for range 3 {
		m, err := bdev.NewMalloc(1<<20, 512)
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, m)
	}
	tt := &tee{Device: devs[0], devs: devs}
	p := bytes.Repeat([]byte{7}, 4096)
	if n, err := tt.WriteAt(p, 8192); n != len(p) || err != nil {
		t.Fatalf("WriteAt: %d, %v", n, err)
	}
	for i, d := range devs {
		got := make([]byte, len(p))
		if _, err := d.ReadAt(got, 8192); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("device %d: %v, data written: %v", i, err, bytes.Equal(got, p))
		}
	}
	if err := tt.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := tt.Close(); err != nil {
		t.Fatal(err)
	}
}
