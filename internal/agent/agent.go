// Package agent keeps a consuming host's NVMe paths to its Nexstor volumes
// where the volumes are published. When a volume's nexus moves (its node
// died, or an administrator moved it), the host's path to the old place
// dies; the agent asks the management service where the volume is now,
// connects that path (the same subsystem NQN, so the kernel's native
// multipath puts it under the same block device, and queued I/O resumes on
// it), and removes dead paths once a live one exists. It is level-
// triggered: every pass looks at the kernel's paths and the volume's
// target, never at what changed. `nexstor agent` runs it; the CSI node
// plugin can embed it.
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/nvmehost"
)

// NexusNQNPrefix starts the subsystem NQN of every volume's nexus; the
// volume's UUID follows it.
const NexusNQNPrefix = "nqn.2024-11.io.nexstor:nexus:"

// Defaults of Config.
const (
	DefaultInterval = 2 * time.Second
	// DefaultCtrlLossTmo: how long the kernel keeps retrying a path the
	// agent connects before it gives it up (seconds).
	DefaultCtrlLossTmo = 600
)

// Host is the kernel NVMe host the agent drives (nvmehost.Host).
type Host interface {
	Subsystems() ([]nvmehost.Subsystem, error)
	Connect(nvmehost.ConnectOptions) (string, error)
	Delete(ctrl string) error
}

// Volumes answers where a volume is published (VolumeService.GetVolume,
// by UUID).
type Volumes interface {
	GetVolume(ctx context.Context, uuid string) (*mgmtv1.Volume, error)
}

// PathReporter is what a Volumes may also do: report that the host's path
// to the volume's target (uri) failed (VolumeService.ReportPathFailure).
// The management service probes the nexus's node and moves the nexus when
// it does not serve; it returns the volume as it is afterwards.
type PathReporter interface {
	ReportPathFailure(ctx context.Context, uuid, uri, hostNQN string) (*mgmtv1.Volume, error)
}

// DefaultReportEvery is how often at most the agent reports one volume's
// failed path (Config.ReportEvery).
const DefaultReportEvery = 5 * time.Second

// Config configures an Agent.
type Config struct {
	Host    Host
	Volumes Volumes
	// HostNQN and HostID are this host's NVMe identity
	// (nvmehost.HostIdentity), given to every path it connects: the
	// kernel refuses a second path under one host NQN with another host
	// ID, so they must be the ones the host's first path (the CSI node
	// plugin's, or nvme-cli's) used.
	HostNQN, HostID string
	// Interval between passes (DefaultInterval when zero).
	Interval time.Duration
	// Recheck: a volume whose paths are all live is asked about every
	// this many passes anyway, to see a planned move early (10 when
	// zero).
	Recheck int
	// AddressMap rewrites target addresses as this host reaches them
	// (a host behind NAT, or a VM that reaches the host's loopback at
	// another address): "127.0.0.1" -> "10.0.2.2".
	AddressMap map[string]string
	// CtrlLossTmo for the paths it connects (DefaultCtrlLossTmo when
	// zero).
	CtrlLossTmo int
	// ReportEvery: when Volumes is a PathReporter, a volume whose paths
	// all fail, the one to its target included, is reported at most this
	// often (DefaultReportEvery when zero; negative: never).
	ReportEvery time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	Log *slog.Logger
}

// Agent watches the paths. Its methods are safe for concurrent use.
type Agent struct {
	cfg Config

	mu       sync.Mutex
	passes   int
	reported map[string]time.Time // volume UUID -> last report
}

// New returns an agent; Run starts it.
func New(cfg Config) *Agent {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Recheck <= 0 {
		cfg.Recheck = 10
	}
	if cfg.CtrlLossTmo == 0 {
		cfg.CtrlLossTmo = DefaultCtrlLossTmo
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.ReportEvery == 0 {
		cfg.ReportEvery = DefaultReportEvery
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Agent{cfg: cfg, reported: map[string]time.Time{}}
}

// Run makes passes until ctx ends; errors of a pass are logged and the
// next pass tries again.
func (a *Agent) Run(ctx context.Context) error {
	t := time.NewTicker(a.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := a.Pass(ctx); err != nil && ctx.Err() == nil {
			a.cfg.Log.Warn("agent pass", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Action is something a pass did.
type Action struct {
	Volume string // UUID
	// Kind: connect or delete.
	Kind string
	// Ctrl is the controller connected or deleted.
	Ctrl       string
	Addr, Port string
	Why        string
}

func (x Action) String() string {
	return fmt.Sprintf("%s %s %s:%s (volume %s): %s", x.Kind, x.Ctrl, x.Addr, x.Port, x.Volume, x.Why)
}

// Pass looks at every Nexstor subsystem the host is connected to once:
// when a path of it is not serving, not live or in an ANA state that
// refuses I/O (or at a recheck), it asks where the
// volume is published and connects that path if the host has none there;
// once a path to the volume's target is live, paths elsewhere that are not
// live are deleted. It returns what it did.
func (a *Agent) Pass(ctx context.Context) ([]Action, error) {
	a.mu.Lock()
	a.passes++
	recheck := a.passes%a.cfg.Recheck == 0
	a.mu.Unlock()
	subs, err := a.cfg.Host.Subsystems()
	if err != nil {
		return nil, err
	}
	var acts []Action
	var errs []error
	for _, s := range subs {
		id, ok := strings.CutPrefix(s.NQN, NexusNQNPrefix)
		if !ok {
			continue
		}
		// A path that is live but refuses I/O (ANA inaccessible: the
		// volume's nexus is being moved away from it) asks too.
		allServing := len(s.Controllers) > 0
		for _, c := range s.Controllers {
			allServing = allServing && c.Serving()
		}
		if allServing && !recheck {
			continue
		}
		v, err := a.cfg.Volumes.GetVolume(ctx, id)
		if err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", id, err))
			continue
		}
		// Twice at most: once more when a report moved the volume.
		var there *nvmehost.Controller
		var addr, port string
		for attempt := 0; ; attempt++ {
			var ok bool
			if addr, port, ok = a.target(v, s.NQN); !ok {
				break // not published (or not over NVMe/TCP): nothing to connect
			}
			there = nil
			for i, c := range s.Controllers {
				if c.Addr == addr && c.Port == port {
					there = &s.Controllers[i]
				}
			}
			if there == nil {
				ctrl, err := a.cfg.Host.Connect(nvmehost.ConnectOptions{NQN: s.NQN, Addr: addr, Port: port, HostNQN: a.cfg.HostNQN, HostID: a.cfg.HostID,
					CtrlLossTmo: a.cfg.CtrlLossTmo, ReconnectDelay: 1})
				if err != nil {
					errs = append(errs, fmt.Errorf("volume %s: connect %s:%s: %w", v.GetSpec().GetName(), addr, port, err))
					break
				}
				act := Action{Volume: id, Kind: "connect", Ctrl: ctrl, Addr: addr, Port: port,
					Why: "the volume is published there and the host had no path to it"}
				a.cfg.Log.Info("agent: "+act.String(), "volume", v.GetSpec().GetName())
				acts = append(acts, act)
				break // dead paths go at a later pass, once this one is live
			}
			if there.Live() || attempt > 0 || anyServing(s.Controllers) {
				break
			}
			// The kernel is (re)connecting the path to the target and
			// no path serves: the management service hears of it; it
			// confirms and moves the nexus rather than wait for the
			// node's heartbeats to stop.
			nv := a.report(ctx, id, v, &errs)
			if nv == nil {
				break
			}
			v = nv
		}
		if there == nil || !there.Live() {
			continue
		}
		for _, c := range s.Controllers {
			if c.Name == there.Name || c.Live() {
				continue
			}
			if err := a.cfg.Host.Delete(c.Name); err != nil {
				errs = append(errs, err)
				continue
			}
			act := Action{Volume: id, Kind: "delete", Ctrl: c.Name, Addr: c.Addr, Port: c.Port,
				Why: fmt.Sprintf("the path is %s and the volume is now published at %s:%s", c.State, addr, port)}
			a.cfg.Log.Info("agent: "+act.String(), "volume", v.GetSpec().GetName())
			acts = append(acts, act)
		}
	}
	if len(errs) > 0 {
		return acts, fmt.Errorf("%d volume(s) not set right: %v", len(errs), errs)
	}
	return acts, nil
}

func anyServing(cs []nvmehost.Controller) bool {
	for _, c := range cs {
		if c.Serving() {
			return true
		}
	}
	return false
}

// report tells the management service that the host's path to v's target
// failed, at most every ReportEvery per volume; it returns the volume as
// the service answers (nil when it did not report).
func (a *Agent) report(ctx context.Context, id string, v *mgmtv1.Volume, errs *[]error) *mgmtv1.Volume {
	r, ok := a.cfg.Volumes.(PathReporter)
	if !ok || a.cfg.ReportEvery < 0 {
		return nil
	}
	now := a.cfg.Now()
	a.mu.Lock()
	last, seen := a.reported[id]
	if seen && now.Sub(last) < a.cfg.ReportEvery {
		a.mu.Unlock()
		return nil
	}
	a.reported[id] = now
	a.mu.Unlock()
	uri := v.GetStatus().GetTarget().GetUri()
	a.cfg.Log.Info("agent: reporting a failed path", "volume", v.GetSpec().GetName(), "target", uri)
	nv, err := r.ReportPathFailure(ctx, id, uri, a.cfg.HostNQN)
	if err != nil {
		*errs = append(*errs, fmt.Errorf("volume %s: report the failed path to %s: %w", v.GetSpec().GetName(), uri, err))
		return nil
	}
	return nv
}

// target is the address and port of the volume's NVMe/TCP target as this
// host reaches it, when the volume is published there under nqn.
func (a *Agent) target(v *mgmtv1.Volume, nqn string) (string, string, bool) {
	t := v.GetStatus().GetTarget()
	if t == nil || t.Protocol != "nvmf" || t.Nqn != nqn {
		return "", "", false
	}
	u, err := url.Parse(t.Uri)
	if err != nil || u.Scheme != "nvmf" {
		return "", "", false
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return "", "", false
	}
	if m, ok := a.cfg.AddressMap[host]; ok {
		host = m
	}
	return host, port, true
}
