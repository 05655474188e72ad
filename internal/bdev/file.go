package bdev

import "errors"

// ErrReadOnly is returned by writes to a device opened read-only.
var ErrReadOnly = errors.New("bdev: device is read-only")

// FileOptions configures OpenFile.
type FileOptions struct {
	// Create creates a regular file of Size bytes (sparse) when path does
	// not exist. Without it a missing path is an error.
	Create bool
	// Size is the size in bytes of a file to create. For an existing file
	// or block device it must be 0 or equal to the current size (a safety
	// check, never a resize).
	Size int64
	// BlockSize is the logical block size in bytes, a power of two from 512
	// to 65536.
	// 0 means 512 for regular files and the device's logical block size
	// (BLKSSZGET) for block devices; a block device rejects anything
	// smaller than its logical block size.
	BlockSize int
	// Direct selects O_DIRECT: nil tries it and falls back to buffered I/O
	// when the filesystem refuses it (tmpfs) or its direct-I/O alignment is
	// coarser than BlockSize; true insists (OpenFile fails instead of
	// falling back); false never uses it.
	Direct *bool
	// ReadOnly opens without write access; writes, Unmap and WriteZeroes
	// return ErrReadOnly. A read-only open takes no exclusive hold and is
	// not refused by one, so a disk in use can still be probed.
	ReadOnly bool
	// URing sends reads, writes and Flush's fdatasync through an io_uring
	// instance owned by the File (at most 256 requests in flight; more
	// wait for a free slot) instead of one blocking system call each, so
	// that concurrent requests share system calls and do not each hold an
	// OS thread. Without O_DIRECT, where data moves through the page
	// cache, the ring gets only what would block: a read first copies
	// what the cache holds with a non-blocking preadv2 (RWF_NOWAIT) and
	// sends only the rest through the ring, and a write is a pwrite (a
	// copy into the cache; io_uring would hand each one to a kernel
	// worker thread on filesystems that cannot do it without blocking,
	// such as ext4). On a file that refuses RWF_NOWAIT (tmpfs), where
	// io_uring would hand every read to such a thread too, reads are
	// preads as well. Durability and error semantics are those of the
	// default engine. Linux 5.6 or later; where io_uring cannot be set up (no
	// kernel support, kernel.io_uring_disabled, a seccomp filter) OpenFile
	// fails with a FailedPrecondition fault rather than falling back.
	URing bool
}
