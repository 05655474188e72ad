package stats_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
	"github.com/nexstor/nexstor/internal/bdev/stats"
)

func newMalloc(t testing.TB) *bdev.Malloc {
	m, err := bdev.NewMalloc(1<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestConformance(t *testing.T) {
	d := stats.New(newMalloc(t))
	if err := bdevtest.TestDevice(d); err != nil {
		t.Fatal(err)
	}
	s := d.Snapshot()
	if s.Write.Count == 0 || s.Read.Count == 0 || s.Errors() == 0 {
		t.Fatalf("the suite ran but the counters say %+v", s)
	}
}

func TestCounts(t *testing.T) {
	f := faulty.New(newMalloc(t), 1)
	d := stats.New(f)
	buf := make([]byte, 4096)
	for range 3 {
		d.WriteAt(buf, 0)
	}
	for range 5 {
		d.ReadAt(buf[:1024], 512)
	}
	d.Flush()
	d.Unmap(0, 8192)
	d.WriteZeroes(0, 1024)
	before := d.Snapshot()

	f.AddRule(faulty.Rule{Ops: faulty.OpRead, Count: 2})
	d.ReadAt(buf, 0)
	d.ReadAt(buf, 0)
	d.ReadAt(buf, 0)
	d.ReadAt(buf[:100], 0) // alignment error, counted as an error too

	s := d.Snapshot()
	check := func(name string, got, want uint64) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	check("before: writes", before.Write.Count, 3)
	check("before: bytes written", before.BytesWritten(), 3*4096)
	check("before: reads", before.Read.Count, 5)
	check("before: bytes read", before.BytesRead(), 5*1024)
	check("before: flushes", before.Flush.Count, 1)
	check("before: unmap bytes", before.Unmap.Bytes, 8192)
	check("before: write-zeroes bytes", before.WriteZeroes.Bytes, 1024)
	check("before: errors", before.Errors(), 0)

	delta := s.Sub(before)
	check("delta: reads", delta.Read.Count, 4)
	check("delta: read errors", delta.Read.Errors, 3)
	check("delta: bytes read", delta.BytesRead(), 4096)
	check("delta: writes", delta.Write.Count, 0)
	check("delta: histogram count", delta.Read.Latency.Count(), 4)
	check("total: histogram count", s.Read.Latency.Count(), 9)
}

func TestLatencyFromFaultyRule(t *testing.T) {
	f := faulty.New(newMalloc(t), 1)
	d := stats.New(f)
	f.AddRule(faulty.Rule{Ops: faulty.OpFlush, Latency: 2 * time.Millisecond})
	for range 4 {
		if err := d.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	s := d.Snapshot()
	// The sleep guarantees a lower bound; nothing is assumed about the upper.
	if p := s.Flush.Latency.Percentile(50); p < time.Millisecond {
		t.Fatalf("median flush latency %v with a 2ms delay rule; the histogram can be off by at most 2x", p)
	}
	if s.Flush.MeanLatency() < 2*time.Millisecond {
		t.Fatalf("mean flush latency %v, want at least 2ms", s.Flush.MeanLatency())
	}
}

func TestPercentile(t *testing.T) {
	var h stats.Histogram
	if h.Percentile(50) != 0 {
		t.Fatal("empty histogram has a percentile")
	}
	// 90 latencies in [1us, 2us) (bucket 11: [1024ns, 2048ns)), 10 in bucket 21 ([1ms, 2ms)).
	h.Buckets[11] = 90
	h.Buckets[21] = 10
	for _, c := range []struct {
		p      float64
		lo, hi time.Duration
	}{
		{0, 1024, 1024},
		{50, 1024, 2048},
		{90, 2047, 2048},
		{95, 1 << 20, 1 << 21},
		{99, 1 << 20, 1 << 21},
		{100, 1 << 21, 1 << 21},
		{150, 1 << 21, 1 << 21}, // clamped
	} {
		if got := h.Percentile(c.p); got < c.lo || got > c.hi {
			t.Errorf("Percentile(%v) = %v, want in [%v, %v]", c.p, got, c.lo, c.hi)
		}
	}
	if a, b := h.Percentile(91), h.Percentile(99); a >= b {
		t.Errorf("percentiles not increasing: p91 %v, p99 %v", a, b)
	}
}

func TestNoAllocations(t *testing.T) {
	d := stats.New(newMalloc(t))
	buf := make([]byte, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		d.WriteAt(buf, 0)
		d.ReadAt(buf, 0)
		d.Flush()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per I/O", allocs)
	}
}

func TestErrorsPassThrough(t *testing.T) {
	d := stats.New(newMalloc(t))
	var ae *bdev.AlignmentError
	if _, err := d.ReadAt(make([]byte, 7), 0); !errors.As(err, &ae) {
		t.Fatalf("unaligned read: %v", err)
	}
}

func BenchmarkStatsOverhead(b *testing.B) {
	d := stats.New(newMalloc(b))
	buf := make([]byte, 4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d.ReadAt(buf, 0)
		}
	})
}
