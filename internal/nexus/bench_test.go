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
	"github.com/nexstor/nexstor/internal/bdev/faulty"
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

// benchDevice returns the bare device (children == 0) or a nexus over
// children such devices. A device is a malloc device, wrapped in a faulty
// device adding lat to every operation when lat > 0 (a stand-in for real
// storage, whose latency rather than a memory copy bounds each I/O).
func benchDevice(b *testing.B, children int, lat time.Duration) bdev.Device {
	b.Helper()
	dev := func(i int) bdev.Device {
		m, err := bdev.NewMalloc(benchSize, 512)
		if err != nil {
			b.Fatal(err)
		}
		prefault(b, m)
		if lat == 0 {
			return m
		}
		f := faulty.New(m, int64(i))
		f.AddRule(faulty.Rule{Latency: lat})
		return f
	}
	if children == 0 {
		d := dev(0)
		b.Cleanup(func() { d.Close() })
		return d
	}
	o := newTestOpener()
	var uris []string
	for i := range children {
		o.add(childURI(i), dev(i))
		uris = append(uris, childURI(i))
	}
	store := NewMemStore()
	seedRecord(b, store, "bench", uris) // the children are alike: in sync
	nx, err := New(context.Background(), Config{UUID: "bench", Children: uris, Store: store, Opener: o, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nx.Close() })
	if lat == 0 {
		prefault(b, nx)
	}
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
// 1 MiB sequential writes at QD1. The lat100us variants add 100 µs to every
// operation of every device, so that the fan-out's overhead is measured
// against device latency rather than against a memory copy (with RAM
// children a 3-way mirror necessarily spends 3x the CPU of one device).
func BenchmarkIO(b *testing.B) {
	for _, k := range []int{0, 1, 2, 3} {
		name := "bare"
		if k > 0 {
			name = fmt.Sprintf("nexus%d", k)
		}
		b.Run("randwrite4k-qd32/"+name, func(b *testing.B) { runQD(b, benchDevice(b, k, 0), 4096, benchQD, true, false) })
		b.Run("randread4k-qd32/"+name, func(b *testing.B) { runQD(b, benchDevice(b, k, 0), 4096, benchQD, false, false) })
		b.Run("seqwrite1m-qd1/"+name, func(b *testing.B) { runQD(b, benchDevice(b, k, 0), 1<<20, 1, true, true) })
		b.Run("randwrite4k-qd32-lat100us/"+name, func(b *testing.B) {
			runQD(b, benchDevice(b, k, 100*time.Microsecond), 4096, benchQD, true, false)
		})
		b.Run("randread4k-qd32-lat100us/"+name, func(b *testing.B) {
			runQD(b, benchDevice(b, k, 100*time.Microsecond), 4096, benchQD, false, false)
		})
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
