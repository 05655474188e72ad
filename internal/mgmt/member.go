package mgmt

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

// MemberConfig configures RunMember: the storage-node side of membership.
type MemberConfig struct {
	Client      *Client
	System      string
	UUID        string // from the node superblock
	Address     string // grpc_listen as the access points reach it
	FaultDomain string
	Labels      map[string]string
	// Name is the configured node name; "" lets the service name the node
	// "node-<rank>".
	Name string
	// HostNQN is the NVMe host NQN the node's engine connects with
	// (control.HostNQN of the node UUID).
	HostNQN string
	// Pools returns the node's current pool report; nil sends none. It is
	// called before the join and before every heartbeat, from RunMember's
	// goroutine, so it should be quick (no I/O). It must return a new
	// message every call, not one it modifies later. An error sends no
	// report that time (the leader keeps the last one it took).
	Pools func(context.Context) (*mgmtv1.PoolReportSet, error)
	// Rank is the rank in the superblock, NoRank when it has none.
	Rank uint32
	// OnRank persists a newly assigned rank (control.SetRank). It is
	// called before any heartbeat is sent with that rank; an error stops
	// RunMember.
	OnRank func(rank uint32) error
	// OnState is called with the state the system holds for this node
	// whenever it changes: the node serves I/O only while joined.
	OnState func(State)
	// EngineError returns the engine's failure to report ("" when
	// healthy); nil means always healthy.
	EngineError func() string
	// Interval between heartbeats until the leader says otherwise.
	Interval time.Duration
	Log      *slog.Logger
}

// RunMember joins the system and heartbeats until ctx ends, rejoining when
// the leader no longer knows the node (after an exclusion is cleared, or a
// rebuilt store). It returns ctx's error, or the refusal when the system
// refuses the node for good (a foreign system name, a malformed request).
//
// The pool report (cfg.Pools) goes with the join, and with a heartbeat
// only when it differs (proto.Equal) from the last report a leader
// accepted, or when the leader asked for it (resend_pools): a report is
// taken as accepted only when the call carrying it succeeded, so a lost
// one is sent again with the next heartbeat.
func RunMember(ctx context.Context, cfg MemberConfig) error {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	interval := cfg.Interval
	if interval <= 0 {
		interval = DefaultHeartbeatInterval
	}
	rank := cfg.Rank
	var state State
	setState := func(s State) {
		if s != state {
			state = s
			if cfg.OnState != nil {
				cfg.OnState(s)
			}
		}
	}
	wait := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	reports := poolReporter{pools: cfg.Pools, log: log}
	joined := false
	for {
		if !joined {
			// A leader that does not know the node has no report of
			// it either.
			reports.last = nil
			pools := reports.current(ctx)
			var resp *mgmtv1.JoinResponse
			err := cfg.Client.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
				var err error
				resp, err = cl.Join(ctx, &mgmtv1.JoinRequest{System: cfg.System, Uuid: cfg.UUID, Address: cfg.Address,
					FaultDomain: cfg.FaultDomain, Rank: rank, Labels: cfg.Labels, Name: cfg.Name, HostNqn: cfg.HostNQN,
					Pools: pools})
				return err
			})
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case err != nil:
				code := FaultCode(err)
				if code == CodeForeignSystem || status.Code(err) == codes.InvalidArgument || status.Code(err) == codes.PermissionDenied {
					return err
				}
				if code == CodeExcluded {
					setState(StateExcluded)
				}
				log.Warn("join", "err", err)
				if err := wait(interval); err != nil {
					return err
				}
				continue
			}
			if resp.Rank != rank {
				if cfg.OnRank != nil {
					if err := cfg.OnRank(resp.Rank); err != nil {
						return err
					}
				}
				rank = resp.Rank
			}
			if resp.HeartbeatIntervalMs > 0 {
				interval = time.Duration(resp.HeartbeatIntervalMs) * time.Millisecond
			}
			log.Info("joined the system", "rank", rank, "leader", resp.Leader)
			joined = true
			reports.accepted(pools)
			setState(State(resp.State))
		}
		if err := wait(interval); err != nil {
			return err
		}
		engineErr := ""
		if cfg.EngineError != nil {
			engineErr = cfg.EngineError()
		}
		pools := reports.changed(ctx)
		var resp *mgmtv1.HeartbeatResponse
		err := cfg.Client.DoWithin(ctx, heartbeatTry(interval), func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
			var err error
			resp, err = cl.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: cfg.System, Uuid: cfg.UUID, Rank: rank, Error: engineErr,
				Pools: pools})
			return err
		})
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case FaultCode(err) == CodeNotMember:
			joined = false
		case err != nil:
			log.Warn("heartbeat", "err", err)
		default:
			reports.accepted(pools)
			reports.resend = reports.resend || resp.ResendPools
			setState(State(resp.State))
		}
	}
}

// heartbeatTry bounds one attempt of a heartbeat: two intervals, at least
// a second. A leader whose node went silent (partitioned) then holds a
// heartbeat that long before the next access point is tried, well within
// the heartbeat timeout after which the new leader would take this node
// for gone (and move the nexuses it serves).
func heartbeatTry(interval time.Duration) time.Duration {
	return max(2*interval, time.Second)
}

// poolReporter decides which pool report goes with a join or heartbeat.
// It is used by RunMember's goroutine only.
type poolReporter struct {
	pools func(context.Context) (*mgmtv1.PoolReportSet, error)
	log   *slog.Logger
	// last is the report the leader last accepted; nil before any.
	last *mgmtv1.PoolReportSet
	// resend: the leader asked for the report.
	resend bool
	// failing is the last error of pools, "" while it succeeds: an error
	// is logged when it changes, not on every beat.
	failing string
}

// current returns the report to send now, nil when there is none.
func (p *poolReporter) current(ctx context.Context) *mgmtv1.PoolReportSet {
	if p.pools == nil {
		return nil
	}
	rep, err := p.pools(ctx)
	if err != nil {
		if msg := err.Error(); msg != p.failing {
			p.failing = msg
			p.log.Warn("pool report: sending none until it works again (the leader keeps the last one)", "err", err)
		}
		return nil
	}
	if p.failing != "" {
		p.failing = ""
		p.log.Info("pool report works again")
	}
	if rep == nil {
		rep = &mgmtv1.PoolReportSet{} // nil on the wire means "unchanged"
	}
	return rep
}

// changed returns the report to send with a heartbeat: the current one
// when the leader asked for it or it differs from the last it accepted,
// else nil.
func (p *poolReporter) changed(ctx context.Context) *mgmtv1.PoolReportSet {
	rep := p.current(ctx)
	if rep == nil || (!p.resend && p.last != nil && proto.Equal(rep, p.last)) {
		return nil
	}
	return rep
}

// accepted records that a call carrying rep succeeded (rep nil: it carried
// none, which changes nothing).
func (p *poolReporter) accepted(rep *mgmtv1.PoolReportSet) {
	if rep != nil {
		p.last, p.resend = rep, false
	}
}
