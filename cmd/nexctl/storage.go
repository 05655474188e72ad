package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/hostlist"
)

// storageFlags are the flags of `nexctl storage`.
type storageFlags struct {
	tls   *tlsFlags
	hosts string
	force bool
}

// fanOut calls fn on the node service of every host of --host-list at once
// and returns the results in host order. Errors are per host.
func fanOut[T any](a *app, cmd *cobra.Command, s *storageFlags, fn func(ctx context.Context, c mgmtv1.NodeServiceClient) (T, error)) ([]hostlist.Result[T], error) {
	flag, list := "--host-list", s.hosts
	if list == "" {
		flag, list = "--engine", a.engineAddr
	}
	hosts, err := expandEngines(flag, list)
	if err != nil {
		return nil, usage(cmd, err)
	}
	opts, err := s.tls.dialOptions(hosts...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := a.ctx()
	defer cancel()
	return hostlist.FanOut(ctx, hosts, 0, func(ctx context.Context, host string) (T, error) {
		var zero T
		cc, err := grpc.NewClient(host, opts...)
		if err != nil {
			return zero, err
		}
		defer cc.Close()
		return fn(ctx, mgmtv1.NewNodeServiceClient(cc))
	}), nil
}

// errString is an error on one line with its resolution, for a table.
func errString(err error) string {
	if err == nil {
		return ""
	}
	s := fault.Message(err)
	if r := fault.ResolutionOf(err); r != "" {
		s += " (" + r + ")"
	}
	return strings.ReplaceAll(s, "\n", " ")
}

func (a *app) storageCmd() *cobra.Command {
	s := &storageFlags{tls: &a.tls}
	cmd := &cobra.Command{
		Use:   "storage",
		Short: "Scan and format the storage of the servers",
		Long: `Storage talks to the node service of each server of --host-list (host-list
notation: node-[1-3]:10124; default: --engine). Hosts with identical results
share a row.

An unformatted server waits in maintenance mode: "nexctl storage format" writes
its node superblock and creates the pools of its configuration, and the server
then starts its engine and joins the system.`,
	}
	env := os.Getenv("NEXSTOR_HOSTS")
	pf := cmd.PersistentFlags()
	pf.StringVarP(&s.hosts, "host-list", "l", env, "servers host[:port] in host-list notation (env NEXSTOR_HOSTS; default --engine)")

	scan := &cobra.Command{
		Use:   "scan",
		Short: "List each server's disks and configured pools",
		Example: `  nexctl storage scan -l node-[1-3]
  nexctl storage scan -l 10.0.0.[1-4]:10124 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := fanOut(a, cmd, s, func(ctx context.Context, c mgmtv1.NodeServiceClient) (*mgmtv1.StorageScanResponse, error) {
				return c.StorageScan(ctx, &mgmtv1.StorageScanRequest{})
			})
			if err != nil {
				return err
			}
			return a.printScan(res)
		},
	}
	format := &cobra.Command{
		Use:   "format",
		Short: "Format the servers: node superblock and configured pools",
		Long: `Format writes the node superblock of each server and creates the pools of its
configuration. A formatted server is refused unless --force is given, and then
nothing changes on it; --force destroys what its pools hold.`,
		Example: `  nexctl storage format -l node-[1-3]
  nexctl storage format -l node-2 --force`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := fanOut(a, cmd, s, func(ctx context.Context, c mgmtv1.NodeServiceClient) (*mgmtv1.StorageFormatResponse, error) {
				return c.StorageFormat(ctx, &mgmtv1.StorageFormatRequest{Force: s.force})
			})
			if err != nil {
				return err
			}
			return a.printFormat(res)
		},
	}
	format.Flags().BoolVar(&s.force, "force", false, "format servers that are already formatted (destroys their pools' data)")
	cmd.AddCommand(scan, format)
	return cmd
}

type diskView struct {
	Name       string   `json:"name" yaml:"name"`
	Path       string   `json:"path" yaml:"path"`
	Model      string   `json:"model" yaml:"model"`
	Serial     string   `json:"serial" yaml:"serial"`
	Size       int64    `json:"size" yaml:"size"`
	Rotational bool     `json:"rotational" yaml:"rotational"`
	NUMANode   int32    `json:"numa_node" yaml:"numa_node"`
	Pool       string   `json:"pool,omitempty" yaml:"pool,omitempty"`
	PoolUUID   string   `json:"pool_uuid,omitempty" yaml:"pool_uuid,omitempty"`
	UsedBy     []string `json:"used_by,omitempty" yaml:"used_by,omitempty"`
}

type poolCfgView struct {
	Name        string `json:"name" yaml:"name"`
	Disk        string `json:"disk" yaml:"disk"`
	ClusterSize int64  `json:"cluster_size" yaml:"cluster_size"`
}

type scanView struct {
	Host  string        `json:"host" yaml:"host"`
	Error string        `json:"error,omitempty" yaml:"error,omitempty"`
	Disks []diskView    `json:"disks" yaml:"disks"`
	Pools []poolCfgView `json:"pools" yaml:"pools"`
}

func (a *app) printScan(res []hostlist.Result[*mgmtv1.StorageScanResponse]) error {
	views := make([]scanView, 0, len(res))
	failed := 0
	var firstErr error
	for _, r := range res {
		v := scanView{Host: r.Host, Error: errString(r.Err), Disks: []diskView{}, Pools: []poolCfgView{}}
		if r.Err != nil {
			if failed == 0 {
				firstErr = r.Err
			}
			failed++
		} else {
			for _, d := range r.Value.Disks {
				v.Disks = append(v.Disks, diskView{Name: d.Name, Path: d.Path, Model: d.Model, Serial: d.Serial, Size: d.Size,
					Rotational: d.Rotational, NUMANode: d.NumaNode, Pool: d.PoolName, PoolUUID: d.PoolUuid, UsedBy: d.UsedBy})
			}
			for _, p := range r.Value.Pools {
				v.Pools = append(v.Pools, poolCfgView{Name: p.Name, Disk: p.Disk, ClusterSize: p.ClusterSize})
			}
		}
		views = append(views, v)
	}
	sort.SliceStable(views, func(i, j int) bool { return views[i].Host < views[j].Host })
	err := output.Print(a.out, a.outFormat(), views, func(w io.Writer) error {
		// Render each host's result, then print every distinct rendering once
		// under the collapsed list of hosts that share it.
		g := hostlist.HostGroups{}
		for _, v := range views {
			g.Add(renderScan(v), v.Host)
		}
		for i, row := range g.Rows() {
			if i > 0 {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "Hosts: %s\n%s", row.Hosts, row.Result)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("storage scan failed on %d of %d hosts; the first: %w", failed, len(views), firstErr)
	}
	return nil
}

// renderScan renders one host's scan without its name, so that identical
// hosts render identically.
func renderScan(v scanView) string {
	var b strings.Builder
	if v.Error != "" {
		fmt.Fprintf(&b, "  Error: %s\n", v.Error)
		return b.String()
	}
	t := output.NewTable(&b, "  PATH", "SIZE", "ROTATIONAL", "NUMA", "MODEL", "SERIAL", "IN USE BY")
	for _, d := range v.Disks {
		use := strings.Join(d.UsedBy, ",")
		if d.Pool != "" {
			use = strings.TrimPrefix(strings.Join([]string{use, "pool " + d.Pool}, ","), ",")
		}
		t.Row("  "+d.Path, output.Size(uint64(d.Size)), fmt.Sprint(d.Rotational), fmt.Sprint(d.NUMANode), d.Model, d.Serial, use)
	}
	t.Flush()
	if len(v.Pools) > 0 {
		t := output.NewTable(&b, "  POOL", "DISK", "CLUSTER")
		for _, p := range v.Pools {
			t.Row("  "+p.Name, p.Disk, output.Size(uint64(p.ClusterSize)))
		}
		t.Flush()
	}
	return b.String()
}

type poolResultView struct {
	Name  string `json:"name" yaml:"name"`
	Disk  string `json:"disk" yaml:"disk"`
	UUID  string `json:"uuid,omitempty" yaml:"uuid,omitempty"`
	Error string `json:"error,omitempty" yaml:"error,omitempty"`
}

type formatView struct {
	Host   string           `json:"host" yaml:"host"`
	UUID   string           `json:"uuid,omitempty" yaml:"uuid,omitempty"`
	System string           `json:"system,omitempty" yaml:"system,omitempty"`
	Error  string           `json:"error,omitempty" yaml:"error,omitempty"`
	Pools  []poolResultView `json:"pools" yaml:"pools"`
}

func (a *app) printFormat(res []hostlist.Result[*mgmtv1.StorageFormatResponse]) error {
	views := make([]formatView, 0, len(res))
	var errs []error
	for _, r := range res {
		v := formatView{Host: r.Host, Error: errString(r.Err), Pools: []poolResultView{}}
		if r.Err != nil {
			errs = append(errs, r.Err)
		} else {
			v.UUID, v.System = r.Value.Uuid, r.Value.System
			for _, p := range r.Value.Pools {
				v.Pools = append(v.Pools, poolResultView{Name: p.Name, Disk: p.Disk, UUID: p.Uuid, Error: p.Error})
			}
		}
		views = append(views, v)
	}
	sort.SliceStable(views, func(i, j int) bool { return views[i].Host < views[j].Host })
	err := output.Print(a.out, a.outFormat(), views, func(w io.Writer) error {
		g := hostlist.HostGroups{}
		for _, v := range views {
			res := "formatted"
			if v.Error != "" {
				res = "failed: " + v.Error
			} else if len(v.Pools) > 0 {
				names := make([]string, len(v.Pools))
				for i, p := range v.Pools {
					names[i] = p.Name
				}
				res = fmt.Sprintf("formatted, pools %s", strings.Join(names, ","))
			}
			g.Add(res, v.Host)
		}
		t := output.NewTable(w, "HOSTS", "RESULT")
		for _, row := range g.Rows() {
			t.Row(row.Hosts, row.Result)
		}
		return t.Flush()
	})
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return fmt.Errorf("storage format failed on %d of %d hosts; the first: %w", len(errs), len(views), errs[0])
	}
	return nil
}
