// Package bdevtest is the conformance suite for bdev.Device implementations,
// in the spirit of testing/fstest.TestFS: it takes a Device rather than a
// *testing.T and returns an error describing every contract violation it
// found, so that every backend, wrapper and frontend-facing device runs the
// same checks.
package bdevtest

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"

	"github.com/nexstor/nexstor/internal/bdev"
)

// MinSize is the smallest device TestDevice accepts, in bytes.
const MinSize = 1 << 20

// writers is the number of goroutines in the concurrent-writer check.
const writers = 16

// TestDevice checks that dev honours the bdev.Device contract. dev must be at
// least MinSize bytes; its contents are overwritten and it is closed before
// TestDevice returns. Only a bounded sample of a large device is touched
// (the first MiB, a region around the middle and the last blocks), so the
// suite stays fast for multi-GiB backends.
//
// It returns nil, or an error that joins (errors.Join) one error per failed
// check, each prefixed with the check's name. A panic inside the device is
// recovered and reported as a failure of the check that triggered it.
func TestDevice(dev bdev.Device) error {
	t := &tester{dev: dev}
	if !t.geometry() {
		t.run("close", t.closeCheck)
		return errors.Join(t.errs...)
	}
	t.run("alignment", t.alignment)
	t.run("range", t.outOfRange)
	t.run("round-trip", t.roundTrip)
	t.run("unmap", func() error { return t.zeroing("unmap", dev.Unmap) })
	t.run("write-zeroes", func() error { return t.zeroing("write-zeroes", dev.WriteZeroes) })
	t.run("concurrent-writers", t.concurrentWriters)
	t.run("retain", t.retain)
	t.run("flush", func() error { return dev.Flush() })
	t.run("close", t.closeCheck)
	return errors.Join(t.errs...)
}

type tester struct {
	dev  bdev.Device
	bs   int64
	size int64
	errs []error
}

// run executes one check, turning a panic into a failure.
func (t *tester) run(name string, check func() error) {
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		return check()
	}()
	if err != nil {
		t.errs = append(t.errs, fmt.Errorf("%s: %w", name, err))
	}
}

func (t *tester) fail(format string, args ...any) {
	t.errs = append(t.errs, fmt.Errorf(format, args...))
}

// geometry validates BlockSize and Size; the other checks depend on them.
func (t *tester) geometry() bool {
	bs, size := t.dev.BlockSize(), t.dev.Size()
	ok := true
	if bs < 512 || bs&(bs-1) != 0 {
		t.fail("geometry: BlockSize %d is not a power of two >= 512", bs)
		ok = false
	} else if size%int64(bs) != 0 {
		t.fail("geometry: Size %d is not a multiple of BlockSize %d", size, bs)
		ok = false
	}
	if size < MinSize {
		t.fail("geometry: Size %d is below the %d bytes the suite needs", size, MinSize)
		ok = false
	}
	if int64(bs) > size/64 {
		t.fail("geometry: BlockSize %d is too large for a %d-byte device", bs, size)
		ok = false
	}
	t.bs, t.size = int64(bs), size
	return ok
}

// pattern fills p with bytes derived from seed, so that every write in the
// suite is distinguishable from every other and from zeroes.
func pattern(p []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 0x6e65787374))
	for i := 0; i+8 <= len(p); i += 8 {
		v := r.Uint64() | 1 // never an all-zero word
		for j := range 8 {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

func (t *tester) write(p []byte, off int64) error {
	n, err := t.dev.WriteAt(p, off)
	if err != nil {
		return fmt.Errorf("WriteAt(len %d, off %d): %w", len(p), off, err)
	}
	if n != len(p) {
		return fmt.Errorf("WriteAt(len %d, off %d) = %d without an error; want a full write", len(p), off, n)
	}
	return nil
}

func (t *tester) read(p []byte, off int64) error {
	n, err := t.dev.ReadAt(p, off)
	if err != nil {
		return fmt.Errorf("ReadAt(len %d, off %d): %w", len(p), off, err)
	}
	if n != len(p) {
		return fmt.Errorf("ReadAt(len %d, off %d) = %d without an error; want a full read", len(p), off, n)
	}
	return nil
}

// expect reads len(want) bytes at off and compares them.
func (t *tester) expect(want []byte, off int64, what string) error {
	got := make([]byte, len(want))
	if err := t.read(got, off); err != nil {
		return err
	}
	if i := firstDiff(got, want); i >= 0 {
		return fmt.Errorf("%s: byte %d (device offset %d) is %#x, want %#x", what, i, off+int64(i), got[i], want[i])
	}
	return nil
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// wantErr checks that err is a *E (via errors.As).
func wantErr[E error](call string, err error) error {
	var target E
	if err == nil {
		return fmt.Errorf("%s: no error, want %T", call, target)
	}
	if !errors.As(err, &target) {
		return fmt.Errorf("%s: error %q (%T), want %T", call, err, err, target)
	}
	return nil
}

// calls runs each operation of the contract once against (off, length) and
// returns the name of each call with its error, recovering panics.
func (t *tester) calls(off, length int64) (names []string, errs []error) {
	do := func(name string, f func() error) {
		names = append(names, name)
		errs = append(errs, func() (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("panic: %v", r)
				}
			}()
			return f()
		}())
	}
	// Buffers are only allocated for lengths a test machine can hold.
	if length >= 0 && length <= 4*t.bs {
		buf := make([]byte, length)
		do(fmt.Sprintf("ReadAt(len %d, off %d)", length, off), func() error { _, err := t.dev.ReadAt(buf, off); return err })
		do(fmt.Sprintf("WriteAt(len %d, off %d)", length, off), func() error { _, err := t.dev.WriteAt(buf, off); return err })
	}
	do(fmt.Sprintf("Unmap(%d, %d)", off, length), func() error { return t.dev.Unmap(off, length) })
	do(fmt.Sprintf("WriteZeroes(%d, %d)", off, length), func() error { return t.dev.WriteZeroes(off, length) })
	return names, errs
}

func (t *tester) alignment() error {
	var errs []error
	bs := t.bs
	cases := [][2]int64{
		{1, bs},          // unaligned offset
		{bs / 2, bs},     // unaligned offset, half a block
		{0, bs + 1},      // unaligned length
		{0, bs - 1},      // shorter than a block
		{bs, 3 * bs / 2}, // one and a half blocks
		{-1, bs},         // negative and unaligned
	}
	for _, c := range cases {
		names, callErrs := t.calls(c[0], c[1])
		for i, err := range callErrs {
			if e := wantErr[*bdev.AlignmentError](names[i], err); e != nil {
				errs = append(errs, e)
			}
		}
	}
	// The device must still work after rejecting bad calls.
	buf := make([]byte, bs)
	if err := t.read(buf, 0); err != nil {
		errs = append(errs, fmt.Errorf("after alignment errors: %w", err))
	}
	return errors.Join(errs...)
}

func (t *tester) outOfRange() error {
	var errs []error
	bs, size := t.bs, t.size
	maxAligned := int64(math.MaxInt64) &^ (bs - 1)
	cases := [][2]int64{
		{size, bs},                // just past the end
		{size - bs, 2 * bs},       // straddles the end
		{size + 64*bs, bs},        // far past the end
		{-bs, bs},                 // negative, aligned
		{-4 * bs, 2 * bs},         // negative, ends before 0
		{maxAligned, bs},          // off+len overflows int64
		{size - bs, maxAligned},   // length overflows when added to off
		{bs, maxAligned - bs},     // huge length
		{0, size + bs},            // longer than the device
		{maxAligned - bs, 4 * bs}, // overflow with a small buffer
	}
	for _, c := range cases {
		names, callErrs := t.calls(c[0], c[1])
		for i, err := range callErrs {
			if e := wantErr[*bdev.RangeError](names[i], err); e != nil {
				errs = append(errs, e)
			}
		}
	}
	return errors.Join(errs...)
}

// samples returns the offsets of the regions the suite writes: the start,
// the middle and the end of the device.
func (t *tester) samples(length int64) []int64 {
	mid := (t.size / 2) &^ (t.bs - 1)
	return []int64{0, mid - length/2&^(t.bs-1), t.size - length}
}

func (t *tester) roundTrip() error {
	var errs []error
	bs := t.bs
	// Single blocks at start, middle and last block, then multi-block runs.
	for i, length := range []int64{bs, 8 * bs, 64 << 10} {
		for j, off := range t.samples(length) {
			want := make([]byte, length)
			pattern(want, uint64(100+10*i+j))
			if err := t.write(want, off); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := t.expect(want, off, fmt.Sprintf("read back %d bytes at %d", length, off)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// A read spanning two earlier writes sees both.
	a, b := make([]byte, 2*bs), make([]byte, 2*bs)
	pattern(a, 1)
	pattern(b, 2)
	off := t.size / 4 &^ (bs - 1)
	if err := errors.Join(t.write(a, off), t.write(b, off+2*bs)); err != nil {
		return errors.Join(append(errs, err)...)
	}
	if err := t.expect(append(a, b...), off, "read spanning two writes"); err != nil {
		errs = append(errs, err)
	}
	// A zero-length access at the end is within range.
	if _, err := t.dev.ReadAt(nil, t.size); err != nil {
		errs = append(errs, fmt.Errorf("ReadAt(len 0, off Size): %w", err))
	}
	return errors.Join(errs...)
}

// zeroing checks that op (Unmap or WriteZeroes) makes its range read as
// zeroes without touching the neighbouring blocks, at the start, middle and
// end of the device, for one block and for larger ranges.
func (t *tester) zeroing(name string, op func(off, length int64) error) error {
	var errs []error
	bs := t.bs
	for i, inner := range []int64{bs, 4 * bs, 128 << 10} {
		region := inner + 2*bs
		for j, off := range t.samples(region) {
			data := make([]byte, region)
			pattern(data, uint64(1000+10*i+j))
			if err := t.write(data, off); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := op(off+bs, inner); err != nil {
				errs = append(errs, fmt.Errorf("%s(%d, %d): %w", name, off+bs, inner, err))
				continue
			}
			clear(data[bs : bs+inner])
			if err := t.expect(data, off, fmt.Sprintf("after %s(%d, %d), reading %d..%d", name, off+bs, inner, off, off+region)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Zeroing an already zero range and a zero-length range both succeed.
	if err := op(0, 0); err != nil {
		errs = append(errs, fmt.Errorf("%s(0, 0): %w", name, err))
	}
	if err := op(bs, bs); err != nil {
		errs = append(errs, fmt.Errorf("%s(%d, %d) twice: %w", name, bs, bs, err))
	}
	// The whole first MiB at once, then data written over it again reads back.
	if err := op(0, MinSize); err != nil {
		errs = append(errs, fmt.Errorf("%s(0, %d): %w", name, MinSize, err))
	} else if err := t.expect(make([]byte, MinSize), 0, fmt.Sprintf("after %s of the first MiB", name)); err != nil {
		errs = append(errs, err)
	}
	data := make([]byte, 2*bs)
	pattern(data, 77)
	if err := t.write(data, bs); err != nil {
		errs = append(errs, err)
	} else if err := t.expect(data, bs, fmt.Sprintf("write after %s", name)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// concurrentWriters runs goroutines that each own a disjoint slice of the
// first MiB and write it in block-sized and multi-block pieces, then
// verifies every byte.
func (t *tester) concurrentWriters() error {
	span := int64(MinSize / writers)
	if span < t.bs {
		span = t.bs
	}
	n := int64(MinSize) / span
	want := make([]byte, n*span)
	pattern(want, 4242)
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for w := range n {
		wg.Go(func() {
			base := w * span
			chunk := t.bs
			if w%2 == 1 && span >= 4*t.bs {
				chunk = 4 * t.bs
			}
			// Write back to front so that no writer's order matches another's.
			for off := base + span - chunk; off >= base; off -= chunk {
				if err := t.write(want[off:off+chunk], off); err != nil {
					errc <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Parallel readers, then one sequential read of everything.
	var rg sync.WaitGroup
	rerrc := make(chan error, n)
	for w := range n {
		rg.Go(func() {
			off := w * span
			if err := t.expect(want[off:off+span], off, fmt.Sprintf("reader %d", w)); err != nil {
				rerrc <- err
			}
		})
	}
	rg.Wait()
	close(rerrc)
	for err := range rerrc {
		errs = append(errs, err)
	}
	if err := t.expect(want, 0, "after concurrent writers"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// retain checks that the device keeps no reference to callers' buffers.
func (t *tester) retain() error {
	bs := t.bs
	off := (t.size/2)&^(bs-1) + 8*bs
	orig := make([]byte, 4*bs)
	pattern(orig, 9)
	buf := bytes.Clone(orig)
	if err := t.write(buf, off); err != nil {
		return err
	}
	pattern(buf, 10) // mutate after the write was acknowledged
	if err := t.dev.Flush(); err != nil {
		return fmt.Errorf("Flush: %w", err)
	}
	if err := t.expect(orig, off, "after mutating the written buffer"); err != nil {
		return err
	}
	// A buffer handed to ReadAt must not change after ReadAt returns.
	rbuf := make([]byte, 4*bs)
	if err := t.read(rbuf, off); err != nil {
		return err
	}
	snapshot := bytes.Clone(rbuf)
	other := make([]byte, 4*bs)
	pattern(other, 11)
	if err := t.write(other, off); err != nil {
		return err
	}
	if err := t.dev.Flush(); err != nil {
		return fmt.Errorf("Flush: %w", err)
	}
	if !bytes.Equal(rbuf, snapshot) {
		return errors.New("a buffer passed to ReadAt changed after ReadAt returned")
	}
	return t.expect(other, off, "after overwriting")
}

func (t *tester) closeCheck() error {
	if err := t.dev.Close(); err != nil {
		return fmt.Errorf("Close: %w", err)
	}
	var errs []error
	bs := max(t.bs, 512)
	buf := make([]byte, bs)
	check := func(call string, err error) {
		if !errors.Is(err, bdev.ErrClosed) {
			errs = append(errs, fmt.Errorf("%s after Close: got %v, want an error wrapping bdev.ErrClosed", call, err))
		}
	}
	safe := func(f func() error) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		return f()
	}
	check("ReadAt", safe(func() error { _, err := t.dev.ReadAt(buf, 0); return err }))
	check("WriteAt", safe(func() error { _, err := t.dev.WriteAt(buf, 0); return err }))
	check("Flush", safe(t.dev.Flush))
	check("Unmap", safe(func() error { return t.dev.Unmap(0, bs) }))
	check("WriteZeroes", safe(func() error { return t.dev.WriteZeroes(0, bs) }))
	if err := safe(t.dev.Close); err != nil && !errors.Is(err, bdev.ErrClosed) {
		errs = append(errs, fmt.Errorf("second Close: %w", err))
	}
	return errors.Join(errs...)
}
