package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
)

func (a *app) replicaCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Create, share and destroy replicas",
		Long: `A replica is a block device carved out of a pool. Replica names are unique
on a node. Replicas are thick by default: all their clusters are allocated
when they are created, so they never run out of space; --thin allocates a
cluster on its first write instead, and lets a pool be over-committed.

A shared replica is exported over NBD at nbd://HOST:PORT/NAME or over
NVMe/TCP at nvmf://HOST:PORT/NQN.`,
	}
	cmd.AddCommand(a.replicaCreateCmd(), a.replicaListCmd(), a.replicaGetCmd(), a.replicaDestroyCmd(),
		a.replicaResizeCmd(), a.replicaShareCmd(), a.replicaUnshareCmd(), a.replicaDisownCmd())
	return cmd
}

func (a *app) printReplica(r *enginev1.Replica) error {
	v := newReplicaView(r)
	return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error { return replicaDetail(w, v) })
}

func (a *app) replicaCreateCmd() *cobra.Command {
	var pool, size, uuid string
	var thin bool
	cmd := &cobra.Command{
		Use:   "create NAME --pool POOL --size SIZE",
		Short: "Create a replica in a pool",
		Long: `Create makes a replica of SIZE bytes in POOL. SIZE takes units (KiB, MiB,
GiB, TiB, or KB, MB, GB...) and must be a multiple of the pool's cluster size.
Replicas are thick unless --thin is given.`,
		Example: `  nexctl replica create r0 --pool p0 --size 1GiB --thin
  nexctl replica create db --pool p0 --size 20GiB
  nexctl replica create r1 --pool p0 --size 1GiB --uuid 9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(cmd, "size", size)
			if err != nil {
				return err
			}
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				r, err := c.CreateReplica(ctx, &enginev1.CreateReplicaRequest{Name: args[0], Pool: pool, Size: n, Thin: thin, Uuid: uuid})
				if err != nil {
					return err
				}
				return a.printReplica(r)
			})
		},
	}
	cmd.Flags().StringVar(&pool, "pool", "", "pool to create the replica in (required)")
	cmd.Flags().StringVar(&size, "size", "", "size, e.g. 1GiB (required)")
	cmd.Flags().BoolVar(&thin, "thin", false, "allocate clusters on first write instead of now")
	cmd.Flags().StringVar(&uuid, "uuid", "", "use this UUID instead of a generated one")
	cmd.MarkFlagRequired("pool")
	cmd.MarkFlagRequired("size")
	return cmd
}

func (a *app) replicaListCmd() *cobra.Command {
	var pool string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List replicas",
		Example: `  nexctl replica list
  nexctl replica list --pool p0 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				resp, err := c.ListReplicas(ctx, &enginev1.ListReplicasRequest{Pool: pool})
				if err != nil {
					return err
				}
				views := make([]replicaView, 0, len(resp.GetReplicas()))
				for _, r := range resp.GetReplicas() {
					views = append(views, newReplicaView(r))
				}
				return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error { return replicaTable(w, views) })
			})
		},
	}
	cmd.Flags().StringVar(&pool, "pool", "", "list only this pool's replicas")
	return cmd
}

func (a *app) replicaGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show one replica",
		Example: `  nexctl replica get r0`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				r, err := c.GetReplica(ctx, &enginev1.GetReplicaRequest{Name: args[0]})
				if err != nil {
					return err
				}
				return a.printReplica(r)
			})
		},
	}
}

// ownerFlags are --force and --owner of the operations that an owned
// replica refuses.
type ownerFlags struct {
	force bool
	owner string
}

func (o *ownerFlags) add(cmd *cobra.Command, verb string) {
	cmd.Flags().BoolVar(&o.force, "force", false, verb+" a replica that a nexus owns: that nexus loses this child")
	cmd.Flags().StringVar(&o.owner, "owner", "", "act for the nexus of this UUID, which owns the replica")
}

// ownedHelp is the paragraph on ownership of the commands that refuse an
// owned replica.
const ownedHelp = `A replica that a nexus holds as a child is owned by it: this is refused
(naming the owner) unless --owner gives that nexus's UUID, or --force.`

func (a *app) replicaDestroyCmd() *cobra.Command {
	var o ownerFlags
	cmd := &cobra.Command{
		Use:   "destroy NAME",
		Short: "Destroy a replica and free its space",
		Long: `Destroy deletes the replica and returns its clusters to the pool. A shared
replica is refused: unshare it first.

` + ownedHelp,
		Example: `  nexctl replica destroy r0
  nexctl replica destroy r0 --force    # even though a nexus owns it`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				if _, err := c.DestroyReplica(ctx, &enginev1.DestroyReplicaRequest{Name: args[0], Force: o.force, Owner: o.owner}); err != nil {
					return err
				}
				return a.done(fmt.Sprintf("replica %s destroyed", args[0]))
			})
		},
	}
	o.add(cmd, "destroy")
	return cmd
}

func (a *app) replicaResizeCmd() *cobra.Command {
	var size string
	var o ownerFlags
	cmd := &cobra.Command{
		Use:   "resize NAME --size SIZE",
		Short: "Grow a replica",
		Long: `Resize grows the replica to SIZE (a multiple of the pool's cluster size).
Replicas cannot shrink. A thin replica may not take the pool's committed
space beyond its over-commit limit.

` + ownedHelp,
		Example: `  nexctl replica resize r0 --size 2GiB`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(cmd, "size", size)
			if err != nil {
				return err
			}
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				r, err := c.ResizeReplica(ctx, &enginev1.ResizeReplicaRequest{Name: args[0], Size: n, Force: o.force, Owner: o.owner})
				if err != nil {
					return err
				}
				return a.printReplica(r)
			})
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "the new size, e.g. 2GiB (required)")
	cmd.MarkFlagRequired("size")
	o.add(cmd, "resize")
	return cmd
}

func (a *app) replicaShareCmd() *cobra.Command {
	var protocol string
	var hosts []string
	cmd := &cobra.Command{
		Use:   "share NAME",
		Short: "Export a replica and print its URI",
		Long: `Share exports the replica over PROTOCOL and prints the URI clients connect
to. The share is remembered across server restarts. Sharing a shared replica
again prints its URI.

  nbd    nbd://HOST:PORT/NAME, for nbdinfo, nbdcopy, qemu, fio, nbd-client
  nvmf   nvmf://HOST:PORT/NQN, one NVMe-oF subsystem per replica (NQN
         nqn.2024-11.io.nexstor:replica:UUID); --allowed-host limits it to
         those host NQNs, none allows any host`,
		Example: `  nexctl replica share r0 --protocol nbd
  nbdinfo "$(nexctl replica share r0)"
  nexctl replica share r0 --protocol nvmf --allowed-host "$(cat /etc/nvme/hostnqn)"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				r, err := c.ShareReplica(ctx, &enginev1.ShareReplicaRequest{Name: args[0], Protocol: protocol, AllowedHosts: hosts})
				if err != nil {
					return err
				}
				v := newReplicaView(r)
				uri := r.GetShare().GetUri()
				for _, s := range r.GetShares() {
					if s.GetProtocol() == protocol {
						uri = s.GetUri() // the share just made, not the first one
					}
				}
				return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error {
					_, err := fmt.Fprintln(w, uri)
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&protocol, "protocol", "nbd", "protocol: nbd or nvmf")
	cmd.Flags().StringSliceVar(&hosts, "allowed-host", nil, "host NQN allowed to connect (nvmf only); repeatable")
	return cmd
}

func (a *app) replicaUnshareCmd() *cobra.Command {
	var o ownerFlags
	cmd := &cobra.Command{
		Use:   "unshare NAME",
		Short: "Stop exporting a replica",
		Long: `Unshare withdraws the replica's export; connected clients are disconnected
after their in-flight requests are answered.

` + ownedHelp + ` (A remote nexus reaches its child through the share.)`,
		Example: `  nexctl replica unshare r0`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				if _, err := c.UnshareReplica(ctx, &enginev1.UnshareReplicaRequest{Name: args[0], Force: o.force, Owner: o.owner}); err != nil {
					return err
				}
				return a.done(fmt.Sprintf("replica %s unshared", args[0]))
			})
		},
	}
	o.add(cmd, "unshare")
	return cmd
}

func (a *app) replicaDisownCmd() *cobra.Command {
	var owner string
	cmd := &cobra.Command{
		Use:   "disown NAME --owner NEXUS-UUID",
		Short: "Free a replica whose nexus is gone for good",
		Long: `Disown clears the owner of a replica so that another nexus may use it. Use it
when the owning nexus can no longer release the replica itself (it was
destroyed while its node or this one was down, and will not come back):
destroying a nexus normally releases its children.

--owner must name the current owner, as ` + "`nexctl replica get`" + ` shows it: a replica
that another nexus has claimed since is refused. The replica keeps its
fencing epoch, so the old nexus stays locked out of it even if it returns.`,
		Example: `  nexctl replica get r0          # Owner: nexus 1b2e8c1a-...
  nexctl replica disown r0 --owner 1b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				r, err := c.DisownReplica(ctx, &enginev1.DisownReplicaRequest{Name: args[0], Owner: owner})
				if err != nil {
					return err
				}
				return a.printReplica(r)
			})
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "UUID of the nexus that owns the replica and is gone (required)")
	cmd.MarkFlagRequired("owner")
	return cmd
}
