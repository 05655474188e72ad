package main

import (
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

func newRunner(t *testing.T, dev bdev.Device, st *state) *runner {
	t.Helper()
	return &runner{dev: dev, st: st, busy: make([]bool, len(st.Acked)), cluster: 64}
}

// load runs the mixed load on r for a while.
func load(r *runner, d time.Duration) {
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.worker(rand.New(rand.NewPCG(1, uint64(w))))
		}()
	}
	time.Sleep(d)
	r.stop.Store(true)
	wg.Wait()
}

// TestVerifyAcceptsAckedAndInFlight: after a load, the state saved and
// loaded again verifies; a block whose in-flight write landed is accepted
// and becomes acknowledged; one whose write did not land keeps the old
// data and verifies too; a block that holds neither, or lost an
// acknowledged write, is a mismatch.
func TestVerifyAcceptsAckedAndInFlight(t *testing.T) {
	const blocks = 512
	dev, err := bdev.NewMalloc(blocks*blockSize, 512)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "state")
	st, err := loadState(path, 7, blocks)
	if err != nil {
		t.Fatal(err)
	}
	r := newRunner(t, dev, st)
	load(r, 50*time.Millisecond)
	if m := r.bad.Load(); m != nil {
		t.Fatalf("mismatch during the load: %s", m.msg)
	}
	if r.writes.Load() == 0 || r.reads.Load() == 0 {
		t.Fatalf("no load: %d writes, %d reads", r.writes.Load(), r.reads.Load())
	}
	// Two writes "in flight at the crash": block 1's landed, block 2's not.
	b := make([]byte, blockSize)
	gen := st.NextGen
	st.NextGen += 2
	fill(b, 1, gen, st.Seed)
	if _, err := dev.WriteAt(b, 1*blockSize); err != nil {
		t.Fatal(err)
	}
	st.Pending[1], st.Pending[2] = int64(gen), int64(gen+1)
	if err := st.save(path); err != nil {
		t.Fatal(err)
	}

	st, err = loadState(path, 7, blocks)
	if err != nil {
		t.Fatal(err)
	}
	r = newRunner(t, dev, st)
	r.verifyAll(4)
	if m := r.bad.Load(); m != nil {
		t.Fatalf("a clean state does not verify: %s", m.msg)
	}
	if st.Acked[1] != gen || st.Pending[1] != noPending || st.Pending[2] != noPending || r.verified.Load() != blocks {
		t.Fatalf("after verify: acked[1]=%d pending[1]=%d pending[2]=%d verified=%d; want %d, none, none, %d",
			st.Acked[1], st.Pending[1], st.Pending[2], r.verified.Load(), gen, blocks)
	}

	// Block 3 loses its last acknowledged write (older data comes back).
	st.Acked[3] = st.NextGen
	st.NextGen++
	r = newRunner(t, dev, st)
	r.verifyAll(4)
	if r.bad.Load() == nil {
		t.Fatal("a lost acknowledged write verified")
	}
	// Block 4 holds data nobody wrote.
	st.Acked[3] = 0
	fill(b, 3, 0, st.Seed)
	dev.WriteAt(b, 3*blockSize)
	copy(b, "garbage")
	dev.WriteAt(b, 4*blockSize)
	st.Pending[4] = int64(st.NextGen)
	r = newRunner(t, dev, st)
	r.verifyAll(4)
	if r.bad.Load() == nil {
		t.Fatal("a block holding neither the acknowledged nor the in-flight write verified")
	}
}
