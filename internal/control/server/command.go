package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nexstor/nexstor/internal/control/config"
)

// Flag names AddFlags adds to `nexstor server`.
const (
	FlagControl           = "control"
	FlagInsecure          = "insecure"
	FlagCertDir           = "cert-dir"
	FlagRuntimeDir        = "runtime-dir"
	FlagHeartbeatInterval = "heartbeat-interval"
	FlagHeartbeatTimeout  = "heartbeat-timeout"
)

// AddFlags adds the control-plane flags to the `nexstor server` command.
// The command must already define the engine flags (-o/--config,
// --data-dir, --grpc, --nbd, --nvmf, --discovery, --metrics, --log-level)
// that RunCommand reads too.
func AddFlags(f *pflag.FlagSet) {
	f.Bool(FlagControl, false, "run the control plane: maintenance mode until nexctl storage format, "+
		"the management service on access points, system membership, mutual TLS")
	f.Bool(FlagInsecure, false, "serve without TLS: no encryption, no authentication, every caller may call everything (development only; logged)")
	f.String(FlagCertDir, "", "directory with ca.crt, server.crt and server.key from nexstor certgen (overrides transport_config)")
	f.String(FlagRuntimeDir, "", "directory of the effective configuration and sockets (overrides runtime_dir)")
	f.Duration(FlagHeartbeatInterval, 0, "how often members send heartbeats, set by the access points (0: 1s)")
	f.Duration(FlagHeartbeatTimeout, 0, "silence after which an access point marks a member unresponsive (0: 5s)")
}

// Enabled reports whether `nexstor server` was asked to run the control
// plane (--control).
func Enabled(cmd *cobra.Command) bool {
	on, _ := cmd.Flags().GetBool(FlagControl)
	return on
}

// RunCommand runs `nexstor server --control`: it loads the configuration
// file, applies the flags that were given, and calls Run until SIGINT or
// SIGTERM.
func RunCommand(cmd *cobra.Command) error {
	cfg, opts, err := ConfigFromFlags(cmd.Flags())
	if err != nil {
		return err
	}
	logger, closeLog, err := newLogger(cfg.Log, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	defer closeLog()
	slog.SetDefault(logger)
	opts.Logger = logger
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, cfg, opts)
}

// ConfigFromFlags builds the configuration: the file given by -o (or the
// defaults), then every flag that was set. The result is not validated
// (Run does it).
func ConfigFromFlags(f *pflag.FlagSet) (*config.Server, Options, error) {
	var opts Options
	cfg := config.Default()
	if path, _ := f.GetString("config"); path != "" {
		var err error
		if cfg, err = config.Load(path); err != nil {
			return nil, opts, err
		}
	}
	str := func(name string, apply func(string) *config.Server) {
		if f.Changed(name) {
			v, _ := f.GetString(name)
			apply(v)
		}
	}
	str("data-dir", cfg.WithDataDir)
	str("grpc", cfg.WithGRPCListen)
	str("nbd", cfg.WithNBDListen)
	str("nvmf", cfg.WithNVMfListen)
	str("discovery", cfg.WithDiscoveryListen)
	str("metrics", cfg.WithMetricsListen)
	str("log-level", cfg.WithLogLevel)
	str(FlagCertDir, cfg.WithCertDir)
	str(FlagRuntimeDir, cfg.WithRuntimeDir)
	if f.Changed(FlagInsecure) {
		v, _ := f.GetBool(FlagInsecure)
		cfg.WithInsecure(v)
	}
	dur := func(name string) (time.Duration, error) {
		d, _ := f.GetDuration(name)
		if d < 0 {
			return 0, fmt.Errorf("--%s %v: must not be negative", name, d)
		}
		return d, nil
	}
	var err error
	if opts.HeartbeatInterval, err = dur(FlagHeartbeatInterval); err != nil {
		return nil, opts, err
	}
	if opts.HeartbeatTimeout, err = dur(FlagHeartbeatTimeout); err != nil {
		return nil, opts, err
	}
	return cfg, opts, nil
}

// newLogger builds the slog logger the configuration asks for; stderr
// when no log file is configured.
func newLogger(l config.Log, stderr io.Writer) (*slog.Logger, func(), error) {
	w := stderr
	closeFn := func() {}
	if l.File != "" {
		f, err := os.OpenFile(l.File, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("log.file %s: %w", l.File, err)
		}
		w, closeFn = f, func() { f.Close() }
	}
	ho := &slog.HandlerOptions{Level: l.SlogLevel()}
	if l.JSON {
		return slog.New(slog.NewJSONHandler(w, ho)), closeFn, nil
	}
	return slog.New(slog.NewTextHandler(w, ho)), closeFn, nil
}
