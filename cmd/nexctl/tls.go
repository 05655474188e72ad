package main

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/engine"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/security"
)

// tlsHelp is the rule every command follows, for --help.
const tlsHelp = `Every command (pool, replica, nexus, host, system, storage) connects with
mutual TLS, presenting <cert-dir>/<identity>.crt (from nexstor certgen;
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

// creds returns the transport credentials for connections to addrs.
func (t *tlsFlags) creds(addrs ...string) (credentials.TransportCredentials, error) {
	return security.ClientCredentials(t.files(), t.plain(addrs))
}

// dialOptions returns the options of every connection to addrs: the
// credentials and error explanations.
func (t *tlsFlags) dialOptions(addrs ...string) ([]grpc.DialOption, error) {
	c, err := t.creds(addrs...)
	if err != nil {
		return nil, err
	}
	return append([]grpc.DialOption{grpc.WithTransportCredentials(c)}, security.ExplainInterceptors(t.plain(addrs))...), nil
}

// cliError turns an RPC error into a fault that prints its description and
// resolution: transport security failures explained by the client
// interceptor keep their explanation, server errors keep the server's
// description and resolution.
func cliError(err error) error {
	if err == nil {
		return nil
	}
	var f *fault.Fault
	if errors.As(err, &f) {
		return err
	}
	if _, ok := status.FromError(err); ok {
		f := engine.FromStatus(err)
		if f.Description == "" {
			f.Description = status.Convert(err).Message()
		}
		if f.Code == "" && status.Code(err) == codes.Unavailable {
			f.Resolution = "check that `nexstor server` (or `nexstor dev`) runs at that address"
		}
		return f
	}
	return err
}
