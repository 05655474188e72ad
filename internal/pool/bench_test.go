package pool

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
)

// TestHotPathDoesNotAllocate: reads and writes of allocated clusters do
// not allocate, through unclaimed and claimed handles (whose fencing check
// is one atomic load).
func TestHotPathDoesNotAllocate(t *testing.T) {
	dev := newMalloc(t, 8*mib)
	p := mustCreate(t, dev, CreateOptions{})
	defer p.Close()
	mustReplica(t, p, "thin", 2*mib, true)
	mustReplica(t, p, "thick", 2*mib, false)
	mustReplica(t, p, "claimed", 2*mib, true)
	buf := make([]byte, 8*kib)
	for _, name := range []string{"thin", "thick", "claimed"} {
		var h bdev.Device = mustOpen(t, p, name)
		if name == "claimed" {
			c := mustClaim(t, h.(*Replica), nexusA, 1)
			h.Close()
			h = c
		}
		if _, err := h.WriteAt(buf, 60*kib); err != nil { // allocates two clusters of the thin one
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(100, func() {
			if _, err := h.WriteAt(buf, 60*kib); err != nil {
				t.Fatal(err)
			}
			if _, err := h.ReadAt(buf, 60*kib); err != nil {
				t.Fatal(err)
			}
			if _, err := h.ReadAt(buf, mib); err != nil { // unallocated in the thin one
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("%s: %v allocations per write and reads", name, n)
		}
		_ = h.Close()
	}
}

// BenchmarkThinWrite4K measures 4 KiB random writes to a thin replica on a
// file-backed pool, to fresh clusters (each write allocates; concurrent
// writers share metadata flushes) and to allocated ones (no metadata).
func BenchmarkThinWrite4K(b *testing.B) {
	for _, mode := range []string{"fresh", "allocated"} {
		for _, jobs := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/jobs=%d", mode, jobs), func(b *testing.B) {
				benchThinWrite(b, mode == "fresh", jobs)
			})
		}
	}
}

func benchThinWrite(b *testing.B, fresh bool, jobs int) {
	path := newFile(b, 4<<30)
	f, err := bdev.OpenFile(path, bdev.FileOptions{})
	if err != nil {
		b.Fatal(err)
	}
	p := mustCreate(b, f, CreateOptions{ClusterSize: 64 * kib})
	defer p.Close()
	clusters := p.Stats().TotalClusters
	span := int64(64 * mib) // the allocated case writes within this much
	if fresh {
		span = clusters * 64 * kib
	}
	newReplica := func() *Replica {
		mustReplica(b, p, "r", span, true)
		return mustOpen(b, p, "r")
	}
	h := newReplica()
	if !fresh { // allocate everything first
		runJobs(b, jobs, span/(64*kib), func(i int64, buf []byte) int64 { return i * 64 * kib }, h)
	}
	b.SetBytes(4 * kib)
	b.ReportAllocs()
	b.ResetTimer()
	for done := int64(0); done < int64(b.N); {
		n := min(int64(b.N)-done, clusters)
		if fresh {
			// Cluster i gets one write, at a random 4 KiB block.
			runJobs(b, jobs, n, func(i int64, buf []byte) int64 { return i*64*kib + rand.Int64N(16)*4*kib }, h)
		} else {
			runJobs(b, jobs, n, func(i int64, buf []byte) int64 { return rand.Int64N(span/(4*kib)) * 4 * kib }, h)
		}
		done += n
		if fresh && done < int64(b.N) {
			b.StopTimer()
			_ = h.Close()
			if err := p.DestroyReplica("r"); err != nil {
				b.Fatal(err)
			}
			h = newReplica()
			b.StartTimer()
		}
	}
	b.StopTimer()
	_ = h.Close()
}

// runJobs issues n 4 KiB writes from jobs goroutines; write i goes to at(i).
func runJobs(b *testing.B, jobs int, n int64, at func(i int64, buf []byte) int64, h *Replica) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4*kib)
			fill(buf, 1)
			for {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				if _, err := h.WriteAt(buf, at(i, buf)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
