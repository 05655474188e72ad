package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/hostlist"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
)

// systemFlags are the flags of `nexctl system`.
type systemFlags struct {
	tls          *tlsFlags
	accessPoints string
	ranks        string
	hosts        string
	verbose      bool
}

// expandEngines expands the address or host list given to flag: one
// address as engineclient.ParseAddr takes it (an IPv6 address with or
// without brackets), or a host list with ranges such as node-[1-3], the
// default port added.
func expandEngines(flag, list string) ([]string, error) {
	if addr, err := engineclient.ParseAddr(list); err == nil {
		return []string{addr}, nil
	}
	hosts, err := hostlist.Expand(list, config.DefaultPort)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	return hosts, nil
}

// mgmtClient connects to the access points, following the leader.
func (s *systemFlags) mgmtClient(cmd *cobra.Command) (*mgmtclient.Client, error) {
	aps, err := expandEngines("--access-points", s.accessPoints)
	if err != nil {
		return nil, usage(cmd, err)
	}
	c, err := mgmtclient.New(aps, mgmtclient.Options{TLS: s.tls.files(), Insecure: s.tls.plain(aps)})
	if err != nil {
		return nil, s.tls.certsFault(err)
	}
	return c, nil
}

// addAccessPoints adds --access-points (-a) to fs: the management
// service's access points, else $NEXSTOR_ACCESS_POINTS, else localhost.
func (s *systemFlags) addAccessPoints(fs *pflag.FlagSet) {
	aps := os.Getenv("NEXSTOR_ACCESS_POINTS")
	if aps == "" {
		aps = fmt.Sprintf("localhost:%d", config.DefaultPort)
	}
	fs.StringVarP(&s.accessPoints, "access-points", "a", aps, "access points host[:port] in host-list notation (env NEXSTOR_ACCESS_POINTS)")
}

// mgmtDo runs one management call against the leader, bounded by
// --timeout; when no access point can be reached it fails after the dial
// timeout instead.
func (a *app) mgmtDo(cmd *cobra.Command, s *systemFlags, call func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error) error {
	c, err := s.mgmtClient(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := a.ctx()
	defer cancel()
	return c.Do(ctx, call)
}

func (a *app) systemCmd() *cobra.Command {
	s := &systemFlags{tls: &a.tls}
	cmd := &cobra.Command{
		Use:   "system",
		Short: "Query and control the members of the system through the management service",
		Long: `System talks to the management service on the access points (the leader
answers; other replicas redirect there). Ranks and hosts are selected in
host-list notation: --ranks 0-2,5, --hosts node-[1-3]:10124.

The access points come from --access-points, else $NEXSTOR_ACCESS_POINTS, else
localhost:10124.`,
	}
	s.addAccessPoints(cmd.PersistentFlags())

	selFlags := func(c *cobra.Command) {
		c.Flags().StringVar(&s.ranks, "ranks", "", "select ranks, e.g. 0-2,5 (default: all)")
		c.Flags().StringVar(&s.hosts, "hosts", "", "select members by address, e.g. node-[1-3]:10124 (default: all)")
	}

	query := &cobra.Command{
		Use:   "query",
		Short: "List the members and their states",
		Example: `  nexctl system query
  nexctl system query --ranks 0-2 --verbose
  nexctl system query -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var resp *mgmtv1.SystemQueryResponse
			err := a.mgmtDo(cmd, s, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
				var err error
				resp, err = cl.SystemQuery(ctx, &mgmtv1.SystemQueryRequest{Ranks: s.ranks, Hosts: s.hosts})
				return err
			})
			if err != nil {
				return err
			}
			return a.printQuery(resp, s.verbose)
		},
	}
	selFlags(query)
	query.Flags().BoolVarP(&s.verbose, "verbose", "v", false, "one row per member instead of rank ranges per state")

	leader := &cobra.Command{
		Use:     "leader-query",
		Short:   "Show the leader of the management service and its replicas",
		Example: `  nexctl system leader-query -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var resp *mgmtv1.LeaderQueryResponse
			err := a.mgmtDo(cmd, s, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
				var err error
				resp, err = cl.LeaderQuery(ctx, &mgmtv1.LeaderQueryRequest{})
				return err
			})
			if err != nil {
				return err
			}
			v := leaderView{System: resp.System, Leader: resp.Leader, Replicas: append([]string{}, resp.Replicas...)}
			sort.Strings(v.Replicas)
			return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error {
				return output.KeyValues(w, "System", v.System, "Leader", v.Leader, "Replicas", strings.Join(v.Replicas, ","))
			})
		},
	}

	op := func(use, short, example string, call func(ctx context.Context, cl mgmtv1.MgmtServiceClient) (*mgmtv1.SystemResultsResponse, error)) *cobra.Command {
		c := &cobra.Command{
			Use: use, Short: short, Example: example, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				var resp *mgmtv1.SystemResultsResponse
				err := a.mgmtDo(cmd, s, func(ctx context.Context, cl mgmtv1.MgmtServiceClient) error {
					var err error
					resp, err = call(ctx, cl)
					return err
				})
				if err != nil {
					return err
				}
				return a.printResults(resp)
			},
		}
		selFlags(c)
		return c
	}
	var clear bool
	stop := op("stop", "Stop the selected members (they stop serving I/O)", "  nexctl system stop --ranks 1",
		func(ctx context.Context, cl mgmtv1.MgmtServiceClient) (*mgmtv1.SystemResultsResponse, error) {
			return cl.SystemStop(ctx, &mgmtv1.SystemStopRequest{Ranks: s.ranks, Hosts: s.hosts})
		})
	start := op("start", "Start the selected stopped or errored members", "  nexctl system start",
		func(ctx context.Context, cl mgmtv1.MgmtServiceClient) (*mgmtv1.SystemResultsResponse, error) {
			return cl.SystemStart(ctx, &mgmtv1.SystemStartRequest{Ranks: s.ranks, Hosts: s.hosts})
		})
	exclude := op("exclude", "Exclude the selected members from the system (--clear readmits them)",
		"  nexctl system exclude --ranks 2\n  nexctl system exclude --ranks 2 --clear",
		func(ctx context.Context, cl mgmtv1.MgmtServiceClient) (*mgmtv1.SystemResultsResponse, error) {
			return cl.SystemExclude(ctx, &mgmtv1.SystemExcludeRequest{Ranks: s.ranks, Hosts: s.hosts, Clear: clear})
		})
	exclude.Flags().BoolVar(&clear, "clear", false, "clear the exclusion: the member may rejoin")
	cmd.AddCommand(query, leader, stop, start, exclude)
	return cmd
}

type leaderView struct {
	System   string   `json:"system" yaml:"system"`
	Leader   string   `json:"leader" yaml:"leader"`
	Replicas []string `json:"replicas" yaml:"replicas"`
}

// memberView is the stable JSON form of a member.
type memberView struct {
	Rank          uint32            `json:"rank" yaml:"rank"`
	Name          string            `json:"name,omitempty" yaml:"name,omitempty"`
	UUID          string            `json:"uuid" yaml:"uuid"`
	Address       string            `json:"address" yaml:"address"`
	State         string            `json:"state" yaml:"state"`
	Info          string            `json:"info,omitempty" yaml:"info,omitempty"`
	FaultDomain   string            `json:"fault_domain,omitempty" yaml:"fault_domain,omitempty"`
	LastHeartbeat string            `json:"last_heartbeat,omitempty" yaml:"last_heartbeat,omitempty"`
	Labels        map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	HostNQN       string            `json:"host_nqn,omitempty" yaml:"host_nqn,omitempty"`
	Cordoned      bool              `json:"cordoned,omitempty" yaml:"cordoned,omitempty"`
}

type queryView struct {
	Members     []memberView `json:"members" yaml:"members"`
	AbsentRanks string       `json:"absent_ranks,omitempty" yaml:"absent_ranks,omitempty"`
	AbsentHosts string       `json:"absent_hosts,omitempty" yaml:"absent_hosts,omitempty"`
}

func msTime(ms int64) string {
	if ms == 0 {
		return ""
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}

func (a *app) printQuery(resp *mgmtv1.SystemQueryResponse, verbose bool) error {
	v := queryView{Members: []memberView{}, AbsentRanks: resp.AbsentRanks, AbsentHosts: resp.AbsentHosts}
	for _, m := range resp.Members {
		v.Members = append(v.Members, memberView{Rank: m.Rank, Name: m.Name, UUID: m.Uuid, Address: m.Address, State: m.State,
			Info: m.Info, FaultDomain: m.FaultDomain, LastHeartbeat: msTime(m.LastHeartbeatMs), Labels: m.Labels,
			HostNQN: m.HostNqn, Cordoned: m.Cordoned})
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].Rank < v.Members[j].Rank })
	return output.Print(a.out, a.outFormat(), v, func(w io.Writer) error {
		if verbose {
			t := output.NewTable(w, "RANK", "NAME", "UUID", "ADDRESS", "STATE", "INFO")
			for _, m := range v.Members {
				t.Row(fmt.Sprint(m.Rank), m.Name, m.UUID, m.Address, m.State, m.Info)
			}
			if err := t.Flush(); err != nil {
				return err
			}
		} else {
			g := hostlist.RankGroups{}
			for _, m := range v.Members {
				g.Add(m.State, m.Rank)
			}
			t := output.NewTable(w, "RANKS", "STATE")
			for _, r := range g.Rows() {
				t.Row(r.Ranks, r.Result)
			}
			if err := t.Flush(); err != nil {
				return err
			}
		}
		return absent(w, v.AbsentRanks, v.AbsentHosts)
	})
}

func absent(w io.Writer, ranks, hosts string) error {
	if ranks != "" {
		fmt.Fprintf(w, "Unknown ranks: %s\n", ranks)
	}
	if hosts != "" {
		fmt.Fprintf(w, "Unknown hosts: %s\n", hosts)
	}
	return nil
}

type resultView struct {
	Rank    uint32 `json:"rank" yaml:"rank"`
	Address string `json:"address" yaml:"address"`
	State   string `json:"state" yaml:"state"`
	Errored bool   `json:"errored" yaml:"errored"`
	Msg     string `json:"msg,omitempty" yaml:"msg,omitempty"`
}

type resultsView struct {
	Results     []resultView `json:"results" yaml:"results"`
	AbsentRanks string       `json:"absent_ranks,omitempty" yaml:"absent_ranks,omitempty"`
	AbsentHosts string       `json:"absent_hosts,omitempty" yaml:"absent_hosts,omitempty"`
}

// printResults prints the outcome of stop, start or exclude: ranks with
// the same outcome share a row. It fails when any member failed.
func (a *app) printResults(resp *mgmtv1.SystemResultsResponse) error {
	v := resultsView{Results: []resultView{}, AbsentRanks: resp.AbsentRanks, AbsentHosts: resp.AbsentHosts}
	failed := 0
	for _, r := range resp.Results {
		v.Results = append(v.Results, resultView{Rank: r.Rank, Address: r.Address, State: r.State, Errored: r.Errored, Msg: r.Msg})
		if r.Errored {
			failed++
		}
	}
	sort.Slice(v.Results, func(i, j int) bool { return v.Results[i].Rank < v.Results[j].Rank })
	err := output.Print(a.out, a.outFormat(), v, func(w io.Writer) error {
		g := hostlist.RankGroups{}
		for _, r := range v.Results {
			res := r.State
			if r.Errored {
				res = "failed: " + r.Msg
			}
			g.Add(res, r.Rank)
		}
		t := output.NewTable(w, "RANKS", "RESULT")
		for _, r := range g.Rows() {
			t.Row(r.Ranks, r.Result)
		}
		if err := t.Flush(); err != nil {
			return err
		}
		return absent(w, v.AbsentRanks, v.AbsentHosts)
	})
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d members failed (see above)", failed, len(v.Results))
	}
	return nil
}
