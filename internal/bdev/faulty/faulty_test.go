package faulty_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

const bs = 512

func newDev(t *testing.T) (*faulty.Device, *bdev.Malloc) {
	t.Helper()
	m, err := bdev.NewMalloc(1<<20, bs)
	if err != nil {
		t.Fatal(err)
	}
	return faulty.New(m, 1), m
}

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func TestConformanceNoRules(t *testing.T) {
	d, _ := newDev(t)
	if err := bdevtest.TestDevice(d); err != nil {
		t.Fatal(err)
	}
}

// TestConformanceHarmlessRules installs rules that never fire on what the
// suite does (or only add latency), so the device must still conform.
func TestConformanceHarmlessRules(t *testing.T) {
	d, _ := newDev(t)
	d.AddRule(faulty.Rule{Ops: faulty.OpRead, Latency: time.Microsecond})
	d.AddRule(faulty.Rule{After: 1 << 30})
	d.AddRule(faulty.Rule{Ops: faulty.OpRead | faulty.OpWrite, Count: 1, Off: 1 << 30, Len: bs})
	if err := bdevtest.TestDevice(d); err != nil {
		t.Fatal(err)
	}
}

func TestErrorRules(t *testing.T) {
	custom := errors.New("custom")
	for _, c := range []struct {
		name    string
		rule    faulty.Rule
		op      func(d *faulty.Device, off int64) error
		off     int64
		wantErr error
	}{
		{"read any", faulty.Rule{}, read, 0, faulty.ErrInjected},
		{"read only ops", faulty.Rule{Ops: faulty.OpRead}, read, 4096, faulty.ErrInjected},
		{"write not matched by read rule", faulty.Rule{Ops: faulty.OpRead}, write, 0, nil},
		{"write", faulty.Rule{Ops: faulty.OpWrite, Err: custom}, write, 0, custom},
		{"flush", faulty.Rule{Ops: faulty.OpFlush}, flush, 0, faulty.ErrInjected},
		{"flush ignores range", faulty.Rule{Ops: faulty.OpFlush, Off: 8192, Len: bs}, flush, 0, faulty.ErrInjected},
		{"unmap", faulty.Rule{Ops: faulty.OpUnmap}, unmap, 0, faulty.ErrInjected},
		{"write-zeroes", faulty.Rule{Ops: faulty.OpWriteZeroes}, writeZeroes, 0, faulty.ErrInjected},
		{"unmap not matched by write-zeroes rule", faulty.Rule{Ops: faulty.OpWriteZeroes}, unmap, 0, nil},
		{"in range", faulty.Rule{Off: 8192, Len: bs}, read, 8192, faulty.ErrInjected},
		{"overlapping range start", faulty.Rule{Off: 8192 + bs, Len: bs}, read, 8192, faulty.ErrInjected}, // reads two blocks
		{"before range", faulty.Rule{Off: 8192, Len: bs}, read, 8192 - 2*bs, nil},
		{"after range", faulty.Rule{Off: 8192, Len: bs}, read, 8192 + bs, nil},
		{"probability one", faulty.Rule{Probability: 1}, read, 0, faulty.ErrInjected},
		{"after window", faulty.Rule{After: 1}, read, 0, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, _ := newDev(t)
			id := d.AddRule(c.rule)
			err := c.op(d, c.off)
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, c.wantErr)
			}
			wantFired := 0
			if c.wantErr != nil {
				wantFired = 1
			}
			if got := d.Fired(id); got != wantFired {
				t.Fatalf("Fired = %d, want %d", got, wantFired)
			}
		})
	}
}

func read(d *faulty.Device, off int64) error {
	_, err := d.ReadAt(make([]byte, 2*bs), off)
	return err
}
func write(d *faulty.Device, off int64) error {
	_, err := d.WriteAt(make([]byte, 2*bs), off)
	return err
}
func flush(d *faulty.Device, _ int64) error         { return d.Flush() }
func unmap(d *faulty.Device, off int64) error       { return d.Unmap(off, 2*bs) }
func writeZeroes(d *faulty.Device, off int64) error { return d.WriteZeroes(off, 2*bs) }

func TestAfterAndCount(t *testing.T) {
	d, _ := newDev(t)
	id := d.AddRule(faulty.Rule{Ops: faulty.OpRead, After: 2, Count: 3})
	var got []bool
	for range 8 {
		got = append(got, read(d, 0) != nil)
	}
	want := []bool{false, false, true, true, true, false, false, false}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("failures per read = %v, want %v", got, want)
		}
	}
	if d.Fired(id) != 3 {
		t.Fatalf("Fired = %d, want 3", d.Fired(id))
	}
}

func TestProbabilityDeterministic(t *testing.T) {
	run := func(seed int64) []bool {
		m, _ := bdev.NewMalloc(1<<20, bs)
		d := faulty.New(m, seed)
		d.AddRule(faulty.Rule{Probability: 0.3})
		var out []bool
		for range 400 {
			out = append(out, read(d, 0) != nil)
		}
		return out
	}
	a, b := run(7), run(7)
	fails := 0
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different outcome at op %d", i)
		}
		if a[i] {
			fails++
		}
	}
	// 400 draws at p=0.3: the binomial stays well inside [60, 180].
	if fails < 60 || fails > 180 {
		t.Fatalf("%d of 400 operations failed at probability 0.3", fails)
	}
	c := run(8)
	if slicesEqual(a, c) {
		t.Fatal("different seeds gave the same 400 outcomes")
	}
}

func slicesEqual(a, b []bool) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLatencyOnly(t *testing.T) {
	d, m := newDev(t)
	id := d.AddRule(faulty.Rule{Ops: faulty.OpWrite, Latency: 20 * time.Millisecond})
	data := fill(bs, 0xab)
	start := time.Now()
	if _, err := d.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	// Sleep guarantees at least the latency; no upper bound is asserted.
	if el := time.Since(start); el < 20*time.Millisecond {
		t.Fatalf("write took %v, want at least 20ms", el)
	}
	got := make([]byte, bs)
	m.ReadAt(got, 0)
	if !bytes.Equal(got, data) {
		t.Fatal("a latency-only rule changed the data")
	}
	if d.Fired(id) != 1 {
		t.Fatalf("Fired = %d, want 1", d.Fired(id))
	}
}

// TestDelayRuleZeroLatency: a Delay rule never fails an operation, even
// with no latency at all (the way a benchmark asks for "-lat 0s"): every
// operation is performed and counted, and the data lands. Without Delay,
// the same rule with no latency and no error fails every operation.
func TestDelayRuleZeroLatency(t *testing.T) {
	c, _ := newDev(t)
	c.AddRule(faulty.Rule{Delay: true})
	if err := bdevtest.TestDevice(c); err != nil { // closes c
		t.Fatalf("a zero-latency Delay rule broke the device: %v", err)
	}
	d, m := newDev(t)
	id := d.AddRule(faulty.Rule{Delay: true})
	before := d.Fired(id)
	data := fill(bs, 0x5a)
	if _, err := d.WriteAt(data, 8192); err != nil {
		t.Fatal(err)
	}
	for _, op := range []func(*faulty.Device, int64) error{read, flush, unmap, writeZeroes} {
		if err := op(d, 0); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, bs)
	m.ReadAt(got, 8192)
	if !bytes.Equal(got, data) {
		t.Fatal("a zero-latency Delay rule changed the data")
	}
	if n := d.Fired(id) - before; n != 5 {
		t.Fatalf("fired %d times for 5 operations", n)
	}
	// A Delay rule does not take the outcome: a failing rule after it does.
	e := d.AddRule(faulty.Rule{Ops: faulty.OpRead})
	if err := read(d, 0); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("read after a Delay rule and an error rule: %v, want ErrInjected", err)
	}
	if d.Fired(e) != 1 {
		t.Fatalf("error rule fired %d times, want 1", d.Fired(e))
	}
}

// TestInvalidRulesRefused: a Delay rule that also asks for a failure, and a
// negative latency, are refused by Validate and by AddRule (a panic: a
// test's rule is a constant of the test).
func TestInvalidRulesRefused(t *testing.T) {
	for _, r := range []faulty.Rule{
		{Delay: true, Err: errors.New("x")},
		{Delay: true, Torn: true},
		{Delay: true, Corrupt: true},
		{Latency: -time.Millisecond},
		{Delay: true, Latency: -1},
		{Probability: 1.5},
		{Probability: -0.5},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", r)
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("AddRule(%+v) did not panic", r)
				}
			}()
			d, _ := newDev(t)
			d.AddRule(r)
		}()
	}
	for _, r := range []faulty.Rule{{}, {Delay: true}, {Latency: time.Millisecond}, {Probability: 1}, {Torn: true, Latency: 1}} {
		if err := r.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v", r, err)
		}
	}
}

func TestLatencyAddsUpAndErrorWins(t *testing.T) {
	d, _ := newDev(t)
	lat := d.AddRule(faulty.Rule{Latency: time.Millisecond})
	e1 := d.AddRule(faulty.Rule{Err: errors.New("first")})
	e2 := d.AddRule(faulty.Rule{Err: errors.New("second")})
	if err := read(d, 0); err == nil || err.Error() != "first" {
		t.Fatalf("got %v, want the first failing rule's error", err)
	}
	if d.Fired(lat) != 1 || d.Fired(e1) != 1 || d.Fired(e2) != 0 {
		t.Fatalf("fired: latency %d first %d second %d, want 1 1 0", d.Fired(lat), d.Fired(e1), d.Fired(e2))
	}
}

func TestTorn(t *testing.T) {
	for _, c := range []struct {
		name      string
		blocks    int
		tornBytes int64
		landed    int // blocks of new data that land
	}{
		{"default half", 8, 0, 4},
		{"default odd", 5, 0, 2},
		{"single block lands nothing", 1, 0, 0},
		{"explicit", 8, 3 * bs, 3},
		{"explicit unaligned rounds down", 8, 3*bs + 100, 3},
		{"explicit larger than write", 2, 64 * bs, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, m := newDev(t)
			old := fill(c.blocks*bs, 0x11)
			m.WriteAt(old, 0)
			d.AddRule(faulty.Rule{Torn: true, TornBytes: c.tornBytes})
			n, err := d.WriteAt(fill(c.blocks*bs, 0x22), 0)
			if !errors.Is(err, faulty.ErrInjected) {
				t.Fatalf("torn write: err %v, want ErrInjected", err)
			}
			if n != c.landed*bs {
				t.Fatalf("torn write: n = %d, want %d", n, c.landed*bs)
			}
			got := make([]byte, c.blocks*bs)
			m.ReadAt(got, 0)
			want := append(fill(c.landed*bs, 0x22), fill((c.blocks-c.landed)*bs, 0x11)...)
			if !bytes.Equal(got, want) {
				t.Fatalf("after torn write the first %d blocks should be new, the rest old", c.landed)
			}
			// Torn rules match only writes.
			if err := read(d, 0); err != nil {
				t.Fatalf("read with a torn rule installed: %v", err)
			}
		})
	}
}

func TestCorrupt(t *testing.T) {
	d, m := newDev(t)
	id := d.AddRule(faulty.Rule{Corrupt: true, Count: 1})
	data := fill(4*bs, 0x5a)
	orig := bytes.Clone(data)
	if n, err := d.WriteAt(data, 0); err != nil || n != len(data) {
		t.Fatalf("corrupt write reported (%d, %v), want success", n, err)
	}
	if !bytes.Equal(data, orig) {
		t.Fatal("the caller's buffer was modified")
	}
	got := make([]byte, len(data))
	m.ReadAt(got, 0)
	for b := 0; b < 4; b++ {
		diff := 0
		for i := b * bs; i < (b+1)*bs; i++ {
			for x := got[i] ^ orig[i]; x != 0; x &= x - 1 {
				diff++
			}
		}
		if diff != 1 {
			t.Fatalf("block %d has %d flipped bits, want 1", b, diff)
		}
	}
	// Count 1: the next write is intact.
	d.WriteAt(data, 0)
	m.ReadAt(got, 0)
	if !bytes.Equal(got, orig) || d.Fired(id) != 1 {
		t.Fatal("corrupt rule with Count 1 fired twice")
	}
}

func TestMisuseErrorsPassThrough(t *testing.T) {
	d, _ := newDev(t)
	d.AddRule(faulty.Rule{})
	var ae *bdev.AlignmentError
	if _, err := d.ReadAt(make([]byte, 100), 0); !errors.As(err, &ae) {
		t.Fatalf("unaligned read under a catch-all rule: %v, want AlignmentError", err)
	}
	var re *bdev.RangeError
	if err := d.Unmap(1<<20, bs); !errors.As(err, &re) {
		t.Fatalf("out of range unmap under a catch-all rule: %v, want RangeError", err)
	}
	d.Close()
	if err := d.Flush(); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("flush after close: %v, want ErrClosed", err)
	}
}

func TestRemoveAndClear(t *testing.T) {
	d, _ := newDev(t)
	a := d.AddRule(faulty.Rule{Ops: faulty.OpRead})
	b := d.AddRule(faulty.Rule{Ops: faulty.OpWrite})
	if read(d, 0) == nil || write(d, 0) == nil {
		t.Fatal("rules did not fire")
	}
	d.RemoveRule(a)
	if err := read(d, 0); err != nil {
		t.Fatalf("read after RemoveRule: %v", err)
	}
	if write(d, 0) == nil {
		t.Fatal("RemoveRule removed the wrong rule")
	}
	d.ClearRules()
	if err := write(d, 0); err != nil {
		t.Fatalf("write after ClearRules: %v", err)
	}
	if d.Fired(a) != 1 || d.Fired(b) != 2 || d.Fired(999) != 0 {
		t.Fatalf("Fired after removal: a=%d b=%d unknown=%d, want 1 2 0", d.Fired(a), d.Fired(b), d.Fired(999))
	}
}

// TestConcurrentRuleChanges adds and removes rules while I/O runs; under
// -race it shows the rule set is safely shared.
func TestConcurrentRuleChanges(t *testing.T) {
	d, _ := newDev(t)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			buf := make([]byte, bs)
			for i := range 300 {
				off := int64((w*64 + i%64) * bs)
				if _, err := d.WriteAt(buf, off); err != nil && !errors.Is(err, faulty.ErrInjected) {
					t.Errorf("write: %v", err)
					return
				}
				if _, err := d.ReadAt(buf, off); err != nil && !errors.Is(err, faulty.ErrInjected) {
					t.Errorf("read: %v", err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	total := 0
	for i := 0; ; i++ {
		select {
		case <-done:
			if err := read(d, 0); err != nil {
				t.Fatalf("read after all rules removed: %v", err)
			}
			t.Logf("%d faults injected over %d rule changes", total, i)
			return
		default:
		}
		id := d.AddRule(faulty.Rule{Probability: 0.5, Off: int64(i%8) * 64 * bs, Len: 64 * bs})
		time.Sleep(20 * time.Microsecond)
		total += d.Fired(id)
		d.RemoveRule(id)
	}
}

func TestOpString(t *testing.T) {
	if s := (faulty.OpRead | faulty.OpFlush).String(); s != "read|flush" {
		t.Fatalf("String = %q", s)
	}
}
