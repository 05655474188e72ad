package engineclient_test

import (
	"context"
	"errors"
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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/engine"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/security"
	"github.com/nexstor/nexstor/internal/security/certgen"
	"github.com/nexstor/nexstor/internal/testutil/netproxy"
	"github.com/nexstor/nexstor/internal/units"
)

func TestParseAddr(t *testing.T) {
	for in, want := range map[string]string{
		"localhost":          "localhost:10124",
		"node-1:7":           "node-1:7",
		"10.0.0.1":           "10.0.0.1:10124",
		"::1":                "[::1]:10124",
		"[::1]":              "[::1]:10124",
		"[::1]:20124":        "[::1]:20124",
		"fe80::1%eth0":       "[fe80::1%eth0]:10124",
		" node.example.org ": "node.example.org:10124",
	} {
		if got, err := engineclient.ParseAddr(in); err != nil || got != want {
			t.Errorf("ParseAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "node-[1-3]", "a,b", "host:0", "host:99999", "host:x", ":10124", "[::1]:"} {
		_, err := engineclient.ParseAddr(in)
		if fault.CodeOf(err) != "engine.address" || fault.KindOf(err) != fault.InvalidArgument {
			t.Errorf("ParseAddr(%q): %v, want an engine.address fault", in, err)
		}
	}
}

// startEngine runs an engine in this process, serving gRPC on loopback in
// plain text, with grpcOpts added to its server.
func startEngine(t *testing.T, grpcOpts ...grpc.ServerOption) *engine.Server {
	t.Helper()
	dir := t.TempDir()
	s, err := engine.StartServer(engine.ServerOptions{DataDir: filepath.Join(dir, "data"), GRPCListen: "127.0.0.1:0",
		GRPCOptions: grpcOpts, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(time.Second) })
	return s
}

func newClient(t *testing.T, addr string, o engineclient.Options) *engineclient.Client {
	t.Helper()
	c, err := engineclient.New(addr, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// wantFault checks that err is a *fault.Fault (not merely wraps one) of the
// given code, with the exact status code of kind, a message naming every
// want and a resolution.
func wantFault(t *testing.T, err error, code string, kind fault.Kind, want ...string) {
	t.Helper()
	f, ok := err.(*fault.Fault)
	if !ok {
		t.Fatalf("got %T %v, want a *fault.Fault", err, err)
	}
	if f.Code != code || fault.KindOf(f) != kind || status.Code(f) != codeOfKind(kind) || fault.ResolutionOf(f) == "" {
		t.Fatalf("got code %q kind %v status %v resolution %q (%v); want %s, %v", f.Code, fault.KindOf(f), status.Code(f),
			fault.ResolutionOf(f), f, code, kind)
	}
	for _, w := range want {
		if !strings.Contains(fault.Message(f), w) {
			t.Errorf("message %q does not name %q", fault.Message(f), w)
		}
	}
}

func codeOfKind(k fault.Kind) codes.Code {
	return map[fault.Kind]codes.Code{fault.NotFound: codes.NotFound, fault.AlreadyExists: codes.AlreadyExists,
		fault.InvalidArgument: codes.InvalidArgument, fault.FailedPrecondition: codes.FailedPrecondition,
		fault.Unavailable: codes.Unavailable, fault.ResourceExhausted: codes.ResourceExhausted}[k]
}

// TestErrorsAreFaults runs real error paths of an engine through the client
// and checks that each comes back as a fault with its code, message and
// resolution, and that the size a refusal suggests is accepted.
func TestErrorsAreFaults(t *testing.T) {
	s := startEngine(t)
	c := newClient(t, s.GRPCAddr(), engineclient.Options{Insecure: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	_, err := c.GetPool(ctx, &enginev1.GetPoolRequest{Name: "p9"})
	wantFault(t, err, "pool.not_found", fault.NotFound, `pool "p9" not found`)

	disk := fmt.Sprintf("file://%s?size=%d", filepath.Join(t.TempDir(), "d0.img"), 64<<20)
	if _, err := c.CreatePool(ctx, &enginev1.CreatePoolRequest{Name: "p0", Disk: disk, ClusterSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	// The same pool again is the existing one; another disk is refused.
	if _, err := c.CreatePool(ctx, &enginev1.CreatePoolRequest{Name: "p0", Disk: disk}); err != nil {
		t.Fatalf("the same pool again: %v", err)
	}
	other := fmt.Sprintf("file://%s?size=%d", filepath.Join(t.TempDir(), "d1.img"), 64<<20)
	_, err = c.CreatePool(ctx, &enginev1.CreatePoolRequest{Name: "p0", Disk: other})
	wantFault(t, err, "pool.exists", fault.AlreadyExists, `pool "p0" already exists on disk`)

	// A size that is not a multiple of the cluster size is refused with a
	// suggestion; the suggestion parses and is accepted.
	_, err = c.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "r0", Pool: "p0", Size: 10000001, Thin: true})
	wantFault(t, err, "replica.size_unaligned", fault.InvalidArgument, "r0", "1MiB")
	m := regexp.MustCompile(`e\.g\. (\S+)$`).FindStringSubmatch(fault.ResolutionOf(err))
	if m == nil {
		t.Fatalf("resolution %q suggests no size", fault.ResolutionOf(err))
	}
	size, perr := units.ParseSize(m[1])
	if perr != nil {
		t.Fatalf("the suggested size %q does not parse: %v", m[1], perr)
	}
	if _, err := c.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "r0", Pool: "p0", Size: uint64(size), Thin: true}); err != nil {
		t.Fatalf("the suggested size %s is refused: %v", m[1], err)
	}

	// The message says each context once, and the resolution is apart.
	_, err = c.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "r0", Pool: "p0", Size: 1 << 20})
	wantFault(t, err, "replica.exists", fault.AlreadyExists, `replica "r0" already exists`)
	if msg := fault.Message(err); strings.Count(msg, "r0") != 1 || strings.Contains(msg, fault.ResolutionOf(err)) {
		t.Errorf("message %q repeats itself or holds the resolution", msg)
	}
	_, err = c.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "big", Pool: "p0", Size: 1 << 30})
	wantFault(t, err, "replica.no_space", fault.ResourceExhausted, "big")
	_, err = c.CreateNexus(ctx, &enginev1.CreateNexusRequest{Name: "n0"})
	wantFault(t, err, "nexus.no_children", fault.InvalidArgument, "n0")

	// Idempotent calls repeat without error.
	for range 2 {
		if _, err := c.UnshareReplica(ctx, &enginev1.UnshareReplicaRequest{Name: "r0"}); err != nil {
			t.Fatal(err)
		}
	}
	list, err := c.ListReplicas(ctx, nil)
	if err != nil || len(list.GetReplicas()) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	v, err := c.GetVersion(ctx, nil)
	if err != nil || v.GetApi() != "v1" {
		t.Fatalf("version %v %v", v, err)
	}

	// A client over a connection without the interceptors gets faults too.
	cc, err := grpc.NewClient(s.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = engineclient.NewFromConn(cc).GetReplica(ctx, &enginev1.GetReplicaRequest{Name: "r9"})
	wantFault(t, err, "replica.not_found", fault.NotFound, "r9")
}

// TestDeadline checks that a call honours its context: one whose deadline
// has passed fails with DeadlineExceeded.
func TestDeadline(t *testing.T) {
	s := startEngine(t)
	c := newClient(t, s.GRPCAddr(), engineclient.Options{Insecure: true})
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	_, err := c.ListPools(ctx, nil)
	if status.Code(err) != codes.DeadlineExceeded || fault.KindOf(err) != fault.DeadlineExceeded {
		t.Fatalf("expired deadline: %v (status %v, kind %v)", err, status.Code(err), fault.KindOf(err))
	}
}

// deadAddrs returns an address where nothing listens, and one behind a
// blackholed network: connections are accepted, and no byte ever crosses.
func deadAddrs(t *testing.T) (closed, blackholed string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed = ln.Addr().String()
	ln.Close()
	p, err := netproxy.Listen(startEngine(t).GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	p.Blackhole()
	return closed, p.Addr()
}

// TestDeadAddressFailsFast calls engines that cannot answer with a call
// deadline far beyond the dial timeout: the call fails as unreachable, not
// at its deadline.
func TestDeadAddressFailsFast(t *testing.T) {
	closed, blackholed := deadAddrs(t)
	for name, addr := range map[string]string{"closed port": closed, "blackhole": blackholed} {
		t.Run(name, func(t *testing.T) {
			c := newClient(t, addr, engineclient.Options{Insecure: true, DialTimeout: time.Second})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := c.ListPools(ctx, nil)
			if ctx.Err() != nil {
				t.Fatalf("the call waited for its deadline: %v", err)
			}
			wantFault(t, err, "engine.unreachable", fault.Unavailable, addr)
		})
	}
}

// TestTransportSecurityExplained checks that a plain-text client of a TLS
// engine gets the explanation of transport security, not a bare
// "unreachable".
func TestTransportSecurityExplained(t *testing.T) {
	dir := t.TempDir()
	if err := certgen.GenerateAll(dir, certgen.Options{}); err != nil {
		t.Fatal(err)
	}
	files := func(id string) security.Files {
		return security.Files{CACert: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key")}
	}
	creds, err := security.ServerCredentials(files("server"), false)
	if err != nil {
		t.Fatal(err)
	}
	s := startEngine(t, grpc.Creds(creds))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = newClient(t, s.GRPCAddr(), engineclient.Options{Insecure: true, DialTimeout: time.Second}).ListPools(ctx, nil)
	if fault.CodeOf(err) != security.CodeTLSMismatch || fault.ResolutionOf(err) == "" {
		t.Fatalf("plain text against TLS: %v (code %q)", err, fault.CodeOf(err))
	}
	// With the admin certificate the call goes through.
	if _, err := newClient(t, s.GRPCAddr(), engineclient.Options{TLS: files("admin")}).ListPools(ctx, nil); err != nil {
		t.Fatalf("mutual TLS: %v", err)
	}
	// A missing client certificate fails before dialling, naming the file.
	_, err = engineclient.New(s.GRPCAddr(), engineclient.Options{TLS: files("nobody")})
	if !errors.Is(err, fault.New(fault.FailedPrecondition, security.CodeCerts, "", "")) || !strings.Contains(err.Error(), "nobody.crt") {
		t.Fatalf("missing certificate: %v", err)
	}
}
