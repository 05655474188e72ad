package security_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/security"
	"github.com/nexstor/nexstor/internal/security/certgen"
	"github.com/nexstor/nexstor/internal/testutil/netproxy"
)

const (
	checkMethod = "/grpc.health.v1.Health/Check"
	watchMethod = "/grpc.health.v1.Health/Watch"
)

// policy: Check is admin-only (standing in for format/stop/exclude), Watch
// (a stream) is open to admin and csi.
func policy() *security.Policy {
	p := &security.Policy{}
	p.Allow(checkMethod, security.RoleAdmin).Allow(watchMethod, security.RoleAdmin, security.RoleCSI)
	return p
}

func files(dir, role string) security.Files {
	return security.Files{CACert: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, role+".crt"),
		Key: filepath.Join(dir, role+".key")}
}

// serve starts a health server on loopback and returns its address and the
// role its last call was authorized as.
func serve(t *testing.T, f security.Files, insecure bool) (string, *security.Caller) {
	t.Helper()
	creds, err := security.ServerCredentials(f, insecure)
	if err != nil {
		t.Fatal(err)
	}
	last := &security.Caller{}
	a := &security.Authorizer{Policy: policy(), Insecure: insecure}
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if c, ok := security.CallerFrom(ctx); ok {
			*last = c
		}
		return h(ctx, req)
	}
	srv := grpc.NewServer(grpc.Creds(creds), grpc.ChainUnaryInterceptor(a.Unary(), record),
		grpc.ChainStreamInterceptor(a.Stream()))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), last
}

func call(t *testing.T, addr string, f security.Files, insecure bool) error {
	t.Helper()
	creds, err := security.ClientCredentials(f, insecure)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func watch(t *testing.T, addr string, f security.Files) error {
	t.Helper()
	creds, err := security.ClientCredentials(f, false)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	_, err = st.Recv()
	return err
}

func gen(t *testing.T, opts certgen.Options) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	if err := certgen.GenerateAll(dir, opts); err != nil {
		t.Fatal(err)
	}
	return dir
}

func codeOf(err error) string {
	var f *fault.Fault
	if errors.As(err, &f) {
		return f.Code
	}
	return ""
}

func TestMutualTLSRoles(t *testing.T) {
	dir := gen(t, certgen.Options{})
	addr, last := serve(t, files(dir, "server"), false)

	if err := call(t, addr, files(dir, "admin"), false); err != nil {
		t.Fatalf("admin call: %v", err)
	}
	if last.Role != security.RoleAdmin || last.Name != "admin" {
		t.Fatalf("caller = %+v, want admin", *last)
	}

	err := call(t, addr, files(dir, "csi"), false)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "needs the admin role") {
		t.Fatalf("csi calling an admin method: %v, want PermissionDenied naming the admin role", err)
	}
	err = call(t, addr, files(dir, "server"), false)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `role "server"`) {
		t.Fatalf("server role calling an admin method: %v", err)
	}
	// The stream interceptor applies the same table.
	if err := watch(t, addr, files(dir, "csi")); err != nil {
		t.Fatalf("csi watch: %v", err)
	}
	if err := watch(t, addr, files(dir, "server")); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("server watch: %v, want PermissionDenied", err)
	}
}

// rawHandshake connects with crypto/tls directly, bypassing the checks
// ClientTLSConfig makes of our own certificate, and returns what the server
// answers to the first read.
func rawHandshake(t *testing.T, addr string, f security.Files) error {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(f.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	conn, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool,
		ServerName: "localhost", NextProtos: []string{"h2"}})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	return err
}

func TestForeignCARefused(t *testing.T) {
	dir := gen(t, certgen.Options{})
	other := gen(t, certgen.Options{})
	addr, _ := serve(t, files(dir, "server"), false)

	// A client whose certificate comes from another system's CA: refused
	// before dialling, with the reason.
	mixed := files(other, "admin")
	mixed.CACert = filepath.Join(dir, "ca.crt")
	_, err := security.ClientCredentials(mixed, false)
	if codeOf(err) != security.CodeUnknownCA || !strings.Contains(err.Error(), "is not signed by the CA") {
		t.Fatalf("foreign client certificate: %v, want %s", err, security.CodeUnknownCA)
	}
	// The server refuses it too.
	err = rawHandshake(t, addr, mixed)
	if err == nil || !strings.Contains(err.Error(), "remote error: tls:") {
		t.Fatalf("server accepted a foreign client certificate: %v", err)
	}
	if e := security.Explain(err, false); codeOf(e) != security.CodeRejected {
		t.Fatalf("Explain(%v) = %v, want %s", err, e, security.CodeRejected)
	}
	// A client that trusts another CA than the server's.
	err = security.Explain(call(t, addr, files(other, "admin"), false), false)
	if err == nil || codeOf(err) != security.CodeUnknownCA || !strings.Contains(err.Error(), "not signed by our CA") {
		t.Fatalf("server from a foreign CA: %v, want %s", err, security.CodeUnknownCA)
	}
}

func TestExpiredCertRefused(t *testing.T) {
	dir := gen(t, certgen.Options{})
	addr, _ := serve(t, files(dir, "server"), false)
	ca, err := certgen.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue(security.RoleAdmin, "old-admin", nil,
		certgen.Options{Now: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := certgen.WritePair(dir, "expired", cert, key); err != nil {
		t.Fatal(err)
	}
	_, err = security.ClientCredentials(files(dir, "expired"), false)
	if codeOf(err) != security.CodeRejected || !strings.Contains(err.Error(), "not now") || fault.ResolutionOf(err) == "" {
		t.Fatalf("expired admin certificate: %v, want %s with a resolution", err, security.CodeRejected)
	}
	// The server refuses it too.
	err = rawHandshake(t, addr, files(dir, "expired"))
	if err == nil || !strings.Contains(err.Error(), "remote error: tls:") {
		t.Fatalf("server accepted an expired client certificate: %v", err)
	}
	if e := security.Explain(err, false); codeOf(e) != security.CodeRejected {
		t.Fatalf("Explain(%v) = %v, want %s", err, e, security.CodeRejected)
	}
}

func TestInsecureClientRefused(t *testing.T) {
	dir := gen(t, certgen.Options{})
	addr, _ := serve(t, files(dir, "server"), false)
	raw := call(t, addr, security.Files{}, true)
	if status.Code(raw) != codes.Unavailable {
		t.Fatalf("insecure client against a TLS server: %v, want Unavailable", raw)
	}
	err := security.Explain(raw, true)
	if codeOf(err) != security.CodeTLSMismatch || !strings.Contains(err.Error(), "requires TLS") {
		t.Fatalf("explained: %v", err)
	}
}

func TestSecureClientAgainstInsecureServer(t *testing.T) {
	dir := gen(t, certgen.Options{})
	addr, last := serve(t, security.Files{}, true)
	err := security.Explain(call(t, addr, files(dir, "admin"), false), false)
	if codeOf(err) != security.CodeTLSMismatch || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("TLS client against an insecure server: %v", err)
	}
	// An insecure server allows everything, as RoleInsecure.
	if err := call(t, addr, security.Files{}, true); err != nil {
		t.Fatal(err)
	}
	if last.Role != security.RoleInsecure {
		t.Fatalf("role %q, want insecure", last.Role)
	}
}

func TestPlainConnectionRefusedByAuthorizer(t *testing.T) {
	// A server that speaks plain text but was not told it is insecure
	// refuses everything: authorization fails closed.
	creds, _ := security.ServerCredentials(security.Files{}, true)
	a := &security.Authorizer{Policy: policy()}
	srv := grpc.NewServer(grpc.Creds(creds), grpc.ChainUnaryInterceptor(a.Unary()))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()
	if err := call(t, lis.Addr().String(), security.Files{}, true); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("plain call: %v, want Unauthenticated", err)
	}
}

func TestMissingCertFiles(t *testing.T) {
	_, err := security.ServerTLSConfig(security.Files{CACert: "/nonexistent/ca.crt"})
	if codeOf(err) != security.CodeCerts || !strings.Contains(err.Error(), "nexstor certgen") {
		t.Fatalf("missing CA: %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("junk"), 0o644)
	if _, err := security.ClientTLSConfig(security.Files{CACert: filepath.Join(dir, "ca.crt")}); codeOf(err) != security.CodeCerts {
		t.Fatalf("junk CA: %v", err)
	}
}

func TestRoleOf(t *testing.T) {
	dir := gen(t, certgen.Options{})
	ca, err := certgen.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range security.Roles {
		c, _, err := ca.Issue(r, "x", nil, certgen.Options{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := security.RoleOf(c)
		if err != nil || got != r {
			t.Fatalf("RoleOf(%s cert) = %q, %v", r, got, err)
		}
	}
	if _, err := security.RoleOf(&x509.Certificate{}); err == nil || !strings.Contains(err.Error(), "carries no role") {
		t.Fatalf("RoleOf(no role) = %v", err)
	}
	if _, err := security.ParseRole("root"); err == nil {
		t.Fatal("ParseRole accepted root")
	}
	p := policy()
	if !p.Permits("/x.Y/Unlisted", security.RoleAdmin) || p.Permits("/x.Y/Unlisted", security.RoleCSI) {
		t.Fatal("unlisted methods must default to admin only")
	}
}

func TestExplainInterceptor(t *testing.T) {
	dir := gen(t, certgen.Options{})
	addr, _ := serve(t, files(dir, "server"), false)
	creds, _ := security.ClientCredentials(security.Files{}, true)
	conn, err := grpc.NewClient(addr, append(security.ExplainInterceptors(true), grpc.WithTransportCredentials(creds))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if codeOf(err) != security.CodeTLSMismatch || fault.KindOf(err) != fault.Unavailable {
		t.Fatalf("insecure call through the interceptor: %v", err)
	}
}

// TestExplainServerGoneIsNotARefusal: a server that goes away under an
// established connection (its host crashed, the link was cut: a reset) is
// not taken for one that refused our certificate. The error stays
// "unavailable", which clients retry on another server; a refusal would
// end the call at once.
func TestExplainServerGoneIsNotARefusal(t *testing.T) {
	dir := gen(t, certgen.Options{})
	addr, _ := serve(t, files(dir, "server"), false)
	creds, err := security.ClientCredentials(files(dir, "admin"), false)
	if err != nil {
		t.Fatal(err)
	}
	// goneErr returns the error of a health watch whose connection the
	// proxy resets once the first message came through.
	goneErr := func() error {
		p, err := netproxy.Listen(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		conn, err := grpc.NewClient(p.Addr(), grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		st, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatalf("first health message through the proxy: %v", err)
		}
		p.Drop()
		_, err = st.Recv()
		return err
	}
	// The client reads the reset, or sometimes an end of stream that
	// came first; the reset is what must be explained right.
	var seen []error
	for range 20 {
		err := goneErr()
		if err == nil || !strings.Contains(err.Error(), "reset") {
			seen = append(seen, err)
			continue
		}
		e := security.Explain(err, false)
		if codeOf(e) == security.CodeRejected || status.Code(e) != codes.Unavailable {
			t.Fatalf("Explain(%v) = %v (%s, code %s), want it unavailable and not a refusal", err, e, codeOf(e), status.Code(e))
		}
		return
	}
	t.Fatalf("no connection reset seen in 20 tries: %v", seen)
}

// TestConfine: a confined role keeps exactly the methods named, whatever
// the merged rules granted it, and loses a default that included it;
// the other roles keep theirs.
func TestConfine(t *testing.T) {
	p := &security.Policy{Default: []security.Role{security.RoleAdmin, security.RoleCSI}}
	p.Allow("/s/A", security.RoleAdmin, security.RoleCSI)
	p.Allow("/s/B", security.RoleServer, security.RoleCSI)
	p.Allow("/s/C", security.RoleAdmin)
	p.Confine(security.RoleCSI, "/s/C", "/s/D")
	for m, want := range map[string]bool{"/s/A": false, "/s/B": false, "/s/C": true, "/s/D": true, "/s/unlisted": false} {
		if got := p.Permits(m, security.RoleCSI); got != want {
			t.Errorf("%s: csi permitted %v, want %v", m, got, want)
		}
	}
	if !p.Permits("/s/A", security.RoleAdmin) || !p.Permits("/s/B", security.RoleServer) || !p.Permits("/s/unlisted", security.RoleAdmin) {
		t.Error("confining csi changed another role's rights")
	}
}

// TestHandshakeResetIsNotARefusal: a server that resets the connection in
// the middle of the TLS handshake (killed while the client dialled) has not
// judged our certificate yet; the reset must read as a server gone away,
// which callers retry, not as a refused certificate.
func TestHandshakeResetIsNotARefusal(t *testing.T) {
	dir := gen(t, certgen.Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// Read the ClientHello, then reset: the client is waiting
			// for the ServerHello.
			c.Read(make([]byte, 512))
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()
	var seen []error
	for range 20 {
		err := call(t, l.Addr().String(), files(dir, "admin"), false)
		if err == nil || !strings.Contains(err.Error(), "reset") {
			seen = append(seen, err)
			continue
		}
		if !strings.Contains(err.Error(), "handshake") {
			t.Fatalf("reset outside the handshake: %v", err)
		}
		e := security.Explain(err, false)
		if codeOf(e) == security.CodeRejected || status.Code(e) != codes.Unavailable {
			t.Fatalf("Explain(%v) = %v (%s, code %s), want it unavailable and not a refusal", err, e, codeOf(e), status.Code(e))
		}
		return
	}
	t.Fatalf("no connection reset seen in 20 tries: %v", seen)
}
