package nexus

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func TestRangeLockOrdering(t *testing.T) {
	var l rangeLock
	a := l.lock(0, 10)
	got := make(chan string, 3)
	go func() {
		e := l.lock(5, 10) // overlaps a: waits
		got <- "b"
		l.unlock(e)
	}()
	// Wait until b is queued.
	for {
		l.mu.Lock()
		w := l.waiting
		l.mu.Unlock()
		if w == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	// Disjoint from everything: granted at once, even with a waiter.
	c := l.lock(20, 10)
	l.unlock(c)
	// Overlaps only the waiting b: queued behind it (FIFO), not granted
	// ahead of it.
	go func() {
		e := l.lock(14, 2)
		got <- "d"
		l.unlock(e)
	}()
	for {
		l.mu.Lock()
		w := l.waiting
		l.mu.Unlock()
		if w == 2 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case s := <-got:
		t.Fatalf("%s granted while a is held", s)
	default:
	}
	l.unlock(a)
	if first, second := <-got, <-got; first != "b" || second != "d" {
		t.Fatalf("order %s %s, want b d", first, second)
	}
}

// Many goroutines lock random ranges and check that no one else holds
// any byte of theirs.
func TestRangeLockExclusion(t *testing.T) {
	var l rangeLock
	var owner [256]int32
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := 1; g <= 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			for range 2000 {
				off := rng.Int64N(250)
				n := 1 + rng.Int64N(min(16, 256-off))
				e := l.lock(off, n)
				mu.Lock()
				for i := off; i < off+n; i++ {
					if owner[i] != 0 {
						mu.Unlock()
						t.Errorf("byte %d held by %d and %d", i, owner[i], g)
						l.unlock(e)
						return
					}
					owner[i] = int32(g)
				}
				mu.Unlock()
				mu.Lock()
				for i := off; i < off+n; i++ {
					owner[i] = 0
				}
				mu.Unlock()
				l.unlock(e)
			}
		}()
	}
	wg.Wait()
}
