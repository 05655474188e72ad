package nexus

import "sync"

// rangeLock serializes overlapping byte ranges while letting disjoint ones
// proceed in parallel. Requests are granted in arrival order among those that
// overlap (a FIFO of held and waiting entries), so a large rebuild segment is
// never starved by a stream of small writes, and two overlapping writes reach
// every child in the same order, which is what keeps mirrors identical.
//
// Entries are pooled and each carries its own reusable wake channel, so a
// lock/unlock pair does not allocate.
type rangeLock struct {
	mu      sync.Mutex
	head    *rlEntry
	tail    *rlEntry
	waiting int
	pool    sync.Pool
}

type rlEntry struct {
	off, end   int64
	granted    bool
	write      bool // a write to the children (see writes)
	prev, next *rlEntry
	wake       chan struct{}
}

func (e *rlEntry) overlaps(o *rlEntry) bool { return e.off < o.end && o.off < e.end }

// lock blocks until [off, off+length) is held by the caller and returns the
// handle to pass to unlock.
func (l *rangeLock) lock(off, length int64) *rlEntry { return l.acquire(off, length, false) }

// lockWrite is lock for a write that reaches children: writes lists its
// range until it is unlocked.
func (l *rangeLock) lockWrite(off, length int64) *rlEntry { return l.acquire(off, length, true) }

// writes calls f with the range of every write holding or awaiting a lock:
// the writes that may be in flight to a child now. f must not block or
// take the lock.
func (l *rangeLock) writes(f func(off, end int64)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for x := l.head; x != nil; x = x.next {
		if x.write {
			f(x.off, x.end)
		}
	}
}

func (l *rangeLock) acquire(off, length int64, write bool) *rlEntry {
	e, _ := l.pool.Get().(*rlEntry)
	if e == nil {
		e = &rlEntry{wake: make(chan struct{}, 1)}
	}
	e.off, e.end, e.write = off, off+length, write
	l.mu.Lock()
	e.granted = true
	for x := l.head; x != nil; x = x.next {
		if x.overlaps(e) {
			e.granted = false
			break
		}
	}
	e.prev, e.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
	if !e.granted {
		l.waiting++
	}
	granted := e.granted
	l.mu.Unlock()
	if !granted {
		<-e.wake
	}
	return e
}

// unlock releases a range taken by lock and wakes the waiters it was the
// last obstacle for.
func (l *rangeLock) unlock(e *rlEntry) {
	l.mu.Lock()
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	// Only a waiter that overlapped e can have been unblocked by its
	// removal; with no waiters at all (the common case) nothing is scanned.
	if l.waiting > 0 {
		for x := l.head; x != nil; x = x.next {
			if x.granted || !x.overlaps(e) {
				continue
			}
			blocked := false
			for y := l.head; y != x; y = y.next {
				if y.overlaps(x) {
					blocked = true
					break
				}
			}
			if !blocked {
				x.granted = true
				l.waiting--
				x.wake <- struct{}{}
			}
		}
	}
	l.mu.Unlock()
	e.prev, e.next = nil, nil
	l.pool.Put(e)
}
