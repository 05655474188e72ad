package bdev

import (
	"fmt"
	"sync"
)

var _ Device = (*Malloc)(nil)

// Malloc is a Device held in RAM. Its contents are lost on Close; Flush is a
// no-op because there is nothing more durable to reach.
type Malloc struct {
	mu     sync.RWMutex
	buf    []byte
	size   int64 // kept apart from buf so that Size stays valid after Close
	bs     int
	closed bool
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
	return &Malloc{buf: make([]byte, size), size: size, bs: blockSize}, nil
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
	return copy(p, m.buf[off:]), nil
}

// WriteAt implements io.WriterAt. Disjoint concurrent writes are safe: the
// read lock only guards against Close.
func (m *Malloc) WriteAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	return copy(m.buf[off:], p), nil
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
	clear(m.buf[off : off+length])
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
