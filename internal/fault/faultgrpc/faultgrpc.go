// Package faultgrpc carries faults over gRPC: a fault's kind becomes the exact
// status code, and its code, message and resolution travel in a
// google.rpc.ErrorInfo detail so that a client can print them apart.
//
// Servers install ServerOptions (one interceptor for unary and stream
// calls), so that handlers return plain errors and faults; clients install
// DialOptions, so that every error they get back is a *fault.Fault with the
// server's code, message and resolution and the exact gRPC status.
package faultgrpc

import (
	"context"
	"errors"
	"io"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/fault"
)

// Domain is the google.rpc.ErrorInfo domain of every Nexstor fault.
const Domain = "nexstor.io"

var kindCodes = map[fault.Kind]codes.Code{
	fault.Internal:           codes.Internal,
	fault.InvalidArgument:    codes.InvalidArgument,
	fault.NotFound:           codes.NotFound,
	fault.AlreadyExists:      codes.AlreadyExists,
	fault.FailedPrecondition: codes.FailedPrecondition,
	fault.ResourceExhausted:  codes.ResourceExhausted,
	fault.Unavailable:        codes.Unavailable,
	fault.PermissionDenied:   codes.PermissionDenied,
	fault.Unauthenticated:    codes.Unauthenticated,
	fault.DeadlineExceeded:   codes.DeadlineExceeded,
	fault.Canceled:           codes.Canceled,
	fault.Unimplemented:      codes.Unimplemented,
	fault.Aborted:            codes.Aborted,
	fault.OutOfRange:         codes.OutOfRange,
	fault.DataLoss:           codes.DataLoss,
	fault.Unknown:            codes.Unknown,
}

var codeKinds = func() map[codes.Code]fault.Kind {
	m := make(map[codes.Code]fault.Kind, len(kindCodes))
	for k, c := range kindCodes {
		m[c] = k
	}
	return m
}()

// Code returns the exact gRPC code of a fault kind (Internal for unknown
// kinds).
func Code(k fault.Kind) codes.Code {
	if c, ok := kindCodes[k]; ok {
		return c
	}
	return codes.Internal
}

// Kind returns the fault kind of a gRPC code: the inverse of Code (Internal
// for OK and codes gRPC does not define).
func Kind(c codes.Code) fault.Kind {
	if k, ok := codeKinds[c]; ok {
		return k
	}
	return fault.Internal
}

// CodeOf returns the gRPC code of err as a server would send it and a
// client branches on it: the kind of the first fault in its chain, else
// the code of a status in it, else Canceled or DeadlineExceeded for context
// errors, else Unknown; OK for nil.
func CodeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var f *fault.Fault
	if errors.As(err, &f) {
		return Code(f.Kind)
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	if c := status.FromContextError(err).Code(); c == codes.Canceled || c == codes.DeadlineExceeded {
		return c
	}
	return codes.Unknown
}

// Status converts a fault to a gRPC status whose message is the whole error
// (message, cause, resolution), with an ErrorInfo detail holding the fault
// code as its reason and the message and resolution separately. extra
// metadata is added to the detail (e.g. a leader hint).
func Status(f *fault.Fault, extra map[string]string) *status.Status {
	return newStatus(f, extra)
}

// newStatus builds the status of err, whose chain holds a fault: the kind
// of the first fault, the first code, fault.Message and fault.ResolutionOf.
func newStatus(err error, extra map[string]string) *status.Status {
	md := map[string]string{"description": fault.Message(err), "resolution": fault.ResolutionOf(err)}
	for k, v := range extra {
		md[k] = v
	}
	st := status.New(Code(fault.KindOf(err)), err.Error())
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: fault.CodeOf(err), Domain: Domain, Metadata: md}); err == nil {
		st = d
	}
	return st
}

// ToStatus converts a handler's error to a gRPC status error. An error that
// is a status itself (it has a GRPCStatus method) is returned as it is.
// Otherwise the first fault in its chain gives the code, the chain gives the
// message (so context wrapped around the fault is kept) and the ErrorInfo
// detail; a status in the chain gives its code; context errors give
// Canceled or DeadlineExceeded; anything else is Internal.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	var f *fault.Fault
	if errors.As(err, &f) {
		return newStatus(err, nil).Err()
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	if st := status.FromContextError(err); st.Code() == codes.Canceled || st.Code() == codes.DeadlineExceeded {
		return st.Err()
	}
	return status.Error(codes.Internal, err.Error())
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

// remote carries a status received from a server inside the fault made of
// it, so that status.FromError, status.Code and Info still see the exact
// status (code, details) through the fault. Its text is what it adds to
// the fault's message: nothing when the fault's description already is the
// status message.
type remote struct {
	st   *status.Status
	text string
}

func (r *remote) Error() string              { return r.text }
func (r *remote) GRPCStatus() *status.Status { return r.st }

// FromStatus turns a gRPC error back into a fault: the code, message and
// resolution the server sent, and the kind of the exact status code; the
// status stays reachable with status.FromError. A status without Nexstor
// details (one made by gRPC itself, such as a connection failure) becomes a
// fault of code rpc.<code> whose description is the status message.
func FromStatus(err error) *fault.Fault {
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err)
		if c := st.Code(); c != codes.Canceled && c != codes.DeadlineExceeded {
			st = status.New(codes.Unknown, err.Error())
		}
	}
	f := rpcFault(st.Code())
	f.Description = st.Message()
	if info := Info(err); info != nil {
		f.Code = info.Reason
		if d, ok := info.Metadata["description"]; ok {
			f.Description = d
		}
		f.Resolution = info.Metadata["resolution"]
	}
	f.Err = &remote{st: st}
	return f
}

// rpcFault returns the fault of a status that carries no Nexstor details,
// its kind the status code's; each code is written out for the registry
// test.
func rpcFault(c codes.Code) *fault.Fault {
	switch c {
	case codes.Canceled:
		return fault.New(fault.Canceled, "rpc.canceled", "", "")
	case codes.InvalidArgument:
		return fault.New(fault.InvalidArgument, "rpc.invalid_argument", "", "")
	case codes.DeadlineExceeded:
		return fault.New(fault.DeadlineExceeded, "rpc.deadline_exceeded", "", "")
	case codes.NotFound:
		return fault.New(fault.NotFound, "rpc.not_found", "", "")
	case codes.AlreadyExists:
		return fault.New(fault.AlreadyExists, "rpc.already_exists", "", "")
	case codes.PermissionDenied:
		return fault.New(fault.PermissionDenied, "rpc.permission_denied", "", "")
	case codes.ResourceExhausted:
		return fault.New(fault.ResourceExhausted, "rpc.resource_exhausted", "", "")
	case codes.FailedPrecondition:
		return fault.New(fault.FailedPrecondition, "rpc.failed_precondition", "", "")
	case codes.Aborted:
		return fault.New(fault.Aborted, "rpc.aborted", "", "")
	case codes.OutOfRange:
		return fault.New(fault.OutOfRange, "rpc.out_of_range", "", "")
	case codes.Unimplemented:
		return fault.New(fault.Unimplemented, "rpc.unimplemented", "", "")
	case codes.Internal:
		return fault.New(fault.Internal, "rpc.internal", "", "")
	case codes.Unavailable:
		return fault.New(fault.Unavailable, "rpc.unavailable", "", "")
	case codes.DataLoss:
		return fault.New(fault.DataLoss, "rpc.data_loss", "", "")
	case codes.Unauthenticated:
		return fault.New(fault.Unauthenticated, "rpc.unauthenticated", "", "")
	}
	return fault.New(fault.Unknown, "rpc.unknown", "", "")
}

// FromError converts the error of a gRPC call for its caller: nil stays
// nil; a status becomes FromStatus's fault; a fault made on the client side
// around a status (security.Explain) keeps its code and resolution, with
// the status's message as its cause's text. The exact status stays
// reachable with status.FromError.
func FromError(err error) error {
	if err == nil {
		return nil
	}
	if f, ok := err.(*fault.Fault); ok {
		if _, isRemote := f.Err.(*remote); !isRemote {
			if st, isStatus := f.Err.(interface{ GRPCStatus() *status.Status }); isStatus {
				c := *f
				c.Err = &remote{st: st.GRPCStatus(), text: st.GRPCStatus().Message()}
				return &c
			}
		}
		return err
	}
	var f *fault.Fault
	if errors.As(err, &f) {
		return err
	}
	return FromStatus(err)
}

// UnaryServerInterceptor converts every error a unary handler returns with
// ToStatus, so that handlers return plain errors and faults.
func UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		resp, err := h(ctx, req)
		if err != nil {
			return nil, ToStatus(err)
		}
		return resp, nil
	}
}

// StreamServerInterceptor converts every error a stream handler returns
// with ToStatus.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return ToStatus(h(srv, ss))
	}
}

// ServerOptions installs the server interceptors. Give them before other
// interceptor options, so that they see the errors of every interceptor
// after them (authorization included).
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(StreamServerInterceptor())}
}

// UnaryClientInterceptor converts the error of every unary call with
// FromError.
func UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return FromError(invoker(ctx, method, req, reply, cc, opts...))
	}
}

// StreamClientInterceptor converts the errors of opening a stream and of
// its messages with FromError; io.EOF, the end of a stream, stays io.EOF.
func StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, FromError(err)
		}
		return WrapClientStream(s), nil
	}
}

// WrapClientStream returns s with the errors of its messages converted with
// FromError (io.EOF stays io.EOF), for streams opened without the client
// interceptors.
func WrapClientStream(s grpc.ClientStream) grpc.ClientStream { return clientStream{s} }

type clientStream struct{ grpc.ClientStream }

func (s clientStream) SendMsg(m any) error { return streamErr(s.ClientStream.SendMsg(m)) }
func (s clientStream) RecvMsg(m any) error { return streamErr(s.ClientStream.RecvMsg(m)) }

func streamErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	return FromError(err)
}

// DialOptions installs the client interceptors. Give them before other
// interceptor options, so that they see the errors of every interceptor
// after them (security.ExplainInterceptors included).
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithChainUnaryInterceptor(UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(StreamClientInterceptor())}
}
