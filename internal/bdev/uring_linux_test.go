package bdev_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/testutil"
)

// skipWithoutURing skips when the kernel lacks io_uring (ENOSYS) or refuses
// it to this process (EPERM: kernel.io_uring_disabled, or a seccomp filter
// of the container): a property of the kernel, not a missing test peer.
// Any other failure to set up a ring is a test failure.
func skipWithoutURing(t testing.TB) {
	t.Helper()
	err := bdev.URingSetupFault("probe", 8)
	switch {
	case err == nil:
	case errors.Is(err, syscall.ENOSYS), errors.Is(err, syscall.EPERM):
		testutil.Missing(t, fmt.Sprintf("io_uring (%v)", err))
	default:
		t.Fatalf("io_uring setup: %v", err)
	}
}

func openURing(t testing.TB, path string, opts bdev.FileOptions) *bdev.File {
	t.Helper()
	skipWithoutURing(t)
	opts.URing = true
	f, err := bdev.OpenFile(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !f.URing() {
		t.Fatal("URing() = false for a File opened with URing")
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestURingConformance(t *testing.T) {
	for _, c := range []struct {
		name     string
		direct   *bool
		bs       int
		noFalloc bool
		noNowait bool // as a file that refuses RWF_NOWAIT reads (tmpfs)
	}{
		{"buffered-512", ptr(false), 512, false, false},
		{"buffered-4096", ptr(false), 4096, false, false},
		{"auto-512", nil, 512, false, false},
		{"auto-4096", nil, 4096, false, false},
		// Zeroing by writing zeroes (through the ring with O_DIRECT).
		{"buffered-write-zeroes", ptr(false), 512, true, false},
		{"auto-write-zeroes", nil, 4096, true, false},
		{"buffered-nowait-refused", ptr(false), 4096, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := openURing(t, filepath.Join(t.TempDir(), "d"), bdev.FileOptions{Create: true, Size: 4 << 20, Direct: c.direct, BlockSize: c.bs})
			t.Logf("direct=%v", f.Direct())
			if c.direct != nil && f.Direct() != *c.direct {
				t.Fatalf("Direct() = %v, want %v", f.Direct(), *c.direct)
			}
			if c.noFalloc {
				bdev.DisableFallocate(f)
			}
			if c.noNowait {
				bdev.RefuseNowaitReads(f)
			}
			if err := bdevtest.TestDevice(f); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestOpenURIURing: uring:// opens the same files as aio://, through
// io_uring, and a missing file is reported as for aio://.
func TestOpenURIURing(t *testing.T) {
	dir := t.TempDir()
	if _, err := bdev.Open("uring://" + filepath.Join(dir, "missing.img")); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "?size=") {
		t.Fatalf("uring:// of a missing file: %v, want ErrNotExist and how to create it", err)
	}
	skipWithoutURing(t)
	img := filepath.Join(dir, "disk0.img")
	u, err := bdev.Open("uring://" + img + "?size=2MiB&blocksize=4096")
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := u.(*bdev.File); !ok || !f.URing() || f.BlockSize() != 4096 {
		t.Fatalf("uring:// opened %T without io_uring or with the wrong block size", u)
	}
	if err := bdevtest.TestDevice(u); err != nil {
		t.Fatal(err)
	}
	// The same file through aio:// is not on io_uring.
	a, err := bdev.Open("aio://" + img)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.(*bdev.File).URing() {
		t.Fatal("aio:// opened with io_uring")
	}
}

// TestURingDirectUnaligned: with O_DIRECT, unaligned caller buffers are
// bounced and I/Os larger than a bounce buffer are split, through the ring.
func TestURingDirectUnaligned(t *testing.T) {
	f := openURing(t, filepath.Join(t.TempDir(), "d"), bdev.FileOptions{Create: true, Size: 8 << 20})
	if !f.Direct() {
		testutil.Missing(t, "O_DIRECT on the test filesystem")
	}
	for _, skew := range []int{0, 1} {
		n := 3<<20 + 4096
		w := ioBuf(n+1, false)[skew : n+skew]
		for i := range w {
			w[i] = byte(i*7 + i>>9 + skew)
		}
		if _, err := f.WriteAt(w, 4096); err != nil {
			t.Fatal(err)
		}
		r := ioBuf(n+3, false)[3*skew : n+3*skew]
		if _, err := f.ReadAt(r, 4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r, w) {
			t.Fatalf("skew %d: direct round trip differs", skew)
		}
	}
}

// TestURingStress runs many goroutines doing random writes, reads,
// write-zeroes, unmaps and flushes, each in its own interleaved share of
// the device, against a shadow copy; then it checks the whole device, and
// again through the default engine after reopening it.
func TestURingStress(t *testing.T) {
	for _, direct := range []bool{false, true} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			const (
				size    = 8 << 20
				chunk   = 64 << 10 // ownership unit: chunk i belongs to goroutine i%workers
				workers = 16
				ops     = 200
				bs      = 4096
			)
			path := filepath.Join(t.TempDir(), "d")
			skipWithoutURing(t)
			f, err := bdev.OpenFile(path, bdev.FileOptions{Create: true, Size: size, BlockSize: bs, Direct: ptr(direct), URing: true})
			if err != nil {
				if direct {
					testutil.Missing(t, fmt.Sprintf("O_DIRECT (%v)", err))
				}
				t.Fatal(err)
			}
			shadow := make([]byte, size)
			var wg sync.WaitGroup
			for g := range workers {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(g), 42))
					mine := size / chunk / workers
					buf := make([]byte, chunk+1)
					for range ops {
						c := int64((rng.IntN(mine)*workers + g) * chunk)
						first := rng.Int64N(chunk / bs)
						off := c + first*bs
						n := (1 + rng.Int64N(chunk/bs-first)) * bs
						// Unaligned buffers half the time, to exercise bouncing.
						p := buf[rng.IntN(2) : n+1][:n]
						var err error
						switch op := rng.IntN(20); {
						case op < 8:
							for i := range p {
								p[i] = byte(rng.Uint32())
							}
							_, err = f.WriteAt(p, off)
							copy(shadow[off:], p)
						case op < 16:
							if _, err = f.ReadAt(p, off); err == nil && !bytes.Equal(p, shadow[off:off+n]) {
								err = fmt.Errorf("read %d bytes at %d: data differs from what was written", n, off)
							}
						case op < 19:
							if rng.IntN(2) == 0 {
								err = f.WriteZeroes(off, n)
							} else {
								err = f.Unmap(off, n)
							}
							clear(shadow[off : off+n])
						default:
							err = f.Flush()
						}
						if err != nil {
							t.Errorf("worker %d: %v", g, err)
							return
						}
					}
				})
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			got := make([]byte, size)
			if _, err := f.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if i := firstDifference(got, shadow); i >= 0 {
				t.Fatalf("whole-device read differs from the shadow at byte %d", i)
			}
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			g, err := bdev.OpenFile(path, bdev.FileOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			clear(got)
			if _, err := g.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if i := firstDifference(got, shadow); i >= 0 {
				t.Fatalf("after reopening without io_uring: differs from the shadow at byte %d", i)
			}
		})
	}
}

// TestURingDepthChanges alternates requests issued alone (the submitter
// reaps its own completion) with bursts from several goroutines (the first
// of them reaps for the others until its own completes, then hands the rest
// to the reaper goroutine), many times over: every write must read back,
// every call must return.
func TestURingDepthChanges(t *testing.T) {
	const (
		bs     = 4096
		blocks = 256
		rounds = 300
		burst  = 8
	)
	f := openURing(t, filepath.Join(t.TempDir(), "d"), bdev.FileOptions{Create: true, Size: bs * blocks, BlockSize: bs})
	fill := func(p []byte, round, g int) {
		for i := range p {
			p[i] = byte(round*31 + g*7 + i)
		}
	}
	check := func(round, g int, buf, want []byte) error {
		off := int64((round*burst+g)%blocks) * bs
		fill(want, round, g)
		if _, err := f.WriteAt(want, off); err != nil {
			return err
		}
		if _, err := f.ReadAt(buf, off); err != nil {
			return err
		}
		if !bytes.Equal(buf, want) {
			return fmt.Errorf("round %d, goroutine %d: block at %d reads back different data", round, g, off)
		}
		return nil
	}
	buf, want := make([]byte, bs), make([]byte, bs)
	for round := range rounds {
		if err := check(round, 0, buf, want); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, burst)
		for g := 1; g <= burst; g++ {
			wg.Go(func() {
				b, w := make([]byte, bs), make([]byte, bs)
				if err := check(round, g, b, w); err != nil {
					errs <- err
				}
				if g%2 == 0 {
					if err := f.Flush(); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
}

func firstDifference(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestURingCloseDuringIO closes while readers, writers and flushers run:
// each call either completes or reports ErrClosed; none hangs, and Close
// releases the ring.
func TestURingCloseDuringIO(t *testing.T) {
	f := openURing(t, filepath.Join(t.TempDir(), "d"), bdev.FileOptions{Create: true, Size: 1 << 20})
	started := make(chan struct{}, 12)
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			buf := ioBuf(8192, i%2 == 1)
			off := int64(i%8) * 8192
			for n := 0; ; n++ {
				if n == 10 {
					started <- struct{}{}
				}
				var err error
				switch i % 3 {
				case 0:
					_, err = f.ReadAt(buf, off)
				case 1:
					_, err = f.WriteAt(buf, off)
				default:
					err = f.Flush()
				}
				if err != nil {
					if !errors.Is(err, bdev.ErrClosed) {
						t.Errorf("I/O during close: %v", err)
					}
					if n < 10 {
						started <- struct{}{}
					}
					return
				}
			}
		})
	}
	for range 12 {
		<-started
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := f.Close(); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("second Close: %v, want ErrClosed", err)
	}
	if _, err := f.ReadAt(make([]byte, 512), 0); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("ReadAt after Close: %v, want ErrClosed", err)
	}
	if err := f.Flush(); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("Flush after Close: %v, want ErrClosed", err)
	}
}

// TestURingFlushErrorIsSticky: a failed fdatasync through the ring is
// sticky exactly as with the default engine.
func TestURingFlushErrorIsSticky(t *testing.T) {
	dir := t.TempDir()
	f := openURing(t, filepath.Join(dir, "d"), bdev.FileOptions{Create: true, Size: 1 << 20})
	checkStickyFlush(t, f)
}

// TestURingReadErrors: a failed request's errno comes back wrapped with
// the path; a read past a file shrunk under the device is an error, not
// a hang or a short success.
func TestURingReadErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d")
	f := openURing(t, path, bdev.FileOptions{Create: true, Size: 1 << 20, Direct: ptr(false)})
	if err := os.Truncate(path, 512<<10); err != nil {
		t.Fatal(err)
	}
	_, err := f.ReadAt(make([]byte, 4096), 768<<10)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("read past a shrunk file: %v, want an error naming %s", err, path)
	}
	// A descriptor open read-only makes writes fail with EBADF.
	ro, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	fd := bdev.SwapFD(f, ro)
	_, err = f.WriteAt(make([]byte, 4096), 0)
	bdev.SwapFD(f, fd)
	syscall.Close(ro)
	if !errors.Is(err, syscall.EBADF) || !strings.Contains(err.Error(), path) {
		t.Fatalf("write through a read-only descriptor: %v, want EBADF naming the path", err)
	}
}

// TestURingBufferedReadSplit: a read of a buffered file copies what the
// page cache holds and reads the rest through the ring; the two halves
// meet without a gap or an overlap.
func TestURingBufferedReadSplit(t *testing.T) {
	const half = 1 << 20
	path := filepath.Join(t.TempDir(), "d")
	f := openURing(t, path, bdev.FileOptions{Create: true, Size: 4 * half, Direct: ptr(false), BlockSize: 4096})
	want := make([]byte, 2*half)
	for i := range want {
		want[i] = byte(rand.Uint32())
	}
	if _, err := f.WriteAt(want, half); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2*half)
	n, refused := bdev.ReadCached(f, got, half)
	if refused {
		testutil.Missing(t, "RWF_NOWAIT reads on the test filesystem (tmpfs refuses them)")
	}
	if n != len(got) {
		t.Fatalf("the page cache gave %d bytes of %d just written", n, len(got))
	}
	// Evict the second half (its pages are clean after the flush).
	other, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	evicted := false
	for try := 0; try < 3 && !evicted; try++ {
		if err := unix.Fadvise(int(other.Fd()), 2*half, half, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
		clear(got)
		n, _ = bdev.ReadCached(f, got, half)
		if n < half {
			t.Fatalf("the page cache gave %d bytes, less than the %d bytes not evicted", n, half)
		}
		if !bytes.Equal(got[:n], want[:n]) {
			t.Fatal("the page cache gave other bytes than were written")
		}
		evicted = n < len(got)
	}
	if !evicted {
		testutil.Missing(t, "a filesystem that evicts clean pages on FADV_DONTNEED")
	}
	if err := unix.Fadvise(int(other.Fd()), 2*half, half, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	clear(got)
	if n, err := f.ReadAt(got, half); err != nil || n != len(got) {
		t.Fatalf("ReadAt = %d, %v; want %d, nil", n, err, len(got))
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("read back differs from byte %d on (the cached part ended at %d in the last probe)", i, n)
			}
		}
	}
}

// TestURingUnavailable: when the kernel refuses the ring (here: more
// entries than it allows), the fault says io_uring is unavailable and
// names aio:// as the fix.
func TestURingUnavailable(t *testing.T) {
	skipWithoutURing(t)
	err := bdev.URingSetupFault("/dev/sdz", 1<<20)
	if err == nil {
		t.Fatal("a ring of 1Mi entries was set up; the kernel allows at most 32768")
	}
	var flt *fault.Fault
	if !errors.As(err, &flt) || flt.Kind != fault.FailedPrecondition {
		t.Fatalf("%v: want a FailedPrecondition fault", err)
	}
	for _, want := range []string{"io_uring is unavailable", "aio:///dev/sdz", "/dev/sdz"} {
		if !strings.Contains(err.Error(), want) && !strings.Contains(flt.Resolution, want) {
			t.Errorf("fault %q (resolution %q) does not mention %q", err, flt.Resolution, want)
		}
	}
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("fault %v does not wrap the kernel's EINVAL", err)
	}
}

func TestURingNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	for _, m := range fileModes {
		t.Run(m.name, func(t *testing.T) {
			f := openURing(t, filepath.Join(t.TempDir(), "d"), bdev.FileOptions{Create: true, Size: 4 << 20, Direct: ptr(m.direct)})
			if f.Direct() != m.direct {
				testutil.Missing(t, fmt.Sprintf("the direct=%v mode", m.direct))
			}
			buf := ioBuf(64<<10, m.unaligned)
			allocs := testing.AllocsPerRun(50, func() {
				if _, err := f.WriteAt(buf, 4096); err != nil {
					t.Fatal(err)
				}
				if _, err := f.ReadAt(buf, 4096); err != nil {
					t.Fatal(err)
				}
				if err := f.Flush(); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Fatalf("%v allocations per write+read+flush", allocs)
			}
		})
	}
}

// BenchmarkURingParallel issues 4KiB reads from many goroutines at once,
// to compare with BenchmarkFileParallel.
func BenchmarkURingParallel(b *testing.B) {
	benchParallelReads(b, 8, func(b *testing.B, direct bool) *bdev.File {
		return openURing(b, filepath.Join(b.TempDir(), "d"), bdev.FileOptions{Create: true, Size: 64 << 20, Direct: ptr(direct)})
	})
}

// TestProbeURing: where a ring can be set up the probe succeeds (and leaves
// nothing behind: many probes in a row do not run out of rings or
// descriptors).
func TestProbeURing(t *testing.T) {
	skipWithoutURing(t)
	for range 200 {
		if err := bdev.ProbeURing(); err != nil {
			t.Fatal(err)
		}
	}
}
