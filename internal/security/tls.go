package security

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/fault"
)

// Files names the PEM files of one side of a connection: the system CA and
// this component's certificate and key.
type Files struct {
	CACert string
	Cert   string
	Key    string
}

// Fault codes of this package.
const (
	CodeCerts        = "security.certs"
	CodeTLSMismatch  = "security.tls_mismatch"
	CodeUnknownCA    = "security.unknown_ca"
	CodeRejected     = "security.cert_rejected"
	CodeNoRole       = "security.no_role"
	CodeForbidden    = "security.forbidden"
	CodeUnauthorized = "security.unauthenticated"
)

const certgenHint = "create them with `nexstor certgen --dir <dir>` and point transport_config at them"

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fault.Wrap(err, fault.FailedPrecondition, CodeCerts, "CA certificate "+path, certgenHint)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fault.New(fault.FailedPrecondition, CodeCerts,
			"CA certificate "+path+" holds no PEM certificate", certgenHint)
	}
	return pool, nil
}

// loadPair loads this side's certificate and checks it the way the peer
// will: currently valid and signed by the system CA. A certificate that the
// peer would refuse fails here with a clear error instead of as a closed
// connection during the handshake.
func loadPair(f Files, pool *x509.CertPool) (tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, fault.Wrap(err, fault.FailedPrecondition, CodeCerts,
			fmt.Sprintf("certificate %s / key %s", f.Cert, f.Key), certgenHint)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return tls.Certificate{}, fault.Wrap(err, fault.FailedPrecondition, CodeCerts, "certificate "+f.Cert, certgenHint)
		}
	}
	now := time.Now()
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return tls.Certificate{}, fault.New(fault.Unauthenticated, CodeRejected,
			fmt.Sprintf("certificate %s is valid from %s to %s, not now", f.Cert,
				leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339)),
			"issue a new one with `nexstor certgen` and check the clock")
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return tls.Certificate{}, fault.Wrap(err, fault.Unauthenticated, CodeUnknownCA,
			fmt.Sprintf("certificate %s is not signed by the CA in %s", f.Cert, f.CACert),
			"use the certificates and ca.crt that one `nexstor certgen` run wrote")
	}
	return pair, nil
}

// ServerTLSConfig returns the configuration of a server that requires every
// client to present a certificate signed by the CA in f.CACert
// (RequireAndVerifyClientCert), TLS 1.3 only. Which methods a client may
// call is decided by its role, by Authorizer.
func ServerTLSConfig(f Files) (*tls.Config, error) {
	pool, err := loadPool(f.CACert)
	if err != nil {
		return nil, err
	}
	pair, err := loadPair(f, pool)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// ClientTLSConfig returns the configuration of a client that presents the
// certificate in f and accepts only servers whose certificate is signed by
// f.CACert and names the host dialled (gRPC sets ServerName from the
// target).
func ClientTLSConfig(f Files) (*tls.Config, error) {
	pool, err := loadPool(f.CACert)
	if err != nil {
		return nil, err
	}
	pair, err := loadPair(f, pool)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// ServerCredentials returns gRPC transport credentials for a server: mutual
// TLS from f, or plain text when insecure is true (the caller logs that
// choice).
func ServerCredentials(f Files, insecureMode bool) (credentials.TransportCredentials, error) {
	if insecureMode {
		return insecure.NewCredentials(), nil
	}
	cfg, err := ServerTLSConfig(f)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// ClientCredentials returns gRPC transport credentials for a client.
func ClientCredentials(f Files, insecureMode bool) (credentials.TransportCredentials, error) {
	if insecureMode {
		return insecure.NewCredentials(), nil
	}
	cfg, err := ClientTLSConfig(f)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// Explain turns a connection failure caused by transport security into a
// fault that says what went wrong and what to do; other errors are returned
// unchanged. Clients call it on errors from RPCs, saying whether they
// connected without TLS.
func Explain(err error, insecureMode bool) error {
	if err == nil {
		return nil
	}
	var f *fault.Fault
	if errors.As(err, &f) {
		return err
	}
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
	}
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(msg, s) {
				return true
			}
		}
		return false
	}
	if has("use of closed network connection", "i/o timeout", "context deadline exceeded") {
		// The client gave up (its connect timeout), which says nothing of
		// transport security.
		return err
	}
	if insecureMode {
		if has("error reading server preface", "connection closed before server preface received", "http2: frame too large",
			"broken pipe", "connection reset by peer", "EOF") {
			return fault.Wrap(err, fault.Unavailable, CodeTLSMismatch,
				"the server closed the plain-text connection: it requires TLS",
				"connect with certificates (drop --insecure)")
		}
		return err
	}
	switch {
	case has("first record does not look like a TLS handshake"):
		return fault.Wrap(err, fault.Unavailable, CodeTLSMismatch,
			"the server does not speak TLS (it was started with --insecure)",
			"connect with --insecure too, or restart the server with certificates")
	case has("certificate signed by unknown authority"):
		return fault.Wrap(err, fault.Unauthenticated, CodeUnknownCA,
			"the server's certificate is not signed by our CA",
			"use the ca.crt of this system (transport_config.ca_cert / --cert-dir)")
	case has("certificate is valid for", "certificate is not valid for"):
		return fault.Wrap(err, fault.Unauthenticated, CodeUnknownCA,
			"the server's certificate does not name the address dialled",
			"dial the host name the server certificate was issued for, or reissue it with `nexstor certgen --host`")
	case has("certificate has expired", "expired certificate", "not yet valid"):
		return fault.Wrap(err, fault.Unauthenticated, CodeRejected,
			"a certificate is expired or not yet valid",
			"issue new certificates with `nexstor certgen` and check the clocks")
	case has("bad certificate", "unknown certificate authority", "certificate required", "unknown certificate"):
		return fault.Wrap(err, fault.Unauthenticated, CodeRejected,
			"the server refused our certificate (expired, or not signed by the system CA)",
			"use a certificate issued by this system's CA with `nexstor certgen`")
	case has("broken pipe", "connection reset by peer") && !has("error reading from server", "authentication handshake failed"):
		// A reset while the connection is set up (TLS 1.3: at its first
		// write or read after the handshake) says the server refused us.
		// One that the read loop of an established connection ("error
		// reading from server") met is a server or link gone away, which
		// the caller may retry elsewhere; so is one in the handshake
		// itself, which ends before the server has judged our
		// certificate (a server killed while we dialled).
		return fault.Wrap(err, fault.Unauthenticated, CodeRejected,
			"the server closed the connection during setup: it most likely refused our certificate",
			"check the server log; use a certificate issued by this system's CA with `nexstor certgen`")
	}
	return err
}
