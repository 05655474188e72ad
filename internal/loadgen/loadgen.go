// Package loadgen drives a bdev.Device with a synthetic workload and measures
// it: random or sequential access, reads, writes or a mix, a block size and a
// queue depth (that many goroutines, each with one I/O outstanding), for a
// duration. It reports IOPS, bandwidth and latency percentiles, and can
// verify every read against what the run wrote. It is the engine of
// `nexctl bench`.
package loadgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

// Pattern is the access pattern.
type Pattern int

const (
	// Random picks every offset uniformly in the region.
	Random Pattern = iota
	// Sequential walks the region in order, wrapping at its end.
	Sequential
)

func (p Pattern) String() string {
	if p == Sequential {
		return "sequential"
	}
	return "random"
}

// Mix is the read/write mix.
type Mix int

const (
	// Read issues only reads.
	Read Mix = iota
	// Write issues only writes.
	Write
	// Mixed issues reads with probability ReadPercent, writes otherwise.
	Mixed
)

func (m Mix) String() string {
	switch m {
	case Write:
		return "write"
	case Mixed:
		return "mixed"
	}
	return "read"
}

// Spec describes a workload.
type Spec struct {
	Pattern Pattern
	Mix     Mix
	// ReadPercent is the share of reads for Mixed (0..100); default 70.
	ReadPercent int
	// BlockSize is the size of each I/O in bytes, a multiple of the
	// device's block size; default 4096.
	BlockSize int
	// QueueDepth is the number of I/Os in flight; default 1.
	QueueDepth int
	// Duration is how long to run; default 10s. The run also stops when
	// ctx is done.
	Duration time.Duration
	// Verify makes writes carry a self-describing pattern and checks every
	// read of a block this run wrote. Expectations are exact because each
	// goroutine always owns a disjoint stripe of the region (which also
	// keeps concurrent writes from overlapping).
	Verify bool
	// Offset and Size bound the region used; Size 0 means to the end of
	// the device.
	Offset, Size int64
	// Seed makes offsets and data reproducible.
	Seed uint64
}

// Latency holds latency percentiles. Values come from a log-linear
// histogram with 32 sub-buckets per power of two (within about 3%).
type Latency struct {
	Min, Mean, P50, P90, P99, P999, Max time.Duration
}

// Result is what a run measured.
type Result struct {
	Ops, Reads, Writes int64
	Bytes              int64
	Elapsed            time.Duration
	IOPS               float64 // operations per second
	Bandwidth          float64 // bytes per second
	Latency            Latency
	// Errors counts failed I/Os and verification mismatches; FirstError
	// is the first of them.
	Errors     int64
	FirstError error
}

// ErrVerify reports a read whose data differs from what the run wrote.
var ErrVerify = errors.New("loadgen: read data differs from what was written")

func (s *Spec) defaults(dev bdev.Device) error {
	if s.BlockSize == 0 {
		s.BlockSize = 4096
	}
	if s.QueueDepth == 0 {
		s.QueueDepth = 1
	}
	if s.Duration == 0 {
		s.Duration = 10 * time.Second
	}
	if s.Mix == Mixed && s.ReadPercent == 0 {
		s.ReadPercent = 70
	}
	bs := dev.BlockSize()
	switch {
	case s.BlockSize < bs || s.BlockSize%bs != 0:
		return fmt.Errorf("loadgen: block size %d: use a multiple of the device's %d-byte blocks", s.BlockSize, bs)
	case s.QueueDepth < 1 || s.QueueDepth > 4096:
		return fmt.Errorf("loadgen: queue depth %d: use 1 to 4096", s.QueueDepth)
	case s.ReadPercent < 0 || s.ReadPercent > 100:
		return fmt.Errorf("loadgen: read percentage %d: use 0 to 100", s.ReadPercent)
	case s.Duration < 0:
		return fmt.Errorf("loadgen: negative duration %v", s.Duration)
	case s.Offset < 0 || s.Offset%int64(bs) != 0 || s.Offset > dev.Size():
		return fmt.Errorf("loadgen: offset %d: use a block-aligned offset inside the %d-byte device", s.Offset, dev.Size())
	}
	if s.Size == 0 {
		s.Size = dev.Size() - s.Offset
	}
	if s.Size < 0 || s.Offset+s.Size > dev.Size() {
		return fmt.Errorf("loadgen: region %d+%d beyond the %d-byte device", s.Offset, s.Size, dev.Size())
	}
	if s.Size/int64(s.BlockSize) < int64(s.QueueDepth) {
		return fmt.Errorf("loadgen: region of %d bytes holds fewer than %d blocks of %d bytes: lower the queue depth or block size", s.Size, s.QueueDepth, s.BlockSize)
	}
	return nil
}

// Run executes the workload on dev and reports what it measured. It returns
// an error only for an invalid Spec; I/O failures are counted in Result.
func Run(ctx context.Context, dev bdev.Device, spec Spec) (Result, error) {
	if err := spec.defaults(dev); err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Duration)
	defer cancel()

	blocks := spec.Size / int64(spec.BlockSize)
	stripe := blocks / int64(spec.QueueDepth)
	workers := make([]*worker, spec.QueueDepth)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range workers {
		w := &worker{
			spec:  &spec,
			dev:   dev,
			rng:   rand.New(rand.NewPCG(spec.Seed, uint64(i)+1)),
			buf:   make([]byte, spec.BlockSize),
			first: spec.Offset + int64(i)*stripe*int64(spec.BlockSize),
			n:     stripe,
			id:    uint64(i),
		}
		if spec.Verify {
			w.gen = make([]uint32, stripe)
		}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	var r Result
	var h histogram
	for _, w := range workers {
		r.Reads += w.reads
		r.Writes += w.writes
		r.Errors += w.errors
		if r.FirstError == nil {
			r.FirstError = w.firstErr
		}
		h.merge(&w.hist)
	}
	r.Ops = r.Reads + r.Writes
	r.Bytes = r.Ops * int64(spec.BlockSize)
	r.Elapsed = elapsed
	if s := elapsed.Seconds(); s > 0 {
		r.IOPS = float64(r.Ops) / s
		r.Bandwidth = float64(r.Bytes) / s
	}
	r.Latency = h.latency()
	return r, nil
}

type worker struct {
	spec     *Spec
	dev      bdev.Device
	rng      *rand.Rand
	buf      []byte
	first    int64 // byte offset of the worker's first block
	n        int64 // blocks the worker may touch
	next     int64 // sequential cursor (block index)
	id       uint64
	gen      []uint32 // per block: generation last written (verify)
	reads    int64
	writes   int64
	errors   int64
	firstErr error
	hist     histogram
}

func (w *worker) run(ctx context.Context) {
	bs := int64(w.spec.BlockSize)
	for ctx.Err() == nil {
		var blk int64
		if w.spec.Pattern == Sequential {
			blk = w.next % w.n
			w.next++
		} else {
			blk = w.rng.Int64N(w.n)
		}
		off := w.first + blk*bs
		write := false
		switch w.spec.Mix {
		case Write:
			write = true
		case Mixed:
			write = w.rng.IntN(100) >= w.spec.ReadPercent
		}
		var err error
		t0 := time.Now()
		if write {
			if w.spec.Verify {
				w.gen[blk]++
				fillPattern(w.buf, off, w.gen[blk], w.spec.Seed)
			}
			_, err = w.dev.WriteAt(w.buf, off)
			w.writes++
		} else {
			_, err = w.dev.ReadAt(w.buf, off)
			w.reads++
		}
		w.hist.add(time.Since(t0))
		if err == nil && !write && w.spec.Verify && w.gen[blk] != 0 && !checkPattern(w.buf, off, w.gen[blk], w.spec.Seed) {
			err = fmt.Errorf("%w: at offset %d (generation %d)", ErrVerify, off, w.gen[blk])
		}
		if err != nil {
			if ctx.Err() != nil {
				// Interrupted by the end of the run: not the device's fault.
				if write {
					w.writes--
				} else {
					w.reads--
				}
				return
			}
			w.errors++
			if w.firstErr == nil {
				w.firstErr = err
			}
			if w.spec.Verify && write {
				// The block's content is unknown now: stop checking it.
				w.gen[blk] = 0
			}
		}
	}
}

// fillPattern writes a block whose every 8-byte word depends on its offset,
// generation, seed and position, so misplaced, stale and torn data differ.
func fillPattern(b []byte, off int64, gen uint32, seed uint64) {
	x := uint64(off)*0x9E3779B97F4A7C15 ^ uint64(gen)<<32 ^ seed
	for i := 0; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x+uint64(i))
	}
}

func checkPattern(b []byte, off int64, gen uint32, seed uint64) bool {
	x := uint64(off)*0x9E3779B97F4A7C15 ^ uint64(gen)<<32 ^ seed
	for i := 0; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		if binary.LittleEndian.Uint64(b[i:]) != x+uint64(i) {
			return false
		}
	}
	return true
}

// histogram is a log-linear latency histogram in nanoseconds: exact below
// 32 ns, then 32 buckets per power of two.
type histogram struct {
	counts   [60 * 32]int64
	n        int64
	sum      int64
	min, max int64
}

const subBits = 5

func bucketOf(v int64) int {
	if v < 1<<subBits {
		return int(max(v, 0))
	}
	msb := bits.Len64(uint64(v)) - 1
	shift := msb - subBits
	top := v >> shift // in [32, 64)
	return (shift+1)<<subBits + int(top-1<<subBits)
}

// bucketUpper returns the largest value that falls into bucket i.
func bucketUpper(i int) int64 {
	if i < 1<<subBits {
		return int64(i)
	}
	shift := i>>subBits - 1
	top := int64(i&(1<<subBits-1)) + 1<<subBits
	return (top+1)<<shift - 1
}

func (h *histogram) add(d time.Duration) {
	v := int64(d)
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += v
}

func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(bucketUpper(i), h.max))
		}
	}
	return time.Duration(h.max)
}

func (h *histogram) latency() Latency {
	if h.n == 0 {
		return Latency{}
	}
	return Latency{
		Min:  time.Duration(h.min),
		Mean: time.Duration(h.sum / h.n),
		P50:  h.quantile(0.50),
		P90:  h.quantile(0.90),
		P99:  h.quantile(0.99),
		P999: h.quantile(0.999),
		Max:  time.Duration(h.max),
	}
}
