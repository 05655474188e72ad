package engine

import (
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

// ServerOptions configure a Server: one node's engine with its gRPC API and
// data plane, standalone (no control plane).
type ServerOptions struct {
	// DataDir holds the engine state file.
	DataDir string
	// GRPCListen is the gRPC listen address, e.g. 127.0.0.1:10124.
	GRPCListen string
	// GRPCOptions are extra options of the gRPC server, e.g. its transport
	// credentials and interceptors; none serves plain text to everyone.
	// Handler errors become exact statuses through faultgrpc.ServerOptions,
	// installed before these.
	GRPCOptions []grpc.ServerOption
	// NBDListen, NBDAdvertise, NVMfListen, DiscoveryListen, NVMfAdvertise,
	// Pools and Backend are as in DataPlaneOptions.
	NBDListen, NBDAdvertise, NVMfListen, DiscoveryListen, NVMfAdvertise string
	Pools                                                               []PoolConfig
	Backend                                                             Backend
	Logger                                                              *slog.Logger
	// HostNQN is as in DataPlaneOptions.
	HostNQN string
}

// Server runs a DataPlane behind its own gRPC server.
type Server struct {
	*DataPlane

	log      *slog.Logger
	grpcLn   net.Listener
	grpc     *grpc.Server
	errc     chan error
	stopOnce sync.Once
	stopErr  error
}

// StartServer binds the gRPC listener, starts the data plane (binding its
// listeners before any pool is touched) and starts serving.
func StartServer(o ServerOptions) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{log: o.Logger, errc: make(chan error, 4)}
	var err error
	if s.grpcLn, err = net.Listen("tcp", o.GRPCListen); err != nil {
		return nil, fmt.Errorf("grpc listen %s: %w", o.GRPCListen, err)
	}
	dp := DataPlaneOptions{DataDir: o.DataDir, NBDListen: o.NBDListen, NBDAdvertise: o.NBDAdvertise,
		NVMfListen: o.NVMfListen, DiscoveryListen: o.DiscoveryListen, NVMfAdvertise: o.NVMfAdvertise,
		Pools: o.Pools, Backend: o.Backend, Logger: o.Logger, HostNQN: o.HostNQN}
	dp.OnError = func(err error) {
		select {
		case s.errc <- err:
		default:
		}
	}
	if s.DataPlane, err = StartDataPlane(dp); err != nil {
		s.grpcLn.Close()
		return nil, err
	}
	// The fault interceptor comes first, so that it converts the errors of
	// the handlers and of every interceptor in GRPCOptions.
	s.grpc = grpc.NewServer(append(faultgrpc.ServerOptions(), o.GRPCOptions...)...)
	s.Register(s.grpc)
	go func() {
		if err := s.grpc.Serve(s.grpcLn); err != nil {
			s.errc <- fmt.Errorf("grpc: %w", err)
		}
	}()
	s.log.Info("engine serving", "grpc", s.GRPCAddr(), "nbd", s.NBDAddr(), "nvmf", s.NVMfAddr(),
		"discovery", s.DiscoveryAddr(), "data_dir", o.DataDir)
	return s, nil
}

// GRPCAddr is the address the gRPC server listens on.
func (s *Server) GRPCAddr() string { return s.grpcLn.Addr().String() }

// Err returns a channel that receives an error when a listener fails.
func (s *Server) Err() <-chan error { return s.errc }

// Shutdown stops the server gracefully: in-flight gRPC calls finish (for at
// most the grace period), then the data plane closes (DataPlane.Close).
func (s *Server) Shutdown(grace time.Duration) error {
	s.stopOnce.Do(func() {
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(grace):
			s.grpc.Stop()
			<-done
		}
		s.stopErr = s.DataPlane.Close()
		s.log.Info("engine stopped")
	})
	return s.stopErr
}
