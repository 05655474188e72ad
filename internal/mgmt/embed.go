package mgmt

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/security"
)

// EmbeddedConfig configures an etcd member running inside the server
// process.
type EmbeddedConfig struct {
	// Name is the member's name, unique in the cluster.
	Name string
	// Dir holds the member's data.
	Dir string
	// ClientURL and PeerURL are where the member listens and what it
	// advertises (http:// or https://host:port).
	ClientURL string
	PeerURL   string
	// InitialCluster maps every member name to its peer URL, this one
	// included; one entry for a single-member cluster.
	InitialCluster map[string]string
	// Token names the cluster, so that members of two systems never mix.
	Token string
	// TLS, when set, secures client and peer traffic with the system's
	// certificates (server certificates carry both server and client
	// usage) and requires client certificates.
	TLS *security.Files
	// LogLevel of etcd's own logger ("error" when empty): debug, info,
	// warn or error.
	LogLevel string
	// Log receives etcd's records (slog.Default when nil).
	Log *slog.Logger
}

// Timers of the embedded members (see StartEmbedded).
const (
	embeddedBatchInterval  = time.Second
	singleMemberTickMs     = 250
	singleMemberElectionMs = 5 * singleMemberTickMs
)

// alone reports whether the member is the only one of its cluster: it then
// ticks more slowly (StartEmbedded) and its access point calls it in
// process (StartAccessPoint).
func (c *EmbeddedConfig) alone() bool { return len(c.InitialCluster) == 1 }

// Embedded is a running embedded etcd member.
type Embedded struct {
	etcd     *embed.Etcd
	cfg      EmbeddedConfig
	close    sync.Once
	stopping *atomic.Bool // see etcdLog
	calls    callGate     // the in-process clients' calls (see Client)
}

// StartEmbedded starts the member and waits until it serves, which for a
// multi-member cluster means until a quorum of members has started; ctx
// bounds the wait.
func StartEmbedded(ctx context.Context, c EmbeddedConfig) (*Embedded, error) {
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: client URL %q: %w", c.ClientURL, err)
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: peer URL %q: %w", c.PeerURL, err)
	}
	ec := embed.NewConfig()
	ec.Name = c.Name
	ec.Dir = c.Dir
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{bindURL(cu)}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{bindURL(pu)}, []url.URL{*pu}
	names := make([]string, 0, len(c.InitialCluster))
	for n := range c.InitialCluster {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + "=" + c.InitialCluster[n]
	}
	ec.InitialCluster = strings.Join(parts, ",")
	ec.InitialClusterToken = c.Token
	// The backend commits its batch of writes to bbolt once a second
	// instead of ten times: the raft log, synced before every answer, is
	// what makes a write durable, and a restart replays what the batch
	// had not committed yet. It is one timer fewer waking an idle process.
	ec.BackendBatchInterval = embeddedBatchInterval
	if c.alone() {
		// A member alone in its cluster has no peer to heartbeat and no
		// election to lose, so its raft tick mostly wakes the process for
		// nothing: tick every 250 ms instead of 100. The election timeout
		// is etcd's smallest, 5 ticks: a single member elects itself
		// within one to five ticks of its start (0.1 to 1 s before, 0.25
		// to 1.25 s now), and etcd's smallest lease TTL (7 ticks, 1.75 s,
		// rounded up to 2 s as before) stays under the management
		// service's session TTL.
		ec.TickMs, ec.ElectionMs = singleMemberTickMs, singleMemberElectionMs
	}
	ec.LogLevel = c.LogLevel
	if ec.LogLevel == "" {
		ec.LogLevel = "error"
	}
	level, err := zapcore.ParseLevel(ec.LogLevel)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: log level %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	zl, stopping := newEtcdLogger(c.Log, level)
	ec.Logger = "zap"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	if c.TLS != nil {
		ti := transport.TLSInfo{CertFile: c.TLS.Cert, KeyFile: c.TLS.Key, TrustedCAFile: c.TLS.CACert, ClientCertAuth: true}
		ec.ClientTLSInfo, ec.PeerTLSInfo = ti, ti
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd %s: %w", c.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		stopping.Store(true)
		e.Close()
		return nil, fmt.Errorf("embedded etcd %s: %w", c.Name, err)
	case <-ctx.Done():
		stopping.Store(true)
		e.Close()
		return nil, fmt.Errorf("embedded etcd %s: waiting for the cluster to form: %w", c.Name, ctx.Err())
	}
	return &Embedded{etcd: e, cfg: c, stopping: stopping}, nil
}

// bindURL is the URL to listen on for an advertised URL: etcd binds only to
// IP addresses (and localhost), so a host name listens on every address.
func bindURL(u *url.URL) url.URL {
	b := *u
	host, port, err := net.SplitHostPort(u.Host)
	if err == nil && host != "localhost" && net.ParseIP(host) == nil {
		b.Host = net.JoinHostPort("0.0.0.0", port)
	}
	return b
}

// ClientURL is where the member serves clients.
func (e *Embedded) ClientURL() string { return e.cfg.ClientURL }

// Client returns a client of this member that calls its server in this
// process, without a connection: no socket, no HTTP/2 framing, none of the
// transport's goroutines. Each call returns a new client; close it before
// the member. Unlike a gRPC client it does not retry a request the member
// refused as unavailable (a leader change, a request timeout): that error
// reaches the caller at once. Once the member is closing, its requests fail
// as a stopped member's do, and new watches are closed at once. It serves
// no snapshots and no auth calls (they fail with an error that says so).
func (e *Embedded) Client() *clientv3.Client {
	c := v3client.New(e.etcd.Server)
	c.KV = gatedKV{KV: c.KV, g: &e.calls}
	c.Lease = gatedLease{Lease: c.Lease, g: &e.calls}
	c.Watcher = gatedWatcher{Watcher: c.Watcher, g: &e.calls}
	c.Maintenance = gatedMaintenance{Maintenance: c.Maintenance, g: &e.calls}
	c.Auth = refusedAuth{}
	return c
}

// Close stops the member; later calls do nothing. Requests of its
// in-process clients are refused from now on, and those already inside the
// member may finish (for at most its request timeout) before it stops.
func (e *Embedded) Close() {
	e.close.Do(func() {
		if timeout := e.etcd.Server.Cfg.ReqTimeout(); !e.calls.close(timeout) {
			e.cfg.Log.Warn("embedded etcd: closing with requests of the management service still in flight",
				"name", e.cfg.Name, "waited", timeout)
		}
		e.stopping.Store(true)
		e.etcd.Close()
	})
}

// Err reports fatal errors of the running member.
func (e *Embedded) Err() <-chan error { return e.etcd.Err() }

// Keepalive of the etcd clients: a ping after etcdKeepAliveTime without
// traffic, and the connection is dropped when no answer comes within
// etcdKeepAliveTimeout.
const (
	etcdKeepAliveTime    = 6 * time.Second
	etcdKeepAliveTimeout = 3 * time.Second
)

// NewEtcdClient connects to endpoints, with TLS when files is not nil.
func NewEtcdClient(endpoints []string, files *security.Files) (*clientv3.Client, error) {
	// Keepalive pings drop a connection to a member that went silent (its
	// node partitioned: no reset ever comes), so that the client's
	// requests and watches move to another endpoint. Without them a
	// watch stuck there never saw the old leader's key go, and no new
	// management leader was elected while the partition lasted. 6 s keeps
	// above etcd's default --grpc-keepalive-min-time (5 s).
	cfg := clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialKeepAliveTime: etcdKeepAliveTime, DialKeepAliveTimeout: etcdKeepAliveTimeout, PermitWithoutStream: true}
	if files != nil && (files.Cert != "" || files.CACert != "") {
		var tc *tls.Config
		var err error
		if files.Cert != "" {
			tc, err = security.ClientTLSConfig(*files)
		} else {
			tc, err = transport.TLSInfo{TrustedCAFile: files.CACert}.ClientConfig()
		}
		if err != nil {
			return nil, err
		}
		// etcd certificates may be TLS 1.2 era; do not insist on 1.3.
		tc.MinVersion = tls.VersionTLS12
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, storeErr(err, "connect to etcd")
	}
	return cli, nil
}

// EtcdPlan is how one server reaches (and, on an access point with embedded
// etcd, runs) the system's etcd.
type EtcdPlan struct {
	// Embedded is the member to start; nil when the cluster is external
	// or this server is not an access point.
	Embedded *EmbeddedConfig
	// Endpoints are the client endpoints to connect to.
	Endpoints []string
	// TLS for the client connections; nil for plain text.
	TLS *security.Files
	// AccessPoint reports whether this server runs a management service
	// replica.
	AccessPoint bool
}

// PlanEtcd works out the etcd plan of the server configured by s. self is
// this server's access point address as listed in access_points (host:port,
// normalized as AccessPointAddrs does); "" when it is not an access point.
// With embedded etcd every access point runs a member named after its
// address, peering over etcd.embedded.peer_port, and clients use every
// access point's client_port.
func PlanEtcd(s *config.Server, self string) (*EtcdPlan, error) {
	aps := s.AccessPointAddrs()
	plan := &EtcdPlan{}
	for _, ap := range aps {
		if ap == self {
			plan.AccessPoint = true
		}
	}
	if self != "" && !plan.AccessPoint {
		return nil, fmt.Errorf("mgmt: %s is not one of the access points %v", self, aps)
	}
	if !s.UsesEmbeddedEtcd() {
		plan.Endpoints = s.Etcd.Endpoints
		if s.Etcd.TLS.Enabled() {
			plan.TLS = &security.Files{CACert: s.Etcd.TLS.CACert, Cert: s.Etcd.TLS.Cert, Key: s.Etcd.TLS.Key}
		}
		return plan, nil
	}
	scheme := "https"
	if s.TransportConfig.AllowInsecure {
		scheme = "http"
	} else {
		plan.TLS = &security.Files{CACert: s.TransportConfig.CACert, Cert: s.TransportConfig.Cert, Key: s.TransportConfig.Key}
	}
	cluster := map[string]string{}
	for _, ap := range aps {
		host, _, err := net.SplitHostPort(ap)
		if err != nil {
			return nil, fmt.Errorf("mgmt: access point %q: %w", ap, err)
		}
		name := memberName(ap)
		cluster[name] = scheme + "://" + net.JoinHostPort(host, strconv.Itoa(s.Etcd.Embedded.PeerPort))
		plan.Endpoints = append(plan.Endpoints, scheme+"://"+net.JoinHostPort(host, strconv.Itoa(s.Etcd.Embedded.ClientPort)))
	}
	if plan.AccessPoint {
		host, _, _ := net.SplitHostPort(self)
		plan.Embedded = &EmbeddedConfig{
			Name:           memberName(self),
			Dir:            s.Etcd.Embedded.DataDir,
			ClientURL:      scheme + "://" + net.JoinHostPort(host, strconv.Itoa(s.Etcd.Embedded.ClientPort)),
			PeerURL:        cluster[memberName(self)],
			InitialCluster: cluster,
			Token:          "nexstor-" + s.Name,
			TLS:            plan.TLS,
		}
	}
	return plan, nil
}

// memberName turns an access point address into an etcd member name.
func memberName(ap string) string {
	return strings.NewReplacer(":", "-", "[", "", "]", "").Replace(ap)
}
