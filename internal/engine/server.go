package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/nexstor/nexstor/internal/nbd"
)

// ServerOptions configure a Server: one node's engine with its gRPC API and
// NBD frontend.
type ServerOptions struct {
	// DataDir holds the engine state file.
	DataDir string
	// GRPCListen is the gRPC listen address, e.g. 127.0.0.1:10124.
	GRPCListen string
	// NBDListen is the NBD listen address, e.g. :10809; "" disables NBD.
	NBDListen string
	// NBDAdvertise overrides the host:port put in nbd:// share URIs; empty
	// derives it from the NBD listener (AdvertiseAddr).
	NBDAdvertise string
	// Pools are the configured pools, imported at start.
	Pools []PoolConfig
	// Backend defaults to PoolBackend.
	Backend Backend
	Logger  *slog.Logger
}

// Server runs an Engine behind a gRPC server and an NBD server.
type Server struct {
	Engine *Engine

	log      *slog.Logger
	grpcLn   net.Listener
	nbdLn    net.Listener
	grpc     *grpc.Server
	nbd      *nbd.Server
	errc     chan error
	stopOnce sync.Once
	stopErr  error
}

// StartServer binds the listeners, starts the engine (importing pools and
// restoring shares) and starts serving. Listening first means a port
// conflict is reported before any pool is touched.
func StartServer(o ServerOptions) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Backend == nil {
		o.Backend = PoolBackend{}
	}
	s := &Server{log: o.Logger, errc: make(chan error, 2)}
	var err error
	if s.grpcLn, err = net.Listen("tcp", o.GRPCListen); err != nil {
		return nil, fmt.Errorf("grpc listen %s: %w", o.GRPCListen, err)
	}
	cfg := Config{DataDir: o.DataDir, Backend: o.Backend, Pools: o.Pools, Logger: o.Logger}
	if o.NBDListen != "" {
		if s.nbdLn, err = net.Listen("tcp", o.NBDListen); err != nil {
			s.grpcLn.Close()
			return nil, fmt.Errorf("nbd listen %s: %w", o.NBDListen, err)
		}
		s.nbd = nbd.NewServer(o.Logger.With("component", "nbd"))
		cfg.NBD = NBDExporter(s.nbd)
		cfg.NBDAddress = o.NBDAdvertise
		if cfg.NBDAddress == "" {
			cfg.NBDAddress = AdvertiseAddr(s.nbdLn.Addr().String())
		}
	}
	if s.Engine, err = New(cfg); err != nil {
		s.grpcLn.Close()
		if s.nbdLn != nil {
			s.nbdLn.Close()
			s.nbd.Close()
		}
		return nil, err
	}
	s.grpc = grpc.NewServer()
	Register(s.grpc, s.Engine)
	go func() { s.errc <- s.grpc.Serve(s.grpcLn) }()
	if s.nbd != nil {
		go func() {
			err := s.nbd.Serve(context.Background(), s.nbdLn)
			if errors.Is(err, nbd.ErrServerClosed) {
				err = nil
			}
			s.errc <- err
		}()
	}
	s.log.Info("engine serving", "grpc", s.GRPCAddr(), "nbd", s.NBDAddr(), "data_dir", o.DataDir)
	return s, nil
}

// GRPCAddr is the address the gRPC server listens on.
func (s *Server) GRPCAddr() string { return s.grpcLn.Addr().String() }

// NBDAddr is the address the NBD server listens on, "" when disabled.
func (s *Server) NBDAddr() string {
	if s.nbdLn == nil {
		return ""
	}
	return s.nbdLn.Addr().String()
}

// Err returns a channel that receives an error when a listener fails.
func (s *Server) Err() <-chan error { return s.errc }

// Shutdown stops the server gracefully: in-flight gRPC calls finish (for at
// most the grace period), shares are withdrawn once their in-flight I/O is
// answered, and pools are exported cleanly. The state file keeps the shares,
// so the next start restores them.
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
		var errs []error
		// NBD first: no new connections, in-flight requests answered; then
		// the engine closes the replicas and exports the pools.
		if s.nbd != nil {
			if err := s.nbd.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := s.Engine.Close(); err != nil {
			errs = append(errs, err)
		}
		s.stopErr = errors.Join(errs...)
		s.log.Info("engine stopped")
	})
	return s.stopErr
}
