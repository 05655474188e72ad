// Package iobuf hands out the data buffers of block I/O requests: the
// payloads that the NBD server and the NVMe/TCP target receive from the
// network and pass to a device, the data they read from one, and the pool's
// copy-on-write copies.
// Buffers come in power-of-two size classes from 4 KiB to MaxSize and are
// reused, so that steady I/O does not allocate.
//
// Buffers of LargeMin bytes and more (up to 2 MiB) are carved, on Linux,
// out of 2 MiB-aligned regions that the kernel is asked to back with
// transparent huge pages (madvise MADV_HUGEPAGE). Direct I/O takes a
// reference on every page of the buffer it reads or writes, for every
// request: 256 of them per MiB on 4 KiB pages, about a seventh of the NBD
// server's CPU for 1 MiB writes (bench/RESULTS.md); on a 2 MiB huge page the
// kernel takes them a folio at a time. The kernel's copies into and out of
// sockets also take fewer TLB misses. Where the kernel gives no huge pages
// (THP "never", a huge page size other than 2 MiB), the regions are
// ordinary memory and nothing else changes.
//
// The regions are slots of one address range of MaxLargeBytes, reserved
// once; beyond that, large buffers come from the Go heap as the small ones
// do. A region whose buffers are all free is returned to the kernel (and
// its slot made inaccessible) once it has stayed so for trimDelay while its
// class holds more than keepFree such regions, so memory taken by a burst
// does not stay, and a load whose buffers in flight swing does not map and
// unmap regions (faulting in and zeroing 2 MiB each time) per request. A
// class that needs a region while the arena is full takes the slot of one
// that is idle. Region memory is
// outside the Go heap: the garbage collector neither counts nor reclaims
// it, so a holder must Put every buffer it took, also when it drops the
// requests in flight (a connection torn down: the NVMe/TCP target returns
// what its requests still hold once its goroutines have returned); nor
// does the race detector watch it, so races on large payloads go unseen
// under -race.
//
// Get and Put are safe for concurrent use. A buffer must not be used after
// it is Put, nor Put twice: a use of a region already returned to the kernel
// is a fatal fault of the process, not a panic that can be recovered.
package iobuf

import (
	"math/bits"
	"sync"
	"unsafe"
)

const (
	// MinSize is the smallest class: a page.
	MinSize = 1 << minShift
	// MaxSize is the largest buffer Get hands out (the NBD server's largest
	// payload).
	MaxSize = 1 << maxShift
	// LargeMin is the smallest class carved from huge-page regions.
	LargeMin = 1 << largeMinShift
	// MaxLargeBytes bounds the memory held in huge-page regions, in use or
	// free.
	MaxLargeBytes = 64 << 20

	minShift      = 12
	maxShift      = 25
	largeMinShift = 17 // 128 KiB: the largest NBD inline request, a typical kernel max_sectors
	largeMaxShift = 21 // a region's size
	regionSize    = 1 << largeMaxShift
)

// keepFree is how many regions whose buffers are all free one class keeps
// for the next burst; a region freed beyond that goes back to the kernel.
// Two, so that a load whose buffers in flight hover around a region's edge
// does not map and unmap one per request.
const keepFree = 2

// heapPools hold the buffers of every class that come from the Go heap.
var heapPools [maxShift - minShift + 1]sync.Pool

func class(n int) int {
	if n <= MinSize {
		return 0
	}
	return bits.Len(uint(n-1)) - minShift
}

// Get returns a buffer of length n, 0 <= n <= MaxSize, whose capacity is n
// rounded up to a power of two (at least MinSize). Its contents are
// unspecified. Buffers of MinSize or more start on a page boundary unless
// they come from the Go heap, whose allocator gives power-of-two sizes that
// alignment in practice but does not promise it.
func Get(n int) *[]byte {
	if n < 0 || n > MaxSize {
		panic("iobuf: Get of a length outside [0, MaxSize]")
	}
	c := class(n)
	if c >= largeMinShift-minShift && c <= largeMaxShift-minShift {
		if p := getLarge(c); p != nil {
			*p = (*p)[:n]
			return p
		}
	}
	if p, ok := heapPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minShift))
	return &b
}

// Put returns a buffer that Get handed out; the caller may have changed its
// length but not where it starts nor its capacity. Put of any other slice
// of heap memory is ignored, except that one whose capacity is a class
// size is kept for reuse. Put of anything in a large-buffer region that is
// not a whole buffer of it, or of a buffer that is already free, panics:
// the alternative is two owners of the same memory. (A second Put after
// the buffer was handed out again cannot be told from a first one.)
func Put(p *[]byte) {
	if p == nil {
		return
	}
	// Any slice of the arena goes to putLarge, which refuses what is not a
	// whole buffer: arena memory must never reach the heap's pools.
	if cap(*p) > 0 && inArena(uintptr(unsafe.Pointer(unsafe.SliceData(*p)))) {
		putLarge(p)
		return
	}
	n := cap(*p)
	if n < MinSize || n > MaxSize || n&(n-1) != 0 {
		return
	}
	heapPools[class(n)].Put(p)
}
