// Package faultgrpc carries faults over gRPC: a fault's kind becomes the exact
// status code, and its code, description and resolution travel in a
// google.rpc.ErrorInfo detail so that a client can print them apart.
package faultgrpc

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/fault"
)

// Domain is the google.rpc.ErrorInfo domain of every Nexstor fault.
const Domain = "nexstor.io"

var kindCodes = map[fault.Kind]codes.Code{
	fault.InvalidArgument:    codes.InvalidArgument,
	fault.NotFound:           codes.NotFound,
	fault.AlreadyExists:      codes.AlreadyExists,
	fault.FailedPrecondition: codes.FailedPrecondition,
	fault.ResourceExhausted:  codes.ResourceExhausted,
	fault.Unavailable:        codes.Unavailable,
	fault.PermissionDenied:   codes.PermissionDenied,
	fault.Unauthenticated:    codes.Unauthenticated,
}

// Code returns the exact gRPC code of a fault kind (Internal for Internal
// and unknown kinds).
func Code(k fault.Kind) codes.Code {
	if c, ok := kindCodes[k]; ok {
		return c
	}
	return codes.Internal
}

// Kind returns the fault kind of a gRPC code: the inverse of Code.
func Kind(c codes.Code) fault.Kind {
	for k, kc := range kindCodes {
		if kc == c {
			return k
		}
	}
	return fault.Internal
}

// Status converts a fault to a gRPC status whose message is the whole error
// (description, cause, resolution), with an ErrorInfo detail holding the
// fault code as its reason and the description and resolution separately.
// extra metadata is added to the detail (e.g. a leader hint).
func Status(f *fault.Fault, extra map[string]string) *status.Status {
	return newStatus(f.Error(), f, extra)
}

func newStatus(msg string, f *fault.Fault, extra map[string]string) *status.Status {
	desc := f.Description
	if f.Err != nil {
		desc += ": " + f.Err.Error()
	}
	md := map[string]string{"description": desc, "resolution": f.Resolution}
	for k, v := range extra {
		md[k] = v
	}
	st := status.New(Code(f.Kind), msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: f.Code, Domain: Domain, Metadata: md}); err == nil {
		st = d
	}
	return st
}

// ToStatus converts a handler's error to a gRPC status error: the code from
// the first fault in its chain, the message from the whole error (so context
// wrapped around the fault is kept). Errors that already are statuses pass
// through; errors that are not faults become Internal.
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
	return newStatus(err.Error(), f, nil).Err()
}

// Info returns the Nexstor ErrorInfo detail of a gRPC error, or nil.
func Info(err error) *errdetails.ErrorInfo {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == Domain {
			return info
		}
	}
	return nil
}

// FromStatus turns a gRPC error back into a fault, so that a client can print
// the description and the resolution apart. Errors without Nexstor details
// become faults whose description is the status message.
func FromStatus(err error) *fault.Fault {
	st, ok := status.FromError(err)
	if !ok {
		return fault.Wrap(err, fault.Internal, "client", err.Error(), "")
	}
	f := &fault.Fault{Kind: Kind(st.Code()), Description: st.Message()}
	if info := Info(err); info != nil {
		f.Code = info.Reason
		f.Description = info.Metadata["description"]
		f.Resolution = info.Metadata["resolution"]
	}
	return f
}
