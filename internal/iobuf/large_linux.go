package iobuf

import (
	"log/slog"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// largeSupported: large buffers come from huge-page regions here.
const largeSupported = true

// region is one 2 MiB-aligned mapping carved into buffers of one class.
type region struct {
	mem   []byte   // regionSize bytes
	size  int      // the class's buffer size
	bufs  [][]byte // the headers Get hands out (&bufs[i]); reset on Put
	free  []int32  // indexes of free buffers, a stack
	inUse []bool   // to refuse a second Put of the same buffer
}

type largeClass struct {
	avail []*region // regions with at least one free buffer
	idle  int       // regions all of whose buffers are free
}

var large struct {
	mu      sync.Mutex
	regions map[uintptr]*region // by address
	bytes   int                 // mapped, at most MaxLargeBytes
	classes [largeMaxShift - largeMinShift + 1]largeClass
	broken  bool // mapping failed once; large buffers come from the heap
}

// getLarge returns a buffer of class c from a region, or nil when the
// regions are at their bound or cannot be mapped.
func getLarge(c int) *[]byte {
	large.mu.Lock()
	defer large.mu.Unlock()
	lc := &large.classes[c-(largeMinShift-minShift)]
	// Take from the region with the fewest free buffers, so that the others
	// drain and can be returned.
	best := -1
	for i, r := range lc.avail {
		if best < 0 || len(r.free) < len(lc.avail[best].free) {
			best = i
		}
	}
	var r *region
	if best >= 0 {
		r = lc.avail[best]
		if len(r.free) == len(r.bufs) {
			lc.idle--
		}
	} else {
		if large.broken || large.bytes+regionSize > MaxLargeBytes {
			return nil
		}
		if r = mapRegion(1 << (c + minShift)); r == nil {
			return nil
		}
		lc.avail = append(lc.avail, r)
		best = len(lc.avail) - 1
	}
	i := r.free[len(r.free)-1]
	r.free = r.free[:len(r.free)-1]
	r.inUse[i] = true
	if len(r.free) == 0 {
		lc.avail[best] = lc.avail[len(lc.avail)-1]
		lc.avail = lc.avail[:len(lc.avail)-1]
	}
	return &r.bufs[i]
}

// putLarge takes back a buffer of a region; it reports false for a buffer
// that is not one.
func putLarge(p *[]byte) bool {
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(*p)))
	base := addr &^ (regionSize - 1)
	large.mu.Lock()
	defer large.mu.Unlock()
	r := large.regions[base]
	if r == nil {
		return false
	}
	i := int32((addr - base) / uintptr(r.size))
	if addr != base+uintptr(i)*uintptr(r.size) || cap(*p) != r.size {
		panic("iobuf: Put of a slice of a buffer, not the buffer Get returned")
	}
	if !r.inUse[i] {
		panic("iobuf: buffer Put twice")
	}
	r.inUse[i] = false
	r.bufs[i] = r.mem[int(i)*r.size : int(i+1)*r.size : int(i+1)*r.size]
	r.free = append(r.free, i)
	lc := &large.classes[class(r.size)-(largeMinShift-minShift)]
	if len(r.free) == 1 {
		lc.avail = append(lc.avail, r)
	}
	if len(r.free) < len(r.bufs) {
		return true
	}
	lc.idle++
	if lc.idle <= keepFree {
		return true
	}
	lc.idle--
	for j, a := range lc.avail {
		if a == r {
			lc.avail[j] = lc.avail[len(lc.avail)-1]
			lc.avail = lc.avail[:len(lc.avail)-1]
			break
		}
	}
	unmapRegion(r)
	return true
}

// mapRegion maps a region of buffers of size bytes. Must hold large.mu.
func mapRegion(size int) *region {
	// Map twice the size and trim, to get the 2 MiB alignment a huge page
	// needs.
	raw, err := unix.MmapPtr(-1, 0, nil, 2*regionSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		large.broken = true
		slog.Warn("iobuf: cannot map memory for large I/O buffers; they come from the Go heap", "err", err)
		return nil
	}
	start := uintptr(raw)
	head := ((start + regionSize - 1) &^ (regionSize - 1)) - start
	basePtr := unsafe.Add(raw, head)
	if head > 0 {
		unix.MunmapPtr(raw, head)
	}
	if tail := regionSize - head; tail > 0 {
		unix.MunmapPtr(unsafe.Add(basePtr, regionSize), tail)
	}
	base := uintptr(basePtr)
	mem := unsafe.Slice((*byte)(basePtr), regionSize)
	// Best effort: without THP the region is ordinary memory.
	_ = unix.Madvise(mem, unix.MADV_HUGEPAGE)
	n := regionSize / size
	r := &region{mem: mem, size: size, bufs: make([][]byte, n), free: make([]int32, n), inUse: make([]bool, n)}
	for i := range n {
		r.bufs[i] = mem[i*size : (i+1)*size : (i+1)*size]
		r.free[i] = int32(n - 1 - i) // hand out from the start of the region
	}
	if large.regions == nil {
		large.regions = make(map[uintptr]*region)
	}
	large.regions[base] = r
	large.bytes += regionSize
	return r
}

// unmapRegion returns a region, all of whose buffers are free, to the
// kernel. Must hold large.mu.
func unmapRegion(r *region) {
	p := unsafe.Pointer(&r.mem[0])
	delete(large.regions, uintptr(p))
	large.bytes -= regionSize
	r.mem, r.bufs = nil, nil
	if err := unix.MunmapPtr(p, regionSize); err != nil {
		slog.Warn("iobuf: cannot unmap a large I/O buffer region", "err", err)
	}
}

// largeStats reports the bytes mapped, and the regions and buffers in use
// of buffers of size bytes, for tests.
func largeStats(size int) (mapped, regions, inUse int) {
	large.mu.Lock()
	defer large.mu.Unlock()
	for _, r := range large.regions {
		if r.size == size {
			regions++
			inUse += len(r.bufs) - len(r.free)
		}
	}
	return large.bytes, regions, inUse
}
