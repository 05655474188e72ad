// Package claimtest is an in-memory bdev.Claimer for tests: it wraps any
// bdev.Device (a malloc device, a faulty one) and gives it an identity, an
// owner and a fencing epoch with the semantics internal/bdev/claim.go
// documents and pool replicas implement:
//
//   - Claim by another owner is refused with *bdev.OwnedError; a claim with an
//     epoch below the device's is refused with *bdev.StaleEpochError.
//   - Every successful Claim starts a new session: every earlier Claimed
//     handle then fails all I/O with an error wrapping bdev.ErrFenced.
//   - The device itself is the unclaimed handle: it reads freely, but its
//     writes, flushes, unmaps and write-zeroes fail with *bdev.OwnedError
//     while an owner holds it.
//
// Claims are kept in memory only. Handles check their session with one
// atomic load per I/O and allocate nothing, so a claimed path can be held to
// the same no-allocation checks as an unclaimed one.
package claimtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
)

// errSuperseded is returned by I/O on a superseded or released handle. It is
// made once so that refusing I/O allocates nothing.
var errSuperseded = fmt.Errorf("claimtest: %w", bdev.ErrFenced)

// Device is a bdev.Claimer over an inner device. Methods are safe for
// concurrent use.
type Device struct {
	inner bdev.Device
	id    bdev.Identity

	mu      sync.Mutex // orders claims, raises and releases
	owner   uuid.UUID
	epoch   uint64
	session atomic.Uint64 // bumped by every claim and release
	owned   atomic.Bool   // owner != zero, for the unclaimed path
	blank   atomic.Bool

	claims  atomic.Int64 // successful Claim calls
	refused atomic.Int64 // I/O refused for fencing or ownership
	open    atomic.Int64 // Claimed handles not closed
	closed  atomic.Bool
}

var _ bdev.Claimer = (*Device)(nil)

// New wraps inner, which must read as zeroes (blank) until written. id is
// what ClaimState reports.
func New(inner bdev.Device, id bdev.Identity) *Device {
	d := &Device{inner: inner, id: id}
	d.blank.Store(true)
	return d
}

// ClaimState reports the identity, the owner, the highest epoch accepted and
// whether anything was ever written.
func (d *Device) ClaimState(ctx context.Context) (bdev.ClaimState, error) {
	if d.closed.Load() {
		return bdev.ClaimState{}, bdev.ErrClosed
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return bdev.ClaimState{Identity: d.id, Owner: d.owner, Epoch: d.epoch, Blank: d.blank.Load()}, nil
}

// Claim makes c the device's claim and returns a handle bound to it; every
// earlier handle is fenced.
func (d *Device) Claim(ctx context.Context, c bdev.Claim) (bdev.Claimed, error) {
	if d.closed.Load() {
		return nil, bdev.ErrClosed
	}
	if c.Owner == uuid.Nil {
		return nil, errors.New("claimtest: claim without an owner")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.owner != uuid.Nil && d.owner != c.Owner {
		return nil, &bdev.OwnedError{Owner: d.owner}
	}
	if c.Epoch < d.epoch {
		return nil, &bdev.StaleEpochError{Epoch: c.Epoch, Current: d.epoch}
	}
	d.owner, d.epoch = c.Owner, c.Epoch
	d.owned.Store(true)
	h := &handle{d: d, session: d.session.Add(1)}
	d.claims.Add(1)
	d.open.Add(1)
	return h, nil
}

// Claims is the number of successful Claim calls so far.
func (d *Device) Claims() int64 { return d.claims.Load() }

// Refused is the number of I/O calls refused so far because a newer claim or
// another owner held the device.
func (d *Device) Refused() int64 { return d.refused.Load() }

// OpenHandles is the number of Claimed handles not yet closed.
func (d *Device) OpenHandles() int64 { return d.open.Load() }

// Inner returns the wrapped device, to inspect its contents without any
// claim.
func (d *Device) Inner() bdev.Device { return d.inner }

// refuseUnclaimed fails a modifying call of the unclaimed handle while the
// device is owned.
func (d *Device) refuseUnclaimed() error {
	if !d.owned.Load() {
		return nil
	}
	d.mu.Lock()
	owner := d.owner
	d.mu.Unlock()
	if owner == uuid.Nil {
		return nil
	}
	d.refused.Add(1)
	return &bdev.OwnedError{Owner: owner}
}

// ReadAt reads from the inner device: reading is never refused.
func (d *Device) ReadAt(p []byte, off int64) (int, error) { return d.inner.ReadAt(p, off) }

// WriteAt writes unless an owner holds the device: the unclaimed handle
// writes only to an unowned device.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if err := d.refuseUnclaimed(); err != nil {
		return 0, err
	}
	return d.write(p, off)
}

func (d *Device) write(p []byte, off int64) (int, error) {
	n, err := d.inner.WriteAt(p, off)
	if n > 0 {
		d.blank.Store(false)
	}
	return n, err
}

// Flush flushes the inner device unless the device is owned.
func (d *Device) Flush() error {
	if err := d.refuseUnclaimed(); err != nil {
		return err
	}
	return d.inner.Flush()
}

// Unmap unmaps on the inner device unless the device is owned.
func (d *Device) Unmap(off, length int64) error {
	if err := d.refuseUnclaimed(); err != nil {
		return err
	}
	return d.inner.Unmap(off, length)
}

// WriteZeroes zeroes on the inner device unless the device is owned.
func (d *Device) WriteZeroes(off, length int64) error {
	if err := d.refuseUnclaimed(); err != nil {
		return err
	}
	return d.inner.WriteZeroes(off, length)
}

// Size is the inner device's size.
func (d *Device) Size() int64 { return d.inner.Size() }

// BlockSize is the inner device's block size.
func (d *Device) BlockSize() int { return d.inner.BlockSize() }

// Close closes the inner device.
func (d *Device) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	return d.inner.Close()
}

// handle is a Claimed handle of one session.
type handle struct {
	d       *Device
	session uint64
	closed  atomic.Bool
}

// check fails an operation of a closed or superseded handle.
func (h *handle) check() error {
	if h.closed.Load() {
		return bdev.ErrClosed
	}
	if h.d.session.Load() != h.session {
		h.d.refused.Add(1)
		return errSuperseded
	}
	return nil
}

func (h *handle) ReadAt(p []byte, off int64) (int, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	return h.d.inner.ReadAt(p, off)
}

func (h *handle) WriteAt(p []byte, off int64) (int, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	return h.d.write(p, off)
}

func (h *handle) Flush() error {
	if err := h.check(); err != nil {
		return err
	}
	return h.d.inner.Flush()
}

func (h *handle) Unmap(off, length int64) error {
	if err := h.check(); err != nil {
		return err
	}
	return h.d.inner.Unmap(off, length)
}

func (h *handle) WriteZeroes(off, length int64) error {
	if err := h.check(); err != nil {
		return err
	}
	return h.d.inner.WriteZeroes(off, length)
}

func (h *handle) Size() int64    { return h.d.inner.Size() }
func (h *handle) BlockSize() int { return h.d.inner.BlockSize() }

// Close closes the handle only: the claim stays.
func (h *handle) Close() error {
	if !h.closed.Swap(true) {
		h.d.open.Add(-1)
	}
	return nil
}

// Raise moves the device's epoch up, unless a later claim superseded the
// handle.
func (h *handle) Raise(ctx context.Context, epoch uint64) error {
	if h.closed.Load() {
		return bdev.ErrClosed
	}
	d := h.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.session.Load() != h.session {
		return errSuperseded
	}
	d.epoch = max(d.epoch, epoch)
	return nil
}

// Release clears the owner, keeps the epoch, and fences the handle.
func (h *handle) Release(ctx context.Context) error {
	if h.closed.Load() {
		return bdev.ErrClosed
	}
	d := h.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.session.Load() != h.session {
		return errSuperseded
	}
	d.owner = uuid.Nil
	d.owned.Store(false)
	d.session.Add(1)
	return nil
}
