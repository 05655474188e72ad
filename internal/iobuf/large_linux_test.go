package iobuf

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestLargeBuffersGetHugePages checks the point of the regions: where the
// kernel offers transparent huge pages on request, a touched region is
// backed by one.
func TestLargeBuffersGetHugePages(t *testing.T) {
	setting, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || strings.Contains(string(setting), "[never]") {
		t.Skipf("transparent huge pages are off here (%q, %v)", strings.TrimSpace(string(setting)), err)
	}
	var held []*[]byte
	defer func() {
		for _, p := range held {
			Put(p)
		}
	}()
	// A fresh region each try; the kernel may fail to find a free huge
	// page once, not every time.
	for try := range 4 {
		p := Get(regionSize)
		held = append(held, p)
		for i := 0; i < len(*p); i += 4096 {
			(*p)[i] = 1
		}
		kb, err := anonHugeKB(addr(p))
		if err != nil {
			t.Fatal(err)
		}
		if kb >= regionSize>>10 {
			return
		}
		t.Logf("try %d: the region at %#x has %d KiB of huge pages", try, addr(p), kb)
	}
	t.Errorf("no large buffer region was backed by a huge page (THP setting %q)", strings.TrimSpace(string(setting)))
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
		if n, _ := fmt.Sscanf(line, "%x-%x", &lo, &hi); n == 2 && strings.Contains(line, " ") && !strings.HasSuffix(strings.Fields(line)[0], ":") {
			in = lo <= a && a < hi
			continue
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
