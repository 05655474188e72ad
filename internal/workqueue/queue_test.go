package workqueue

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func get(t *testing.T, q *Queue[string]) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	k, ok := q.Get(ctx)
	if !ok {
		t.Fatal("no key within 5s")
	}
	return k
}

func TestDeduplicatesAndOrders(t *testing.T) {
	q := New[string](time.Millisecond, time.Second)
	q.Add("a")
	q.Add("b")
	q.Add("a")
	if q.Len() != 2 {
		t.Fatalf("len %d, want 2", q.Len())
	}
	if k := get(t, q); k != "a" {
		t.Fatalf("got %s", k)
	}
	if k := get(t, q); k != "b" {
		t.Fatalf("got %s", k)
	}
}

func TestKeyAddedWhileProcessingComesBackAfterDone(t *testing.T) {
	q := New[string](time.Millisecond, time.Second)
	q.Add("a")
	k := get(t, q)
	q.Add("a") // while a worker holds it
	if q.Len() != 0 {
		t.Fatal("a key held by a worker was handed out again before Done")
	}
	q.Done(k)
	if q.Len() != 1 {
		t.Fatal("a key added while held was lost")
	}
	q.Done(get(t, q))
	if q.Len() != 0 {
		t.Fatal("a processed key came back without being added")
	}
}

func TestOneWorkerPerKey(t *testing.T) {
	q := New[int](time.Millisecond, time.Second)
	var busy [4]atomic.Int32
	var overlap atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k, ok := q.Get(ctx)
				if !ok {
					return
				}
				if busy[k].Add(1) > 1 {
					overlap.Store(true)
				}
				time.Sleep(100 * time.Microsecond)
				busy[k].Add(-1)
				q.Done(k)
			}
		}()
	}
	for i := 0; i < 2000; i++ {
		q.Add(i % 4)
	}
	time.Sleep(50 * time.Millisecond)
	cancel()
	wg.Wait()
	if overlap.Load() {
		t.Fatal("two workers held the same key")
	}
}

func TestRateLimitedBacksOffAndForgetResets(t *testing.T) {
	q := New[string](20*time.Millisecond, 80*time.Millisecond)
	now := time.Now()
	q.AddRateLimited("a")
	q.Done(get(t, q))
	if d := time.Since(now); d < 20*time.Millisecond {
		t.Fatalf("first retry after %v, before the base backoff", d)
	}
	for i := 0; i < 5; i++ {
		q.AddRateLimited("a")
	}
	if q.Failures("a") != 6 {
		t.Fatalf("failures %d", q.Failures("a"))
	}
	q.Forget("a")
	if q.Failures("a") != 0 {
		t.Fatal("Forget kept the failures")
	}
	q.Done(get(t, q)) // the waiting one still comes, once
}

func TestAddAfterEarlierWins(t *testing.T) {
	q := New[string](time.Millisecond, time.Second)
	q.AddAfter("a", time.Hour)
	q.AddAfter("a", 10*time.Millisecond)
	q.Done(get(t, q)) // within get's bound: the hour did not win
	if q.Len() != 0 {
		t.Fatal("the key came twice")
	}
}

func TestShutDownReleasesWorkers(t *testing.T) {
	q := New[string](time.Millisecond, time.Second)
	done := make(chan bool)
	go func() {
		_, ok := q.Get(context.Background())
		done <- ok
	}()
	time.Sleep(10 * time.Millisecond)
	q.ShutDown()
	if <-done {
		t.Fatal("Get returned a key after ShutDown")
	}
	q.Add("a")
	if q.Len() != 0 {
		t.Fatal("Add after ShutDown queued")
	}
}

func TestGetEndsWithContext(t *testing.T) {
	q := New[string](time.Millisecond, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, ok := q.Get(ctx); ok {
		t.Fatal("Get on an empty queue returned a key")
	}
}
