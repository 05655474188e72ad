package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/engine"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/netproxy"
	"github.com/nexstor/nexstor/internal/units"
)

// result is what one nexctl run printed and returned.
type result struct {
	stdout, stderr string
	status         int
}

// nexctlRun runs nexctl's main in this process, as a user with no
// certificates and no NEXSTOR_ settings would, and returns within wait or
// fails the test.
func nexctlRun(t *testing.T, wait time.Duration, args ...string) result {
	t.Helper()
	t.Setenv("NEXSTOR_CERT_DIR", t.TempDir())
	for _, e := range []string{"NEXSTOR_ENGINE", "NEXSTOR_INSECURE", "NEXSTOR_ACCESS_POINTS", "NEXSTOR_HOSTS"} {
		t.Setenv(e, "")
	}
	done := make(chan result, 1)
	go func() {
		var out, errb bytes.Buffer
		st := run(args, &out, &errb)
		done <- result{out.String(), errb.String(), st}
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(wait):
		t.Fatalf("nexctl %v did not return within %v", args, wait)
		return result{}
	}
}

// wantError checks that a run failed with status, printing its error once:
// one Error line naming every want, then the code and a resolution.
func wantError(t *testing.T, r result, status int, code string, want ...string) {
	t.Helper()
	if r.status != status {
		t.Errorf("status %d, want %d; stderr:\n%s", r.status, status, r.stderr)
	}
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "Error: ") || lines[1] != "Code: "+code ||
		!strings.HasPrefix(lines[2], "Resolution: ") || len(lines[2]) <= len("Resolution: ") {
		t.Errorf("stderr is not Error, Code %s, Resolution:\n%s", code, r.stderr)
		return
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr does not name %q:\n%s", w, r.stderr)
		}
	}
	// The resolution is said once, apart from the message.
	if res := strings.TrimPrefix(lines[2], "Resolution: "); strings.Contains(lines[0], res) {
		t.Errorf("the resolution is printed twice:\n%s", r.stderr)
	}
}

// TestUsageErrors checks that every way of calling nexctl wrongly exits 2
// before anything is dialled, with the error once and a way out.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"replica", "craete", "x"}, []string{`unknown command "craete" for "nexctl replica"`, "did you mean `nexctl replica create`"}},
		{[]string{"replica", "craete", "x", "--size", "1GiB"}, []string{`unknown command "craete"`}},
		{[]string{"craete"}, []string{`unknown command "craete" for "nexctl"`, "did you mean `nexctl create`"}[:1]},
		{[]string{"pool", "lst"}, []string{"did you mean `nexctl pool list`"}},
		{[]string{"pool", "list", "--bogus"}, []string{"unknown flag --bogus"}},
		{[]string{"replica", "create", "r1", "--pol", "p0", "--size", "1GiB"}, []string{"unknown flag --pol", "did you mean --pool?"}},
		{[]string{"replica", "create"}, []string{"accepts 1 arg(s), received 0", "nexctl replica create NAME"}},
		{[]string{"pool", "get", "a", "b"}, []string{"accepts 1 arg(s), received 2"}},
		{[]string{"replica", "create", "r1", "--pool", "p0", "--size", "lots"}, []string{"--size", "lots"}},
		{[]string{"replica", "create", "r1", "--size", "1GiB"}, []string{`required flag(s) "pool" not set`}},
		{[]string{"pool", "list", "-o", "xml"}, []string{"xml"}},
		{[]string{"pool", "list", "--timeout", "soon"}, []string{"soon"}},
		{[]string{"pool", "list", "--timeout", "0s"}, []string{"--timeout"}},
		{[]string{"bench", "malloc:///ram?size=1MiB", "--qd", "0"}, []string{"--qd 0"}},
		{[]string{"bench", "nvmf://127.0.0.1:1", "--time", "10ms"}, []string{"NQN"}},
		{[]string{"--engine", "node-[1-3]", "pool", "list"}, []string{"names 3 engines", "storage scan"}},
		{[]string{"--engine", "node-1:99999", "replica", "list"}, []string{"99999"}},
		{[]string{"system", "query", "-a", "node-[3-1]"}, []string{"--access-points"}},
	} {
		r := nexctlRun(t, time.Minute, tc.args...)
		wantError(t, r, exitUsage, "cli.usage", tc.want...)
		if r.stdout != "" {
			t.Errorf("%v printed on stdout:\n%s", tc.args, r.stdout)
		}
	}
	// A command group alone prints its help.
	if r := nexctlRun(t, time.Minute, "replica"); r.status != 0 || !strings.Contains(r.stdout, "Available Commands") {
		t.Errorf("nexctl replica: %+v", r)
	}
}

// startEngine runs an engine in this process on listen, in plain text.
func startEngine(t *testing.T, listen string) *engine.Server {
	t.Helper()
	s, err := engine.StartServer(engine.ServerOptions{DataDir: filepath.Join(t.TempDir(), "data"), GRPCListen: listen,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(time.Second) })
	return s
}

// TestOperationErrors runs failing operations against a real engine: each
// exits 1 and prints its error once (no context repeated, the resolution
// apart); and a size the engine suggests is accepted.
func TestOperationErrors(t *testing.T) {
	s := startEngine(t, "127.0.0.1:0")
	dir := t.TempDir()
	nx := func(args ...string) result {
		return nexctlRun(t, time.Minute, append([]string{"--engine", s.GRPCAddr(), "--insecure"}, args...)...)
	}
	r := nx("pool", "get", "nope")
	wantError(t, r, exitFailed, "pool.not_found")
	if r.stderr != "Error: pool \"nope\" not found\nCode: pool.not_found\n"+
		"Resolution: list the pools with `nexctl pool list`, or import the pool with `nexctl pool import`\n" {
		t.Errorf("stderr:\n%s", r.stderr)
	}
	if r := nx("pool", "create", "p0", fmt.Sprintf("file://%s?size=%d", filepath.Join(dir, "d0.img"), 64<<20)); r.status != 0 {
		t.Fatalf("pool create: %+v", r)
	}
	// The pool layer and the engine both name the pool: said once.
	r = nx("pool", "create", "p2", fmt.Sprintf("file://%s?size=1MiB", filepath.Join(dir, "d2.img")))
	wantError(t, r, exitFailed, "pool.disk_too_small", "1MiB")
	if n := strings.Count(r.stderr, `pool "p2"`); n != 1 {
		t.Errorf("the pool is named %d times:\n%s", n, r.stderr)
	}
	r = nx("pool", "create", "p0", fmt.Sprintf("file://%s?size=%d", filepath.Join(dir, "d3.img"), 64<<20))
	wantError(t, r, exitFailed, "pool.exists", `pool "p0" already exists`)

	// Every size suggested is accepted as it is printed.
	r = nx("replica", "create", "r0", "--pool", "p0", "--size", "10000001", "--thin")
	wantError(t, r, exitFailed, "replica.size_unaligned", "4MiB")
	m := regexp.MustCompile(`e\.g\. (\S+)\n`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no size suggested:\n%s", r.stderr)
	}
	if n, err := units.ParseSize(m[1]); err != nil || n%(4<<20) != 0 {
		t.Fatalf("suggested size %q: %d, %v", m[1], n, err)
	}
	if r := nx("replica", "create", "r0", "--pool", "p0", "--size", m[1], "--thin"); r.status != 0 {
		t.Fatalf("the suggested size %s is refused: %+v", m[1], r)
	}
	r = nx("replica", "create", "big", "--pool", "p0", "--size", "1GiB")
	wantError(t, r, exitFailed, "replica.no_space", "big")
	r = nx("nexus", "create", "n0", "--child", "bdev:///9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e")
	if r.status != exitFailed || strings.Count(r.stderr, "n0") != 1 {
		t.Errorf("nexus over a missing replica: %+v", r)
	}

	// version prints both parts.
	r = nx("version", "-o", "json")
	var v map[string]any
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil || v["api"] != "v1" || v["client"] == "" || v["client_go"] == "" {
		t.Errorf("version: %+v", r)
	}
}

// TestEngineAddress checks the forms --engine takes: a host alone means
// port 10124, IPv6 addresses work with and without brackets.
func TestEngineAddress(t *testing.T) {
	for in, want := range map[string]string{"localhost": "localhost:10124", "node-1": "node-1:10124",
		"::1": "[::1]:10124", "[::1]": "[::1]:10124", "[fd00::5]:20124": "[fd00::5]:20124", "10.0.0.1": "10.0.0.1:10124"} {
		got, err := expandEngines("--engine", in)
		if err != nil || len(got) != 1 || got[0] != want {
			t.Errorf("--engine %s: %v %v, want %s", in, got, err, want)
		}
	}
	// An engine on the IPv6 loopback is reached by its literal address.
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		testutil.Missing(t, "an IPv6 loopback address")
	}
	addr := ln.Addr().String()
	ln.Close()
	s := startEngine(t, addr)
	if r := nexctlRun(t, time.Minute, "--engine", s.GRPCAddr(), "pool", "list", "-o", "json"); r.status != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("pool list over IPv6: %+v", r)
	}
}

// deadAddrs returns an address where nothing listens and one behind a
// blackholed network (connections accepted, nothing ever answered).
func deadAddrs(t *testing.T) (closed, blackholed string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed = ln.Addr().String()
	ln.Close()
	p, err := netproxy.Listen(startEngine(t, "127.0.0.1:0").GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	p.Blackhole()
	return closed, p.Addr()
}

// TestDeadServersFailFast calls an engine and an access point that cannot
// answer, with the default --timeout of a minute: each call fails as
// unreachable, and the test waits for it no more than 10 seconds.
func TestDeadServersFailFast(t *testing.T) {
	closed, blackholed := deadAddrs(t)
	for _, addr := range []string{closed, blackholed} {
		r := nexctlRun(t, 10*time.Second, "--engine", addr, "--insecure", "pool", "list")
		wantError(t, r, exitFailed, "engine.unreachable", addr, "nexstor server")
		r = nexctlRun(t, 10*time.Second, "system", "query", "-a", addr, "--insecure")
		wantError(t, r, exitFailed, "mgmt.unreachable", addr, "access points")
		// A call that changes the system waits longer for the service,
		// but not for one that cannot be reached.
		r = nexctlRun(t, 10*time.Second, "volume", "create", "v1", "--size", "1GiB", "-a", addr, "--insecure")
		wantError(t, r, exitFailed, "mgmt.unreachable", addr, "access points")
	}
	// version prints its own part before failing.
	r := nexctlRun(t, 10*time.Second, "--engine", closed, "--insecure", "version")
	if r.status != exitFailed || !strings.Contains(r.stdout, "nexctl:") || !strings.Contains(r.stderr, "engine.unreachable") {
		t.Errorf("version against a dead engine: %+v", r)
	}
	if r := nexctlRun(t, 10*time.Second, "--engine", closed, "version", "--client"); r.status != 0 || !strings.Contains(r.stdout, "nexctl:") {
		t.Errorf("version --client: %+v", r)
	}
}

// TestMissingClientCertificate checks that a TLS connection without
// certificates fails before dialling and points at the flags that fix it.
func TestMissingClientCertificate(t *testing.T) {
	for _, args := range [][]string{
		{"--engine", "10.255.0.1", "pool", "list"},
		{"system", "query", "-a", "10.255.0.1"},
		{"storage", "scan", "-l", "10.255.0.[1-2]"},
		{"volume", "list", "-a", "10.255.0.1"},
		{"pool", "list", "-a", "10.255.0.1"},
	} {
		r := nexctlRun(t, time.Minute, args...)
		wantError(t, r, exitFailed, "cli.certs", "ca.crt", "--cert-dir", "--insecure")
	}
}

// nodeServer answers StorageScan with one disk named after its address.
type nodeServer struct {
	mgmtv1.UnimplementedNodeServiceServer
	name string
}

func (n nodeServer) StorageScan(context.Context, *mgmtv1.StorageScanRequest) (*mgmtv1.StorageScanResponse, error) {
	return &mgmtv1.StorageScanResponse{Disks: []*mgmtv1.Disk{{Name: n.name, Path: "/dev/" + n.name, Size: 1 << 30}}}, nil
}

func startNode(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(faultgrpc.ServerOptions()...)
	mgmtv1.RegisterNodeServiceServer(srv, nodeServer{name: name})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// TestEngineHostListFansOut gives storage scan its hosts through --engine
// as a list, as -l takes them.
func TestEngineHostListFansOut(t *testing.T) {
	a, b := startNode(t, "sda"), startNode(t, "sdb")
	r := nexctlRun(t, time.Minute, "--engine", a+","+b, "--insecure", "storage", "scan", "-o", "json")
	var views []scanView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &views) != nil || len(views) != 2 {
		t.Fatalf("scan over --engine %s,%s: %+v", a, b, r)
	}
	got := map[string]string{}
	for _, v := range views {
		if len(v.Disks) == 1 {
			got[v.Host] = v.Disks[0].Name
		}
	}
	if got[a] != "sda" || got[b] != "sdb" {
		t.Fatalf("scan results %+v", views)
	}
	// One dead host fails the command, after printing the others.
	closed, _ := deadAddrs(t)
	r = nexctlRun(t, 10*time.Second, "--engine", a+","+closed, "--insecure", "storage", "scan")
	if r.status != exitFailed || !strings.Contains(r.stdout, "sda") || !strings.Contains(r.stderr, "1 of 2 hosts") {
		t.Fatalf("scan with a dead host: %+v", r)
	}
}
