package certgen

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nexstor/nexstor/internal/security"
)

func load(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: not PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGenerateAll(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if err := GenerateAll(dir, Options{Hosts: []string{"node-1", "10.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	ca := load(t, filepath.Join(dir, "ca.crt"))
	if !ca.IsCA {
		t.Fatal("ca.crt is not a CA")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, r := range security.Roles {
		c := load(t, filepath.Join(dir, string(r)+".crt"))
		if got, err := security.RoleOf(c); err != nil || got != r {
			t.Fatalf("%s.crt role = %q, %v", r, got, err)
		}
		if len(c.Subject.OrganizationalUnit) != 1 || c.Subject.OrganizationalUnit[0] != string(r) {
			t.Fatalf("%s.crt OU = %v", r, c.Subject.OrganizationalUnit)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("%s.crt does not verify as a client: %v", r, err)
		}
		st, err := os.Stat(filepath.Join(dir, string(r)+".key"))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s.key mode %v, %v", r, st.Mode().Perm(), err)
		}
	}
	srv := load(t, filepath.Join(dir, "server.crt"))
	for _, h := range []string{"node-1", "10.0.0.1", "localhost", "127.0.0.1"} {
		if _, err := srv.Verify(x509.VerifyOptions{Roots: pool, DNSName: h}); err != nil {
			t.Fatalf("server.crt not valid for %s: %v", h, err)
		}
	}
	admin := load(t, filepath.Join(dir, "admin.crt"))
	if _, err := admin.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("admin.crt must not serve")
	}
	if st, _ := os.Stat(filepath.Join(dir, "ca.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v", st.Mode().Perm())
	}

	// A second run keeps the CA unless forced.
	if err := GenerateAll(dir, Options{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second GenerateAll = %v, want ErrExists", err)
	}
	if err := GenerateAll(dir, Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	if load(t, filepath.Join(dir, "ca.crt")).SerialNumber.Cmp(ca.SerialNumber) == 0 {
		t.Fatal("forced GenerateAll kept the old CA")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 8 {
		t.Fatalf("%d files, want 8 (no temporaries left)", len(ents))
	}
}

func TestIssueUnknownRole(t *testing.T) {
	ca, err := NewCA(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.Issue("root", "x", nil, Options{}); err == nil {
		t.Fatal("issued a certificate for an unknown role")
	}
}
