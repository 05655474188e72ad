package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
)

func TestDefaultIsValid(t *testing.T) {
	s := Default()
	if err := s.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	if s.MetadataDir != "/var/lib/nexstor/meta" || s.Etcd.Embedded.DataDir != "/var/lib/nexstor/etcd" {
		t.Fatalf("derived dirs = %q, %q", s.MetadataDir, s.Etcd.Embedded.DataDir)
	}
	if got := s.AccessPointAddrs(); !reflect.DeepEqual(got, []string{"localhost:10124"}) {
		t.Fatalf("AccessPointAddrs = %v", got)
	}
}

func TestParseEmptyIsDefault(t *testing.T) {
	s, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, Default()) {
		t.Fatalf("Parse(empty) = %+v, want Default()", s)
	}
}

func TestExamplesParse(t *testing.T) {
	dir := filepath.Join(testutil.RepoRoot(t), "config", "examples")
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) < 3 {
		t.Fatalf("examples: %v, %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			s, err := Load(f)
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, s)
		})
	}
}

func TestExampleValues(t *testing.T) {
	dir := filepath.Join(testutil.RepoRoot(t), "config", "examples")
	s, err := Load(filepath.Join(dir, "server-3node.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !s.UsesEmbeddedEtcd() || len(s.AccessPoints) != 3 {
		t.Fatalf("3node: embedded=%v aps=%v", s.UsesEmbeddedEtcd(), s.AccessPoints)
	}
	if want := []string{"10.0.0.1:10124", "10.0.0.2:10124", "10.0.0.3:10124"}; !reflect.DeepEqual(s.AccessPointAddrs(), want) {
		t.Fatalf("AccessPointAddrs = %v, want %v", s.AccessPointAddrs(), want)
	}
	if s.Pools[0].ClusterSize != 4<<20 || s.Pools[1].ClusterSize != 1<<20 {
		t.Fatalf("cluster sizes = %d, %d", s.Pools[0].ClusterSize, s.Pools[1].ClusterSize)
	}
	if s.NBDListen != "" || s.DiscoveryListen != "10.0.0.1:8009" || !s.Log.JSON {
		t.Fatalf("nbd=%q discovery=%q json=%v", s.NBDListen, s.DiscoveryListen, s.Log.JSON)
	}
	x, err := Load(filepath.Join(dir, "server-external-etcd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if x.UsesEmbeddedEtcd() || len(x.Etcd.Endpoints) != 3 || x.Etcd.TLS.Key == "" {
		t.Fatalf("external: %+v", x.Etcd)
	}
	if x.MetadataDir != "/srv/nexstor/meta" {
		t.Fatalf("metadata_dir not derived from data_dir: %q", x.MetadataDir)
	}
	if x.Port != DefaultPort || x.GRPCListen != "10.0.1.21:10124" {
		t.Fatalf("port=%d grpc=%q", x.Port, x.GRPCListen)
	}
}

// roundTrip checks that Marshal writes what Parse reads back unchanged.
func roundTrip(t *testing.T, s *Server) {
	t.Helper()
	data, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(data)
	if err != nil {
		t.Fatalf("re-parse of marshalled config: %v\n%s", err, data)
	}
	if !reflect.DeepEqual(normalize(back), normalize(s)) {
		t.Fatalf("round trip changed the config:\n got %+v\nwant %+v\n%s", back, s, data)
	}
}

// normalize treats nil and empty collections alike.
func normalize(s *Server) *Server {
	c := s.Clone()
	if len(c.Etcd.Endpoints) == 0 {
		c.Etcd.Endpoints = nil
	}
	if len(c.Pools) == 0 {
		c.Pools = nil
	}
	for i := range c.Pools {
		if len(c.Pools[i].Labels) == 0 {
			c.Pools[i].Labels = nil
		}
	}
	if len(c.Labels) == 0 {
		c.Labels = nil
	}
	if len(c.AccessPoints) == 0 {
		c.AccessPoints = nil
	}
	return c
}

func TestParseUnknownKey(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"top level", "name: x\nport: 10124\n\n\n\n\nnvmf_lisen: \":4420\"\n",
			[]string{`line 7: unknown key "nvmf_lisen"; did you mean "nvmf"?`, ExampleHint}},
		{"typo", "acess_points: [a]\n", []string{`line 1: unknown key "acess_points"; did you mean "access_points"?`}},
		{"nested", "nvmf:\n  listen: \":4420\"\n  lisen: \":1\"\n",
			[]string{`line 3: unknown key "nvmf.lisen"; did you mean "listen"?`}},
		{"in list", "pools:\n  - name: a\n    disk: /dev/sdb\n    clustersize: 4MiB\n",
			[]string{`line 4: unknown key "pools[0].clustersize"; did you mean "cluster_size"?`}},
		{"no suggestion", "zzzzzzzz: 1\n", []string{`line 1: unknown key "zzzzzzzz"; see`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatal("Parse accepted an unknown key")
			}
			if !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("error %v is not ErrUnknownKey", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseTypeErrors(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"port: abc\n", "line 1: port: cannot unmarshal"},
		{"name: x\nlog:\n  json: maybe\n", "line 3: log.json: cannot unmarshal"},
		{"pools:\n  - name: a\n    disk: /dev/sdb\n    cluster_size: 4 MiBs\n", "line 4:"},
		{"name: a\nname: b\n", "line 2"},
		{"name: [\n", "not valid YAML"},
		{"name: a\n---\nname: b\n", "second YAML document"},
		{"- a\n- b\n", "cannot unmarshal"},
	}
	for _, tc := range cases {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want error containing %q", tc.yaml, err, tc.want)
		}
	}
}

func TestValidateErrors(t *testing.T) {
	cases := []struct {
		name string
		mod  func(s *Server)
		key  string
		want string
	}{
		{"bad name", func(s *Server) { s.Name = "no spaces" }, "name", "letters, digits"},
		{"empty name", func(s *Server) { s.Name = "" }, "name", "is empty"},
		{"port", func(s *Server) { s.Port = 70000 }, "port", "between 1 and 65535"},
		{"grpc listen no port", func(s *Server) { s.GRPCListen = "127.0.0.1" }, "grpc_listen", "not host:port"},
		{"grpc listen bad port", func(s *Server) { s.GRPCListen = "127.0.0.1:99999" }, "grpc_listen", "not between 1 and 65535"},
		{"nvmf listen", func(s *Server) { s.NVMfListen = "4420" }, "nvmf.listen", "not host:port"},
		{"nbd listen", func(s *Server) { s.NBDListen = "x:y" }, "nbd.listen", "leave it empty to disable"},
		{"empty access points", func(s *Server) { s.AccessPoints = nil }, "access_points", "1, 3 or 5"},
		{"even access points", func(s *Server) { s.AccessPoints = []string{"a", "b"} }, "access_points", "use an odd number: 1 or 3"},
		{"too many access points", func(s *Server) {
			s.AccessPoints = []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"}
		}, "access_points", "1, 3, 5 or 7"},
		{"duplicate access point", func(s *Server) { s.AccessPoints = []string{"node-1", "NODE-1:10124", "node-3"} },
			"access_points[1]", "duplicates access_points[0]"},
		{"bad access point", func(s *Server) { s.AccessPoints = []string{"node 1:x"} }, "access_points[0]", "host:port"},
		{"bad etcd endpoint", func(s *Server) { s.Etcd.Endpoints = []string{"ftp://x:1"} }, "etcd.endpoints[0]", "http(s)://host:port"},
		{"etcd endpoint no port", func(s *Server) { s.Etcd.Endpoints = []string{"etcd-1"} }, "etcd.endpoints[0]", "host:port"},
		{"etcd tls half", func(s *Server) { s.Etcd.Endpoints = []string{"e:2379"}; s.Etcd.TLS.Cert = "/c" }, "etcd.tls", "together"},
		{"etcd same ports", func(s *Server) { s.Etcd.Embedded.PeerPort = 2379 }, "etcd.embedded.peer_port", "distinct"},
		{"relative data dir", func(s *Server) { s.DataDir = "data" }, "data_dir", "absolute"},
		{"missing cert", func(s *Server) { s.TransportConfig.Key = "" }, "transport_config.key", "allow_insecure"},
		{"bad pool name", func(s *Server) { s.Pools = []Pool{{Name: "-x", Disk: "/dev/sdb", ClusterSize: 4 << 20}} }, "pools[0].name", "letters"},
		{"duplicate pool", func(s *Server) {
			s.Pools = []Pool{{Name: "a", Disk: "/dev/sdb", ClusterSize: 4 << 20}, {Name: "a", Disk: "/dev/sdc", ClusterSize: 4 << 20}}
		}, "pools[1].name", "distinct"},
		{"duplicate disk", func(s *Server) {
			s.Pools = []Pool{{Name: "a", Disk: "/dev/sdb", ClusterSize: 4 << 20}, {Name: "b", Disk: "aio:///dev/sdb", ClusterSize: 4 << 20}}
		}, "pools[1].disk", "own"},
		{"disk scheme", func(s *Server) { s.Pools = []Pool{{Name: "a", Disk: "nvme://x", ClusterSize: 4 << 20}} }, "pools[0].disk", "unknown scheme"},
		{"disk relative", func(s *Server) { s.Pools = []Pool{{Name: "a", Disk: "disk.img", ClusterSize: 4 << 20}} }, "pools[0].disk", "absolute"},
		{"disk host", func(s *Server) { s.Pools = []Pool{{Name: "a", Disk: "file://dev/sdb", ClusterSize: 4 << 20}} }, "pools[0].disk", "three slashes"},
		{"malloc no size", func(s *Server) { s.Pools = []Pool{{Name: "a", Disk: "malloc:///r", ClusterSize: 4 << 20}} }, "pools[0].disk", "size="},
		{"bad size", func(s *Server) { s.Pools = []Pool{{Name: "a", Disk: "file:///x?size=lots", ClusterSize: 4 << 20}} }, "pools[0].disk", "not a size"},
		{"cluster size", func(s *Server) { s.Pools = []Pool{{Name: "a", Disk: "/dev/sdb", ClusterSize: 3 << 20}} }, "pools[0].cluster_size", "power of two"},
		{"log level", func(s *Server) { s.Log.Level = "loud" }, "log.level", "debug, info, warn, error"},
		{"log file", func(s *Server) { s.Log.File = "x.log" }, "log.file", "absolute"},
		{"fault domain", func(s *Server) { s.FaultDomain = "rack1" }, "fault_domain", "/rack1/node3"},
		{"fault domain segment", func(s *Server) { s.FaultDomain = "/rack 1/n" }, "fault_domain", "level name"},
		{"label", func(s *Server) { s.Labels = map[string]string{"bad key": "v"} }, "labels", "label key"},
		{"node name", func(s *Server) { s.NodeName = "node 1" }, "node_name", "node-<rank>"},
		{"node name too long", func(s *Server) { s.NodeName = strings.Repeat("n", MaxNameLen+1) }, "node_name", "at most 63"},
		{"pool label", func(s *Server) {
			s.Pools = []Pool{{Name: "a", Disk: "/dev/sdb", ClusterSize: 4 << 20, Labels: map[string]string{"ok": "1", "-bad": "v"}}}
		}, "pools[0].labels", `key "-bad"`},
		{"port conflict", func(s *Server) { s.NBDListen = ":4420" }, "nbd.listen", "also used by nvmf.listen"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := Default()
			tc.mod(s)
			err := s.Validate()
			if err == nil {
				t.Fatal("Validate accepted an invalid config")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%v is not ErrInvalid", err)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Key != tc.key {
				t.Fatalf("error %v: first key %q, want %q", err, keyOf(ve), tc.key)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func keyOf(v *ValidationError) string {
	if v == nil {
		return ""
	}
	return v.Key
}

func TestValidateReportsAll(t *testing.T) {
	s := Default()
	s.Port = 0
	s.Log.Level = "x"
	s.AccessPoints = []string{"a", "b"}
	err := s.Validate()
	for _, k := range []string{"port:", "log.level:", "access_points:"} {
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("error %v does not mention %s", err, k)
		}
	}
}

// TestParseNodeNameAndPoolLabels: node_name and pools[].labels are read,
// kept by the builders and Clone, and survive the effective configuration.
func TestParseNodeNameAndPoolLabels(t *testing.T) {
	s, err := Parse([]byte("node_name: store-7\npools:\n  - name: fast\n    disk: /dev/nvme0n1\n    labels:\n      media: nvme\n      tier: gold\n  - name: slow\n    disk: /dev/sdb\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.NodeName != "store-7" {
		t.Fatalf("node_name %q", s.NodeName)
	}
	if want := map[string]string{"media": "nvme", "tier": "gold"}; !reflect.DeepEqual(s.Pools[0].Labels, want) || s.Pools[1].Labels != nil {
		t.Fatalf("pool labels %v, %v", s.Pools[0].Labels, s.Pools[1].Labels)
	}
	roundTrip(t, s)
	c := s.Clone()
	c.Pools[0].Labels["media"] = "hdd"
	if s.Pools[0].Labels["media"] != "nvme" {
		t.Fatal("Clone shares the pools' labels")
	}
	if d, err := Parse(nil); err != nil || d.NodeName != "" {
		t.Fatalf("default node name %q, %v: want empty (named by the management service)", d.NodeName, err)
	}
	if s.WithNodeName("other"); s.NodeName != "other" {
		t.Fatalf("WithNodeName: %q", s.NodeName)
	}
	if _, err := Parse([]byte("nodename: x\n")); err == nil || !strings.Contains(err.Error(), `did you mean "node_name"`) {
		t.Fatalf("misspelled node_name: %v", err)
	}
	if _, err := Parse([]byte("pools:\n  - name: a\n    disk: /dev/sdb\n    label:\n      a: b\n")); err == nil ||
		!strings.Contains(err.Error(), `did you mean "labels"`) {
		t.Fatalf("misspelled pools[].labels: %v", err)
	}
}

func TestParseDerived(t *testing.T) {
	s, err := Parse([]byte("port: 10200\ndata_dir: /d\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.GRPCListen != "127.0.0.1:10200" || s.AccessPoints[0] != "localhost:10200" {
		t.Fatalf("grpc_listen=%q aps=%v: not derived from port", s.GRPCListen, s.AccessPoints)
	}
	if s.MetadataDir != "/d/meta" || s.Etcd.Embedded.DataDir != "/d/etcd" {
		t.Fatalf("dirs %q %q not derived from data_dir", s.MetadataDir, s.Etcd.Embedded.DataDir)
	}
	s, err = Parse([]byte("data_dir: /d\nmetadata_dir: /m\netcd:\n  embedded:\n    data_dir: /e\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.MetadataDir != "/m" || s.Etcd.Embedded.DataDir != "/e" {
		t.Fatalf("explicit dirs overridden: %q %q", s.MetadataDir, s.Etcd.Embedded.DataDir)
	}
}

func TestWithBuilders(t *testing.T) {
	s := Default().WithDataDir("/x").WithPort(10200).WithInsecure(true).WithName("sys").
		WithAccessPoints("a", "b", "c").WithLogLevel("debug").WithNBDListen("").WithLabel("k", "v").
		WithPools(Pool{Name: "p", Disk: "/dev/sdb"}).WithFaultDomain("/r/n")
	if s.DataDir != "/x" || s.MetadataDir != "/x/meta" || s.Etcd.Embedded.DataDir != "/x/etcd" {
		t.Fatalf("WithDataDir: %q %q %q", s.DataDir, s.MetadataDir, s.Etcd.Embedded.DataDir)
	}
	if s.GRPCListen != "127.0.0.1:10200" {
		t.Fatalf("WithPort did not move grpc_listen: %q", s.GRPCListen)
	}
	if s.Pools[0].ClusterSize != DefaultClusterSize {
		t.Fatalf("WithPools did not default the cluster size: %d", s.Pools[0].ClusterSize)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	// An explicit metadata dir is kept when the data dir moves.
	s.WithMetadataDir("/m").WithDataDir("/y")
	if s.MetadataDir != "/m" {
		t.Fatalf("explicit metadata dir replaced: %q", s.MetadataDir)
	}
	if s.WithCertDir("/c"); s.TransportConfig.Key != "/c/server.key" {
		t.Fatalf("WithCertDir: %+v", s.TransportConfig)
	}
	roundTrip(t, s)
}

func TestWriteEffective(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	s := Default().WithInsecure(true).WithLabel("a", "b")
	for i := 0; i < 2; i++ { // the second write replaces a read-only file
		s.WithName("sys" + string(rune('a'+i)))
		path, err := s.WriteEffective(dir)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o444 {
			t.Fatalf("mode %v, want 0444", st.Mode().Perm())
		}
		back, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(normalize(back), normalize(s)) {
			t.Fatalf("effective config differs:\n%+v\n%+v", back, s)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("leftover files: %v", ents)
	}
}

func TestLogLevel(t *testing.T) {
	for lvl, want := range map[string]string{"debug": "DEBUG", "info": "INFO", "warn": "WARN", "error": "ERROR"} {
		if got := (Log{Level: lvl}).SlogLevel().String(); got != want {
			t.Errorf("%s -> %s", lvl, got)
		}
	}
}

func TestSuggest(t *testing.T) {
	known := knownKeys("config.fileServer")
	for in, want := range map[string]string{"nvmf_lisen": "nvmf", "datadir": "data_dir", "acces_points": "access_points",
		"lables": "labels", "xyzzy": "", "metrics_listen": "metrics"} {
		if got := suggest(in, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseRebuildAndGC(t *testing.T) {
	s, err := Parse([]byte("rebuild:\n  partial_wait: 90s\ngc:\n  grace: 0s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Rebuild.PartialWait != 90*time.Second || s.GC.Grace != 0 {
		t.Fatalf("rebuild %v, gc %v", s.Rebuild, s.GC)
	}
	back, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if s2, err := Parse(back); err != nil || !reflect.DeepEqual(s, s2) {
		t.Fatalf("round trip: %v\n%s", err, back)
	}
	if _, err := Parse([]byte("rebuild:\n  partial_wait: ten minutes\n")); err == nil || !strings.Contains(err.Error(), "10m") {
		t.Fatalf("a bad duration: %v", err)
	}
	s.Rebuild.PartialWait = -time.Second
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "rebuild.partial_wait") {
		t.Fatalf("a negative wait: %v", err)
	}
}

func TestParseMove(t *testing.T) {
	if s := Default(); s.Move.Grace != DefaultMoveGrace {
		t.Fatalf("default move.grace %v", s.Move.Grace)
	}
	s, err := Parse([]byte("move:\n  grace: 15s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Move.Grace != 15*time.Second {
		t.Fatalf("move %v", s.Move)
	}
	back, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if s2, err := Parse(back); err != nil || !reflect.DeepEqual(s, s2) {
		t.Fatalf("round trip: %v\n%s", err, back)
	}
	s.Move.Grace = time.Hour
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "move.grace") {
		t.Fatalf("an hour's grace: %v", err)
	}
}
