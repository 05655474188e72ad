// Package engineclient is the client of one engine's gRPC API
// (api/engine/v1: pools, replicas, snapshots, nexuses, host), for nexctl and for
// programs that drive engines, such as the management service.
//
// Every method takes a context and honours its deadline and cancellation.
// Every error is a *fault.Fault: the code, message and resolution the engine
// sent, and the exact gRPC status, which status.Code and fault.KindOf both
// report. Connecting is bounded on its own (Options.DialTimeout): a call to
// an address where no engine answers fails within that time, with code
// engine.unreachable, whatever the call's deadline.
//
// The package imports only the API, the fault packages and the client side
// of transport security, never the engine itself.
package engineclient

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/security"
)

// DefaultPort is the engine's gRPC port, used when an address names none.
const DefaultPort = 10124

// DefaultDialTimeout bounds one attempt to connect (TCP, TLS and HTTP/2
// handshakes) when Options.DialTimeout is zero: long enough for a loaded
// host across a data center, short enough that a dead address fails fast.
const DefaultDialTimeout = 3 * time.Second

// Options configure a Client made by New.
type Options struct {
	// TLS names the CA certificate and this client's certificate and key
	// (from `nexstor certgen`) for mutual TLS. Unused when Insecure is set
	// or Credentials is given.
	TLS security.Files
	// Insecure connects in plain text, to an engine started with
	// --insecure.
	Insecure bool
	// Credentials, when not nil, replace TLS and Insecure.
	Credentials credentials.TransportCredentials
	// DialTimeout bounds each attempt to connect; 0 means
	// DefaultDialTimeout. A call made while no connection is up fails when
	// an attempt fails or times out, even if its own deadline is later.
	DialTimeout time.Duration
	// DialOptions are added after the client's own options.
	DialOptions []grpc.DialOption
}

// Client calls one engine. It is safe for concurrent use; Close releases
// its connection.
type Client struct {
	addr     string
	conn     *grpc.ClientConn // nil when made by NewFromConn
	pools    enginev1.PoolServiceClient
	replicas enginev1.ReplicaServiceClient
	nexuses  enginev1.NexusServiceClient
	host     enginev1.HostServiceClient
	snaps    enginev1.SnapshotServiceClient
}

// ParseAddr returns the gRPC target of an engine address as people write
// it: host:port, host (DefaultPort), an IPv6 literal with or without
// brackets ("::1", "[::1]", "[::1]:10124"). Host lists are refused: one
// client talks to one engine.
func ParseAddr(addr string) (string, error) {
	s := strings.TrimSpace(addr)
	bad := func(why string) (string, error) {
		return "", fault.New(fault.InvalidArgument, "engine.address", fmt.Sprintf("engine address %q: %s", addr, why), "")
	}
	if s == "" {
		return bad("empty")
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return net.JoinHostPort(ip.String(), strconv.Itoa(DefaultPort)), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = s, strconv.Itoa(DefaultPort)
		if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
			host = s[1 : len(s)-1]
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return bad(fmt.Sprintf("port %q is not a number from 1 to 65535", port))
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return net.JoinHostPort(ip.String(), port), nil
	}
	if host == "" {
		return bad("no host")
	}
	for _, c := range host {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return bad(fmt.Sprintf("%q is not allowed in a host name", c))
		}
	}
	return net.JoinHostPort(host, port), nil
}

// New returns a client of the engine at addr (see ParseAddr). It does not
// connect: the first call does, within Options.DialTimeout.
func New(addr string, o Options) (*Client, error) {
	target, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	creds := o.Credentials
	if creds == nil {
		if creds, err = security.ClientCredentials(o.TLS, o.Insecure); err != nil {
			return nil, err
		}
	}
	dt := o.DialTimeout
	if dt <= 0 {
		dt = DefaultDialTimeout
	}
	c := &Client{addr: target}
	// Interceptors run in the order given: unreachable sees the faults that
	// faultgrpc makes of what security.Explain left as statuses.
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: dt,
			Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: dt}}),
		grpc.WithChainUnaryInterceptor(c.unreachable),
	}
	opts = append(opts, faultgrpc.DialOptions()...)
	if o.Credentials == nil {
		opts = append(opts, security.ExplainInterceptors(o.Insecure)...)
	}
	opts = append(opts, o.DialOptions...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fault.Wrap(err, fault.InvalidArgument, "engine.address", fmt.Sprintf("engine address %q", addr), "")
	}
	c.conn = conn
	c.setServices(conn)
	return c, nil
}

// NewFromConn returns a client that calls the engine over cc, which the
// caller owns (Close does not close it). Errors are faults whether or not
// cc has the faultgrpc interceptors; cc's own dial options decide how long
// connecting may take.
func NewFromConn(cc grpc.ClientConnInterface) *Client {
	c := &Client{}
	c.setServices(faultConn{cc})
	return c
}

func (c *Client) setServices(cc grpc.ClientConnInterface) {
	c.pools = enginev1.NewPoolServiceClient(cc)
	c.replicas = enginev1.NewReplicaServiceClient(cc)
	c.nexuses = enginev1.NewNexusServiceClient(cc)
	c.host = enginev1.NewHostServiceClient(cc)
	c.snaps = enginev1.NewSnapshotServiceClient(cc)
}

// Addr is the engine's address as dialled ("" for NewFromConn).
func (c *Client) Addr() string { return c.addr }

// Close closes the connection of a client made by New.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// unreachable turns the failure of a call that never reached a server (no
// connection could be made) into a fault naming the engine's address.
// Faults that explain the failure better (transport security) are kept.
func (c *Client) unreachable(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var p peer.Peer
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
	if err != nil && p.Addr == nil && fault.CodeOf(err) == "rpc.unavailable" {
		return fault.Wrap(err, fault.Unavailable, "engine.unreachable", fmt.Sprintf("engine at %s is unreachable", c.addr),
			fmt.Sprintf("check that `nexstor server` runs at %s and that it is reachable from here", c.addr))
	}
	return err
}

// faultConn makes faults of the errors of a connection without the
// faultgrpc interceptors.
type faultConn struct{ cc grpc.ClientConnInterface }

func (f faultConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return faultgrpc.FromError(f.cc.Invoke(ctx, method, args, reply, opts...))
}

func (f faultConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := f.cc.NewStream(ctx, desc, method, opts...)
	if err != nil {
		return nil, faultgrpc.FromError(err)
	}
	return faultgrpc.WrapClientStream(s), nil
}
