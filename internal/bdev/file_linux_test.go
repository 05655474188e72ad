package bdev_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/testutil"
)

func openTemp(t *testing.T, dir string, opts bdev.FileOptions) *bdev.File {
	t.Helper()
	opts.Create = true
	if opts.Size == 0 {
		opts.Size = 4 << 20
	}
	f, err := bdev.OpenFile(filepath.Join(dir, "disk.img"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestFileConformance(t *testing.T) {
	for _, c := range []struct {
		name   string
		direct *bool
		bs     int
	}{
		{"buffered-512", ptr(false), 512},
		{"buffered-4096", ptr(false), 4096},
		{"auto-512", nil, 512},
		{"auto-4096", nil, 4096},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := openTemp(t, t.TempDir(), bdev.FileOptions{Direct: c.direct, BlockSize: c.bs})
			t.Logf("direct=%v", f.Direct())
			if c.direct != nil && f.Direct() != *c.direct {
				t.Fatalf("Direct() = %v, want %v", f.Direct(), *c.direct)
			}
			if err := bdevtest.TestDevice(f); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFileConformanceWriteFallback zeroes ranges by writing zeroes, the path
// taken on filesystems without fallocate modes.
func TestFileConformanceWriteFallback(t *testing.T) {
	for _, direct := range []bool{false, true} {
		dir := t.TempDir()
		f, err := bdev.OpenFile(filepath.Join(dir, "d"), bdev.FileOptions{Create: true, Size: 2 << 20, Direct: ptr(direct)})
		if err != nil {
			if direct {
				t.Logf("no O_DIRECT in %s: %v", dir, err)
				continue
			}
			t.Fatal(err)
		}
		bdev.DisableFallocate(f)
		if err := bdevtest.TestDevice(f); err != nil {
			t.Fatalf("direct=%v: %v", direct, err)
		}
	}
}

// TestFileDirect checks that O_DIRECT is used where the test filesystem
// allows it, and that unaligned caller buffers and I/Os larger than the
// bounce buffers work.
func TestFileDirect(t *testing.T) {
	dir := t.TempDir()
	f, err := bdev.OpenFile(filepath.Join(dir, "d"), bdev.FileOptions{Create: true, Size: 8 << 20, Direct: ptr(true)})
	if err != nil {
		var flt *fault.Fault
		if !errors.As(err, &flt) || !strings.Contains(err.Error(), "direct=false") {
			t.Fatalf("forced O_DIRECT failed without saying how to fix it: %v", err)
		}
		testutil.Missing(t, fmt.Sprintf("O_DIRECT on %s (%v)", dir, err))
	}
	defer f.Close()
	if !f.Direct() {
		t.Fatal("Direct() = false after forcing O_DIRECT")
	}
	// 3 MiB + 1 block from a buffer that starts one byte into an allocation:
	// bounced in 1 MiB pieces.
	n := 3<<20 + 512
	raw := make([]byte, n+1)
	w := raw[1:]
	for i := range w {
		w[i] = byte(i*7 + i>>9)
	}
	if _, err := f.WriteAt(w, 512); err != nil {
		t.Fatal(err)
	}
	rraw := make([]byte, n+3)
	r := rraw[3:]
	if _, err := f.ReadAt(r, 512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r, w) {
		t.Fatal("unaligned direct round trip differs")
	}
}

func TestFileTmpfs(t *testing.T) {
	var st syscall.Statfs_t
	const tmpfsMagic = 0x01021994
	if err := syscall.Statfs("/dev/shm", &st); err != nil || st.Type != tmpfsMagic {
		testutil.Missing(t, "a tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp("/dev/shm", "bdev-test-")
	if err != nil {
		testutil.Missing(t, err.Error())
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := openTemp(t, dir, bdev.FileOptions{})
	t.Logf("tmpfs: direct=%v", f.Direct())
	if err := bdevtest.TestDevice(f); err != nil {
		t.Fatal(err)
	}
}

func TestFileSparseAndUnmap(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sparse.img")
	f, err := bdev.OpenFile(path, bdev.FileOptions{Create: true, Size: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != 1<<30 || f.BlockSize() != 512 {
		t.Fatalf("Size %d BlockSize %d, want 1GiB and 512", f.Size(), f.BlockSize())
	}
	if got := allocated(t, path); got > 1<<20 {
		t.Fatalf("a new 1GiB file has %d bytes allocated, want it sparse", got)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{1}, 4<<20), 0); err != nil {
		t.Fatal(err)
	}
	f.Flush()
	before := allocated(t, path)
	if before < 4<<20 {
		t.Fatalf("after writing 4MiB only %d bytes are allocated", before)
	}
	if err := f.Unmap(0, 4<<20); err != nil {
		t.Fatal(err)
	}
	if after := allocated(t, path); after >= before {
		t.Fatalf("Unmap did not deallocate: %d bytes before, %d after", before, after)
	}
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestFileOpenErrors(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing.img")
	if err := os.WriteFile(existing, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(dir, "odd.img")
	os.WriteFile(odd, make([]byte, 1000), 0o600)
	empty := filepath.Join(dir, "empty.img")
	os.WriteFile(empty, nil, 0o600)
	for _, c := range []struct {
		name string
		path string
		opts bdev.FileOptions
		kind fault.Kind
		want []string
	}{
		{"missing", filepath.Join(dir, "nope"), bdev.FileOptions{}, fault.NotFound, []string{"no such file", "?size=10GiB", "nope"}},
		{"create without size", filepath.Join(dir, "nope"), bdev.FileOptions{Create: true}, fault.InvalidArgument, []string{"no size", "size=10GiB"}},
		{"create unaligned", filepath.Join(dir, "nope"), bdev.FileOptions{Create: true, Size: 1000}, fault.InvalidArgument, []string{"not a multiple"}},
		{"create in missing dir", filepath.Join(dir, "a", "b.img"), bdev.FileOptions{Create: true, Size: 1 << 20}, fault.NotFound, []string{"does not exist", "create the directory"}},
		{"create read-only", filepath.Join(dir, "nope"), bdev.FileOptions{Create: true, Size: 1 << 20, ReadOnly: true}, fault.InvalidArgument, []string{"read-only"}},
		{"wrong size", existing, bdev.FileOptions{Size: 2 << 20}, fault.InvalidArgument, []string{"not the 2097152 bytes", "never resized"}},
		{"directory", dir, bdev.FileOptions{}, fault.InvalidArgument, []string{"neither a regular file nor a block device"}},
		{"odd size", odd, bdev.FileOptions{}, fault.InvalidArgument, []string{"not a multiple of the 512-byte"}},
		{"empty", empty, bdev.FileOptions{}, fault.InvalidArgument, []string{"empty"}},
		{"bad block size", existing, bdev.FileOptions{BlockSize: 1000}, fault.InvalidArgument, []string{"power of two"}},
		{"huge block size", filepath.Join(dir, "nope"), bdev.FileOptions{Create: true, Size: 4 << 20, BlockSize: 2 << 20}, fault.InvalidArgument, []string{"between 512 and 65536"}},
		{"empty path", "", bdev.FileOptions{}, fault.InvalidArgument, []string{"empty path"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := bdev.OpenFile(c.path, c.opts)
			if err == nil {
				f.Close()
				t.Fatal("OpenFile succeeded")
			}
			if k := fault.KindOf(err); k != c.kind {
				t.Errorf("kind %v, want %v (%v)", k, c.kind, err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a failed OpenFile left a file behind")
	}
	// Size 0 and the exact size both open an existing file.
	for _, size := range []int64{0, 1 << 20} {
		f, err := bdev.OpenFile(existing, bdev.FileOptions{Size: size, Create: true})
		if err != nil {
			t.Fatalf("open existing with size %d: %v", size, err)
		}
		f.Close()
	}
}

func TestFileReadOnly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ro.img")
	w, err := bdev.OpenFile(path, bdev.FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xee}, 4096)
	w.WriteAt(data, 8192)
	w.Close()

	f, err := bdev.OpenFile(path, bdev.FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, 4096)
	if _, err := f.ReadAt(got, 8192); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read-only read: %v", err)
	}
	if _, err := f.WriteAt(got, 0); !errors.Is(err, bdev.ErrReadOnly) {
		t.Fatalf("WriteAt on read-only: %v, want ErrReadOnly", err)
	}
	if err := f.Unmap(0, 512); !errors.Is(err, bdev.ErrReadOnly) {
		t.Fatalf("Unmap on read-only: %v, want ErrReadOnly", err)
	}
	if err := f.WriteZeroes(0, 512); !errors.Is(err, bdev.ErrReadOnly) {
		t.Fatalf("WriteZeroes on read-only: %v, want ErrReadOnly", err)
	}
	if err := f.Flush(); err != nil {
		t.Fatalf("Flush on read-only: %v", err)
	}
}

// TestFileCloseDuringIO closes while readers run: I/O either completes or
// reports ErrClosed, never hits a reused descriptor.
func TestFileCloseDuringIO(t *testing.T) {
	f := openTemp(t, t.TempDir(), bdev.FileOptions{Size: 1 << 20})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for {
				if _, err := f.ReadAt(buf, 0); err != nil {
					if !errors.Is(err, bdev.ErrClosed) {
						t.Errorf("read during close: %v", err)
					}
					return
				}
			}
		})
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

// TestFileBlockDevice runs the suite on a loop device; it needs root.
func TestFileBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		testutil.Missing(t, "root, to attach a loop device")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		testutil.Missing(t, "losetup")
	}
	img := filepath.Join(t.TempDir(), "loop.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", "--sector-size", "4096", img).Output()
	if err != nil {
		testutil.Missing(t, fmt.Sprintf("a loop device (%v)", err))
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })

	if _, err := bdev.OpenFile(loop, bdev.FileOptions{BlockSize: 512}); err == nil || !strings.Contains(err.Error(), "blocksize=4096") {
		t.Fatalf("512-byte blocks on a 4096-byte device: %v, want an error naming blocksize=4096", err)
	}
	if _, err := bdev.OpenFile(loop, bdev.FileOptions{Size: 4 << 20}); err == nil {
		t.Fatal("opening an 8MiB device with size 4MiB succeeded")
	}
	f, err := bdev.OpenFile(loop, bdev.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !f.IsBlockDevice() || f.Size() != 8<<20 || f.BlockSize() != 4096 {
		t.Fatalf("loop device: block %v size %d block size %d", f.IsBlockDevice(), f.Size(), f.BlockSize())
	}
	// Exclusive: a second writable open is refused while the first is held.
	if g, err := bdev.OpenFile(loop, bdev.FileOptions{}); err == nil {
		g.Close()
		t.Fatal("a second writable open of a block device succeeded")
	} else if fault.KindOf(err) != fault.FailedPrecondition {
		t.Fatalf("second open: %v, want a FailedPrecondition fault", err)
	}
	t.Logf("loop device %s: direct=%v", loop, f.Direct())
	if err := bdevtest.TestDevice(f); err != nil {
		t.Fatal(err)
	}
}

// TestFileFlushErrorIsSticky: after fdatasync fails, the kernel may have
// dropped the dirty data and a later fdatasync can succeed; Flush must keep
// failing so that no caller takes earlier writes for durable. Reopening the
// file starts afresh.
func TestFileFlushErrorIsSticky(t *testing.T) {
	dir := t.TempDir()
	f := openTemp(t, dir, bdev.FileOptions{})
	checkStickyFlush(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g, err := bdev.OpenFile(filepath.Join(dir, "disk.img"), bdev.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.Flush(); err != nil {
		t.Fatalf("Flush after reopening: %v", err)
	}
}

// checkStickyFlush makes one fdatasync of f fail for real (on a pipe, it
// fails with EINVAL) and checks that every later Flush reports it.
func checkStickyFlush(t *testing.T, f *bdev.File) {
	t.Helper()
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	var pipe [2]int
	if err := syscall.Pipe(pipe[:]); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(pipe[1])
	fd := bdev.SwapFD(f, pipe[0])
	err := f.Flush()
	bdev.SwapFD(f, fd)
	syscall.Close(pipe[0])
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Flush on a pipe: %v, want EINVAL", err)
	}
	if _, err := f.WriteAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := f.Flush(); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "earlier flush failed") {
			t.Fatalf("Flush after a failed flush: %v, want the earlier failure", err)
		}
	}
}
