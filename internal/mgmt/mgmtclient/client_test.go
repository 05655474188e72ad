package mgmtclient_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
	"github.com/nexstor/nexstor/internal/security"
	"github.com/nexstor/nexstor/internal/testutil/netproxy"
)

// replica is a fake management service replica: LeaderQuery returns err,
// or the system name when err is nil.
type replica struct {
	mgmtv1.UnimplementedMgmtServiceServer
	err   func() error
	calls atomic.Int32
}

func (r *replica) LeaderQuery(context.Context, *mgmtv1.LeaderQueryRequest) (*mgmtv1.LeaderQueryResponse, error) {
	r.calls.Add(1)
	if err := r.err(); err != nil {
		return nil, err
	}
	return &mgmtv1.LeaderQueryResponse{System: "sys"}, nil
}

func serve(t *testing.T, r *replica) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(faultgrpc.ServerOptions()...)
	mgmtv1.RegisterMgmtServiceServer(srv, r)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

func newClient(t *testing.T, dial time.Duration, addrs ...string) *mgmtclient.Client {
	t.Helper()
	c, err := mgmtclient.New(addrs, mgmtclient.Options{Insecure: true, DialTimeout: dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func query(ctx context.Context, c *mgmtclient.Client) (string, error) {
	var sys string
	err := c.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
		resp, err := cl.LeaderQuery(ctx, &mgmtv1.LeaderQueryRequest{})
		sys = resp.GetSystem()
		return err
	})
	return sys, err
}

// TestFollowsLeader sends the call to a replica that names the leader: it
// is retried there, and the leader is remembered.
func TestFollowsLeader(t *testing.T) {
	leader := serve(t, &replica{err: func() error { return nil }})
	follower := &replica{err: func() error {
		return faultgrpc.Status(fault.New(fault.Unavailable, mgmtclient.CodeNotLeader, "not the leader", "retry at the leader"),
			map[string]string{"leader": leader}).Err()
	}}
	c := newClient(t, time.Second, serve(t, follower))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if sys, err := query(ctx, c); err != nil || sys != "sys" || c.Leader() != leader || follower.calls.Load() != 1 {
		t.Fatalf("query: %q %v, leader %q, follower called %d times", sys, err, c.Leader(), follower.calls.Load())
	}
}

// TestErrorsAreFaults checks that a service error comes back as a fault
// through which the status is still seen, and is not retried.
func TestErrorsAreFaults(t *testing.T) {
	r := &replica{err: func() error {
		return fault.New(fault.FailedPrecondition, "mgmt.excluded", "rank 2 is excluded", "clear it")
	}}
	c := newClient(t, time.Second, serve(t, r))
	_, err := query(context.Background(), c)
	if _, ok := err.(*fault.Fault); !ok || fault.CodeOf(err) != "mgmt.excluded" || status.Code(err) != codes.FailedPrecondition ||
		fault.ResolutionOf(err) != "clear it" || r.calls.Load() != 1 {
		t.Fatalf("got %T %v (status %v), %d calls", err, err, status.Code(err), r.calls.Load())
	}
}

// TestUnreachable calls access points that cannot be reached, with a
// deadline far beyond the dial timeout: Do gives up as unreachable.
func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	p, err := netproxy.Listen(serve(t, &replica{err: func() error { return nil }}))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Blackhole()
	for _, addrs := range [][]string{{closed}, {p.Addr()}, {closed, p.Addr()}} {
		c := newClient(t, 500*time.Millisecond, addrs...)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := query(ctx, c)
		expired := ctx.Err()
		cancel()
		if expired != nil {
			t.Fatalf("%v: Do waited for the deadline: %v", addrs, err)
		}
		if fault.CodeOf(err) != "mgmt.unreachable" || status.Code(err) != codes.Unavailable || fault.ResolutionOf(err) == "" {
			t.Fatalf("%v: %v (code %q)", addrs, err, fault.CodeOf(err))
		}
	}
}

// TestReachedButUnavailable checks that an access point that answers
// "unavailable" (its service still starting) is retried until the
// deadline, not given up on after the dial timeout.
func TestReachedButUnavailable(t *testing.T) {
	var ready atomic.Bool
	r := &replica{err: func() error {
		if ready.Load() {
			return nil
		}
		return status.Error(codes.Unavailable, "the management service is starting")
	}}
	c := newClient(t, 100*time.Millisecond, serve(t, r))
	go func() {
		for r.calls.Load() < 5 {
			time.Sleep(10 * time.Millisecond)
		}
		ready.Store(true)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if sys, err := query(ctx, c); err != nil || sys != "sys" {
		t.Fatalf("query: %q %v after %d calls", sys, err, r.calls.Load())
	}
}

// volumeReplica is a fake volume service that answers LoadNexusHealth.
type volumeReplica struct {
	mgmtv1.UnimplementedVolumeServiceServer
	calls atomic.Int32
}

func (r *volumeReplica) LoadNexusHealth(context.Context, *mgmtv1.LoadNexusHealthRequest) (*mgmtv1.NexusHealth, error) {
	r.calls.Add(1)
	return &mgmtv1.NexusHealth{Found: true}, nil
}

func serveVolume(t *testing.T, r *volumeReplica) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(faultgrpc.ServerOptions()...)
	mgmtv1.RegisterVolumeServiceServer(srv, r)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// TestQuickCallPassesASilentLeader: the leader's link goes silent (a
// partition: no reset, no answer) under an established connection; a
// quick volume call moves on to the next access point after a short
// attempt and succeeds well within a deadline (30 s, the nexus health
// store's) that one attempt of an ordinary volume call would use up.
func TestQuickCallPassesASilentLeader(t *testing.T) {
	silent, other := &volumeReplica{}, &volumeReplica{}
	p, err := netproxy.Listen(serveVolume(t, silent))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := newClient(t, time.Second, p.Addr(), serveVolume(t, other))
	load := func(ctx context.Context) error {
		return c.DoVolumeQuick(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
			_, err := cl.LoadNexusHealth(ctx, &mgmtv1.LoadNexusHealthRequest{NexusUuid: "n"})
			return err
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := load(ctx); err != nil || c.Leader() != p.Addr() {
		t.Fatalf("first call: %v, leader %q", err, c.Leader())
	}
	p.Blackhole()
	err = load(ctx)
	if err != nil || ctx.Err() != nil || other.calls.Load() != 1 || c.Leader() == p.Addr() {
		t.Fatalf("with the leader silent: %v (deadline %v), other called %d times, leader %q", err, ctx.Err(), other.calls.Load(), c.Leader())
	}
}

// TestDoWithinPassesASilentLeader: with each attempt bounded by one
// second, a call whose known leader went silent reaches the next access
// point within a deadline (4 s) shorter than one attempt of Do.
func TestDoWithinPassesASilentLeader(t *testing.T) {
	ok := func() error { return nil }
	silent, other := &replica{err: ok}, &replica{err: ok}
	p, err := netproxy.Listen(serve(t, silent))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := newClient(t, time.Second, p.Addr(), serve(t, other))
	if _, err := query(context.Background(), c); err != nil || c.Leader() != p.Addr() {
		t.Fatalf("first call: %v, leader %q", err, c.Leader())
	}
	p.Blackhole()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	err = c.DoWithin(ctx, time.Second, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
		_, err := cl.LeaderQuery(ctx, &mgmtv1.LeaderQueryRequest{})
		return err
	})
	if err != nil || other.calls.Load() != 1 {
		t.Fatalf("with the leader silent: %v, other called %d times", err, other.calls.Load())
	}
}

// TestRefusalOfOneAccessPoint: an access point that seems to refuse our
// certificate (a reset while the connection was set up, which a server
// dying then causes too) does not end the call while another answers;
// when every one refuses, the refusal is returned at once.
func TestRefusalOfOneAccessPoint(t *testing.T) {
	refuse := func() error {
		return fault.New(fault.Unauthenticated, security.CodeRejected, "the server refused our certificate", "use another")
	}
	refusing, ok := &replica{err: refuse}, &replica{err: func() error { return nil }}
	c := newClient(t, time.Second, serve(t, refusing), serve(t, ok))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if sys, err := query(ctx, c); err != nil || sys != "sys" || refusing.calls.Load() != 1 {
		t.Fatalf("one refusing: %q %v, refusing called %d times", sys, err, refusing.calls.Load())
	}
	c = newClient(t, time.Second, serve(t, &replica{err: refuse}), serve(t, &replica{err: refuse}))
	_, err := query(ctx, c)
	if fault.CodeOf(err) != security.CodeRejected || ctx.Err() != nil {
		t.Fatalf("all refusing: %v (code %q), deadline %v", err, fault.CodeOf(err), ctx.Err())
	}
}
