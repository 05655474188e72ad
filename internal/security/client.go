package security

import (
	"context"
	"log/slog"

	"google.golang.org/grpc"
)

// ExplainInterceptors returns client interceptors that pass every RPC error
// through Explain, so that a CLI prints "the server requires TLS" rather
// than "error reading server preface: EOF". insecureMode says whether the
// client connects without TLS.
func ExplainInterceptors(insecureMode bool) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
			invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return Explain(invoker(ctx, method, req, reply, cc, opts...), insecureMode)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
			streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			return s, Explain(err, insecureMode)
		}),
	}
}

// LogInsecure records the explicit choice to run without transport
// security; every component calls it once at start when --insecure (or
// transport_config.allow_insecure) is set.
func LogInsecure(log *slog.Logger, component string) {
	if log == nil {
		log = slog.Default()
	}
	log.Warn("transport security is OFF (--insecure): connections are neither encrypted nor authenticated, "+
		"and every caller may call every method; use only for development", "component", component)
}
