package bdev_test

import (
	"fmt"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/nexstor/nexstor/internal/bdev"
)

// fileModes are the ways a File serves I/O: buffered, and O_DIRECT from an
// aligned caller buffer (zero copy) or an unaligned one (bounced).
var fileModes = []struct {
	name      string
	direct    bool
	unaligned bool
}{
	{"buffered", false, false},
	{"direct", true, false},
	{"direct-unaligned", true, true},
}

func openBench(tb testing.TB, direct bool) *bdev.File {
	tb.Helper()
	f, err := bdev.OpenFile(filepath.Join(tb.TempDir(), "bench.img"), bdev.FileOptions{Create: true, Size: 64 << 20, Direct: ptr(direct)})
	if err != nil {
		tb.Skipf("cannot open (direct=%v): %v", direct, err)
	}
	tb.Cleanup(func() { f.Close() })
	return f
}

// ioBuf returns an n-byte buffer that starts on a 4096-byte boundary, or
// one byte past it.
func ioBuf(n int, unaligned bool) []byte {
	b := make([]byte, n+8192)
	for !aligned(b) {
		b = b[1:]
	}
	if unaligned {
		b = b[1:]
	}
	return b[:n]
}

func TestFileNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	for _, m := range fileModes {
		t.Run(m.name, func(t *testing.T) {
			f := openBench(t, m.direct)
			buf := ioBuf(64<<10, m.unaligned)
			allocs := testing.AllocsPerRun(50, func() {
				if _, err := f.WriteAt(buf, 4096); err != nil {
					t.Fatal(err)
				}
				if _, err := f.ReadAt(buf, 4096); err != nil {
					t.Fatal(err)
				}
				if err := f.WriteZeroes(0, 4096); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Fatalf("%v allocations per write+read+write-zeroes", allocs)
			}
		})
	}
}

func BenchmarkFile(b *testing.B) {
	for _, m := range fileModes {
		for _, size := range []int{4 << 10, 128 << 10} {
			for _, op := range []string{"read", "write"} {
				b.Run(fmt.Sprintf("%s/%s/%dKiB", m.name, op, size>>10), func(b *testing.B) {
					f := openBench(b, m.direct)
					buf := ioBuf(size, m.unaligned)
					span := f.Size() / int64(size)
					b.SetBytes(int64(size))
					b.ReportAllocs()
					b.ResetTimer()
					i := int64(0)
					for b.Loop() {
						off := (i * 7919 % span) * int64(size)
						var err error
						if op == "read" {
							_, err = f.ReadAt(buf, off)
						} else {
							_, err = f.WriteAt(buf, off)
						}
						if err != nil {
							b.Fatal(err)
						}
						i++
					}
				})
			}
		}
	}
}

// BenchmarkFileParallel issues 4KiB reads from many goroutines at once.
func BenchmarkFileParallel(b *testing.B) {
	benchParallelReads(b, 0, func(b *testing.B, direct bool) *bdev.File { return openBench(b, direct) })
}

// benchParallelReads issues 4KiB reads from many goroutines at once (GOMAXPROCS
// times parallelism of them; 0 keeps the default) on the file open makes.
func benchParallelReads(b *testing.B, parallelism int, open func(b *testing.B, direct bool) *bdev.File) {
	for _, m := range fileModes {
		b.Run(m.name, func(b *testing.B) {
			f := open(b, m.direct)
			span := f.Size() / 4096
			b.SetBytes(4096)
			b.ReportAllocs()
			if parallelism > 0 {
				b.SetParallelism(parallelism)
			}
			b.RunParallel(func(pb *testing.PB) {
				buf := ioBuf(4096, m.unaligned)
				i := int64(0)
				for pb.Next() {
					if _, err := f.ReadAt(buf, (i*7919%span)*4096); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

func aligned(b []byte) bool { return len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%4096 == 0 }
