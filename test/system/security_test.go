package system

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/security"
	"github.com/nexstor/nexstor/internal/security/certgen"
	"github.com/nexstor/nexstor/internal/testutil"
)

// copyFile copies a certificate file.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSecurity checks mutual TLS and roles end to end: the csi role may
// use the volume service but not format, query, stop, exclude, or reach an
// engine; a client without TLS, an expired certificate and a certificate
// from a foreign CA are refused with an error that says so; the admin
// succeeds.
func TestSecurity(t *testing.T) {
	c := newCluster(t, clusterOptions{nodes: 1, accessPoints: 1})
	n := c.nodes[0]
	n.start()
	n.waitLog("waiting in maintenance mode", 20*time.Second)
	if strings.Contains(n.out.String(), "transport security is OFF") {
		t.Fatal("a server with certificates logged that transport security is off")
	}

	// csi may not format; nothing changes.
	errOut := c.wantFailure(c.certs, "csi", "storage", "format", "-l", n.grpc)
	if !strings.Contains(errOut, `role "csi"`) || !strings.Contains(errOut, "admin") {
		t.Fatalf("csi format: %s", errOut)
	}
	if _, err := os.Stat(filepath.Join(n.dir, "data", "meta", "superblock.json")); !os.IsNotExist(err) {
		t.Fatalf("superblock after a refused format: %v", err)
	}
	c.mustNexctl("storage", "format", "-l", n.grpc)
	c.waitMembers("joined", 30*time.Second, c.allState("joined"))

	// csi may use the volume service, but not query, stop or exclude
	// members.
	if out, errOut, err := c.nexctlAs(c.certs, "csi", "volume", "list", "-a", c.aps[0]); err != nil {
		t.Fatalf("csi volume list: %v\n%s%s", err, out, errOut)
	}
	for _, args := range [][]string{{"system", "query"}, {"system", "stop"}, {"system", "exclude", "--ranks", "0"}} {
		errOut := c.wantFailure(c.certs, "csi", append(args, "-a", c.aps[0])...)
		if !strings.Contains(errOut, `role "csi"`) {
			t.Fatalf("csi %v: %s", args, errOut)
		}
	}
	// csi may not destroy a pool on the engine either.
	f := security.Files{CACert: filepath.Join(c.certs, "ca.crt"), Cert: filepath.Join(c.certs, "csi.crt"), Key: filepath.Join(c.certs, "csi.key")}
	creds, err := security.ClientCredentials(f, false)
	if err != nil {
		t.Fatal(err)
	}
	cc := dial(t, n.grpc, creds)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err = enginev1.NewPoolServiceClient(cc).DestroyPool(ctx, &enginev1.DestroyPoolRequest{Name: "p0", Force: true})
	cancel()
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("csi destroy pool: %v, want PermissionDenied", err)
	}
	// nor provision on it: volumes go through the management service.
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	_, err = enginev1.NewReplicaServiceClient(cc).CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: "vol", Pool: "p0", Size: 4 << 20, Thin: true})
	cancel()
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("csi create replica: %v, want PermissionDenied", err)
	}
	c.waitMembers("still joined", 10*time.Second, c.allState("joined"))

	// A plain-text client is refused, and told why.
	errOut = c.wantFailure("", "", "system", "query", "-a", c.aps[0])
	if !strings.Contains(errOut, "requires TLS") {
		t.Fatalf("insecure client: %s", errOut)
	}

	// An expired admin certificate from the right CA.
	expired := t.TempDir()
	ca, err := certgen.LoadCA(c.certs)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue(security.RoleAdmin, "admin", nil, certgen.Options{Now: time.Now().Add(-48 * time.Hour), Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := certgen.WritePair(expired, "admin", cert, key); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(c.certs, "ca.crt"), filepath.Join(expired, "ca.crt"))
	// nexctl refuses to present it...
	errOut = c.wantFailure(expired, "admin", "system", "stop", "-a", c.aps[0])
	if !strings.Contains(errOut, "not now") {
		t.Fatalf("expired certificate: %s", errOut)
	}
	// ...and the server refuses a client that presents it anyway.
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	pair := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	cc = dial(t, n.grpc, credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}))
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	_, err = mgmtv1.NewMgmtServiceClient(cc).SystemStop(ctx, &mgmtv1.SystemStopRequest{})
	cancel()
	if err = security.Explain(err, false); err == nil || !strings.Contains(err.Error(), "refused our certificate") &&
		!strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired certificate presented to the server: %v", err)
	}

	// Certificates of another system's CA.
	foreign := filepath.Join(t.TempDir(), "foreign")
	run(t, testutil.BuildBinary(t, "nexstor"), "certgen", "--dir", foreign)
	errOut = c.wantFailure(foreign, "admin", "system", "stop", "-a", c.aps[0])
	if !strings.Contains(errOut, "not signed by our CA") {
		t.Fatalf("foreign CA: %s", errOut)
	}
	c.waitMembers("nothing stopped", 10*time.Second, c.allState("joined"))

	// The admin may.
	c.mustNexctl("system", "stop", "-a", c.aps[0])
	c.waitMembers("stopped by the admin", 10*time.Second, c.allState("stopped"))
}

// TestInsecureServer checks that --insecure is logged and that a TLS
// client is told the server does not speak TLS.
func TestInsecureServer(t *testing.T) {
	c := newCluster(t, clusterOptions{nodes: 1, accessPoints: 1, insecure: true})
	n := c.nodes[0]
	n.start()
	n.waitLog("transport security is OFF", 20*time.Second)
	n.waitLog("waiting in maintenance mode", 20*time.Second)
	certs := filepath.Join(t.TempDir(), "certs")
	run(t, testutil.BuildBinary(t, "nexstor"), "certgen", "--dir", certs)
	errOut := c.wantFailure(certs, "admin", "storage", "scan", "-l", n.grpc)
	if !strings.Contains(errOut, "does not speak TLS") {
		t.Fatalf("TLS client against an insecure server: %s", errOut)
	}
	c.mustNexctl("storage", "format", "-l", n.grpc)
	c.waitMembers("joined", 30*time.Second, c.allState("joined"))
}
