package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/units"
)

// ErrInvalid is matched (errors.Is) by every *ValidationError.
var ErrInvalid = errors.New("invalid configuration")

// ValidationError is one invalid value: the key (dotted YAML path), what is
// wrong with it and how to fix it.
type ValidationError struct {
	Key     string
	Problem string
	Fix     string
}

func (e *ValidationError) Error() string {
	msg := e.Key + ": " + e.Problem
	if e.Fix != "" {
		msg += "; " + e.Fix
	}
	return msg
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// Limits on names.
const (
	MaxNameLen        = 63
	MaxAccessPoints   = 7
	MinClusterSize    = 64 << 10
	MaxClusterSize    = 1 << 30
	maxLabelKeyLength = 63
)

var (
	nameRE       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$`)
	fdSegmentRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	validLevels  = []string{"debug", "info", "warn", "error"}
	absolutePath = "use an absolute path"
)

// Validate checks every value and returns all problems at once, joined
// (errors.Join); each is a *ValidationError naming the key and the fix.
// Validate reads nothing from the file system: whether certificates and
// directories exist is checked when the server starts.
func (s *Server) Validate() error {
	var v validator
	v.name("name", s.Name)
	if s.NodeName != "" && (len(s.NodeName) > MaxNameLen || !nameRE.MatchString(s.NodeName)) {
		v.add("node_name", fmt.Sprintf("%q is not a valid node name", s.NodeName),
			"use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters, or leave it out to be named node-<rank>")
	}
	if s.Port < 1 || s.Port > 65535 {
		v.add("port", fmt.Sprintf("%d is not a TCP port", s.Port), "use a port between 1 and 65535 (default 10124)")
	}
	v.addr("grpc_listen", s.GRPCListen, false)
	v.accessPoints(s)
	v.etcd(s)
	v.absDir("data_dir", s.DataDir)
	v.absDir("metadata_dir", s.MetadataDir)
	v.absDir("runtime_dir", s.RuntimeDir)
	v.transport(s.TransportConfig)
	v.pools(s.Pools)
	v.addr("nvmf.listen", s.NVMfListen, false)
	v.addr("nvmf.discovery", s.DiscoveryListen, true)
	v.addr("nbd.listen", s.NBDListen, true)
	v.addr("metrics.listen", s.MetricsListen, true)
	v.listenConflicts(s)
	if !contains(validLevels, strings.ToLower(s.Log.Level)) {
		v.add("log.level", fmt.Sprintf("%q is not a log level", s.Log.Level), "use one of debug, info, warn, error")
	}
	if s.Log.File != "" && !filepath.IsAbs(s.Log.File) {
		v.add("log.file", fmt.Sprintf("%q is relative", s.Log.File), absolutePath+", or leave it empty to log to stderr")
	}
	v.faultDomain(s.FaultDomain)
	v.labels("labels", s.Labels)
	if s.Rebuild.PartialWait < 0 || s.Rebuild.PartialWait > 7*24*time.Hour {
		v.add("rebuild.partial_wait", fmt.Sprintf("%v is out of range", s.Rebuild.PartialWait),
			"use a duration between 0s (replace at once) and 168h, such as 10m")
	}
	if s.GC.Grace < 0 || s.GC.Grace > 7*24*time.Hour {
		v.add("gc.grace", fmt.Sprintf("%v is out of range", s.GC.Grace), "use a duration between 0s and 168h, such as 5m")
	}
	if s.Move.Grace < 0 || s.Move.Grace > 10*time.Minute {
		v.add("move.grace", fmt.Sprintf("%v is out of range", s.Move.Grace), "use a duration between 0s and 10m, such as 2s")
	}
	return errors.Join(v.errs...)
}

// labels checks the keys of a label map (values are free-form).
func (v *validator) labels(key string, labels map[string]string) {
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if len(k) > maxLabelKeyLength || !labelKeyRE.MatchString(k) {
			v.add(key, fmt.Sprintf("key %q is not a valid label key", k),
				"use letters, digits, '.', '_', '-', '/', starting and ending with a letter or digit, at most 63 characters")
		}
	}
}

type validator struct{ errs []error }

func (v *validator) add(key, problem, fix string) {
	v.errs = append(v.errs, &ValidationError{Key: key, Problem: problem, Fix: fix})
}

func (v *validator) name(key, name string) {
	if name == "" {
		v.add(key, "is empty", "set a name such as \"nexstor\"")
		return
	}
	if len(name) > MaxNameLen || !nameRE.MatchString(name) {
		v.add(key, fmt.Sprintf("%q is not a valid name", name),
			"use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters")
	}
}

func (v *validator) absDir(key, dir string) {
	if dir == "" {
		v.add(key, "is empty", absolutePath)
	} else if !filepath.IsAbs(dir) {
		v.add(key, fmt.Sprintf("%q is relative", dir), absolutePath)
	}
}

// checkHostPort returns why addr is not a host:port ("" when it is). An
// empty host means every address (listeners only).
func checkHostPort(addr string, allowEmptyHost bool) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("%q is not host:port (%v)", addr, strings.TrimPrefix(err.Error(), "address "+addr+": "))
	}
	if host == "" && !allowEmptyHost {
		return fmt.Sprintf("%q has no host", addr)
	}
	if strings.ContainsAny(host, " /?#@") {
		return fmt.Sprintf("%q: host %q is not a host name or IP address", addr, host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Sprintf("%q: port %q is not between 1 and 65535", addr, port)
	}
	return ""
}

// addr checks a listen address; optional ones may be empty (disabled).
func (v *validator) addr(key, addr string, optional bool) {
	if addr == "" {
		if !optional {
			v.add(key, "is empty", "use host:port or :port, e.g. \":4420\"")
		}
		return
	}
	if p := checkHostPort(addr, true); p != "" {
		fix := "use host:port or :port, e.g. \"0.0.0.0:4420\" or \":4420\""
		if optional {
			fix += "; leave it empty to disable"
		}
		v.add(key, p, fix)
	}
}

func (v *validator) accessPoints(s *Server) {
	const key = "access_points"
	n := len(s.AccessPoints)
	if n == 0 {
		v.add(key, "is empty", "list 1, 3 or 5 host[:port] addresses of the management service replicas")
		return
	}
	seen := map[string]int{}
	for i, ap := range s.AccessPoints {
		norm := normalizeHostPort(ap, s.Port)
		if p := checkHostPort(norm, false); p != "" || ap == "" {
			if ap == "" {
				p = "is empty"
			}
			v.add(fmt.Sprintf("%s[%d]", key, i), p, "use host or host:port, e.g. \"node-1:10124\"")
			continue
		}
		if j, dup := seen[norm]; dup {
			v.add(fmt.Sprintf("%s[%d]", key, i), fmt.Sprintf("%q duplicates %s[%d] (%s)", ap, key, j, norm),
				"list each access point once")
			continue
		}
		seen[norm] = i
	}
	if n%2 == 0 {
		v.add(key, fmt.Sprintf("%d access points is an even number; an even-sized etcd cluster tolerates no more failures than one member fewer", n),
			fmt.Sprintf("use an odd number: %d or %d", n-1, n+1))
	} else if n > MaxAccessPoints {
		v.add(key, fmt.Sprintf("%d access points are too many", n), "use 1, 3, 5 or 7")
	}
}

func (v *validator) etcd(s *Server) {
	e := s.Etcd
	for i, ep := range e.Endpoints {
		key := fmt.Sprintf("etcd.endpoints[%d]", i)
		hp := ep
		if strings.Contains(ep, "://") {
			u, err := url.Parse(ep)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
				v.add(key, fmt.Sprintf("%q is not an etcd endpoint", ep), "use host:port or http(s)://host:port, e.g. \"https://etcd-1:2379\"")
				continue
			}
			hp = u.Host
		}
		if p := checkHostPort(hp, false); p != "" {
			v.add(key, p, "use host:port or http(s)://host:port, e.g. \"https://etcd-1:2379\"")
		}
	}
	if (e.TLS.Cert == "") != (e.TLS.Key == "") {
		v.add("etcd.tls", "cert and key must be given together", "set both etcd.tls.cert and etcd.tls.key, or neither")
	}
	if e.TLS.Enabled() && len(e.Endpoints) == 0 {
		v.add("etcd.tls", "is set but etcd.endpoints is empty (embedded etcd uses the transport_config certificates)",
			"list the external cluster in etcd.endpoints, or remove etcd.tls")
	}
	if len(e.Endpoints) == 0 {
		m := e.Embedded
		for _, p := range []struct {
			key  string
			port int
		}{{"etcd.embedded.client_port", m.ClientPort}, {"etcd.embedded.peer_port", m.PeerPort}} {
			if p.port < 1 || p.port > 65535 {
				v.add(p.key, fmt.Sprintf("%d is not a TCP port", p.port), "use a port between 1 and 65535")
			}
		}
		if m.ClientPort == m.PeerPort {
			v.add("etcd.embedded.peer_port", fmt.Sprintf("equals client_port (%d)", m.ClientPort), "use distinct ports (defaults 2379 and 2380)")
		}
		if m.ClientPort == s.Port || m.PeerPort == s.Port {
			v.add("etcd.embedded", fmt.Sprintf("a port equals the control-plane port %d", s.Port), "use distinct ports (defaults 2379 and 2380)")
		}
		v.absDir("etcd.embedded.data_dir", m.DataDir)
	}
}

func (v *validator) transport(t Transport) {
	if t.AllowInsecure {
		return
	}
	for _, f := range []struct{ key, val string }{
		{"transport_config.ca_cert", t.CACert}, {"transport_config.cert", t.Cert}, {"transport_config.key", t.Key},
	} {
		if f.val == "" {
			v.add(f.key, "is empty while TLS is on",
				"give the path written by `nexstor certgen` (under "+DefaultCertDir+" by default), or set transport_config.allow_insecure: true for development")
		}
	}
}

func (v *validator) pools(pools []Pool) {
	names := map[string]int{}
	disks := map[string]int{}
	for i, p := range pools {
		key := fmt.Sprintf("pools[%d]", i)
		if p.Name == "" {
			v.add(key+".name", "is empty", "name every pool, e.g. \"pool-0\"")
		} else if len(p.Name) > MaxNameLen || !nameRE.MatchString(p.Name) {
			v.add(key+".name", fmt.Sprintf("%q is not a valid pool name", p.Name),
				"use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters")
		} else if j, dup := names[p.Name]; dup {
			v.add(key+".name", fmt.Sprintf("%q is also the name of pools[%d]", p.Name, j), "give every pool a distinct name")
		} else {
			names[p.Name] = i
		}
		if u, err := bdev.ParseURI(p.Disk); err != nil {
			var f *fault.Fault
			if errors.As(err, &f) {
				v.add(key+".disk", f.Description, f.Resolution)
			} else {
				v.add(key+".disk", err.Error(), "use uring:///dev/nvme0n1, aio:///dev/sdb, file:///path?size=10GiB, malloc:///name?size=512MiB or an absolute device path")
			}
		} else if j, dup := disks[diskKey(u)]; dup {
			v.add(key+".disk", fmt.Sprintf("%q is also the disk of pools[%d]", p.Disk, j), "a pool owns exactly one disk; give every pool its own")
		} else {
			disks[diskKey(u)] = i
		}
		cs := p.ClusterSize
		if cs < MinClusterSize || cs > MaxClusterSize || cs&(cs-1) != 0 {
			v.add(key+".cluster_size", fmt.Sprintf("%s is not a power of two between 64KiB and 1GiB", units.FormatSize(cs)),
				"use e.g. 4MiB (the default) or 1MiB")
		}
		if oc := p.Overcommit; oc != 0 && (oc < 100 || oc > 100000) {
			v.add(key+".overcommit_percent", fmt.Sprintf("%d is out of range", oc),
				"give a percent of the capacity from 100 (no over-commit) to 100000, or leave it out for 250")
		}
		v.labels(key+".labels", p.Labels)
	}
}

// diskKey identifies the storage a disk URI names, so that two spellings of
// one device ("/dev/sdb", "aio:///dev/sdb", "file:///dev/sdb") are caught as
// duplicates. uri must have parsed.
func diskKey(u bdev.URI) string {
	if u.Scheme == bdev.SchemeMalloc {
		return "malloc:" + u.Path
	}
	return u.Path
}

func (v *validator) listenConflicts(s *Server) {
	type lst struct{ key, addr string }
	all := []lst{{"grpc_listen", s.GRPCListen}, {"nvmf.listen", s.NVMfListen}, {"nvmf.discovery", s.DiscoveryListen},
		{"nbd.listen", s.NBDListen}, {"metrics.listen", s.MetricsListen}}
	if s.UsesEmbeddedEtcd() {
		all = append(all, lst{"etcd.embedded.client_port", ":" + strconv.Itoa(s.Etcd.Embedded.ClientPort)},
			lst{"etcd.embedded.peer_port", ":" + strconv.Itoa(s.Etcd.Embedded.PeerPort)})
	}
	for i := range all {
		hi, pi, err := net.SplitHostPort(all[i].addr)
		if err != nil || all[i].addr == "" {
			continue
		}
		for j := 0; j < i; j++ {
			hj, pj, err := net.SplitHostPort(all[j].addr)
			if err != nil || all[j].addr == "" || pi != pj {
				continue
			}
			if hi == hj || wildcard(hi) || wildcard(hj) {
				v.add(all[i].key, fmt.Sprintf("port %s is also used by %s", pi, all[j].key), "give every listener its own port")
			}
		}
	}
}

func wildcard(host string) bool { return host == "" || host == "0.0.0.0" || host == "::" }

func (v *validator) faultDomain(fd string) {
	if fd == "" {
		return
	}
	fix := "use a path of names such as \"/rack1/node3\""
	if !strings.HasPrefix(fd, "/") || fd == "/" || strings.HasSuffix(fd, "/") {
		v.add("fault_domain", fmt.Sprintf("%q is not a fault domain path", fd), fix)
		return
	}
	for _, seg := range strings.Split(fd[1:], "/") {
		if !fdSegmentRE.MatchString(seg) || len(seg) > MaxNameLen {
			v.add("fault_domain", fmt.Sprintf("%q: %q is not a valid level name", fd, seg), fix)
			return
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
