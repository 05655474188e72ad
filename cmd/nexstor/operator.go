package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/operator"
	"github.com/nexstor/nexstor/internal/security"
)

// operatorCmd is `nexstor operator`: the Kubernetes operator of DiskPools.
func operatorCmd() *cobra.Command {
	var accessPoints []string
	var certDir, identity, logLevel, metricsAddr, healthAddr, leaderNS string
	var insecure, logJSON, leaderElect bool
	var resync time.Duration
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Run the Kubernetes operator: DiskPool resources become pools on the nodes",
		Long: `Operator watches DiskPool resources (nexstor.io/v1alpha1) and makes each
a pool on its node's engine: it imports a disk that holds the pool, formats a
blank one (never anything else), and reports the pool's state and space in
the DiskPool's status. Deleting a DiskPool destroys its pool once no replica
is left in it; until then the status names the volumes that hold it.

It reaches Kubernetes with the in-cluster configuration (or the kubeconfig
file $KUBECONFIG names) and the Nexstor system through its access points with the admin
certificate of --cert-dir (pools are the admin's to create and destroy).`,
		Example: `  nexstor operator -a ap-0:10124,ap-1:10124 --cert-dir /etc/nexstor/certs --leader-elect`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
			}
			ho := &slog.HandlerOptions{Level: lvl}
			log := slog.New(slog.NewTextHandler(os.Stderr, ho))
			if logJSON {
				log = slog.New(slog.NewJSONHandler(os.Stderr, ho))
			}
			slog.SetDefault(log)
			if len(accessPoints) == 0 {
				return fmt.Errorf("--access-points is required: the management service's access points (host:port)")
			}
			eo := engineclient.Options{Insecure: insecure}
			if !insecure {
				eo.TLS = security.Files{CACert: filepath.Join(certDir, "ca.crt"), Cert: filepath.Join(certDir, identity+".crt"),
					Key: filepath.Join(certDir, identity+".key")}
			}
			sys, err := operator.NewSystemClient(accessPoints, eo)
			if err != nil {
				return err
			}
			defer sys.Close()
			cfg, err := ctrl.GetConfig()
			if err != nil {
				return fmt.Errorf("kubernetes configuration: %w", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return operator.Run(ctx, operator.Options{Config: cfg, System: sys, Resync: resync, LeaderElection: leaderElect,
				LeaderElectionNamespace: leaderNS, MetricsAddr: metricsAddr, HealthAddr: healthAddr, Log: log})
		},
	}
	f := cmd.Flags()
	f.StringSliceVarP(&accessPoints, "access-points", "a", splitEnv("NEXSTOR_ACCESS_POINTS"), "the management service's access points, host:port (env NEXSTOR_ACCESS_POINTS)")
	f.StringVar(&certDir, "cert-dir", envOr("NEXSTOR_CERT_DIR", config.DefaultCertDir), "directory with ca.crt and <identity>.crt/.key from nexstor certgen (env NEXSTOR_CERT_DIR)")
	f.StringVar(&identity, "identity", "admin", "the certificate to present (<cert-dir>/<identity>.crt); creating pools needs the admin role")
	f.BoolVar(&insecure, "insecure", false, "connect without TLS, to a system started with --insecure")
	f.DurationVar(&resync, "resync", operator.DefaultResync, "how often each DiskPool's pool is looked at again when nothing changed")
	f.BoolVar(&leaderElect, "leader-elect", false, "act only while holding the nexstor-operator Lease (for more than one replica)")
	f.StringVar(&leaderNS, "leader-elect-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the Lease (env POD_NAMESPACE)")
	f.StringVar(&metricsAddr, "metrics-addr", "0", "address of the controller metrics (Prometheus), \"0\" for none")
	f.StringVar(&healthAddr, "health-addr", ":8081", "address of /healthz and /readyz, \"0\" for none")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&logJSON, "log-json", false, "log JSON lines")
	return cmd
}
