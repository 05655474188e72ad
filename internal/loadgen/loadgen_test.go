package loadgen

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
)

func malloc(t *testing.T, size int64) bdev.Device {
	t.Helper()
	d, err := bdev.NewMalloc(size, 512)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestRunMixedVerified(t *testing.T) {
	dev := malloc(t, 8<<20)
	r, err := Run(context.Background(), dev, Spec{Pattern: Random, Mix: Mixed, ReadPercent: 50, BlockSize: 4096, QueueDepth: 8, Duration: 300 * time.Millisecond, Verify: true, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors != 0 {
		t.Fatalf("%d errors, first %v", r.Errors, r.FirstError)
	}
	if r.Reads == 0 || r.Writes == 0 || r.Ops != r.Reads+r.Writes || r.Bytes != r.Ops*4096 {
		t.Fatalf("counts %+v", r)
	}
	if r.IOPS <= 0 || r.Bandwidth != r.IOPS*4096 && r.Bandwidth <= 0 {
		t.Fatalf("rates %+v", r)
	}
	l := r.Latency
	if !(l.Min <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) || l.Max == 0 {
		t.Fatalf("latency percentiles out of order: %+v", l)
	}
}

func TestRunSequentialWrite(t *testing.T) {
	dev := malloc(t, 4<<20)
	r, err := Run(context.Background(), dev, Spec{Pattern: Sequential, Mix: Write, BlockSize: 128 << 10, QueueDepth: 2, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Writes == 0 || r.Reads != 0 || r.Errors != 0 {
		t.Fatalf("%+v", r)
	}
}

// TestVerifyCatchesCorruption: a device that silently corrupts writes must
// produce verification errors.
func TestVerifyCatchesCorruption(t *testing.T) {
	dev := faulty.New(malloc(t, 2<<20), 1)
	dev.AddRule(faulty.Rule{Ops: faulty.OpWrite, Corrupt: true})
	r, err := Run(context.Background(), dev, Spec{Mix: Mixed, ReadPercent: 50, BlockSize: 4096, QueueDepth: 4, Duration: 200 * time.Millisecond, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors == 0 || !errors.Is(r.FirstError, ErrVerify) {
		t.Fatalf("corruption not detected: %+v", r)
	}
}

func TestIOErrorsCounted(t *testing.T) {
	dev := faulty.New(malloc(t, 2<<20), 1)
	dev.AddRule(faulty.Rule{Ops: faulty.OpRead})
	r, err := Run(context.Background(), dev, Spec{Mix: Read, QueueDepth: 2, Duration: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors == 0 || r.Errors != r.Reads || !errors.Is(r.FirstError, faulty.ErrInjected) {
		t.Fatalf("%+v", r)
	}
}

func TestBadSpec(t *testing.T) {
	dev := malloc(t, 1<<20)
	for _, s := range []Spec{
		{BlockSize: 100},
		{QueueDepth: -1},
		{Mix: Mixed, ReadPercent: 101},
		{BlockSize: 1 << 20, QueueDepth: 2},
		{Offset: 3},
		{Size: 2 << 20},
	} {
		if _, err := Run(context.Background(), dev, s); err == nil {
			t.Errorf("spec %+v accepted", s)
		}
	}
}

func TestHistogramBuckets(t *testing.T) {
	for v := int64(0); v < 1<<22; v = v*9/8 + 1 {
		b := bucketOf(v)
		if v > bucketUpper(b) || (b > 0 && v <= bucketUpper(b-1)) {
			t.Fatalf("value %d in bucket %d [%d, %d]", v, b, bucketUpper(b-1)+1, bucketUpper(b))
		}
		if v >= 64 && float64(bucketUpper(b)-v) > float64(v)/16 {
			t.Fatalf("bucket %d too wide for %d", b, v)
		}
	}
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	l := h.latency()
	if l.P50 < 480*time.Microsecond || l.P50 > 520*time.Microsecond || l.P99 < 970*time.Microsecond || l.Max != time.Millisecond {
		t.Fatalf("%+v", l)
	}
}
