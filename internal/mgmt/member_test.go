package mgmt

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

// beat is one heartbeat held by fakeMgmt until the test answers it.
type beat struct {
	req   *mgmtv1.HeartbeatRequest
	reply chan beatReply
}

type beatReply struct {
	resp *mgmtv1.HeartbeatResponse
	err  error
}

// fakeMgmt is a management service whose heartbeats the test answers one
// by one, so that the member runs in lockstep with the test: whatever the
// test changes while it holds heartbeat k is seen by heartbeat k+1.
type fakeMgmt struct {
	mgmtv1.UnimplementedMgmtServiceServer
	joins chan *mgmtv1.JoinRequest
	beats chan beat
}

func (f *fakeMgmt) Join(ctx context.Context, req *mgmtv1.JoinRequest) (*mgmtv1.JoinResponse, error) {
	select {
	case f.joins <- req:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &mgmtv1.JoinResponse{Rank: 4, State: string(StateJoined), Leader: "fake", HeartbeatIntervalMs: 1}, nil
}

func (f *fakeMgmt) Heartbeat(ctx context.Context, req *mgmtv1.HeartbeatRequest) (*mgmtv1.HeartbeatResponse, error) {
	b := beat{req: req, reply: make(chan beatReply, 1)}
	select {
	case f.beats <- b:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-b.reply:
		return r.resp, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func startFakeMgmt(t *testing.T) (*fakeMgmt, *Client) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeMgmt{joins: make(chan *mgmtv1.JoinRequest), beats: make(chan beat)}
	srv := grpc.NewServer(faultgrpc.ServerOptions()...)
	mgmtv1.RegisterMgmtServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	c := NewClient([]string{lis.Addr().String()}, insecure.NewCredentials())
	t.Cleanup(func() { c.Close() })
	return f, c
}

// recordLog keeps the messages of the records logged through it.
type recordLog struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recordLog) Enabled(context.Context, slog.Level) bool { return true }
func (r *recordLog) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.msgs = append(r.msgs, rec.Message)
	r.mu.Unlock()
	return nil
}
func (r *recordLog) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recordLog) WithGroup(string) slog.Handler      { return r }

func (r *recordLog) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// poolSource is the Pools func of a test member: the report or error the
// test set last, a new message on every call.
type poolSource struct {
	mu  sync.Mutex
	rep *mgmtv1.PoolReportSet
	err error
}

func (p *poolSource) set(rep *mgmtv1.PoolReportSet, err error) {
	p.mu.Lock()
	p.rep, p.err = rep, err
	p.mu.Unlock()
}

func (p *poolSource) Pools(context.Context) (*mgmtv1.PoolReportSet, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return nil, p.err
	}
	return proto.Clone(p.rep).(*mgmtv1.PoolReportSet), nil
}

func report(free uint64, labels map[string]string) *mgmtv1.PoolReportSet {
	return &mgmtv1.PoolReportSet{Pools: []*mgmtv1.PoolReport{
		{Name: "p0", Uuid: "u0", Disk: "/dev/sdb", State: "online", Capacity: 1 << 30, Free: free, ClusterSize: 4 << 20,
			OvercommitPercent: 250, Labels: labels},
		{Name: "p1", Uuid: "u1", Disk: "/dev/sdc", State: "faulted", Reason: "no pool on the disk"},
	}}
}

// TestRunMemberPoolReports: the join carries the name, host NQN and pool
// report; a heartbeat carries the report only when it changed since the
// leader last accepted one (once per change), when the leader asks for
// it, and again after a heartbeat that carried it failed. A failing report
// sends nothing and is logged once per distinct error. A rejoin sends the
// report with the join.
func TestRunMemberPoolReports(t *testing.T) {
	f, c := startFakeMgmt(t)
	src := &poolSource{}
	a := report(1<<29, map[string]string{"media": "nvme"})
	src.set(a, nil)
	logs := &recordLog{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- RunMember(ctx, MemberConfig{Client: c, System: "sys", UUID: "9b2f6c1e-4a53-4c47-9a0e-7d0c2b1f3e4d",
			Address: "127.0.0.1:1", Rank: NoRank, Name: "store-1",
			HostNQN: "nqn.2014-08.org.nvmexpress:uuid:9b2f6c1e-4a53-4c47-9a0e-7d0c2b1f3e4d",
			Pools:   src.Pools, Interval: time.Millisecond, Log: slog.New(logs)})
	}()
	const wait = 60 * time.Second
	join := func() *mgmtv1.JoinRequest {
		t.Helper()
		select {
		case j := <-f.joins:
			return j
		case err := <-done:
			t.Fatalf("RunMember returned %v", err)
		case <-time.After(wait):
			t.Fatal("no join")
		}
		return nil
	}
	// next receives the next heartbeat, lets the test act while it is
	// held, then answers it with resp or err.
	next := func(during func(), resp *mgmtv1.HeartbeatResponse, err error) *mgmtv1.HeartbeatRequest {
		t.Helper()
		select {
		case b := <-f.beats:
			if during != nil {
				during()
			}
			if resp == nil && err == nil {
				resp = &mgmtv1.HeartbeatResponse{State: string(StateJoined)}
			}
			b.reply <- beatReply{resp, err}
			return b.req
		case err := <-done:
			t.Fatalf("RunMember returned %v", err)
		case <-time.After(wait):
			t.Fatal("no heartbeat")
		}
		return nil
	}
	// beats answers n heartbeats and checks that none carried a report.
	beats := func(n int, what string) {
		t.Helper()
		for i := 0; i < n; i++ {
			if hb := next(nil, nil, nil); hb.Pools != nil {
				t.Fatalf("%s: heartbeat %d carried a report: %v", what, i, hb.Pools)
			}
		}
	}
	// expectOnce checks that the next heartbeat carries want and the few
	// after it carry none.
	expectOnce := func(want *mgmtv1.PoolReportSet, what string) {
		t.Helper()
		if hb := next(nil, nil, nil); !proto.Equal(hb.Pools, want) {
			t.Fatalf("%s: heartbeat carried %v, want %v", what, hb.Pools, want)
		}
		beats(3, what+", then")
	}

	j := join()
	if j.Name != "store-1" || j.HostNqn != "nqn.2014-08.org.nvmexpress:uuid:9b2f6c1e-4a53-4c47-9a0e-7d0c2b1f3e4d" {
		t.Fatalf("join: name %q host NQN %q", j.Name, j.HostNqn)
	}
	if !proto.Equal(j.Pools, a) {
		t.Fatalf("join carried %v, want %v", j.Pools, a)
	}
	beats(3, "unchanged after the join")

	// A change is sent once.
	b := report(1<<28, map[string]string{"media": "nvme"})
	next(func() { src.set(b, nil) }, nil, nil)
	expectOnce(b, "free space changed")
	// So is a change of labels only.
	b2 := report(1<<28, map[string]string{"media": "ssd"})
	next(func() { src.set(b2, nil) }, nil, nil)
	expectOnce(b2, "labels changed")

	// The leader asks for the report: the unchanged report is sent once.
	next(nil, &mgmtv1.HeartbeatResponse{State: string(StateJoined), ResendPools: true}, nil)
	expectOnce(b2, "leader asked")

	// A heartbeat carrying a change fails: the next one carries it again.
	cr := report(1<<27, nil)
	next(func() { src.set(cr, nil) }, nil, nil)
	if hb := next(nil, nil, status.Error(codes.Internal, "lost")); !proto.Equal(hb.Pools, cr) {
		t.Fatalf("change: heartbeat carried %v", hb.Pools)
	}
	expectOnce(cr, "after a failed heartbeat")

	// A failing report sends nothing and is logged once per error.
	const failMsg = "pool report: sending none"
	next(func() { src.set(nil, errors.New("engine busy")) }, nil, nil)
	beats(5, "failing")
	next(func() { src.set(nil, errors.New("engine gone")) }, nil, nil)
	beats(5, "failing otherwise")
	if n := logs.count(failMsg); n != 2 {
		t.Fatalf("%d warnings for two distinct errors over 12 heartbeats, want 2", n)
	}
	// It works again with the report the leader has: nothing to send.
	next(func() { src.set(cr, nil) }, nil, nil)
	beats(3, "recovered, unchanged")
	// A node without pools sends an empty report, not none.
	empty := &mgmtv1.PoolReportSet{}
	next(func() { src.set(empty, nil) }, nil, nil)
	if hb := next(nil, nil, nil); hb.Pools == nil || len(hb.Pools.Pools) != 0 {
		t.Fatalf("no pools: heartbeat carried %v, want an empty report", hb.Pools)
	}
	beats(3, "empty, unchanged")

	// The leader no longer knows the node: it joins again, with its report.
	next(func() { src.set(a, nil) }, nil, ToStatus(fault.New(fault.NotFound, CodeNotMember, "not a member", "join")))
	if j := join(); !proto.Equal(j.Pools, a) {
		t.Fatalf("rejoin carried %v, want %v", j.Pools, a)
	}
	beats(3, "after the rejoin")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("RunMember returned %v", err)
	}
}

// TestRunMemberWithoutPools: a member without a Pools func sends no
// report, neither with the join nor with heartbeats.
func TestRunMemberWithoutPools(t *testing.T) {
	f, c := startFakeMgmt(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- RunMember(ctx, MemberConfig{Client: c, System: "sys", UUID: "u", Address: "127.0.0.1:1", Rank: NoRank,
			Interval: time.Millisecond, Log: slog.New(&recordLog{})})
	}()
	select {
	case j := <-f.joins:
		if j.Pools != nil {
			t.Fatalf("join carried %v", j.Pools)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no join")
	}
	for i := 0; i < 3; i++ {
		select {
		case b := <-f.beats:
			b.reply <- beatReply{resp: &mgmtv1.HeartbeatResponse{State: string(StateJoined), ResendPools: true}}
			if b.req.Pools != nil {
				t.Fatalf("heartbeat carried %v", b.req.Pools)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("no heartbeat")
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("RunMember returned %v", err)
	}
}
