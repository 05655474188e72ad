package iobuf

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// largeSupported: large buffers come from huge-page regions here.
const largeSupported = true

// arenaSlots is the number of regions the arena holds.
const arenaSlots = MaxLargeBytes / regionSize

// region is one 2 MiB slot of the arena, carved into buffers of one class.
type region struct {
	mem    []byte    // regionSize bytes
	size   int       // the class's buffer size
	bufs   [][]byte  // the headers Get hands out (&bufs[i]); reset on Put
	free   []int32   // indexes of free buffers, a stack
	inUse  []bool    // to refuse a second Put of the same buffer
	idleAt time.Time // when its last buffer came back; zero while one is out
}

type largeClass struct {
	avail []*region // regions with at least one free buffer
	idle  int       // regions all of whose buffers are free
}

// The arena is one address range of MaxLargeBytes, reserved (PROT_NONE) on
// first use and never given back, whose 2 MiB slots are made usable as
// regions are needed and inaccessible again when they are returned. A
// buffer's address says whether it is a region's (a check without a lock),
// and a stale pointer into a returned region faults instead of reaching
// whatever the kernel would have mapped there next.
var large struct {
	base    atomic.Pointer[byte] // the arena's start, 2 MiB-aligned; nil until reserved
	reserve sync.Once

	mu      sync.Mutex
	retryAt time.Time           // after a slot could not be made usable: the heap until then
	slots   [arenaSlots]*region // nil: the slot is inaccessible
	classes [largeMaxShift - largeMinShift + 1]largeClass
	trim    *time.Timer // runs trimIdle; armed while a class holds more than keepFree idle regions
	armed   bool
}

// trimDelay is how long a region beyond a class's keepFree stays idle
// before it goes back to the kernel. A load whose buffers in flight swing
// (a queue depth of 8 holds from none to eight of them) would otherwise
// return a region and fault a fresh one in, zeroing 2 MiB, many times a
// second; a burst's memory still goes back within two trimDelays.
const trimDelay = time.Second

// inArena reports whether a buffer starting at addr lies in the arena.
func inArena(addr uintptr) bool {
	b := large.base.Load()
	return b != nil && addr-uintptr(unsafe.Pointer(b)) < MaxLargeBytes
}

func reserveArena() {
	raw, err := unix.MmapPtr(-1, 0, nil, MaxLargeBytes+regionSize, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		slog.Warn("iobuf: cannot reserve address space for large I/O buffers; they come from the Go heap", "err", err)
		return
	}
	// Trim to a 2 MiB-aligned range, the alignment a huge page needs.
	start := uintptr(raw)
	head := ((start + regionSize - 1) &^ (regionSize - 1)) - start
	base := unsafe.Add(raw, head)
	if head > 0 {
		unix.MunmapPtr(raw, head)
	}
	if tail := regionSize - head; tail > 0 {
		unix.MunmapPtr(unsafe.Add(base, MaxLargeBytes), tail)
	}
	large.base.Store((*byte)(base))
}

// slotMem returns the memory of slot i. The arena is never unmapped, so the
// pointer stays valid.
func slotMem(i int) []byte {
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(large.base.Load()), i*regionSize)), regionSize)
}

// getLarge returns a buffer of class c from a region, or nil when every
// slot of the arena is taken or cannot be made usable.
func getLarge(c int) *[]byte {
	large.reserve.Do(reserveArena)
	if large.base.Load() == nil {
		return nil
	}
	large.mu.Lock()
	defer large.mu.Unlock()
	if !large.retryAt.IsZero() && time.Now().Before(large.retryAt) {
		return nil
	}
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
			r.idleAt = time.Time{}
		}
	} else {
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

// putLarge takes back a buffer of the arena (inArena is true of it).
func putLarge(p *[]byte) {
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(*p)))
	off := addr - uintptr(unsafe.Pointer(large.base.Load()))
	slot := int(off / regionSize)
	large.mu.Lock()
	defer large.mu.Unlock()
	r := large.slots[slot]
	if r == nil {
		panic("iobuf: Put of a buffer whose region was returned: a buffer Put twice")
	}
	in := off % regionSize
	i := int32(in / uintptr(r.size))
	if in != uintptr(i)*uintptr(r.size) || cap(*p) != r.size {
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
		return
	}
	lc.idle++
	r.idleAt = time.Now()
	if lc.idle > keepFree && !large.armed {
		armTrim(trimDelay)
	}
}

// armTrim has trimIdle run after d. Must hold large.mu.
func armTrim(d time.Duration) {
	large.armed = true
	if large.trim == nil {
		large.trim = time.AfterFunc(d, func() { trimIdle(time.Now()) })
		return
	}
	large.trim.Reset(d)
}

// trimIdle returns to the kernel the regions, beyond keepFree per class,
// that have been idle for trimDelay at now (the most recently idle ones are
// the ones kept), and arms itself again while a class still holds more
// idle regions than that.
func trimIdle(now time.Time) {
	large.mu.Lock()
	defer large.mu.Unlock()
	large.armed = false
	var next time.Duration
	for c := range large.classes {
		lc := &large.classes[c]
		for lc.idle > keepFree {
			j := lc.oldestIdle()
			if wait := lc.avail[j].idleAt.Add(trimDelay).Sub(now); wait > 0 {
				if next == 0 || wait < next {
					next = wait
				}
				break
			}
			lc.unmapIdle(j)
		}
	}
	if next > 0 {
		armTrim(next)
	}
}

// reclaimIdle returns to the kernel the region, of any class, whose
// buffers have all been free the longest, and returns its slot; -1 when no
// region is idle. Must hold large.mu.
func reclaimIdle() int {
	var from *largeClass
	oldest := -1
	for c := range large.classes {
		lc := &large.classes[c]
		if lc.idle == 0 {
			continue
		}
		if j := lc.oldestIdle(); from == nil || lc.avail[j].idleAt.Before(from.avail[oldest].idleAt) {
			from, oldest = lc, j
		}
	}
	if from == nil {
		return -1
	}
	return from.unmapIdle(oldest)
}

// oldestIdle returns the index in avail of the region whose buffers have
// all been free the longest. The class must hold an idle region. Must hold
// large.mu.
func (lc *largeClass) oldestIdle() int {
	oldest := -1
	for j, a := range lc.avail {
		if len(a.free) == len(a.bufs) && (oldest < 0 || a.idleAt.Before(lc.avail[oldest].idleAt)) {
			oldest = j
		}
	}
	return oldest
}

// unmapIdle takes the idle region avail[j] out of the class, returns it to
// the kernel and returns its slot. Must hold large.mu.
func (lc *largeClass) unmapIdle(j int) int {
	r := lc.avail[j]
	lc.avail[j] = lc.avail[len(lc.avail)-1]
	lc.avail = lc.avail[:len(lc.avail)-1]
	lc.idle--
	slot := slotOf(r)
	unmapRegion(slot)
	return slot
}

// slotOf returns the arena slot that holds region r.
func slotOf(r *region) int {
	return int((uintptr(unsafe.Pointer(unsafe.SliceData(r.mem))) - uintptr(unsafe.Pointer(large.base.Load()))) / regionSize)
}

// mapRegion makes a free slot usable as a region of buffers of size bytes;
// nil when every slot is taken or the kernel refuses. Must hold large.mu.
func mapRegion(size int) *region {
	slot := -1
	for i, r := range large.slots {
		if r == nil {
			slot = i
			break
		}
	}
	if slot < 0 {
		// Idle regions waiting for the trim must not keep another class
		// from the arena: take the slot of the one idle the longest.
		if slot = reclaimIdle(); slot < 0 {
			return nil
		}
	}
	mem := slotMem(slot)
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		// Say so once a minute at most, and use the heap meanwhile.
		large.retryAt = time.Now().Add(time.Minute)
		slog.Warn("iobuf: cannot make a large I/O buffer region usable; large buffers come from the Go heap for a minute", "err", err)
		return nil
	}
	// Best effort: without THP the region is ordinary memory.
	_ = unix.Madvise(mem, unix.MADV_HUGEPAGE)
	n := regionSize / size
	r := &region{mem: mem, size: size, bufs: make([][]byte, n), free: make([]int32, n), inUse: make([]bool, n)}
	for i := range n {
		r.bufs[i] = mem[i*size : (i+1)*size : (i+1)*size]
		r.free[i] = int32(n - 1 - i) // hand out from the start of the region
	}
	large.slots[slot] = r
	return r
}

// unmapRegion gives the memory of a region, all of whose buffers are free,
// back to the kernel and makes its slot inaccessible. Must hold large.mu.
func unmapRegion(slot int) {
	mem := large.slots[slot].mem
	large.slots[slot] = nil
	if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
		slog.Warn("iobuf: cannot return a large I/O buffer region's memory", "err", err)
	}
	if err := unix.Mprotect(mem, unix.PROT_NONE); err != nil {
		slog.Warn("iobuf: cannot make a returned large I/O buffer region inaccessible", "err", err)
	}
}

// largeStats reports the bytes of the arena in use as regions, and the
// regions and buffers in use of buffers of size bytes, for tests.
func largeStats(size int) (mapped, regions, inUse int) {
	large.mu.Lock()
	defer large.mu.Unlock()
	for _, r := range large.slots {
		if r == nil {
			continue
		}
		mapped += regionSize
		if r.size == size {
			regions++
			inUse += len(r.bufs) - len(r.free)
		}
	}
	return mapped, regions, inUse
}
