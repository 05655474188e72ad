package mgmt

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

// Client calls the management service through any of its access points,
// following leader hints: a call goes to the last known leader first; a
// replica that is not the leader names the leader and the call is retried
// there; during an election or when a replica is down, the other access
// points are tried with a short backoff until ctx ends. Safe for concurrent
// use.
type Client struct {
	addrs []string
	opts  []grpc.DialOption

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	leader string
}

// NewClient returns a client of the access points addrs (host:port) using
// creds for every connection (security.ClientCredentials).
func NewClient(addrs []string, creds credentials.TransportCredentials, opts ...grpc.DialOption) *Client {
	return &Client{addrs: append([]string(nil), addrs...),
		opts: append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...), conns: map[string]*grpc.ClientConn{}}
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

func (c *Client) conn(addr string) (mgmtv1.MgmtServiceClient, error) {
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
	return mgmtv1.NewMgmtServiceClient(cc), nil
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

// perTry bounds one attempt, so that a hung replica does not use up the
// caller's whole deadline.
const perTry = 5 * time.Second

// Do runs call against the leader. call is run again on another replica
// when one answers "not the leader" or cannot be reached, so it must be
// safe to repeat (every management call is). Other errors are returned as
// they are. When ctx ends first, the last error is returned.
func (c *Client) Do(ctx context.Context, call func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error) error {
	backoff := 50 * time.Millisecond
	var last error
	for {
		queue := c.order()
		tried := map[string]bool{}
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
			if !retryable(err) || ctx.Err() != nil {
				return err
			}
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
// failures and timeouts of one attempt.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return FaultCode(err) == "" || FaultCode(err) == CodeStore || FaultCode(err) == CodeNotLeader
	}
	return false
}
