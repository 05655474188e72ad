package nexus

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

const (
	benchSize = 64 << 20
	benchQD   = 32
)

// prefault writes the whole device once, so that the measurement does not
// include the kernel mapping fresh pages of the RAM devices.
func prefault(b *testing.B, d bdev.Device) {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = 1
	}
	for off := int64(0); off < d.Size(); off += int64(len(buf)) {
		if _, err := d.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
}

// benchDevice returns the bare malloc device (children == 0) or a nexus
// over children malloc devices.
func benchDevice(b *testing.B, children int) bdev.Device {
	b.Helper()
	if children == 0 {
		m, err := bdev.NewMalloc(benchSize, 512)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
		prefault(b, m)
		return m
	}
	o := newTestOpener()
	var uris []string
	for i := range children {
		m, err := bdev.NewMalloc(benchSize, 512)
		if err != nil {
			b.Fatal(err)
		}
		o.add(childURI(i), m)
		uris = append(uris, childURI(i))
	}
	nx, err := New(context.Background(), Config{UUID: "bench", Children: uris, Store: NewMemStore(), Opener: o, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nx.Close() })
	prefault(b, nx)
	return nx
}

// runQD issues b.N I/Os of size bs from qd goroutines at random aligned
// offsets (sequential per goroutine when seq) and reports IOPS and MB/s.
func runQD(b *testing.B, d bdev.Device, bs int64, qd int, write, seq bool) {
	var wg sync.WaitGroup
	per := b.N/qd + 1
	b.SetBytes(bs)
	b.ResetTimer()
	start := time.Now()
	for g := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, bs)
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			blocks := d.Size() / bs
			next := int64(g) * (blocks / int64(qd))
			for range per {
				var off int64
				if seq {
					off = next % blocks * bs
					next++
				} else {
					off = rng.Int64N(blocks) * bs
				}
				var err error
				if write {
					_, err = d.WriteAt(buf, off)
				} else {
					_, err = d.ReadAt(buf, off)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(per*qd)/time.Since(start).Seconds(), "iops")
}

// BenchmarkIO compares the nexus over 1, 2 and 3 malloc children with the
// bare malloc device ("bare"): 4 KiB random writes and reads at QD32, and
// 1 MiB sequential writes at QD1.
func BenchmarkIO(b *testing.B) {
	for _, k := range []int{0, 1, 2, 3} {
		name := "bare"
		if k > 0 {
			name = fmt.Sprintf("nexus%d", k)
		}
		b.Run("randwrite4k-qd32/"+name, func(b *testing.B) { runQD(b, benchDevice(b, k), 4096, benchQD, true, false) })
		b.Run("randread4k-qd32/"+name, func(b *testing.B) { runQD(b, benchDevice(b, k), 4096, benchQD, false, false) })
		b.Run("seqwrite1m-qd1/"+name, func(b *testing.B) { runQD(b, benchDevice(b, k), 1<<20, 1, true, true) })
	}
}

// BenchmarkRebuild measures full rebuild bandwidth of an idle nexus against
// a plain copy (1 MiB reads and writes, same concurrency) between the same
// kind of devices.
func BenchmarkRebuild(b *testing.B) {
	b.Run("rebuild", func(b *testing.B) {
		b.SetBytes(benchSize)
		for range b.N {
			b.StopTimer()
			o := newTestOpener()
			for i := range 2 {
				m, _ := bdev.NewMalloc(benchSize, 512)
				prefault(b, m)
				o.add(childURI(i), m)
			}
			nx, err := New(context.Background(), Config{UUID: "bench", Children: []string{childURI(0)}, Store: NewMemStore(), Opener: o, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := nx.AddChild(context.Background(), childURI(1)); err != nil {
				b.Fatal(err)
			}
			st, err := nx.WaitRebuild(context.Background(), childURI(1))
			if err != nil || st.State != RebuildCompleted {
				b.Fatalf("%+v %v", st, err)
			}
			b.StopTimer()
			nx.Close()
			b.StartTimer()
		}
	})
	b.Run("plain-copy", func(b *testing.B) {
		b.SetBytes(benchSize)
		for range b.N {
			b.StopTimer()
			src, _ := bdev.NewMalloc(benchSize, 512)
			dst, _ := bdev.NewMalloc(benchSize, 512)
			prefault(b, src)
			prefault(b, dst)
			b.StartTimer()
			var wg sync.WaitGroup
			var next sync.Mutex
			var off int64
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, DefaultRebuildSegment)
					for {
						next.Lock()
						o := off
						off += DefaultRebuildSegment
						next.Unlock()
						if o >= benchSize {
							return
						}
						src.ReadAt(buf, o)
						dst.WriteAt(buf, o)
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			src.Close()
			dst.Close()
			b.StartTimer()
		}
	})
}
