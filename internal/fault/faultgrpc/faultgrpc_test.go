package faultgrpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/fault"
)

func TestCodesRoundTrip(t *testing.T) {
	seen := map[codes.Code]bool{}
	for k := fault.Internal; k <= fault.LastKind; k++ {
		c := Code(k)
		if got := Kind(c); got != k {
			t.Errorf("Kind(Code(%v)) = %v", k, got)
		}
		if seen[c] {
			t.Errorf("two kinds map to %v", c)
		}
		seen[c] = true
	}
	// Every gRPC code but OK has its own kind.
	for c := codes.Canceled; c <= codes.Unauthenticated; c++ {
		if !seen[c] {
			t.Errorf("gRPC code %v has no kind", c)
		}
	}
	if Code(fault.Kind(99)) != codes.Internal {
		t.Error("unknown kind must map to Internal")
	}
}

func TestStatusRoundTrip(t *testing.T) {
	f := fault.Wrap(errors.New("disk gone"), fault.NotFound, "pool.not_found", `pool "p0" not found`, "list the pools")
	err := ToStatus(fmt.Errorf("import: %w", f))
	st, _ := status.FromError(err)
	if st.Code() != codes.NotFound {
		t.Fatalf("code %v, want NotFound", st.Code())
	}
	if st.Message() != "import: "+f.Error() {
		t.Errorf("message %q lost the wrapped context", st.Message())
	}
	back := FromStatus(err)
	if back.Code != "pool.not_found" || back.Kind != fault.NotFound || back.Resolution != "list the pools" ||
		back.Description != `import: pool "p0" not found: disk gone` {
		t.Errorf("FromStatus = %+v", back)
	}
	// The fault says the message once and the resolution apart.
	if back.Error() != `import: pool "p0" not found: disk gone (list the pools)` || fault.Message(back) != back.Description {
		t.Errorf("Error %q, Message %q", back.Error(), fault.Message(back))
	}
	// The exact status stays reachable through the fault.
	if status.Code(back) != codes.NotFound || CodeOf(back) != codes.NotFound || Info(back).GetReason() != "pool.not_found" {
		t.Errorf("status through the fault: %v %v %v", status.Code(back), CodeOf(back), Info(back))
	}
	if s, _ := status.FromError(ToStatus(errors.New("boom"))); s.Code() != codes.Internal {
		t.Errorf("plain error: code %v, want Internal", s.Code())
	}
	if s, _ := status.FromError(ToStatus(fmt.Errorf("wait: %w", context.DeadlineExceeded))); s.Code() != codes.DeadlineExceeded {
		t.Errorf("deadline: code %v, want DeadlineExceeded", s.Code())
	}
	if ToStatus(nil) != nil {
		t.Error("ToStatus(nil) != nil")
	}
	plain := FromStatus(status.Error(codes.Unavailable, "down"))
	if plain.Kind != fault.Unavailable || plain.Description != "down" || plain.Code != "rpc.unavailable" ||
		fault.ResolutionOf(plain) == "" {
		t.Errorf("FromStatus(plain) = %+v", plain)
	}
	for c := codes.Canceled; c <= codes.Unauthenticated; c++ {
		f := FromStatus(status.Error(c, "x"))
		s, ok := fault.Lookup(f.Code)
		if !ok || s.Kind != f.Kind || Code(f.Kind) != c {
			t.Errorf("%v: fault %+v, registered %+v %v", c, f, s, ok)
		}
	}
}

// A fault that wraps a status received from another server keeps its own
// code: the outermost fault decides.
func TestToStatusFaultAroundRemoteStatus(t *testing.T) {
	inner := FromStatus(status.Error(codes.Unavailable, "connection refused"))
	outer := fault.Wrap(inner, fault.FailedPrecondition, "nexus.error", `nexus "n0"`, "check the children")
	st, _ := status.FromError(ToStatus(outer))
	if st.Code() != codes.FailedPrecondition || Info(st.Err()).GetReason() != "nexus.error" {
		t.Fatalf("status %v %v", st.Code(), Info(st.Err()))
	}
	if d := Info(st.Err()).GetMetadata()["description"]; d != `nexus "n0": connection refused` {
		t.Errorf("description %q", d)
	}
}

// serve runs a health service whose Check returns err, behind the server
// interceptors, and returns a client connection with the client
// interceptors.
func serve(t *testing.T, err error) *grpc.ClientConn {
	t.Helper()
	ln, lerr := net.Listen("tcp", "127.0.0.1:0")
	if lerr != nil {
		t.Fatal(lerr)
	}
	srv := grpc.NewServer(ServerOptions()...)
	healthpb.RegisterHealthServer(srv, failing{err: err})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	cc, cerr := grpc.NewClient(ln.Addr().String(), append(DialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if cerr != nil {
		t.Fatal(cerr)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

type failing struct {
	healthpb.UnimplementedHealthServer
	err error
}

func (f failing) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return nil, f.err
}

func (f failing) Watch(*healthpb.HealthCheckRequest, healthpb.Health_WatchServer) error { return f.err }

// TestInterceptors sends plain errors and faults from a handler over a real
// connection: the client gets a *fault.Fault with the exact code, the
// message and the resolution, for unary and stream calls.
func TestInterceptors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		err        error
		code       codes.Code
		faultCode  string
		message    string
		resolution string
	}{
		{fmt.Errorf(`replica "r0": %w`, fault.New(fault.FailedPrecondition, "replica.shared", `replica "r0" is shared over nbd`, "unshare it")),
			codes.FailedPrecondition, "replica.shared", `replica "r0" is shared over nbd`, "unshare it"},
		{fault.New(fault.NotFound, "pool.not_found", `pool "p9" not found`, ""),
			codes.NotFound, "pool.not_found", `pool "p9" not found`, "list the pools with `nexctl pool list`, or import the pool with `nexctl pool import`"},
		{errors.New("boom"), codes.Internal, "rpc.internal", "boom", "see the server log"},
		{status.Error(codes.Unimplemented, "not here"), codes.Unimplemented, "rpc.unimplemented", "not here", ""},
	} {
		cl := healthpb.NewHealthClient(serve(t, tc.err))
		_, err := cl.Check(ctx, &healthpb.HealthCheckRequest{})
		stream, serr := cl.Watch(ctx, &healthpb.HealthCheckRequest{})
		if serr == nil {
			_, serr = stream.Recv()
		}
		for _, err := range []error{err, serr} {
			f, ok := err.(*fault.Fault)
			if !ok {
				t.Errorf("%v: got %T %v, want a *fault.Fault", tc.err, err, err)
				continue
			}
			if status.Code(f) != tc.code || fault.KindOf(f) != Kind(tc.code) || f.Code != tc.faultCode ||
				fault.Message(f) != tc.message || (tc.resolution != "" && fault.ResolutionOf(f) != tc.resolution) {
				t.Errorf("%v: got code %v kind %v fault %q message %q resolution %q", tc.err, status.Code(f),
					fault.KindOf(f), f.Code, fault.Message(f), fault.ResolutionOf(f))
			}
		}
	}
}

// A fault made on the client around a status (as security.Explain does)
// keeps its code and says the status message once, without the "rpc
// error:" preamble.
func TestFromErrorClientFault(t *testing.T) {
	raw := status.Error(codes.Unavailable, "connection closed before server preface received")
	f := fault.Wrap(raw, fault.Unavailable, "security.tls_mismatch", "the server requires TLS", "drop --insecure")
	got := FromError(f)
	if fault.CodeOf(got) != "security.tls_mismatch" || status.Code(got) != codes.Unavailable ||
		fault.Message(got) != "the server requires TLS: connection closed before server preface received" {
		t.Fatalf("got %q code %q status %v", fault.Message(got), fault.CodeOf(got), status.Code(got))
	}
	if f.Err != raw {
		t.Error("FromError changed the fault it was given")
	}
	if FromError(nil) != nil {
		t.Error("FromError(nil) != nil")
	}
}
