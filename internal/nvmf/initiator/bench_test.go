package initiator

import (
	"context"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/loadgen"
	"github.com/nexstor/nexstor/internal/nvmf/target"
)

func benchNS(b *testing.B, digests bool) *Namespace {
	b.Helper()
	f := newFixture(b, 64<<20, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{HeaderDigest: digests, DataDigest: digests, IOQueues: 2, QueueDepth: 64})
	ns, err := c.Namespace(1)
	if err != nil {
		b.Fatal(err)
	}
	return ns
}

func benchIO(b *testing.B, write bool, size int, parallel int) {
	ns := benchNS(b, false)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	if parallel <= 1 {
		buf := make([]byte, size)
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			off := int64(i%1024) * int64(size) % (64 << 20)
			var err error
			if write {
				_, err = ns.WriteAt(buf, off)
			} else {
				_, err = ns.ReadAt(buf, off)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(parallel)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, size)
		i := 0
		for pb.Next() {
			off := int64(i%1024) * int64(size) % (64 << 20)
			i++
			var err error
			if write {
				_, err = ns.WriteAt(buf, off)
			} else {
				_, err = ns.ReadAt(buf, off)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkRead4KQD1(b *testing.B)    { benchIO(b, false, 4096, 1) }
func BenchmarkWrite4KQD1(b *testing.B)   { benchIO(b, true, 4096, 1) }
func BenchmarkRead4KQD32(b *testing.B)   { benchIO(b, false, 4096, 16) }
func BenchmarkWrite4KQD32(b *testing.B)  { benchIO(b, true, 4096, 16) }
func BenchmarkRead128KQD1(b *testing.B)  { benchIO(b, false, 128<<10, 1) }
func BenchmarkWrite128KQD1(b *testing.B) { benchIO(b, true, 128<<10, 1) }

// TestLoadgenOverNVMf runs the load generator, verified, through the
// initiator and target.
func TestLoadgenOverNVMf(t *testing.T) {
	f := newFixture(t, 8<<20, target.SubsystemOptions{AllowAnyHost: true})
	c := f.connect(Options{HeaderDigest: true, DataDigest: true, IOQueues: 2, QueueDepth: 16})
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatal(err)
	}
	r, err := loadgen.Run(context.Background(), ns, loadgen.Spec{Mix: loadgen.Mixed, ReadPercent: 50, BlockSize: 8192, QueueDepth: 16, Duration: 500 * time.Millisecond, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors != 0 || r.Ops == 0 {
		t.Fatalf("%d errors of %d ops: %v", r.Errors, r.Ops, r.FirstError)
	}
}

// BenchmarkBackingRead4KQD1 is the malloc device itself, for reading the
// NVMe/TCP numbers as overhead over the backing store.
func BenchmarkBackingRead4KQD1(b *testing.B) {
	dev, err := bdev.NewMalloc(64<<20, 512)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := dev.ReadAt(buf, int64(i%1024)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

// benchLoadgen runs the load generator through NVMe/TCP for a fixed time
// and reports IOPS and latency percentiles as benchmark metrics.
func benchLoadgen(b *testing.B, spec loadgen.Spec) {
	ns := benchNS(b, false)
	spec.Duration = time.Second
	var r loadgen.Result
	for b.Loop() {
		var err error
		if r, err = loadgen.Run(context.Background(), ns, spec); err != nil {
			b.Fatal(err)
		}
		if r.Errors != 0 {
			b.Fatalf("%d errors: %v", r.Errors, r.FirstError)
		}
	}
	b.ReportMetric(r.IOPS, "IOPS")
	b.ReportMetric(r.Bandwidth/(1<<20), "MiB/s")
	b.ReportMetric(float64(r.Latency.P50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(r.Latency.P99.Microseconds()), "p99-µs")
}

func BenchmarkLoadgenRandRead4KQD1(b *testing.B) {
	benchLoadgen(b, loadgen.Spec{Mix: loadgen.Read, BlockSize: 4096, QueueDepth: 1})
}

func BenchmarkLoadgenRandRead4KQD32(b *testing.B) {
	benchLoadgen(b, loadgen.Spec{Mix: loadgen.Read, BlockSize: 4096, QueueDepth: 32})
}

func BenchmarkLoadgenRandWrite4KQD32(b *testing.B) {
	benchLoadgen(b, loadgen.Spec{Mix: loadgen.Write, BlockSize: 4096, QueueDepth: 32})
}

func BenchmarkLoadgenSeqRead128KQD4(b *testing.B) {
	benchLoadgen(b, loadgen.Spec{Pattern: loadgen.Sequential, Mix: loadgen.Read, BlockSize: 128 << 10, QueueDepth: 4})
}
