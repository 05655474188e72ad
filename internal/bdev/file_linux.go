package bdev

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fsutil"
)

var _ Device = (*File)(nil)

// File is a Device backed by a regular file or a block device, doing
// positioned I/O (pread/pwrite) on one descriptor shared by all callers.
//
// With O_DIRECT, callers' buffers need no particular alignment: a buffer
// that the kernel cannot use directly is bounced through pooled, 4096-byte
// aligned buffers, in pieces of at most 1 MiB, without allocating per I/O.
// Flush is fdatasync. Unmap punches a hole (and, on a block device, unmaps
// through fallocate, which guarantees that later reads return zeroes, unlike
// BLKDISCARD); WriteZeroes uses FALLOC_FL_ZERO_RANGE. Both fall back to
// writing zeroes when the filesystem or device does not support them.
//
// With FileOptions.URing and O_DIRECT, reads, writes (the bounced ones and
// the zeroes written where fallocate cannot zero included) and Flush's
// fdatasync go through an io_uring instance instead of one blocking system
// call each; without O_DIRECT only Flush's fdatasync and the reads the page
// cache cannot serve do. See FileOptions.URing. Opening, geometry,
// O_DIRECT, buffers and fallocate are the same either way. (The kernel
// works on callers' buffers after the submitting goroutine has parked, when
// its stack may move: so buffers passed to ReadAt and WriteAt always escape
// to the heap, which the collector never moves.)
//
// All methods are safe for concurrent use.
type File struct {
	path     string
	fd       int
	size     int64
	bs       int
	direct   bool
	blockDev bool
	readOnly bool
	memAlign uintptr // buffer address alignment the kernel needs for O_DIRECT
	ring     *uring  // nil: pread/pwrite/fdatasync system calls

	mu     sync.RWMutex // shared by I/O, exclusive by Close, so fd is never reused under I/O
	closed bool

	noNowait    atomic.Bool // the file refuses RWF_NOWAIT reads: readCached reads nothing
	noZeroRange atomic.Bool // FALLOC_FL_ZERO_RANGE unsupported: skip it
	noPunchHole atomic.Bool // FALLOC_FL_PUNCH_HOLE unsupported: skip it

	// flushErr is the first failed fdatasync. After a writeback error the
	// kernel may drop the dirty pages it could not write, or mark them
	// clean, and reports the error once: a later fdatasync can succeed
	// although acknowledged writes never reached the disk. So the failure
	// is sticky and every later Flush reports it.
	flushErr atomic.Pointer[fs.PathError]
}

const (
	// bufAlign is the alignment of bounce buffers: a page, which satisfies
	// every device's direct-I/O memory alignment we accept.
	bufAlign = 4096
	// maxChunk is the largest bounce buffer; larger unaligned I/Os are split.
	maxChunk   = 1 << 20
	minClass   = 12 // log2(bufAlign)
	maxClass   = 20 // log2(maxChunk)
	zeroLength = maxChunk
	// maxBlockSize bounds the block size, as disk URIs do; blocks must fit
	// the bounce buffers.
	maxBlockSize = 64 << 10
)

// alignedBuf is a pooled bounce buffer; pools hold pointers so that Put does
// not allocate.
type alignedBuf struct{ b []byte }

var bufPools [maxClass + 1]sync.Pool

func init() {
	for c := minClass; c <= maxClass; c++ {
		size := 1 << c
		bufPools[c].New = func() any { return &alignedBuf{b: alignedAlloc(size)} }
	}
}

// alignedAlloc returns n bytes starting on a bufAlign boundary.
func alignedAlloc(n int) []byte {
	raw := make([]byte, n+bufAlign)
	skip := (bufAlign - int(uintptr(unsafe.Pointer(&raw[0]))%bufAlign)) % bufAlign
	return raw[skip : skip+n : skip+n]
}

// getBuf returns a pooled aligned buffer of at least n bytes (n <= maxChunk).
func getBuf(n int) *alignedBuf {
	c := minClass
	if n > 1<<minClass {
		c = bits.Len(uint(n - 1))
	}
	return bufPools[c].Get().(*alignedBuf)
}

func putBuf(b *alignedBuf) {
	bufPools[bits.TrailingZeros(uint(len(b.b)))].Put(b)
}

// zeroes is a shared, aligned, never-written buffer of zeroes used to write
// zeroes when the filesystem cannot zero a range itself.
var zeroes = sync.OnceValue(func() []byte { return alignedAlloc(zeroLength) })

// OpenFile opens a regular file or block device as a Device. See
// FileOptions for creation, block size and O_DIRECT selection. Errors for
// bad input are *fault.Fault values that name the path and the fix.
//
// Unless opts.ReadOnly, the device is held exclusively until Close: a
// regular file by an exclusive flock on the open file description, a block
// device by O_EXCL (which also refuses a mounted one). Opening a file that
// another open holds, in this process or another, fails with a
// FailedPrecondition fault wrapping an *fsutil.HeldError that names the
// holder's PID where the kernel tells it; a busy block device fails the
// same way with EBUSY. Nothing is written either way.
func OpenFile(path string, opts FileOptions) (*File, error) {
	if path == "" {
		return nil, fault.New(fault.InvalidArgument, "bdev.path", "empty path", "give the path of a file or block device")
	}
	if opts.Size < 0 {
		return nil, fault.New(fault.InvalidArgument, "bdev.size", fmt.Sprintf("file %q: negative size %d", path, opts.Size), "give a positive size such as 10GiB")
	}
	if opts.BlockSize != 0 && (opts.BlockSize < 512 || opts.BlockSize > maxBlockSize || opts.BlockSize&(opts.BlockSize-1) != 0) {
		return nil, fault.New(fault.InvalidArgument, "bdev.blocksize", fmt.Sprintf("file %q: block size %d is not a power of two between 512 and %d", path, opts.BlockSize, maxBlockSize), "use 512 or 4096")
	}
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		if !opts.Create {
			return nil, fault.Wrap(err, fault.NotFound, "bdev.not_found", fmt.Sprintf("file %q: no such file", path), "create it with ?size=10GiB or check the path")
		}
		if err := createFile(path, opts); err != nil {
			return nil, err
		}
		st, err = os.Stat(path)
	}
	if err != nil {
		return nil, fmt.Errorf("file %q: %w", path, err)
	}
	f := &File{path: path, fd: -1, readOnly: opts.ReadOnly}
	switch {
	case st.Mode().IsRegular():
	case st.Mode()&fs.ModeDevice != 0 && st.Mode()&fs.ModeCharDevice == 0:
		f.blockDev = true
	default:
		return nil, fault.New(fault.InvalidArgument, "bdev.not_a_disk", fmt.Sprintf("file %q: %s is neither a regular file nor a block device", path, st.Mode().Type()), "give a regular file or a block device such as /dev/sdb")
	}
	if err := f.open(opts); err != nil {
		if f.fd >= 0 {
			unix.Close(f.fd)
		}
		return nil, err
	}
	// A writable regular file is held exclusively, as O_EXCL holds a block
	// device: two pools (or a pool and anything else) on one file would
	// overwrite each other's metadata. Taken on the final descriptor (open
	// may have reopened it without O_DIRECT), before anyone can write.
	if !f.blockDev && !f.readOnly {
		if err := lockExclusive(f.fd, path); err != nil {
			unix.Close(f.fd)
			return nil, err
		}
	}
	if opts.URing {
		r, err := newURing(uringEntries)
		if err != nil {
			unix.Close(f.fd)
			return nil, uringUnavailable(path, err)
		}
		f.ring = r
	}
	return f, nil
}

func createFile(path string, opts FileOptions) error {
	if opts.ReadOnly {
		return fault.New(fault.InvalidArgument, "bdev.create_read_only", fmt.Sprintf("file %q: no such file, and it cannot be created read-only", path), "create it first or open it writable")
	}
	bs := int64(max(opts.BlockSize, 512))
	if opts.Size == 0 {
		return fault.New(fault.InvalidArgument, "bdev.size", fmt.Sprintf("file %q: no such file and no size to create it with", path), "give a size such as ?size=10GiB or check the path")
	}
	if opts.Size%bs != 0 {
		return fault.New(fault.InvalidArgument, "bdev.size", fmt.Sprintf("file %q: size %d is not a multiple of the %d-byte block size", path, opts.Size, bs), "use a size in whole blocks such as 10GiB")
	}
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil // created concurrently; the size check happens on open
	}
	if errors.Is(err, fs.ErrNotExist) {
		return fault.Wrap(err, fault.NotFound, "bdev.not_found", fmt.Sprintf("file %q: cannot create it: directory %q does not exist", path, filepath.Dir(path)), "create the directory or check the path")
	}
	if err != nil {
		return fmt.Errorf("file %q: create: %w", path, err)
	}
	if err := fh.Truncate(opts.Size); err != nil {
		fh.Close()
		os.Remove(path)
		return fmt.Errorf("file %q: set size %d: %w", path, opts.Size, err)
	}
	return fh.Close()
}

// open opens the descriptor, learns the geometry and settles O_DIRECT.
func (f *File) open(opts FileOptions) error {
	flags := unix.O_RDWR | unix.O_CLOEXEC
	if f.readOnly {
		flags = unix.O_RDONLY | unix.O_CLOEXEC
	}
	if f.blockDev && !f.readOnly {
		// O_EXCL on a block device refuses one that is mounted or held by
		// another exclusive opener: never scribble over a live filesystem.
		flags |= unix.O_EXCL
	}
	wantDirect := opts.Direct == nil || *opts.Direct
	fd, err := f.openFD(flags, wantDirect)
	if err != nil && wantDirect && errors.Is(err, unix.EINVAL) {
		// The filesystem refuses O_DIRECT at open.
		if opts.Direct != nil {
			return fault.Wrap(err, fault.InvalidArgument, "bdev.direct", fmt.Sprintf("file %q: the filesystem does not support O_DIRECT", f.path), "use direct=false or put the file on another filesystem")
		}
		wantDirect = false
		fd, err = f.openFD(flags, false)
	}
	if err != nil {
		return err
	}
	f.fd = fd

	lbs := 512
	if f.blockDev {
		if lbs, err = unix.IoctlGetInt(fd, unix.BLKSSZGET); err != nil {
			return fmt.Errorf("file %q: get logical block size (BLKSSZGET): %w", f.path, err)
		}
		var size uint64
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); e != 0 {
			return fmt.Errorf("file %q: get size (BLKGETSIZE64): %w", f.path, e)
		}
		f.size = int64(size)
	} else {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("file %q: stat: %w", f.path, err)
		}
		f.size = st.Size
	}
	f.bs = opts.BlockSize
	if f.bs == 0 {
		f.bs = lbs
	}
	if f.bs < lbs {
		return fault.New(fault.InvalidArgument, "bdev.blocksize", fmt.Sprintf("file %q: block size %d is smaller than the device's %d-byte logical blocks", f.path, f.bs, lbs), fmt.Sprintf("use blocksize=%d or leave it unset", lbs))
	}
	if f.blockDev {
		f.size -= f.size % int64(f.bs) // use whole blocks only
	}
	if opts.Size != 0 && opts.Size != f.size {
		return fault.New(fault.InvalidArgument, "bdev.size", fmt.Sprintf("file %q: size is %d bytes, not the %d bytes requested", f.path, f.size, opts.Size), "leave size unset to use the existing size, or give the right one; the file is never resized")
	}
	if f.size == 0 {
		return fault.New(fault.InvalidArgument, "bdev.size", fmt.Sprintf("file %q: empty", f.path), "remove it and give ?size=10GiB to create it, or use a non-empty file")
	}
	if f.size%int64(f.bs) != 0 {
		return fault.New(fault.InvalidArgument, "bdev.size", fmt.Sprintf("file %q: size %d is not a multiple of the %d-byte block size", f.path, f.size, f.bs), fmt.Sprintf("truncate it to a multiple of %d or choose another block size", f.bs))
	}

	if wantDirect {
		reason := f.checkDirect()
		if reason != "" {
			if opts.Direct != nil {
				return fault.New(fault.InvalidArgument, "bdev.direct", fmt.Sprintf("file %q: O_DIRECT unusable: %s", f.path, reason), "use direct=false or a block size the filesystem supports")
			}
			unix.Close(f.fd)
			f.fd = -1
			if f.fd, err = f.openFD(flags, false); err != nil {
				return err
			}
			wantDirect = false
		}
	}
	f.direct = wantDirect
	return nil
}

// lockLinger is how long OpenFile waits for an exclusive lock whose holder
// is not a live process (see lockExclusive).
const lockLinger = 5 * time.Second

// alive reports whether a process with this PID exists.
func alive(pid int) bool {
	return unix.Kill(pid, 0) != unix.ESRCH
}

// lockExclusive takes the exclusive flock of the open file description of
// fd (see fsutil.LockFD): it lasts until fd is closed, however the process
// ends. It locks through a duplicate descriptor, which shares the open file
// description and so the lock, and closes the duplicate again. When another
// open holds it, the error is a FailedPrecondition fault wrapping an
// *fsutil.HeldError that names the holder's PID where /proc/locks tells it.
// A holder that is not a live process is waited for, up to lockLinger.
func lockExclusive(fd int, path string) error {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("file %q: duplicating the descriptor to lock it: %w", path, err)
	}
	lf := os.NewFile(uintptr(dup), path)
	defer lf.Close()
	// A lock whose holder /proc/locks cannot name (PID 0), or names as a
	// process that no longer exists, is one whose process has died: an io_uring instance keeps the
	// files of its last requests open until the kernel has torn it down,
	// a little after the process was reaped, so a server restarted at once
	// after kill -9 would find its pool "in use". Such a lock is waited
	// for, up to lockLinger; one held by a live process fails at once.
	deadline := time.Now().Add(lockLinger)
	for {
		err = fsutil.LockFD(lf)
		var held *fsutil.HeldError
		if !errors.As(err, &held) || (held.PID != 0 && alive(held.PID)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if errors.Is(err, fsutil.ErrHeld) {
		return fault.Wrap(err, fault.FailedPrecondition, "bdev.busy",
			fmt.Sprintf("file %q is held exclusively by another open", path),
			"close it there (export the pool, stop the server that has it) or choose another disk")
	}
	return err
}

func (f *File) openFD(flags int, direct bool) (int, error) {
	if direct {
		flags |= unix.O_DIRECT
	}
	for {
		fd, err := unix.Open(f.path, flags, 0)
		switch {
		case err == nil:
			return fd, nil
		case err == unix.EINTR:
			continue
		case err == unix.EBUSY && f.blockDev:
			return -1, fault.Wrap(err, fault.FailedPrecondition, "bdev.busy", fmt.Sprintf("file %q: device is in use: mounted, or opened exclusively by another process", f.path), "unmount it, stop the process that holds it, or choose another disk")
		case err == unix.EACCES || err == unix.EPERM || err == unix.EROFS:
			return -1, fault.Wrap(err, fault.PermissionDenied, "bdev.permission", fmt.Sprintf("file %q: cannot open for %s", f.path, map[bool]string{true: "reading", false: "reading and writing"}[f.readOnly]), "check its permissions, or run with access to it")
		case err == unix.EINVAL:
			return -1, err // O_DIRECT refused; the caller decides
		default:
			return -1, fmt.Errorf("file %q: open: %w", f.path, err)
		}
	}
}

// checkDirect tells why O_DIRECT cannot serve this file at f.bs, or "".
// It trusts statx's STATX_DIOALIGN where the kernel reports it, and probes
// with a one-block read either way, since some filesystems accept O_DIRECT
// at open and refuse it at I/O time.
func (f *File) checkDirect() string {
	f.memAlign = bufAlign
	var stx unix.Statx_t
	if err := unix.Statx(f.fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx); err == nil && stx.Mask&unix.STATX_DIOALIGN != 0 {
		switch {
		case stx.Dio_mem_align == 0:
			return "the filesystem does not support direct I/O on this file"
		case int(stx.Dio_offset_align) > f.bs:
			return fmt.Sprintf("direct I/O needs %d-byte alignment, more than the %d-byte block size", stx.Dio_offset_align, f.bs)
		case stx.Dio_mem_align > bufAlign:
			return fmt.Sprintf("direct I/O needs %d-byte buffer alignment", stx.Dio_mem_align)
		}
		f.memAlign = uintptr(stx.Dio_mem_align)
	}
	b := getBuf(f.bs)
	defer putBuf(b)
	if _, err := unix.Pread(f.fd, b.b[:f.bs], 0); err != nil {
		return fmt.Sprintf("a %d-byte direct read failed: %v", f.bs, err)
	}
	return ""
}

// Path returns the path the File was opened with.
func (f *File) Path() string { return f.path }

// Direct reports whether I/O bypasses the page cache (O_DIRECT).
func (f *File) Direct() bool { return f.direct }

// URing reports whether the File has an io_uring instance: with O_DIRECT
// its reads, writes and Flush go through it; without, Flush and the reads
// the page cache cannot serve (see FileOptions.URing).
func (f *File) URing() bool { return f.ring != nil }

// IsBlockDevice reports whether the File is a block device rather than a
// regular file.
func (f *File) IsBlockDevice() bool { return f.blockDev }

// Size returns the capacity in bytes, fixed at open.
func (f *File) Size() int64 { return f.size }

// BlockSize returns the logical block size in bytes.
func (f *File) BlockSize() int { return f.bs }

// begin validates an operation and takes the shared lock; the caller must
// call f.mu.RUnlock when it returns nil.
func (f *File) begin(op string, off, length int64, write bool) error {
	f.mu.RLock()
	switch {
	case f.closed:
		f.mu.RUnlock()
		return fmt.Errorf("file %q: %s: %w", f.path, op, ErrClosed)
	case write && f.readOnly:
		f.mu.RUnlock()
		return fmt.Errorf("file %q: %s: %w", f.path, op, ErrReadOnly)
	}
	if err := CheckRange(op, off, length, f.size, f.bs); err != nil {
		f.mu.RUnlock()
		return err
	}
	return nil
}

// usable reports whether p can go to the kernel as is.
func (f *File) usable(p []byte) bool {
	return !f.direct || len(p) == 0 || uintptr(unsafe.Pointer(&p[0]))%f.memAlign == 0
}

// ReadAt reads len(p) bytes at off. off and len(p) must be multiples of
// BlockSize.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if err := f.begin("read", off, int64(len(p)), false); err != nil {
		return 0, err
	}
	defer f.mu.RUnlock()
	if f.usable(p) {
		return f.pread(p, off)
	}
	done := 0
	for done < len(p) {
		n := min(len(p)-done, maxChunk)
		b := getBuf(n)
		_, err := f.pread(b.b[:n], off+int64(done))
		if err == nil {
			copy(p[done:], b.b[:n])
		}
		putBuf(b)
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// WriteAt writes len(p) bytes at off. off and len(p) must be multiples of
// BlockSize. The data is durable after a later Flush.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if err := f.begin("write", off, int64(len(p)), true); err != nil {
		return 0, err
	}
	defer f.mu.RUnlock()
	if f.usable(p) {
		return f.pwrite(p, off)
	}
	done := 0
	for done < len(p) {
		n := min(len(p)-done, maxChunk)
		b := getBuf(n)
		copy(b.b, p[done:done+n])
		_, err := f.pwrite(b.b[:n], off+int64(done))
		putBuf(b)
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

func (f *File) pread(p []byte, off int64) (int, error) {
	done := 0
	switch {
	case f.ring != nil && f.direct:
		return f.ringRW(ioringOpRead, "read", p, off)
	case f.ring != nil:
		// Through the page cache: what it holds is copied now, without
		// waking the reaper; only the rest waits for the disk.
		var refused bool
		done, refused = f.readCached(p, off)
		if done == len(p) {
			return done, nil
		}
		if !refused {
			n, err := f.ringRW(ioringOpRead, "read", p[done:], off+int64(done))
			return done + n, err
		}
		// A file that refuses RWF_NOWAIT (tmpfs, some filesystems) would
		// be read by a kernel worker thread for every ring request:
		// pread does the same work here.
	}
	for done < len(p) {
		n, err := unix.Pread(f.fd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, &fs.PathError{Op: "read", Path: f.path, Err: err}
		}
		if n == 0 {
			// The file shrank under us (truncated by someone else).
			return done, &fs.PathError{Op: "read", Path: f.path, Err: io.ErrUnexpectedEOF}
		}
		done += n
	}
	return done, nil
}

func (f *File) pwrite(p []byte, off int64) (int, error) {
	if f.ring != nil && f.direct {
		return f.ringRW(ioringOpWrite, "write", p, off)
	}
	// Without O_DIRECT a write is a copy into the page cache, done here:
	// io_uring would hand it to a kernel worker thread on filesystems that
	// cannot write to the cache without blocking (ext4), which costs more
	// than the copy.
	done := 0
	for done < len(p) {
		n, err := unix.Pwrite(f.fd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, &fs.PathError{Op: "write", Path: f.path, Err: err}
		}
		if n == 0 {
			return done, &fs.PathError{Op: "write", Path: f.path, Err: io.ErrShortWrite}
		}
		done += n
	}
	return done, nil
}

// Flush makes every acknowledged write durable (fdatasync). On a read-only
// File it only checks that the File is open. Once a Flush has failed, every
// later Flush fails with that error too (wrapped): writes acknowledged
// before it may be lost whatever a later fdatasync says, and only the owner
// of the data can decide what to do (for a replica: rebuild it). Reopening
// the device clears the condition.
func (f *File) Flush() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return fmt.Errorf("file %q: flush: %w", f.path, ErrClosed)
	}
	if f.readOnly {
		return nil
	}
	if pe := f.flushErr.Load(); pe != nil {
		return fmt.Errorf("file %q: flush: an earlier flush failed, so writes acknowledged before it may be lost; check the disk and reopen it: %w", f.path, pe)
	}
	if err := f.fdatasync(); err != nil {
		pe := &fs.PathError{Op: "fdatasync", Path: f.path, Err: err}
		f.flushErr.CompareAndSwap(nil, pe)
		return pe
	}
	return nil
}

func (f *File) fdatasync() error {
	if f.ring != nil {
		return f.ringFdatasync()
	}
	for {
		err := unix.Fdatasync(f.fd)
		if err != unix.EINTR {
			return err
		}
	}
}

// Unmap deallocates the range (punches a hole); later reads return zeroes.
func (f *File) Unmap(off, length int64) error {
	if err := f.begin("unmap", off, length, true); err != nil {
		return err
	}
	defer f.mu.RUnlock()
	if length == 0 {
		return nil
	}
	if !f.noPunchHole.Load() {
		err := f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if !unsupported(err) {
			return err
		}
		f.noPunchHole.Store(true)
	}
	return f.zero(off, length)
}

// WriteZeroes sets the range to zeroes. On files it keeps the blocks
// allocated when the filesystem supports FALLOC_FL_ZERO_RANGE.
func (f *File) WriteZeroes(off, length int64) error {
	if err := f.begin("write-zeroes", off, length, true); err != nil {
		return err
	}
	defer f.mu.RUnlock()
	if length == 0 {
		return nil
	}
	return f.zero(off, length)
}

// zero zeroes a validated range: ZERO_RANGE, else PUNCH_HOLE, else writes.
func (f *File) zero(off, length int64) error {
	if !f.noZeroRange.Load() {
		err := f.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if !unsupported(err) {
			return err
		}
		f.noZeroRange.Store(true)
	}
	if !f.noPunchHole.Load() {
		err := f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if !unsupported(err) {
			return err
		}
		f.noPunchHole.Store(true)
	}
	z := zeroes()
	for length > 0 {
		n := min(length, int64(len(z)))
		if _, err := f.pwrite(z[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

func (f *File) fallocate(mode uint32, off, length int64) error {
	for {
		err := unix.Fallocate(f.fd, mode, off, length)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "fallocate", Path: f.path, Err: err}
		}
		return nil
	}
}

// unsupported reports whether a fallocate error means the mode is not
// available here (as opposed to a real I/O error).
func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV)
}

// Close closes the descriptor after in-flight I/O has finished (and, with
// io_uring, releases the ring once its last completion is in). It does not
// flush: call Flush first for durability. A second Close, and any call
// after Close, returns ErrClosed.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("file %q: close: %w", f.path, ErrClosed)
	}
	f.closed = true
	var ringErr error
	if f.ring != nil {
		ringErr = f.ring.close()
	}
	if err := unix.Close(f.fd); err != nil {
		return &fs.PathError{Op: "close", Path: f.path, Err: err}
	}
	if ringErr != nil {
		return fmt.Errorf("file %q: %w", f.path, ringErr)
	}
	return nil
}
