package server

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// lazy lets a gRPC server that is already serving gain the implementations
// of services registered before Serve: a node answers the node service from
// its first moment, while the engine exists only once the node is formatted
// and the management service only once its etcd member has started. Until
// Set, every call of the services registered through it fails with
// Unavailable and the reason given to newLazy.
type lazy struct {
	impls  atomic.Pointer[map[string]any] // service name -> implementation
	reason atomic.Pointer[string]
}

func newLazy(reason string) *lazy {
	l := &lazy{}
	l.reason.Store(&reason)
	return l
}

// Clear withdraws the implementations: calls fail with Unavailable and
// reason again.
func (l *lazy) Clear(reason string) {
	l.reason.Store(&reason)
	l.impls.Store(nil)
}

// Register registers on s, through l, the services that register
// registers (called with a registrar that only records their descriptions;
// the implementations it passes are ignored).
func (l *lazy) Register(s *grpc.Server, register func(grpc.ServiceRegistrar)) {
	register(lazyRegistrar{l, s})
}

// Set installs the implementations: register is called with a registrar
// that records each service's implementation by name.
func (l *lazy) Set(register func(grpc.ServiceRegistrar)) {
	rec := recorder{}
	register(rec)
	l.impls.Store((*map[string]any)(&rec))
}

type recorder map[string]any

func (r recorder) RegisterService(desc *grpc.ServiceDesc, impl any) { r[desc.ServiceName] = impl }

func (l *lazy) get(service string) (any, error) {
	m := l.impls.Load()
	if m == nil {
		return nil, status.Error(codes.Unavailable, *l.reason.Load())
	}
	impl, ok := (*m)[service]
	if !ok {
		return nil, status.Errorf(codes.Unimplemented, "service %s is not served by this node", service)
	}
	return impl, nil
}

type lazyRegistrar struct {
	l *lazy
	s *grpc.Server
}

// RegisterService registers a copy of desc whose handlers fetch the
// implementation at call time.
func (r lazyRegistrar) RegisterService(desc *grpc.ServiceDesc, _ any) {
	d := *desc
	name := desc.ServiceName
	d.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, m := range desc.Methods {
		h := m.Handler
		d.Methods[i] = grpc.MethodDesc{MethodName: m.MethodName,
			Handler: func(_ any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
				impl, err := r.l.get(name)
				if err != nil {
					return nil, err
				}
				return h(impl, ctx, dec, ic)
			}}
	}
	d.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, st := range desc.Streams {
		h := st.Handler
		st.Handler = func(_ any, stream grpc.ServerStream) error {
			impl, err := r.l.get(name)
			if err != nil {
				return err
			}
			return h(impl, stream)
		}
		d.Streams[i] = st
	}
	r.s.RegisterService(&d, nil) // nil: grpc checks HandlerType only against a non-nil implementation
}
