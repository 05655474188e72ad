package bdev

import (
	"bytes"
	"sync"
	"testing"
)

// TestMallocOverlappingIO races reads and writes over the same blocks, as
// NBD and NVMe hosts may: it must not be a data race (go test -race), and a
// read that lies within one lock stripe sees one write whole, never a mix.
func TestMallocOverlappingIO(t *testing.T) {
	m, err := NewMalloc(1<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const off, n = 8192, 4096
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(v byte) {
			defer wg.Done()
			buf := bytes.Repeat([]byte{v}, n)
			for i := 0; i < 200; i++ {
				if _, err := m.WriteAt(buf, off); err != nil {
					t.Error(err)
					return
				}
			}
		}(byte(w + 1))
	}
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, n)
			for i := 0; i < 200; i++ {
				if _, err := m.ReadAt(buf, off); err != nil {
					t.Error(err)
					return
				}
				if c := bytes.Count(buf, buf[:1]); c != n {
					t.Errorf("read saw a mix of writes: %d of %d bytes are %d", c, n, buf[0])
					return
				}
			}
		}()
	}
	wg.Wait()
}
