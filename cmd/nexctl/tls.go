package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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

// tlsFlags are the transport security flags of the control-plane commands
// (system, storage): mutual TLS with a certificate from `nexstor certgen`
// by default, plain text only with --insecure.
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
	f.BoolVar(&t.insecure, "insecure", false, "connect without TLS (only to servers started with --insecure)")
}

func (t *tlsFlags) files() security.Files {
	return security.Files{CACert: filepath.Join(t.certDir, "ca.crt"),
		Cert: filepath.Join(t.certDir, t.identity+".crt"), Key: filepath.Join(t.certDir, t.identity+".key")}
}

// creds returns the transport credentials.
func (t *tlsFlags) creds() (credentials.TransportCredentials, error) {
	return security.ClientCredentials(t.files(), t.insecure)
}

// dialOptions returns the options of every control-plane connection: the
// credentials and error explanations.
func (t *tlsFlags) dialOptions() ([]grpc.DialOption, error) {
	c, err := t.creds()
	if err != nil {
		return nil, err
	}
	return append([]grpc.DialOption{grpc.WithTransportCredentials(c)}, security.ExplainInterceptors(t.insecure)...), nil
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
	if errors.As(err, &f) && f.Code != "" {
		desc := f.Description
		if f.Err != nil {
			msg := f.Err.Error()
			if st, ok := status.FromError(f.Err); ok {
				msg = st.Message()
			}
			desc = fmt.Sprintf("%s (%s)", desc, msg)
		}
		return fault.New(f.Kind, f.Code, desc, f.Resolution)
	}
	if _, ok := status.FromError(err); ok {
		f := engine.FromStatus(err)
		if f.Description == "" {
			f.Description = status.Convert(err).Message()
		}
		if f.Code == "" && status.Code(err) == codes.Unavailable {
			f.Resolution = "check that `nexstor server --control` runs at that address"
		}
		return f
	}
	return err
}
