package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/control/config"
	ctlserver "github.com/nexstor/nexstor/internal/control/server"
)

// devReplica is the demo replica `nexstor dev` shares on node 0.
const devReplica = "demo"

func devCmd() *cobra.Command {
	var o ctlserver.DevOptions
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a whole system on this machine: etcd, the management service and N storage nodes",
		Long: `Dev runs a complete Nexstor system in one process for trying it out: --nodes
storage nodes (default 3), each with its own ports, data dir (<data-dir>/node<i>)
and a pool "p0" on a sparse file; node 0 is the access point, with the
embedded etcd and the management service. Nodes are formatted and join on
the first start. A thin 512MiB replica "demo" on node 0 is shared over NBD
and over NVMe/TCP (any host may connect).

Node 0 listens on 127.0.0.1 at the well-known ports (gRPC 10124, NBD 10809,
NVMe/TCP 4420, discovery 8009, etcd 2379-2380, metrics 9502); node i uses
each port + i. Only node 0 serves Prometheus metrics (on a free port when
9502 is taken; the banner prints the URL).
Everything listens on loopback only and without TLS (logged as such), so
nexctl on this machine needs no flags.

A later start on the same data dir brings back the same system: the same
ranks, pools, replica and shares. It prints how to reach them.`,
		Example: `  nexstor dev
  nexstor dev --nodes 1 --data-dir /tmp/nexstor-dev
  nexstor dev --grpc-port 20124 --nbd-port 20809 --nvmf-port 24420 --discovery-port 28009 --etcd-port 22379`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			slog.SetDefault(logger)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			o.Logger = logger
			o.Demo = devReplica
			o.Ready = func(sys ctlserver.DevSystem) { printDev(cmd.OutOrStdout(), sys) }
			err := ctlserver.RunDev(ctx, o)
			if err == nil {
				logger.Info("dev system stopped")
			}
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Nodes, "nodes", 3, "number of storage nodes")
	f.StringVar(&o.DataDir, "data-dir", "./nexstor-dev", "directory of the nodes' data dirs and pool files")
	f.IntVar(&o.GRPCPort, "grpc-port", config.DefaultPort, "gRPC port of node 0 (node i: port+i)")
	f.IntVar(&o.NBDPort, "nbd-port", 10809, "NBD port of node 0 (node i: port+i)")
	f.IntVar(&o.NVMfPort, "nvmf-port", 4420, "NVMe/TCP port of node 0 (node i: port+i)")
	f.IntVar(&o.DiscoveryPort, "discovery-port", 8009, "NVMe/TCP discovery port of node 0")
	f.IntVar(&o.EtcdPort, "etcd-port", config.DefaultEtcdClientPort, "client port of the embedded etcd (its peer port is the next one)")
	f.IntVar(&o.MetricsPort, "metrics-port", 0, "Prometheus /metrics port of node 0 (0: 9502, or a free port when 9502 is taken; -1 disables metrics)")
	f.StringVar(&o.PoolSize, "pool-size", "1GiB", "size of each node's sparse pool file")
	return cmd
}

// hostNQN is the NQN this machine's kernel initiator uses when it has one
// (/etc/nvme/hostnqn), else a fresh one: the dev share admits any host.
func hostNQN() string {
	if b, err := os.ReadFile("/etc/nvme/hostnqn"); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s
		}
	}
	return "nqn.2014-08.org.nvmexpress:uuid:" + uuid.NewString()
}

// printDev prints the nodes and how to reach the demo replica. Node 0's
// address is nexctl's default; other addresses are spelled out.
func printDev(w io.Writer, sys ctlserver.DevSystem) {
	node0 := sys.Configs[0].GRPCListen
	eng, aps := "", ""
	if _, port, _ := net.SplitHostPort(node0); port != fmt.Sprint(config.DefaultPort) {
		eng, aps = " --engine "+node0, " -a "+node0
	}
	members := append([]*mgmtv1.Member(nil), sys.Members...)
	sort.Slice(members, func(i, j int) bool { return members[i].Rank < members[j].Rank })
	fmt.Fprintf(w, "\nNexstor dev system %q is running: %d nodes, access point %s (no TLS, loopback only).\n\n",
		sys.Configs[0].Name, len(sys.Configs), node0)
	for _, m := range members {
		fmt.Fprintf(w, "  rank %d  %s  %s\n", m.Rank, m.Address, m.State)
	}
	if sys.MetricsURL != "" {
		fmt.Fprintf(w, "\n  metrics (node 0): %s\n", sys.MetricsURL)
	}
	printDevNexuses(w, sys)
	r := sys.Demo
	if r == nil {
		return
	}
	var nbdURI, nvmfURI string
	for _, sh := range r.Shares {
		switch sh.Protocol {
		case "nbd":
			nbdURI = sh.Uri
		case "nvmf":
			nvmfURI = sh.Uri
		}
	}
	fmt.Fprintf(w, "\n  replica %s (%s, thin) in pool %s on %s, shared at:\n", r.Name, output.Size(r.Size), r.Pool, node0)
	for _, sh := range r.Shares {
		fmt.Fprintf(w, "    %s\n", sh.Uri)
	}
	fmt.Fprintf(w, "\nTry it:\n  nexctl%s system query\n", aps)
	if nbdURI != "" {
		fmt.Fprintf(w, `  nbdinfo %s
  nbdcopy ./some.img %s    # write a file into the replica
  nbdcopy %s ./copy.img    # read the replica back
`, nbdURI, nbdURI, nbdURI)
	}
	if nvmfURI != "" {
		hostPort, nqn, _ := strings.Cut(strings.TrimPrefix(nvmfURI, "nvmf://"), "/")
		host, port, _ := net.SplitHostPort(hostPort)
		fmt.Fprintf(w, "  nexctl bench %s --time 5s    # load it from the Go initiator\n", nvmfURI)
		if d := sys.Configs[0].DiscoveryListen; d != "" {
			dhost, dport, _ := net.SplitHostPort(d)
			fmt.Fprintf(w, "  nvme discover -t tcp -a %s -s %s\n", dhost, dport)
		}
		fmt.Fprintf(w, "  nvme connect -t tcp -a %s -s %s -n %s --hostnqn %s\n", host, port, nqn, hostNQN())
	}
	fmt.Fprintf(w, "  nexctl%s replica list\n  nexctl%s pool get %s\n", eng, eng, r.Pool)
	if len(sys.Configs) > 1 {
		fmt.Fprintf(w, "  nexctl --engine %s pool list    # another node\n", sys.Configs[1].GRPCListen)
	}
	fmt.Fprintf(w, "\nPress Ctrl-C to stop; the next start brings back the same ranks, pools, replica and shares.\n")
}

// printDevNexuses lists the nexuses every node brought back, with their
// state and how many of their children are online, so that a restart that
// came back degraded says so at once.
func printDevNexuses(w io.Writer, sys ctlserver.DevSystem) {
	if len(sys.Nexuses) == 0 {
		return
	}
	fmt.Fprintf(w, "\n  nexuses:\n")
	for _, dn := range sys.Nexuses {
		n := dn.Nexus
		online := 0
		for _, c := range n.GetChildren() {
			if c.GetState() == enginev1.ChildState_CHILD_STATE_ONLINE {
				online++
			}
		}
		total := len(n.GetChildren()) + len(n.GetLeftOut())
		state := strings.ToLower(strings.TrimPrefix(n.GetState().String(), "NEXUS_STATE_"))
		fmt.Fprintf(w, "    %s on %s  %s  %d/%d children online", n.GetName(), sys.Configs[dn.Node].GRPCListen, state, online, total)
		if r := n.GetReason(); r != "" {
			fmt.Fprintf(w, "  (%s)", r)
		}
		fmt.Fprintln(w)
	}
}
