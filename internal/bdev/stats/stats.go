// Package stats wraps a bdev.Device and counts what passes through it:
// operations, bytes, errors and latency histograms per operation. Counting
// is lock-free (atomics only) and allocates nothing per I/O, so the wrapper
// can stay on every production device.
package stats

import (
	"context"
	"math"
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

// NumBuckets is the number of latency histogram buckets.
const NumBuckets = 64

type opKind int

const (
	opRead opKind = iota
	opWrite
	opFlush
	opUnmap
	opWriteZeroes
	numOps
)

type counters struct {
	count   atomic.Uint64
	errors  atomic.Uint64
	bytes   atomic.Uint64
	totalNs atomic.Uint64
	hist    [NumBuckets]atomic.Uint64
}

// bucket returns the histogram bucket of a latency: 0 for 0ns, else i such
// that 2^(i-1) <= ns < 2^i.
func bucket(ns int64) int {
	if ns <= 0 {
		return 0
	}
	return min(bits.Len64(uint64(ns)), NumBuckets-1)
}

func (c *counters) record(start time.Time, n int64, err error) {
	ns := time.Since(start).Nanoseconds()
	c.count.Add(1)
	if err != nil {
		c.errors.Add(1)
	} else {
		c.bytes.Add(uint64(n))
	}
	c.totalNs.Add(uint64(max(ns, 0)))
	c.hist[bucket(ns)].Add(1)
}

func (c *counters) snapshot() OpStats {
	s := OpStats{
		Count:        c.count.Load(),
		Errors:       c.errors.Load(),
		Bytes:        c.bytes.Load(),
		TotalLatency: time.Duration(c.totalNs.Load()),
	}
	for i := range c.hist {
		s.Latency.Buckets[i] = c.hist[i].Load()
	}
	return s
}

var _ bdev.Device = (*Device)(nil)

// Device is a bdev.Device that forwards every call to an inner device and
// records it. It adds no behaviour: errors, including misuse errors, come
// back from the inner device unchanged. Safe for concurrent use.
type Device struct {
	inner bdev.Device
	// ops is shared with the handles of claims made through Claimable, so
	// that a claimed device's I/O counts where its unclaimed I/O does.
	ops *[numOps]counters
}

// New wraps inner.
func New(inner bdev.Device) *Device { return &Device{inner: inner, ops: new([numOps]counters)} }

// Claimable returns d as a device that also takes claims when its inner
// device is a bdev.Claimer (a pool replica), and d itself otherwise. Claims
// go to the inner device; I/O through the Claimed handles they return
// counts into d's counters, so that a share's statistics include the I/O
// of the nexus that claimed it.
func (d *Device) Claimable() bdev.Device {
	cl, ok := d.inner.(bdev.Claimer)
	if !ok {
		return d
	}
	return &claimable{Device: d, cl: cl}
}

type claimable struct {
	*Device
	cl bdev.Claimer
}

// ClaimState implements bdev.Claimer.
func (c *claimable) ClaimState(ctx context.Context) (bdev.ClaimState, error) {
	return c.cl.ClaimState(ctx)
}

// Claim implements bdev.Claimer.
func (c *claimable) Claim(ctx context.Context, cl bdev.Claim) (bdev.Claimed, error) {
	h, err := c.cl.Claim(ctx, cl)
	if err != nil {
		return nil, err
	}
	return &claimed{Device: &Device{inner: h, ops: c.ops}, h: h}, nil
}

// claimed counts the I/O of a Claimed handle into its share's counters.
type claimed struct {
	*Device
	h bdev.Claimed
}

func (c *claimed) Raise(ctx context.Context, epoch uint64) error { return c.h.Raise(ctx, epoch) }
func (c *claimed) Release(ctx context.Context) error             { return c.h.Release(ctx) }

// Inner returns the wrapped device.
func (d *Device) Inner() bdev.Device { return d.inner }

// ReadAt implements bdev.Device.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	start := time.Now()
	n, err := d.inner.ReadAt(p, off)
	d.ops[opRead].record(start, int64(n), err)
	return n, err
}

// WriteAt implements bdev.Device.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	start := time.Now()
	n, err := d.inner.WriteAt(p, off)
	d.ops[opWrite].record(start, int64(n), err)
	return n, err
}

// Flush implements bdev.Device.
func (d *Device) Flush() error {
	start := time.Now()
	err := d.inner.Flush()
	d.ops[opFlush].record(start, 0, err)
	return err
}

// Unmap implements bdev.Device; the bytes it counts are the bytes unmapped.
func (d *Device) Unmap(off, length int64) error {
	start := time.Now()
	err := d.inner.Unmap(off, length)
	d.ops[opUnmap].record(start, length, err)
	return err
}

// WriteZeroes implements bdev.Device; the bytes it counts are the bytes
// zeroed.
func (d *Device) WriteZeroes(off, length int64) error {
	start := time.Now()
	err := d.inner.WriteZeroes(off, length)
	d.ops[opWriteZeroes].record(start, length, err)
	return err
}

// Size returns the inner device's size.
func (d *Device) Size() int64 { return d.inner.Size() }

// BlockSize returns the inner device's block size.
func (d *Device) BlockSize() int { return d.inner.BlockSize() }

// Close closes the inner device. Counters stay readable.
func (d *Device) Close() error { return d.inner.Close() }

// Snapshot returns the counters so far. Each counter is read atomically but
// the set is not one point in time: operations completing during the call
// may be partly included. Counters never decrease, so Sub of two snapshots
// gives the activity in between.
func (d *Device) Snapshot() Snapshot {
	return Snapshot{
		Read:        d.ops[opRead].snapshot(),
		Write:       d.ops[opWrite].snapshot(),
		Flush:       d.ops[opFlush].snapshot(),
		Unmap:       d.ops[opUnmap].snapshot(),
		WriteZeroes: d.ops[opWriteZeroes].snapshot(),
	}
}

// Snapshot holds the counters of each operation.
type Snapshot struct {
	Read, Write, Flush, Unmap, WriteZeroes OpStats
}

// BytesRead is the number of bytes returned by successful reads.
func (s Snapshot) BytesRead() uint64 { return s.Read.Bytes }

// BytesWritten is the number of bytes stored by successful writes (not
// counting Unmap or WriteZeroes).
func (s Snapshot) BytesWritten() uint64 { return s.Write.Bytes }

// Errors is the number of failed operations of every kind.
func (s Snapshot) Errors() uint64 {
	return s.Read.Errors + s.Write.Errors + s.Flush.Errors + s.Unmap.Errors + s.WriteZeroes.Errors
}

// Sub returns the activity between prev and s (s taken later).
func (s Snapshot) Sub(prev Snapshot) Snapshot {
	return Snapshot{
		Read:        s.Read.Sub(prev.Read),
		Write:       s.Write.Sub(prev.Write),
		Flush:       s.Flush.Sub(prev.Flush),
		Unmap:       s.Unmap.Sub(prev.Unmap),
		WriteZeroes: s.WriteZeroes.Sub(prev.WriteZeroes),
	}
}

// OpStats are the counters of one operation.
type OpStats struct {
	// Count is the number of completed calls, failed ones included.
	Count uint64
	// Errors is the number of calls that returned an error.
	Errors uint64
	// Bytes is the number of bytes moved (or, for Unmap and WriteZeroes,
	// covered) by calls that succeeded.
	Bytes uint64
	// TotalLatency is the sum of the latencies of all calls.
	TotalLatency time.Duration
	// Latency is the distribution of call latencies.
	Latency Histogram
}

// MeanLatency is TotalLatency / Count, or 0 without calls.
func (o OpStats) MeanLatency() time.Duration {
	if o.Count == 0 {
		return 0
	}
	return o.TotalLatency / time.Duration(o.Count)
}

// Sub returns o minus prev, counter by counter.
func (o OpStats) Sub(prev OpStats) OpStats {
	r := OpStats{
		Count:        o.Count - prev.Count,
		Errors:       o.Errors - prev.Errors,
		Bytes:        o.Bytes - prev.Bytes,
		TotalLatency: o.TotalLatency - prev.TotalLatency,
	}
	for i := range r.Latency.Buckets {
		r.Latency.Buckets[i] = o.Latency.Buckets[i] - prev.Latency.Buckets[i]
	}
	return r
}

// Histogram is a latency histogram with logarithmic buckets: Buckets[0]
// counts latencies of 0ns and Buckets[i], i >= 1, those in [2^(i-1), 2^i)
// nanoseconds. Its resolution is therefore a factor of two.
type Histogram struct {
	Buckets [NumBuckets]uint64
}

// Count is the number of recorded latencies.
func (h *Histogram) Count() uint64 {
	var n uint64
	for _, b := range h.Buckets {
		n += b
	}
	return n
}

// Percentile estimates the latency below which p percent of the recorded
// latencies fall, p in [0, 100] (Percentile(99) is the 99th percentile),
// interpolating linearly inside the bucket that holds it. It returns 0 for
// an empty histogram; p outside [0, 100] is clamped.
func (h *Histogram) Percentile(p float64) time.Duration {
	total := h.Count()
	if total == 0 {
		return 0
	}
	if math.IsNaN(p) {
		p = 0
	}
	p = min(max(p, 0), 100)
	rank := p / 100 * float64(total) // the rank-th smallest latency
	var cum float64
	for i, b := range h.Buckets {
		if b == 0 {
			continue
		}
		if cum+float64(b) >= rank {
			if i == 0 {
				return 0
			}
			lo := math.Ldexp(1, i-1)
			frac := (rank - cum) / float64(b)
			return time.Duration(lo + frac*lo) // the bucket spans [lo, 2*lo)
		}
		cum += float64(b)
	}
	return time.Duration(math.Ldexp(1, NumBuckets-1))
}
