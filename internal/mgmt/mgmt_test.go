package mgmt

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/security"
)

func TestTransitionTable(t *testing.T) {
	allowed := map[[2]State]bool{}
	for _, p := range [][2]State{
		{StateJoined, StateStopped}, {StateJoined, StateUnresponsive}, {StateJoined, StateExcluded}, {StateJoined, StateErrored},
		{StateStopped, StateJoined}, {StateStopped, StateUnresponsive}, {StateStopped, StateExcluded}, {StateStopped, StateErrored},
		{StateUnresponsive, StateJoined}, {StateUnresponsive, StateStopped}, {StateUnresponsive, StateErrored},
		{StateUnresponsive, StateExcluded},
		{StateExcluded, StateStopped},
		{StateErrored, StateJoined}, {StateErrored, StateStopped}, {StateErrored, StateUnresponsive}, {StateErrored, StateExcluded},
	} {
		allowed[p] = true
	}
	for _, from := range States {
		for _, to := range States {
			want := from == to || allowed[[2]State{from, to}]
			if got := CanTransition(from, to); got != want {
				t.Errorf("CanTransition(%s, %s) = %v, want %v", from, to, got, want)
			}
		}
	}
	if CanTransition("bogus", "bogus") || CanTransition(StateJoined, "bogus") {
		t.Error("unknown states must not transition")
	}
	e := &TransitionError{Rank: 3, From: StateExcluded, To: StateJoined}
	if !strings.Contains(e.Error(), "exclude --clear") {
		t.Errorf("TransitionError without a hint: %v", e)
	}
}

func TestJoinStableRanks(t *testing.T) {
	ctx := context.Background()
	cli := startEtcd(t)
	svc := newService(t, cli, "sys", nil)
	waitLeader(t, svc)

	ids := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	for i, id := range ids {
		resp, err := svc.Join(ctx, joinReq("sys", id, fmt.Sprintf("10.0.0.%d:10124", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		if resp.Rank != uint32(i) || resp.State != string(StateJoined) || resp.Leader != svc.addr {
			t.Fatalf("join %d: %+v", i, resp)
		}
	}
	// The same UUID gets its rank back, even from another address.
	resp, err := svc.Join(ctx, joinReq("sys", ids[1], "10.0.0.9:10124"))
	if err != nil || resp.Rank != 1 {
		t.Fatalf("rejoin: %+v, %v", resp, err)
	}
	q, err := svc.SystemQuery(ctx, &mgmtv1.SystemQueryRequest{})
	if err != nil || len(q.Members) != 3 || q.Members[1].Address != "10.0.0.9:10124" {
		t.Fatalf("query: %+v, %v", q, err)
	}
	// A new node that remembers a free rank keeps it; a taken one is
	// replaced by the next free rank.
	resp, err = svc.Join(ctx, &mgmtv1.JoinRequest{System: "sys", Uuid: uuid.NewString(), Address: "10.0.1.1:1", Rank: 7})
	if err != nil || resp.Rank != 7 {
		t.Fatalf("join with free rank hint: %+v, %v", resp, err)
	}
	resp, err = svc.Join(ctx, &mgmtv1.JoinRequest{System: "sys", Uuid: uuid.NewString(), Address: "10.0.1.2:1", Rank: 0})
	if err != nil || resp.Rank != 8 {
		t.Fatalf("join with taken rank hint: %+v, %v", resp, err)
	}
}

func TestJoinRefusals(t *testing.T) {
	ctx := context.Background()
	cli := startEtcd(t)
	svc := newService(t, cli, "sys", nil)
	waitLeader(t, svc)

	_, err := svc.Join(ctx, joinReq("other", uuid.New(), "10.0.0.1:1"))
	if status.Code(err) != codes.FailedPrecondition || FaultCode(err) != CodeForeignSystem ||
		!strings.Contains(err.Error(), `system "other"`) {
		t.Fatalf("foreign system: %v", err)
	}
	if _, err := svc.Join(ctx, joinReq("sys", uuid.Nil, "10.0.0.1:1")); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("nil uuid: %v", err)
	}
	if _, err := svc.Join(ctx, joinReq("sys", uuid.New(), "nohostport")); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad address: %v", err)
	}
	// Another live node at the same address is refused.
	if _, err := svc.Join(ctx, joinReq("sys", uuid.New(), "10.0.0.1:1")); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Join(ctx, joinReq("sys", uuid.New(), "10.0.0.1:1")); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("duplicate live address: %v", err)
	}
	// Heartbeat of an unknown node asks it to join.
	_, err = svc.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "sys", Uuid: uuid.NewString(), Rank: NoRank})
	if status.Code(err) != codes.NotFound || FaultCode(err) != CodeNotMember {
		t.Fatalf("heartbeat of a stranger: %v", err)
	}
}

func TestConcurrentJoinsGetDistinctRanks(t *testing.T) {
	cli := startEtcd(t)
	svc := newService(t, cli, "sys", nil)
	waitLeader(t, svc)
	const n = 8
	ranks := make([]uint32, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			resp, err := svc.Join(context.Background(), joinReq("sys", uuid.New(), fmt.Sprintf("10.0.0.%d:1", i)))
			errs[i] = err
			if err == nil {
				ranks[i] = resp.Rank
			}
		}(i)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	sort.Slice(ranks, func(i, j int) bool { return ranks[i] < ranks[j] })
	for i, r := range ranks {
		if r != uint32(i) {
			t.Fatalf("ranks %v, want 0-%d each once", ranks, n-1)
		}
	}
}

func TestHeartbeatsAndChecker(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	cli := startEtcd(t)
	svc := newService(t, cli, "sys", clock)
	waitLeader(t, svc)
	a, b := uuid.New(), uuid.New()
	for i, id := range []uuid.UUID{a, b} {
		if _, err := svc.Join(ctx, joinReq("sys", id, fmt.Sprintf("h%d:1", i))); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(3 * time.Second)
	if _, err := svc.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "sys", Uuid: a.String(), Rank: 0}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(3 * time.Second) // b silent for 6s, a for 3s; timeout 5s
	marked, err := svc.CheckMembers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(marked) != 1 || marked[0] != 1 {
		t.Fatalf("marked %v, want [1]", marked)
	}
	q, _ := svc.SystemQuery(ctx, &mgmtv1.SystemQueryRequest{})
	if q.Members[0].State != "joined" || q.Members[1].State != "unresponsive" || !strings.Contains(q.Members[1].Info, "no heartbeat since") {
		t.Fatalf("states: %+v", q.Members)
	}
	// An unresponsive member cannot be started, only restarted.
	res, err := svc.SystemStart(ctx, &mgmtv1.SystemStartRequest{Ranks: "1"})
	if err != nil || !res.Results[0].Errored || !strings.Contains(res.Results[0].Msg, "restart") {
		t.Fatalf("start unresponsive: %+v, %v", res, err)
	}
	// Its heartbeats resuming bring it back with the same rank.
	hb, err := svc.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "sys", Uuid: b.String(), Rank: 1})
	if err != nil || hb.State != "joined" {
		t.Fatalf("resumed heartbeat: %+v, %v", hb, err)
	}
	// An engine error makes the member errored until started.
	hb, err = svc.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "sys", Uuid: a.String(), Rank: 0, Error: "pool faulted"})
	if err != nil || hb.State != "errored" {
		t.Fatalf("errored heartbeat: %+v, %v", hb, err)
	}
	if res, err := svc.SystemStart(ctx, &mgmtv1.SystemStartRequest{Ranks: "0"}); err != nil || res.Results[0].State != "joined" {
		t.Fatalf("start errored: %+v, %v", res, err)
	}

	// A stopped member that goes silent and comes back is still stopped,
	// whether its heartbeats resume or its server restarts and rejoins.
	if _, err := svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: "0-1"}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(6 * time.Second)
	// Every member silent: the leader first doubts itself (cut off?) and
	// judges nobody until its session (10 s) would have ended, then
	// grants them one more timeout.
	if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 0 {
		t.Fatalf("marked %v, %v when every member went silent at once", marked, err)
	}
	clock.Advance(16 * time.Second)
	if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 2 {
		t.Fatalf("marked %v, %v", marked, err)
	}
	res, err = svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: "0"})
	if err != nil || !res.Results[0].Errored || !strings.Contains(res.Results[0].Msg, "not answering") {
		t.Fatalf("stop unresponsive: %+v, %v", res, err)
	}
	hb, err = svc.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "sys", Uuid: a.String(), Rank: 0})
	if err != nil || hb.State != "stopped" {
		t.Fatalf("resumed heartbeat of a stopped member: %+v, %v", hb, err)
	}
	jr, err := svc.Join(ctx, joinReq("sys", b, "h1:1"))
	if err != nil || jr.State != "stopped" || jr.Rank != 1 {
		t.Fatalf("rejoin of a stopped member: %+v, %v", jr, err)
	}
	// Heartbeats that change nothing are kept in memory but reported.
	clock.Advance(time.Second)
	if _, err := svc.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "sys", Uuid: a.String(), Rank: 0}); err != nil {
		t.Fatal(err)
	}
	q, _ = svc.SystemQuery(ctx, &mgmtv1.SystemQueryRequest{Ranks: "0"})
	if q.Members[0].LastHeartbeatMs != clock.Now().UnixMilli() {
		t.Fatalf("last heartbeat %d, want %d", q.Members[0].LastHeartbeatMs, clock.Now().UnixMilli())
	}
}

func TestCheckerGraceAfterElection(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	cli := startEtcd(t)
	svc := newService(t, cli, "sys", clock)
	waitLeader(t, svc)
	if _, err := svc.Join(ctx, joinReq("sys", uuid.New(), "h:1")); err != nil {
		t.Fatal(err)
	}
	svc.Close() // leadership lost; a new term starts later
	clock.Advance(time.Hour)
	svc.Start()
	waitLeader(t, svc)
	// The member's last heartbeat is an hour old, but this leader has only
	// just started listening: no verdict yet.
	if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 0 {
		t.Fatalf("marked %v, %v right after election", marked, err)
	}
	// Its only other member silent for the timeout: the leader takes
	// itself for cut off first, and judges one timeout after its session
	// (10 s) would have ended.
	clock.Advance(6 * time.Second)
	if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 0 {
		t.Fatalf("marked %v, %v when no member was heard", marked, err)
	}
	clock.Advance(6 * time.Second)
	if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 0 {
		t.Fatalf("marked %v, %v within the session TTL", marked, err)
	}
	clock.Advance(10 * time.Second)
	if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 1 {
		t.Fatalf("marked %v, %v after the timeout", marked, err)
	}
}

// TestCheckerCutOffLeader: a leader that heard from no other member for
// the timeout (its node partitioned) does not condemn them all when its
// writes go through again; heartbeats resume and nothing is marked. A
// member that stays silent while the others are heard is marked.
func TestCheckerCutOffLeader(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	cli := startEtcd(t)
	svc := newService(t, cli, "sys", clock)
	waitLeader(t, svc)
	a, b := uuid.New(), uuid.New()
	for i, id := range []uuid.UUID{a, b} {
		if _, err := svc.Join(ctx, joinReq("sys", id, fmt.Sprintf("h%d:1", i))); err != nil {
			t.Fatal(err)
		}
	}
	beat := func(id uuid.UUID, rank uint32) {
		t.Helper()
		if _, err := svc.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "sys", Uuid: id.String(), Rank: rank}); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(6 * time.Second) // cut off: nobody heard
	if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 0 {
		t.Fatalf("a cut-off leader marked %v, %v", marked, err)
	}
	clock.Advance(time.Second) // healed: both heard again
	beat(a, 0)
	beat(b, 1)
	if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 0 {
		t.Fatalf("marked %v, %v after the heal", marked, err)
	}
	for range 3 { // b goes silent while a is heard
		clock.Advance(2 * time.Second)
		beat(a, 0)
	}
	marked, err := svc.CheckMembers(ctx)
	if err != nil || len(marked) != 1 || marked[0] != 1 {
		t.Fatalf("marked %v, %v; want [1]", marked, err)
	}
}

// TestCheckerCutOffLeaderHoldsVerdicts: a leader cut off for longer than
// two timeouts but less than its session TTL judges nobody meanwhile (its
// verdicts would be written when the partition heals), and once one member
// is heard again the others get a whole timeout from then for their
// heartbeats to catch up.
func TestCheckerCutOffLeaderHoldsVerdicts(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	cli := startEtcd(t)
	svc := newService(t, cli, "sys", clock)
	waitLeader(t, svc)
	a, b := uuid.New(), uuid.New()
	for i, id := range []uuid.UUID{a, b} {
		if _, err := svc.Join(ctx, joinReq("sys", id, fmt.Sprintf("h%d:1", i))); err != nil {
			t.Fatal(err)
		}
	}
	beat := func(id uuid.UUID, rank uint32) {
		t.Helper()
		if _, err := svc.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "sys", Uuid: id.String(), Rank: rank}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // 12 s cut off: more than two timeouts (5 s), less than the TTL (10 s)
		clock.Advance(6 * time.Second)
		if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 0 {
			t.Fatalf("a cut-off leader marked %v, %v", marked, err)
		}
	}
	beat(a, 0) // healed: a is heard at once, b's heartbeats lag
	if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 0 {
		t.Fatalf("marked %v, %v as the first member was heard again", marked, err)
	}
	clock.Advance(3 * time.Second)
	beat(a, 0)
	if marked, err := svc.CheckMembers(ctx); err != nil || len(marked) != 0 {
		t.Fatalf("marked %v, %v while b's heartbeats catch up", marked, err)
	}
	beat(b, 1)
	for range 3 { // a goes silent while b is heard
		clock.Advance(2 * time.Second)
		beat(b, 1)
	}
	marked, err := svc.CheckMembers(ctx)
	if err != nil || len(marked) != 1 || marked[0] != 0 {
		t.Fatalf("marked %v, %v; want [0]", marked, err)
	}
}

func TestSystemOperations(t *testing.T) {
	ctx := context.Background()
	cli := startEtcd(t)
	svc := newService(t, cli, "sys", nil)
	waitLeader(t, svc)
	ids := make([]uuid.UUID, 4)
	for i := range ids {
		ids[i] = uuid.New()
		if _, err := svc.Join(ctx, joinReq("sys", ids[i], fmt.Sprintf("node-%d:10124", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	state := func(rank int) string {
		q, err := svc.SystemQuery(ctx, &mgmtv1.SystemQueryRequest{Ranks: fmt.Sprint(rank)})
		if err != nil || len(q.Members) != 1 {
			t.Fatalf("query rank %d: %+v, %v", rank, q, err)
		}
		return q.Members[0].State
	}

	// Stop by host list, including a host that is not a member.
	res, err := svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Hosts: "node-[1-2],node-9"})
	if err != nil || len(res.Results) != 2 || res.AbsentHosts != "node-9" {
		t.Fatalf("stop: %+v, %v", res, err)
	}
	if state(0) != "stopped" || state(1) != "stopped" || state(2) != "joined" {
		t.Fatal("stop by hosts changed the wrong members")
	}
	// Stopping again is a no-op, not an error.
	if res, err := svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: "0"}); err != nil || res.Results[0].Errored {
		t.Fatalf("second stop: %+v, %v", res, err)
	}
	// Exclude by rank list (with an absent rank); excluded members cannot
	// be started or rejoin.
	res, err = svc.SystemExclude(ctx, &mgmtv1.SystemExcludeRequest{Ranks: "1-2,7"})
	if err != nil || len(res.Results) != 2 || res.AbsentRanks != "7" {
		t.Fatalf("exclude: %+v, %v", res, err)
	}
	res, err = svc.SystemStart(ctx, &mgmtv1.SystemStartRequest{Ranks: "0-1"})
	if err != nil || res.Results[0].Errored || !res.Results[1].Errored || !strings.Contains(res.Results[1].Msg, "--clear") {
		t.Fatalf("start: %+v, %v", res, err)
	}
	if state(0) != "joined" || state(1) != "excluded" {
		t.Fatal("start changed the wrong members")
	}
	_, err = svc.Join(ctx, joinReq("sys", ids[1], "node-2:10124"))
	if status.Code(err) != codes.FailedPrecondition || FaultCode(err) != CodeExcluded {
		t.Fatalf("excluded rejoin: %v", err)
	}
	hb, err := svc.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: "sys", Uuid: ids[2].String(), Rank: 2})
	if err != nil || hb.State != "excluded" {
		t.Fatalf("heartbeat of excluded: %+v, %v", hb, err)
	}
	// Clearing moves excluded members to stopped; then they start.
	if res, err := svc.SystemExclude(ctx, &mgmtv1.SystemExcludeRequest{Ranks: "1-3", Clear: true}); err != nil || len(res.Results) != 3 {
		t.Fatalf("clear: %+v, %v", res, err)
	}
	if state(1) != "stopped" || state(3) != "joined" {
		t.Fatalf("after clear: %s %s", state(1), state(3))
	}
	if _, err := svc.Join(ctx, joinReq("sys", ids[1], "node-2:10124")); err != nil {
		t.Fatalf("rejoin after clear: %v", err)
	}
	// Bad selections.
	if _, err := svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: "0", Hosts: "node-1"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ranks and hosts: %v", err)
	}
	if _, err := svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: "x"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad ranks: %v", err)
	}
	if _, err := svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: "0-100000000"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("huge rank list: %v", err)
	}
	// Everything, with a port in the host list.
	res, err = svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Hosts: "node-[1-4]:10124"})
	if err != nil || len(res.Results) != 4 || res.AbsentHosts != "" {
		t.Fatalf("stop all by host:port: %+v, %v", res, err)
	}
}

func TestLeaderRedirect(t *testing.T) {
	cli := startEtcd(t)
	s1 := newService(t, cli, "sys", nil)
	leader := waitLeader(t, s1)
	s2 := newService(t, cli, "sys", nil)
	if s2.IsLeader() {
		t.Fatal("two leaders")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A call that reaches the follower names the leader.
	_, err := s2.SystemQuery(ctx, &mgmtv1.SystemQueryRequest{})
	hint, ok := LeaderHint(err)
	if status.Code(err) != codes.Unavailable || !ok || hint != leader.addr {
		t.Fatalf("follower answered %v (hint %q), want Unavailable naming %s", err, hint, leader.addr)
	}
	// Any replica answers LeaderQuery.
	lq, err := s2.LeaderQuery(ctx, &mgmtv1.LeaderQueryRequest{})
	if err != nil || lq.Leader != leader.addr || lq.System != "sys" {
		t.Fatalf("leader query: %+v, %v", lq, err)
	}

	// The client, pointed at the follower first, ends up at the leader.
	c := NewClient([]string{s2.addr, s1.addr}, insecure.NewCredentials())
	defer c.Close()
	id := uuid.New()
	var rank uint32
	err = c.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
		resp, err := cl.Join(ctx, joinReq("sys", id, "10.0.0.1:10124"))
		if err == nil {
			rank = resp.Rank
		}
		return err
	})
	if err != nil || rank != 0 || c.Leader() != leader.addr {
		t.Fatalf("client join: rank %d, leader %q, %v", rank, c.Leader(), err)
	}

	// The leader goes away; the other replica takes over and the client
	// follows, with the member's rank intact.
	s1.Close()
	waitLeader(t, s2)
	err = c.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
		resp, err := cl.Join(ctx, joinReq("sys", id, "10.0.0.1:10124"))
		if err == nil {
			rank = resp.Rank
		}
		return err
	})
	if err != nil || rank != 0 || c.Leader() != s2.addr {
		t.Fatalf("after failover: rank %d, leader %q, %v", rank, c.Leader(), err)
	}
	// A deposed leader refuses writes.
	if _, err := s1.Join(ctx, joinReq("sys", uuid.New(), "10.0.0.2:1")); status.Code(err) != codes.Unavailable {
		t.Fatalf("old leader accepted a join: %v", err)
	}
}

func TestRunMember(t *testing.T) {
	cli := startEtcd(t)
	svc := newService(t, cli, "sys", nil)
	waitLeader(t, svc)
	c := NewClient([]string{svc.addr}, insecure.NewCredentials())
	defer c.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := make(chan State, 16)
	ranks := make(chan uint32, 4)
	id := uuid.New()
	done := make(chan error, 1)
	go func() {
		done <- RunMember(ctx, MemberConfig{Client: c, System: "sys", UUID: id.String(), Address: "127.0.0.1:1",
			Rank: NoRank, Interval: 20 * time.Millisecond,
			OnRank:  func(r uint32) error { ranks <- r; return nil },
			OnState: func(s State) { states <- s }})
	}()
	expect := func(want State) {
		t.Helper()
		select {
		case s := <-states:
			if s != want {
				t.Fatalf("state %s, want %s", s, want)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("no state change to %s", want)
		}
	}
	expect(StateJoined)
	if r := <-ranks; r != 0 {
		t.Fatalf("rank %d", r)
	}
	if _, err := svc.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: "0"}); err != nil {
		t.Fatal(err)
	}
	expect(StateStopped)
	if _, err := svc.SystemStart(ctx, &mgmtv1.SystemStartRequest{Ranks: "0"}); err != nil {
		t.Fatal(err)
	}
	expect(StateJoined)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("RunMember returned %v", err)
	}

	// A member of another system is refused for good.
	err := RunMember(context.Background(), MemberConfig{Client: c, System: "other", UUID: uuid.NewString(),
		Address: "127.0.0.1:2", Rank: NoRank})
	if FaultCode(err) != CodeForeignSystem {
		t.Fatalf("foreign RunMember: %v", err)
	}
}

func TestPolicy(t *testing.T) {
	p := Policy()
	for _, m := range []string{mgmtv1.MgmtService_SystemStop_FullMethodName, mgmtv1.MgmtService_SystemStart_FullMethodName,
		mgmtv1.MgmtService_SystemExclude_FullMethodName} {
		if !p.Permits(m, security.RoleAdmin) || p.Permits(m, security.RoleServer) || p.Permits(m, security.RoleCSI) {
			t.Errorf("%s must be admin-only", m)
		}
	}
	if !p.Permits(mgmtv1.MgmtService_Join_FullMethodName, security.RoleServer) || p.Permits(mgmtv1.MgmtService_Join_FullMethodName, security.RoleCSI) {
		t.Error("join: servers only")
	}
	if !p.Permits(mgmtv1.MgmtService_SystemQuery_FullMethodName, security.RoleServer) || p.Permits(mgmtv1.MgmtService_SystemQuery_FullMethodName, security.RoleCSI) {
		t.Error("query: admins and servers, not csi")
	}
	if !p.Permits(mgmtv1.VolumeService_DeleteVolume_FullMethodName, security.RoleCSI) || p.Permits(mgmtv1.VolumeService_MoveVolume_FullMethodName, security.RoleCSI) {
		t.Error("csi deletes volumes, and does not move them")
	}
}

func TestPlanEtcd(t *testing.T) {
	s := config.Default().WithAccessPoints("10.0.0.1", "10.0.0.2", "10.0.0.3:10200")
	plan, err := PlanEtcd(s, "10.0.0.2:10124")
	if err != nil {
		t.Fatal(err)
	}
	if !plan.AccessPoint || plan.Embedded == nil || plan.TLS == nil || len(plan.Endpoints) != 3 {
		t.Fatalf("plan %+v", plan)
	}
	e := plan.Embedded
	if e.Name != "10.0.0.2-10124" || e.ClientURL != "https://10.0.0.2:2379" || e.PeerURL != "https://10.0.0.2:2380" ||
		len(e.InitialCluster) != 3 || e.InitialCluster["10.0.0.3-10200"] != "https://10.0.0.3:2380" {
		t.Fatalf("embedded %+v", e)
	}
	if _, err := PlanEtcd(s, "10.0.0.9:10124"); err == nil {
		t.Fatal("a non-access point was planned as one")
	}
	plan, err = PlanEtcd(s.WithInsecure(true), "")
	if err != nil || plan.AccessPoint || plan.Embedded != nil || plan.Endpoints[0] != "http://10.0.0.1:2379" {
		t.Fatalf("client-only plan %+v, %v", plan, err)
	}
	s.WithEtcdEndpoints("https://e1:2379")
	s.Etcd.TLS.CACert = "/ca"
	plan, err = PlanEtcd(s, "10.0.0.1:10124")
	if err != nil || plan.Embedded != nil || plan.Endpoints[0] != "https://e1:2379" || plan.TLS.CACert != "/ca" {
		t.Fatalf("external plan %+v, %v", plan, err)
	}
}
