// Package csi is Nexstor's Container Storage Interface driver (CSI spec
// v1.x), in the layout of kubernetes-csi/csi-driver-host-path: one file
// per service (identity.go, controller.go, node.go) and the node's
// helpers (transport.go with nvme.go and loop.go, mount.go, fs.go,
// state.go).
//
// The controller service talks only to the management service's
// VolumeService, with the csi certificate role: a CSI volume is a Nexstor
// volume, its ID the volume's UUID. The node service attaches a published
// volume over NVMe/TCP through the kernel, makes and grows its file system,
// and mounts it. docs/kubernetes.md is the operator's side of it.
package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

// Listen listens on a CSI endpoint: unix:///path/csi.sock (or unix:path,
// or a bare path) replaces a socket file left by an earlier run;
// tcp://host:port is for tests and tools.
func Listen(endpoint string) (net.Listener, error) {
	network, addr, err := parseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o750); err != nil {
			return nil, fmt.Errorf("csi endpoint %s: %w", endpoint, err)
		}
		if st, err := os.Lstat(addr); err == nil && st.Mode()&os.ModeSocket != 0 {
			os.Remove(addr)
		}
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("csi endpoint %s: %w", endpoint, err)
	}
	return ln, nil
}

func parseEndpoint(ep string) (network, addr string, err error) {
	switch {
	case strings.HasPrefix(ep, "unix://"), strings.HasPrefix(ep, "tcp://"):
		u, err := url.Parse(ep)
		if err != nil {
			return "", "", badRequest("csi endpoint %q: %v", ep, err)
		}
		if u.Scheme == "unix" {
			return "unix", u.Host + u.Path, nil
		}
		return "tcp", u.Host, nil
	case strings.HasPrefix(ep, "unix:"):
		return "unix", strings.TrimPrefix(ep, "unix:"), nil
	case strings.HasPrefix(ep, "/"):
		return "unix", ep, nil
	}
	return "", "", badRequest("csi endpoint %q: use unix:///path/csi.sock or tcp://host:port", ep)
}

// Services are the CSI services one plugin process serves; Controller or
// Node may be nil.
type Services struct {
	Identity   *Identity
	Controller *Controller
	Node       *Node
}

// NewServer returns a gRPC server with the services registered, errors
// turned into exact statuses (faultgrpc), and every call logged with its
// outcome and duration.
func NewServer(s Services, log *slog.Logger) *grpc.Server {
	if log == nil {
		log = slog.Default()
	}
	opts := append(faultgrpc.ServerOptions(), grpc.ChainUnaryInterceptor(logCalls(log)))
	srv := grpc.NewServer(opts...)
	csi.RegisterIdentityServer(srv, s.Identity)
	if s.Controller != nil {
		csi.RegisterControllerServer(srv, s.Controller)
	}
	if s.Node != nil {
		csi.RegisterNodeServer(srv, s.Node)
	}
	return srv
}

// quietMethods are the calls COs make periodically (probes, statistics,
// health, listings): logged at debug level when they succeed.
var quietMethods = map[string]bool{"Probe": true, "GetPluginInfo": true, "NodeGetInfo": true, "NodeGetVolumeStats": true,
	"NodeGetVolumeHealth": true, "ControllerGetVolumeHealth": true, "ControllerListVolumeHealth": true, "ListVolumes": true,
	"GetCapacity": true, "ControllerGetVolume": true}

// logCalls logs each call: failures at warning level with their code, the
// frequent ones (quietMethods, capability queries) only at debug level.
func logCalls(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := h(ctx, req)
		method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
		switch {
		case err != nil:
			log.Warn("csi call failed", "method", method, "code", faultgrpc.CodeOf(err).String(), "err", fault.Message(err),
				"duration", time.Since(start).Round(time.Millisecond))
		case quietMethods[method] || strings.HasSuffix(method, "Capabilities"):
			log.Debug("csi call", "method", method)
		default:
			log.Info("csi call", "method", method, "duration", time.Since(start).Round(time.Millisecond))
		}
		return resp, err
	}
}

// Serve serves the services on ln until ctx ends, then stops gracefully
// (calls under way finish, for at most grace).
func Serve(ctx context.Context, ln net.Listener, srv *grpc.Server, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		srv.Stop()
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
