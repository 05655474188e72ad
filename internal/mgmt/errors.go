package mgmt

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/fault"
)

// ErrorDomain is the ErrorInfo domain of Nexstor faults.
const ErrorDomain = "nexstor.io"

// Fault codes of the management service.
const (
	CodeNotLeader     = "mgmt.not_leader"
	CodeForeignSystem = "mgmt.foreign_system"
	CodeExcluded      = "mgmt.excluded"
	CodeNotMember     = "mgmt.not_member"
	CodeBadSelection  = "mgmt.bad_selection"
	CodeBadRequest    = "mgmt.bad_request"
	CodeStore         = "mgmt.store"
)

// NotLeaderError is returned by a replica that is not the leader. Leader is
// the leader's address, or "" while an election is under way.
type NotLeaderError struct {
	Leader string
}

func (e *NotLeaderError) Error() string {
	if e.Leader == "" {
		return "this management service replica is not the leader and no leader is elected yet; retry shortly"
	}
	return "this management service replica is not the leader; the leader is " + e.Leader
}

// GRPCStatus makes the error a gRPC Unavailable status carrying the leader
// hint in an ErrorInfo detail (metadata "leader").
func (e *NotLeaderError) GRPCStatus() *status.Status {
	st := status.New(codes.Unavailable, e.Error())
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: CodeNotLeader, Domain: ErrorDomain,
		Metadata: map[string]string{"leader": e.Leader,
			"description": "not the leader", "resolution": "retry at the leader"}}); err == nil {
		st = d
	}
	return st
}

// LeaderHint extracts the leader hint from an error returned by a replica:
// ok is true when err says "not the leader"; leader may still be "" during
// an election.
func LeaderHint(err error) (leader string, ok bool) {
	var nl *NotLeaderError
	if errors.As(err, &nl) {
		return nl.Leader, true
	}
	st, isStatus := status.FromError(err)
	if !isStatus || st.Code() != codes.Unavailable {
		return "", false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == ErrorDomain && info.Reason == CodeNotLeader {
			return info.Metadata["leader"], true
		}
	}
	return "", false
}

func grpcCode(k fault.Kind) codes.Code {
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

// ToStatus converts a handler error to a gRPC status error with the fault
// code, description and resolution in an ErrorInfo detail.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	var nl *NotLeaderError
	if errors.As(err, &nl) {
		return nl.GRPCStatus().Err()
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
	st := status.New(grpcCode(f.Kind), err.Error())
	if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: f.Code, Domain: ErrorDomain,
		Metadata: map[string]string{"description": desc, "resolution": f.Resolution}}); derr == nil {
		st = d
	}
	return st.Err()
}

// FaultCode returns the fault code carried by a gRPC error from the
// management service ("" when there is none).
func FaultCode(err error) string {
	var f *fault.Fault
	if errors.As(err, &f) {
		return f.Code
	}
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == ErrorDomain {
			return info.Reason
		}
	}
	return ""
}
