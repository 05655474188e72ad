package csi

import (
	"fmt"

	"google.golang.org/grpc/codes"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

// Fault codes of the CSI driver. Each maps to the gRPC code the CSI spec
// asks for in that situation (fault kind = status code, see faultgrpc).
const (
	CodeBadRequest     = "csi.bad_request"
	CodeBadToken       = "csi.bad_token"
	CodeHostNQN        = "csi.host_nqn"
	CodeCapability     = "csi.capability"
	CodeCapacity       = "csi.capacity"
	CodeNoCapacity     = "csi.no_capacity"
	CodeVolumeExists   = "csi.volume_exists"
	CodeVolumeNotFound = "csi.volume_not_found"
	CodeNodeNotFound   = "csi.node_not_found"
	CodeBusy           = "csi.busy"
	CodeNotStaged      = "csi.not_staged"
	CodeIncompatible   = "csi.incompatible"
	CodeSingleWriter   = "csi.single_writer"
	CodeAttach         = "csi.attach"
	CodeNoDevice       = "csi.no_device"
	CodeIdentity       = "csi.identity"
	CodeFilesystem     = "csi.filesystem"
	CodeMkfs           = "csi.mkfs"
	CodeMount          = "csi.mount"
	CodeResize         = "csi.resize"
	CodeState          = "csi.state"
)

// badRequest is an InvalidArgument fault: a required field is missing or
// a value is not one the driver accepts.
func badRequest(format string, a ...any) error {
	return fault.New(fault.InvalidArgument, CodeBadRequest, fmt.Sprintf(format, a...), "")
}

func volumeNotFound(id string) error {
	return fault.New(fault.NotFound, CodeVolumeNotFound, fmt.Sprintf("volume %s does not exist", id), "")
}

// busyErr is the answer to a call for a volume that another call is
// working on: the CO retries (CSI: ABORTED, "operation pending").
func busyErr(id string) error {
	return fault.New(fault.Aborted, CodeBusy, fmt.Sprintf("volume %s: another operation on it is under way", id), "")
}

// isCode reports whether err carries the gRPC code c: a fault of that
// kind, or a status of that code (as the management service's client
// returns them).
func isCode(err error, c codes.Code) bool { return err != nil && faultgrpc.CodeOf(err) == c }
