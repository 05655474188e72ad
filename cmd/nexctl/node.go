package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/spf13/cobra"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
)

// nodeView is the stable JSON/YAML form of a node of the system with its
// pool totals. Sizes are bytes.
type nodeView struct {
	Rank        uint32            `json:"rank" yaml:"rank"`
	Name        string            `json:"name" yaml:"name"`
	UUID        string            `json:"uuid" yaml:"uuid"`
	Address     string            `json:"address" yaml:"address"`
	State       string            `json:"state" yaml:"state"`
	Info        string            `json:"info,omitempty" yaml:"info,omitempty"`
	FaultDomain string            `json:"fault_domain,omitempty" yaml:"fault_domain,omitempty"`
	Labels      map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	HostNQN     string            `json:"host_nqn,omitempty" yaml:"host_nqn,omitempty"`
	Cordoned    bool              `json:"cordoned" yaml:"cordoned"`
	// Draining: the node is cordoned and its replicas are being replaced
	// on other nodes (node drain).
	Draining bool `json:"draining" yaml:"draining"`
	// Drain is the progress of the node's drain, from when it was drained
	// until it is uncordoned.
	Drain         *drainView `json:"drain,omitempty" yaml:"drain,omitempty"`
	LastHeartbeat string     `json:"last_heartbeat,omitempty" yaml:"last_heartbeat,omitempty"`
	Pools         uint32     `json:"pools" yaml:"pools"`
	Capacity      uint64     `json:"capacity" yaml:"capacity"`
	Free          uint64     `json:"free" yaml:"free"`
	Committed     uint64     `json:"committed" yaml:"committed"`
	Replicas      uint32     `json:"replicas" yaml:"replicas"`
	Nexuses       uint32     `json:"nexuses" yaml:"nexuses"`
}

// drainView is the stable JSON/YAML form of a node's drain.
type drainView struct {
	// State: draining (replicas left to replace) or drained.
	State string `json:"state" yaml:"state"`
	// ReplicasLeft: replicas of volumes still on the node.
	ReplicasLeft uint32 `json:"replicas_left" yaml:"replicas_left"`
	// Blocked says why replicas left cannot be replaced now, one line each.
	Blocked []string `json:"blocked,omitempty" yaml:"blocked,omitempty"`
	// Started is when the drain started (RFC 3339, UTC).
	Started string `json:"started,omitempty" yaml:"started,omitempty"`
	// Nexuses: nexuses of volumes on the node, which a drain does not move.
	Nexuses uint32 `json:"nexuses" yaml:"nexuses"`
}

func newNodeView(n *mgmtv1.Node) nodeView {
	m := n.GetMember()
	v := nodeView{Rank: m.GetRank(), Name: m.GetName(), UUID: m.GetUuid(), Address: m.GetAddress(), State: m.GetState(),
		Info: m.GetInfo(), FaultDomain: m.GetFaultDomain(), Labels: m.GetLabels(), HostNQN: m.GetHostNqn(),
		Cordoned: m.GetCordoned(), Draining: m.GetDraining(), LastHeartbeat: msTime(m.GetLastHeartbeatMs()), Pools: n.GetPools(),
		Capacity: n.GetCapacity(), Free: n.GetFree(), Committed: n.GetCommitted(), Replicas: n.GetReplicas(), Nexuses: n.GetNexuses()}
	if d := n.GetDrain(); d != nil {
		v.Drain = &drainView{State: d.GetState(), ReplicasLeft: d.GetReplicasLeft(), Blocked: d.GetBlocked(),
			Started: msTime(d.GetStartedMs()), Nexuses: d.GetNexuses()}
	}
	return v
}

// maintenance is what an operator did to the node: drained, draining,
// cordoned, or "" for none. A drain outranks the cordon it implies.
func (n nodeView) maintenance() string {
	switch {
	case n.Drain != nil && n.Drain.State != "" && n.Drain.State != "draining":
		return n.Drain.State
	case n.Draining || n.Drain != nil:
		return "draining"
	case n.Cordoned:
		return "cordoned"
	}
	return ""
}

// stateCell is the node's STATE for a table: its member state, and what
// an operator did to it after a comma (joined,cordoned).
func (n nodeView) stateCell() string {
	s := n.State
	if s == "" {
		s = "unknown"
	}
	if m := n.maintenance(); m != "" {
		s += "," + m
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (a *app) nodeCmd() *cobra.Command {
	s := &systemFlags{tls: &a.tls}
	cmd := &cobra.Command{
		Use:   "node",
		Short: "List the nodes of the system; cordon, uncordon and drain them (through the management service)",
		Long: `Node lists the members of the system with their storage, and takes them out
of service for maintenance: cordon keeps new replicas and nexuses off a node,
drain also moves its replicas to other nodes, uncordon puts it back in
service. NODE is a node's name, rank or UUID, as node list shows them.

Node talks to the management service on the access points (--access-points,
else $NEXSTOR_ACCESS_POINTS, else localhost:10124); the leader answers.`,
		Example: `  nexctl node list
  nexctl node drain node-2 --wait
  nexctl node uncordon node-2`,
	}
	s.addAccessPoints(cmd.PersistentFlags())
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the nodes: state, fault domain, labels and storage totals",
		Long: `List shows every member of the system: its rank and name, the address of its
control service, its state, fault domain and labels (what volume placement
selects on), and the totals of the pools it last reported: capacity, free
space, space committed to replicas (thin ones at their full size), replicas
and nexuses. The totals of a node that is not joined are its last report and
may have changed since.

STATE is the member's state (joined, stopped, unresponsive, excluded,
errored), then what an operator did to it, after a comma:

  cordoned   it gets no new replicas or nexuses; what it holds stays
  draining   cordoned, and its replicas are being replaced on other nodes
  drained    cordoned, and no replica of a volume is left on it

such as joined,draining. ` + "`nexctl node uncordon`" + ` clears all three. With -o json
or yaml, cordoned, draining and drain (state, replicas_left, blocked,
started, nexuses) say the same.`,
		Example: `  nexctl node list
  nexctl node list -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var resp *mgmtv1.ListNodesResponse
			err := a.volumeDo(cmd, s, false, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				resp, err = cl.ListNodes(ctx, &mgmtv1.ListNodesRequest{})
				return err
			})
			if err != nil {
				return err
			}
			views := make([]nodeView, 0, len(resp.GetNodes()))
			for _, n := range resp.GetNodes() {
				views = append(views, newNodeView(n))
			}
			sort.Slice(views, func(i, j int) bool { return views[i].Rank < views[j].Rank })
			return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error {
				t := output.NewTable(w, "RANK", "NAME", "ADDRESS", "STATE", "FAULT DOMAIN", "LABELS", "POOLS", "CAPACITY",
					"FREE", "COMMITTED", "REPLICAS", "NEXUSES")
				for _, n := range views {
					t.Row(itoa(uint64(n.Rank)), n.Name, n.Address, n.stateCell(), n.FaultDomain, selector(n.Labels), itoa(uint64(n.Pools)),
						output.Size(n.Capacity), output.Size(n.Free), output.Size(n.Committed), itoa(uint64(n.Replicas)),
						itoa(uint64(n.Nexuses)))
				}
				return t.Flush()
			})
		},
	}
	cmd.AddCommand(list, a.nodeCordonCmd(s), a.nodeUncordonCmd(s), a.nodeDrainCmd(s))
	return cmd
}

// systemPoolView is the stable JSON/YAML form of a pool of the system, as
// its node last reported it. Sizes are bytes.
type systemPoolView struct {
	Node string `json:"node" yaml:"node"`
	Rank uint32 `json:"rank" yaml:"rank"`
	// NodeState is the member's state: the pool of a node that is not
	// joined may have changed since its report.
	NodeState         string            `json:"node_state" yaml:"node_state"`
	Name              string            `json:"name" yaml:"name"`
	UUID              string            `json:"uuid" yaml:"uuid"`
	Disk              string            `json:"disk" yaml:"disk"`
	State             string            `json:"state" yaml:"state"`
	Reason            string            `json:"reason,omitempty" yaml:"reason,omitempty"`
	Capacity          uint64            `json:"capacity" yaml:"capacity"`
	Free              uint64            `json:"free" yaml:"free"`
	Committed         uint64            `json:"committed" yaml:"committed"`
	CommittedPercent  float64           `json:"committed_percent" yaml:"committed_percent"`
	OvercommitPercent uint32            `json:"overcommit_percent" yaml:"overcommit_percent"`
	ClusterSize       uint64            `json:"cluster_size" yaml:"cluster_size"`
	Labels            map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Replicas          uint32            `json:"replicas" yaml:"replicas"`
	// Reported is when the leader took the report (RFC 3339, UTC); empty
	// when it has none yet.
	Reported string `json:"reported,omitempty" yaml:"reported,omitempty"`

	reportedMs int64
}

func newSystemPoolView(np *mgmtv1.NodePool) systemPoolView {
	p := np.GetPool()
	return systemPoolView{Node: np.GetNode(), Rank: np.GetRank(), NodeState: np.GetNodeState(), Name: p.GetName(), UUID: p.GetUuid(),
		Disk: p.GetDisk(), State: p.GetState(), Reason: p.GetReason(), Capacity: p.GetCapacity(), Free: p.GetFree(),
		Committed: p.GetCommitted(), CommittedPercent: percentOf(p.GetCommitted(), p.GetCapacity()),
		OvercommitPercent: p.GetOvercommitPercent(), ClusterSize: p.GetClusterSize(), Labels: p.GetLabels(),
		Replicas: p.GetReplicas(), Reported: msTime(np.GetReportedMs()), reportedMs: np.GetReportedMs()}
}

// age is how long ago ms was, rounded to the second, for a table; "never"
// for 0. A clock behind the leader's reads as 0s rather than negative.
func age(ms int64, now time.Time) string {
	if ms == 0 {
		return "never"
	}
	d := max(now.Sub(time.UnixMilli(ms)).Round(time.Second), 0)
	return d.String()
}

// systemPoolTable prints the pools of the system, one row each.
func systemPoolTable(w io.Writer, pools []systemPoolView, now time.Time) error {
	t := output.NewTable(w, "NODE", "RANK", "NAME", "DISK", "STATE", "CAPACITY", "FREE", "COMMITTED", "REPLICAS", "REPORT AGE")
	for _, p := range pools {
		state := p.State
		if state == "" {
			state = "unknown"
		}
		if p.NodeState != "" && p.NodeState != "joined" {
			// The report is old news: say so next to the state.
			state += " (node " + p.NodeState + ")"
		}
		if p.State != "online" {
			// A pool that is not open has no figures to show.
			t.Row(p.Node, itoa(uint64(p.Rank)), p.Name, p.Disk, state, "", "", "", "", age(p.reportedMs, now))
			continue
		}
		t.Row(p.Node, itoa(uint64(p.Rank)), p.Name, p.Disk, state, output.Size(p.Capacity), output.Size(p.Free),
			fmt.Sprintf("%.1f%%", p.CommittedPercent), itoa(uint64(p.Replicas)), age(p.reportedMs, now))
	}
	if err := t.Flush(); err != nil {
		return err
	}
	for _, p := range pools {
		if p.Reason != "" {
			if _, err := fmt.Fprintf(w, "\n%s/%s: %s\n", p.Node, p.Name, p.Reason); err != nil {
				return err
			}
		}
	}
	return nil
}

// poolListMode says whether `pool list` asks one engine (true) or the
// management service. --engine asks the engine, --node or --access-points
// the service; given neither, $NEXSTOR_ENGINE asks the engine, and the
// service is asked otherwise. Both at once are a usage error.
func poolListMode(cmd *cobra.Command) (engine bool, err error) {
	f := cmd.Flags()
	sys := f.Changed("node") || f.Changed("access-points")
	switch {
	case f.Changed("engine") && sys:
		return false, usage(cmd, fmt.Errorf("--engine lists the pools of that one engine, and --node and --access-points "+
			"ask the management service for the pools of the system: give one or the other"))
	case f.Changed("engine"):
		return true, nil
	case sys:
		return false, nil
	}
	return os.Getenv("NEXSTOR_ENGINE") != "", nil
}

// systemPools lists the pools of the system, of one node when node is set.
func (a *app) systemPools(cmd *cobra.Command, s *systemFlags, node string) error {
	var resp *mgmtv1.ListPoolsResponse
	err := a.volumeDo(cmd, s, false, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		resp, err = cl.ListPools(ctx, &mgmtv1.ListPoolsRequest{Node: node})
		return err
	})
	if err != nil {
		return err
	}
	views := make([]systemPoolView, 0, len(resp.GetPools()))
	for _, p := range resp.GetPools() {
		views = append(views, newSystemPoolView(p))
	}
	sort.Slice(views, func(i, j int) bool {
		if views[i].Rank != views[j].Rank {
			return views[i].Rank < views[j].Rank
		}
		return views[i].Name < views[j].Name
	})
	now := time.Now()
	return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error { return systemPoolTable(w, views, now) })
}
