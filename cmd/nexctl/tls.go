package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
	"github.com/nexstor/nexstor/internal/security"
)

// tlsHelp is the rule every command follows, for --help.
const tlsHelp = `Every command (volume, node, pool, replica, nexus, host, system, storage)
connects with mutual TLS, presenting <cert-dir>/<identity>.crt (from nexstor certgen;
--cert-dir, else $NEXSTOR_CERT_DIR, else ` + config.DefaultCertDir + `). It
connects in plain text with --insecure or NEXSTOR_INSECURE=1, and also when
<cert-dir> holds no ca.crt and every address is a loopback one (localhost,
127.0.0.0/8, ::1): that is how nexctl reaches the system of ` + "`nexstor dev`" + `
without flags. With a ca.crt present, nexctl never falls back to plain text.`

// tlsFlags are the transport security flags of every command that talks to
// a server: mutual TLS with a certificate from `nexstor certgen` by default;
// plain text only by explicit choice, or for loopback addresses when no CA
// certificate is installed (see tlsHelp).
type tlsFlags struct {
	certDir  string
	identity string
	insecure bool
}

func (t *tlsFlags) add(f *pflag.FlagSet) {
	dir := os.Getenv("NEXSTOR_CERT_DIR")
	if dir == "" {
		dir = config.DefaultCertDir
	}
	f.StringVar(&t.certDir, "cert-dir", dir, "directory with ca.crt and <identity>.crt/.key from nexstor certgen (env NEXSTOR_CERT_DIR)")
	f.StringVar(&t.identity, "identity", "admin", "certificate to present: admin, csi or server (<cert-dir>/<identity>.crt)")
	ins, _ := strconv.ParseBool(os.Getenv("NEXSTOR_INSECURE"))
	f.BoolVar(&t.insecure, "insecure", ins, "connect without TLS, to servers started with --insecure (env NEXSTOR_INSECURE=1)")
}

// plain reports whether connections to addrs go without TLS: when asked
// (--insecure, NEXSTOR_INSECURE), or when there is no CA certificate to
// verify a server with and every address is on this machine's loopback, so
// nothing crosses a network in clear.
func (t *tlsFlags) plain(addrs []string) bool {
	if t.insecure {
		return true
	}
	if len(addrs) == 0 {
		return false
	}
	if _, err := os.Stat(t.files().CACert); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	for _, a := range addrs {
		if !isLoopback(a) {
			return false
		}
	}
	return true
}

// isLoopback reports whether host[:port] names this machine's loopback
// without a name lookup: "localhost" or a loopback IP address.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func (t *tlsFlags) files() security.Files {
	return security.Files{CACert: filepath.Join(t.certDir, "ca.crt"),
		Cert: filepath.Join(t.certDir, t.identity+".crt"), Key: filepath.Join(t.certDir, t.identity+".key")}
}

// certsFault explains the failure to load this client's certificates
// (from engineclient.New, mgmtclient.New or security.ClientCredentials)
// with nexctl's own flags: security's advice is a server's. Other errors
// (an expired certificate, one of another CA) say what to do already and
// are returned as they are.
func (t *tlsFlags) certsFault(err error) error {
	switch fault.CodeOf(err) {
	case security.CodeCerts:
		return fault.Wrap(err, fault.FailedPrecondition, "cli.certs", "nexctl cannot use its TLS certificates",
			fmt.Sprintf("give --cert-dir DIR with the ca.crt and %s.crt/.key that `nexstor certgen` wrote (or set NEXSTOR_CERT_DIR; now %s), "+
				"choose another certificate with --identity, or use --insecure to reach a server started with --insecure",
				t.identity, t.certDir))
	}
	return err
}

// dialOptions returns the options of a connection to one of addrs, for
// the services that have no client package (the node service): the
// credentials, a bounded connect, faults for errors and the explanations of
// transport security failures.
func (t *tlsFlags) dialOptions(addrs ...string) ([]grpc.DialOption, error) {
	plain := t.plain(addrs)
	creds, err := security.ClientCredentials(t.files(), plain)
	if err != nil {
		return nil, t.certsFault(err)
	}
	dt := engineclient.DefaultDialTimeout
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: dt,
			Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: dt}})}
	opts = append(opts, faultgrpc.DialOptions()...)
	return append(opts, security.ExplainInterceptors(plain)...), nil
}
