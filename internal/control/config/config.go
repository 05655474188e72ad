// Package config is the configuration of one `nexstor server`: the strict
// YAML file (unknown keys are errors that name the line), its defaults, the
// With… builders that command-line flags use to override it, its validation
// (every error names the key and the fix) and the effective configuration
// that the server writes, read-only, into its runtime directory.
//
// The life of a configuration is: Default or Load/Parse, then With… for each
// flag the operator gave, then Validate, then WriteEffective. A *Server is a
// plain value: it is not safe for concurrent mutation, and the With… builders
// modify and return the receiver so that they chain.
package config

import (
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Defaults. Ports follow the project-wide assignment: control gRPC 10124,
// NVMe/TCP 4420, discovery 8009, NBD 10809, metrics 9502, etcd 2379/2380.
const (
	DefaultName            = "nexstor"
	DefaultPort            = 10124
	DefaultGRPCListen      = "127.0.0.1:10124"
	DefaultDataDir         = "/var/lib/nexstor"
	DefaultRuntimeDir      = "/run/nexstor"
	DefaultCertDir         = "/etc/nexstor/certs"
	DefaultNVMfListen      = ":4420"
	DefaultDiscoveryListen = ":8009"
	DefaultNBDListen       = ":10809"
	DefaultMetricsListen   = ":9502"
	DefaultEtcdClientPort  = 2379
	DefaultEtcdPeerPort    = 2380
	DefaultClusterSize     = 4 << 20
	DefaultLogLevel        = "info"

	// EffectiveFileName is the name of the file WriteEffective writes.
	EffectiveFileName = "server.effective.yaml"
	// ExampleHint points operators at the documented example configuration.
	ExampleHint = "config/examples/server.yaml"
)

// Server is the configuration of one storage node's `nexstor server`.
// YAML keys are snake_case; nested sections (etcd, transport_config, nvmf,
// nbd, metrics, log) map onto the flat Go fields noted below.
type Server struct {
	// Name is the system name (`name`). Every member of a system carries the
	// same name; joining with another name is refused.
	Name string
	// NodeName is this node's name in the system (`node_name`): the rules
	// of pool names, unique among the members (a name another member holds
	// is refused when the node joins). Empty lets the management service
	// name the node "node-<rank>".
	NodeName string
	// Port is the control-plane gRPC port (`port`): the port of access points
	// given without one, and of grpc_listen when grpc_listen is not set.
	Port int
	// GRPCListen is the host:port the control and engine gRPC service listens
	// on (`grpc_listen`). It is also the address this node announces when it
	// joins the system, so in a multi-node system it must be reachable.
	GRPCListen string
	// AccessPoints are host[:port] addresses of the management service
	// replicas (`access_points`). Their number is odd (1, 3, 5 or 7) so that
	// the embedded etcd cluster they form has a majority.
	AccessPoints []string
	// Etcd selects the store of the management service (`etcd`).
	Etcd Etcd
	// DataDir is the root of the node's persistent state (`data_dir`), an
	// absolute path.
	DataDir string
	// MetadataDir holds the node superblock (`metadata_dir`); by default
	// <data_dir>/meta.
	MetadataDir string
	// RuntimeDir holds sockets and the effective configuration
	// (`runtime_dir`); by default /run/nexstor.
	RuntimeDir string
	// TransportConfig configures mutual TLS for every gRPC connection
	// (`transport_config`).
	TransportConfig Transport
	// Pools are created, one per disk, by `nexctl storage format`
	// (`pools`), and imported on every start afterwards.
	Pools []Pool
	// NVMfListen is the NVMe/TCP I/O listener (`nvmf.listen`).
	NVMfListen string
	// DiscoveryListen is the NVMe-oF discovery listener (`nvmf.discovery`);
	// empty disables it.
	DiscoveryListen string
	// NBDListen is the NBD listener (`nbd.listen`); empty disables it.
	NBDListen string
	// MetricsListen serves Prometheus /metrics (`metrics.listen`); empty
	// disables it.
	MetricsListen string
	// Log configures logging (`log`).
	Log Log
	// FaultDomain places the node in the failure topology (`fault_domain`),
	// a path such as "/rack1/node3"; replicas of one volume are spread over
	// distinct fault domains. Empty means the node is its own domain.
	FaultDomain string
	// Labels are free-form key/value pairs used for placement (`labels`).
	Labels map[string]string
	// Rebuild tunes how the management service heals volumes (`rebuild`);
	// the leader's own configuration applies, so give every access point
	// the same values.
	Rebuild Rebuild
	// GC tunes the collection of replicas and nexuses no volume owns
	// (`gc`); the leader's configuration applies.
	GC GC
	// Move tunes how a volume's nexus moves between nodes (`move`); the
	// leader's configuration applies.
	Move Move
}

// Rebuild tunes self-healing.
type Rebuild struct {
	// PartialWait is how long a replica whose node is away (or whose
	// child is offline) is waited for before it is replaced by a new one
	// on another node (`partial_wait`, a Go duration such as "10m";
	// DefaultPartialWait when the key is absent). A replica back within it
	// copies only what it missed. 0s replaces at once; a volume left with
	// one healthy copy does not wait at all.
	PartialWait time.Duration
}

// Move tunes nexus moves.
type Move struct {
	// Grace is how long a planned move keeps the old nexus, ANA
	// inaccessible, after the new one serves, before destroying it
	// (`grace`; DefaultMoveGrace when the key is absent): hosts connect the
	// new path while the old one still answers, so their I/O moves over by
	// ANA rather than by a lost connection. 0s destroys it at once.
	Grace time.Duration
}

// GC tunes garbage collection.
type GC struct {
	// Grace is how long a replica or nexus that no volume owns must stay
	// so before it is destroyed (`grace`, a Go duration). 0 means the
	// default, DefaultGCGrace.
	Grace time.Duration
}

// Etcd is where the management service keeps its state.
type Etcd struct {
	// Endpoints of an external etcd cluster (`endpoints`), as host:port or
	// http(s)://host:port. When empty, every access point runs an embedded
	// etcd member and together they form the cluster.
	Endpoints []string
	// TLS for the client connections to an external cluster (`tls`).
	TLS EtcdTLS
	// Embedded configures the embedded member (`embedded`); ignored with
	// Endpoints.
	Embedded EmbeddedEtcd
}

// EtcdTLS are the client credentials for an external etcd cluster. All
// fields empty means plain-text connections.
type EtcdTLS struct {
	CACert string // `ca_cert`: PEM bundle that verifies the etcd servers
	Cert   string // `cert`: client certificate, with Key
	Key    string // `key`: client private key, with Cert
}

// Enabled reports whether any TLS setting is present.
func (t EtcdTLS) Enabled() bool { return t.CACert != "" || t.Cert != "" || t.Key != "" }

// EmbeddedEtcd configures the etcd member an access point runs in-process.
type EmbeddedEtcd struct {
	ClientPort int    // `client_port`, default 2379
	PeerPort   int    // `peer_port`, default 2380
	DataDir    string // `data_dir`, default <data_dir>/etcd
}

// Transport configures gRPC mutual TLS.
type Transport struct {
	// AllowInsecure disables TLS (`allow_insecure`): for development only,
	// and logged loudly at start.
	AllowInsecure bool
	CACert        string // `ca_cert`: the system CA, default /etc/nexstor/certs/ca.crt
	Cert          string // `cert`: this node's server certificate
	Key           string // `key`: its private key (mode 0600)
}

// Pool is a pool created on one disk at format time.
type Pool struct {
	// Name is unique on the node: letters, digits, '.', '_', '-'; at most
	// 63 characters; starting with a letter or digit.
	Name string
	// Disk is the disk URI (file://, aio://, uring://, malloc:// or a bare
	// absolute path; a bare path and file:// mean uring://, see
	// bdev.ResolveEngine).
	Disk string
	// ClusterSize is the allocation unit in bytes, a power of two between
	// 64KiB and 1GiB; written as a human size ("4MiB") in YAML.
	ClusterSize int64
	// Overcommit is the thin over-commit limit in percent of the pool's
	// capacity (`overcommit_percent`): the sizes of its replicas may add up
	// to that much. 0 means the default, 250; 100 allows no over-commit.
	// It is applied when the pool is created, and at every start to a
	// pool that has another.
	Overcommit int
	// Labels are free-form key/value pairs of the pool (`labels`), sent
	// with the node's pool reports and matched by the pool selectors of
	// volume placement. They can change at any start.
	Labels map[string]string
}

// Log configures the slog handler.
type Log struct {
	Level string // `level`: debug, info, warn or error
	File  string // `file`: absolute path; empty logs to stderr
	JSON  bool   // `json`: JSON lines instead of text
}

// SlogLevel returns the slog level for Level (info when it is unknown;
// Validate rejects unknown levels).
func (l Log) SlogLevel() slog.Level {
	switch strings.ToLower(l.Level) {
	case "debug":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// Default returns the configuration used when no file is given: a
// single-node system whose only access point is this host, with mutual TLS
// using the certificates under /etc/nexstor/certs.
// Defaults of Rebuild and GC.
const (
	DefaultPartialWait = 10 * time.Minute
	DefaultGCGrace     = 5 * time.Minute
	DefaultMoveGrace   = 2 * time.Second
)

func Default() *Server {
	s := &Server{
		Name:         DefaultName,
		Port:         DefaultPort,
		GRPCListen:   DefaultGRPCListen,
		AccessPoints: []string{"localhost:" + strconv.Itoa(DefaultPort)},
		Etcd: Etcd{Embedded: EmbeddedEtcd{
			ClientPort: DefaultEtcdClientPort,
			PeerPort:   DefaultEtcdPeerPort,
		}},
		DataDir:    DefaultDataDir,
		RuntimeDir: DefaultRuntimeDir,
		TransportConfig: Transport{
			CACert: filepath.Join(DefaultCertDir, "ca.crt"),
			Cert:   filepath.Join(DefaultCertDir, "server.crt"),
			Key:    filepath.Join(DefaultCertDir, "server.key"),
		},
		NVMfListen:      DefaultNVMfListen,
		DiscoveryListen: DefaultDiscoveryListen,
		NBDListen:       DefaultNBDListen,
		MetricsListen:   DefaultMetricsListen,
		Log:             Log{Level: DefaultLogLevel},
		Rebuild:         Rebuild{PartialWait: DefaultPartialWait},
		GC:              GC{Grace: DefaultGCGrace},
		Move:            Move{Grace: DefaultMoveGrace},
	}
	s.fillDerived()
	return s
}

// fillDerived sets the values that default to a function of other values
// when they are still empty.
func (s *Server) fillDerived() {
	if s.MetadataDir == "" && s.DataDir != "" {
		s.MetadataDir = filepath.Join(s.DataDir, "meta")
	}
	if s.Etcd.Embedded.DataDir == "" && s.DataDir != "" {
		s.Etcd.Embedded.DataDir = filepath.Join(s.DataDir, "etcd")
	}
	for i := range s.Pools {
		if s.Pools[i].ClusterSize == 0 {
			s.Pools[i].ClusterSize = DefaultClusterSize
		}
	}
}

// Clone returns a deep copy.
func (s *Server) Clone() *Server {
	c := *s
	c.AccessPoints = append([]string(nil), s.AccessPoints...)
	c.Etcd.Endpoints = append([]string(nil), s.Etcd.Endpoints...)
	c.Pools = append([]Pool(nil), s.Pools...)
	for i := range c.Pools {
		c.Pools[i].Labels = maps.Clone(c.Pools[i].Labels)
	}
	c.Labels = maps.Clone(s.Labels)
	return &c
}

// AccessPointAddrs returns the access points as host:port, with Port added
// where an entry has none. Entries that do not parse are returned as given
// (Validate reports them).
func (s *Server) AccessPointAddrs() []string {
	out := make([]string, 0, len(s.AccessPoints))
	for _, ap := range s.AccessPoints {
		out = append(out, normalizeHostPort(ap, s.Port))
	}
	return out
}

// UsesEmbeddedEtcd reports whether the management service stores its state in
// etcd members embedded in the access points (no external endpoints).
func (s *Server) UsesEmbeddedEtcd() bool { return len(s.Etcd.Endpoints) == 0 }

// normalizeHostPort adds defPort to a bare host and lowercases the host.
func normalizeHostPort(addr string, defPort int) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		// A bare host (or bare IPv6 address): add the default port.
		h := strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
		if strings.Contains(h, ":") && net.ParseIP(h) == nil {
			return addr
		}
		return net.JoinHostPort(strings.ToLower(h), strconv.Itoa(defPort))
	}
	return net.JoinHostPort(strings.ToLower(host), port)
}

// The With… builders set one field each and return s, so that flag overrides
// chain: config.Default().WithDataDir(d).WithInsecure(true).

// WithName sets the system name.
func (s *Server) WithName(name string) *Server { s.Name = name; return s }

// WithNodeName sets this node's name in the system ("" lets the management
// service name it).
func (s *Server) WithNodeName(name string) *Server { s.NodeName = name; return s }

// WithPort sets the control-plane port. A GRPCListen that still used the old
// port follows it.
func (s *Server) WithPort(port int) *Server {
	if host, p, err := net.SplitHostPort(s.GRPCListen); err == nil && p == strconv.Itoa(s.Port) {
		s.GRPCListen = net.JoinHostPort(host, strconv.Itoa(port))
	}
	s.Port = port
	return s
}

// WithGRPCListen sets the control/engine gRPC listen address.
func (s *Server) WithGRPCListen(addr string) *Server { s.GRPCListen = addr; return s }

// WithAccessPoints replaces the access points.
func (s *Server) WithAccessPoints(aps ...string) *Server {
	s.AccessPoints = append([]string(nil), aps...)
	return s
}

// WithEtcdEndpoints selects an external etcd cluster.
func (s *Server) WithEtcdEndpoints(eps ...string) *Server {
	s.Etcd.Endpoints = append([]string(nil), eps...)
	return s
}

// WithEtcdPorts sets the client and peer ports of the embedded etcd member.
func (s *Server) WithEtcdPorts(client, peer int) *Server {
	s.Etcd.Embedded.ClientPort, s.Etcd.Embedded.PeerPort = client, peer
	return s
}

// WithDataDir sets the data directory, made absolute. Directories that were
// derived from the old one (metadata_dir, etcd.embedded.data_dir) follow it.
func (s *Server) WithDataDir(dir string) *Server {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	old := s.DataDir
	if s.MetadataDir == filepath.Join(old, "meta") {
		s.MetadataDir = ""
	}
	if s.Etcd.Embedded.DataDir == filepath.Join(old, "etcd") {
		s.Etcd.Embedded.DataDir = ""
	}
	s.DataDir = dir
	s.fillDerived()
	return s
}

// WithMetadataDir sets the metadata directory, made absolute.
func (s *Server) WithMetadataDir(dir string) *Server {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	s.MetadataDir = dir
	return s
}

// WithRuntimeDir sets the runtime directory, made absolute.
func (s *Server) WithRuntimeDir(dir string) *Server {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	s.RuntimeDir = dir
	return s
}

// WithInsecure turns transport security off (true) or on (false).
func (s *Server) WithInsecure(insecure bool) *Server {
	s.TransportConfig.AllowInsecure = insecure
	return s
}

// WithCertDir points the transport at ca.crt, server.crt and server.key in
// dir (the layout `nexstor certgen` writes).
func (s *Server) WithCertDir(dir string) *Server {
	s.TransportConfig.CACert = filepath.Join(dir, "ca.crt")
	s.TransportConfig.Cert = filepath.Join(dir, "server.crt")
	s.TransportConfig.Key = filepath.Join(dir, "server.key")
	return s
}

// WithPools replaces the pools created at format time.
func (s *Server) WithPools(pools ...Pool) *Server {
	s.Pools = append([]Pool(nil), pools...)
	s.fillDerived()
	return s
}

// WithNVMfListen sets the NVMe/TCP listener.
func (s *Server) WithNVMfListen(addr string) *Server { s.NVMfListen = addr; return s }

// WithDiscoveryListen sets the discovery listener ("" disables it).
func (s *Server) WithDiscoveryListen(addr string) *Server { s.DiscoveryListen = addr; return s }

// WithNBDListen sets the NBD listener ("" disables it).
func (s *Server) WithNBDListen(addr string) *Server { s.NBDListen = addr; return s }

// WithMetricsListen sets the metrics listener ("" disables it).
func (s *Server) WithMetricsListen(addr string) *Server { s.MetricsListen = addr; return s }

// WithLogLevel sets the log level.
func (s *Server) WithLogLevel(level string) *Server { s.Log.Level = level; return s }

// WithLogFile sets the log file ("" logs to stderr).
func (s *Server) WithLogFile(path string) *Server { s.Log.File = path; return s }

// WithLogJSON selects JSON log lines.
func (s *Server) WithLogJSON(json bool) *Server { s.Log.JSON = json; return s }

// WithFaultDomain sets the fault domain.
func (s *Server) WithFaultDomain(fd string) *Server { s.FaultDomain = fd; return s }

// WithLabel sets one label.
func (s *Server) WithLabel(key, value string) *Server {
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	s.Labels[key] = value
	return s
}
