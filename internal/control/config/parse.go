package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nexstor/nexstor/internal/units"
)

// The file* types are the YAML shape of Server. They are separate from
// Server so that nested sections (nvmf.listen) can map onto flat fields and
// so that "not given" can be told from "zero" where a default is derived.

type fileServer struct {
	Name            *string           `yaml:"name,omitempty"`
	NodeName        *string           `yaml:"node_name,omitempty"`
	Port            *int              `yaml:"port,omitempty"`
	GRPCListen      *string           `yaml:"grpc_listen,omitempty"`
	AccessPoints    []string          `yaml:"access_points,omitempty"`
	Etcd            *fileEtcd         `yaml:"etcd,omitempty"`
	DataDir         *string           `yaml:"data_dir,omitempty"`
	MetadataDir     *string           `yaml:"metadata_dir,omitempty"`
	RuntimeDir      *string           `yaml:"runtime_dir,omitempty"`
	TransportConfig *fileTransport    `yaml:"transport_config,omitempty"`
	Pools           []filePool        `yaml:"pools,omitempty"`
	NVMf            *fileNVMf         `yaml:"nvmf,omitempty"`
	NBD             *fileListen       `yaml:"nbd,omitempty"`
	Metrics         *fileListen       `yaml:"metrics,omitempty"`
	Log             *fileLog          `yaml:"log,omitempty"`
	FaultDomain     *string           `yaml:"fault_domain,omitempty"`
	Labels          map[string]string `yaml:"labels,omitempty"`
	Rebuild         *fileRebuild      `yaml:"rebuild,omitempty"`
	GC              *fileGC           `yaml:"gc,omitempty"`
	Move            *fileMove         `yaml:"move,omitempty"`
}

type fileMove struct {
	Grace *fileDuration `yaml:"grace,omitempty"`
}

type fileRebuild struct {
	PartialWait *fileDuration `yaml:"partial_wait,omitempty"`
}

type fileGC struct {
	Grace *fileDuration `yaml:"grace,omitempty"`
}

// fileDuration is a Go duration ("10m", "90s").
type fileDuration time.Duration

func (f *fileDuration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a duration must be a scalar such as 10m", n.Line)
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration: write it as 90s, 10m or 1h30m", n.Line, n.Value)
	}
	*f = fileDuration(d)
	return nil
}

func (f fileDuration) MarshalYAML() (any, error) { return time.Duration(f).String(), nil }

type fileEtcd struct {
	Endpoints []string      `yaml:"endpoints,omitempty"`
	TLS       *fileEtcdTLS  `yaml:"tls,omitempty"`
	Embedded  *fileEmbedded `yaml:"embedded,omitempty"`
}

type fileEtcdTLS struct {
	CACert *string `yaml:"ca_cert,omitempty"`
	Cert   *string `yaml:"cert,omitempty"`
	Key    *string `yaml:"key,omitempty"`
}

type fileEmbedded struct {
	ClientPort *int    `yaml:"client_port,omitempty"`
	PeerPort   *int    `yaml:"peer_port,omitempty"`
	DataDir    *string `yaml:"data_dir,omitempty"`
}

type fileTransport struct {
	AllowInsecure *bool   `yaml:"allow_insecure,omitempty"`
	CACert        *string `yaml:"ca_cert,omitempty"`
	Cert          *string `yaml:"cert,omitempty"`
	Key           *string `yaml:"key,omitempty"`
}

type filePool struct {
	Name        string            `yaml:"name"`
	Disk        string            `yaml:"disk"`
	ClusterSize fileSize          `yaml:"cluster_size,omitempty"`
	Overcommit  int               `yaml:"overcommit_percent,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
}

type fileNVMf struct {
	Listen    *string `yaml:"listen,omitempty"`
	Discovery *string `yaml:"discovery,omitempty"`
}

type fileListen struct {
	Listen *string `yaml:"listen,omitempty"`
}

type fileLog struct {
	Level *string `yaml:"level,omitempty"`
	File  *string `yaml:"file,omitempty"`
	JSON  *bool   `yaml:"json,omitempty"`
}

// fileSize is a byte count written as a human size ("4MiB") or a number.
type fileSize int64

func (f *fileSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a size must be a scalar such as 4MiB", n.Line)
	}
	v, err := units.ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*f = fileSize(v)
	return nil
}

func (f fileSize) MarshalYAML() (any, error) {
	return units.FormatSize(int64(f)), nil
}

// ErrUnknownKey is matched (errors.Is) by the errors Parse returns for keys
// the configuration does not know.
var ErrUnknownKey = errors.New("unknown configuration key")

// ParseError is a problem at a line of a configuration file.
type ParseError struct {
	Line int    // 1-based; 0 when unknown
	Key  string // dotted key path when known, e.g. "nvmf.listen"
	Msg  string
	// Unknown is set for a key the configuration does not have.
	Unknown bool
}

func (e *ParseError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" && !e.Unknown {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Is makes errors.Is(err, ErrUnknownKey) true for unknown keys.
func (e *ParseError) Is(target error) bool { return target == ErrUnknownKey && e.Unknown }

// Load reads and parses the configuration file at path. See Parse.
func Load(path string) (*Server, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	s, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return s, nil
}

// Parse parses a YAML configuration strictly: keys the configuration does
// not know, repeated keys and values of the wrong type are errors naming the
// line (and, for unknown keys, the closest known key). Keys that are absent
// keep their Default values. The result is validated; an error from Validate
// is returned as is.
func Parse(data []byte) (*Server, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, rewriteYAMLError(err, nil)
	}
	paths := keyPaths(&root)
	var f fileServer
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, rewriteYAMLError(err, paths)
	}
	// A second document would be silently ignored; refuse it.
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &ParseError{Line: extra.Line, Msg: "a second YAML document; the configuration is one document (remove the '---')"}
	}
	s := Default()
	f.apply(s)
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// apply overlays the given values on s (the defaults) and derives what was
// not given.
func (f *fileServer) apply(s *Server) {
	set := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	set(&s.Name, f.Name)
	set(&s.NodeName, f.NodeName)
	if f.Port != nil {
		s.Port = *f.Port
		if f.GRPCListen == nil {
			host, _, err := net.SplitHostPort(s.GRPCListen)
			if err != nil {
				host = "127.0.0.1"
			}
			s.GRPCListen = net.JoinHostPort(host, strconv.Itoa(s.Port))
		}
		if f.AccessPoints == nil {
			s.AccessPoints = []string{"localhost:" + strconv.Itoa(s.Port)}
		}
	}
	set(&s.GRPCListen, f.GRPCListen)
	if f.AccessPoints != nil {
		s.AccessPoints = f.AccessPoints
	}
	if e := f.Etcd; e != nil {
		s.Etcd.Endpoints = e.Endpoints
		if e.TLS != nil {
			set(&s.Etcd.TLS.CACert, e.TLS.CACert)
			set(&s.Etcd.TLS.Cert, e.TLS.Cert)
			set(&s.Etcd.TLS.Key, e.TLS.Key)
		}
		if m := e.Embedded; m != nil {
			if m.ClientPort != nil {
				s.Etcd.Embedded.ClientPort = *m.ClientPort
			}
			if m.PeerPort != nil {
				s.Etcd.Embedded.PeerPort = *m.PeerPort
			}
			set(&s.Etcd.Embedded.DataDir, m.DataDir)
		}
	}
	if f.DataDir != nil {
		// Derived directories follow data_dir unless given themselves.
		s.DataDir = *f.DataDir
		s.MetadataDir = ""
		if f.Etcd == nil || f.Etcd.Embedded == nil || f.Etcd.Embedded.DataDir == nil {
			s.Etcd.Embedded.DataDir = ""
		}
	}
	set(&s.MetadataDir, f.MetadataDir)
	set(&s.RuntimeDir, f.RuntimeDir)
	if t := f.TransportConfig; t != nil {
		if t.AllowInsecure != nil {
			s.TransportConfig.AllowInsecure = *t.AllowInsecure
		}
		set(&s.TransportConfig.CACert, t.CACert)
		set(&s.TransportConfig.Cert, t.Cert)
		set(&s.TransportConfig.Key, t.Key)
	}
	for _, p := range f.Pools {
		s.Pools = append(s.Pools, Pool{Name: p.Name, Disk: p.Disk, ClusterSize: int64(p.ClusterSize), Overcommit: p.Overcommit,
			Labels: p.Labels})
	}
	if n := f.NVMf; n != nil {
		set(&s.NVMfListen, n.Listen)
		set(&s.DiscoveryListen, n.Discovery)
	}
	if f.NBD != nil {
		set(&s.NBDListen, f.NBD.Listen)
	}
	if f.Metrics != nil {
		set(&s.MetricsListen, f.Metrics.Listen)
	}
	if l := f.Log; l != nil {
		set(&s.Log.Level, l.Level)
		set(&s.Log.File, l.File)
		if l.JSON != nil {
			s.Log.JSON = *l.JSON
		}
	}
	set(&s.FaultDomain, f.FaultDomain)
	if f.Labels != nil {
		s.Labels = f.Labels
	}
	if f.Rebuild != nil && f.Rebuild.PartialWait != nil {
		s.Rebuild.PartialWait = time.Duration(*f.Rebuild.PartialWait)
	}
	if f.GC != nil && f.GC.Grace != nil {
		s.GC.Grace = time.Duration(*f.GC.Grace)
	}
	if f.Move != nil && f.Move.Grace != nil {
		s.Move.Grace = time.Duration(*f.Move.Grace)
	}
	s.fillDerived()
}

// toFile is the inverse of apply: the complete YAML shape of s.
func (s *Server) toFile() *fileServer {
	p := func(v string) *string { return &v }
	i := func(v int) *int { return &v }
	b := func(v bool) *bool { return &v }
	f := &fileServer{
		Name:         p(s.Name),
		NodeName:     p(s.NodeName),
		Port:         i(s.Port),
		GRPCListen:   p(s.GRPCListen),
		AccessPoints: s.AccessPoints,
		Etcd: &fileEtcd{
			Endpoints: s.Etcd.Endpoints,
			Embedded: &fileEmbedded{
				ClientPort: i(s.Etcd.Embedded.ClientPort),
				PeerPort:   i(s.Etcd.Embedded.PeerPort),
				DataDir:    p(s.Etcd.Embedded.DataDir),
			},
		},
		DataDir:     p(s.DataDir),
		MetadataDir: p(s.MetadataDir),
		RuntimeDir:  p(s.RuntimeDir),
		TransportConfig: &fileTransport{
			AllowInsecure: b(s.TransportConfig.AllowInsecure),
			CACert:        p(s.TransportConfig.CACert),
			Cert:          p(s.TransportConfig.Cert),
			Key:           p(s.TransportConfig.Key),
		},
		NVMf:        &fileNVMf{Listen: p(s.NVMfListen), Discovery: p(s.DiscoveryListen)},
		NBD:         &fileListen{Listen: p(s.NBDListen)},
		Metrics:     &fileListen{Listen: p(s.MetricsListen)},
		Log:         &fileLog{Level: p(s.Log.Level), File: p(s.Log.File), JSON: b(s.Log.JSON)},
		FaultDomain: p(s.FaultDomain),
		Labels:      s.Labels,
		Rebuild:     &fileRebuild{PartialWait: ptr(fileDuration(s.Rebuild.PartialWait))},
		GC:          &fileGC{Grace: ptr(fileDuration(s.GC.Grace))},
		Move:        &fileMove{Grace: ptr(fileDuration(s.Move.Grace))},
	}
	if s.Etcd.TLS.Enabled() {
		f.Etcd.TLS = &fileEtcdTLS{CACert: p(s.Etcd.TLS.CACert), Cert: p(s.Etcd.TLS.Cert), Key: p(s.Etcd.TLS.Key)}
	}
	for _, pl := range s.Pools {
		f.Pools = append(f.Pools, filePool{Name: pl.Name, Disk: pl.Disk, ClusterSize: fileSize(pl.ClusterSize), Overcommit: pl.Overcommit,
			Labels: pl.Labels})
	}
	return f
}

// Marshal returns the complete configuration as YAML, every key written out,
// in a form that Parse reads back to an equal Server.
func (s *Server) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(s.toFile()); err != nil {
		return nil, fmt.Errorf("config: encode: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("config: encode: %w", err)
	}
	return buf.Bytes(), nil
}

// keyPaths maps the line of every value node to the dotted key path that
// leads to it, so that type errors (reported by line) can name the key.
func keyPaths(root *yaml.Node) map[int]string {
	paths := map[int]string{}
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, prefix)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				path := k.Value
				if prefix != "" {
					path = prefix + "." + k.Value
				}
				// The deepest key on a line names it: keys overwrite,
				// value nodes only fill lines no key is on.
				paths[k.Line] = path
				if _, ok := paths[v.Line]; !ok {
					paths[v.Line] = path
				}
				walk(v, path)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", prefix, i)
				if _, ok := paths[c.Line]; !ok {
					paths[c.Line] = p
				}
				walk(c, p)
			}
		}
	}
	walk(root, "")
	return paths
}

var (
	reUnknown = regexp.MustCompile(`^line (\d+): field (.+) not found in type (\S+)$`)
	reLine    = regexp.MustCompile(`^line (\d+): (.*)$`)
)

// rewriteYAMLError turns yaml.v3's messages into ones that name the key and
// the fix.
func rewriteYAMLError(err error, paths map[int]string) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := reLine.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return &ParseError{Line: line, Msg: m[2] + " (the file is not valid YAML)"}
		}
		return &ParseError{Msg: msg + " (the file is not valid YAML)"}
	}
	var errs []error
	for _, e := range te.Errors {
		if m := reUnknown.FindStringSubmatch(e); m != nil {
			line, _ := strconv.Atoi(m[1])
			key := m[2]
			msg := fmt.Sprintf("unknown key %q", key)
			if p := paths[line]; p != "" && p != key {
				msg = fmt.Sprintf("unknown key %q", p)
			}
			if s := suggest(key, knownKeys(m[3])); s != "" {
				msg += fmt.Sprintf("; did you mean %q? see %s", s, ExampleHint)
			} else {
				msg += "; see " + ExampleHint
			}
			errs = append(errs, &ParseError{Line: line, Key: paths[line], Msg: msg, Unknown: true})
			continue
		}
		if m := reLine.FindStringSubmatch(e); m != nil {
			line, _ := strconv.Atoi(m[1])
			msg := m[2]
			if strings.Contains(msg, "cannot unmarshal") {
				msg += "; see " + ExampleHint + " for the expected type"
			}
			errs = append(errs, &ParseError{Line: line, Key: paths[line], Msg: msg})
			continue
		}
		errs = append(errs, &ParseError{Msg: e})
	}
	return errors.Join(errs...)
}

// fileTypes maps the Go type names yaml.v3 reports to the YAML keys they have.
var fileTypes = map[string]reflect.Type{}

func init() {
	for _, v := range []any{fileServer{}, fileEtcd{}, fileEtcdTLS{}, fileEmbedded{}, fileTransport{},
		filePool{}, fileNVMf{}, fileListen{}, fileLog{}} {
		t := reflect.TypeOf(v)
		fileTypes[t.String()] = t
	}
}

func knownKeys(typeName string) []string {
	t, ok := fileTypes[typeName]
	if !ok {
		return nil
	}
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("yaml")
		if name, _, _ := strings.Cut(tag, ","); name != "" {
			keys = append(keys, name)
		}
	}
	sort.Strings(keys)
	return keys
}

// suggest returns the known key closest to key: one that key starts with
// followed by a separator ("nvmf_listen" -> "nvmf"), else the one within a
// small edit distance.
func suggest(key string, known []string) string {
	lk := strings.ToLower(key)
	best, bestD := "", 1<<30
	for _, k := range known {
		if lk == k {
			return k
		}
		if strings.HasPrefix(lk, k) && len(lk) > len(k) && strings.ContainsRune("_.-", rune(lk[len(k)])) {
			if d := len(lk) - len(k); d < bestD {
				best, bestD = k, 0
			}
			continue
		}
		d := editDistance(lk, k)
		limit := 2
		if len(k) >= 9 {
			limit = 3
		}
		if d <= limit && d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 20
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			c = min(c, prev[j]+1, cur[j-1]+1)
			cur[j] = c
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func ptr[T any](v T) *T { return &v }
