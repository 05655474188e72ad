package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/units"
)

func (a *app) nexusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "nexus",
		Short: "Create and manage nexuses: mirrors over replicas",
		Long: `A nexus mirrors one volume synchronously over N replicas (its children):
writes go to every healthy child, reads to one. Children are URIs:

  bdev:///<replica-uuid>       a replica of the node hosting the nexus
  nvmf://HOST:PORT/<nqn>       a replica of another node, shared over nvmf

A child that fails an I/O is faulted and the nexus goes on with the others;
the health of the children is persisted before the failed I/O is answered,
so a nexus recreated after a restart never reads a stale child. A faulted
child comes back with add-child (a full rebuild), an offline one with
online-child (only what was written while it was away). A child that
cannot be opened when its node restarts a cleanly closed nexus waits
offline (open-failed): bring it back with online-child once it is
reachable, or with add-child if its replica was recreated meanwhile.

A nexus is published over NVMe/TCP (one subsystem per nexus, NQN
nqn.2024-11.io.nexstor:nexus:<uuid>) or NBD (export nexus/<name>).`,
		Example: `  nexctl replica share r2 --protocol nvmf                  # on node B
  nexctl nexus create vol1 --child bdev:///<r1-uuid> --child nvmf://nodeb:4420/<r2-nqn>
  nexctl nexus publish vol1 --protocol nvmf
  nexctl nexus get vol1
  nexctl nexus add-child vol1 nvmf://nodec:4420/<r3-nqn> --wait`,
	}
	cmd.AddCommand(a.nexusCreateCmd(), a.nexusListCmd(), a.nexusGetCmd(), a.nexusDestroyCmd(),
		a.nexusPublishCmd(), a.nexusUnpublishCmd(), a.nexusResizeCmd(),
		a.nexusChildCmd("add-child", "Add a child, or re-add a faulted one, and rebuild it fully",
			`Add-child opens the child and copies the whole nexus to it while I/O goes
on. It becomes online when the rebuild completes; follow it with --wait or
'nexctl nexus rebuild status NAME --watch'.`, true,
			func(c *engineclient.Client, ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
				return c.AddChild(ctx, r)
			}),
		a.nexusChildCmd("remove-child", "Remove a child from a nexus",
			`Remove-child stops any rebuild of the child and removes it. The last healthy
child cannot be removed. The replica itself is left as it is.`, false,
			func(c *engineclient.Client, ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
				return c.RemoveChild(ctx, r)
			}),
		a.nexusChildCmd("fault-child", "Take a child out of service",
			`Fault-child stops all I/O to the child; it is recorded as faulted (admin) and
must be rebuilt with add-child to come back. The last healthy child cannot be
faulted.`, false,
			func(c *engineclient.Client, ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
				return c.FaultChild(ctx, r)
			}),
		a.nexusChildCmd("offline-child", "Take a child out of service for a while",
			`Offline-child stops I/O to the child and records which segments are written
meanwhile, so that online-child copies only those.`, false,
			func(c *engineclient.Client, ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
				return c.OfflineChild(ctx, r)
			}),
		a.nexusChildCmd("online-child", "Bring an offline child back with a partial rebuild",
			`Online-child reopens an offline child and copies to it only the segments
written while it was away.`, true,
			func(c *engineclient.Client, ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error) {
				return c.OnlineChild(ctx, r)
			}),
		a.nexusRebuildCmd(), a.nexusVerifyCmd())
	return cmd
}

func (a *app) printNexus(n *enginev1.Nexus) error {
	v := newNexusView(n)
	return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error { return nexusDetail(w, v) })
}

func (a *app) nexusCreateCmd() *cobra.Command {
	var size, uuid, source, store string
	var children []string
	var force, allowDegraded, verify bool
	cmd := &cobra.Command{
		Use:   "create NAME --child URI...",
		Short: "Create a nexus over children",
		Long: `Create opens the children, claims them (each replica is owned by this nexus
from now on, and refuses the I/O of any older nexus) and starts a mirror over
them. --size defaults to the smallest child.

Which children hold current data:
  - A child that the health store records as out of date (from an earlier
    nexus of the same --uuid) is refused unless --force is given.
  - With no health record (a new nexus, or one destroyed and created again),
    nothing says which children agree. One is the source and the others are
    rebuilt from it before they are read: the child --source names, else the
    one with the highest fencing epoch (the one written last). Fresh thin
    replicas hold nothing and need no copy. --verify-in-sync compares the
    children first and skips the copy when they are identical.
  - A replica another nexus owns is refused, naming it.

A child that cannot be opened fails the command, naming each child and why,
unless --allow-degraded creates the nexus without it. Creating the same nexus
again (the same --uuid and children) prints it.`,
		Example: `  nexctl nexus create vol1 --child bdev:///9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e \
      --child nvmf://10.0.0.6:4420/nqn.2024-11.io.nexstor:replica:0d6f1b7a-9c3e-4c55-8e21-9b2e8c1a3f4d
  nexctl nexus create vol2 --size 1GiB --child bdev:///<uuid1> --child bdev:///<uuid2>`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var n uint64
			if size != "" {
				var err error
				if n, err = parseSize(cmd, "size", size); err != nil {
					return err
				}
			}
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				r, err := c.CreateNexus(ctx, &enginev1.CreateNexusRequest{Name: args[0], Uuid: uuid, Size: n, Children: children,
					Force: force, AllowDegraded: allowDegraded, Source: source, VerifyInSync: verify, HealthStore: store})
				if err != nil {
					return err
				}
				return a.printNexus(r)
			})
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "size, e.g. 1GiB (default: the smallest child)")
	cmd.Flags().StringArrayVar(&children, "child", nil, "child URI, bdev:///<replica-uuid> or nvmf://HOST:PORT/<nqn>; repeatable (required)")
	cmd.Flags().StringVar(&uuid, "uuid", "", "use this UUID instead of a generated one")
	cmd.Flags().BoolVar(&force, "force", false, "trust children the health store records as out of date")
	cmd.Flags().BoolVar(&allowDegraded, "allow-degraded", false, "create the nexus even when some children cannot be opened")
	cmd.Flags().StringVar(&source, "source", "", "without a health record: the child the others are rebuilt from")
	cmd.Flags().BoolVar(&verify, "verify-in-sync", false, "without a health record: compare the children and skip the copy if identical")
	cmd.Flags().StringVar(&store, "health-store", "local", "where the children's health is kept: local (this node) or system (the management service, for a nexus that may move between nodes)")
	cmd.MarkFlagRequired("child")
	return cmd
}

func (a *app) nexusListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List nexuses",
		Example: `  nexctl nexus list
  nexctl nexus list -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				resp, err := c.ListNexuses(ctx, &enginev1.ListNexusesRequest{})
				if err != nil {
					return err
				}
				views := []nexusView{}
				for _, n := range resp.GetNexuses() {
					views = append(views, newNexusView(n))
				}
				return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error { return nexusTable(w, views) })
			})
		},
	}
}

func (a *app) nexusGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show a nexus with its children and rebuilds",
		Example: `  nexctl nexus get vol1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				n, err := c.GetNexus(ctx, &enginev1.GetNexusRequest{Name: args[0]})
				if err != nil {
					return err
				}
				return a.printNexus(n)
			})
		},
	}
}

func (a *app) nexusDestroyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "destroy NAME",
		Short: "Unpublish and close a nexus, and forget it",
		Long: `Destroy withdraws the nexus's export, closes it and deletes its health record.
The children's replicas and their data are left as they are.`,
		Example: `  nexctl nexus destroy vol1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				if _, err := c.DestroyNexus(ctx, &enginev1.DestroyNexusRequest{Name: args[0]}); err != nil {
					return err
				}
				return a.done(fmt.Sprintf("nexus %s destroyed", args[0]))
			})
		},
	}
}

func (a *app) nexusPublishCmd() *cobra.Command {
	var protocol string
	var hosts []string
	cmd := &cobra.Command{
		Use:   "publish NAME",
		Short: "Export a nexus and print its URI",
		Long: `Publish exports the nexus and prints the URI clients connect to; it is
remembered across server restarts.

  nvmf   nvmf://HOST:PORT/nqn.2024-11.io.nexstor:nexus:<uuid>, namespace 1;
         --allowed-host limits it to those host NQNs, none allows any host
  nbd    nbd://HOST:PORT/nexus/<name>`,
		Example: `  nexctl nexus publish vol1 --protocol nvmf --allowed-host "$(cat /etc/nvme/hostnqn)"
  nexctl nexus publish vol1 --protocol nbd`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				n, err := c.PublishNexus(ctx, &enginev1.PublishNexusRequest{Name: args[0], Protocol: protocol, AllowedHosts: hosts})
				if err != nil {
					return err
				}
				v := newNexusView(n)
				return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error {
					_, err := fmt.Fprintln(w, n.GetShare().GetUri())
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&protocol, "protocol", "nvmf", "protocol: nvmf or nbd")
	cmd.Flags().StringSliceVar(&hosts, "allowed-host", nil, "host NQN allowed to connect (nvmf only); repeatable")
	return cmd
}

func (a *app) nexusResizeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "resize NAME SIZE",
		Short: "Grow a nexus online",
		Long: `Resize grows the nexus to SIZE while I/O goes on. Every child must already
hold SIZE bytes: grow the replicas first (nexctl replica resize, with --owner
the nexus's UUID when a nexus owns them). A nexus cannot shrink, and a resize
waits for no rebuild: it is refused while one runs.

Hosts see the new size: over NVMe/TCP the namespace grows and connected hosts
get a namespace-attribute-changed event (Linux rescans it; grow the file
system afterwards); NBD clients see it when they connect again.`,
		Example: `  nexctl replica resize r1 --size 20GiB --owner <nexus-uuid>     # every child first
  nexctl nexus resize vol1 20GiB`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := units.ParseSize(args[1])
			if err != nil {
				return usage(cmd, fmt.Errorf("SIZE: %w", err))
			}
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				r, err := c.ResizeNexus(ctx, &enginev1.ResizeNexusRequest{Name: args[0], Size: uint64(n)})
				if err != nil {
					return err
				}
				return a.printNexus(r)
			})
		},
	}
}

func (a *app) nexusUnpublishCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "unpublish NAME",
		Short:   "Stop exporting a nexus",
		Example: `  nexctl nexus unpublish vol1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				if _, err := c.UnpublishNexus(ctx, &enginev1.UnpublishNexusRequest{Name: args[0]}); err != nil {
					return err
				}
				return a.done(fmt.Sprintf("nexus %s unpublished", args[0]))
			})
		},
	}
}

type childCall func(c *engineclient.Client, ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Nexus, error)

// nexusChildCmd builds one of the child commands; rebuilds offer --wait.
func (a *app) nexusChildCmd(use, short, long string, rebuilds bool, call childCall) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:     use + " NEXUS CHILD-URI",
		Short:   short,
		Long:    long,
		Example: fmt.Sprintf("  nexctl nexus %s vol1 nvmf://10.0.0.6:4420/nqn.2024-11.io.nexstor:replica:<uuid>", use),
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.engine(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := a.ctx()
			n, err := call(c, ctx, &enginev1.ChildRequest{Nexus: args[0], Child: args[1]})
			cancel()
			if err != nil {
				return err
			}
			if !wait {
				return a.printNexus(n)
			}
			return a.watchRebuild(cmd.Context(), c, args[0], args[1], true)
		},
	}
	if rebuilds {
		cmd.Flags().BoolVar(&wait, "wait", false, "wait for the rebuild to finish, showing its progress; fail if it does not complete")
	}
	return cmd
}

func (a *app) nexusRebuildCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rebuild",
		Short: "Follow and control the rebuilds of a nexus",
		Long: `A rebuild copies the nexus to a new (or returning) child while I/O goes on.
It can be paused, resumed and stopped; a stopped rebuild leaves the child
faulted (out-of-sync).`,
	}
	var watch bool
	status := &cobra.Command{
		Use:   "status NEXUS [CHILD-URI]",
		Short: "Show rebuild progress: bytes, percent, rate, ETA",
		Long: `Status shows the running rebuilds of the nexus and the last finished one of
each child. --watch follows one rebuild (the only running one when no child
is given) until it finishes, as a live progress bar on a terminal.`,
		Example: `  nexctl nexus rebuild status vol1
  nexctl nexus rebuild status vol1 --watch
  nexctl nexus rebuild status vol1 nvmf://10.0.0.6:4420/<nqn> -o json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.engine(cmd)
			if err != nil {
				return err
			}
			child := ""
			if len(args) == 2 {
				child = args[1]
			}
			if watch {
				return a.watchRebuild(cmd.Context(), c, args[0], child, false)
			}
			ctx, cancel := a.ctx()
			defer cancel()
			resp, err := c.RebuildStatus(ctx, &enginev1.RebuildStatusRequest{Nexus: args[0], Child: child})
			if err != nil {
				return err
			}
			views := []rebuildView{}
			for _, r := range resp.GetRebuilds() {
				views = append(views, newRebuildView(r))
			}
			return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error { return rebuildTable(w, views) })
		},
	}
	status.Flags().BoolVarP(&watch, "watch", "w", false, "follow the rebuild until it finishes")
	cmd.AddCommand(status)
	for _, ctl := range []struct {
		use, short string
		call       func(*engineclient.Client, context.Context, *enginev1.ChildRequest) (*enginev1.Rebuild, error)
	}{
		{"pause", "Pause a rebuild (the child keeps receiving writes)", func(c *engineclient.Client, ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Rebuild, error) {
			return c.PauseRebuild(ctx, r)
		}},
		{"resume", "Resume a paused rebuild", func(c *engineclient.Client, ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Rebuild, error) {
			return c.ResumeRebuild(ctx, r)
		}},
		{"stop", "Stop a rebuild; the child is left faulted", func(c *engineclient.Client, ctx context.Context, r *enginev1.ChildRequest) (*enginev1.Rebuild, error) {
			return c.StopRebuild(ctx, r)
		}},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:     ctl.use + " NEXUS CHILD-URI",
			Short:   ctl.short,
			Example: fmt.Sprintf("  nexctl nexus rebuild %s vol1 nvmf://10.0.0.6:4420/<nqn>", ctl.use),
			Args:    cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
					r, err := ctl.call(c, ctx, &enginev1.ChildRequest{Nexus: args[0], Child: args[1]})
					if err != nil {
						return err
					}
					v := newRebuildView(r)
					return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error { return rebuildTable(w, []rebuildView{v}) })
				})
			},
		})
	}
	return cmd
}

// isTerminal reports whether w is a terminal, where progress is redrawn in
// place; elsewhere (pipes, logs) one line is printed per update.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// watchRebuild follows a rebuild until it finishes and prints its final
// status; mustComplete makes anything but completion an error.
func (a *app) watchRebuild(ctx context.Context, c *engineclient.Client, nexusName, child string, mustComplete bool) error {
	if ctx == nil {
		ctx = context.Background()
	}
	tty := isTerminal(a.out) && a.outFormat() == output.Table
	var last *enginev1.Rebuild
	for {
		cctx, cancel := context.WithTimeout(ctx, a.timeout)
		resp, err := c.RebuildStatus(cctx, &enginev1.RebuildStatusRequest{Nexus: nexusName, Child: child})
		cancel()
		if err != nil {
			return err
		}
		var cur *enginev1.Rebuild
		for _, r := range resp.GetRebuilds() {
			if child == "" && r.GetState() != "running" && r.GetState() != "paused" {
				continue
			}
			cur = r
			break
		}
		if cur == nil {
			if last == nil {
				return fmt.Errorf("nexus %s: no rebuild is running (see `nexctl nexus rebuild status %s`)", nexusName, nexusName)
			}
			break // the watched rebuild finished and left the running set
		}
		last = cur
		if cur.GetState() != "running" && cur.GetState() != "paused" {
			break
		}
		if a.outFormat() == output.Table {
			line := progressLine(newRebuildView(cur))
			if tty {
				fmt.Fprintf(a.out, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(a.out, line)
			}
		}
		child = cur.GetChild()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if tty {
		fmt.Fprint(a.out, "\r\033[K")
	}
	if child != "" && last.GetState() == "running" {
		// Fetch the final record of the watched child.
		cctx, cancel := context.WithTimeout(ctx, a.timeout)
		resp, err := c.RebuildStatus(cctx, &enginev1.RebuildStatusRequest{Nexus: nexusName, Child: child})
		cancel()
		if err == nil && len(resp.GetRebuilds()) > 0 {
			last = resp.GetRebuilds()[0]
		}
	}
	v := newRebuildView(last)
	if err := output.Print(a.out, a.outFormat(), v, func(w io.Writer) error { return rebuildTable(w, []rebuildView{v}) }); err != nil {
		return err
	}
	if mustComplete && v.State != "completed" {
		return fmt.Errorf("nexus %s: rebuild of %s ended %s: %s", nexusName, v.Child, v.State, v.Error)
	}
	return nil
}

// progressLine draws a rebuild as a bar with bytes, percent, rate and ETA.
func progressLine(r rebuildView) string {
	const width = 30
	filled := int(r.Percent / 100 * width)
	filled = max(0, min(width, filled))
	bar := strings.Repeat("#", filled) + strings.Repeat("-", width-filled)
	eta := "-"
	if r.ETASeconds > 0 {
		eta = (time.Duration(r.ETASeconds) * time.Second).String()
	}
	state := ""
	if r.State == "paused" {
		state = " (paused)"
	}
	return fmt.Sprintf("[%s] %5.1f%%  %s / %s  %s/s  ETA %s%s", bar, r.Percent,
		output.Size(r.DoneBytes), output.Size(r.TotalBytes), output.Size(uint64(r.BytesPerSecond)), eta, state)
}

func (a *app) nexusVerifyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "verify NAME",
		Short: "Compare the children of a nexus",
		Long: `Verify compares the online children segment by segment while I/O goes on,
and reports the ranges whose content differs. It changes nothing. It fails
when the children differ.`,
		Example: `  nexctl nexus verify vol1
  nexctl nexus verify vol1 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				resp, err := c.Verify(ctx, &enginev1.VerifyRequest{Nexus: args[0]})
				if err != nil {
					return err
				}
				v := verifyView{Segments: resp.GetSegments(), Children: resp.GetChildren(), Identical: len(resp.GetMismatches()) == 0,
					Mismatches: []rangeView{}}
				for _, m := range resp.GetMismatches() {
					v.Mismatches = append(v.Mismatches, rangeView{Offset: m.GetOffset(), Length: m.GetLength()})
				}
				if err := output.Print(a.out, a.outFormat(), v, func(w io.Writer) error { return verifyTable(w, v) }); err != nil {
					return err
				}
				if !v.Identical {
					return fmt.Errorf("nexus %s: the children differ in %d ranges", args[0], len(v.Mismatches))
				}
				return nil
			})
		},
	}
}

// nexusView is the stable JSON/YAML form of a nexus. Sizes are bytes.
type nexusView struct {
	Name      string        `json:"name" yaml:"name"`
	UUID      string        `json:"uuid" yaml:"uuid"`
	Size      uint64        `json:"size" yaml:"size"`
	BlockSize uint32        `json:"block_size" yaml:"block_size"`
	State     string        `json:"state" yaml:"state"`
	Reason    string        `json:"reason,omitempty" yaml:"reason,omitempty"`
	Children  []childView   `json:"children" yaml:"children"`
	Share     *shareView    `json:"share,omitempty" yaml:"share,omitempty"`
	LeftOut   []leftOutView `json:"left_out,omitempty" yaml:"left_out,omitempty"`
	// Epoch is the fencing epoch its children hold for it.
	Epoch uint64 `json:"epoch" yaml:"epoch"`
}

type childView struct {
	URI        string       `json:"uri" yaml:"uri"`
	State      string       `json:"state" yaml:"state"`
	Reason     string       `json:"reason,omitempty" yaml:"reason,omitempty"`
	Local      bool         `json:"local" yaml:"local"`
	LastError  string       `json:"last_error,omitempty" yaml:"last_error,omitempty"`
	DirtyBytes uint64       `json:"dirty_bytes,omitempty" yaml:"dirty_bytes,omitempty"`
	Rebuild    *rebuildView `json:"rebuild,omitempty" yaml:"rebuild,omitempty"`
	// Identity is the replica the nexus admitted as this child.
	Identity string `json:"identity,omitempty" yaml:"identity,omitempty"`
}

// rebuildView is the stable form of a rebuild; rate in bytes per second.
type rebuildView struct {
	Child          string  `json:"child" yaml:"child"`
	State          string  `json:"state" yaml:"state"`
	Partial        bool    `json:"partial" yaml:"partial"`
	Source         string  `json:"source,omitempty" yaml:"source,omitempty"`
	TotalBytes     uint64  `json:"total_bytes" yaml:"total_bytes"`
	DoneBytes      uint64  `json:"done_bytes" yaml:"done_bytes"`
	Percent        float64 `json:"percent" yaml:"percent"`
	BytesPerSecond float64 `json:"bytes_per_second" yaml:"bytes_per_second"`
	ETASeconds     float64 `json:"eta_seconds" yaml:"eta_seconds"`
	Error          string  `json:"error,omitempty" yaml:"error,omitempty"`
}

type verifyView struct {
	Identical  bool        `json:"identical" yaml:"identical"`
	Segments   uint64      `json:"segments" yaml:"segments"`
	Children   []string    `json:"children" yaml:"children"`
	Mismatches []rangeView `json:"mismatches" yaml:"mismatches"`
}

type rangeView struct {
	Offset uint64 `json:"offset" yaml:"offset"`
	Length uint64 `json:"length" yaml:"length"`
}

func newRebuildView(r *enginev1.Rebuild) rebuildView {
	return rebuildView{Child: r.GetChild(), State: r.GetState(), Partial: r.GetPartial(), Source: r.GetSource(),
		TotalBytes: r.GetTotalBytes(), DoneBytes: r.GetDoneBytes(), Percent: r.GetPercent(),
		BytesPerSecond: r.GetBytesPerSecond(), ETASeconds: r.GetEtaSeconds(), Error: r.GetError()}
}

// leftOutView is a child left out when the nexus was recreated.
type leftOutView struct {
	URI    string `json:"uri" yaml:"uri"`
	State  string `json:"state" yaml:"state"`
	Reason string `json:"reason,omitempty" yaml:"reason,omitempty"`
}

func newNexusView(n *enginev1.Nexus) nexusView {
	v := nexusView{Name: n.GetName(), UUID: n.GetUuid(), Size: n.GetSize(), BlockSize: n.GetBlockSize(),
		State: stateName(n.GetState().String()), Reason: n.GetReason(), Children: []childView{}, Epoch: n.GetEpoch()}
	for _, l := range n.GetLeftOut() {
		v.LeftOut = append(v.LeftOut, leftOutView{URI: l.GetUri(), State: l.GetState(), Reason: l.GetReason()})
	}
	for _, c := range n.GetChildren() {
		cv := childView{URI: c.GetUri(), State: stateName(c.GetState().String()), Reason: c.GetReason(), Local: c.GetLocal(),
			LastError: c.GetLastError(), DirtyBytes: c.GetDirtyBytes(), Identity: c.GetIdentity()}
		if r := c.GetRebuild(); r != nil {
			rv := newRebuildView(r)
			cv.Rebuild = &rv
		}
		v.Children = append(v.Children, cv)
	}
	if s := n.GetShare(); s != nil {
		v.Share = &shareView{Protocol: s.GetProtocol(), URI: s.GetUri(), AllowedHosts: s.GetAllowedHosts()}
	}
	return v
}

func nexusTable(w io.Writer, ns []nexusView) error {
	t := output.NewTable(w, "NAME", "STATE", "SIZE", "CHILDREN", "SHARE")
	for _, n := range ns {
		online := 0
		for _, c := range n.Children {
			if c.State == "online" {
				online++
			}
		}
		share := ""
		if n.Share != nil {
			share = n.Share.URI
		}
		t.Row(n.Name, n.State, output.Size(n.Size), fmt.Sprintf("%d/%d online", online, len(n.Children)+len(n.LeftOut)), share)
	}
	return t.Flush()
}

func nexusDetail(w io.Writer, n nexusView) error {
	kv := []string{"Name", n.Name, "UUID", n.UUID, "Size", output.Size(n.Size), "State", n.State,
		"Epoch", itoa(n.Epoch)}
	if n.Reason != "" {
		kv = append(kv, "Reason", n.Reason)
	}
	if n.Share != nil {
		kv = append(kv, "Share", n.Share.URI)
		if len(n.Share.AllowedHosts) > 0 {
			kv = append(kv, "Allowed hosts", strings.Join(n.Share.AllowedHosts, ", "))
		}
	} else {
		kv = append(kv, "Share", "not published")
	}
	for _, l := range n.LeftOut {
		what := l.URI + " " + l.State
		if l.Reason != "" {
			what += " (" + l.Reason + ")"
		}
		kv = append(kv, "Left out at start", what+": add it again to rebuild it, or remove it")
	}
	if err := output.KeyValues(w, kv...); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t := output.NewTable(w, "CHILD", "STATE", "REASON", "LOCAL", "REBUILD")
	for _, c := range n.Children {
		reb := ""
		if c.Rebuild != nil {
			reb = progressLine(*c.Rebuild)
		}
		reason := c.Reason
		if c.LastError != "" && reason != "" {
			reason += ": " + c.LastError
		}
		t.Row(c.URI, c.State, reason, strconv.FormatBool(c.Local), reb)
	}
	return t.Flush()
}

func rebuildTable(w io.Writer, rs []rebuildView) error {
	t := output.NewTable(w, "CHILD", "STATE", "KIND", "DONE", "TOTAL", "PERCENT", "RATE", "ETA", "ERROR")
	for _, r := range rs {
		kind := "full"
		if r.Partial {
			kind = "partial"
		}
		eta := ""
		if r.ETASeconds > 0 {
			eta = (time.Duration(r.ETASeconds) * time.Second).String()
		}
		t.Row(r.Child, r.State, kind, output.Size(r.DoneBytes), output.Size(r.TotalBytes),
			strconv.FormatFloat(r.Percent, 'f', 1, 64)+"%", output.Size(uint64(r.BytesPerSecond))+"/s", eta, r.Error)
	}
	return t.Flush()
}

func verifyTable(w io.Writer, v verifyView) error {
	if v.Identical {
		_, err := fmt.Fprintf(w, "children identical: %s (%d segments compared)\n", strings.Join(v.Children, ", "), v.Segments)
		return err
	}
	fmt.Fprintf(w, "children DIFFER: %s (%d segments compared)\n", strings.Join(v.Children, ", "), v.Segments)
	t := output.NewTable(w, "OFFSET", "LENGTH")
	for _, m := range v.Mismatches {
		t.Row(strconv.FormatUint(m.Offset, 10), output.Size(m.Length))
	}
	return t.Flush()
}
