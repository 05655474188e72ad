// Package mgmtclient is the client of the management service: it calls the
// service through any of its access points and follows the leader. It holds
// client code only (no etcd, no server), so that nexctl links none of the
// service.
package mgmtclient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/security"
)

// Fault codes of the management service that its clients act on.
const (
	// CodeNotLeader: the replica called is not the leader; the ErrorInfo
	// metadata "leader" names the leader, "" during an election.
	CodeNotLeader = "mgmt.not_leader"
	// CodeStore: the service's store (etcd) failed or is contended.
	CodeStore = "mgmt.store"
)

// DefaultDialTimeout bounds one attempt to connect to an access point when
// Options.DialTimeout is zero.
const DefaultDialTimeout = 3 * time.Second

// Options configure a Client.
type Options struct {
	// TLS names the CA certificate and this client's certificate and key;
	// unused when Insecure is set or Credentials is given.
	TLS security.Files
	// Insecure connects in plain text.
	Insecure bool
	// Credentials, when not nil, replace TLS and Insecure.
	Credentials credentials.TransportCredentials
	// DialTimeout bounds each attempt to connect to an access point, and
	// how long Do tries while no access point can be reached at all; 0
	// means DefaultDialTimeout.
	DialTimeout time.Duration
	// DialOptions are added after the client's own options.
	DialOptions []grpc.DialOption
}

// Client calls the management service through any of its access points,
// following leader hints: a call goes to the last known leader first; a
// replica that is not the leader names the leader and the call is retried
// there; during an election or when a replica is down, the other access
// points are tried with a short backoff until ctx ends. When no access
// point can be reached at all for Options.DialTimeout, Do gives up with a
// fault of code mgmt.unreachable, whatever ctx allows. Errors are faults
// (faultgrpc) through which status.Code still reports the exact status.
// Safe for concurrent use.
type Client struct {
	addrs       []string
	opts        []grpc.DialOption
	dialTimeout time.Duration

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	leader string
}

// New returns a client of the access points addrs (host:port). It does not
// connect; calls do. It fails only when Options.TLS cannot be loaded.
func New(addrs []string, o Options) (*Client, error) {
	creds := o.Credentials
	if creds == nil {
		var err error
		if creds, err = security.ClientCredentials(o.TLS, o.Insecure); err != nil {
			return nil, err
		}
	}
	c := &Client{addrs: append([]string(nil), addrs...), conns: map[string]*grpc.ClientConn{}, dialTimeout: o.DialTimeout}
	if c.dialTimeout <= 0 {
		c.dialTimeout = DefaultDialTimeout
	}
	c.opts = []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: c.dialTimeout,
			Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: c.dialTimeout}}),
		grpc.WithChainUnaryInterceptor(track),
	}
	c.opts = append(c.opts, faultgrpc.DialOptions()...)
	if o.Credentials == nil {
		c.opts = append(c.opts, security.ExplainInterceptors(o.Insecure)...)
	}
	c.opts = append(c.opts, o.DialOptions...)
	return c, nil
}

// Close closes every connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for a, cc := range c.conns {
		errs = append(errs, cc.Close())
		delete(c.conns, a)
	}
	return errors.Join(errs...)
}

// Leader is the last leader a call reached ("" before the first call).
func (c *Client) Leader() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cc, ok := c.conns[addr]
	if !ok {
		var err error
		if cc, err = grpc.NewClient(addr, c.opts...); err != nil {
			return nil, fmt.Errorf("mgmt client %s: %w", addr, err)
		}
		c.conns[addr] = cc
	}
	return cc, nil
}

// order returns the addresses to try: the known leader first.
func (c *Client) order() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.addrs)+1)
	if c.leader != "" {
		out = append(out, c.leader)
	}
	for _, a := range c.addrs {
		if a != c.leader {
			out = append(out, a)
		}
	}
	return out
}

func (c *Client) setLeader(a string) {
	c.mu.Lock()
	c.leader = a
	c.mu.Unlock()
}

// perTryDefault bounds one attempt, so that a hung replica does not use up the
// caller's whole deadline.
const perTryDefault = 5 * time.Second

// reachedKey keys the flag that track sets when a call of an attempt got a
// connection to a server.
type reachedKey struct{}

// track records, in the flag of the call's context, whether the call
// reached a server at all (got a connection), so that Do tells an access
// point that answers "unavailable" from one that cannot be reached.
func track(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var p peer.Peer
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
	if r, ok := ctx.Value(reachedKey{}).(*atomic.Bool); ok && p.Addr != nil {
		r.Store(true)
	}
	return err
}

// Do runs call against the leader. call is run again on another replica
// when one answers "not the leader" or cannot be reached, so it must be
// safe to repeat (every management call is). Other errors are returned as
// they are. When ctx ends first, the last error is returned; when no access
// point could be reached for the dial timeout, a mgmt.unreachable fault
// wrapping the last error is.
func (c *Client) Do(ctx context.Context, call func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error) error {
	return c.do(ctx, perTryDefault, func(ctx context.Context, cc *grpc.ClientConn) error {
		return call(ctx, mgmtv1.NewMgmtServiceClient(cc))
	})
}

// DoWithin is Do with each attempt bounded by perTry (at most Do's 5 s):
// for calls that must reach the leader within a deadline of their own,
// such as heartbeats, which a silent replica must not hold past the
// leader's heartbeat timeout.
func (c *Client) DoWithin(ctx context.Context, perTry time.Duration, call func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error) error {
	return c.do(ctx, min(perTry, perTryDefault), func(ctx context.Context, cc *grpc.ClientConn) error {
		return call(ctx, mgmtv1.NewMgmtServiceClient(cc))
	})
}

// perTryVolume bounds one attempt of a volume call: creating replicas on
// several nodes takes longer than a membership call.
const perTryVolume = 2 * time.Minute

// DoVolume is Do for the volume service (pools, nodes, volumes and the
// nexus health store), served by the same leader. Every volume call is
// safe to repeat: creates are idempotent by name, and the rest converge.
func (c *Client) DoVolume(ctx context.Context, call func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error) error {
	return c.do(ctx, perTryVolume, func(ctx context.Context, cc *grpc.ClientConn) error {
		return call(ctx, mgmtv1.NewVolumeServiceClient(cc))
	})
}

// DoVolumeQuick is DoVolume for small calls (the nexus health store's),
// each attempt bounded by 5 s as Do's are: a leader that went silent (its
// node partitioned) costs one short attempt before the next access point
// is tried, not the caller's whole deadline.
func (c *Client) DoVolumeQuick(ctx context.Context, call func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error) error {
	return c.do(ctx, perTryDefault, func(ctx context.Context, cc *grpc.ClientConn) error {
		return call(ctx, mgmtv1.NewVolumeServiceClient(cc))
	})
}

func (c *Client) do(ctx context.Context, perTry time.Duration, call func(ctx context.Context, cc *grpc.ClientConn) error) error {
	start := time.Now()
	var reached atomic.Bool
	ctx = context.WithValue(ctx, reachedKey{}, &reached)
	backoff := 50 * time.Millisecond
	var last error
	for {
		queue := c.order()
		tried := map[string]bool{}
		// A refusal of our certificate is final only when every access
		// point refuses: one whose server died under the connection's
		// setup can look the same (a reset), and the others then answer.
		var refused error
		others := false
		for len(queue) > 0 {
			addr := queue[0]
			queue = queue[1:]
			if tried[addr] {
				continue
			}
			tried[addr] = true
			cl, err := c.conn(addr)
			if err != nil {
				return err
			}
			tctx, cancel := context.WithTimeout(ctx, perTry)
			err = call(tctx, cl)
			cancel()
			if err == nil {
				c.setLeader(addr)
				return nil
			}
			last = err
			if hint, ok := LeaderHint(err); ok {
				if hint != "" && !tried[hint] {
					queue = append([]string{hint}, queue...)
				}
				continue
			}
			if fault.CodeOf(err) == security.CodeRejected && ctx.Err() == nil {
				refused = err
				continue
			}
			others = true
			if !retryable(err) || ctx.Err() != nil {
				return err
			}
		}
		if refused != nil && !others {
			return refused
		}
		if !reached.Load() && time.Since(start) >= c.dialTimeout {
			return fault.Wrap(last, fault.Unavailable, "mgmt.unreachable",
				fmt.Sprintf("no access point of the management service could be reached (%s)", strings.Join(c.addrs, ", ")),
				"check that the access points run `nexstor server` and are reachable from here, and that the list of access points is right")
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return last
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// retryable reports errors that another replica may not have: connection
// failures and timeouts of one attempt, and the store's or the election's
// transient failures.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		switch fault.CodeOf(err) {
		case "", "rpc.unavailable", "rpc.deadline_exceeded", "rpc.canceled", CodeStore, CodeNotLeader:
			return true
		}
	}
	return false
}

// LeaderHint extracts the leader hint from an error of a call to a
// replica: ok is true when err says "not the leader"; leader may still be
// "" during an election.
func LeaderHint(err error) (leader string, ok bool) {
	if info := faultgrpc.Info(err); info != nil && status.Code(err) == codes.Unavailable && info.Reason == CodeNotLeader {
		return info.Metadata["leader"], true
	}
	return "", false
}
