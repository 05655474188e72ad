package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
)

// parseReplicaCount parses the replica count N of set-replicas: a whole
// number from 1; the service checks the upper bound (the nodes it has).
func parseReplicaCount(cmd *cobra.Command, s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, usage(cmd, fmt.Errorf("N %q is not a number of replicas: give a whole number from 1 to the number of nodes, "+
			"such as 3 (usage: %s)", s, cmd.UseLine()))
	}
	if n == 0 {
		return 0, usage(cmd, fmt.Errorf("N 0: a volume keeps at least 1 replica (3 keep it through the loss of 2 nodes); "+
			"to remove the volume, `nexctl volume delete` it"))
	}
	return uint32(n), nil
}

// healed reports whether v has n healthy replicas and no repairs left.
func healed(v volumeView, n uint32) bool {
	return v.Status.Healthy == n && len(v.Status.Repairs) == 0
}

func (a *app) volumeSetReplicasCmd(s *systemFlags) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "set-replicas NAME N",
		Short: "Change how many replicas a volume keeps; the system adds or removes them",
		Long: `Set-replicas records that the volume keeps N replicas, each on its own node,
and returns at once with the volume; the management service does the work in
the background, and ` + "`nexctl volume get NAME`" + ` shows it under Repairs.

Growing places each new replica as create does (distinct nodes and fault
domains, the volume's selectors, no cordoned node) and copies the volume into
it in full through the nexus. A volume that is not published gets its new
replicas copied when it is next published.

Shrinking removes the unhealthy replicas first and the replica on the nexus's
node last, and never removes the last healthy copy.

Setting the count the volume already has changes nothing. N is 1 to the
number of nodes; the service refuses more than it can place, naming why.

--wait then waits until the volume has N healthy replicas and no repairs,
printing a line for each change (repairs: kind, replica, node, percent,
reason), for at most --timeout (default 30m here). Ending the wait (Ctrl-C,
or --timeout) does not stop the repairs. With -o json or yaml the lines go to
stderr and the volume, once healed, to stdout.`,
		Example: `  nexctl volume set-replicas v1 3
  nexctl volume set-replicas v1 3 --wait
  nexctl volume set-replicas v1 2 --wait --timeout 1h -o json`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseReplicaCount(cmd, args[1])
			if err != nil {
				return err
			}
			req := &mgmtv1.SetVolumeReplicasRequest{Name: args[0], Replicas: n}
			if !wait {
				var v *mgmtv1.Volume
				err := a.volumeDo(cmd, s, false, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
					var err error
					v, err = cl.SetVolumeReplicas(ctx, req)
					return err
				})
				if err != nil {
					return err
				}
				return a.printVolume(v)
			}
			return a.setReplicasWait(cmd, s, req)
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the volume has N healthy replicas and no repairs (at most --timeout, default 30m)")
	return cmd
}

// setReplicasWait sets the replica count, then reads the volume every
// second until it has that many healthy replicas and no repairs, all
// within one bound (--timeout, else defaultWait).
func (a *app) setReplicasWait(cmd *cobra.Command, s *systemFlags, req *mgmtv1.SetVolumeReplicasRequest) error {
	c, err := s.mgmtClient(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	limit := a.waitLimit(cmd, defaultWait)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var v *mgmtv1.Volume
	err = c.DoVolume(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		v, err = cl.SetVolumeReplicas(ctx, req)
		return err
	})
	if err != nil {
		return err
	}
	vv := newVolumeView(v)
	name, n := vv.Spec.Name, req.GetReplicas()
	if name == "" {
		name = req.GetName()
	}
	table := a.outFormat() == output.Table
	progress := a.progressOut(cmd)
	if table {
		if err := volumeDetail(a.out, vv); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "\nWaiting for %d healthy replicas and no repairs (at most %v; ending the wait does not stop the repairs):\n",
			n, limit)
	}
	track := newRepairProgress(progress)
	check := func(vv volumeView) (bool, error) {
		track.show(vv, time.Now())
		switch {
		case vv.Status.Phase == "deleting":
			return false, waitEnded(fmt.Sprintf("volume %s is being deleted", name), "nothing to wait for: the volume is going away")
		case vv.Spec.Replicas != n:
			return false, waitEnded(fmt.Sprintf("volume %s now keeps %d replicas, not %d: its count was changed again while waiting",
				name, vv.Spec.Replicas, n), fmt.Sprintf("see `nexctl event list --volume %s`, and set the count again if %d is still wanted", name, n))
		}
		return healed(vv, n), nil
	}
	done, err := check(vv)
	if err == nil && !done {
		vv, err = pollUntil(ctx, c, waitPoll, progress, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) (volumeView, error) {
			v, err := cl.GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: name})
			if err != nil {
				return volumeView{}, err
			}
			return newVolumeView(v), nil
		}, check)
		if vv.Spec.Name == "" {
			vv = newVolumeView(v) // no read came back: the set's answer is the last known state
		}
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			return waitTimedOut(limit, pendingRepairs(vv, time.Now()),
				fmt.Sprintf("the repairs go on without nexctl: follow them with `nexctl volume get %s` and `nexctl event list --volume %s`, "+
					"or wait longer with --timeout", name, name))
		}
		return err
	}
	return output.Print(a.out, a.outFormat(), vv, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "volume %s has %d healthy replicas and no repairs\n", name, n)
		return err
	})
}
