package nbd

import (
	"sync"

	"github.com/nexstor/nexstor/internal/iobuf"
)

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

// inFlight returns the requests admitted and not yet released.
func (b *budget) inFlight() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.count
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

// Every payload fits a buffer of package iobuf.
var _ [iobuf.MaxSize - MaxPayload]struct{}
