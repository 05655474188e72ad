package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/fault"
)

func (a *app) snapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Take, clone and delete snapshots of replicas",
		Long: `A snapshot is a read-only, point-in-time image of a thin replica on this
engine. It is taken without copying data: the snapshot shares the replica's
clusters, and the replica copies a cluster on its next write to it. A clone
is a writable thin replica made from a snapshot, sharing its clusters.

Snapshots and clones can be deleted in any order; a cluster is freed when
nothing holds it any more. The first snapshot of a pool makes it unreadable
to Nexstor releases without snapshot support.

SNAPSHOT arguments take a snapshot's UUID or its name (when only one
snapshot of the engine has that name).`,
	}
	cmd.AddCommand(a.snapshotCreateCmd(), a.snapshotListCmd(), a.snapshotGetCmd(), a.snapshotDeleteCmd(), a.snapshotCloneCmd())
	return cmd
}

func (a *app) printSnapshot(s *enginev1.Snapshot) error {
	v := newSnapshotView(s)
	return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error { return snapshotDetail(w, v) })
}

// findSnapshot resolves a SNAPSHOT argument: a UUID, or a name that one
// snapshot of the engine has.
func findSnapshot(ctx context.Context, c *engineclient.Client, arg string) (*enginev1.Snapshot, error) {
	if _, err := uuid.Parse(arg); err == nil {
		return c.GetSnapshot(ctx, &enginev1.GetSnapshotRequest{Uuid: arg})
	}
	resp, err := c.ListSnapshots(ctx, nil)
	if err != nil {
		return nil, err
	}
	var found []*enginev1.Snapshot
	for _, s := range resp.GetSnapshots() {
		if s.GetName() == arg {
			found = append(found, s)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return nil, fault.New(fault.NotFound, "snapshot.not_found", fmt.Sprintf("no snapshot named %q", arg),
			"list the snapshots with `nexctl snapshot list`")
	}
	var pools []string
	for _, s := range found {
		pools = append(pools, s.GetPool()+": "+s.GetUuid())
	}
	return nil, fault.New(fault.InvalidArgument, "snapshot.invalid",
		fmt.Sprintf("%d snapshots are named %q (%s)", len(found), arg, strings.Join(pools, ", ")), "give the snapshot's UUID")
}

func (a *app) snapshotCreateCmd() *cobra.Command {
	var replica, id, created string
	cmd := &cobra.Command{
		Use:   "create NAME --replica REPLICA",
		Short: "Take a snapshot of a thin replica",
		Long: `Create takes a snapshot NAME of the thin replica REPLICA (its name on this
engine). I/O to the replica pauses while the snapshot is made durable; every
write the replica acknowledged before is in the snapshot. With --uuid the
call is idempotent: the same command again returns the snapshot. --created
sets the snapshot's timestamp (RFC 3339), so that the snapshots of one volume
on several engines carry the same one; it defaults to now.`,
		Example: `  nexctl snapshot create r0-snap1 --replica r0
  nexctl snapshot create r0-snap1 --replica r0 --uuid 5e1f0000-0000-4000-8000-000000000001 --created 2026-01-02T03:04:05Z`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ts int64
			if created != "" {
				t, err := time.Parse(time.RFC3339Nano, created)
				if err != nil {
					return fault.Wrap(err, fault.InvalidArgument, "cli.usage", fmt.Sprintf("--created %q is not an RFC 3339 time", created),
						"give a time such as 2026-01-02T03:04:05Z")
				}
				ts = t.UnixNano()
			}
			if id == "" {
				id = uuid.NewString()
			}
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				r, err := c.GetReplica(ctx, &enginev1.GetReplicaRequest{Name: replica})
				if err != nil {
					return err
				}
				s, err := c.CreateSnapshot(ctx, &enginev1.CreateSnapshotRequest{ReplicaUuid: r.GetUuid(), Uuid: id, Name: args[0], CreatedUnixNano: ts})
				if err != nil {
					return err
				}
				return a.printSnapshot(s)
			})
		},
	}
	cmd.Flags().StringVar(&replica, "replica", "", "name of the replica to snapshot (required)")
	cmd.Flags().StringVar(&id, "uuid", "", "use this UUID instead of a generated one (makes the command idempotent)")
	cmd.Flags().StringVar(&created, "created", "", "the snapshot's timestamp, RFC 3339 (default now)")
	cmd.MarkFlagRequired("replica")
	return cmd
}

func (a *app) snapshotListCmd() *cobra.Command {
	var pool, replica string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List snapshots",
		Example: `  nexctl snapshot list
  nexctl snapshot list --replica r0 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				req := &enginev1.ListSnapshotsRequest{Pool: pool}
				if replica != "" {
					r, err := c.GetReplica(ctx, &enginev1.GetReplicaRequest{Name: replica})
					if err != nil {
						return err
					}
					req.ReplicaUuid = r.GetUuid()
				}
				resp, err := c.ListSnapshots(ctx, req)
				if err != nil {
					return err
				}
				views := make([]snapshotView, 0, len(resp.GetSnapshots()))
				for _, s := range resp.GetSnapshots() {
					views = append(views, newSnapshotView(s))
				}
				return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error { return snapshotTable(w, views) })
			})
		},
	}
	cmd.Flags().StringVar(&pool, "pool", "", "list only this pool's snapshots")
	cmd.Flags().StringVar(&replica, "replica", "", "list only the snapshots of this replica")
	return cmd
}

func (a *app) snapshotGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "get SNAPSHOT",
		Short:   "Show one snapshot, with the bytes only it holds",
		Example: `  nexctl snapshot get r0-snap1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				s, err := findSnapshot(ctx, c, args[0])
				if err != nil {
					return err
				}
				return a.printSnapshot(s)
			})
		},
	}
}

func (a *app) snapshotDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete SNAPSHOT",
		Short: "Delete a snapshot and free what only it holds",
		Long: `Delete removes the snapshot; the clusters no replica, clone or other
snapshot holds return to the pool. Its clones and its replica are unaffected.`,
		Example: `  nexctl snapshot delete r0-snap1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				s, err := findSnapshot(ctx, c, args[0])
				if err != nil {
					return err
				}
				if _, err := c.DeleteSnapshot(ctx, &enginev1.DeleteSnapshotRequest{Uuid: s.GetUuid()}); err != nil {
					return err
				}
				fmt.Fprintf(a.out, "snapshot %s (%s) deleted\n", s.GetName(), s.GetUuid())
				return nil
			})
		},
	}
}

func (a *app) snapshotCloneCmd() *cobra.Command {
	var id, owner string
	cmd := &cobra.Command{
		Use:   "clone SNAPSHOT NAME",
		Short: "Create a writable thin replica from a snapshot",
		Long: `Clone creates the thin replica NAME in the snapshot's pool with the
snapshot's content and size, sharing its clusters: nothing is copied until
either is written. With --uuid the call is idempotent. --owner claims the
clone for a nexus as it is created (see replica create).`,
		Example: `  nexctl snapshot clone r0-snap1 r0-copy
  nexctl snapshot clone 5e1f0000-0000-4000-8000-000000000001 r0-copy --uuid 9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if id == "" {
				id = uuid.NewString()
			}
			return a.withEngine(cmd, func(ctx context.Context, c *engineclient.Client) error {
				s, err := findSnapshot(ctx, c, args[0])
				if err != nil {
					return err
				}
				r, err := c.CloneSnapshot(ctx, &enginev1.CloneSnapshotRequest{SnapshotUuid: s.GetUuid(), Uuid: id, Name: args[1], Owner: owner})
				if err != nil {
					return err
				}
				return a.printReplica(r)
			})
		},
	}
	cmd.Flags().StringVar(&id, "uuid", "", "UUID of the clone instead of a generated one (makes the command idempotent)")
	cmd.Flags().StringVar(&owner, "owner", "", "claim the clone for the nexus of this UUID as it is created")
	return cmd
}
