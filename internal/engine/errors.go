package engine

import (
	"errors"
	"fmt"
	"os"
	"regexp"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/fault"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of engine errors.
const ErrorDomain = "nexstor.io"

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// checkName validates a pool or replica name; kind is "pool" or "replica".
func checkName(kind, name string) error {
	if name == "" {
		return fault.New(fault.InvalidArgument, kind+".name_missing",
			fmt.Sprintf("%s name is missing", kind),
			fmt.Sprintf("give the %s a name of 1-63 characters of A-Z a-z 0-9 . _ -", kind))
	}
	if !nameRE.MatchString(name) {
		return fault.New(fault.InvalidArgument, kind+".name_invalid",
			fmt.Sprintf("%s name %q is invalid", kind, name),
			"use 1-63 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit")
	}
	return nil
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

// GRPCCode returns the exact gRPC code of a fault kind.
func GRPCCode(k fault.Kind) codes.Code {
	switch k {
	case fault.InvalidArgument:
		return codes.InvalidArgument
	case fault.NotFound:
		return codes.NotFound
	case fault.AlreadyExists:
		return codes.AlreadyExists
	case fault.FailedPrecondition:
		return codes.FailedPrecondition
	case fault.ResourceExhausted:
		return codes.ResourceExhausted
	case fault.Unavailable:
		return codes.Unavailable
	case fault.PermissionDenied:
		return codes.PermissionDenied
	case fault.Unauthenticated:
		return codes.Unauthenticated
	}
	return codes.Internal
}

// FaultKind returns the fault kind of a gRPC code (the inverse of GRPCCode).
func FaultKind(c codes.Code) fault.Kind {
	switch c {
	case codes.InvalidArgument:
		return fault.InvalidArgument
	case codes.NotFound:
		return fault.NotFound
	case codes.AlreadyExists:
		return fault.AlreadyExists
	case codes.FailedPrecondition:
		return fault.FailedPrecondition
	case codes.ResourceExhausted:
		return fault.ResourceExhausted
	case codes.Unavailable:
		return fault.Unavailable
	case codes.PermissionDenied:
		return fault.PermissionDenied
	case codes.Unauthenticated:
		return fault.Unauthenticated
	}
	return fault.Internal
}

// ToStatus converts an engine error to a gRPC status error: the code from the
// fault kind, the message from the whole error (description, cause,
// resolution), and an ErrorInfo detail with the fault code as its reason and
// the description and resolution separately, so clients can print them apart.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var f *fault.Fault
	if !errors.As(err, &f) {
		return status.Error(codes.Internal, err.Error())
	}
	desc := f.Description
	if f.Err != nil {
		desc += ": " + f.Err.Error()
	}
	st := status.New(GRPCCode(f.Kind), err.Error())
	if d, derr := st.WithDetails(&errdetails.ErrorInfo{
		Reason: f.Code,
		Domain: ErrorDomain,
		Metadata: map[string]string{
			"description": desc,
			"resolution":  f.Resolution,
		},
	}); derr == nil {
		st = d
	}
	return st.Err()
}

// FromStatus turns a gRPC error back into a fault, so a client can print the
// description and the resolution apart. Errors without engine details become
// faults whose description is the status message.
func FromStatus(err error) *fault.Fault {
	st, ok := status.FromError(err)
	if !ok {
		return fault.Wrap(err, fault.Internal, "client", err.Error(), "")
	}
	f := &fault.Fault{Kind: FaultKind(st.Code()), Description: st.Message()}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == ErrorDomain {
			f.Code = info.Reason
			f.Description = info.Metadata["description"]
			f.Resolution = info.Metadata["resolution"]
		}
	}
	if f.Code == "" {
		switch st.Code() {
		case codes.Unavailable:
			f.Resolution = "check that `nexstor server` runs and that --engine (or NEXSTOR_ENGINE) names its gRPC address"
		case codes.DeadlineExceeded:
			f.Resolution = "the engine did not answer in time; retry, or raise --timeout"
		}
	}
	return f
}
