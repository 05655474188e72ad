package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
)

// checkNodeArg refuses an empty NODE before anything is dialled.
func checkNodeArg(cmd *cobra.Command, node string) error {
	if strings.TrimSpace(node) == "" {
		return usage(cmd, fmt.Errorf("NODE is empty: give a node's name, rank or UUID, as `nexctl node list` shows them"))
	}
	return nil
}

// nodeName is how a message names n: its name, else what the user gave.
func nodeName(n nodeView, arg string) string {
	if n.Name != "" {
		return n.Name
	}
	return arg
}

// plural is "1 replica" or "3 replicas".
func plural(n uint32, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.FormatUint(uint64(n), 10) + " " + many
}

// nodeDetail prints one node for people: who it is, its state with what
// an operator did to it, what it holds, and its drain.
func nodeDetail(w io.Writer, n nodeView) error {
	kv := []string{"Name", n.Name, "Rank", itoa(uint64(n.Rank)), "UUID", n.UUID, "Address", n.Address, "State", n.stateCell()}
	if n.Info != "" {
		kv = append(kv, "Info", n.Info)
	}
	kv = append(kv, "Cordoned", yesNo(n.Cordoned), "Replicas", itoa(uint64(n.Replicas)), "Nexuses", itoa(uint64(n.Nexuses)))
	if d := n.Drain; d != nil {
		kv = append(kv, "Drain", d.State, "Replicas left", itoa(uint64(d.ReplicasLeft)), "Drain started", d.Started)
	}
	if err := output.KeyValues(w, kv...); err != nil {
		return err
	}
	if d := n.Drain; d != nil && len(d.Blocked) > 0 {
		fmt.Fprintln(w, "\nBlocked:")
		for _, b := range d.Blocked {
			fmt.Fprintf(w, "  %s\n", b)
		}
	}
	return nil
}

// nexusNote says that a drain leaves the node's nexuses where they are,
// and how to move them; "" when it hosts none.
func nexusNote(n nodeView) string {
	nexuses := n.Nexuses
	if n.Drain != nil && n.Drain.Nexuses > 0 {
		nexuses = n.Drain.Nexuses
	}
	if nexuses == 0 {
		return ""
	}
	what := "the nexus of 1 volume"
	if nexuses != 1 {
		what = fmt.Sprintf("the nexuses of %d volumes", nexuses)
	}
	return fmt.Sprintf("Node %s still hosts %s: a drain does not move them. Move each such volume with "+
		"`nexctl volume unpublish V` and `nexctl volume publish V --node OTHER`, and reconnect its hosts.", n.Name, what)
}

// nodeOp runs one node operation (cordon, uncordon, drain) and returns the
// node it answered with.
func (a *app) nodeOp(cmd *cobra.Command, s *systemFlags, node string,
	op func(ctx context.Context, cl mgmtv1.VolumeServiceClient, req *mgmtv1.NodeRequest) (*mgmtv1.Node, error)) (nodeView, error) {
	if err := checkNodeArg(cmd, node); err != nil {
		return nodeView{}, err
	}
	var n *mgmtv1.Node
	err := a.volumeDo(cmd, s, false, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		n, err = op(ctx, cl, &mgmtv1.NodeRequest{Node: node})
		return err
	})
	if err != nil {
		return nodeView{}, err
	}
	return newNodeView(n), nil
}

// printNode prints n: with a headline and its detail for people, as a
// nodeView for scripts.
func (a *app) printNode(n nodeView, headline string, notes ...string) error {
	return output.Print(a.out, a.outFormat(), n, func(w io.Writer) error {
		if _, err := fmt.Fprintln(w, headline); err != nil {
			return err
		}
		fmt.Fprintln(w)
		if err := nodeDetail(w, n); err != nil {
			return err
		}
		for _, note := range notes {
			if note != "" {
				fmt.Fprintf(w, "\n%s\n", note)
			}
		}
		return nil
	})
}

func (a *app) nodeCordonCmd(s *systemFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "cordon NODE",
		Short: "Keep new replicas and nexuses off a node; what it holds stays",
		Long: `Cordon marks the node so that no new replica or nexus is placed on it: volume
create, set-replicas and the replacement of lost replicas place them
elsewhere. What the node holds stays and keeps serving. NODE is its name,
rank or UUID. Cordoning a cordoned node changes nothing.

To also move its replicas off, use ` + "`nexctl node drain`" + `; to put it back in
service, ` + "`nexctl node uncordon`" + `.`,
		Example: `  nexctl node cordon node-2
  nexctl node cordon 2 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := a.nodeOp(cmd, s, args[0], func(ctx context.Context, cl mgmtv1.VolumeServiceClient, req *mgmtv1.NodeRequest) (*mgmtv1.Node, error) {
				return cl.CordonNode(ctx, req)
			})
			if err != nil {
				return err
			}
			name := nodeName(n, args[0])
			return a.printNode(n, fmt.Sprintf("node %s cordoned: it gets no new replicas or nexuses; what it holds stays "+
				"(`nexctl node uncordon %s` undoes it)", name, name))
		},
	}
}

func (a *app) nodeUncordonCmd(s *systemFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "uncordon NODE",
		Short: "Put a cordoned or drained node back in service",
		Long: `Uncordon lets new replicas and nexuses be placed on the node again, and ends
its drain if it has one: replicas not yet replaced stay on the node, those
already replaced stay where they went. NODE is its name, rank or UUID.
Uncordoning a node that is not cordoned changes nothing.`,
		Example: `  nexctl node uncordon node-2`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := a.nodeOp(cmd, s, args[0], func(ctx context.Context, cl mgmtv1.VolumeServiceClient, req *mgmtv1.NodeRequest) (*mgmtv1.Node, error) {
				return cl.UncordonNode(ctx, req)
			})
			if err != nil {
				return err
			}
			return a.printNode(n, fmt.Sprintf("node %s uncordoned: new replicas and nexuses may be placed on it again", nodeName(n, args[0])))
		},
	}
}

// drainHeadline says where a drain stands.
func drainHeadline(n nodeView, arg string) string {
	name := nodeName(n, arg)
	d := n.Drain
	switch {
	case d == nil:
		return fmt.Sprintf("node %s is draining", name)
	case d.State == "drained":
		return fmt.Sprintf("node %s is drained: no replica or nexus of a volume is left on it", name)
	}
	s := fmt.Sprintf("node %s is %s: %s left to replace on other nodes", name, d.State, plural(d.ReplicasLeft, "replica", "replicas"))
	if d.Nexuses > 0 {
		s += fmt.Sprintf(", %s to move", plural(d.Nexuses, "nexus", "nexuses"))
	}
	if len(d.Blocked) > 0 {
		s += fmt.Sprintf(" (%d blocked for now, see below)", len(d.Blocked))
	}
	return s
}

func (a *app) nodeDrainCmd(s *systemFlags) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Cordon a node and move its replicas and nexuses to other nodes",
		Long: `Drain cordons the node (no new replica or nexus goes there) and has the
management service replace each replica of a volume on it by a new one on
another node: the new replica is added and copied in full before the old one
is removed, so no volume has fewer healthy copies on the way. The nexus of
each volume published on the node moves to another node, as
` + "`nexctl volume move`" + ` moves it: over NVMe/TCP the old path turns ANA
inaccessible and the new one is published optimized, so hosts whose multipath
follows the move (nexstor agent, the CSI node plugin) see no I/O error; an NBD
client must reconnect to the new address. It returns at once with the
drain's progress; node list shows the node draining, then drained (no
replica and no nexus left). Draining a node again changes nothing. NODE is
its name, rank or UUID.

What a drain does not do (yet):

  - A volume that is not published is copied through its nexus, so its
    replica is moved when the volume is next published; until then the
    drain lists it as blocked, saying so.

Blocked lists every replica that cannot be replaced now and why (no other
node fits the volume's placement, the volume is not published, ...); the
drain goes on by itself once the cause is gone. Uncordon ends a drain.

--wait then waits until the node is drained, printing the replicas left and
the blocked reasons when they change, for at most --timeout (default 30m
here). Ending the wait does not stop the drain. With -o json or yaml the
lines go to stderr and the node, once drained, to stdout.`,
		Example: `  nexctl node drain node-2
  nexctl node drain node-2 --wait --timeout 2h
  nexctl node list                  # STATE shows joined,draining then joined,drained
  nexctl event list --node node-2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !wait {
				n, err := a.nodeOp(cmd, s, args[0], func(ctx context.Context, cl mgmtv1.VolumeServiceClient, req *mgmtv1.NodeRequest) (*mgmtv1.Node, error) {
					return cl.DrainNode(ctx, req)
				})
				if err != nil {
					return err
				}
				return a.printNode(n, drainHeadline(n, args[0]), nexusNote(n))
			}
			return a.drainWait(cmd, s, args[0])
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the node is drained (at most --timeout, default 30m)")
	return cmd
}

// drainProgress prints a drain's progress while nexctl waits on it: the
// replicas left when they change, and the blocked reasons when they do.
type drainProgress struct {
	w       io.Writer
	name    string
	left    int64
	blocked string
}

func (p *drainProgress) show(n nodeView, now time.Time) {
	d := n.Drain
	if d == nil {
		return
	}
	st := stamp(now)
	if int64(d.ReplicasLeft) != p.left {
		fmt.Fprintf(p.w, "%s  node %s: %s left\n", st, p.name, plural(d.ReplicasLeft, "replica", "replicas"))
		p.left = int64(d.ReplicasLeft)
	}
	if b := strings.Join(d.Blocked, "\n"); b != p.blocked {
		if len(d.Blocked) == 0 {
			fmt.Fprintf(p.w, "%s  no longer blocked\n", st)
		}
		for _, r := range d.Blocked {
			fmt.Fprintf(p.w, "%s  blocked: %s\n", st, r)
		}
		p.blocked = b
	}
}

// sameNode reports whether n is the node the user named as arg (a name,
// rank or UUID), or has the UUID of the node the service answered with.
func sameNode(n nodeView, uuid, arg string) bool {
	if uuid != "" {
		return n.UUID == uuid
	}
	return n.Name == arg || n.UUID == arg || itoa(uint64(n.Rank)) == arg
}

// drainWait drains the node, then reads the nodes every second until it
// is drained, all within one bound (--timeout, else defaultWait).
func (a *app) drainWait(cmd *cobra.Command, s *systemFlags, arg string) error {
	if err := checkNodeArg(cmd, arg); err != nil {
		return err
	}
	c, err := s.mgmtClient(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	limit := a.waitLimit(cmd, defaultWait)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var answer *mgmtv1.Node
	err = c.DoVolume(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		answer, err = cl.DrainNode(ctx, &mgmtv1.NodeRequest{Node: arg})
		return err
	})
	if err != nil {
		return err
	}
	n := newNodeView(answer)
	name, id := nodeName(n, arg), n.UUID
	progress := a.progressOut(cmd)
	if a.outFormat() == output.Table {
		fmt.Fprintln(a.out, drainHeadline(n, arg))
		fmt.Fprintln(a.out)
		if err := nodeDetail(a.out, n); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "\nWaiting until node %s is drained (at most %v; ending the wait does not stop the drain):\n", name, limit)
	}
	track := &drainProgress{w: progress, name: name, left: -1}
	first := true
	check := func(n nodeView) (bool, error) {
		track.show(n, time.Now())
		// The drain's own answer may precede its status; a later read
		// without one means the node was uncordoned.
		reply := first
		first = false
		if n.Drain == nil && !n.Draining && !reply {
			return false, waitEnded(fmt.Sprintf("the drain of node %s ended before it finished: the node was uncordoned", name),
				fmt.Sprintf("drain it again with `nexctl node drain %s` if it is still wanted; `nexctl event list --node %s` says who", name, name))
		}
		return n.Drain != nil && n.Drain.State == "drained", nil
	}
	done, err := check(n)
	if err == nil && !done {
		var last nodeView
		last, err = pollUntil(ctx, c, waitPoll, progress, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) (nodeView, error) {
			resp, err := cl.ListNodes(ctx, &mgmtv1.ListNodesRequest{})
			if err != nil {
				return nodeView{}, err
			}
			for _, m := range resp.GetNodes() {
				if v := newNodeView(m); sameNode(v, id, arg) {
					return v, nil
				}
			}
			return nodeView{}, waitEnded(fmt.Sprintf("node %s is no longer a member of the system: it was removed while draining", name),
				"see `nexctl node list` and `nexctl event list`")
		}, check)
		if last.UUID != "" || last.Name != "" {
			n = last
		}
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			state := fmt.Sprintf("node %s is still draining", name)
			if d := n.Drain; d != nil {
				state += ": " + plural(d.ReplicasLeft, "replica", "replicas") + " left"
				if len(d.Blocked) > 0 {
					state += "; blocked: " + strings.Join(d.Blocked, "; ")
				}
			}
			return waitTimedOut(limit, state, fmt.Sprintf("the drain goes on without nexctl: follow it with `nexctl node list` and "+
				"`nexctl event list --node %s`, remove what blocks it, or wait longer with --timeout", name))
		}
		return err
	}
	return output.Print(a.out, a.outFormat(), n, func(w io.Writer) error {
		fmt.Fprintf(w, "node %s drained: no replica of a volume is left on it\n", name)
		if note := nexusNote(n); note != "" {
			fmt.Fprintln(w, note)
		}
		return nil
	})
}
