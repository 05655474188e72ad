package nexus

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// rangeLock serializes overlapping byte ranges while letting disjoint ones
// proceed in parallel. Requests are granted in arrival order among those that
// overlap, so a large rebuild segment is never starved by a stream of small
// writes, and two overlapping writes reach every child in the same order,
// which is what keeps mirrors identical.
//
// The device is cut into regions (2^shift bytes) dealt round-robin to
// rlShards shards, each with its own mutex and its own FIFO of the entries
// (held or waiting) that touch one of its regions. Every I/O takes a lock,
// so one mutex and one list for the whole device made the lock the point
// where every I/O queued behind every other: with 32 writes in flight it
// took about half of a 1-child RAM mirror's CPU.
//
// An entry goes into the FIFO of every shard it touches, with all of those
// shards' mutexes held (taken in ascending order, so two entries never
// deadlock), so any two entries that share a shard are in the same order in
// every FIFO they share. An entry counts, as it is queued, its blockers: the
// (shard, earlier overlapping entry) pairs it finds; removing an entry counts
// down, in each of its shards, the later entries it overlaps, and the one
// that reaches zero is granted. Both counts are over the same pairs, so an
// entry is granted exactly when no earlier entry overlapping it is left.
//
// Entries are pooled and each carries its own reusable wake channel, so a
// lock/unlock pair does not allocate once the FIFOs have grown.
type rangeLock struct {
	// shift is log2 of the region size; 0 means rlShift. Set before first
	// use (tests set small regions to make ranges span shards).
	shift  uint8
	shards [rlShards]rlShard
	pool   sync.Pool
}

const (
	// rlShards is the number of shards; a uint64 mask names a set of them.
	rlShards = 64
	// rlShift makes regions 256 KiB: 4 KiB random writes spread over every
	// shard once the device is 16 MiB, while a 1 MiB rebuild segment or
	// write touches 4 or 5 shards.
	rlShift = 18
)

type rlShard struct {
	mu sync.Mutex
	q  []*rlEntry // FIFO: arrival order
	_  [64 - 32]byte
}

type rlEntry struct {
	off, end int64
	write    bool   // a write to the children (see writes)
	mask     uint64 // the shards this entry is queued in
	// blockers is how many (shard, earlier overlapping entry) pairs still
	// keep the entry waiting; it is granted at zero.
	blockers atomic.Int32
	wake     chan struct{}
}

func (e *rlEntry) overlaps(o *rlEntry) bool { return e.off < o.end && o.off < e.end }

// lock blocks until [off, off+length) is held by the caller and returns the
// handle to pass to unlock. length must be positive.
func (l *rangeLock) lock(off, length int64) *rlEntry { return l.acquire(off, length, false) }

// lockWrite is lock for a write that reaches children: writes lists its
// range until it is unlocked.
func (l *rangeLock) lockWrite(off, length int64) *rlEntry { return l.acquire(off, length, true) }

// shardMask returns the set of shards that [off, end) touches.
func (l *rangeLock) shardMask(off, end int64) uint64 {
	shift := l.shift
	if shift == 0 {
		shift = rlShift
	}
	first, last := uint64(off)>>shift, uint64(end-1)>>shift
	if last-first >= rlShards-1 {
		return ^uint64(0)
	}
	a, b := first%rlShards, last%rlShards
	if a <= b {
		return (^uint64(0) >> (rlShards - 1 - (b - a))) << a
	}
	// Wraps past the last shard: a..63 and 0..b.
	return ^uint64(0)<<a | ^uint64(0)>>(rlShards-1-b)
}

func (l *rangeLock) lockShards(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		l.shards[bits.TrailingZeros64(m)].mu.Lock()
	}
}

func (l *rangeLock) unlockShards(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		l.shards[bits.TrailingZeros64(m)].mu.Unlock()
	}
}

func (l *rangeLock) acquire(off, length int64, write bool) *rlEntry {
	e, _ := l.pool.Get().(*rlEntry)
	if e == nil {
		e = &rlEntry{wake: make(chan struct{}, 1)}
	}
	e.off, e.end, e.write = off, off+length, write
	e.mask = l.shardMask(e.off, e.end)
	l.lockShards(e.mask)
	var blockers int32
	for m := e.mask; m != 0; m &= m - 1 {
		s := &l.shards[bits.TrailingZeros64(m)]
		for _, x := range s.q {
			if x.overlaps(e) {
				blockers++
			}
		}
		s.q = append(s.q, e)
	}
	// Set before any shard is let go: only holders of one of them can
	// count it down.
	e.blockers.Store(blockers)
	l.unlockShards(e.mask)
	if blockers > 0 {
		<-e.wake
	}
	return e
}

// unlock releases a range taken by lock and grants the waiters it was the
// last obstacle for.
func (l *rangeLock) unlock(e *rlEntry) {
	l.lockShards(e.mask)
	for m := e.mask; m != 0; m &= m - 1 {
		s := &l.shards[bits.TrailingZeros64(m)]
		i := 0
		for s.q[i] != e {
			i++
		}
		copy(s.q[i:], s.q[i+1:])
		s.q[len(s.q)-1] = nil
		s.q = s.q[:len(s.q)-1]
		// Only later entries can have counted e (it was queued before
		// them), and only those overlapping it did.
		for _, x := range s.q[i:] {
			if x.overlaps(e) && x.blockers.Add(-1) == 0 {
				x.wake <- struct{}{}
			}
		}
	}
	l.unlockShards(e.mask)
	l.pool.Put(e)
}

// writes calls f once with the range of every write holding or awaiting a
// lock: the writes that may be in flight to a child now. It takes the shards
// one at a time, so a write queued meanwhile may or may not be seen: it is
// seen if it was queued before its first shard was visited. f must not block
// or take the lock.
func (l *rangeLock) writes(f func(off, end int64)) {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for _, x := range s.q {
			// Reported in its first shard only.
			if x.write && bits.TrailingZeros64(x.mask) == i {
				f(x.off, x.end)
			}
		}
		s.mu.Unlock()
	}
}
