package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
)

// Volume snapshots: `nexctl snapshot` without --engine talks to the
// management service.

// engineLevel reports whether a snapshot command acts on one engine's
// replica snapshots: only when --engine is given.
func engineLevel(cmd *cobra.Command) bool { return cmd.Flags().Changed("engine") }

// volumeSnapshotView is the stable JSON/YAML form of a volume snapshot.
type volumeSnapshotView struct {
	Name       string `json:"name" yaml:"name"`
	UUID       string `json:"uuid" yaml:"uuid"`
	Volume     string `json:"volume" yaml:"volume"`
	VolumeUUID string `json:"volume_uuid" yaml:"volume_uuid"`
	Size       uint64 `json:"size" yaml:"size"`
	Created    string `json:"created" yaml:"created"`
	// Phase: creating, ready or unavailable (no copy answers now).
	Phase string `json:"phase" yaml:"phase"`
	// ReadyCopies of Copies answer now.
	ReadyCopies uint32             `json:"ready_copies" yaml:"ready_copies"`
	Copies      []snapshotCopyView `json:"copies" yaml:"copies"`
	// PausedUs: how long the volume's writes were held (microseconds).
	PausedUs uint64   `json:"paused_us" yaml:"paused_us"`
	Failed   []string `json:"failed,omitempty" yaml:"failed,omitempty"`
}

type snapshotCopyView struct {
	Replica string `json:"replica" yaml:"replica"`
	Node    string `json:"node" yaml:"node"`
	Pool    string `json:"pool" yaml:"pool"`
	State   string `json:"state" yaml:"state"`
}

func newVolumeSnapshotView(s *mgmtv1.VolumeSnapshot) volumeSnapshotView {
	st := s.GetStatus()
	v := volumeSnapshotView{Name: s.GetName(), UUID: s.GetUuid(), Volume: s.GetVolume(), VolumeUUID: s.GetVolumeUuid(), Size: s.GetSize(),
		Created: time.Unix(0, s.GetCreatedUnixNano()).UTC().Format(time.RFC3339Nano), Phase: st.GetPhase(),
		ReadyCopies: st.GetReadyCopies(), PausedUs: st.GetPausedUs(), Failed: st.GetFailed(), Copies: []snapshotCopyView{}}
	for _, c := range st.GetCopies() {
		v.Copies = append(v.Copies, snapshotCopyView{Replica: c.GetReplica(), Node: c.GetNode(), Pool: c.GetPool(), State: c.GetState()})
	}
	return v
}

func volumeSnapshotTable(w io.Writer, list []volumeSnapshotView) error {
	t := output.NewTable(w, "VOLUME", "NAME", "UUID", "PHASE", "COPIES", "SIZE", "CREATED", "PAUSE")
	for _, s := range list {
		t.Row(s.Volume, s.Name, s.UUID, s.Phase, fmt.Sprintf("%d/%d", s.ReadyCopies, len(s.Copies)), output.Size(s.Size), s.Created,
			(time.Duration(s.PausedUs) * time.Microsecond).String())
	}
	return t.Flush()
}

func volumeSnapshotDetail(w io.Writer, s volumeSnapshotView) error {
	var copies []string
	for _, c := range s.Copies {
		copies = append(copies, fmt.Sprintf("%s on %s pool %s: %s", c.Replica, c.Node, c.Pool, c.State))
	}
	failed := "none"
	if len(s.Failed) > 0 {
		failed = strings.Join(s.Failed, ", ") + " (faulted in the nexus and rebuilt)"
	}
	if err := output.KeyValues(w, "Name", s.Name, "UUID", s.UUID, "Volume", s.Volume+" ("+s.VolumeUUID+")", "Size", output.Size(s.Size),
		"Created", s.Created, "Phase", s.Phase, "Copies", fmt.Sprintf("%d of %d answer", s.ReadyCopies, len(s.Copies)),
		"Writes held", (time.Duration(s.PausedUs) * time.Microsecond).String(), "Failed replicas", failed); err != nil {
		return err
	}
	for _, c := range copies {
		if _, err := fmt.Fprintln(w, "  "+c); err != nil {
			return err
		}
	}
	return nil
}

func (a *app) printVolumeSnapshot(s *mgmtv1.VolumeSnapshot) error {
	v := newVolumeSnapshotView(s)
	return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error { return volumeSnapshotDetail(w, v) })
}

func (a *app) volumeSnapshotCreate(cmd *cobra.Command, s *systemFlags, args []string) error {
	if len(args) != 2 {
		return usage(cmd, fmt.Errorf("give the volume and the snapshot's name: nexctl snapshot create VOLUME NAME "+
			"(or, for one engine's replica, nexctl snapshot create NAME --replica REPLICA --engine ADDR)"))
	}
	if !volumeNameRE.MatchString(args[1]) {
		return usage(cmd, fmt.Errorf("snapshot name %q is not valid: use 1 to 63 lowercase letters, digits, '.' and '-', "+
			"starting and ending with a letter or digit, such as daily-1", args[1]))
	}
	var out *mgmtv1.VolumeSnapshot
	err := a.volumeDo(cmd, s, true, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		out, err = cl.CreateSnapshot(ctx, &mgmtv1.CreateSnapshotRequest{Volume: args[0], Name: args[1]})
		return err
	})
	if err != nil {
		return err
	}
	return a.printVolumeSnapshot(out)
}

func (a *app) volumeSnapshotList(cmd *cobra.Command, s *systemFlags, args []string) error {
	if len(args) > 1 {
		return usage(cmd, fmt.Errorf("give at most one volume: nexctl snapshot list [VOLUME]"))
	}
	req := &mgmtv1.ListSnapshotsRequest{}
	if len(args) == 1 {
		req.Volume = args[0]
	}
	var resp *mgmtv1.ListSnapshotsResponse
	err := a.volumeDo(cmd, s, false, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		resp, err = cl.ListSnapshots(ctx, req)
		return err
	})
	if err != nil {
		return err
	}
	views := make([]volumeSnapshotView, 0, len(resp.GetSnapshots()))
	for _, x := range resp.GetSnapshots() {
		views = append(views, newVolumeSnapshotView(x))
	}
	return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error { return volumeSnapshotTable(w, views) })
}

func (a *app) volumeSnapshotGet(cmd *cobra.Command, s *systemFlags, args []string) error {
	if len(args) != 1 {
		return usage(cmd, fmt.Errorf("give one snapshot: VOLUME/NAME or its UUID"))
	}
	var out *mgmtv1.VolumeSnapshot
	err := a.volumeDo(cmd, s, false, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		out, err = cl.GetSnapshot(ctx, &mgmtv1.GetSnapshotRequest{Snapshot: args[0]})
		return err
	})
	if err != nil {
		return err
	}
	return a.printVolumeSnapshot(out)
}

func (a *app) volumeSnapshotDelete(cmd *cobra.Command, s *systemFlags, args []string) error {
	if len(args) != 1 {
		return usage(cmd, fmt.Errorf("give one snapshot: VOLUME/NAME or its UUID"))
	}
	var resp *mgmtv1.DeleteSnapshotResponse
	err := a.volumeDo(cmd, s, true, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		resp, err = cl.DeleteSnapshot(ctx, &mgmtv1.DeleteSnapshotRequest{Snapshot: args[0]})
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(a.out, "snapshot %s deleted\n", args[0])
	for _, p := range resp.GetPending() {
		fmt.Fprintf(a.out, "  pending on %s: deleted when the node returns\n", p)
	}
	return nil
}
