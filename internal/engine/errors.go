package engine

import (
	"errors"
	"fmt"
	"os"
	"regexp"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of engine errors.
const ErrorDomain = faultgrpc.Domain

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// checkName validates a pool, replica, snapshot or nexus name; kind is
// "pool", "replica", "snapshot" or "nexus".
func checkName(kind, name string) error {
	if nameRE.MatchString(name) {
		return nil
	}
	f := nameFault(kind, name == "")
	if name == "" {
		f.Description = fmt.Sprintf("%s name is missing", kind)
		f.Resolution = fmt.Sprintf("give the %s a name of 1-63 characters of A-Z a-z 0-9 . _ -", kind)
		return f
	}
	f.Description = fmt.Sprintf("%s name %q is invalid", kind, name)
	f.Resolution = "use 1-63 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
	return f
}

// nameFault returns the fault of a missing or invalid name of kind, with
// each code written out so that the registry test sees it.
func nameFault(kind string, missing bool) *fault.Fault {
	switch {
	case kind == "pool" && missing:
		return fault.New(fault.InvalidArgument, "pool.name_missing", "", "")
	case kind == "pool":
		return fault.New(fault.InvalidArgument, "pool.name_invalid", "", "")
	case kind == "replica" && missing:
		return fault.New(fault.InvalidArgument, "replica.name_missing", "", "")
	case kind == "replica":
		return fault.New(fault.InvalidArgument, "replica.name_invalid", "", "")
	case kind == "snapshot" && missing:
		return fault.New(fault.InvalidArgument, "snapshot.name_missing", "", "")
	case kind == "snapshot":
		return fault.New(fault.InvalidArgument, "snapshot.name_invalid", "", "")
	case missing:
		return fault.New(fault.InvalidArgument, "nexus.name_missing", "", "")
	}
	return fault.New(fault.InvalidArgument, "nexus.name_invalid", "", "")
}

func poolNotFound(name string) error {
	return fault.New(fault.NotFound, "pool.not_found",
		fmt.Sprintf("pool %q not found", name),
		"list the pools with `nexctl pool list`, or import the pool with `nexctl pool import`")
}

func replicaNotFound(name string) error {
	return fault.New(fault.NotFound, "replica.not_found",
		fmt.Sprintf("replica %q not found", name),
		"list the replicas with `nexctl replica list`")
}

func poolFaulted(name, reason string) error {
	return fault.New(fault.Unavailable, "pool.faulted",
		fmt.Sprintf("pool %q is not imported: %s", name, reason),
		"fix the disk and restart the server, or import the pool again with `nexctl pool import`")
}

// IsFault reports whether err carries a fault of the given kind.
func IsFault(err error, kind fault.Kind) bool {
	var f *fault.Fault
	return errors.As(err, &f) && f.Kind == kind
}

// diskFault turns an error from opening a disk into a fault naming the disk.
// Errors that already are faults keep their kind.
func diskFault(uri string, err error) error {
	var f *fault.Fault
	if errors.As(err, &f) {
		return err
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fault.Wrap(err, fault.NotFound, "disk.not_found",
			fmt.Sprintf("disk %q not found", uri),
			"check the path; for a file-backed disk give its size, e.g. file:///var/lib/nexstor/d0.img?size=10GiB")
	case errors.Is(err, os.ErrPermission):
		return fault.Wrap(err, fault.FailedPrecondition, "disk.permission",
			fmt.Sprintf("disk %q cannot be opened", uri),
			"run the server as a user that may read and write the disk")
	}
	return fault.Wrap(err, fault.InvalidArgument, "disk.open",
		fmt.Sprintf("disk %q cannot be opened", uri),
		"check the disk URI: file:///path?size=10GiB, aio:///dev/sdb, uring:///dev/nvme0n1, malloc:///name?size=512MiB or a path")
}

// ToStatus converts an engine error to a gRPC status error (faultgrpc.ToStatus).
// Handlers need not call it: the servers of StartServer and of `nexstor
// server --control` convert every error a handler returns through
// faultgrpc.ServerOptions.
func ToStatus(err error) error { return faultgrpc.ToStatus(err) }

// FromStatus turns a gRPC error back into a fault (faultgrpc.FromStatus).
func FromStatus(err error) *fault.Fault { return faultgrpc.FromStatus(err) }
