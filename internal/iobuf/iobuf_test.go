package iobuf

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
	"unsafe"
)

func addr(p *[]byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(*p))) }

func TestGetLengthsAndClasses(t *testing.T) {
	for _, n := range []int{0, 1, 512, 4096, 4097, 65536, 100 << 10, 128 << 10, 129 << 10, 1 << 20, 2 << 20, 3 << 20, MaxSize} {
		p := Get(n)
		if len(*p) != n {
			t.Errorf("Get(%d): len %d", n, len(*p))
		}
		want := max(MinSize, 1<<class(n)<<minShift)
		if cap(*p) != want {
			t.Errorf("Get(%d): cap %d, want %d", n, cap(*p), want)
		}
		if n >= LargeMin && cap(*p) <= regionSize && addr(p)%uintptr(cap(*p)) != 0 {
			t.Errorf("Get(%d): a large buffer at %#x is not aligned to its size", n, addr(p))
		}
		if n > 0 {
			(*p)[0], (*p)[n-1] = 1, 2
		}
		Put(p)
	}
}

// mustPanic reports an error unless f panics.
func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	f()
}

func TestGetRefusesBadLengths(t *testing.T) {
	for _, n := range []int{-1, MaxSize + 1} {
		mustPanic(t, fmt.Sprintf("Get(%d)", n), func() { Get(n) })
	}
}

func TestLargeBuffersAreReusedAndDisjoint(t *testing.T) {
	const n = 1 << 20
	var held []*[]byte
	for i := range 6 {
		p := Get(n)
		for j := range *p {
			(*p)[j] = byte(i)
		}
		held = append(held, p)
	}
	for i, p := range held {
		if !bytes.Equal(*p, bytes.Repeat([]byte{byte(i)}, n)) {
			t.Fatalf("buffer %d was overwritten by another", i)
		}
	}
	last := addr(held[len(held)-1])
	Put(held[len(held)-1])
	// (The heap's sync.Pool promises no reuse; regions do.)
	p := Get(n)
	held[len(held)-1] = p
	if largeSupported && addr(p) != last {
		t.Errorf("a freed large buffer was not reused: got %#x, want %#x", addr(p), last)
	}
	for _, p := range held {
		Put(p)
	}
}

func TestIdleRegionsGoBack(t *testing.T) {
	const size = 512 << 10
	var held []*[]byte
	for range 24 { // six regions
		held = append(held, Get(size))
	}
	_, regions, inUse := largeStats(size)
	if largeSupported && (regions < 6 || inUse < 24) {
		t.Fatalf("24 large buffers held: %d regions, %d buffers in use", regions, inUse)
	}
	before := time.Now() // earlier than any region went idle
	for _, p := range held {
		Put(p)
	}
	// Not at once: a load that swings would map and unmap regions.
	if _, regions, inUse = largeStats(size); largeSupported && (regions < 6 || inUse != 0) {
		t.Errorf("right after every buffer came back: %d regions mapped (want the 6 kept for %v), %d buffers in use", regions, trimDelay, inUse)
	}
	// A trim before the regions have been idle for trimDelay keeps them.
	trimIdle(before)
	if _, regions, _ = largeStats(size); largeSupported && regions < 6 {
		t.Errorf("a trim at once returned regions idle for less than %v: %d stay mapped", trimDelay, regions)
	}
	// The armed trim returns all but keepFree of them, unprompted.
	deadline := time.Now().Add(10 * trimDelay)
	for {
		_, regions, inUse = largeStats(size)
		if regions <= keepFree || time.Now().After(deadline) {
			break
		}
		time.Sleep(trimDelay / 10)
	}
	if regions > keepFree || inUse != 0 {
		t.Errorf("%v after every buffer came back %d regions stay mapped (at most %d idle ones kept), %d buffers in use", 10*trimDelay, regions, keepFree, inUse)
	}
}

func TestBoundFallsBackToHeap(t *testing.T) {
	var held []*[]byte
	in, out := 0, 0
	for range MaxLargeBytes/regionSize + 4 {
		p := Get(regionSize)
		(*p)[0], (*p)[len(*p)-1] = 7, 7
		held = append(held, p)
		if inArena(addr(p)) {
			in++
		} else {
			out++
		}
	}
	if largeSupported && (in > MaxLargeBytes/regionSize || out < 4) {
		t.Errorf("%d buffers of %d bytes: %d in the arena of %d bytes, %d from the heap", len(held), regionSize, in, MaxLargeBytes, out)
	}
	if mapped, _, _ := largeStats(regionSize); mapped > MaxLargeBytes {
		t.Errorf("%d bytes in use as regions, more than the bound %d", mapped, MaxLargeBytes)
	}
	for _, p := range held {
		Put(p)
	}
}

func TestPutMisuse(t *testing.T) {
	Put(nil)
	odd := make([]byte, 5000)
	Put(&odd) // not a class size: ignored
	if !largeSupported {
		t.Skip("no regions on this platform")
	}
	p := Get(1 << 20)
	odd = (*p)[:5000:5000] // not a class size, in the arena
	mustPanic(t, "Put of a 5000-byte slice of a large buffer", func() { Put(&odd) })
	small := (*p)[:4096:4096] // a small class's capacity, in the arena
	mustPanic(t, "Put of a small slice of a large buffer", func() { Put(&small) })
	sub := (*p)[512<<10:] // a class's capacity, but not a buffer
	mustPanic(t, "Put of a slice into a large buffer", func() { Put(&sub) })
	Put(p)
	mustPanic(t, "a second Put of a large buffer", func() { Put(p) })
}

func TestSteadyStateDoesNotAllocate(t *testing.T) {
	for _, n := range []int{4096, 1 << 20} {
		Put(Get(n))
		if a := testing.AllocsPerRun(100, func() { Put(Get(n)) }); a != 0 {
			t.Errorf("Get/Put of %d bytes: %.1f allocations", n, a)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 300 {
				n := 1 + rng.IntN(2<<20)
				p := Get(n)
				b := byte(rng.Uint32())
				(*p)[0], (*p)[n/2], (*p)[n-1] = b, b, b
				if (*p)[0] != b || (*p)[n/2] != b || (*p)[n-1] != b {
					t.Error("a buffer changed under its holder")
				}
				Put(p)
			}
		}()
	}
	wg.Wait()
}
