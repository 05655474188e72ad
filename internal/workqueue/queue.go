// Package workqueue is a keyed, rate-limited work queue in the manner of
// client-go's: a key is queued at most once, is handed to one worker at a
// time, and a key added while a worker holds it is handed out again after
// that worker is done with it. Failed keys come back after a per-key
// exponential backoff. Controllers built on it are level-triggered: a key
// says "look at this object again", never what changed.
package workqueue

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// Queue hands keys to workers. All methods are safe for concurrent use.
type Queue[K comparable] struct {
	base, max time.Duration
	now       func() time.Time

	mu         sync.Mutex
	cond       *sync.Cond
	queue      []K            // ready, in order
	dirty      map[K]struct{} // queued (or to be queued again after Done)
	processing map[K]struct{} // handed to a worker, not Done yet
	failures   map[K]int
	waiting    delayHeap[K] // added with a delay, not ready yet
	waitingAt  map[K]time.Time
	timer      *time.Timer
	shutdown   bool
}

// New returns a queue whose failed keys come back after base, 2×base, …,
// at most max.
func New[K comparable](base, max time.Duration) *Queue[K] {
	q := &Queue[K]{base: base, max: max, now: time.Now, dirty: map[K]struct{}{}, processing: map[K]struct{}{},
		failures: map[K]int{}, waitingAt: map[K]time.Time{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// Add queues k now. A key queued already is not queued twice; a key a
// worker holds is queued again when the worker calls Done.
func (q *Queue[K]) Add(k K) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addLocked(k)
}

func (q *Queue[K]) addLocked(k K) {
	if q.shutdown {
		return
	}
	if _, ok := q.dirty[k]; ok {
		return
	}
	q.dirty[k] = struct{}{}
	if _, ok := q.processing[k]; ok {
		return
	}
	q.queue = append(q.queue, k)
	q.cond.Signal()
}

// AddAfter queues k once d has passed. When k is already waiting, the
// earlier of the two times wins.
func (q *Queue[K]) AddAfter(k K, d time.Duration) {
	if d <= 0 {
		q.Add(k)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shutdown {
		return
	}
	at := q.now().Add(d)
	if cur, ok := q.waitingAt[k]; ok && !at.Before(cur) {
		return
	}
	q.waitingAt[k] = at
	heap.Push(&q.waiting, delayed[K]{key: k, at: at})
	q.armLocked()
}

// AddRateLimited queues k after its backoff, which doubles with every
// call until Forget.
func (q *Queue[K]) AddRateLimited(k K) {
	q.mu.Lock()
	n := q.failures[k]
	q.failures[k] = n + 1
	q.mu.Unlock()
	d := q.base
	for i := 0; i < n && d < q.max; i++ {
		d *= 2
	}
	d = min(d, q.max)
	q.AddAfter(k, d)
}

// Forget resets k's backoff (call it when k was processed successfully).
func (q *Queue[K]) Forget(k K) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.failures, k)
}

// Failures returns how many times k was added rate-limited since it was
// last forgotten.
func (q *Queue[K]) Failures(k K) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.failures[k]
}

// Get blocks until a key is ready, ctx ends or the queue shuts down (ok
// false). The caller must call Done(k) when it has processed k.
func (q *Queue[K]) Get(ctx context.Context) (k K, ok bool) {
	stop := context.AfterFunc(ctx, func() {
		q.mu.Lock()
		q.cond.Broadcast()
		q.mu.Unlock()
	})
	defer stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.queue) == 0 && !q.shutdown && ctx.Err() == nil {
		q.cond.Wait()
	}
	if q.shutdown || ctx.Err() != nil {
		return k, false
	}
	k = q.queue[0]
	var zero K
	q.queue[0] = zero
	q.queue = q.queue[1:]
	q.processing[k] = struct{}{}
	delete(q.dirty, k)
	return k, true
}

// Done ends the processing of k; if k was added meanwhile, it is queued
// again.
func (q *Queue[K]) Done(k K) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.processing, k)
	if _, ok := q.dirty[k]; ok && !q.shutdown {
		q.queue = append(q.queue, k)
		q.cond.Signal()
	}
}

// Len is the number of keys ready to be handed out.
func (q *Queue[K]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.queue)
}

// ShutDown makes Get return false to every worker, now and later; keys
// not handed out are dropped.
func (q *Queue[K]) ShutDown() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.shutdown = true
	if q.timer != nil {
		q.timer.Stop()
	}
	q.cond.Broadcast()
}

// armLocked sets the timer for the earliest waiting key.
func (q *Queue[K]) armLocked() {
	if len(q.waiting) == 0 || q.shutdown {
		return
	}
	d := q.waiting[0].at.Sub(q.now())
	if q.timer == nil {
		q.timer = time.AfterFunc(d, q.release)
		return
	}
	q.timer.Reset(d)
}

// release moves the keys whose time has come to the ready queue.
func (q *Queue[K]) release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	for len(q.waiting) > 0 && !q.waiting[0].at.After(now) {
		d := heap.Pop(&q.waiting).(delayed[K])
		if at, ok := q.waitingAt[d.key]; !ok || !at.Equal(d.at) {
			continue // superseded by an earlier time
		}
		delete(q.waitingAt, d.key)
		q.addLocked(d.key)
	}
	q.armLocked()
}

type delayed[K comparable] struct {
	key K
	at  time.Time
}

type delayHeap[K comparable] []delayed[K]

func (h delayHeap[K]) Len() int           { return len(h) }
func (h delayHeap[K]) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h delayHeap[K]) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *delayHeap[K]) Push(x any)        { *h = append(*h, x.(delayed[K])) }
func (h *delayHeap[K]) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
