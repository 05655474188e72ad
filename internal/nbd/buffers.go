package nbd

import (
	"sync"
	"sync/atomic"

	"github.com/nexstor/nexstor/internal/iobuf"
)

// budget bounds the requests one connection has in flight, by count and by
// payload bytes, so that a client cannot make the server buffer unbounded
// data. One request larger than the byte limit is admitted alone.
type budget struct {
	mu   sync.Mutex
	cond sync.Cond
	// count changes only under mu; it is atomic so that inFlight, asked
	// once per reply, takes no lock.
	count    atomic.Int32
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
func (b *budget) inFlight() int { return int(b.count.Load()) }

// acquire blocks until a request of n payload bytes fits.
func (b *budget) acquire(n int64) {
	b.mu.Lock()
	for n0 := b.count.Load(); int(n0) >= b.maxCount || (n0 > 0 && b.bytes+n > b.maxBytes); n0 = b.count.Load() {
		b.cond.Wait()
	}
	b.count.Add(1)
	b.bytes += n
	b.mu.Unlock()
}

// release returns what acquire(n) took.
func (b *budget) release(n int64) {
	b.mu.Lock()
	b.count.Add(-1)
	b.bytes -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// wait blocks until nothing is in flight.
func (b *budget) wait() {
	b.mu.Lock()
	for b.count.Load() > 0 {
		b.cond.Wait()
	}
	b.mu.Unlock()
}

// Every payload fits a buffer of package iobuf.
var _ [iobuf.MaxSize - MaxPayload]struct{}
