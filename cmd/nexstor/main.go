// Command nexstor is the Nexstor storage node: `nexstor server` runs a node's
// engine (pools, replicas, NBD shares) behind its gRPC API, and `nexstor dev`
// runs one on files under a data dir for trying it out.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/control/config"
	ctlserver "github.com/nexstor/nexstor/internal/control/server"
	"github.com/nexstor/nexstor/internal/engine"
)

// shutdownGrace bounds how long in-flight gRPC calls may run at shutdown.
const shutdownGrace = 10 * time.Second

func main() {
	root := &cobra.Command{
		Use:           "nexstor",
		Short:         "Nexstor storage node",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serverCmd(), devCmd(), versionCmd(), certgenCmd())
	if err := root.Execute(); err != nil {
		output.Error(os.Stderr, err)
		os.Exit(1)
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			v := engine.GetVersion()
			fmt.Fprintf(cmd.OutOrStdout(), "nexstor %s (api %s, %s", v.Version, v.API, v.GoVersion)
			if v.Commit != "" {
				fmt.Fprintf(cmd.OutOrStdout(), ", commit %s", v.Commit)
			}
			fmt.Fprintln(cmd.OutOrStdout(), ")")
		},
	}
}

func serverCmd() *cobra.Command {
	var cfgPath, dataDir, grpcAddr, nbdAddr, nvmfAddr, discAddr, logLevel, pprofAddr string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the storage node's engine",
		Long: `Server runs the engine of one storage node: it imports the pools of the
configuration file and those created or imported since, shares the replicas
that were shared, and serves the engine gRPC API, NBD and NVMe/TCP.

Flags override the configuration file. SIGINT or SIGTERM stops it cleanly:
shares are withdrawn once in-flight I/O is answered and pools are exported;
the next start restores both.`,
		Example: `  nexstor server -o /etc/nexstor/server.yaml
  nexstor server --data-dir /var/lib/nexstor --grpc 127.0.0.1:10124 --nbd :10809 --nvmf :4420`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ctlserver.Enabled(cmd) {
				return ctlserver.RunCommand(cmd)
			}
			cfg := config.Default()
			if cfgPath != "" {
				var err error
				if cfg, err = config.Load(cfgPath); err != nil {
					return err
				}
			}
			f := cmd.Flags()
			if f.Changed("data-dir") {
				cfg.WithDataDir(dataDir)
			}
			if f.Changed("grpc") {
				cfg.WithGRPCListen(grpcAddr)
			}
			if f.Changed("nbd") {
				cfg.WithNBDListen(nbdAddr)
			}
			if f.Changed("nvmf") {
				cfg.WithNVMfListen(nvmfAddr)
			}
			if f.Changed("discovery") {
				cfg.WithDiscoveryListen(discAddr)
			}
			if f.Changed("log-level") {
				cfg.WithLogLevel(logLevel)
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
			var pools []engine.PoolConfig
			for _, p := range cfg.Pools {
				pools = append(pools, engine.PoolConfig{Name: p.Name, Disk: p.Disk, ClusterSize: p.ClusterSize})
			}
			return run(engine.ServerOptions{DataDir: cfg.DataDir, GRPCListen: cfg.GRPCListen, NBDListen: cfg.NBDListen,
				NVMfListen: cfg.NVMfListen, DiscoveryListen: cfg.DiscoveryListen, Pools: pools, Logger: logger}, nil)
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "o", "", "server configuration file (YAML)")
	cmd.Flags().StringVar(&dataDir, "data-dir", config.DefaultDataDir, "directory of the engine state")
	cmd.Flags().StringVar(&grpcAddr, "grpc", config.DefaultGRPCListen, "engine gRPC listen address")
	cmd.Flags().StringVar(&nbdAddr, "nbd", config.DefaultNBDListen, `NBD listen address ("" disables NBD)`)
	cmd.Flags().StringVar(&nvmfAddr, "nvmf", config.DefaultNVMfListen, `NVMe/TCP listen address ("" disables NVMe/TCP)`)
	cmd.Flags().StringVar(&discAddr, "discovery", config.DefaultDiscoveryListen, `NVMe/TCP discovery listen address ("" disables it)`)
	cmd.Flags().StringVar(&logLevel, "log-level", config.DefaultLogLevel, "debug, info, warn or error")
	ctlserver.AddFlags(cmd.Flags())
	cmd.Flags().StringVar(&pprofAddr, "pprof", "", "serve net/http/pprof on this address, e.g. 127.0.0.1:6060 (off by default; never expose it)")
	return cmd
}

// run starts a server, calls ready (if any), and serves until SIGINT or
// SIGTERM, then shuts down cleanly.
func run(opts engine.ServerOptions, ready func(*engine.Server) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := engine.StartServer(opts)
	if err != nil {
		return err
	}
	if ready != nil {
		if err := ready(s); err != nil {
			s.Shutdown(shutdownGrace)
			return err
		}
	}
	var serveErr error
	select {
	case <-ctx.Done():
		opts.Logger.Info("shutting down")
	case serveErr = <-s.Err():
		opts.Logger.Error("listener failed; shutting down", "err", serveErr)
	}
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
