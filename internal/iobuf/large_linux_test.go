package iobuf

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// TestLargeBuffersGetHugePages checks the point of the regions: where the
// kernel offers 2 MiB transparent huge pages on request and allocates them
// when memory is touched, a touched region is backed by one.
func TestLargeBuffersGetHugePages(t *testing.T) {
	read := func(path string) string {
		b, _ := os.ReadFile(path)
		return strings.TrimSpace(string(b))
	}
	enabled := read("/sys/kernel/mm/transparent_hugepage/enabled")
	defrag := read("/sys/kernel/mm/transparent_hugepage/defrag")
	switch {
	case enabled == "" || strings.Contains(enabled, "[never]"):
		t.Skipf("transparent huge pages are off here (enabled: %q)", enabled)
	case read("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") != fmt.Sprint(regionSize):
		t.Skip("the huge page size here is not 2 MiB")
	case strings.Contains(read("/proc/self/status"), "THP_enabled:\t0"):
		t.Skip("transparent huge pages are disabled for this process")
	case strings.Contains(defrag, "[never]") || strings.Contains(defrag, "[defer]"):
		t.Skipf("the kernel does not compact memory for a huge page at fault time here (defrag: %q)", defrag)
	}
	var held []*[]byte
	defer func() {
		for _, p := range held {
			Put(p)
		}
	}()
	trimIdle(time.Now().Add(trimDelay)) // what earlier tests left idle, down to keepFree
	// Until a fresh region comes (the class keeps up to keepFree idle ones,
	// touched already), and then a few more: the kernel may fail to find a
	// free huge page once, not every time.
	for try := range keepFree + 4 {
		p := Get(regionSize)
		held = append(held, p)
		if !inArena(addr(p)) {
			t.Fatalf("a %d-byte buffer is not in the arena", regionSize)
		}
		before, err := anonHugeKB(addr(p))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(*p); i += 4096 {
			(*p)[i] = 1
		}
		after, err := anonHugeKB(addr(p))
		if err != nil {
			t.Fatal(err)
		}
		if after-before >= regionSize>>10 {
			return
		}
		t.Logf("try %d: touching the region at %#x added %d KiB of huge pages", try, addr(p), after-before)
	}
	t.Errorf("no large buffer region was backed by a huge page (enabled %q, defrag %q)", enabled, defrag)
}

// anonHugeKB returns the AnonHugePages of the mapping that holds a.
func anonHugeKB(a uintptr) (int, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		var lo, hi uintptr
		if fields := strings.Fields(line); len(fields) > 0 && !strings.HasSuffix(fields[0], ":") {
			if n, _ := fmt.Sscanf(fields[0], "%x-%x", &lo, &hi); n == 2 {
				in = lo <= a && a < hi
				continue
			}
		}
		if in && strings.HasPrefix(line, "AnonHugePages:") {
			var kb int
			fmt.Sscanf(strings.TrimPrefix(line, "AnonHugePages:"), "%d", &kb)
			return kb, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no mapping in /proc/self/smaps holds %#x", a)
}

func TestPutOfAReturnedRegionPanics(t *testing.T) {
	const size = 256 << 10
	var held []*[]byte
	for range 8 * (keepFree + 2) { // keepFree+2 regions of 8 buffers
		held = append(held, Get(size))
	}
	for _, p := range held {
		Put(p)
	}
	trimIdle(time.Now().Add(trimDelay))
	var stale *[]byte
	large.mu.Lock()
	for _, p := range held {
		if a := addr(p); inArena(a) && large.slots[(a-uintptr(unsafe.Pointer(large.base.Load())))/regionSize] == nil {
			stale = p
			break
		}
	}
	large.mu.Unlock()
	if stale == nil {
		t.Fatalf("no region was returned after %d regions' buffers came back (at most %d idle ones are kept)", keepFree+2, keepFree)
	}
	mustPanic(t, "a second Put of a buffer whose region was returned", func() { Put(stale) })
}

// TestIdleRegionsDoNotStarveAnotherClass: regions waiting for the trim
// give their slots to a class that needs one, rather than send it to the
// heap.
func TestIdleRegionsDoNotStarveAnotherClass(t *testing.T) {
	var held []*[]byte
	for range arenaSlots { // every slot, one 2 MiB buffer each
		held = append(held, Get(regionSize))
	}
	for _, p := range held {
		Put(p)
	}
	if mapped, _, _ := largeStats(regionSize); mapped < MaxLargeBytes {
		t.Fatalf("%d MiB of regions mapped after %d 2 MiB buffers came back, want the whole arena until the trim", mapped>>20, arenaSlots)
	}
	p := Get(LargeMin)
	defer Put(p)
	if !inArena(addr(p)) {
		t.Errorf("a %d-byte buffer came from the heap while the arena held only idle regions", LargeMin)
	}
}
