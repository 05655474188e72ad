package bdevtest_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
)

func newMalloc(t *testing.T, size int64, bs int) *bdev.Malloc {
	t.Helper()
	m, err := bdev.NewMalloc(size, bs)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMalloc(t *testing.T) {
	for _, c := range []struct {
		size int64
		bs   int
	}{{1 << 20, 512}, {1 << 20, 4096}, {64 << 20, 512}, {3<<20 + 4096, 4096}} {
		if err := bdevtest.TestDevice(newMalloc(t, c.size, c.bs)); err != nil {
			t.Errorf("malloc size %d bs %d: %v", c.size, c.bs, err)
		}
	}
}

// wrapper forwards to a Malloc; each broken device below overrides one method.
type wrapper struct{ *bdev.Malloc }

type shortReads struct{ wrapper }

func (d shortReads) ReadAt(p []byte, off int64) (int, error) {
	if len(p) > 512 {
		p = p[:len(p)-512]
	}
	return d.Malloc.ReadAt(p, off)
}

type ignoresUnmap struct{ wrapper }

func (ignoresUnmap) Unmap(off, length int64) error { return nil }

type zeroesTooMuch struct{ wrapper }

// WriteZeroes clears one block more than asked: a neighbour is disturbed.
func (d zeroesTooMuch) WriteZeroes(off, length int64) error {
	if off+length < d.Size() {
		length += int64(d.BlockSize())
	}
	return d.Malloc.WriteZeroes(off, length)
}

// retains keeps the caller's buffer and copies it into the device on Flush.
type retains struct {
	wrapper
	mu      sync.Mutex
	last    []byte
	lastOff int64
}

func (d *retains) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.Malloc.WriteAt(p, off)
	d.mu.Lock()
	d.last, d.lastOff = p, off
	d.mu.Unlock()
	return n, err
}

func (d *retains) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last != nil {
		d.Malloc.WriteAt(d.last, d.lastOff)
	}
	return d.Malloc.Flush()
}

// noChecks forgets alignment and range checks: slicing panics or misbehaves.
type noChecks struct{ buf []byte }

func (d *noChecks) ReadAt(p []byte, off int64) (int, error)  { return copy(p, d.buf[off:]), nil }
func (d *noChecks) WriteAt(p []byte, off int64) (int, error) { return copy(d.buf[off:], p), nil }
func (d *noChecks) Flush() error                             { return nil }
func (d *noChecks) Unmap(off, length int64) error            { clear(d.buf[off : off+length]); return nil }
func (d *noChecks) WriteZeroes(off, length int64) error      { clear(d.buf[off : off+length]); return nil }
func (d *noChecks) Size() int64                              { return int64(len(d.buf)) }
func (d *noChecks) BlockSize() int                           { return 512 }
func (d *noChecks) Close() error                             { return nil }

// badGeometry reports a block size that is not a power of two.
type badGeometry struct{ wrapper }

func (badGeometry) BlockSize() int { return 1000 }

// lazyClose keeps working after Close.
type lazyClose struct{ wrapper }

func (lazyClose) Close() error { return nil }

// racyWrites loses the write of every other concurrent caller.
type racyWrites struct{ wrapper }

func (d racyWrites) WriteAt(p []byte, off int64) (int, error) {
	if off > 0 && off < 1<<20 && off%(64<<10) == 0 {
		return len(p), nil // silently dropped
	}
	return d.Malloc.WriteAt(p, off)
}

func TestCatchesBrokenDevices(t *testing.T) {
	for _, c := range []struct {
		name string
		dev  func(m *bdev.Malloc) bdev.Device
		want []string // substrings of the joined error
	}{
		{"short reads", func(m *bdev.Malloc) bdev.Device { return shortReads{wrapper{m}} }, []string{"round-trip:", "want a full read"}},
		{"ignores unmap", func(m *bdev.Malloc) bdev.Device { return ignoresUnmap{wrapper{m}} }, []string{"unmap: after unmap("}},
		{"zeroes a neighbour", func(m *bdev.Malloc) bdev.Device { return zeroesTooMuch{wrapper{m}} }, []string{"write-zeroes: after write-zeroes("}},
		{"retains buffer", func(m *bdev.Malloc) bdev.Device { return &retains{wrapper: wrapper{m}} }, []string{"retain: after mutating"}},
		{"no checks", func(*bdev.Malloc) bdev.Device { return &noChecks{buf: make([]byte, 1<<20)} }, []string{"alignment:", "range:", "panic:", "want *bdev.AlignmentError", "want *bdev.RangeError", "close:"}},
		{"bad geometry", func(m *bdev.Malloc) bdev.Device { return badGeometry{wrapper{m}} }, []string{"geometry: BlockSize 1000"}},
		{"works after close", func(m *bdev.Malloc) bdev.Device { return lazyClose{wrapper{m}} }, []string{"close: ReadAt after Close", "Flush after Close"}},
		{"drops writes", func(m *bdev.Malloc) bdev.Device { return racyWrites{wrapper: wrapper{m}} }, []string{"concurrent-writers:"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := bdevtest.TestDevice(c.dev(newMalloc(t, 1<<20, 512)))
			if err == nil {
				t.Fatal("TestDevice passed a broken device")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestTooSmall(t *testing.T) {
	err := bdevtest.TestDevice(newMalloc(t, 512<<10, 512))
	if err == nil || !strings.Contains(err.Error(), "geometry:") {
		t.Fatalf("TestDevice on a 512KiB device = %v, want a geometry error", err)
	}
	// The device is closed even when the geometry is wrong.
	m := newMalloc(t, 512<<10, 512)
	bdevtest.TestDevice(m)
	if _, err := m.ReadAt(make([]byte, 512), 0); !errors.Is(err, bdev.ErrClosed) {
		t.Fatalf("ReadAt after TestDevice = %v, want ErrClosed", err)
	}
}
