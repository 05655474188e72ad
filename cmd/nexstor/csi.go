package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/csi"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
	"github.com/nexstor/nexstor/internal/security"
)

// csiCmd is `nexstor csi`: the Kubernetes CSI plugin (internal/csi).
func csiCmd() *cobra.Command {
	var (
		mode, endpoint, nodeName, stateDir, transport, loopDir, nvmeDir, hostNQN, certDir, identity, logLevel string
		accessPoints                                                                                          []string
		insecure, logJSON                                                                                     bool
		ctrlLoss, reconnect, keepAlive                                                                        time.Duration
		maxVolumes                                                                                            int64
	)
	cmd := &cobra.Command{
		Use:   "csi",
		Short: "Run the Kubernetes CSI plugin: the controller (volumes) or the node (attach and mount)",
		Long: `Csi serves the CSI driver ` + csi.DriverName + ` on --endpoint.

--mode controller creates, deletes, publishes and expands volumes through the
management service (--access-points), with the csi certificate of --cert-dir:
that role may call the volume service and nothing else. --mode node runs on
every node that consumes volumes, as the member named --node-name: it attaches
a published volume over NVMe/TCP (the kernel's initiator, /dev/nvme-fabrics),
makes an ext4 or xfs file system on a blank volume, mounts it, and grows it.
--mode controller,node serves both. See docs/kubernetes.md.`,
		Example: `  nexstor csi --mode controller --endpoint unix:///csi/csi.sock -a ap-0:10124,ap-1:10124 --cert-dir /etc/nexstor/certs
  nexstor csi --mode node --endpoint unix:///csi/csi.sock --node-name node-3`,
		Args: cobra.NoArgs,
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
			modes := strings.Split(mode, ",")
			for _, m := range modes {
				if m != "controller" && m != "node" {
					return fmt.Errorf("--mode %q: use controller, node, or controller,node", mode)
				}
			}
			svc := csi.Services{}
			var ready func(ctx context.Context) error
			if slices.Contains(modes, "controller") {
				if len(accessPoints) == 0 {
					return fmt.Errorf("--access-points is required in controller mode: the management service's access points (host:port)")
				}
				if insecure {
					security.LogInsecure(log, "nexstor csi")
				}
				files := security.Files{CACert: filepath.Join(certDir, "ca.crt"), Cert: filepath.Join(certDir, identity+".crt"),
					Key: filepath.Join(certDir, identity+".key")}
				cl, err := mgmtclient.New(accessPoints, mgmtclient.Options{TLS: files, Insecure: insecure})
				if err != nil {
					return err
				}
				defer cl.Close()
				svc.Controller = csi.NewController(cl, log)
				ready = func(ctx context.Context) error {
					ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					defer cancel()
					return cl.DoVolume(ctx, func(ctx context.Context, v mgmtv1.VolumeServiceClient) error {
						_, err := v.ListPools(ctx, &mgmtv1.ListPoolsRequest{})
						return err
					})
				}
			}
			if slices.Contains(modes, "node") {
				var tr csi.Transport
				switch transport {
				case "nvme":
					nqn, id := hostNQN, ""
					if nqn == "" {
						var err error
						if nqn, id, err = csi.HostIdentity(nvmeDir); err != nil {
							return err
						}
					}
					tr = csi.NewNVMe(csi.NVMeOptions{HostNQN: nqn, HostID: id, CtrlLossTimeout: ctrlLoss, ReconnectDelay: reconnect,
						KeepAliveTimeout: keepAlive, Log: log})
					log.Info("csi node: NVMe/TCP transport", "host_nqn", nqn)
				case "loop":
					if loopDir == "" {
						loopDir = filepath.Join(stateDir, "loop")
					}
					tr = csi.NewLoop(csi.LoopOptions{Dir: loopDir, Log: log})
					log.Warn("csi node: loop-device transport: volumes are local files under " + loopDir + ", not Nexstor volumes; for tests only")
				default:
					return fmt.Errorf("--transport %q: use nvme (or loop, for tests)", transport)
				}
				n, err := csi.NewNode(csi.NodeOptions{NodeName: nodeName, Transport: tr, StateDir: stateDir, MaxVolumes: maxVolumes, Log: log})
				if err != nil {
					return err
				}
				svc.Node = n
			}
			svc.Identity = csi.NewIdentity(svc.Controller != nil, ready, log)
			ln, err := csi.Listen(endpoint)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log.Info("csi plugin serving", "driver", csi.DriverName, "mode", mode, "endpoint", endpoint, "node", nodeName)
			return csi.Serve(ctx, ln, csi.NewServer(svc, log), shutdownGrace)
		},
	}
	f := cmd.Flags()
	f.StringVar(&mode, "mode", "", "controller, node, or controller,node (required)")
	f.StringVar(&endpoint, "endpoint", envOr("CSI_ENDPOINT", "unix:///csi/csi.sock"), "CSI endpoint: unix:///path/csi.sock or tcp://host:port (env CSI_ENDPOINT)")
	f.StringSliceVarP(&accessPoints, "access-points", "a", splitEnv("NEXSTOR_ACCESS_POINTS"), "controller: the management service's access points, host:port (env NEXSTOR_ACCESS_POINTS)")
	f.StringVar(&certDir, "cert-dir", envOr("NEXSTOR_CERT_DIR", config.DefaultCertDir), "controller: directory with ca.crt and <identity>.crt/.key from nexstor certgen (env NEXSTOR_CERT_DIR)")
	f.StringVar(&identity, "identity", "csi", "controller: the certificate to present (<cert-dir>/<identity>.crt)")
	f.BoolVar(&insecure, "insecure", false, "controller: connect without TLS, to a system started with --insecure")
	f.StringVar(&nodeName, "node-name", os.Getenv("NODE_NAME"), "node: this node's name in the Nexstor system, node_name of its server.yaml (env NODE_NAME)")
	f.StringVar(&stateDir, "state-dir", "/var/lib/nexstor/csi", "node: where the plugin keeps what it staged; must survive restarts")
	f.StringVar(&transport, "transport", "nvme", "node: how volumes attach: nvme (NVMe/TCP through the kernel), or loop (a local file per volume, for tests)")
	f.StringVar(&loopDir, "loop-dir", "", "node, --transport loop: directory of the volumes' files (default <state-dir>/loop)")
	f.StringVar(&nvmeDir, "nvme-config-dir", csi.DefaultNVMeConfigDir, "node: where the host's hostnqn and hostid are (written when missing)")
	f.StringVar(&hostNQN, "host-nqn", "", "node: connect as this host NQN when a volume names none (default: <nvme-config-dir>/hostnqn)")
	f.DurationVar(&ctrlLoss, "ctrl-loss-tmo", csi.DefaultCtrlLossTimeout, "node: how long the kernel keeps reconnecting a lost NVMe/TCP path before it gives up")
	f.DurationVar(&reconnect, "reconnect-delay", csi.DefaultReconnectDelay, "node: pause between the kernel's reconnect attempts")
	f.DurationVar(&keepAlive, "keep-alive-tmo", 0, "node: NVMe keep-alive timeout (0: the kernel's default)")
	f.Int64Var(&maxVolumes, "max-volumes", 0, "node: most volumes the node takes (0: no limit)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&logJSON, "log-json", false, "log JSON lines instead of text")
	return cmd
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func splitEnv(key string) []string {
	if v := os.Getenv(key); v != "" {
		return strings.Split(v, ",")
	}
	return nil
}
