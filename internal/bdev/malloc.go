package bdev

import (
	"fmt"
	"sync"
)

var _ Device = (*Malloc)(nil)

// Malloc is a Device held in RAM. Its contents are lost on Close; Flush is a
// no-op because there is nothing more durable to reach.
//
// Overlapping concurrent accesses are allowed by the Device contract (their
// outcome is an unspecified mix of the two), but in Go they must still not be
// a data race: the buffer is guarded by striped reader/writer locks, taken in
// ascending order, so disjoint I/Os still run in parallel.
type Malloc struct {
	mu      sync.RWMutex // guards closed and buf against Close
	buf     []byte
	size    int64 // kept apart from buf so that Size stays valid after Close
	bs      int
	closed  bool
	stripes []sync.RWMutex
	shift   uint // log2 of the stripe size
}

// mallocStripes bounds the number of stripe locks of one device.
const mallocStripes = 1024

// lockRange locks the stripes that [off, off+n) touches, for writing when
// write is true, and returns the index range for unlockRange.
func (m *Malloc) lockRange(off, n int64, write bool) (first, last int) {
	if n == 0 {
		return 0, -1
	}
	first, last = int(off>>m.shift), int((off+n-1)>>m.shift)
	for i := first; i <= last; i++ {
		if write {
			m.stripes[i].Lock()
		} else {
			m.stripes[i].RLock()
		}
	}
	return first, last
}

func (m *Malloc) unlockRange(first, last int, write bool) {
	for i := first; i <= last; i++ {
		if write {
			m.stripes[i].Unlock()
		} else {
			m.stripes[i].RUnlock()
		}
	}
}

// NewMalloc returns a zero-filled RAM device of size bytes with the given
// block size (512 when blockSize is 0). size must be a positive multiple of
// the block size.
func NewMalloc(size int64, blockSize int) (*Malloc, error) {
	if blockSize == 0 {
		blockSize = 512
	}
	if blockSize < 512 || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("malloc: block size %d: must be a power of two of at least 512", blockSize)
	}
	if size <= 0 || size%int64(blockSize) != 0 {
		return nil, fmt.Errorf("malloc: size %d: must be a positive multiple of the %d-byte block size", size, blockSize)
	}
	m := &Malloc{buf: make([]byte, size), size: size, bs: blockSize, shift: 16}
	for size>>m.shift > mallocStripes {
		m.shift++
	}
	m.stripes = make([]sync.RWMutex, (size>>m.shift)+1)
	return m, nil
}

func (m *Malloc) check(op string, off, n int64) error {
	if m.closed {
		return ErrClosed
	}
	return CheckRange(op, off, n, m.size, m.bs)
}

// ReadAt implements io.ReaderAt.
func (m *Malloc) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	first, last := m.lockRange(off, int64(len(p)), false)
	n := copy(p, m.buf[off:])
	m.unlockRange(first, last, false)
	return n, nil
}

// WriteAt implements io.WriterAt.
func (m *Malloc) WriteAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	first, last := m.lockRange(off, int64(len(p)), true)
	n := copy(m.buf[off:], p)
	m.unlockRange(first, last, true)
	return n, nil
}

// Flush is a no-op on RAM.
func (m *Malloc) Flush() error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return ErrClosed
	}
	return nil
}

// Unmap zeroes the range.
func (m *Malloc) Unmap(off, length int64) error { return m.zero("unmap", off, length) }

// WriteZeroes zeroes the range.
func (m *Malloc) WriteZeroes(off, length int64) error { return m.zero("write-zeroes", off, length) }

func (m *Malloc) zero(op string, off, length int64) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.check(op, off, length); err != nil {
		return err
	}
	first, last := m.lockRange(off, length, true)
	clear(m.buf[off : off+length])
	m.unlockRange(first, last, true)
	return nil
}

// Size returns the capacity in bytes.
func (m *Malloc) Size() int64 { return m.size }

// BlockSize returns the logical block size.
func (m *Malloc) BlockSize() int { return m.bs }

// Close frees the memory. A second Close returns ErrClosed.
func (m *Malloc) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.closed = true
	m.buf = nil
	return nil
}
