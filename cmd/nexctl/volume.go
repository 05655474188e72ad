package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/units"
)

// volumeTimeout is the time limit of a volume call that changes the
// system when --timeout is not given: such a call creates or removes
// objects on several nodes, one after the other.
const volumeTimeout = 5 * time.Minute

// volumeBlock is the unit of a volume's size (volume.proto).
const volumeBlock = 4096

// maxHostNQN is the longest NVMe Qualified Name, in bytes (NVMe base
// specification, 4.5).
const maxHostNQN = 223

var (
	volumeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$`)
)

// volumeDo runs one call of the volume service against the leader. Calls
// that change the system (long) get volumeTimeout unless --timeout was
// given; the others get --timeout.
func (a *app) volumeDo(cmd *cobra.Command, s *systemFlags, long bool, call func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error) error {
	c, err := s.mgmtClient(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	limit := a.timeout
	if long && !cmd.Flags().Changed("timeout") {
		limit = volumeTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	return c.DoVolume(ctx, call)
}

// volumeHelp is what every volume command shares, for --help.
const volumeHelp = `Volume commands talk to the management service on the access points
(--access-points, else $NEXSTOR_ACCESS_POINTS, else localhost:10124); the
leader answers. Sizes are bytes or human sizes: 10GiB, 512MiB, 1.5TiB (binary
units; 10GB is decimal). A volume's size is a whole number of 4KiB blocks.

Commands that change the system (create, delete, publish, unpublish, resize,
verify) wait up to 5 minutes unless --timeout is given; every one of them
may be repeated safely: create with the same spec returns the existing
volume, publish on the same node returns it, unpublish of an unpublished
volume succeeds.`

func (a *app) volumeCmd() *cobra.Command {
	s := &systemFlags{tls: &a.tls}
	cmd := &cobra.Command{
		Use:   "volume",
		Short: "Create, publish and delete volumes of the system (through the management service)",
		Long: `A volume is a block device of a given size mirrored over N replicas on
distinct nodes (and distinct fault domains when nodes declare them). The
management service places the replicas, creates them, and records the volume.
Publishing it creates its nexus on one node and exports it over NVMe/TCP (or
NBD); a host then connects to it with the line publish prints.

The system heals volumes by itself: a replica whose node returns gets only
the writes it missed, one whose node stays away is replaced on another node,
and set-replicas changes how many replicas a volume keeps. ` + "`volume get`" + `
shows the repairs under way, ` + "`nexctl event list`" + ` what was done and why.

` + volumeHelp,
		Example: `  nexctl volume create v1 --size 10GiB --replicas 3
  nexctl volume publish v1 --node node-0
  nexctl volume get v1
  nexctl volume set-replicas v1 2 --wait
  nexctl volume list -o json`,
	}
	s.addAccessPoints(cmd.PersistentFlags())
	cmd.AddCommand(a.volumeCreateCmd(s), a.volumeListCmd(s), a.volumeGetCmd(s), a.volumeDeleteCmd(s),
		a.volumePublishCmd(s), a.volumeUnpublishCmd(s), a.volumeResizeCmd(s), a.volumeVerifyCmd(s), a.volumeSetReplicasCmd(s),
		a.volumeMoveCmd(s))
	return cmd
}

// checkVolumeName refuses a name the service would refuse.
func checkVolumeName(cmd *cobra.Command, name string) error {
	if !volumeNameRE.MatchString(name) {
		return usage(cmd, fmt.Errorf("volume name %q is not valid: use 1 to 63 lowercase letters, digits, '.' and '-', "+
			"starting and ending with a letter or digit, such as v1 or db-data", name))
	}
	return nil
}

// parseVolumeSize parses the size given as what (a flag or argument) and
// refuses 0 and sizes that are not whole 4KiB blocks, suggesting the next
// valid size in a form the flag accepts.
func parseVolumeSize(cmd *cobra.Command, what, s string) (uint64, error) {
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, usage(cmd, fmt.Errorf("%s: %w", what, err))
	}
	if n <= 0 {
		return 0, usage(cmd, fmt.Errorf("%s %s: a volume needs a size above 0, such as 10GiB", what, s))
	}
	if n%volumeBlock != 0 {
		up := (n/volumeBlock + 1) * volumeBlock
		return 0, usage(cmd, fmt.Errorf("%s %s: a volume's size is a whole number of 4KiB blocks; give %s",
			what, s, units.FormatSizeExact(up)))
	}
	return uint64(n), nil
}

// parseSelector parses key=value pairs given to flag into a map, refusing
// what no label could match.
func parseSelector(cmd *cobra.Command, flag string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return nil, usage(cmd, fmt.Errorf("%s %q: give key=value, such as %s zone=a", flag, p, flag))
		}
		if !labelKeyRE.MatchString(k) {
			return nil, usage(cmd, fmt.Errorf("%s %q: %q is not a label key: use letters, digits, '.', '_', '-' and '/', "+
				"starting and ending with a letter or digit, at most 63 characters", flag, p, k))
		}
		if old, dup := m[k]; dup && old != v {
			return nil, usage(cmd, fmt.Errorf("%s: %s=%s and %s=%s cannot both match: give each key once", flag, k, old, k, v))
		}
		m[k] = v
	}
	return m, nil
}

// checkProtocol refuses a protocol other than nvmf and nbd; "" is left to
// the service's default.
func checkProtocol(cmd *cobra.Command, p string) (string, error) {
	switch p = strings.ToLower(p); p {
	case "", "nvmf", "nbd":
		return p, nil
	}
	return "", usage(cmd, fmt.Errorf("--protocol %q: use nvmf (NVMe over TCP) or nbd", p))
}

func (a *app) volumeCreateCmd(s *systemFlags) *cobra.Command {
	var size, protocol, id, from string
	var replicas int
	var thin bool
	var nodeSel, poolSel []string
	cmd := &cobra.Command{
		Use:   "create NAME --size SIZE [--replicas N] | create NAME --from-snapshot SNAPSHOT",
		Short: "Create a volume: place its replicas and create them",
		Long: `Create places --replicas replicas of --size on distinct nodes (and distinct
fault domains), creates them and records the volume. It is not published:
see 'nexctl volume publish'.

  --size           bytes or a human size (10GiB, 512MiB); a whole number of
                   4KiB blocks; the replicas round it up to their pool's
                   cluster size
  --replicas       copies on distinct nodes (default 3)
  --thin           allocate space on first write; pools may then be
                   over-committed up to their limit (default thick: all the
                   space is taken at once)
  --selector       k=v: only nodes with this label (repeatable, all must match)
  --pool-selector  k=v: only pools with this label (repeatable)
  --protocol       nvmf (default) or nbd: what publish uses when not told
  --uuid           the volume's UUID (default: a new one)
  --from-snapshot  VOLUME/NAME or UUID of a snapshot: the volume starts with
                   its data. Its replicas are clones of the snapshot's copies
                   (on their nodes and pools, nothing copied); replicas beyond
                   the copies that answer are added by the system and rebuilt
                   in full once the volume is published. The volume is thin;
                   --size may be left out (it is the snapshot's, and another
                   size is refused: resize the volume afterwards)

Creating the same volume again (same name and spec) prints it and changes
nothing; another spec under the same name is refused, naming the difference.
When the volume cannot be placed, the error names every node and pool that
was rejected and why, and nothing is left behind.

` + volumeHelp,
		Example: `  nexctl volume create v1 --size 10GiB --replicas 3
  nexctl volume create scratch --size 512MiB --replicas 1 --thin
  nexctl volume create db --size 100GiB --selector zone=a --pool-selector tier=nvme
  nexctl volume create v2 --size 1GiB --protocol nbd -o json
  nexctl volume create v1-copy --from-snapshot v1/daily-1 --replicas 3`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkVolumeName(cmd, args[0]); err != nil {
				return err
			}
			var n uint64
			if size != "" || from == "" {
				if size == "" {
					return usage(cmd, fmt.Errorf(`required flag "size" not set: give the volume's size, such as --size 10GiB (or --from-snapshot)`))
				}
				var err error
				if n, err = parseVolumeSize(cmd, "--size", size); err != nil {
					return err
				}
			}
			if replicas < 1 {
				return usage(cmd, fmt.Errorf("--replicas %d: a volume needs at least 1 replica (3 keep it through the loss of 2 nodes)", replicas))
			}
			if id != "" {
				if _, err := uuid.Parse(id); err != nil {
					return usage(cmd, fmt.Errorf("--uuid %q is not a UUID: give one such as %s, or leave --uuid out for a new one", id, uuid.NewString()))
				}
			}
			proto, err := checkProtocol(cmd, protocol)
			if err != nil {
				return err
			}
			ns, err := parseSelector(cmd, "--selector", nodeSel)
			if err != nil {
				return err
			}
			ps, err := parseSelector(cmd, "--pool-selector", poolSel)
			if err != nil {
				return err
			}
			spec := &mgmtv1.VolumeSpec{Name: args[0], Uuid: id, Size: n, Replicas: uint32(replicas), Thin: thin || from != "",
				Protocol: proto, FromSnapshot: from}
			if ns != nil || ps != nil {
				spec.Placement = &mgmtv1.Placement{NodeSelector: ns, PoolSelector: ps}
			}
			var v *mgmtv1.Volume
			err = a.volumeDo(cmd, s, true, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				v, err = cl.CreateVolume(ctx, &mgmtv1.CreateVolumeRequest{Spec: spec})
				return err
			})
			if err != nil {
				return err
			}
			return a.printVolume(v)
		},
	}
	f := cmd.Flags()
	f.StringVar(&size, "size", "", "volume size, e.g. 10GiB (a whole number of 4KiB blocks)")
	f.IntVar(&replicas, "replicas", 3, "number of replicas, each on its own node")
	f.BoolVar(&thin, "thin", false, "thin provisioning: allocate on first write")
	f.StringSliceVar(&nodeSel, "selector", nil, "node label key=value the nodes must have (repeatable)")
	f.StringSliceVar(&poolSel, "pool-selector", nil, "pool label key=value the pools must have (repeatable)")
	f.StringVar(&protocol, "protocol", "", "default protocol of publish: nvmf or nbd (default nvmf)")
	f.StringVar(&id, "uuid", "", "UUID of the volume (default: a new one)")
	f.StringVar(&from, "from-snapshot", "", "start with the data of this snapshot (VOLUME/NAME or UUID); --size may be left out")
	return cmd
}

func (a *app) volumeListCmd(s *systemFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the volumes with their phase and where they are published",
		Long: `List shows every volume: its size, its healthy replicas out of those it
should have, its phase (creating, online, degraded, faulted, unknown,
deleting), and the node and protocol of its target when it is published.
The status is read live from the nodes, not from a record.`,
		Example: `  nexctl volume list
  nexctl volume list -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var resp *mgmtv1.ListVolumesResponse
			err := a.volumeDo(cmd, s, false, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				resp, err = cl.ListVolumes(ctx, &mgmtv1.ListVolumesRequest{})
				return err
			})
			if err != nil {
				return err
			}
			views := make([]volumeView, 0, len(resp.GetVolumes()))
			for _, v := range resp.GetVolumes() {
				views = append(views, newVolumeView(v))
			}
			sort.Slice(views, func(i, j int) bool { return views[i].Spec.Name < views[j].Spec.Name })
			return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error { return volumeTable(w, views) })
		},
	}
}

func (a *app) volumeGetCmd(s *systemFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME|UUID",
		Short: "Show a volume: spec, phase, replicas and target",
		Long: `Get shows what the volume was created with, its phase and why, each replica
(its node and pool, its state there, and, while published, the nexus's view
of it and rebuild progress), and its target (node, URI, nexus state, epoch)
with the command a host connects with.

A replica's state is what its node reports: online, faulted, missing (the
node does not have it) or unknown (the node did not answer). Its child
state is the nexus's view: online, degraded, faulted, offline, rebuilding.

Under the replicas, Repairs lists what the system is doing about them, one
line each (nothing when there is nothing to do):

  waiting    for a replica's node to return, until the time shown; a node
             back in time gets only the writes it missed, otherwise the
             replica is replaced on another node then (at once when only
             one healthy copy is left)
  resyncing  a returning replica gets the writes it missed (percent done)
  rebuilding a replica is copied in full (percent done)
  replacing  a new replica, copied in full, for a lost one (percent done)
  removing   an extra or replaced replica is removed
  blocked    nothing can be done now; the line says why

The last healthy copy of a volume is never removed.`,
		Example: `  nexctl volume get v1
  nexctl volume get v1 -o yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v *mgmtv1.Volume
			err := a.volumeDo(cmd, s, false, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				v, err = cl.GetVolume(ctx, &mgmtv1.GetVolumeRequest{Name: args[0]})
				return err
			})
			if err != nil {
				return err
			}
			return a.printVolume(v)
		},
	}
}

func (a *app) volumeDeleteCmd(s *systemFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a volume and its replicas",
		Long: `Delete removes the volume's nexus and every one of its replicas; their data
is gone. A published volume is refused unless --force is given (the nexus is
destroyed first: hosts connected to it lose the device).

Replicas on nodes that are down cannot be removed now: they are listed, the
volume stays "deleting", and they are removed when their nodes return.
Deleting a volume that does not exist fails (not found).`,
		Example: `  nexctl volume delete v1
  nexctl volume delete v1 --force`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var resp *mgmtv1.DeleteVolumeResponse
			err := a.volumeDo(cmd, s, true, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				resp, err = cl.DeleteVolume(ctx, &mgmtv1.DeleteVolumeRequest{Name: args[0], Force: force})
				return err
			})
			if err != nil {
				return err
			}
			return a.printDeleted(args[0], resp.GetPending())
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete a published volume too (its nexus is destroyed first)")
	return cmd
}

// deleteView is the stable form of a deletion's outcome.
type deleteView struct {
	Result string `json:"result" yaml:"result"`
	// Pending lists the replicas left on nodes that are down.
	Pending []string `json:"pending" yaml:"pending"`
}

func (a *app) printDeleted(name string, pending []string) error {
	v := deleteView{Result: fmt.Sprintf("volume %s deleted", name), Pending: append([]string{}, pending...)}
	if len(pending) > 0 {
		v.Result = fmt.Sprintf("volume %s is deleting: %d replicas are on nodes that are down and are removed when those nodes return",
			name, len(pending))
	}
	return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error {
		fmt.Fprintln(w, v.Result)
		for _, p := range v.Pending {
			fmt.Fprintf(w, "  %s\n", p)
		}
		return nil
	})
}

func (a *app) volumePublishCmd(s *systemFlags) *cobra.Command {
	var node, protocol string
	var hostNQNs []string
	cmd := &cobra.Command{
		Use:   "publish NAME [--node NODE]",
		Short: "Export a volume and print how a host connects to it",
		Long: `Publish creates the volume's nexus and exports it, then prints its URI and
the command that connects a host to it:

  nvmf   nvme connect -t tcp -a HOST -s PORT -n NQN   (nvme-cli, the kernel's
         NVMe/TCP host; modprobe nvme-tcp first)
  nbd    nbdinfo nbd://HOST:PORT/NAME, or nbd-client -N NAME HOST PORT /dev/nbd0

--node is the node the consumer runs on (a name, rank or UUID): the nexus
goes there when it runs an engine, so that the volume's I/O stays local to it.
Without --node the service picks the replica node with the fewest nexuses.
--protocol overrides the volume's default protocol. --host-nqn admits only
those NVMe hosts (repeatable; the NQN is in /etc/nvme/hostnqn on the host);
none admits any host.

Publishing again on the same node with the same protocol prints the same
target; publishing on another node is refused: unpublish first.`,
		Example: `  nexctl volume publish v1
  nexctl volume publish v1 --node node-2 --host-nqn "$(ssh node-2 cat /etc/nvme/hostnqn)"
  nexctl volume publish v1 --protocol nbd
  nexctl volume publish v1 -o json | jq -r .status.target.connect`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			proto, err := checkProtocol(cmd, protocol)
			if err != nil {
				return err
			}
			for _, h := range hostNQNs {
				if !strings.HasPrefix(h, "nqn.") || len(h) > maxHostNQN {
					return usage(cmd, fmt.Errorf("--host-nqn %q is not an NVMe Qualified Name: give the host's NQN as "+
						"/etc/nvme/hostnqn on that host holds it (nqn.2014-08.org.nvmexpress:uuid:...)", h))
				}
			}
			if proto == "nbd" && len(hostNQNs) > 0 {
				return usage(cmd, fmt.Errorf("--host-nqn admits NVMe hosts, and --protocol nbd has none: "+
					"leave --host-nqn out, or publish over nvmf"))
			}
			var v *mgmtv1.Volume
			err = a.volumeDo(cmd, s, true, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				v, err = cl.PublishVolume(ctx, &mgmtv1.PublishVolumeRequest{Name: args[0], Node: node, Protocol: proto, HostNqns: hostNQNs})
				return err
			})
			if err != nil {
				return err
			}
			vv := newVolumeView(v)
			return output.Print(a.out, a.outFormat(), vv, func(w io.Writer) error {
				t := vv.Status.Target
				if t == nil {
					// The service answers a publish with the target; say
					// so rather than print nothing.
					return fmt.Errorf("volume %s: the service answered the publish without a target: "+
						"see `nexctl volume get %s`", vv.Spec.Name, vv.Spec.Name)
				}
				fmt.Fprintln(w, t.URI)
				return connectHelp(w, t)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&node, "node", "", "the consumer's node (name, rank or UUID); default: a replica node with the fewest nexuses")
	f.StringVar(&protocol, "protocol", "", "nvmf or nbd (default: the volume's protocol)")
	f.StringSliceVar(&hostNQNs, "host-nqn", nil, "host NQN admitted over nvmf (repeatable; default: any host)")
	return cmd
}

func (a *app) volumeUnpublishCmd(s *systemFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "unpublish NAME",
		Short: "Stop exporting a volume and remove its nexus",
		Long: `Unpublish removes the volume's nexus; hosts connected to it lose the device,
so disconnect them first (nvme disconnect -n NQN, nbd-client -d /dev/nbdX).
The replicas and their data stay. It succeeds when the volume is not
published, and when the nexus's node is down: that nexus is removed when the
node returns, and the next publish fences it out of the replicas.`,
		Example: `  nexctl volume unpublish v1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v *mgmtv1.Volume
			err := a.volumeDo(cmd, s, true, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				v, err = cl.UnpublishVolume(ctx, &mgmtv1.UnpublishVolumeRequest{Name: args[0]})
				return err
			})
			if err != nil {
				return err
			}
			vv := newVolumeView(v)
			return output.Print(a.out, a.outFormat(), vv, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "volume %s unpublished\n", args[0])
				return err
			})
		},
	}
}

func (a *app) volumeResizeCmd(s *systemFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "resize NAME SIZE",
		Short: "Grow a volume online",
		Long: `Resize grows every replica of the volume, then its nexus, to SIZE (bytes or a
human size such as 20GiB; a whole number of 4KiB blocks) while I/O goes on.
Shrinking is refused.

NVMe/TCP hosts are told of the new size; NBD clients see it when they
connect again.`,
		Example: `  nexctl volume resize v1 20GiB`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseVolumeSize(cmd, "SIZE", args[1])
			if err != nil {
				return err
			}
			var v *mgmtv1.Volume
			err = a.volumeDo(cmd, s, true, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				v, err = cl.ResizeVolume(ctx, &mgmtv1.ResizeVolumeRequest{Name: args[0], Size: n})
				return err
			})
			if err != nil {
				return err
			}
			vv := newVolumeView(v)
			return output.Print(a.out, a.outFormat(), vv, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "volume %s is %s\n", vv.Spec.Name, output.Size(vv.Spec.Size))
				if t := vv.Status.Target; err == nil && t != nil && t.Protocol == "nbd" {
					_, err = fmt.Fprintln(w, "NBD clients see the new size when they connect again")
				}
				return err
			})
		},
	}
}

// volumeVerifyView is the stable form of a volume's verification; offsets
// and lengths are bytes.
type volumeVerifyView struct {
	Volume     string      `json:"volume" yaml:"volume"`
	Identical  bool        `json:"identical" yaml:"identical"`
	Segments   uint64      `json:"segments" yaml:"segments"`
	Children   []string    `json:"children" yaml:"children"`
	Mismatches []rangeView `json:"mismatches" yaml:"mismatches"`
}

func (a *app) volumeVerifyCmd(s *systemFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "verify NAME",
		Short: "Compare the replicas of a published volume",
		Long: `Verify compares the volume's replicas through its nexus, segment by segment,
while I/O goes on, and lists the byte ranges (offset and length) whose content
differs. It changes nothing. The volume must be published. It exits 1 when
the replicas differ.`,
		Example: `  nexctl volume verify v1
  nexctl volume verify v1 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var resp *mgmtv1.VerifyVolumeResponse
			err := a.volumeDo(cmd, s, true, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				resp, err = cl.VerifyVolume(ctx, &mgmtv1.VerifyVolumeRequest{Name: args[0]})
				return err
			})
			if err != nil {
				return err
			}
			m := resp.GetMismatches()
			if len(m)%2 != 0 {
				return fmt.Errorf("volume %s: the service returned %d mismatch values, not offset and length pairs: "+
					"the service and nexctl may be of different versions (`nexctl version`)", args[0], len(m))
			}
			v := volumeVerifyView{Volume: args[0], Segments: resp.GetSegments(), Children: append([]string{}, resp.GetChildren()...),
				Mismatches: []rangeView{}}
			for i := 0; i+1 < len(m); i += 2 {
				v.Mismatches = append(v.Mismatches, rangeView{Offset: m[i], Length: m[i+1]})
			}
			v.Identical = len(v.Mismatches) == 0
			err = output.Print(a.out, a.outFormat(), v, func(w io.Writer) error {
				if v.Identical {
					_, err := fmt.Fprintf(w, "replicas identical: %s (%d segments compared)\n", strings.Join(v.Children, ", "), v.Segments)
					return err
				}
				fmt.Fprintf(w, "replicas DIFFER: %s (%d segments compared)\n", strings.Join(v.Children, ", "), v.Segments)
				t := output.NewTable(w, "OFFSET", "LENGTH")
				for _, r := range v.Mismatches {
					t.Row(itoa(r.Offset), itoa(r.Length))
				}
				return t.Flush()
			})
			if err != nil {
				return err
			}
			if !v.Identical {
				return fmt.Errorf("volume %s: the replicas differ in %d ranges (listed above)", args[0], len(v.Mismatches))
			}
			return nil
		},
	}
}

func (a *app) volumeMoveCmd(s *systemFlags) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "move NAME",
		Short: "Move a published volume's nexus to another node",
		Long: `Move sets the volume's nexus ANA inaccessible where it is (NVMe hosts stop
sending I/O there and hold or retry it), creates the nexus on another node
from the replicas its health record calls current, exported optimized with
the same protocol, allowed hosts, subsystem NQN and namespace identity, and,
after move.grace, destroys the old one. The replicas do not move. The
management service moves a nexus the same way by itself when its node dies
(then the old one cannot be told anything: the new nexus's epoch fences it).

NVMe hosts with native multipath connect the new path (nexstor agent does it
for them) and carry on without an I/O error; NBD clients must connect to
the new URI, printed here.`,
		Example: `  nexctl volume move v1 --node node-3
  nexctl volume move v1`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v *mgmtv1.Volume
			err := a.volumeDo(cmd, s, true, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				v, err = cl.MoveVolume(ctx, &mgmtv1.MoveVolumeRequest{Name: args[0], Node: node})
				return err
			})
			if err != nil {
				return err
			}
			vv := newVolumeView(v)
			return output.Print(a.out, a.outFormat(), vv, func(w io.Writer) error {
				t := vv.Status.Target
				if t == nil {
					_, err := fmt.Fprintf(w, "volume %s moved\n", args[0])
					return err
				}
				_, err := fmt.Fprintf(w, "volume %s is published on %s: %s\n", args[0], t.Node, t.URI)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node to move to (name, rank or UUID); default: the scheduler picks one other than the current")
	return cmd
}
