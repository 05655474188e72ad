package pool

import (
	"fmt"

	"github.com/nexstor/nexstor/internal/fault"
)

// Sentinel errors. Every error the package returns wraps one of these (test
// with errors.Is) together with context naming the pool or replica and what
// to do about it. They are *fault.Fault values, so fault.KindOf maps them to
// the right gRPC status.
var (
	// ErrHasPool: Create found a Nexstor superblock on the device.
	ErrHasPool = fault.New(fault.AlreadyExists, "pool.has_pool", "device already holds a pool", "")
	// ErrTooSmall: the device cannot hold the superblocks, the metadata
	// region and at least one data cluster.
	ErrTooSmall = fault.New(fault.InvalidArgument, "pool.too_small", "device too small", "")
	// ErrNotPool: no Nexstor superblock on the device.
	ErrNotPool = fault.New(fault.FailedPrecondition, "pool.not_pool", "not a pool", "")
	// ErrCorrupt: on-disk metadata is damaged beyond what import repairs.
	// Returned inside a *CorruptError.
	ErrCorrupt = fault.New(fault.FailedPrecondition, "pool.corrupt", "pool metadata is corrupt", "")
	// ErrExists: a replica with that name or UUID exists.
	ErrExists = fault.New(fault.AlreadyExists, "pool.replica_exists", "already exists", "")
	// ErrNotFound: no replica of that name.
	ErrNotFound = fault.New(fault.NotFound, "pool.replica_not_found", "not found", "")
	// ErrNoSpace: not enough free clusters (or replica slots). A thin
	// replica's write that finds no free cluster also matches
	// bdev.ErrNoSpace.
	ErrNoSpace = fault.New(fault.ResourceExhausted, "pool.no_space", "no space left in pool", "")
	// ErrOvercommit: creating or growing a replica would take the sum of
	// replica sizes beyond the pool's thin over-commit limit. Such errors
	// match ErrNoSpace too, and name capacity, committed, asked and limit.
	ErrOvercommit = fault.New(fault.ResourceExhausted, "pool.overcommit", "thin over-commit limit reached", "")
	// ErrUnsupported: the pool's format is one this build cannot read (a
	// newer version, unknown incompatible features), or a version 1 pool
	// that cannot be upgraded. Nothing was written.
	ErrUnsupported = fault.New(fault.FailedPrecondition, "pool.unsupported", "pool format not supported", "")
	// ErrBusy: the replica (or pool) has open handles.
	ErrBusy = fault.New(fault.FailedPrecondition, "pool.busy", "busy", "")
	// ErrInvalid: a bad argument (size, name, UUID, option).
	ErrInvalid = fault.New(fault.InvalidArgument, "pool.invalid", "invalid argument", "")
	// ErrClosed: the pool was closed (exported) or destroyed, or its metadata
	// log failed and it must be imported again.
	ErrClosed = fault.New(fault.Unavailable, "pool.closed", "pool is closed", "")
)

// CorruptError reports on-disk metadata that import cannot use: both
// superblock copies bad, both checkpoints bad, or a checksummed record that
// contradicts the pool's state. errors.Is(err, ErrCorrupt) is true.
type CorruptError struct {
	// What names the damaged structure and the offsets involved.
	What string
	// Err is the underlying cause, if any.
	Err error
}

func (e *CorruptError) Error() string {
	msg := "pool metadata is corrupt: " + e.What
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg + "; the disk cannot be imported: rebuild its replicas from their other copies and recreate the pool (create with force)"
}

// Unwrap returns ErrCorrupt and the cause, so errors.Is and fault.KindOf work.
func (e *CorruptError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrCorrupt}
	}
	return []error{ErrCorrupt, e.Err}
}

func corruptf(format string, args ...any) *CorruptError {
	return &CorruptError{What: fmt.Sprintf(format, args...)}
}
