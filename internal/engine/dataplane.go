package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"google.golang.org/grpc"

	"github.com/nexstor/nexstor/internal/nbd"
	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/nvmf/target"
)

// DataPlaneOptions configure StartDataPlane: a node's engine and the
// listeners of its data plane. The gRPC API is the caller's: it registers
// the engine's services onto its own server (DataPlane.Register), with its
// own credentials and interceptors.
type DataPlaneOptions struct {
	// DataDir holds the engine state file.
	DataDir string
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
	// HostNQN is the host NQN the engine's nexuses connect to remote
	// children with (Config.HostNQN); empty draws one at random per
	// process.
	HostNQN string
	// SystemHealth is the system health store (Config.SystemHealth); nil
	// refuses nexuses of the "system" store.
	SystemHealth nexus.HealthStore
	Logger       *slog.Logger
	// OnError, when set, is called (from a listener's goroutine) with the
	// error of a listener that failed while serving; failures are logged
	// either way. Closing the data plane is not a failure.
	OnError func(error)
}

// DataPlane is a running engine with its NBD and NVMe/TCP frontends. Its
// methods are safe for concurrent use.
type DataPlane struct {
	// Engine is the engine; its shares are served by the frontends.
	Engine *Engine

	log       *slog.Logger
	nbdLn     net.Listener
	nvmfLn    net.Listener
	discLn    net.Listener
	nbd       *nbd.Server
	nvmf      *target.Target
	closeOnce sync.Once
	closeErr  error
}

// StartDataPlane binds the data-plane listeners, starts the engine
// (importing pools and restoring shares) and serves NBD and NVMe/TCP.
// Listening first means a port conflict is reported before any pool is
// touched. On error nothing is left running.
func StartDataPlane(o DataPlaneOptions) (*DataPlane, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Backend == nil {
		o.Backend = PoolBackend{}
	}
	d := &DataPlane{log: o.Logger}
	if err := d.listen(o); err != nil {
		d.closeListeners()
		return nil, err
	}
	cfg := Config{DataDir: o.DataDir, Backend: o.Backend, Pools: o.Pools, Logger: o.Logger,
		HostNQN: o.HostNQN, SystemHealth: o.SystemHealth}
	if d.nbdLn != nil {
		d.nbd = nbd.NewServer(o.Logger.With("component", "nbd"))
		cfg.NBD = NBDExporter(d.nbd, cmp.Or(o.NBDAdvertise, AdvertiseAddr(d.nbdLn.Addr().String())))
	}
	if d.nvmfLn != nil {
		d.nvmf = target.New(o.Logger.With("component", "nvmf"))
		cfg.NVMf = NVMfExporter(d.nvmf, cmp.Or(o.NVMfAdvertise, AdvertiseAddr(d.nvmfLn.Addr().String())))
	}
	var err error
	if d.Engine, err = New(cfg); err != nil {
		d.closeFrontends()
		d.closeListeners()
		return nil, err
	}
	serve := func(what string, f func() error) {
		go func() {
			err := f()
			if err == nil || errors.Is(err, target.ErrClosed) || errors.Is(err, nbd.ErrServerClosed) {
				return
			}
			err = fmt.Errorf("%s listener: %w", what, err)
			d.log.Error("listener failed", "listener", what, "err", err)
			if o.OnError != nil {
				o.OnError(err)
			}
		}()
	}
	if d.nbd != nil {
		serve("nbd", func() error { return d.nbd.Serve(context.Background(), d.nbdLn) })
	}
	if d.nvmf != nil {
		serve("nvmf", func() error { return d.nvmf.Serve(context.Background(), d.nvmfLn) })
		if d.discLn != nil {
			serve("discovery", func() error { return d.nvmf.ServeDiscovery(context.Background(), d.discLn) })
		}
	}
	return d, nil
}

// listen binds every data-plane listener.
func (d *DataPlane) listen(o DataPlaneOptions) error {
	var err error
	if o.NBDListen != "" {
		if d.nbdLn, err = net.Listen("tcp", o.NBDListen); err != nil {
			return fmt.Errorf("nbd listen %s: %w", o.NBDListen, err)
		}
	}
	if o.NVMfListen != "" {
		if d.nvmfLn, err = net.Listen("tcp", o.NVMfListen); err != nil {
			return fmt.Errorf("nvmf listen %s: %w", o.NVMfListen, err)
		}
		if o.DiscoveryListen != "" {
			if d.discLn, err = net.Listen("tcp", o.DiscoveryListen); err != nil {
				return fmt.Errorf("nvmf discovery listen %s: %w", o.DiscoveryListen, err)
			}
		}
	}
	return nil
}

func (d *DataPlane) closeListeners() {
	for _, l := range []net.Listener{d.nbdLn, d.nvmfLn, d.discLn} {
		if l != nil {
			l.Close()
		}
	}
}

// closeFrontends stops accepting and answers in-flight I/O; it closes the
// listeners it serves.
func (d *DataPlane) closeFrontends() error {
	var errs []error
	if d.nbd != nil {
		if err := d.nbd.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if d.nvmf != nil {
		if err := d.nvmf.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Register registers the engine's gRPC services on s, which the caller
// builds with its own credentials and interceptors.
func (d *DataPlane) Register(s grpc.ServiceRegistrar) { Register(s, d.Engine) }

// NBDAddr is the address the NBD server listens on, "" when disabled.
func (d *DataPlane) NBDAddr() string { return addrOf(d.nbdLn) }

// NVMfAddr is the address the NVMe/TCP target listens on, "" when disabled.
func (d *DataPlane) NVMfAddr() string { return addrOf(d.nvmfLn) }

// DiscoveryAddr is the address of the NVMe/TCP discovery service, "" when
// disabled.
func (d *DataPlane) DiscoveryAddr() string { return addrOf(d.discLn) }

// Close withdraws the shares once their in-flight I/O is answered and
// exports the pools cleanly; the state file keeps the shares, so the next
// start restores them. The caller stops routing gRPC calls to the engine
// first. Later calls return the first result.
// Quiesce closes the engine's nexuses ahead of a shutdown that spans
// several nodes (see Engine.Quiesce); the frontends keep serving replicas.
func (d *DataPlane) Quiesce() error { return d.Engine.Quiesce() }

func (d *DataPlane) Close() error {
	d.closeOnce.Do(func() {
		// Frontends first: no new connections, in-flight requests answered;
		// then the engine closes the replicas and exports the pools.
		errs := []error{d.closeFrontends(), d.Engine.Close()}
		d.closeListeners()
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

func addrOf(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}
