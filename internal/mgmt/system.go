package mgmt

import (
	"context"
	"fmt"
	"net"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/hostlist"
)

// maxSelectedRanks bounds a rank selection, so that "0-4000000000" is an
// error rather than four billion lookups.
const maxSelectedRanks = 1 << 16

// selection is the members a system operation applies to.
type selection struct {
	members     []*Member
	absentRanks string
	absentHosts string
}

// selectMembers resolves a rank list or a host list (not both; neither
// selects every member). Hosts given without a port match any port.
func (s *Service) selectMembers(ctx context.Context, ranks, hosts string) (*selection, error) {
	ranks, hosts = strings.TrimSpace(ranks), strings.TrimSpace(hosts)
	if ranks != "" && hosts != "" {
		return nil, fault.New(fault.InvalidArgument, CodeBadSelection, "both ranks and hosts given",
			"select members by ranks or by hosts, not both")
	}
	all, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	sel := &selection{}
	switch {
	case ranks != "":
		rs, err := hostlist.ParseRanks(ranks)
		if err != nil {
			return nil, fault.Wrap(err, fault.InvalidArgument, CodeBadSelection, "bad rank list", "write ranks such as 0-2,5")
		}
		if rs.Len() > maxSelectedRanks {
			return nil, fault.New(fault.InvalidArgument, CodeBadSelection,
				fmt.Sprintf("rank list %q selects %d ranks", ranks, rs.Len()), "select fewer ranks")
		}
		present := hostlist.NewRankSet()
		for _, m := range all {
			if rs.Contains(m.Rank) {
				sel.members = append(sel.members, m)
				present.Add(m.Rank)
			}
		}
		absent := hostlist.NewRankSet()
		for _, r := range rs.Ranks() {
			if !present.Contains(r) {
				absent.Add(r)
			}
		}
		sel.absentRanks = absent.String()
	case hosts != "":
		list, err := hostlist.Expand(hosts, 0)
		if err != nil {
			return nil, fault.Wrap(err, fault.InvalidArgument, CodeBadSelection, "bad host list", "write hosts such as node-[1-3] or node-1:10124")
		}
		absent := &hostlist.HostSet{}
		picked := map[string]bool{}
		for _, h := range list {
			found := false
			for _, m := range all {
				if hostMatches(h, m.Address) {
					found = true
					if !picked[m.UUID] {
						picked[m.UUID] = true
						sel.members = append(sel.members, m)
					}
				}
			}
			if !found {
				absent.Insert(h)
			}
		}
		sel.absentHosts = absent.String()
	default:
		sel.members = all
	}
	return sel, nil
}

// hostMatches reports whether a selected host (with or without a port)
// names the member address host:port.
func hostMatches(sel, addr string) bool {
	if strings.EqualFold(sel, addr) {
		return true
	}
	if _, _, err := net.SplitHostPort(sel); err == nil {
		return false // a port was given and differs
	}
	host, _, err := net.SplitHostPort(addr)
	return err == nil && strings.EqualFold(strings.Trim(sel, "[]"), host)
}

// SystemQuery implements MgmtService.SystemQuery.
func (s *Service) SystemQuery(ctx context.Context, req *mgmtv1.SystemQueryRequest) (*mgmtv1.SystemQueryResponse, error) {
	if err := s.requireLeader(ctx); err != nil {
		return nil, ToStatus(err)
	}
	sel, err := s.selectMembers(ctx, req.Ranks, req.Hosts)
	if err != nil {
		return nil, ToStatus(err)
	}
	resp := &mgmtv1.SystemQueryResponse{AbsentRanks: sel.absentRanks, AbsentHosts: sel.absentHosts}
	for _, m := range sel.members {
		pm := m.Proto()
		pm.LastHeartbeatMs = s.lastHeartbeat(m)
		resp.Members = append(resp.Members, pm)
	}
	return resp, nil
}

// decide returns the state an operation moves a member to, whether that is
// a no-op, or why it cannot.
type decide func(m *Member) (to State, noop bool, err error)

func (s *Service) apply(ctx context.Context, ranks, hosts, info string, d decide) (*mgmtv1.SystemResultsResponse, error) {
	if err := s.requireLeader(ctx); err != nil {
		return nil, ToStatus(err)
	}
	sel, err := s.selectMembers(ctx, ranks, hosts)
	if err != nil {
		return nil, ToStatus(err)
	}
	resp := &mgmtv1.SystemResultsResponse{AbsentRanks: sel.absentRanks, AbsentHosts: sel.absentHosts}
	for _, m := range sel.members {
		r, err := s.applyOne(ctx, m, info, d)
		if err != nil {
			return nil, ToStatus(err)
		}
		resp.Results = append(resp.Results, r)
	}
	return resp, nil
}

// applyOne changes one member, re-reading it when a heartbeat or the checker
// changed it in between.
func (s *Service) applyOne(ctx context.Context, m *Member, info string, d decide) (*mgmtv1.MemberResult, error) {
	for attempt := 0; attempt < maxTxnAttempts; attempt++ {
		if attempt > 0 {
			fresh, err := getMember(ctx, s.cfg.Etcd, s.k, m.UUID)
			if err != nil {
				return nil, err
			}
			if fresh == nil {
				return &mgmtv1.MemberResult{Rank: m.Rank, Address: m.Address, Errored: true, Msg: "member vanished"}, nil
			}
			m = fresh
		}
		res := &mgmtv1.MemberResult{Rank: m.Rank, Address: m.Address, State: string(m.State)}
		to, noop, err := d(m)
		if err != nil {
			res.Errored, res.Msg = true, err.Error()
			return res, nil
		}
		if noop {
			return res, nil
		}
		if !CanTransition(m.State, to) {
			res.Errored, res.Msg = true, (&TransitionError{Rank: m.Rank, From: m.State, To: to}).Error()
			return res, nil
		}
		prev := m.State
		m.State, m.Info, m.LastHB = to, info, s.lastHeartbeat(m)
		if to != StateUnresponsive {
			m.PrevState = ""
		}
		ok, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.member(m.UUID)), "=", m.modRev)},
			clientv3.OpPut(s.k.member(m.UUID), encodeMember(m)))
		if err != nil {
			return nil, err
		}
		if ok {
			s.log.Info("member state", "rank", m.Rank, "from", prev, "to", to, "info", info)
			s.kickVolumes()
			res.State = string(to)
			return res, nil
		}
	}
	return nil, fault.New(fault.Unavailable, CodeStore, "too many concurrent changes", "retry")
}

// SystemStop implements MgmtService.SystemStop.
func (s *Service) SystemStop(ctx context.Context, req *mgmtv1.SystemStopRequest) (*mgmtv1.SystemResultsResponse, error) {
	return s.apply(ctx, req.Ranks, req.Hosts, "stopped by an operator", func(m *Member) (State, bool, error) {
		switch m.State {
		case StateStopped:
			return "", true, nil
		case StateUnresponsive:
			return "", false, fmt.Errorf("rank %d is not answering; restart its nexstor server or exclude it", m.Rank)
		}
		return StateStopped, false, nil
	})
}

// SystemStart implements MgmtService.SystemStart.
func (s *Service) SystemStart(ctx context.Context, req *mgmtv1.SystemStartRequest) (*mgmtv1.SystemResultsResponse, error) {
	return s.apply(ctx, req.Ranks, req.Hosts, "started by an operator", func(m *Member) (State, bool, error) {
		switch m.State {
		case StateJoined:
			return "", true, nil
		case StateUnresponsive:
			return "", false, fmt.Errorf("rank %d is not answering; restart its nexstor server (it rejoins by itself)", m.Rank)
		}
		return StateJoined, false, nil
	})
}

// SystemExclude implements MgmtService.SystemExclude.
func (s *Service) SystemExclude(ctx context.Context, req *mgmtv1.SystemExcludeRequest) (*mgmtv1.SystemResultsResponse, error) {
	if req.Clear {
		return s.apply(ctx, req.Ranks, req.Hosts, "exclusion cleared", func(m *Member) (State, bool, error) {
			if m.State != StateExcluded {
				return "", true, nil
			}
			return StateStopped, false, nil
		})
	}
	return s.apply(ctx, req.Ranks, req.Hosts, "excluded by an operator", func(m *Member) (State, bool, error) {
		if m.State == StateExcluded {
			return "", true, nil
		}
		return StateExcluded, false, nil
	})
}
