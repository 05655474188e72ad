package mgmt

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
)

// Client calls the management service through its access points; see
// mgmtclient.Client, where it lives so that clients need not link the
// service.
type Client = mgmtclient.Client

// NewClient returns a client of the access points addrs (host:port) using
// creds for every connection (security.ClientCredentials) and opts after
// the client's own dial options.
func NewClient(addrs []string, creds credentials.TransportCredentials, opts ...grpc.DialOption) *Client {
	// With Credentials given, New cannot fail.
	c, _ := mgmtclient.New(addrs, mgmtclient.Options{Credentials: creds, DialOptions: opts})
	return c
}
