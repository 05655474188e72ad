package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/nexstor/nexstor/internal/nbd"
	"github.com/nexstor/nexstor/internal/nvmf/target"
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
	// NVMfListen is the NVMe/TCP I/O listen address, e.g. :4420; ""
	// disables nvmf.
	NVMfListen string
	// DiscoveryListen is the NVMe/TCP discovery listen address, e.g. :8009;
	// "" disables it. It needs NVMfListen.
	DiscoveryListen string
	// NVMfAdvertise overrides the host:port put in nvmf:// share URIs.
	NVMfAdvertise string
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
	nvmfLn   net.Listener
	discLn   net.Listener
	nvmf     *target.Target
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
	s := &Server{log: o.Logger, errc: make(chan error, 4)}
	if err := s.listen(o); err != nil {
		s.closeListeners()
		return nil, err
	}
	cfg := Config{DataDir: o.DataDir, Backend: o.Backend, Pools: o.Pools, Logger: o.Logger}
	if s.nbdLn != nil {
		s.nbd = nbd.NewServer(o.Logger.With("component", "nbd"))
		cfg.NBD = NBDExporter(s.nbd, cmp.Or(o.NBDAdvertise, AdvertiseAddr(s.nbdLn.Addr().String())))
	}
	if s.nvmfLn != nil {
		s.nvmf = target.New(o.Logger.With("component", "nvmf"))
		cfg.NVMf = NVMfExporter(s.nvmf, cmp.Or(o.NVMfAdvertise, AdvertiseAddr(s.nvmfLn.Addr().String())))
	}
	var err error
	if s.Engine, err = New(cfg); err != nil {
		s.closeListeners()
		if s.nbd != nil {
			s.nbd.Close()
		}
		if s.nvmf != nil {
			s.nvmf.Close()
		}
		return nil, err
	}
	s.grpc = grpc.NewServer()
	Register(s.grpc, s.Engine)
	go func() { s.errc <- s.grpc.Serve(s.grpcLn) }()
	if s.nbd != nil {
		go func() { s.errc <- ignoreClosed(s.nbd.Serve(context.Background(), s.nbdLn)) }()
	}
	if s.nvmf != nil {
		go func() { s.errc <- ignoreClosed(s.nvmf.Serve(context.Background(), s.nvmfLn)) }()
		if s.discLn != nil {
			go func() { s.errc <- ignoreClosed(s.nvmf.ServeDiscovery(context.Background(), s.discLn)) }()
		}
	}
	s.log.Info("engine serving", "grpc", s.GRPCAddr(), "nbd", s.NBDAddr(), "nvmf", addrOf(s.nvmfLn),
		"discovery", addrOf(s.discLn), "data_dir", o.DataDir)
	return s, nil
}

// listen binds every listener first, so that a port conflict is reported
// before any pool is touched.
func (s *Server) listen(o ServerOptions) error {
	var err error
	if s.grpcLn, err = net.Listen("tcp", o.GRPCListen); err != nil {
		return fmt.Errorf("grpc listen %s: %w", o.GRPCListen, err)
	}
	if o.NBDListen != "" {
		if s.nbdLn, err = net.Listen("tcp", o.NBDListen); err != nil {
			return fmt.Errorf("nbd listen %s: %w", o.NBDListen, err)
		}
	}
	if o.NVMfListen != "" {
		if s.nvmfLn, err = net.Listen("tcp", o.NVMfListen); err != nil {
			return fmt.Errorf("nvmf listen %s: %w", o.NVMfListen, err)
		}
		if o.DiscoveryListen != "" {
			if s.discLn, err = net.Listen("tcp", o.DiscoveryListen); err != nil {
				return fmt.Errorf("nvmf discovery listen %s: %w", o.DiscoveryListen, err)
			}
		}
	}
	return nil
}

func (s *Server) closeListeners() {
	for _, l := range []net.Listener{s.grpcLn, s.nbdLn, s.nvmfLn, s.discLn} {
		if l != nil {
			l.Close()
		}
	}
}

func ignoreClosed(err error) error {
	if errors.Is(err, target.ErrClosed) || errors.Is(err, nbd.ErrServerClosed) {
		return nil
	}
	return err
}

func addrOf(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

// GRPCAddr is the address the gRPC server listens on.
func (s *Server) GRPCAddr() string { return s.grpcLn.Addr().String() }

// NBDAddr is the address the NBD server listens on, "" when disabled.
func (s *Server) NBDAddr() string { return addrOf(s.nbdLn) }

// NVMfAddr is the address the NVMe/TCP target listens on, "" when disabled.
func (s *Server) NVMfAddr() string { return addrOf(s.nvmfLn) }

// DiscoveryAddr is the address of the NVMe/TCP discovery service, "" when
// disabled.
func (s *Server) DiscoveryAddr() string { return addrOf(s.discLn) }

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
		// Frontends first: no new connections, in-flight requests answered; then
		// the engine closes the replicas and exports the pools.
		if s.nbd != nil {
			if err := s.nbd.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if s.nvmf != nil {
			if err := s.nvmf.Close(); err != nil {
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
