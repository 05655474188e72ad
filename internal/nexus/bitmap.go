package nexus

import "sync/atomic"

// bitmap is a write-intent bitmap: one bit per segment. Bits are set only
// under the nexus state mutex (and persisted before the write they cover is
// issued); the atomic words let the write path test them without locking.
type bitmap struct {
	words []atomic.Uint64
	n     int64 // bits
}

func newBitmap(bits int64) *bitmap {
	return &bitmap{words: make([]atomic.Uint64, (bits+63)/64), n: bits}
}

func (b *bitmap) test(i int64) bool { return b.words[i/64].Load()&(1<<(i%64)) != 0 }

func (b *bitmap) set(i int64) { b.words[i/64].Or(1 << (i % 64)) }

// setRange sets bits [first, last], clipped to the bitmap.
func (b *bitmap) setRange(first, last int64) {
	for i := max(first, 0); i <= last && i < b.n; i++ {
		b.set(i)
	}
}

// allSet reports whether every bit in [first, last] is set.
func (b *bitmap) allSet(first, last int64) bool {
	for i := first; i <= last; i++ {
		if !b.test(i) {
			return false
		}
	}
	return true
}

func (b *bitmap) count() int64 {
	var c int64
	for i := int64(0); i < b.n; i++ {
		if b.test(i) {
			c++
		}
	}
	return c
}

func (b *bitmap) bytes() []byte {
	out := make([]byte, (b.n+7)/8)
	for i := int64(0); i < b.n; i++ {
		if b.test(i) {
			out[i/8] |= 1 << (i % 8)
		}
	}
	return out
}

func bitmapFromBytes(bits int64, p []byte) *bitmap {
	b := newBitmap(bits)
	for i := int64(0); i < bits && i/8 < int64(len(p)); i++ {
		if p[i/8]&(1<<(i%8)) != 0 {
			b.set(i)
		}
	}
	return b
}
