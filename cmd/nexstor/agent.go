package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/agent"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
	"github.com/nexstor/nexstor/internal/nvmehost"
	"github.com/nexstor/nexstor/internal/security"
)

func agentCmd() *cobra.Command {
	var (
		aps, addrMap      []string
		certDir, identity string
		insecure          bool
		interval, report  time.Duration
		nvmeDir           string
		ctrlLossTmo       int
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Keep this host's NVMe paths to Nexstor volumes where the volumes are published",
		Long: `Agent runs on a host that consumes Nexstor volumes over NVMe/TCP. Every
--interval it looks at the host's NVMe subsystems that are Nexstor volumes
(subsystem NQN ` + agent.NexusNQNPrefix + `<volume-uuid>). When no path of one
is live, it asks the management service where the volume is published now
and connects that path (the same NQN: the kernel's native multipath puts it
under the same block device, and I/O queued while no path was live resumes
on it). Once the new path is live, dead paths elsewhere are deleted. A path
that is live but ANA inaccessible (a move under way) makes it ask at once.
When the path to where the volume is fails and no other path serves, it
reports the failure (ReportPathFailure): the management service probes the
nexus's node and moves the nexus if it does not serve, without waiting for
the node's heartbeats to stop.

The management service moves a volume's nexus when its node dies, or when
an administrator runs nexctl volume move; the agent is what lets the host
follow without an I/O error. It needs root and the nvme-tcp module, and a
certificate the management service accepts for reading volumes (the csi
identity from nexstor certgen).`,
		Example: `  nexstor agent -a mgmt-1:10124,mgmt-2:10124 --cert-dir /etc/nexstor/certs
  nexstor agent -a 10.0.2.2:10124 --insecure --address-map 127.0.0.1=10.0.2.2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(aps) == 0 {
				return fmt.Errorf("agent: no access point: give the management service's addresses with -a host:port[,host:port]")
			}
			amap := map[string]string{}
			for _, m := range addrMap {
				from, to, ok := strings.Cut(m, "=")
				if !ok || from == "" || to == "" {
					return fmt.Errorf("agent: --address-map %q: write it as FROM=TO, such as 127.0.0.1=10.0.2.2", m)
				}
				amap[from] = to
			}
			hostNQN, hostID, err := nvmehost.HostIdentity(nvmeDir)
			if err != nil {
				return fmt.Errorf("agent: %w", err)
			}
			cl, err := mgmtclient.New(aps, mgmtclient.Options{Insecure: insecure, TLS: security.Files{
				CACert: filepath.Join(certDir, "ca.crt"), Cert: filepath.Join(certDir, identity+".crt"), Key: filepath.Join(certDir, identity+".key")}})
			if err != nil {
				return fmt.Errorf("agent: %w", err)
			}
			defer cl.Close()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.Default()
			log.Info("agent started", "access_points", aps, "host_nqn", hostNQN, "interval", interval)
			return agent.New(agent.Config{Host: nvmehost.System(), Volumes: volumeGetter{cl}, HostNQN: hostNQN, HostID: hostID, Interval: interval,
				AddressMap: amap, CtrlLossTmo: ctrlLossTmo, ReportEvery: report, Log: log}).Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringSliceVarP(&aps, "access-points", "a", nil, "management service access points, host:port (comma-separated or repeated)")
	f.StringVar(&certDir, "cert-dir", config.DefaultCertDir, "directory with ca.crt and <identity>.crt/.key from nexstor certgen")
	f.StringVar(&identity, "identity", "csi", "certificate to present (<cert-dir>/<identity>.crt)")
	f.BoolVar(&insecure, "insecure", false, "plain-text gRPC, for systems run with allow_insecure")
	f.DurationVar(&interval, "interval", agent.DefaultInterval, "how often the paths are looked at")
	f.StringSliceVar(&addrMap, "address-map", nil, "FROM=TO: reach a target address FROM at TO (NAT, or a VM reaching its host)")
	f.StringVar(&nvmeDir, "nvme-config-dir", nvmehost.DefaultConfigDir, "where this host's hostnqn and hostid are (written when missing; shared with nvme-cli and the CSI node plugin)")
	f.DurationVar(&report, "report-every", agent.DefaultReportEvery, "how often at most a volume whose paths all failed is reported to the management service, which probes the nexus's node and moves the nexus when it does not serve (negative: never)")
	f.IntVar(&ctrlLossTmo, "ctrl-loss-tmo", agent.DefaultCtrlLossTmo, "seconds the kernel keeps retrying a path the agent connects (-1: forever)")
	return cmd
}

// volumeGetter reads volumes through the management service.
type volumeGetter struct{ cl *mgmtclient.Client }

func (g volumeGetter) GetVolume(ctx context.Context, id string) (*mgmtv1.Volume, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var v *mgmtv1.Volume
	err := g.cl.DoVolume(ctx, func(ctx context.Context, c mgmtv1.VolumeServiceClient) error {
		var err error
		v, err = c.GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: id})
		return err
	})
	return v, err
}

func (g volumeGetter) ReportPathFailure(ctx context.Context, id, uri, hostNQN string) (*mgmtv1.Volume, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var v *mgmtv1.Volume
	err := g.cl.DoVolume(ctx, func(ctx context.Context, c mgmtv1.VolumeServiceClient) error {
		var err error
		v, err = c.ReportPathFailure(ctx, &mgmtv1.ReportPathFailureRequest{Name: id, TargetUri: uri, HostNqn: hostNQN})
		return err
	})
	return v, err
}
