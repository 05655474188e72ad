package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from size classes of powers of two, 4 KiB to
// MaxPayload, each with its own sync.Pool, so that steady-state I/O does not
// allocate.
const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 25 // 32 MiB == MaxPayload
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// getBuf returns a buffer of length n (n <= MaxPayload). Its contents are
// unspecified.
func getBuf(n int) *[]byte {
	c := bufClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

// putBuf returns a buffer obtained from getBuf.
func putBuf(p *[]byte) {
	c := bufClass(cap(*p))
	if cap(*p) != 1<<(c+minBufShift) {
		return // not one of ours
	}
	bufPools[c].Put(p)
}

// budget bounds the requests one connection has in flight, by count and by
// payload bytes, so that a client cannot make the server buffer unbounded
// data. One request larger than the byte limit is admitted alone.
type budget struct {
	mu       sync.Mutex
	cond     sync.Cond
	count    int
	bytes    int64
	maxCount int
	maxBytes int64
}

func newBudget(maxCount int, maxBytes int64) *budget {
	b := &budget{maxCount: maxCount, maxBytes: maxBytes}
	b.cond.L = &b.mu
	return b
}

// acquire blocks until a request of n payload bytes fits.
func (b *budget) acquire(n int64) {
	b.mu.Lock()
	for b.count >= b.maxCount || (b.count > 0 && b.bytes+n > b.maxBytes) {
		b.cond.Wait()
	}
	b.count++
	b.bytes += n
	b.mu.Unlock()
}

// release returns what acquire(n) took.
func (b *budget) release(n int64) {
	b.mu.Lock()
	b.count--
	b.bytes -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// wait blocks until nothing is in flight.
func (b *budget) wait() {
	b.mu.Lock()
	for b.count > 0 {
		b.cond.Wait()
	}
	b.mu.Unlock()
}
