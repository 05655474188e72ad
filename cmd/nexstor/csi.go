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
	"github.com/nexstor/nexstor/internal/agent"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/csi"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
	"github.com/nexstor/nexstor/internal/nvmehost"
	"github.com/nexstor/nexstor/internal/security"
)

// csiCmd is `nexstor csi`: the Kubernetes CSI plugin (internal/csi).
func csiCmd() *cobra.Command {
	var (
		mode, endpoint, nodeName, stateDir, transport, loopDir, nvmeDir, hostNQN, certDir, identity, logLevel string
		accessPoints                                                                                          []string
		insecure, logJSON, followMoves                                                                        bool
		ctrlLoss, reconnect, keepAlive, agentInterval                                                         time.Duration
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
Given --access-points, the node also runs the path watcher of nexstor agent:
when a volume's nexus moves (its node died, or a move or drain), it connects
the new path, so the kernel's multipath resumes the I/O there, and reports a
failed path to the management service. --mode controller,node serves both.
See docs/kubernetes.md.`,
		Example: `  nexstor csi --mode controller --endpoint unix:///csi/csi.sock -a ap-0:10124,ap-1:10124 --cert-dir /etc/nexstor/certs
  nexstor csi --mode node --endpoint unix:///csi/csi.sock --node-name node-3 -a ap-0:10124,ap-1:10124 --cert-dir /etc/nexstor/certs`,
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
			// One management client for the controller and the node's path
			// watcher, made when the first needs it.
			var mc *mgmtclient.Client
			csiMgmtClient := func() (*mgmtclient.Client, error) {
				if mc != nil {
					return mc, nil
				}
				if insecure {
					security.LogInsecure(log, "nexstor csi")
				}
				files := security.Files{CACert: filepath.Join(certDir, "ca.crt"), Cert: filepath.Join(certDir, identity+".crt"),
					Key: filepath.Join(certDir, identity+".key")}
				var err error
				mc, err = mgmtclient.New(accessPoints, mgmtclient.Options{TLS: files, Insecure: insecure})
				return mc, err
			}
			defer func() {
				if mc != nil {
					mc.Close()
				}
			}()
			var watcher *agent.Agent
			if slices.Contains(modes, "controller") {
				if len(accessPoints) == 0 {
					return fmt.Errorf("--access-points is required in controller mode: the management service's access points (host:port)")
				}
				cl, err := csiMgmtClient()
				if err != nil {
					return err
				}
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
				var usedNQN, usedID string // the host identity of the node's connects
				switch transport {
				case "nvme":
					nqn, id := hostNQN, ""
					if nqn == "" {
						var err error
						if nqn, id, err = csi.HostIdentity(nvmeDir); err != nil {
							return err
						}
					}
					usedNQN, usedID = nqn, id
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
				// The node follows nexus moves with the agent's path watcher,
				// under the host identity its own connects use.
				if transport == "nvme" && followMoves {
					if len(accessPoints) == 0 {
						log.Warn("csi node: no --access-points: volumes whose nexus moves are not followed (their path dies with the old node)")
					} else {
						cl, err := csiMgmtClient()
						if err != nil {
							return err
						}
						watcher = agent.New(agent.Config{Host: nvmehost.System(), Volumes: volumeGetter{cl}, HostNQN: usedNQN, HostID: usedID,
							Interval: agentInterval, CtrlLossTmo: int(ctrlLoss / time.Second), Log: log.With("component", "path-watcher")})
					}
				}
			}
			svc.Identity = csi.NewIdentity(svc.Controller != nil, ready, log)
			ln, err := csi.Listen(endpoint)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if watcher != nil {
				go watcher.Run(ctx)
				log.Info("csi node: following nexus moves", "interval", agentInterval)
			}
			log.Info("csi plugin serving", "driver", csi.DriverName, "mode", mode, "endpoint", endpoint, "node", nodeName)
			return csi.Serve(ctx, ln, csi.NewServer(svc, log), shutdownGrace)
		},
	}
	f := cmd.Flags()
	f.StringVar(&mode, "mode", "", "controller, node, or controller,node (required)")
	f.StringVar(&endpoint, "endpoint", envOr("CSI_ENDPOINT", "unix:///csi/csi.sock"), "CSI endpoint: unix:///path/csi.sock or tcp://host:port (env CSI_ENDPOINT)")
	f.StringSliceVarP(&accessPoints, "access-points", "a", splitEnv("NEXSTOR_ACCESS_POINTS"), "the management service's access points, host:port: the controller's volume calls; the node's path watcher (env NEXSTOR_ACCESS_POINTS)")
	f.StringVar(&certDir, "cert-dir", envOr("NEXSTOR_CERT_DIR", config.DefaultCertDir), "directory with ca.crt and <identity>.crt/.key from nexstor certgen, for the management service (env NEXSTOR_CERT_DIR)")
	f.StringVar(&identity, "identity", "csi", "the certificate to present to the management service (<cert-dir>/<identity>.crt)")
	f.BoolVar(&insecure, "insecure", false, "connect to the management service without TLS, to a system started with --insecure")
	f.BoolVar(&followMoves, "follow-moves", true, "node, --transport nvme, with --access-points: run the path watcher of nexstor agent, which connects the new path when a volume's nexus moves and reports failed paths")
	f.DurationVar(&agentInterval, "path-interval", agent.DefaultInterval, "node: how often the path watcher looks at the volumes' paths")
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
