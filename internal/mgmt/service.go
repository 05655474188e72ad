package mgmt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/credentials"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/security"
)

// Defaults of Config.
const (
	DefaultHeartbeatInterval = time.Second
	DefaultHeartbeatTimeout  = 5 * time.Second
	DefaultSessionTTL        = 5 // seconds
	DefaultPartialWait       = 10 * time.Minute
	DefaultMoveGrace         = 2 * time.Second
	DefaultGCGrace           = 5 * time.Minute
	// maxTxnAttempts bounds compare-and-swap retries under contention.
	maxTxnAttempts = 32
)

// Config configures a Service.
type Config struct {
	// System is the system name; joins for another name are refused.
	System string
	// Address is this replica's gRPC address as clients dial it; it is
	// what the leader hint carries when this replica leads.
	Address string
	// Replicas are the access points' addresses, reported by LeaderQuery.
	Replicas []string
	// Etcd is the client of the system's etcd cluster. The Service does not
	// close it.
	Etcd *clientv3.Client
	// HeartbeatInterval is what members are told to use.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout is how long without a heartbeat makes a member
	// unresponsive. It must exceed HeartbeatInterval.
	HeartbeatTimeout time.Duration
	// CheckInterval is how often the leader runs CheckMembers
	// (HeartbeatInterval when zero; negative: never, the owner calls
	// CheckMembers itself).
	CheckInterval time.Duration
	// SessionTTL is the lease of the leader's election key in seconds: how
	// long a dead leader blocks a new election.
	SessionTTL int
	// Now is the clock (time.Now when nil); tests drive the checker with a
	// fake one.
	Now func() time.Time
	// Log receives state changes (slog.Default when nil).
	Log *slog.Logger
	// EngineCredentials are the transport credentials the leader dials
	// members' engines with (their control address) to carry out volume
	// operations; nil dials in plain text, for systems run with
	// allow_insecure.
	EngineCredentials credentials.TransportCredentials
	// VolumePass is how often the leader revisits volumes with unfinished
	// operations, deletes pending on nodes that were down, and nexuses
	// left behind (DefaultVolumePass when zero; negative: never, the owner
	// calls VolumePass itself).
	VolumePass time.Duration
	// PartialWait is how long a replica whose node is away (or whose
	// child is offline) is waited for before it is replaced on another
	// node (DefaultPartialWait when zero; negative: not at all).
	PartialWait time.Duration
	// GCGrace is how long a replica or nexus that no volume owns must stay
	// so before it is destroyed (DefaultGCGrace when zero; negative: no
	// grace).
	GCGrace time.Duration
	// MoveGrace is how long a planned move keeps the old nexus, ANA
	// inaccessible, once the new one serves, before destroying it, so
	// that hosts connect the new path first (DefaultMoveGrace when zero;
	// negative: none).
	MoveGrace time.Duration
}

// Service is one replica of the management service. Its methods are safe
// for concurrent use.
type Service struct {
	mgmtv1.UnimplementedMgmtServiceServer

	cfg Config
	k   keys
	log *slog.Logger

	mu          sync.Mutex
	leading     bool
	fenceKey    string
	fenceRev    int64
	leaderSince time.Time
	leaderCh    chan struct{} // closed and replaced on every leadership change
	// termEnd ends the context of every operation this leader runs when
	// its leadership ends, so that a deposed leader stops calling engines
	// (its store writes fail on the election fence anyway).
	termCtx context.Context
	termEnd context.CancelFunc
	// heartbeats holds the last heartbeat (Unix ms) of each member UUID
	// seen by this leader. Heartbeats are not written to etcd one by one:
	// only the leader judges them, and a new leader grants every member a
	// full timeout from its election anyway.
	heartbeats map[string]int64
	// lastOther is the last heartbeat (Unix ms) this leader got from a
	// member other than its own node's. While none came for a whole
	// timeout (cutOff, since cutSince), this leader is more likely the one
	// cut off than every other node gone: it judges nobody until its
	// session would have ended had it been cut off from etcd too, and
	// once another member is heard again every member gets a whole
	// timeout from then (graceFrom).
	lastOther, graceFrom, cutSince int64
	cutOff                         bool
	// reports are the nodes' pool reports, kept in memory: they are live
	// state, resent by the nodes to every new leader.
	reports reportCache
	vols    *volumes
	// healing is the reconcilers' memory of repairs in this term.
	healing healState
	gc      gcState
	drained drainedNodes
	// recon runs the reconcilers while this replica leads.
	recon *reconcilers

	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a Service; Start makes it campaign for leadership.
func New(cfg Config) (*Service, error) {
	if cfg.System == "" || cfg.Address == "" || cfg.Etcd == nil {
		return nil, errors.New("mgmt: System, Address and Etcd are required")
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if cfg.HeartbeatTimeout <= cfg.HeartbeatInterval {
		return nil, fmt.Errorf("mgmt: heartbeat timeout %v must exceed the interval %v", cfg.HeartbeatTimeout, cfg.HeartbeatInterval)
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = cfg.HeartbeatInterval
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.VolumePass == 0 {
		cfg.VolumePass = DefaultVolumePass
	}
	if cfg.PartialWait == 0 {
		cfg.PartialWait = DefaultPartialWait
	}
	if cfg.GCGrace == 0 {
		cfg.GCGrace = DefaultGCGrace
	}
	if cfg.MoveGrace == 0 {
		cfg.MoveGrace = DefaultMoveGrace
	}
	return &Service{cfg: cfg, k: newKeys(cfg.System), log: cfg.Log.With("system", cfg.System, "replica", cfg.Address),
		leaderCh: make(chan struct{}), vols: &volumes{eng: engines{creds: cfg.EngineCredentials}}}, nil
}

// Start campaigns for leadership in the background until Close. While this
// replica leads, it also runs the checker that marks silent members
// unresponsive.
func (s *Service) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.done = make(chan struct{})
	go s.run(ctx)
}

// Close stops campaigning and gives up leadership (the election key's lease
// is revoked, so another replica takes over at once).
func (s *Service) Close() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
	s.cancel = nil
	s.vols.eng.close()
}

// VolumePass runs one pass of the leader over the volumes with unfinished
// business (see Config.VolumePass); it fails on a replica that does not
// lead.
func (s *Service) VolumePass(ctx context.Context) error {
	if err := s.requireLeader(ctx); err != nil {
		return err
	}
	return s.volumePass(ctx)
}

func (s *Service) run(ctx context.Context) {
	defer close(s.done)
	for ctx.Err() == nil {
		if err := s.campaign(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("leader election", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
}

func (s *Service) campaign(ctx context.Context) error {
	// The session lives on a background context so that Close can still
	// revoke its lease after ctx is cancelled.
	sess, err := concurrency.NewSession(s.cfg.Etcd, concurrency.WithTTL(s.cfg.SessionTTL))
	if err != nil {
		return err
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, s.k.election())
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-cctx.Done():
		}
	}()
	if err := el.Campaign(cctx, s.cfg.Address); err != nil {
		return err
	}
	s.setLeader(el.Key(), el.Rev())
	defer s.clearLeader()
	s.log.Info("elected management service leader")
	var tick <-chan time.Time
	if s.cfg.CheckInterval > 0 {
		t := time.NewTicker(s.cfg.CheckInterval)
		defer t.Stop()
		tick = t.C
	}
	s.healing.reset()
	if s.cfg.VolumePass > 0 {
		// A new leader resumes what the last one left at once.
		go s.runReconcilers(cctx)
	}
	for {
		select {
		case <-cctx.Done():
			if ctx.Err() == nil {
				s.log.Warn("lost management service leadership (etcd session ended)")
			}
			return nil
		case <-tick:
			if _, err := s.CheckMembers(cctx); err != nil && cctx.Err() == nil {
				s.log.Warn("member check", "err", err)
			}
		}
	}
}

func (s *Service) setLeader(key string, rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leading, s.fenceKey, s.fenceRev, s.leaderSince = true, key, rev, s.cfg.Now()
	s.heartbeats = map[string]int64{}
	s.lastOther, s.graceFrom, s.cutOff = s.leaderSince.UnixMilli(), 0, false
	s.reports.reset()
	s.termCtx, s.termEnd = context.WithCancel(context.Background())
	close(s.leaderCh)
	s.leaderCh = make(chan struct{})
}

func (s *Service) clearLeader() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.leading {
		return
	}
	s.leading = false
	s.heartbeats = nil
	if s.termEnd != nil {
		s.termEnd()
	}
	close(s.leaderCh)
	s.leaderCh = make(chan struct{})
}

// inTerm returns ctx, also ended when this replica's current leadership
// ends; it fails when this replica does not lead.
func (s *Service) inTerm(ctx context.Context) (context.Context, context.CancelFunc, error) {
	s.mu.Lock()
	term, leading := s.termCtx, s.leading
	s.mu.Unlock()
	if !leading {
		return nil, nil, s.notLeader(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(term, cancel)
	return ctx, func() { stop(); cancel() }, nil
}

// IsLeader reports whether this replica currently leads.
func (s *Service) IsLeader() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leading
}

// LeaderChanged returns a channel closed at the next change of this
// replica's leadership.
func (s *Service) LeaderChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leaderCh
}

func (s *Service) fence() (string, int64, time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fenceKey, s.fenceRev, s.leaderSince, s.leading
}

// Leader returns the address of the current leader, "" when none is
// elected.
func (s *Service) Leader(ctx context.Context) (string, error) {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.election()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", storeErr(err, "read the leader")
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// notLeader builds the error a non-leader answers with.
func (s *Service) notLeader(ctx context.Context) error {
	leader, _ := s.Leader(ctx)
	if leader == s.cfg.Address {
		// Our own stale key from before a restart (its lease has not
		// expired yet): no useful hint.
		leader = ""
	}
	return &NotLeaderError{Leader: leader}
}

func (s *Service) requireLeader(ctx context.Context) error {
	if _, _, _, ok := s.fence(); !ok {
		return s.notLeader(ctx)
	}
	return nil
}

// txn commits ops if cmps hold and this replica still holds the election
// key it won. It reports false when a comparison failed (the caller re-reads
// and retries) and a NotLeaderError when leadership was lost.
func (s *Service) txn(ctx context.Context, cmps []clientv3.Cmp, ops ...clientv3.Op) (bool, error) {
	ok, _, err := s.txnRev(ctx, cmps, ops...)
	return ok, err
}

// txnRev is txn that also returns the store revision of a successful
// transaction: the mod revision of every key it put.
func (s *Service) txnRev(ctx context.Context, cmps []clientv3.Cmp, ops ...clientv3.Op) (bool, int64, error) {
	key, rev, _, ok := s.fence()
	if !ok {
		return false, 0, s.notLeader(ctx)
	}
	cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", rev))
	resp, err := s.cfg.Etcd.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, 0, storeErr(err, "update the system state")
	}
	if resp.Succeeded {
		return true, resp.Header.Revision, nil
	}
	// Tell a lost race from a lost election.
	g, err := s.cfg.Etcd.Get(ctx, key)
	if err != nil {
		return false, 0, storeErr(err, "read the election key")
	}
	if len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != rev {
		s.clearLeader()
		return false, 0, s.notLeader(ctx)
	}
	return false, 0, nil
}

func (s *Service) nowMs() int64 { return s.cfg.Now().UnixMilli() }

// noteHeartbeat records a heartbeat of m in memory.
func (s *Service) noteHeartbeat(m *Member, ms int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.heartbeats != nil && ms > s.heartbeats[m.UUID] {
		s.heartbeats[m.UUID] = ms
	}
	if m.Address != s.cfg.Address {
		s.lastOther = max(s.lastOther, ms)
	}
}

// judgedFrom returns the time (Unix ms) from which CheckMembers counts
// missing heartbeats besides the leader's election: when no member other
// than the leader's own node has been heard for a whole timeout, although
// some are expected, the leader takes itself for cut off (a partition of
// its node: its own heartbeats still arrive). It then judges nobody for
// SessionTTL (a leader really cut off loses its session meanwhile, and its
// verdicts could only be late: written when the partition heals, against
// members whose heartbeats have not caught up yet); after that, members
// are judged a timeout later, as gone. Once another member is heard again,
// every member gets a whole timeout from then, so that it does not condemn
// them (and move the nexuses they serve) before their heartbeats resume.
func (s *Service) judgedFrom(now int64, all []*Member) int64 {
	others := false
	for _, m := range all {
		if m.Address != s.cfg.Address && (m.State == StateJoined || m.State == StateStopped || m.State == StateErrored) {
			others = true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if others && now-s.lastOther > s.cfg.HeartbeatTimeout.Milliseconds() {
		if !s.cutOff {
			s.cutOff, s.cutSince = true, now
			s.log.Warn("no heartbeat from any other member for the heartbeat timeout: this replica may be the one cut off; "+
				"members are not judged until its session would have ended, and get another timeout then",
				"session_ttl_s", s.cfg.SessionTTL)
		}
		s.graceFrom = max(s.graceFrom, min(now, s.cutSince+int64(s.cfg.SessionTTL)*1000))
	} else if s.cutOff {
		s.cutOff, s.graceFrom = false, max(s.graceFrom, now)
	}
	return s.graceFrom
}

// lastHeartbeat is the newest heartbeat known for m.
func (s *Service) lastHeartbeat(m *Member) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(m.LastHB, s.heartbeats[m.UUID])
}

func (s *Service) checkSystem(system string) error {
	if system != s.cfg.System {
		return fault.New(fault.FailedPrecondition, CodeForeignSystem,
			fmt.Sprintf("node belongs to system %q, this is system %q", system, s.cfg.System),
			"point the node at the access points of its own system, or reformat it for this one (nexctl storage format --force)")
	}
	return nil
}

// Join implements MgmtService.Join.
func (s *Service) Join(ctx context.Context, req *mgmtv1.JoinRequest) (*mgmtv1.JoinResponse, error) {
	m, err := s.join(ctx, req)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &mgmtv1.JoinResponse{Rank: m.Rank, State: string(m.State), Leader: s.cfg.Address,
		HeartbeatIntervalMs: s.cfg.HeartbeatInterval.Milliseconds()}, nil
}

func (s *Service) join(ctx context.Context, req *mgmtv1.JoinRequest) (*Member, error) {
	if err := s.checkSystem(req.System); err != nil {
		return nil, err
	}
	id, err := uuid.Parse(req.Uuid)
	if err != nil || id == uuid.Nil {
		return nil, fault.New(fault.InvalidArgument, CodeBadRequest, fmt.Sprintf("join: %q is not a node UUID", req.Uuid),
			"format the node (nexctl storage format) so that it has a superblock")
	}
	uid := id.String()
	if _, _, err := net.SplitHostPort(req.Address); err != nil {
		return nil, fault.New(fault.InvalidArgument, CodeBadRequest, fmt.Sprintf("join: address %q is not host:port", req.Address),
			"set grpc_listen to an address the access points can reach")
	}
	if err := s.requireLeader(ctx); err != nil {
		return nil, err
	}
	for attempt := 0; attempt < maxTxnAttempts; attempt++ {
		all, err := listMembers(ctx, s.cfg.Etcd, s.k)
		if err != nil {
			return nil, err
		}
		now := s.nowMs()
		var m *Member
		for _, x := range all {
			if x.UUID == uid {
				m = x
			} else if req.Name != "" && x.DisplayName() == req.Name && x.State != StateExcluded {
				return nil, fault.New(fault.AlreadyExists, CodeNameInUse,
					fmt.Sprintf("node name %q is in use by rank %d (node %s)", req.Name, x.Rank, x.UUID),
					"give this node its own node_name, or exclude the other rank if that node is gone")
			} else if strings.EqualFold(x.Address, req.Address) && x.State == StateJoined &&
				now-s.lastHeartbeat(x) <= s.cfg.HeartbeatTimeout.Milliseconds() {
				return nil, fault.New(fault.AlreadyExists, CodeAddressInUse,
					fmt.Sprintf("address %s is in use by rank %d (node %s), which is alive", req.Address, x.Rank, x.UUID),
					fmt.Sprintf("give this node its own grpc_listen address, or stop the other node and exclude rank %d", x.Rank))
			}
		}
		if m != nil {
			if m.State == StateExcluded {
				return nil, fault.New(fault.FailedPrecondition, CodeExcluded,
					fmt.Sprintf("rank %d (node %s) is excluded from the system", m.Rank, uid),
					fmt.Sprintf("clear it with `nexctl system exclude --clear --ranks %d`, then start it", m.Rank))
			}
			prev := m.State
			m.Address, m.FaultDomain, m.Labels, m.Name, m.HostNQN = req.Address, req.FaultDomain, req.Labels, req.Name, req.HostNqn
			// A member an operator stopped stays stopped across restarts.
			m.State, m.Info, m.LastHB = StateJoined, "rejoined", now
			if prev == StateStopped || (prev == StateUnresponsive && m.PrevState == StateStopped) {
				m.State, m.Info = StateStopped, "rejoined; stopped by an operator"
			}
			m.PrevState = ""
			ok, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.member(uid)), "=", m.modRev)},
				clientv3.OpPut(s.k.member(uid), encodeMember(m)))
			if err != nil {
				return nil, err
			}
			if ok {
				s.noteHeartbeat(m, now)
				s.reports.put(uid, req.Pools, now)
				s.log.Info("member rejoined", "rank", m.Rank, "uuid", uid, "address", m.Address, "was", prev, "state", m.State)
				s.kickVolumes()
				return m, nil
			}
			continue
		}
		next, nextRev, err := readNextRank(ctx, s.cfg.Etcd, s.k)
		if err != nil {
			return nil, err
		}
		rank := next
		if req.Rank != NoRank {
			// The node remembers a rank the store does not (the store was
			// rebuilt): keep it if nobody holds it.
			taken := false
			for _, x := range all {
				taken = taken || x.Rank == req.Rank
			}
			if !taken {
				rank = req.Rank
			}
		}
		if rank == NoRank {
			return nil, fault.New(fault.ResourceExhausted, CodeNoRanks, "no ranks left", "")
		}
		newNext := max(next, rank+1)
		m = &Member{UUID: uid, Rank: rank, Address: req.Address, FaultDomain: req.FaultDomain, Labels: req.Labels,
			State: StateJoined, Info: "joined", LastHB: now, JoinedAt: now, Name: req.Name, HostNQN: req.HostNqn}
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(s.k.member(uid)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(s.k.rank(rank)), "=", 0),
			clientv3.Compare(clientv3.ModRevision(s.k.nextRank()), "=", nextRev),
		}
		ok, err := s.txn(ctx, cmps,
			clientv3.OpPut(s.k.member(uid), encodeMember(m)),
			clientv3.OpPut(s.k.rank(rank), uid),
			clientv3.OpPut(s.k.nextRank(), fmt.Sprint(newNext)))
		if err != nil {
			return nil, err
		}
		if ok {
			s.noteHeartbeat(m, now)
			s.reports.put(uid, req.Pools, now)
			s.log.Info("member joined", "rank", rank, "uuid", uid, "address", m.Address)
			return m, nil
		}
	}
	return nil, fault.New(fault.Unavailable, CodeStore, "join: too many concurrent changes", "retry")
}

// Heartbeat implements MgmtService.Heartbeat.
func (s *Service) Heartbeat(ctx context.Context, req *mgmtv1.HeartbeatRequest) (*mgmtv1.HeartbeatResponse, error) {
	st, err := s.heartbeat(ctx, req)
	if err != nil {
		return nil, ToStatus(err)
	}
	s.reports.put(req.Uuid, req.Pools, s.nowMs())
	if req.Pools != nil {
		// Nodes report their pools when they change (a pool imported,
		// faulted, filled up): the reconcilers take another look.
		s.kickVolumes()
	}
	return &mgmtv1.HeartbeatResponse{State: string(st), ResendPools: !s.reports.has(req.Uuid)}, nil
}

func (s *Service) heartbeat(ctx context.Context, req *mgmtv1.HeartbeatRequest) (State, error) {
	if err := s.checkSystem(req.System); err != nil {
		return "", err
	}
	if err := s.requireLeader(ctx); err != nil {
		return "", err
	}
	for attempt := 0; attempt < maxTxnAttempts; attempt++ {
		// Heartbeats are frequent: read the leader's local copy (a stale
		// record fails the revision check of any write made from it).
		var opts []clientv3.OpOption
		if attempt == 0 {
			opts = append(opts, clientv3.WithSerializable())
		}
		m, err := getMember(ctx, s.cfg.Etcd, s.k, req.Uuid, opts...)
		if err != nil {
			return "", err
		}
		if m == nil || (req.Rank != NoRank && m.Rank != req.Rank) {
			return "", fault.New(fault.NotFound, CodeNotMember, fmt.Sprintf("node %s (rank %d) is not a member", req.Uuid, req.Rank),
				"join the system first")
		}
		if m.State == StateExcluded {
			return m.State, nil
		}
		now := s.nowMs()
		prev := m.State
		if m.State == StateUnresponsive {
			m.State, m.Info = StateJoined, "heartbeats resumed"
			if m.PrevState == StateStopped || m.PrevState == StateErrored {
				m.State = m.PrevState
			}
			m.PrevState = ""
		}
		if req.Error != "" && (m.State == StateJoined || m.State == StateStopped) {
			m.State, m.Info = StateErrored, req.Error
		}
		if m.State == prev {
			// The common case: nothing to write.
			s.noteHeartbeat(m, now)
			return m.State, nil
		}
		m.LastHB = now
		ok, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.member(m.UUID)), "=", m.modRev)},
			clientv3.OpPut(s.k.member(m.UUID), encodeMember(m)))
		if err != nil {
			return "", err
		}
		if ok {
			s.noteHeartbeat(m, now)
			s.log.Info("member state", "rank", m.Rank, "from", prev, "to", m.State, "info", m.Info)
			s.kickVolumes()
			return m.State, nil
		}
	}
	return "", fault.New(fault.Unavailable, CodeStore, "heartbeat: too many concurrent changes", "retry")
}

// CheckMembers is one pass of the checker: every joined, stopped or errored
// member whose last heartbeat is older than HeartbeatTimeout becomes
// unresponsive. Heartbeats are counted from no earlier than the moment this
// replica became leader, so a failover does not condemn members that were
// heartbeating to the old leader, nor than the moment it found itself cut
// off (judgedFrom). It returns the ranks it marked.
func (s *Service) CheckMembers(ctx context.Context) ([]uint32, error) {
	_, _, since, ok := s.fence()
	if !ok {
		return nil, s.notLeader(ctx)
	}
	all, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	now := s.nowMs()
	from := max(since.UnixMilli(), s.judgedFrom(now, all))
	var marked []uint32
	for _, m := range all {
		if m.State != StateJoined && m.State != StateStopped && m.State != StateErrored {
			continue
		}
		hb := s.lastHeartbeat(m)
		if now-max(hb, from) <= s.cfg.HeartbeatTimeout.Milliseconds() {
			continue
		}
		prev := m.State
		m.State, m.PrevState, m.LastHB = StateUnresponsive, prev, hb
		m.Info = "no heartbeat since " + time.UnixMilli(hb).UTC().Format(time.RFC3339)
		ok, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.member(m.UUID)), "=", m.modRev)},
			clientv3.OpPut(s.k.member(m.UUID), encodeMember(m)))
		if err != nil {
			return marked, err
		}
		if ok { // otherwise a heartbeat or an operator got there first
			s.log.Warn("member unresponsive", "rank", m.Rank, "address", m.Address, "was", prev)
			marked = append(marked, m.Rank)
			s.kickVolumes()
		}
	}
	return marked, nil
}

// LeaderQuery implements MgmtService.LeaderQuery; any replica answers.
func (s *Service) LeaderQuery(ctx context.Context, _ *mgmtv1.LeaderQueryRequest) (*mgmtv1.LeaderQueryResponse, error) {
	leader, err := s.Leader(ctx)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &mgmtv1.LeaderQueryResponse{System: s.cfg.System, Leader: leader, Replicas: s.cfg.Replicas}, nil
}

// Policy returns the authorization table of the management service: nodes
// (server role) join and heartbeat; everyone may query; only an admin may
// stop, start or exclude.
func Policy() *security.Policy {
	p := &security.Policy{}
	p.Allow(mgmtv1.MgmtService_Join_FullMethodName, security.RoleServer, security.RoleAdmin)
	p.Allow(mgmtv1.MgmtService_Heartbeat_FullMethodName, security.RoleServer, security.RoleAdmin)
	p.Allow(mgmtv1.MgmtService_LeaderQuery_FullMethodName, security.RoleAdmin, security.RoleServer)
	p.Allow(mgmtv1.MgmtService_SystemQuery_FullMethodName, security.RoleAdmin, security.RoleServer)
	p.Allow(mgmtv1.MgmtService_SystemStop_FullMethodName, security.RoleAdmin)
	p.Allow(mgmtv1.MgmtService_SystemStart_FullMethodName, security.RoleAdmin)
	p.Allow(mgmtv1.MgmtService_SystemExclude_FullMethodName, security.RoleAdmin)
	for _, m := range []string{mgmtv1.VolumeService_ListPools_FullMethodName, mgmtv1.VolumeService_ListNodes_FullMethodName,
		mgmtv1.VolumeService_ListVolumes_FullMethodName, mgmtv1.VolumeService_GetVolume_FullMethodName,
		mgmtv1.VolumeService_ListSnapshots_FullMethodName, mgmtv1.VolumeService_GetSnapshot_FullMethodName} {
		p.Allow(m, security.RoleAdmin, security.RoleServer, security.RoleCSI)
	}
	// The csi role (the CSI controller, internal/csi) provisions,
	// publishes and deletes volumes and snapshots, and nothing else (the server confines
	// it to exactly these calls); only an admin verifies, moves, heals by
	// hand or changes nodes.
	for _, m := range []string{mgmtv1.VolumeService_CreateVolume_FullMethodName, mgmtv1.VolumeService_PublishVolume_FullMethodName,
		mgmtv1.VolumeService_UnpublishVolume_FullMethodName, mgmtv1.VolumeService_ResizeVolume_FullMethodName,
		mgmtv1.VolumeService_DeleteVolume_FullMethodName, mgmtv1.VolumeService_CreateSnapshot_FullMethodName,
		mgmtv1.VolumeService_DeleteSnapshot_FullMethodName} {
		p.Allow(m, security.RoleAdmin, security.RoleCSI)
	}
	p.Allow(mgmtv1.VolumeService_VerifyVolume_FullMethodName, security.RoleAdmin)
	// Host agents (csi identity) report the paths that failed; the leader
	// moves a nexus on that only once its own probe confirms it.
	p.Allow(mgmtv1.VolumeService_ReportPathFailure_FullMethodName, security.RoleAdmin, security.RoleCSI)
	// Engines keep their volume nexuses' health records here.
	for _, m := range []string{mgmtv1.VolumeService_LoadNexusHealth_FullMethodName, mgmtv1.VolumeService_SaveNexusHealth_FullMethodName,
		mgmtv1.VolumeService_DeleteNexusHealth_FullMethodName} {
		p.Allow(m, security.RoleServer)
	}
	return p
}
