package mgmt

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nexstor/nexstor/internal/control/config"
)

// SelfAccessPoint returns the entry of s.AccessPointAddrs() that names this
// server, "" when it is not an access point. An access point is this server
// when it equals grpc_listen, or when it has grpc_listen's port and its host
// is this machine (localhost, the host name or a local interface address)
// while grpc_listen listens on every address or on that same address.
func SelfAccessPoint(s *config.Server) string {
	lh, lp, err := net.SplitHostPort(s.GRPCListen)
	if err != nil {
		return ""
	}
	listen := net.JoinHostPort(strings.ToLower(lh), lp)
	hostname, _ := os.Hostname()
	local := localAddrs()
	for _, ap := range s.AccessPointAddrs() {
		if ap == listen {
			return ap
		}
		h, p, err := net.SplitHostPort(ap)
		if err != nil || p != lp {
			continue
		}
		var ips []string
		switch {
		case h == "localhost":
			ips = []string{"127.0.0.1", "::1"}
		case net.ParseIP(h) != nil:
			ips = []string{net.ParseIP(h).String()}
		case strings.EqualFold(h, hostname):
			ips = []string{"hostname"}
		default:
			continue // another machine's name: never resolve names here
		}
		for _, ip := range ips {
			if wildcard(lh) && (ip == "hostname" || local[ip]) {
				return ap
			}
			if lip := net.ParseIP(lh); lip != nil && lip.String() == ip {
				return ap
			}
		}
	}
	return ""
}

func wildcard(host string) bool { return host == "" || host == "0.0.0.0" || host == "::" }

func localAddrs() map[string]bool {
	out := map[string]bool{"127.0.0.1": true, "::1": true}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			out[n.IP.String()] = true
		}
	}
	return out
}

// AccessPoint is a running management service replica with, for embedded
// etcd, its etcd member.
type AccessPoint struct {
	Service *Service
	// Etcd is the embedded member, nil with an external cluster.
	Etcd *Embedded
	// Client is the etcd client the Service uses.
	Client *clientv3.Client
}

// StartAccessPoint starts this server's share of the management service:
// the embedded etcd member when the cluster is embedded (it waits, within
// ctx, for a quorum of access points to start theirs), the etcd client,
// and the Service campaigning for leadership. self is SelfAccessPoint(s).
// tune, when given, adjusts the Service configuration (heartbeat timing)
// before it starts.
func StartAccessPoint(ctx context.Context, s *config.Server, self string, log *slog.Logger, tune ...func(*Config)) (*AccessPoint, error) {
	if log == nil {
		log = slog.Default()
	}
	plan, err := PlanEtcd(s, self)
	if err != nil {
		return nil, err
	}
	if !plan.AccessPoint {
		return nil, fmt.Errorf("mgmt: this server (grpc_listen %s) is not one of the access points %v", s.GRPCListen, s.AccessPointAddrs())
	}
	ap := &AccessPoint{}
	if plan.Embedded != nil {
		log.Info("starting embedded etcd member", "name", plan.Embedded.Name, "client", plan.Embedded.ClientURL,
			"peers", len(plan.Embedded.InitialCluster))
		ec := *plan.Embedded
		ec.Log = log
		if ap.Etcd, err = StartEmbedded(ctx, ec); err != nil {
			return nil, err
		}
	}
	// An access point with an embedded member talks to that member only:
	// it is in the majority whenever this access point should lead, and a
	// partitioned peer then never holds this replica's requests or watches
	// (the member's own peer links notice it within the election timeout).
	//
	// A member alone in its cluster is called in this process rather than
	// over a loopback connection: on an idle system the etcd reads and
	// lease keep-alives were most of the gRPC traffic, each call waking a
	// handful of transport goroutines on both ends. A member of several
	// keeps the gRPC client, whose retries ride out the leader changes
	// that only a cluster of several has (the in-process client has none).
	endpoints := plan.Endpoints
	if plan.Embedded != nil {
		endpoints = []string{plan.Embedded.ClientURL}
	}
	if plan.Embedded != nil && plan.Embedded.alone() {
		ap.Client = ap.Etcd.Client()
	} else if ap.Client, err = NewEtcdClient(endpoints, plan.TLS); err != nil {
		ap.Close()
		return nil, err
	}
	cfg := Config{System: s.Name, Address: self, Replicas: s.AccessPointAddrs(), Etcd: ap.Client, Log: log,
		PartialWait: configWait(s.Rebuild.PartialWait), GCGrace: configWait(s.GC.Grace), MoveGrace: configWait(s.Move.Grace)}
	for _, f := range tune {
		f(&cfg)
	}
	ap.Service, err = New(cfg)
	if err != nil {
		ap.Close()
		return nil, err
	}
	ap.Service.Start()
	return ap, nil
}

// Close stops the Service (handing leadership over), the client and the
// embedded member, in that order.
func (a *AccessPoint) Close() {
	if a.Service != nil {
		a.Service.Close()
	}
	if a.Client != nil {
		a.Client.Close()
	}
	if a.Etcd != nil {
		a.Etcd.Close()
	}
}

// configWait maps a configured wait onto Config's convention: the
// configuration's 0s (act at once) is negative there, where 0 means the
// default.
func configWait(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
