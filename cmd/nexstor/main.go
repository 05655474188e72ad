// Command nexstor is the Nexstor storage node: `nexstor server` runs a node's
// engine (pools, replicas, NBD and NVMe/TCP shares) behind its gRPC API,
// with the control plane under --control; `nexstor dev` runs a whole system
// on one machine for trying it out; `nexstor csi` is the Kubernetes CSI
// plugin; `nexstor certgen` creates certificates.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/control/config"
	ctlserver "github.com/nexstor/nexstor/internal/control/server"
	"github.com/nexstor/nexstor/internal/engine"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/metrics"
	"github.com/nexstor/nexstor/internal/security"
	"github.com/nexstor/nexstor/internal/sysmon"
	"github.com/nexstor/nexstor/internal/version"
)

// shutdownGrace bounds how long in-flight gRPC calls may run at shutdown.
const shutdownGrace = 10 * time.Second

func main() {
	root := &cobra.Command{
		Use:           "nexstor",
		Short:         "Nexstor storage node",
		SilenceUsage:  true,
		SilenceErrors: true,
		// --version: the module version and VCS revision the binary was
		// built from.
		Version: version.Get().String(),
	}
	root.SetVersionTemplate("nexstor {{.Version}}\n")
	root.AddCommand(serverCmd(), devCmd(), csiCmd(), operatorCmd(), agentCmd(), versionCmd(), certgenCmd())
	if err := root.Execute(); err != nil {
		output.Error(os.Stderr, err)
		os.Exit(1)
	}
}

// steadyMonitorUsage is the help of --steady-monitor (server: on by
// default, a node that serves I/O; dev: off, a system that mostly idles).
const steadyMonitorUsage = "keep the Go runtime's monitor thread on its steady schedule instead of letting it sleep while idle: " +
	"a fifth less CPU per I/O and fewer context switches under load, for about 100 wake-ups a second when idle; see docs/config.md"

// steadyMonitor re-executes a long-running command with the Go runtime's
// monitor kept on its ordinary schedule (see package sysmon) when asked
// to; it returns when that is done or cannot be, which is logged. The
// re-executed process gets the same arguments, so it asks again, and
// sysmon.Quiet then finds its setting in place and returns.
func steadyMonitor(asked bool) {
	if !asked {
		return
	}
	if err := sysmon.Quiet(); err != nil {
		slog.Warn("--steady-monitor: could not re-execute with "+sysmon.Setting+" in GODEBUG; running on without it", "err", err)
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version (as --version does) and the engine API version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "nexstor %s\napi %s\n", version.Get(), engine.GetVersion().API)
		},
	}
}

func serverCmd() *cobra.Command {
	var cfgPath, dataDir, grpcAddr, nbdAddr, nvmfAddr, discAddr, metricsAddr, logLevel, pprofAddr string
	var steady bool
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the storage node's engine",
		Long: `Server runs the engine of one storage node: it imports the pools of the
configuration file and those created or imported since, shares the replicas
that were shared, and serves the engine gRPC API, NBD and NVMe/TCP.
--control runs the control plane as well (maintenance mode until nexctl
storage format, membership, the management service on access points).

gRPC is mutual TLS in both modes, with the certificates of transport_config
or --cert-dir (from nexstor certgen) and authorization by role; --insecure
serves plain text to every caller instead, and is logged.

Flags override the configuration file. SIGINT or SIGTERM stops it cleanly:
shares are withdrawn once in-flight I/O is answered and pools are exported;
the next start restores both.`,
		Example: `  nexstor server -o /etc/nexstor/server.yaml
  nexstor server --cert-dir /etc/nexstor/certs --data-dir /var/lib/nexstor --grpc 127.0.0.1:10124 --nbd :10809 --nvmf :4420
  nexstor server --insecure --data-dir /tmp/nexstor --metrics 127.0.0.1:9502
  nexstor server --control -o /etc/nexstor/server.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			steadyMonitor(steady)
			if ctlserver.Enabled(cmd) {
				return ctlserver.RunCommand(cmd)
			}
			// The same file and flag handling as --control.
			cfg, _, err := ctlserver.ConfigFromFlags(cmd.Flags())
			if err != nil {
				return err
			}
			logger, closeLog, err := newLogger(cfg.Log)
			if err != nil {
				return err
			}
			defer closeLog()
			slog.SetDefault(logger) // the packages below log through the default logger
			if pprofAddr != "" {
				stopPprof, err := servePprof(pprofAddr, logger)
				if err != nil {
					return err
				}
				defer stopPprof()
			}
			grpcOpts, err := standaloneSecurity(cfg, logger)
			if err != nil {
				return err
			}
			var pools []engine.PoolConfig
			for _, p := range cfg.Pools {
				pools = append(pools, engine.PoolConfig{Name: p.Name, Disk: p.Disk, ClusterSize: p.ClusterSize})
			}
			return run(engine.ServerOptions{DataDir: cfg.DataDir, GRPCListen: cfg.GRPCListen, GRPCOptions: grpcOpts,
				NBDListen: cfg.NBDListen, NVMfListen: cfg.NVMfListen, DiscoveryListen: cfg.DiscoveryListen,
				Pools: pools, Logger: logger}, cfg.MetricsListen)
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "o", "", "server configuration file (YAML)")
	cmd.Flags().StringVar(&dataDir, "data-dir", config.DefaultDataDir, "directory of the engine state")
	cmd.Flags().StringVar(&grpcAddr, "grpc", config.DefaultGRPCListen, "engine gRPC listen address")
	cmd.Flags().StringVar(&nbdAddr, "nbd", config.DefaultNBDListen, `NBD listen address ("" disables NBD)`)
	cmd.Flags().StringVar(&nvmfAddr, "nvmf", config.DefaultNVMfListen, `NVMe/TCP listen address ("" disables NVMe/TCP)`)
	cmd.Flags().StringVar(&discAddr, "discovery", config.DefaultDiscoveryListen, `NVMe/TCP discovery listen address ("" disables it)`)
	cmd.Flags().StringVar(&metricsAddr, "metrics", config.DefaultMetricsListen, `Prometheus /metrics listen address ("" disables it)`)
	cmd.Flags().StringVar(&logLevel, "log-level", config.DefaultLogLevel, "debug, info, warn or error")
	ctlserver.AddFlags(cmd.Flags())
	cmd.Flags().StringVar(&pprofAddr, "pprof", "", "serve net/http/pprof on this address, e.g. 127.0.0.1:6060 (off by default; never expose it)")
	cmd.Flags().BoolVar(&steady, "steady-monitor", true, steadyMonitorUsage)
	return cmd
}

// standaloneSecurity returns the gRPC server options of a standalone
// engine: mutual TLS with the transport_config (or --cert-dir) certificates
// and authorization by role, as with --control; plain text only with
// --insecure (or allow_insecure), logged.
func standaloneSecurity(cfg *config.Server, log *slog.Logger) ([]grpc.ServerOption, error) {
	tc := cfg.TransportConfig
	if tc.AllowInsecure {
		security.LogInsecure(log, "nexstor server")
	}
	creds, err := security.ServerCredentials(security.Files{CACert: tc.CACert, Cert: tc.Cert, Key: tc.Key}, tc.AllowInsecure)
	if err != nil {
		return nil, fault.Wrap(err, fault.FailedPrecondition, "server.tls",
			"nexstor server serves gRPC with mutual TLS and cannot load its certificates",
			"create them with `nexstor certgen --dir <dir>` and give --cert-dir <dir> (or transport_config in the file), "+
				"or run with --insecure for development")
	}
	authz := &security.Authorizer{Policy: ctlserver.Policy(), Insecure: tc.AllowInsecure, Log: log}
	return append(authz.ServerOptions(), grpc.Creds(creds)), nil
}

// run starts a server, with Prometheus metrics on metricsAddr unless it is
// "", and serves until SIGINT or SIGTERM, then shuts down cleanly. The
// metrics listener is bound first, so that a taken port stops the start
// before any pool is touched; scrapes stop reading the engine before it
// shuts down.
func run(opts engine.ServerOptions, metricsAddr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var eng atomic.Pointer[engine.Engine]
	if metricsAddr != "" {
		src := func() metrics.Engine {
			if e := eng.Load(); e != nil {
				return e
			}
			return nil // not a typed nil *engine.Engine
		}
		ms, err := metrics.Listen(metricsAddr, metrics.NewRegistry(src), opts.Logger)
		if err != nil {
			return err
		}
		defer ms.Close()
	}
	s, err := engine.StartServer(opts)
	if err != nil {
		return err
	}
	eng.Store(s.Engine)
	var serveErr error
	select {
	case <-ctx.Done():
		opts.Logger.Info("shutting down")
	case serveErr = <-s.Err():
		opts.Logger.Error("listener failed; shutting down", "err", serveErr)
	}
	eng.Store(nil) // scrapes from now on report the engine down
	return errors.Join(serveErr, s.Shutdown(shutdownGrace))
}

// newLogger builds the slog logger the configuration asks for.
func newLogger(l config.Log) (*slog.Logger, func(), error) {
	var w io.Writer = os.Stderr
	closeFn := func() {}
	if l.File != "" {
		f, err := os.OpenFile(l.File, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("log file: %w", err)
		}
		w, closeFn = f, func() { f.Close() }
	}
	ho := &slog.HandlerOptions{Level: l.SlogLevel()}
	if l.JSON {
		return slog.New(slog.NewJSONHandler(w, ho)), closeFn, nil
	}
	return slog.New(slog.NewTextHandler(w, ho)), closeFn, nil
}
