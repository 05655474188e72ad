package mgmt

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	joined := false
	for {
		if !joined {
			var resp *mgmtv1.JoinResponse
			err := cfg.Client.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
				var err error
				resp, err = cl.Join(ctx, &mgmtv1.JoinRequest{System: cfg.System, Uuid: cfg.UUID, Address: cfg.Address,
					FaultDomain: cfg.FaultDomain, Rank: rank, Labels: cfg.Labels})
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
			setState(State(resp.State))
		}
		if err := wait(interval); err != nil {
			return err
		}
		engineErr := ""
		if cfg.EngineError != nil {
			engineErr = cfg.EngineError()
		}
		var resp *mgmtv1.HeartbeatResponse
		err := cfg.Client.Do(ctx, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
			var err error
			resp, err = cl.Heartbeat(ctx, &mgmtv1.HeartbeatRequest{System: cfg.System, Uuid: cfg.UUID, Rank: rank, Error: engineErr})
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
			setState(State(resp.State))
		}
	}
}
