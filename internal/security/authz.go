package security

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Policy maps full gRPC method names ("/nexstor.mgmt.v1.Mgmt/SystemStop")
// to the roles allowed to call them. Methods not in the table are allowed
// to Default (admin only when Default is nil), so that a method added
// without a rule fails closed for everyone but the operator.
type Policy struct {
	Methods map[string][]Role
	Default []Role
}

// Allow adds roles to method and returns p (for chaining).
func (p *Policy) Allow(method string, roles ...Role) *Policy {
	if p.Methods == nil {
		p.Methods = map[string][]Role{}
	}
	p.Methods[method] = append(p.Methods[method], roles...)
	return p
}

// Merge adds every rule of o to p and returns p.
func (p *Policy) Merge(o *Policy) *Policy {
	for m, rs := range o.Methods {
		p.Allow(m, rs...)
	}
	return p
}

// Confine makes methods the only ones role may call: role is removed from
// every other rule (and from Default) and allowed on each of methods. It
// returns p (for chaining). Use it last, after the rules of every service
// are merged, so that no merged table widens the role again.
func (p *Policy) Confine(role Role, methods ...string) *Policy {
	for m, rs := range p.Methods {
		p.Methods[m] = slices.DeleteFunc(slices.Clone(rs), func(r Role) bool { return r == role })
	}
	if p.Default != nil {
		p.Default = slices.DeleteFunc(slices.Clone(p.Default), func(r Role) bool { return r == role })
	}
	for _, m := range methods {
		p.Allow(m, role)
	}
	return p
}

// Allowed returns the roles allowed to call method.
func (p *Policy) Allowed(method string) []Role {
	if rs, ok := p.Methods[method]; ok {
		return rs
	}
	if p.Default != nil {
		return p.Default
	}
	return []Role{RoleAdmin}
}

// Permits reports whether role may call method. RoleInsecure may call
// anything.
func (p *Policy) Permits(method string, role Role) bool {
	if role == RoleInsecure {
		return true
	}
	for _, r := range p.Allowed(method) {
		if r == role {
			return true
		}
	}
	return false
}

type roleKey struct{}

// Caller is who made a call, as the authorizer established it.
type Caller struct {
	Role Role
	// Name is the certificate's common name ("" without TLS).
	Name string
}

// CallerFrom returns the caller of the RPC whose context this is.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(roleKey{}).(Caller)
	return c, ok
}

// Authorizer checks every call against a Policy by the role in the client's
// verified certificate. With Insecure set, calls without TLS are allowed as
// RoleInsecure (the server was started with --insecure); otherwise they are
// refused.
type Authorizer struct {
	Policy   *Policy
	Insecure bool
	Log      *slog.Logger
}

// authorize returns the context carrying the caller, or a gRPC status error
// (Unauthenticated or PermissionDenied) that names the method, the role and
// the fix.
func (a *Authorizer) authorize(ctx context.Context, method string) (context.Context, error) {
	caller, err := a.identify(ctx)
	if err != nil {
		a.logger().Warn("refused call", "method", method, "err", err)
		return nil, err
	}
	if !a.Policy.Permits(method, caller.Role) {
		allowed := a.Policy.Allowed(method)
		names := make([]string, len(allowed))
		for i, r := range allowed {
			names[i] = string(r)
		}
		sort.Strings(names)
		a.logger().Warn("refused call", "method", method, "role", caller.Role, "cert", caller.Name)
		return nil, status.Errorf(codes.PermissionDenied,
			"%s: role %q (certificate %q) may not call this method; it needs the %s role (use an admin certificate from `nexstor certgen`)",
			method, caller.Role, caller.Name, strings.Join(names, " or "))
	}
	return context.WithValue(ctx, roleKey{}, caller), nil
}

func (a *Authorizer) identify(ctx context.Context) (Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Caller{}, status.Error(codes.Unauthenticated, "no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		if a.Insecure {
			return Caller{Role: RoleInsecure}, nil
		}
		return Caller{}, status.Error(codes.Unauthenticated,
			"the connection is not authenticated by TLS; connect with a certificate from `nexstor certgen`")
	}
	var leaf *x509.Certificate
	if len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
		leaf = ti.State.VerifiedChains[0][0]
	}
	if leaf == nil {
		return Caller{}, status.Error(codes.Unauthenticated,
			"no verified client certificate; connect with a certificate signed by the system CA")
	}
	role, err := RoleOf(leaf)
	if err != nil {
		return Caller{}, status.Error(codes.PermissionDenied, err.Error())
	}
	return Caller{Role: role, Name: leaf.Subject.CommonName}, nil
}

func (a *Authorizer) logger() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.Default()
}

// Unary is the unary server interceptor.
func (a *Authorizer) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		ctx, err := a.authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// Stream is the stream server interceptor.
func (a *Authorizer) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ctx, err := a.authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return h(srv, &wrappedStream{ss, ctx})
	}
}

// ServerOptions returns the interceptors as server options.
func (a *Authorizer) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(a.Unary()), grpc.ChainStreamInterceptor(a.Stream())}
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

// String describes the policy, one method per line, for logs and docs.
func (p *Policy) String() string {
	ms := make([]string, 0, len(p.Methods))
	for m := range p.Methods {
		ms = append(ms, m)
	}
	sort.Strings(ms)
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "%s %v\n", m, p.Methods[m])
	}
	return b.String()
}
