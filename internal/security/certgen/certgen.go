// Package certgen creates the certificates of a Nexstor system: a CA, and
// certificates for the admin (nexctl), server (storage nodes) and csi
// roles, each key ECDSA P-256. The role is written into every certificate
// as the URI SAN "nexstor://role/<role>" and as the subject OU; server
// certificates also carry the DNS names and IP addresses the nodes are
// dialled by.
//
// Files (PEM): ca.crt, ca.key, admin.crt, admin.key, server.crt,
// server.key, csi.crt, csi.key. Private keys are 0600, certificates 0644.
// Every file is written to a temporary name and renamed, so a reader never
// sees a partial file.
package certgen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/nexstor/nexstor/internal/fsutil"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/security"
)

// Defaults.
const (
	DefaultValidity   = 365 * 24 * time.Hour
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
)

// Options controls GenerateAll.
type Options struct {
	// Hosts are the DNS names and IP addresses put in the server
	// certificate. localhost, 127.0.0.1 and ::1 are always added.
	Hosts []string
	// Validity of the leaf certificates (DefaultValidity when zero).
	Validity time.Duration
	// CAValidity of the CA (DefaultCAValidity when zero).
	CAValidity time.Duration
	// Now is the start of validity (time.Now when zero); set in the past to
	// produce expired certificates.
	Now time.Time
	// Force overwrites existing files. Without it GenerateAll refuses to
	// replace a CA, since every certificate issued by it would stop working.
	Force bool
	// Organization is written in every subject ("Nexstor" when empty).
	Organization string
}

// ErrExists is matched (errors.Is) when GenerateAll would overwrite files.
var ErrExists = fault.New(fault.AlreadyExists, "certgen.exists", "certificates already exist",
	"keep them, or pass --force to replace the CA and every certificate")

// CA is a loaded certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// GenerateAll creates dir (0700 when missing) and writes a new CA and one
// certificate per role into it.
func GenerateAll(dir string, opts Options) error {
	if !opts.Force {
		for _, name := range []string{"ca.crt", "ca.key"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				return fmt.Errorf("%s: %w", filepath.Join(dir, name), ErrExists)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("certgen: %w", err)
	}
	ca, err := NewCA(opts)
	if err != nil {
		return err
	}
	if err := WritePair(dir, "ca", ca.Cert, ca.Key); err != nil {
		return err
	}
	for _, role := range security.Roles {
		var hosts []string
		if role == security.RoleServer {
			hosts = opts.Hosts
		}
		cert, key, err := ca.Issue(role, string(role), hosts, opts)
		if err != nil {
			return err
		}
		if err := WritePair(dir, string(role), cert, key); err != nil {
			return err
		}
	}
	return nil
}

func (o Options) now() time.Time {
	if o.Now.IsZero() {
		return time.Now()
	}
	return o.Now
}

func (o Options) org() string {
	if o.Organization == "" {
		return "Nexstor"
	}
	return o.Organization
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA creates a self-signed CA.
func NewCA(opts Options) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certgen: CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("certgen: %w", err)
	}
	validity := opts.CAValidity
	if validity == 0 {
		validity = DefaultCAValidity
	}
	now := opts.now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{Organization: []string{opts.org()}, CommonName: opts.org() + " CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("certgen: CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certgen: CA: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Issue creates a certificate for role with the given common name. Server
// certificates are valid for both server and client authentication (nodes
// call each other) and carry hosts plus localhost as SANs; admin and csi
// certificates are client-only.
func (ca *CA) Issue(role security.Role, commonName string, hosts []string, opts Options) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	if !role.Valid() {
		return nil, nil, fmt.Errorf("certgen: role %q: unknown; use admin, server or csi", role)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: %s key: %w", role, err)
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: %w", err)
	}
	validity := opts.Validity
	if validity == 0 {
		validity = DefaultValidity
	}
	now := opts.now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject: pkix.Name{Organization: []string{opts.org()}, OrganizationalUnit: []string{string(role)},
			CommonName: commonName},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{role.URI()},
	}
	if role == security.RoleServer {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		seen := map[string]bool{}
		for _, h := range append([]string{"localhost", "127.0.0.1", "::1"}, hosts...) {
			if h == "" || seen[h] {
				continue
			}
			seen[h] = true
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: %s: %w", role, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: %s: %w", role, err)
	}
	return cert, key, nil
}

// LoadCA reads ca.crt and ca.key from dir, to issue more certificates (one
// per node, say) from an existing CA.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("certgen: load CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("certgen: load CA: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("certgen: load CA: ca.crt or ca.key is not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certgen: load CA: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certgen: load CA: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// WritePair writes <name>.crt (0644) and <name>.key (0600) into dir.
func WritePair(dir, name string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("certgen: %s key: %w", name, err)
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
}
