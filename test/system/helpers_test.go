// Package system tests whole Nexstor systems: several `nexstor server
// --control` processes on loopback, driven by the nexctl binary.
package system

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/security"
	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/netns"
)

// Heartbeat timing of the test systems: a killed member is marked
// unresponsive about heartbeatTimeout after its last heartbeat.
const (
	heartbeatInterval = "200ms"
	heartbeatTimeout  = "1500ms"
)

// node is one storage node: its configuration and, while running, its
// `nexstor server --control` process.
type node struct {
	t       *testing.T
	name    string
	dir     string
	grpc    string
	cfgPath string

	// host is the address the node's listeners use: 127.0.0.1, or its
	// namespace's address.
	host string
	// ns is the node's network namespace (nil: the root namespace).
	ns *netns.NS

	cmd *exec.Cmd
	out *testutil.SyncBuffer
	// past holds the output of the node's earlier processes.
	past []string
	done chan struct{}
	err  error
}

// cluster is a system of nodes sharing the management service on aps.
type cluster struct {
	t      *testing.T
	certs  string // certificate directory; "" runs without TLS
	system string
	aps    []string
	nodes  []*node
	// net joins the nodes' namespaces (nil without clusterOptions.netns).
	net *netns.Net
}

// clusterOptions shape newCluster.
type clusterOptions struct {
	nodes int
	// accessPoints is how many of the nodes (the first ones) are access
	// points.
	accessPoints int
	// etcdEndpoints selects an external etcd cluster; empty embeds etcd in
	// the access points.
	etcdEndpoints []string
	insecure      bool
	// poolSize is each node's pool size ("64MiB" when empty).
	poolSize string
	// nbd serves NBD on every node.
	nbd bool
	// faultDomains[i] is node i's fault domain ("" for none).
	faultDomains []string
	// extra is YAML appended to every node's configuration.
	extra string
	// netns runs each node in its own network namespace, every listener
	// (gRPC, NVMe/TCP, NBD, embedded etcd) on the namespace's address;
	// the host and QEMU guests reach them over the bridge.
	netns bool
	// partialWait and gcGrace set rebuild.partial_wait and gc.grace
	// ("" leaves the default).
	partialWait, gcGrace string
}

// Fixed ports of nodes in namespaces: each has an address of its own.
const (
	nsGRPCPort = 7100
	nsNVMfPort = 4420
	nsNBDPort  = 10809
	nsEtcdPort = 2379
	nsPeerPort = 2380
)

// newCluster writes the configurations (and certificates) of a system
// whose nodes each have one file pool; nothing is started.
func newCluster(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	c := &cluster{t: t, system: "sys" + fmt.Sprint(time.Now().UnixNano()%100000)}
	root := t.TempDir()
	if o.netns {
		c.net = netns.New(t)
	}
	for i := 0; i < o.nodes; i++ {
		n := &node{t: t, name: fmt.Sprintf("node%d", i), dir: filepath.Join(root, fmt.Sprintf("node%d", i))}
		n.host = "127.0.0.1"
		n.grpc = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
		if c.net != nil {
			n.ns = c.net.Add(n.name)
			n.host = n.ns.Addr
			n.grpc = fmt.Sprintf("%s:%d", n.host, nsGRPCPort)
		}
		c.nodes = append(c.nodes, n)
		if i < o.accessPoints {
			c.aps = append(c.aps, n.grpc)
		}
	}
	if !o.insecure {
		c.certs = filepath.Join(root, "certs")
		args := []string{"certgen", "--dir", c.certs}
		for _, n := range c.nodes {
			if n.ns != nil {
				args = append(args, "--host", n.host)
			}
		}
		run(t, testutil.BuildBinary(t, "nexstor"), args...)
	}
	for _, n := range c.nodes {
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		n.cfgPath = filepath.Join(n.dir, "server.yaml")
		c.writeConfig(n, c.system, o)
	}
	return c
}

// writeConfig writes n's configuration for system.
func (c *cluster) writeConfig(n *node, system string, o clusterOptions) {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nnode_name: %s\ngrpc_listen: %q\naccess_points: [%s]\n", system, n.name, n.grpc, quoteList(c.aps))
	for i, x := range c.nodes {
		if x == n && i < len(o.faultDomains) && o.faultDomains[i] != "" {
			fmt.Fprintf(&b, "fault_domain: %s\n", o.faultDomains[i])
		}
	}
	if len(o.etcdEndpoints) > 0 {
		fmt.Fprintf(&b, "etcd:\n  endpoints: [%s]\n", quoteList(o.etcdEndpoints))
	} else if n.ns != nil {
		fmt.Fprintf(&b, "etcd:\n  embedded: {client_port: %d, peer_port: %d}\n", nsEtcdPort, nsPeerPort)
	} else {
		fmt.Fprintf(&b, "etcd:\n  embedded: {client_port: %d, peer_port: %d}\n", testutil.FreePort(c.t), testutil.FreePort(c.t))
	}
	fmt.Fprintf(&b, "data_dir: %q\nruntime_dir: %q\n", filepath.Join(n.dir, "data"), filepath.Join(n.dir, "run"))
	if c.certs == "" {
		b.WriteString("transport_config: {allow_insecure: true}\n")
	} else {
		fmt.Fprintf(&b, "transport_config: {ca_cert: %q, cert: %q, key: %q}\n", filepath.Join(c.certs, "ca.crt"),
			filepath.Join(c.certs, "server.crt"), filepath.Join(c.certs, "server.key"))
	}
	nbdListen := ""
	nvmfPort, nbdPort := nsNVMfPort, nsNBDPort
	if n.ns == nil {
		nvmfPort, nbdPort = testutil.FreePort(c.t), testutil.FreePort(c.t)
	}
	if o.nbd {
		nbdListen = fmt.Sprintf("%s:%d", n.host, nbdPort)
	}
	fmt.Fprintf(&b, "nvmf: {listen: \"%s:%d\", discovery: \"\"}\nnbd: {listen: %q}\nmetrics: {listen: \"\"}\n", n.host, nvmfPort, nbdListen)
	if o.partialWait != "" {
		fmt.Fprintf(&b, "rebuild: {partial_wait: %s}\n", o.partialWait)
	}
	if o.gcGrace != "" {
		fmt.Fprintf(&b, "gc: {grace: %s}\n", o.gcGrace)
	}
	size := o.poolSize
	if size == "" {
		size = "64MiB"
	}
	fmt.Fprintf(&b, "pools:\n  - name: p0\n    disk: \"file://%s?size=%s\"\n", filepath.Join(n.dir, "d0.img"), size)
	b.WriteString(o.extra)
	if err := os.WriteFile(n.cfgPath, []byte(b.String()), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

func run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", filepath.Base(bin), args, err, out)
	}
	return string(out)
}

// start starts every node at once (access points wait for each other).
func (c *cluster) start() {
	for _, n := range c.nodes {
		n.start()
	}
}

// start starts the node's server process.
func (n *node) start(extra ...string) {
	n.t.Helper()
	args := append([]string{"server", "--control", "-o", n.cfgPath,
		"--heartbeat-interval", heartbeatInterval, "--heartbeat-timeout", heartbeatTimeout}, extra...)
	n.cmd = exec.Command(testutil.BuildBinary(n.t, "nexstor"), args...)
	if n.ns != nil {
		n.cmd = n.ns.Command(testutil.BuildBinary(n.t, "nexstor"), args...)
	}
	if n.out != nil {
		n.past = append(n.past, n.out.String())
	}
	n.out = &testutil.SyncBuffer{}
	n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.done = make(chan struct{})
	cmd, done := n.cmd, n.done
	go func() { n.err = cmd.Wait(); close(done) }()
	n.t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
		if n.t.Failed() {
			n.t.Logf("%s log:\n%s", n.name, tail(n.out.String(), 4000))
		}
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// stop sends sig and waits (bounded) for the process to exit.
func (n *node) stop(sig syscall.Signal) {
	n.t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		n.t.Fatalf("%s: %v", n.name, err)
	}
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		n.t.Fatalf("%s did not exit after %v:\n%s", n.name, sig, tail(n.out.String(), 4000))
	}
}

// exited waits (bounded) for the process to exit by itself and returns its
// output.
func (n *node) exited(within time.Duration) string {
	n.t.Helper()
	select {
	case <-n.done:
		return n.out.String()
	case <-time.After(within):
		n.t.Fatalf("%s still runs after %v:\n%s", n.name, within, tail(n.out.String(), 4000))
		return ""
	}
}

// waitLog waits until the node's log contains s.
func (n *node) waitLog(s string, within time.Duration) {
	n.t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(n.out.String(), s) {
		select {
		case <-n.done:
			n.t.Fatalf("%s exited (%v) before logging %q:\n%s", n.name, n.err, s, tail(n.out.String(), 4000))
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s did not log %q within %v:\n%s", n.name, s, within, tail(n.out.String(), 4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nexctl runs nexctl with the cluster's credentials and returns stdout,
// stderr and the error.
func (c *cluster) nexctl(args ...string) (string, string, error) {
	return c.nexctlAs(c.certs, "admin", args...)
}

// nexctlAs runs nexctl with the given certificate directory and identity
// ("" directory: --insecure).
func (c *cluster) nexctlAs(certDir, identity string, args ...string) (string, string, error) {
	c.t.Helper()
	sec := []string{"--insecure"}
	if certDir != "" {
		sec = []string{"--cert-dir", certDir, "--identity", identity}
	}
	if !slices.Contains(args, "--timeout") {
		sec = append(sec, "--timeout", "20s")
	}
	cmd := exec.Command(testutil.BuildBinary(c.t, "nexctl"), append(args, sec...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

func (c *cluster) mustNexctl(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.nexctl(args...)
	if err != nil {
		c.t.Fatalf("nexctl %v: %v\n%s%s", args, err, out, errOut)
	}
	return out
}

// wantFailure runs nexctl, expects it to fail, and returns its stdout
// (tables carry per-host errors) and stderr.
func (c *cluster) wantFailure(certDir, identity string, args ...string) string {
	c.t.Helper()
	out, errOut, err := c.nexctlAs(certDir, identity, args...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		c.t.Fatalf("nexctl %v: want a failure, got %v\n%s%s", args, err, out, errOut)
	}
	return out + errOut
}

// hosts returns the node addresses as a host list.
func (c *cluster) hosts() string {
	var hs []string
	for _, n := range c.nodes {
		hs = append(hs, n.grpc)
	}
	return strings.Join(hs, ",")
}

type member struct {
	Rank    uint32 `json:"rank"`
	UUID    string `json:"uuid"`
	Address string `json:"address"`
	State   string `json:"state"`
	Info    string `json:"info"`
}

// query returns the members by address.
func (c *cluster) query() (map[string]member, error) {
	out, errOut, err := c.nexctl("system", "query", "-a", strings.Join(c.aps, ","), "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, errOut)
	}
	var v struct {
		Members []member `json:"members"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("decode %v: %s", err, out)
	}
	m := map[string]member{}
	for _, x := range v.Members {
		m[x.Address] = x
	}
	return m, nil
}

// waitMembers polls system query until ok accepts the members.
func (c *cluster) waitMembers(what string, within time.Duration, ok func(map[string]member) bool) map[string]member {
	c.t.Helper()
	deadline := time.Now().Add(within)
	var last map[string]member
	var lastErr error
	for time.Now().Before(deadline) {
		last, lastErr = c.query()
		if lastErr == nil && ok(last) {
			return last
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("%s: not reached within %v; last query %v, %v", what, within, last, lastErr)
	return nil
}

// allState reports whether every node is a member in state.
func (c *cluster) allState(state string) func(map[string]member) bool {
	return func(m map[string]member) bool {
		for _, n := range c.nodes {
			if m[n.grpc].State != state {
				return false
			}
		}
		return true
	}
}

// engineConn connects to a node's engine gRPC API as admin.
func (c *cluster) engineConn(n *node) *grpc.ClientConn {
	c.t.Helper()
	f := security.Files{CACert: filepath.Join(c.certs, "ca.crt"), Cert: filepath.Join(c.certs, "admin.crt"),
		Key: filepath.Join(c.certs, "admin.key")}
	creds, err := security.ClientCredentials(f, c.certs == "")
	if err != nil {
		c.t.Fatal(err)
	}
	cc, err := grpc.NewClient(n.grpc, grpc.WithTransportCredentials(creds))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cc.Close() })
	return cc
}

// replicas lists a node's replicas by name with their pool.
func (c *cluster) replicas(n *node) map[string]string {
	c.t.Helper()
	out, err := c.listReplicas(n)
	if err != nil {
		c.t.Fatalf("%s: list replicas: %v", n.name, err)
	}
	return out
}

// tryReplicas is replicas, nil on error.
func (c *cluster) tryReplicas(n *node) map[string]string {
	out, _ := c.listReplicas(n)
	return out
}

func (c *cluster) listReplicas(n *node) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := enginev1.NewReplicaServiceClient(c.engineConn(n)).ListReplicas(ctx, &enginev1.ListReplicasRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, r := range resp.GetReplicas() {
		out[r.GetName()] = r.GetPool()
	}
	return out, nil
}

// dial connects to addr with creds.
func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
