package mgmt

import (
	"errors"

	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
)

// ErrorDomain is the ErrorInfo domain of Nexstor faults.
const ErrorDomain = faultgrpc.Domain

// Fault codes of the management service.
const (
	CodeNotLeader     = mgmtclient.CodeNotLeader
	CodeForeignSystem = "mgmt.foreign_system"
	CodeExcluded      = "mgmt.excluded"
	CodeNotMember     = "mgmt.not_member"
	CodeBadSelection  = "mgmt.bad_selection"
	CodeBadRequest    = "mgmt.bad_request"
	CodeStore         = mgmtclient.CodeStore
	CodeAddressInUse  = "mgmt.address_in_use"
	CodeNoRanks       = "mgmt.no_ranks"
	CodeNameInUse     = "mgmt.name_in_use"
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
	return faultgrpc.Status(fault.New(fault.Unavailable, CodeNotLeader, e.Error(), "retry at the leader"),
		map[string]string{"leader": e.Leader})
}

// LeaderHint extracts the leader hint from an error returned by a replica
// (a *NotLeaderError) or by a call to one (mgmtclient.LeaderHint): ok is
// true when err says "not the leader"; leader may still be "" during an
// election.
func LeaderHint(err error) (leader string, ok bool) {
	var nl *NotLeaderError
	if errors.As(err, &nl) {
		return nl.Leader, true
	}
	return mgmtclient.LeaderHint(err)
}

// ToStatus converts a handler error to a gRPC status error with the fault
// code, description and resolution in an ErrorInfo detail.
func ToStatus(err error) error {
	var nl *NotLeaderError
	if errors.As(err, &nl) {
		return nl.GRPCStatus().Err()
	}
	return faultgrpc.ToStatus(err)
}

// FaultCode returns the fault code carried by a gRPC error from the
// management service ("" when there is none).
func FaultCode(err error) string {
	var f *fault.Fault
	if errors.As(err, &f) {
		return f.Code
	}
	if info := faultgrpc.Info(err); info != nil {
		return info.Reason
	}
	return ""
}
