package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/control/config"
	ctlserver "github.com/nexstor/nexstor/internal/control/server"
	"github.com/nexstor/nexstor/internal/units"
)

// hostNQNFile is where this machine's kernel NVMe initiator keeps its host
// NQN (nvme-cli).
const hostNQNFile = "/etc/nvme/hostnqn"

func devCmd() *cobra.Command {
	var o ctlserver.DevOptions
	var demoSize string
	var steady bool
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a whole system on this machine: etcd, the management service, N storage nodes and a volume",
		Long: `Dev runs a complete Nexstor system in one process for trying it out: --nodes
storage nodes (default 3), named node-0, node-1, ..., each with its own ports,
data dir (<data-dir>/node<i>) and a pool "p0" on a sparse file; node 0 is the
access point, with the embedded etcd and the management service. Nodes are
formatted and join on the first start.

The management service then creates a thin volume "demo" (--demo, of
--demo-size) with a replica on each of min(3, nodes) nodes, and publishes it
on node-0 over NVMe/TCP: to this machine's host NQN only when
/etc/nvme/hostnqn exists, else to any host. A volume is exported over one
protocol at a time; the banner says how to switch it to NBD.

Node 0 listens on 127.0.0.1 at the well-known ports (gRPC 10124, NBD 10809,
NVMe/TCP 4420, discovery 8009, etcd 2379-2380, metrics 9502); node i uses
each port + i (NVMe/TCP discovery and etcd run on node 0 only). Every node
serves Prometheus metrics (node i on 9502+i, or on free ports when those are
taken; the banner prints the URLs); node 0's also has the volume series,
since it leads the management service.
Everything listens on loopback only and without TLS (logged as such), so
nexctl on this machine needs no flags.

A later start on the same data dir brings back the same system: the same
ranks, pools and volume, published as it was left, with its data. Ctrl-C
closes every nexus before any node stops, so a restart needs no rebuild.`,
		Example: `  nexstor dev
  nexstor dev --nodes 1 --data-dir /tmp/nexstor-dev
  nexstor dev --demo-size 2GiB --pool-size 4GiB
  nexstor dev --grpc-port 20124 --nbd-port 20809 --nvmf-port 24420 --discovery-port 28009 --etcd-port 22379 --metrics-port 29502`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			steadyMonitor(steady)
			if o.Demo != "" {
				n, err := units.ParseSize(demoSize)
				if err != nil || n <= 0 || n%4096 != 0 {
					return fmt.Errorf("--demo-size %q: give a size above 0 in whole 4KiB blocks, such as 512MiB", demoSize)
				}
				o.DemoSize = uint64(n)
			}
			logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			slog.SetDefault(logger)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			o.Logger = logger
			o.DemoHostNQN = readHostNQN(hostNQNFile)
			o.Ready = func(sys ctlserver.DevSystem) { printDev(cmd.OutOrStdout(), sys, readHostNQN(hostNQNFile)) }
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
	f.IntVar(&o.MetricsPort, "metrics-port", 0, "Prometheus /metrics port of node 0, node i: port+i (0: 9502, or free ports when those are taken; -1 disables metrics)")
	f.StringVar(&o.PoolSize, "pool-size", "1GiB", "size of each node's sparse pool file")
	f.StringVar(&o.Demo, "demo", "demo", `name of the demo volume ("" for none)`)
	f.StringVar(&demoSize, "demo-size", "512MiB", "size of the demo volume (thin), in whole 4KiB blocks")
	f.BoolVar(&steady, "steady-monitor", false, steadyMonitorUsage)
	return cmd
}

// readHostNQN returns the host NQN in path (nvme-cli's /etc/nvme/hostnqn),
// "" when there is none.
func readHostNQN(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// printDev prints the nodes, their metrics, and how to reach the demo
// volume. Node 0's address is nexctl's default; other addresses are
// spelled out. localNQN is this machine's host NQN ("" when unknown).
func printDev(w io.Writer, sys ctlserver.DevSystem, localNQN string) {
	node0 := sys.Configs[0].GRPCListen
	eng, aps := "", ""
	if _, port, _ := net.SplitHostPort(node0); port != fmt.Sprint(config.DefaultPort) {
		eng, aps = " --engine "+node0, " -a "+node0
	}
	members := append([]*mgmtv1.Member(nil), sys.Members...)
	sort.Slice(members, func(i, j int) bool { return members[i].Rank < members[j].Rank })
	fmt.Fprintf(w, "\nNexstor dev system %q is running: %s, access point %s (no TLS, loopback only).\n\n",
		sys.Configs[0].Name, plural(len(sys.Configs), "node"), node0)
	for _, m := range members {
		fmt.Fprintf(w, "  rank %d  %s  %s  %s\n", m.Rank, m.GetName(), m.Address, m.State)
	}
	if len(sys.MetricsURLs) > 0 {
		fmt.Fprintf(w, "\n  metrics:\n")
		for i, u := range sys.MetricsURLs {
			note := ""
			if i == 0 {
				note = "    # and the volumes: node-0 leads the management service"
			}
			fmt.Fprintf(w, "    %s  %s%s\n", sys.Configs[i].NodeName, u, note)
		}
	}
	printDevNexuses(w, sys)
	v := sys.Demo
	if v == nil {
		fmt.Fprintf(w, "\nTry it:\n  nexctl%s system query\n  nexctl%s volume list\n  nexctl%s pool list\n", aps, aps, eng)
		fmt.Fprintf(w, "\nPress Ctrl-C to stop; the next start brings back the same ranks and pools.\n")
		return
	}
	name := v.GetSpec().GetName()
	st := v.GetStatus()
	var nodes []string
	for _, r := range st.GetReplicas() {
		nodes = append(nodes, r.GetNode())
	}
	slices.Sort(nodes) // by name: ranks follow the order nodes joined in
	thin := "thick"
	if v.GetSpec().GetThin() {
		thin = "thin"
	}
	fmt.Fprintf(w, "\n  volume %s: %s %s, %s (%s): %s, %d/%d healthy", name, output.Size(v.GetSpec().GetSize()), thin,
		plural(int(v.GetSpec().GetReplicas()), "replica"), strings.Join(nodes, ", "), st.GetPhase(), st.GetHealthy(), v.GetSpec().GetReplicas())
	if r := st.GetReason(); r != "" {
		fmt.Fprintf(w, " (%s)", r)
	}
	fmt.Fprintln(w)
	t := st.GetTarget()
	if t != nil {
		fmt.Fprintf(w, "    published on %s over %s: %s\n", t.GetNode(), t.GetProtocol(), t.GetUri())
	}
	fmt.Fprintf(w, "\nTry it:\n  nexctl%s system query\n  nexctl%s volume list\n  nexctl%s volume get %s\n", aps, aps, aps, name)
	switch t.GetProtocol() {
	case "nvmf":
		host, port, _ := net.SplitHostPort(strings.SplitN(strings.TrimPrefix(t.GetUri(), "nvmf://"), "/", 2)[0])
		hostNQN := localNQN
		if len(t.GetHostNqns()) == 1 {
			hostNQN = t.GetHostNqns()[0] // the one host admitted
		}
		withNQN := ""
		if hostNQN != "" {
			withNQN = " --hostnqn " + hostNQN
		}
		fmt.Fprintf(w, "  nexctl bench %s --time 5s%s    # load it from the Go initiator (reads)\n", t.GetUri(), withNQN)
		if d := sys.Configs[0].DiscoveryListen; d != "" {
			dhost, dport, _ := net.SplitHostPort(d)
			fmt.Fprintf(w, "  nvme discover -t tcp -a %s -s %s\n", dhost, dport)
		}
		fmt.Fprintf(w, "  nvme connect -t tcp -a %s -s %s -n %s%s    # modprobe nvme-tcp first\n", host, port, t.GetNqn(), withNQN)
		nbd := "nbd://" + devNodeConfig(sys, t.GetNode()).NBDListen + "/nexus/" + name
		fmt.Fprintf(w, "  # NBD instead (a volume is exported over one protocol at a time):\n")
		fmt.Fprintf(w, "  nexctl%s volume unpublish %s && nexctl%s volume publish %s --node %s --protocol nbd\n", aps, name, aps, name, t.GetNode())
		fmt.Fprintf(w, "  nbdinfo %s\n  nbdcopy ./some.img %s    # write a file into the volume\n", nbd, nbd)
	case "nbd":
		withNQN := ""
		if localNQN != "" {
			withNQN = " --host-nqn " + localNQN
		}
		fmt.Fprintf(w, `  nbdinfo %s
  nbdcopy ./some.img %s    # write a file into the volume
  nbdcopy %s ./copy.img    # read the volume back
  # NVMe/TCP instead (a volume is exported over one protocol at a time):
  nexctl%s volume unpublish %s && nexctl%s volume publish %s --node %s --protocol nvmf%s
`, t.GetUri(), t.GetUri(), t.GetUri(), aps, name, aps, name, t.GetNode(), withNQN)
	}
	fmt.Fprintf(w, "  nexctl%s pool get p0\n", eng)
	if len(sys.Configs) > 1 {
		fmt.Fprintf(w, "  nexctl --engine %s pool list    # another node\n", sys.Configs[1].GRPCListen)
	}
	fmt.Fprintf(w, "\nPress Ctrl-C to stop; the next start brings back the same ranks, pools and volume.\n")
}

// plural is "1 node", "3 nodes".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// devNodeConfig is the configuration of the node of that name, node 0's
// when none has it.
func devNodeConfig(sys ctlserver.DevSystem, name string) *config.Server {
	for _, c := range sys.Configs {
		if c.NodeName == name {
			return c
		}
	}
	return sys.Configs[0]
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
