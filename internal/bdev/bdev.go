// Package bdev defines the block device contract that every layer of Nexstor
// speaks: backends (files, block devices, RAM), wrappers (fault injection,
// statistics), pool replicas, remote namespaces and the nexus are all Devices.
package bdev

import (
	"errors"
	"fmt"
	"io"
)

// Device is a block device.
//
// Offsets and lengths are in bytes and must be multiples of BlockSize; a
// violation returns an *AlignmentError (never a panic). Accesses beyond Size
// return an *RangeError.
//
// ReadAt and WriteAt transfer len(p) bytes or return an error: a short
// transfer is always an error. As with io.ReaderAt, implementations must not
// retain p after returning. All methods are safe for concurrent use; parallel
// writes to overlapping ranges leave the overlap in an unspecified mix of the
// two (callers that need ordering, such as the nexus, serialize them).
//
// A write is acknowledged when WriteAt returns nil. It is durable once a later
// Flush returns nil: Flush makes every write acknowledged before it was called
// durable.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Flush makes every previously acknowledged write durable. After a
	// Flush has failed, writes acknowledged before it may be lost even if
	// a later flush of the underlying storage succeeds (Linux reports a
	// writeback error once); implementations over such storage keep
	// failing Flush rather than report durability they cannot promise.
	Flush() error
	// Unmap discards the range; later reads of it return zeroes.
	Unmap(off, length int64) error
	// WriteZeroes sets the range to zeroes, as a write would.
	WriteZeroes(off, length int64) error
	// Size is the capacity in bytes, a multiple of BlockSize.
	Size() int64
	// BlockSize is the logical block size in bytes, a power of two >= 512.
	BlockSize() int
	// Close releases the device. Calls after Close return ErrClosed.
	Close() error
}

// WriteStarter is a Device that can send a write and wait for it later: a
// remote device, whose write is a network round trip. The nexus starts the
// writes of all such children from the submitting goroutine and then waits
// for them, instead of handing each to a goroutine of its own.
type WriteStarter interface {
	// StartWrite starts writing p at off, with WriteAt's semantics once
	// it completes. A nil Pending means the write is already over (it
	// failed to start, or the device ran it synchronously) and err is its
	// result; otherwise err is nil and Pending.Wait gives the result. p
	// must not change until then.
	//
	// StartWrite may block until the device has room for another write
	// in flight, which the Wait of one already started makes. A caller
	// that holds started writes of several devices while it starts more
	// must start them in an order every such caller follows, or two could
	// each wait for room the other holds.
	StartWrite(p []byte, off int64) (Pending, error)
}

// Pending is a write started by a WriteStarter. Wait blocks until it
// completes and returns what WriteAt would have (nil: acknowledged). It must
// be called exactly once, as the write holds resources of the device (a
// command slot) until it is; the Pending is not used after.
type Pending interface {
	Wait() error
}

// ErrClosed is returned by operations on a closed Device.
var ErrClosed = errors.New("bdev: device is closed")

// AlignmentError reports an offset or length that is not a multiple of the
// device's block size.
type AlignmentError struct {
	Op        string
	Off, Len  int64
	BlockSize int
}

func (e *AlignmentError) Error() string {
	return fmt.Sprintf("bdev: %s at offset %d length %d: not aligned to the %d-byte block size; use offsets and lengths that are multiples of %d",
		e.Op, e.Off, e.Len, e.BlockSize, e.BlockSize)
}

// RangeError reports an access that extends beyond the end of the device.
type RangeError struct {
	Op       string
	Off, Len int64
	Size     int64
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("bdev: %s at offset %d length %d: beyond the end of the %d-byte device", e.Op, e.Off, e.Len, e.Size)
}

// CheckRange validates an access of length bytes at off against a device of
// the given size and block size. It is the one place every implementation
// checks alignment and bounds, so that errors are the same everywhere.
//
// An offset or length that is not a multiple of blockSize is an
// *AlignmentError; an aligned access that starts before 0, has a negative
// length or ends beyond size (including when off+length overflows) is a
// *RangeError.
func CheckRange(op string, off, length, size int64, blockSize int) error {
	bs := int64(blockSize)
	if off%bs != 0 || length%bs != 0 {
		return &AlignmentError{Op: op, Off: off, Len: length, BlockSize: blockSize}
	}
	if off < 0 || length < 0 || off > size || length > size-off {
		return &RangeError{Op: op, Off: off, Len: length, Size: size}
	}
	return nil
}
