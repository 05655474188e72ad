// Package faulty wraps a bdev.Device and injects faults: I/O errors, added
// latency, torn writes and silent corruption, selected by operation, byte
// range, probability and count. It is the only way tests in Nexstor make a
// device misbehave.
package faulty

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

// Op is a set of Device operations, used to select which ones a Rule matches.
type Op uint8

// Operations a Rule can match.
const (
	OpRead Op = 1 << iota
	OpWrite
	OpFlush
	OpUnmap
	OpWriteZeroes
)

// OpAll matches every operation.
const OpAll = OpRead | OpWrite | OpFlush | OpUnmap | OpWriteZeroes

func (o Op) String() string {
	if o == 0 {
		return "none"
	}
	var names []string
	for i, n := range []string{"read", "write", "flush", "unmap", "write-zeroes"} {
		if o&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return strings.Join(names, "|")
}

// ErrInjected is the error a firing Rule returns when it sets no Err.
var ErrInjected = errors.New("faulty: injected I/O error")

// Rule describes one fault. A Rule matches an operation when the operation
// is in Ops and its byte range overlaps [Off, Off+Len) (Flush has no range
// and matches any Off/Len). A matching Rule fires unless it is still in its
// After window, it has fired Count times, or the Probability draw says no.
//
// What a firing Rule does:
//   - Delay: the operation is delayed by Latency (0: not at all) and then
//     performed normally. A Delay rule never fails an operation; with no
//     latency it only counts the operations it fires on (Fired).
//   - Latency alone (no Err, Torn or Corrupt): the same as Delay. A rule
//     with neither Delay nor a Latency is an error rule: Rule{} fails every
//     operation. A latency that may be zero (a benchmark's flag) therefore
//     needs Delay set, or it becomes an error rule at zero.
//   - Corrupt (writes only): a copy of the data with one bit flipped in every
//     block is written and success is reported. Err is ignored.
//   - Torn (writes only): only the first TornBytes of the data are written,
//     then the error is returned.
//   - Otherwise the operation is not performed and Err (or ErrInjected) is
//     returned, after Latency when set.
//
// A Rule that Validate refuses (a Delay rule that also fails, a negative
// Latency, a Probability outside [0, 1]) is refused by AddRule.
type Rule struct {
	// Ops selects the operations the rule matches; 0 means OpAll.
	Ops Op
	// Off and Len select a byte range by overlap; Len 0 means the whole device.
	Off, Len int64
	// Probability is the chance, in (0, 1], that a matching operation fires
	// the rule; 0 means always.
	Probability float64
	// After lets the first After matching operations through untouched.
	After int
	// Count limits how many times the rule fires; 0 means unlimited.
	Count int
	// Err is the error returned; nil means ErrInjected. It is returned as is
	// (not wrapped), so tests may compare it directly.
	Err error
	// Latency is added before the operation; it must not be negative.
	Latency time.Duration
	// Delay makes the rule one that only delays, by Latency, even when
	// Latency is 0; it cannot be combined with Err, Torn or Corrupt.
	Delay bool
	// Torn makes a matching write land only partially (see TornBytes) before
	// the error is returned. Torn rules match only writes.
	Torn bool
	// TornBytes is how much of a torn write lands, rounded down to the block
	// size and capped at the write's length. 0 means half of the write's
	// blocks, rounded down (so nothing of a single-block write lands).
	TornBytes int64
	// Corrupt makes a matching write store silently corrupted data and
	// report success. Corrupt rules match only writes.
	Corrupt bool
}

// failing reports whether a firing rule fails the operation rather than only
// delaying it.
func (r *Rule) failing() bool {
	return r.Err != nil || r.Torn || r.Corrupt || (r.Latency == 0 && !r.Delay)
}

// Validate reports why r is not a rule AddRule accepts: a Delay rule that
// also sets Err, Torn or Corrupt (it would both delay only and fail), a
// negative Latency, TornBytes, After or Count, or a Probability outside
// [0, 1]. Callers building a rule from input (flags) check it with
// Validate; AddRule panics on such a rule.
func (r Rule) Validate() error {
	switch {
	case r.Delay && (r.Err != nil || r.Torn || r.Corrupt):
		return errors.New("faulty: a Delay rule only delays: drop Err, Torn and Corrupt, or Delay")
	case r.Latency < 0:
		return fmt.Errorf("faulty: Latency %v is negative: give 0 or more", r.Latency)
	case !(r.Probability >= 0 && r.Probability <= 1):
		return fmt.Errorf("faulty: Probability %v: give a value in [0, 1] (0 means always)", r.Probability)
	case r.TornBytes < 0 || r.After < 0 || r.Count < 0:
		return fmt.Errorf("faulty: TornBytes %d, After %d, Count %d: none may be negative", r.TornBytes, r.After, r.Count)
	}
	return nil
}

type rule struct {
	Rule
	id      int
	seen    int // matching operations so far, for After
	fired   atomic.Int64
	removed bool
}

var _ bdev.Device = (*Device)(nil)

// Device is a bdev.Device that forwards to an inner device and applies the
// installed Rules to every operation. It is safe for concurrent use; rules
// may be added and removed while I/O is running. With no rules installed it
// behaves exactly as the inner device.
//
// Misuse errors (alignment, range, closed device) always come from the inner
// device, unchanged: rules never mask them.
type Device struct {
	inner bdev.Device
	size  int64
	bs    int64

	nrules atomic.Int32 // fast path: no lock when no rule is installed
	mu     sync.Mutex
	rng    *rand.Rand
	rules  []*rule       // installed, in the order added
	byID   map[int]*rule // every rule ever added, for Fired
	nextID int
	closed atomic.Bool
}

// New wraps inner. seed makes the probability draws and the corrupted bits
// deterministic for a given sequence of operations.
func New(inner bdev.Device, seed int64) *Device {
	return &Device{
		inner: inner,
		size:  inner.Size(),
		bs:    int64(inner.BlockSize()),
		rng:   rand.New(rand.NewPCG(uint64(seed), 0x6661756c7479)),
		byID:  make(map[int]*rule),
	}
}

// AddRule installs r and returns its id. Rules are evaluated in the order
// they were added: the latencies of every firing rule add up, and the first
// firing rule that fails the operation (error, torn or corrupt) decides the
// outcome. It panics on a rule Validate refuses: a test's rules are fixed
// by the test, so such a rule is a mistake in it.
func (d *Device) AddRule(r Rule) int {
	if err := r.Validate(); err != nil {
		panic(err)
	}
	if r.Ops == 0 {
		r.Ops = OpAll
	}
	if r.Torn || r.Corrupt {
		r.Ops &= OpWrite
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nextID++
	nr := &rule{Rule: r, id: d.nextID}
	d.rules = append(d.rules, nr)
	d.byID[nr.id] = nr
	d.nrules.Store(int32(len(d.rules)))
	return nr.id
}

// RemoveRule uninstalls a rule; its Fired count stays readable. Removing an
// unknown or already removed id does nothing.
func (d *Device) RemoveRule(id int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rules = slices.DeleteFunc(d.rules, func(r *rule) bool { return r.id == id })
	if r := d.byID[id]; r != nil {
		r.removed = true
	}
	d.nrules.Store(int32(len(d.rules)))
}

// ClearRules uninstalls every rule.
func (d *Device) ClearRules() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.rules {
		r.removed = true
	}
	d.rules = nil
	d.nrules.Store(0)
}

// Fired returns how many times the rule with this id has fired (0 for an
// unknown id).
func (d *Device) Fired(id int) int {
	d.mu.Lock()
	r := d.byID[id]
	d.mu.Unlock()
	if r == nil {
		return 0
	}
	return int(r.fired.Load())
}

// Inner returns the wrapped device.
func (d *Device) Inner() bdev.Device { return d.inner }

// verdict is what the rules decided for one operation.
type verdict struct {
	latency time.Duration
	fail    *rule // nil: perform the operation normally
	corrupt uint64
}

// decide evaluates the rules for one operation. It returns the zero verdict
// when the operation is misuse (left to the inner device to report).
func (d *Device) decide(op Op, name string, off, length int64) verdict {
	if d.nrules.Load() == 0 || d.closed.Load() {
		return verdict{}
	}
	if op != OpFlush && bdev.CheckRange(name, off, length, d.size, int(d.bs)) != nil {
		return verdict{}
	}
	var v verdict
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.rules {
		if r.Ops&op == 0 {
			continue
		}
		if op != OpFlush && r.Len != 0 && (off+length <= r.Off || r.Off+r.Len <= off) {
			continue
		}
		if v.fail != nil && r.failing() {
			continue // outcome already decided; do not consume this rule
		}
		r.seen++
		if r.seen <= r.After {
			continue
		}
		if r.Count > 0 && r.fired.Load() >= int64(r.Count) {
			continue
		}
		if r.Probability > 0 && r.Probability < 1 && d.rng.Float64() >= r.Probability {
			continue
		}
		r.fired.Add(1)
		v.latency += r.Latency
		if r.failing() && v.fail == nil {
			v.fail = r
			if r.Corrupt {
				v.corrupt = d.rng.Uint64()
			}
		}
	}
	return v
}

func (v *verdict) err() error {
	if v.fail.Err != nil {
		return v.fail.Err
	}
	return ErrInjected
}

// ReadAt implements bdev.Device.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	v := d.decide(OpRead, "read", off, int64(len(p)))
	sleep(v.latency)
	if v.fail != nil {
		return 0, v.err()
	}
	return d.inner.ReadAt(p, off)
}

// WriteAt implements bdev.Device.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	v := d.decide(OpWrite, "write", off, int64(len(p)))
	sleep(v.latency)
	switch {
	case v.fail == nil:
		return d.inner.WriteAt(p, off)
	case v.fail.Corrupt:
		return d.inner.WriteAt(d.corrupt(p, v.corrupt), off)
	case v.fail.Torn:
		n := v.fail.TornBytes
		if n == 0 {
			n = int64(len(p)) / d.bs / 2 * d.bs
		}
		n = min(n/d.bs*d.bs, int64(len(p)))
		if n > 0 {
			if _, err := d.inner.WriteAt(p[:n], off); err != nil {
				return 0, err
			}
		}
		return int(n), v.err()
	default:
		return 0, v.err()
	}
}

// corrupt returns a copy of p with one bit flipped in every block, at a
// position derived from seed.
func (d *Device) corrupt(p []byte, seed uint64) []byte {
	c := make([]byte, len(p))
	copy(c, p)
	r := rand.New(rand.NewPCG(seed, seed>>1|1))
	for b := int64(0); b < int64(len(c)); b += d.bs {
		bit := r.Int64N(d.bs * 8)
		c[b+bit/8] ^= 1 << (bit % 8)
	}
	return c
}

// Flush implements bdev.Device.
func (d *Device) Flush() error {
	v := d.decide(OpFlush, "flush", 0, 0)
	sleep(v.latency)
	if v.fail != nil {
		return v.err()
	}
	return d.inner.Flush()
}

// Unmap implements bdev.Device.
func (d *Device) Unmap(off, length int64) error {
	v := d.decide(OpUnmap, "unmap", off, length)
	sleep(v.latency)
	if v.fail != nil {
		return v.err()
	}
	return d.inner.Unmap(off, length)
}

// WriteZeroes implements bdev.Device.
func (d *Device) WriteZeroes(off, length int64) error {
	v := d.decide(OpWriteZeroes, "write-zeroes", off, length)
	sleep(v.latency)
	if v.fail != nil {
		return v.err()
	}
	return d.inner.WriteZeroes(off, length)
}

// Size returns the inner device's size.
func (d *Device) Size() int64 { return d.size }

// BlockSize returns the inner device's block size.
func (d *Device) BlockSize() int { return int(d.bs) }

// Close closes the inner device. Rules no longer apply afterwards, so that
// calls after Close report the inner device's ErrClosed.
func (d *Device) Close() error {
	d.closed.Store(true)
	return d.inner.Close()
}

func sleep(t time.Duration) {
	if t > 0 {
		time.Sleep(t)
	}
}
