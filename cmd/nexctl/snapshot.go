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
		Short: "Take, list and delete snapshots of volumes (of one engine's replicas with --engine)",
		Long: `A volume snapshot is a crash-consistent, point-in-time image of a thin
volume: one snapshot of each of its replicas, taken while the volume's nexus
holds its writes (for a few milliseconds; ` + "`snapshot get`" + ` shows how long).
A replica whose snapshot fails is faulted in the nexus and rebuilt; the
snapshot is valid while one copy answers. A new volume starts from a
snapshot with ` + "`nexctl volume create NAME --from-snapshot VOLUME/SNAPSHOT`" + `.
Snapshots outlive their volume; they are deleted only by ` + "`snapshot delete`" + `.

  nexctl snapshot create VOLUME NAME     take a snapshot (idempotent by name)
  nexctl snapshot list [VOLUME]          list snapshots, with their copies
  nexctl snapshot get VOLUME/NAME|UUID   show one
  nexctl snapshot delete VOLUME/NAME|UUID

These commands talk to the management service (--access-points, as the
volume commands). Given --engine (the flag: NEXSTOR_ENGINE alone does not
switch them), they act on that engine's replica snapshots instead:

A snapshot is a read-only, point-in-time image of a thin replica on this
engine. It is taken without copying data: the snapshot shares the replica's
clusters, and the replica copies a cluster on its next write to it. A clone
is a writable thin replica made from a snapshot, sharing its clusters.

Snapshots and clones can be deleted in any order; a cluster is freed when
nothing holds it any more. The first snapshot of a pool makes it unreadable
to Nexstor releases without snapshot support.

SNAPSHOT arguments take a snapshot's UUID or its name (when only one
snapshot of the engine has that name).`,
	}
	sf := &systemFlags{tls: &a.tls}
	sf.addAccessPoints(cmd.PersistentFlags())
	create, list, get, del := a.snapshotCreateCmd(), a.snapshotListCmd(), a.snapshotGetCmd(), a.snapshotDeleteCmd()
	// Without --engine, each goes to the management service.
	for _, c := range []*cobra.Command{create, list, get, del} {
		engineArgs, engineRun := c.Args, c.RunE
		volumeRun := map[*cobra.Command]func(*cobra.Command, *systemFlags, []string) error{
			create: a.volumeSnapshotCreate, list: a.volumeSnapshotList, get: a.volumeSnapshotGet, del: a.volumeSnapshotDelete}[c]
		c.Args = func(cmd *cobra.Command, args []string) error {
			if engineLevel(cmd) {
				return engineArgs(cmd, args)
			}
			return nil
		}
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if engineLevel(cmd) {
				return engineRun(cmd, args)
			}
			return volumeRun(cmd, sf, args)
		}
	}
	cmd.AddCommand(create, list, get, del, a.snapshotCloneCmd())
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
		Use:   "create VOLUME NAME | create NAME --replica REPLICA --engine ADDR",
		Short: "Take a snapshot of a volume (of a thin replica with --engine)",
		Long: `Create VOLUME NAME takes the snapshot NAME of the thin volume VOLUME: the
volume's nexus holds its writes while every replica behind an online child
is snapshotted (an unpublished volume's current replicas are snapshotted at
rest). It is idempotent by name: the same command again returns the
snapshot. The pause the volume's writes saw is shown as "Writes held". If
the hold (10 s) expires before every replica is done, the snapshot fails
and what was made is deleted; a replica whose snapshot fails is faulted in
the nexus, and the snapshot holds on the others.

With --engine: create NAME --replica REPLICA takes a snapshot NAME of the
thin replica REPLICA (its name on this engine). I/O to the replica pauses while the snapshot is made durable; every
write the replica acknowledged before is in the snapshot. With --uuid the
call is idempotent: the same command again returns the snapshot. --created
sets the snapshot's timestamp (RFC 3339), so that the snapshots of one volume
on several engines carry the same one; it defaults to now.`,
		Example: `  nexctl snapshot create v1 daily-1
  nexctl snapshot create r0-snap1 --replica r0 --engine node-0
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
			if replica == "" {
				return usage(cmd, fmt.Errorf("--replica: give the replica to snapshot on this engine"))
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
	cmd.Flags().StringVar(&replica, "replica", "", "with --engine: name of the replica to snapshot (required)")
	cmd.Flags().StringVar(&id, "uuid", "", "use this UUID instead of a generated one (makes the command idempotent)")
	cmd.Flags().StringVar(&created, "created", "", "the snapshot's timestamp, RFC 3339 (default now)")
	return cmd
}

func (a *app) snapshotListCmd() *cobra.Command {
	var pool, replica string
	cmd := &cobra.Command{
		Use:     "list [VOLUME]",
		Aliases: []string{"ls"},
		Short:   "List snapshots (of one volume when given)",
		Long: `List shows the volume snapshots (of VOLUME when given): phase (ready while
at least one copy answers, unavailable when none does, creating while it is
taken), copies that answer out of those recorded, and the pause. With
--engine it lists that engine's replica snapshots (--pool, --replica narrow
it).`,
		Example: `  nexctl snapshot list
  nexctl snapshot list v1 -o json
  nexctl snapshot list --replica r0 --engine node-0`,
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
		Use:   "get VOLUME/NAME|UUID",
		Short: "Show one snapshot: its copies and their state, the pause it took",
		Long: `Get shows a volume snapshot by VOLUME/NAME or UUID, with each copy (replica,
node, pool) and whether its node reports it now. With --engine it shows a
replica snapshot of that engine by name or UUID, with the bytes only it holds.`,
		Example: `  nexctl snapshot get v1/daily-1
  nexctl snapshot get r0-snap1 --engine node-0`,
		Args: cobra.ExactArgs(1),
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
		Use:   "delete VOLUME/NAME|UUID",
		Short: "Delete a snapshot and free what only it holds",
		Long: `Delete removes the snapshot; the clusters no replica, clone or other
snapshot holds return to the pool. Its clones (volumes restored from it) and
its volume are unaffected. Copies on nodes that are down are deleted when
they return. With --engine it deletes one replica snapshot of that engine.`,
		Example: `  nexctl snapshot delete v1/daily-1
  nexctl snapshot delete r0-snap1 --engine node-0`,
		Args: cobra.ExactArgs(1),
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
