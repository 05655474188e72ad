package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
)

func (a *app) poolCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Create, list, import and destroy pools",
		Long: `A pool owns exactly one disk and hands out its space, in clusters (4MiB by
default), to replicas. Disks are given as URIs:

  uring:///dev/nvme0n1                        a block device through io_uring
  aio:///dev/sdb                              a block device through pread/pwrite
  /dev/sdb, file:///var/lib/nexstor/d0.img?size=10GiB
                                              a block device or file (created
                                              sparse when missing) through
                                              io_uring: recorded as uring://
  malloc:///scratch?size=512MiB               RAM, gone when the server stops

A bare path or file:// means io_uring; where the kernel or container refuses
io_uring the pool is not created and the error names aio://, the pread/pwrite
engine, to choose instead. A pool is remembered by the server, with the disk
URI it recorded, and imported again when it restarts.`,
	}
	cmd.AddCommand(a.poolCreateCmd(), a.poolListCmd(), a.poolGetCmd(), a.poolDestroyCmd(),
		a.poolImportCmd(), a.poolExportCmd(), a.poolLabelCmd())
	return cmd
}

func (a *app) printPool(p *enginev1.Pool) error {
	v := newPoolView(p)
	return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error { return poolDetail(w, v) })
}

func (a *app) poolCreateCmd() *cobra.Command {
	var clusterSize, overcommit string
	var force bool
	cmd := &cobra.Command{
		Use:   "create NAME DISK",
		Short: "Format a disk as a new pool",
		Long: `Create formats DISK as a new pool called NAME.

A disk that already holds a pool is refused unless --force is given, which
destroys that pool and everything in it. A disk that another process holds
open (another server's pool) is always refused, naming that process. Quote
URIs with '?' in a shell.

--overcommit limits thin provisioning: the sizes of the pool's replicas may
add up to that percent of its capacity (default 250%; 100% allows no
over-commit). Creating or growing a replica beyond it fails with the
numbers. Creating the same pool again (name and disk) prints it.`,
		Example: `  nexctl pool create p0 'file:///var/lib/nexstor/d0.img?size=10GiB'
  nexctl pool create fast /dev/nvme1n1 --cluster-size 1MiB
  nexctl pool create p0 /dev/sdb --force
  nexctl pool create p0 /dev/sdb --overcommit 400%`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var cs uint64
			if clusterSize != "" {
				var err error
				if cs, err = parseSize(cmd, "cluster-size", clusterSize); err != nil {
					return err
				}
			}
			var oc uint64
			if overcommit != "" {
				var err error
				if oc, err = strconv.ParseUint(strings.TrimSuffix(overcommit, "%"), 10, 32); err != nil || oc < 100 {
					return usage(cmd, fmt.Errorf("--overcommit %q: give a percent of the capacity of at least 100, such as 250%%", overcommit))
				}
			}
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				p, err := c.CreatePool(ctx, &enginev1.CreatePoolRequest{Name: args[0], Disk: args[1], ClusterSize: cs, Force: force,
					OvercommitPercent: uint32(oc)})
				if err != nil {
					return err
				}
				return a.printPool(p)
			})
		},
	}
	cmd.Flags().StringVar(&clusterSize, "cluster-size", "", "allocation unit, a power of two (default 4MiB)")
	cmd.Flags().BoolVar(&force, "force", false, "format the disk even if it holds a pool (destroys that pool)")
	cmd.Flags().StringVar(&overcommit, "overcommit", "", "thin over-commit limit in percent of the capacity (default 250%)")
	return cmd
}

func (a *app) poolListCmd() *cobra.Command {
	s := &systemFlags{tls: &a.tls}
	var node string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the pools of every node (management service), or of one engine (--engine)",
		Long: `List has two sources:

  the system   without --engine: the management service (--access-points,
               else $NEXSTOR_ACCESS_POINTS, else localhost:10124) lists the
               pools every node last reported: node, rank, name, disk, state,
               capacity, free space, committed space in percent of the
               capacity (thin replicas count at their full size), replicas,
               and how long ago the report was taken. --node (a name, rank
               or UUID) lists one node's. A pool of a node that is not
               joined shows that node's state next to its own: its figures
               may have changed since.
  one engine   with --engine (or $NEXSTOR_ENGINE when neither --node nor
               --access-points is given): that engine's pools, live, with
               allocated space; this works on a standalone server too.

Pools the server knows of but could not import (state faulted) are listed
with the reason. Sizes are binary (1GiB = 1024MiB); -o json gives bytes.`,
		Example: `  nexctl pool list
  nexctl pool list --node node-1 -o json
  nexctl --engine 10.0.0.2 pool list`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			engine, err := poolListMode(cmd)
			if err != nil {
				return err
			}
			if !engine {
				return a.systemPools(cmd, s, node)
			}
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				resp, err := c.ListPools(ctx, &enginev1.ListPoolsRequest{})
				if err != nil {
					return err
				}
				views := make([]poolView, 0, len(resp.GetPools()))
				for _, p := range resp.GetPools() {
					views = append(views, newPoolView(p))
				}
				return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error { return poolTable(w, views) })
			})
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "list the pools of this node only (name, rank or UUID); asks the management service")
	s.addAccessPoints(cmd.Flags())
	return cmd
}

func (a *app) poolGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show one pool",
		Example: `  nexctl pool get p0 -o yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				p, err := c.GetPool(ctx, &enginev1.GetPoolRequest{Name: args[0]})
				if err != nil {
					return err
				}
				return a.printPool(p)
			})
		},
	}
}

func (a *app) poolDestroyCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "destroy NAME",
		Short: "Destroy a pool and erase its superblock",
		Long: `Destroy erases the pool's superblock so the disk is no longer a pool, and
forgets it. A pool that still holds replicas is refused unless --force is
given (which destroys them too); a pool with shared replicas is always
refused. A faulted pool is only forgotten; its disk is left alone.`,
		Example: `  nexctl pool destroy p0
  nexctl pool destroy p0 --force`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				if _, err := c.DestroyPool(ctx, &enginev1.DestroyPoolRequest{Name: args[0], Force: force}); err != nil {
					return err
				}
				return a.done(fmt.Sprintf("pool %s destroyed", args[0]))
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "also destroy the pool's replicas")
	return cmd
}

func (a *app) poolImportCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "import DISK",
		Short: "Import the pool on a disk",
		Long: `Import opens the pool that DISK holds (for instance one exported on another
server) and remembers it. A disk without a pool is reported and not written.`,
		Example: `  nexctl pool import /dev/sdb
  nexctl pool import file:///var/lib/nexstor/d0.img --name p0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				p, err := c.ImportPool(ctx, &enginev1.ImportPoolRequest{Name: name, Disk: args[0]})
				if err != nil {
					return err
				}
				return a.printPool(p)
			})
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "expected pool name; refused when the disk holds another")
	return cmd
}

func (a *app) poolExportCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "export NAME",
		Short: "Close a pool cleanly and forget it, keeping its data",
		Long: `Export closes the pool and forgets it; the data stays on the disk, ready to
be imported again (here or on another server). Shared replicas must be
unshared first.`,
		Example: `  nexctl pool export p0`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				if _, err := c.ExportPool(ctx, &enginev1.ExportPoolRequest{Name: args[0]}); err != nil {
					return err
				}
				return a.done(fmt.Sprintf("pool %s exported", args[0]))
			})
		},
	}
}

func (a *app) poolLabelCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "label NAME [KEY=VALUE...]",
		Short: "Set the labels of a pool",
		Long: `Label replaces the labels of pool NAME with the KEY=VALUE pairs given (none
clears them). The server remembers them across restarts and reports them
with the pool; a volume's --pool-selector (a StorageClass's
poolSelector.<label>) places replicas only in pools that carry its labels.
A pool of the server's configuration keeps the configuration's labels
(pools[].labels). The Kubernetes operator sets a DiskPool's labels this way.`,
		Example: `  nexctl pool label p0 tier=nvme zone=a
  nexctl pool label p0`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			labels, err := parseSelector(cmd, "label", args[1:])
			if err != nil {
				return err
			}
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				p, err := c.SetPoolLabels(ctx, &enginev1.SetPoolLabelsRequest{Name: args[0], Labels: labels})
				if err != nil {
					return err
				}
				return a.printPool(p)
			})
		},
	}
}

// done reports a successful action that returns no object.
func (a *app) done(msg string) error {
	type result struct {
		Result string `json:"result" yaml:"result"`
	}
	return output.Print(a.out, a.outFormat(), result{msg}, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, msg)
		return err
	})
}
