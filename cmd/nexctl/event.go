package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
)

// watchPoll is how often event list --watch lists the events again.
const watchPoll = 2 * time.Second

// eventView is the stable JSON/YAML form of an event: an automatic action
// of the management service, or a node operation, with its cause.
type eventView struct {
	// Seq orders the events; it only grows.
	Seq uint64 `json:"seq" yaml:"seq"`
	// Time is when it happened (RFC 3339, UTC, to the millisecond).
	Time    string `json:"time" yaml:"time"`
	Kind    string `json:"kind" yaml:"kind"`
	Volume  string `json:"volume,omitempty" yaml:"volume,omitempty"`
	Node    string `json:"node,omitempty" yaml:"node,omitempty"`
	Replica string `json:"replica,omitempty" yaml:"replica,omitempty"`
	Message string `json:"message" yaml:"message"`
	// Cause is why the action was taken.
	Cause string `json:"cause,omitempty" yaml:"cause,omitempty"`

	timeMs int64
}

func newEventView(e *mgmtv1.Event) eventView {
	t := ""
	if e.GetTimeMs() != 0 {
		t = time.UnixMilli(e.GetTimeMs()).UTC().Format(time.RFC3339Nano)
	}
	return eventView{Seq: e.GetSeq(), Time: t, Kind: e.GetKind(), Volume: e.GetVolume(), Node: e.GetNode(),
		Replica: e.GetReplica(), Message: e.GetMessage(), Cause: e.GetCause(), timeMs: e.GetTimeMs()}
}

// eventHeaders are the columns of the event table.
var eventHeaders = []string{"TIME", "KIND", "VOLUME", "NODE", "MESSAGE", "CAUSE"}

// cells is the event's row: its time local, to the second.
func (e eventView) cells() []string {
	t := ""
	if e.timeMs != 0 {
		t = time.UnixMilli(e.timeMs).Local().Format(time.RFC3339)
	}
	return []string{t, e.Kind, e.Volume, e.Node, e.Message, e.Cause}
}

// eventViews turns events into views, oldest first.
func eventViews(events []*mgmtv1.Event) []eventView {
	views := make([]eventView, 0, len(events))
	for _, e := range events {
		views = append(views, newEventView(e))
	}
	sort.SliceStable(views, func(i, j int) bool { return views[i].Seq < views[j].Seq })
	return views
}

func (a *app) eventCmd() *cobra.Command {
	s := &systemFlags{tls: &a.tls}
	cmd := &cobra.Command{
		Use:   "event",
		Short: "What the system did by itself, and why (through the management service)",
		Long: `Event lists the actions the management service took by itself to heal
volumes and collect leftovers (resyncs, rebuilds, replacements, removals,
garbage collection), and the node operations (cordon, uncordon, drain), each
with its cause.

Event talks to the management service on the access points (--access-points,
else $NEXSTOR_ACCESS_POINTS, else localhost:10124); the leader answers.`,
		Example: `  nexctl event list
  nexctl event list --volume v1 --watch`,
	}
	s.addAccessPoints(cmd.PersistentFlags())
	cmd.AddCommand(a.eventListCmd(s))
	return cmd
}

func (a *app) eventListCmd(s *systemFlags) *cobra.Command {
	var volume, node string
	var limit int
	var watch bool
	cmd := &cobra.Command{
		Use:     "list [--volume V] [--node N] [--limit K] [--watch]",
		Aliases: []string{"ls"},
		Short:   "List the newest events, oldest first; --watch follows new ones",
		Long: `List shows the newest events (100 unless --limit says otherwise), oldest
first: when (local time), what (KIND), on which volume and node, what was
done (MESSAGE) and why (CAUSE). --volume and --node (names) keep only the
events of that volume or node.

Kinds:

  replica.resync     a returning replica got the writes it missed
  replica.rebuild    a replica of the volume was copied in full
  replica.replace    a new replica for one that is lost
  replica.add        a replica added (set-replicas)
  replica.remove     a replica removed (set-replicas, replaced, drained)
  replica.gc         a replica that no volume owns was destroyed
  nexus.gc           a nexus that no volume owns was destroyed
  nexus.recreate     a volume's nexus was created again
  volume.healed      the volume has all its replicas healthy again
  repair.failed      a repair failed; the cause says why (it is retried)
  node.cordon, node.uncordon, node.drain, node.drained

--watch lists again every 2 seconds and prints only the events that are new,
until interrupted (Ctrl-C), or for --timeout when it is given. With -o json
it prints one JSON object per line, with -o yaml one document per event.`,
		Example: `  nexctl event list
  nexctl event list --volume v1
  nexctl event list --node node-2 --limit 20
  nexctl event list --watch
  nexctl event list -o json | jq -r 'select(.kind == "repair.failed") | .cause'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("volume") {
				if err := checkVolumeName(cmd, volume); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("node") && strings.TrimSpace(node) == "" {
				return usage(cmd, fmt.Errorf("--node is empty: give a node's name, as `nexctl node list` shows it, or leave --node out"))
			}
			if limit < 0 || limit > math.MaxUint32 {
				return usage(cmd, fmt.Errorf("--limit %d: give how many of the newest events to list, 1 or more (0 or none lists 100)", limit))
			}
			req := &mgmtv1.ListEventsRequest{Volume: volume, Node: node, Limit: uint32(limit)}
			if watch {
				return a.watchEvents(cmd, s, req)
			}
			var resp *mgmtv1.ListEventsResponse
			err := a.volumeDo(cmd, s, false, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
				var err error
				resp, err = cl.ListEvents(ctx, req)
				return err
			})
			if err != nil {
				return err
			}
			views := eventViews(resp.GetEvents())
			return output.Print(a.out, a.outFormat(), views, func(w io.Writer) error {
				t := output.NewTable(w, eventHeaders...)
				for _, e := range views {
					t.Row(e.cells()...)
				}
				return t.Flush()
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&volume, "volume", "", "only the events of this volume (its name)")
	f.StringVar(&node, "node", "", "only the events of this node (its name)")
	f.IntVar(&limit, "limit", 0, "list at most this many, the newest (default 100)")
	f.BoolVar(&watch, "watch", false, "list again every 2s and print the new events, until interrupted or --timeout")
	return cmd
}

// eventPrinter prints events one at a time, as --watch finds them: table
// rows whose columns keep the widths of the first ones printed, JSON
// lines, or YAML documents.
type eventPrinter struct {
	w      io.Writer
	format output.Format
	widths []int
}

// minEventWidths are the least widths of the columns of a watch, so that
// later rows line up with the first even when it was short or empty.
var minEventWidths = []int{25, 15, 10, 10, 40}

func (p *eventPrinter) print(events []eventView) error {
	switch p.format {
	case output.JSON:
		for _, e := range events {
			b, err := json.Marshal(e)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(p.w, "%s\n", b); err != nil {
				return err
			}
		}
		return nil
	case output.YAML:
		for _, e := range events {
			b, err := yaml.Marshal(e)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(p.w, "---\n%s", b); err != nil {
				return err
			}
		}
		return nil
	}
	if p.widths == nil {
		p.widths = append([]int(nil), minEventWidths...)
		for i := range p.widths {
			p.widths[i] = max(p.widths[i], utf8.RuneCountInString(eventHeaders[i]))
			for _, e := range events {
				p.widths[i] = max(p.widths[i], utf8.RuneCountInString(cellOrDash(e.cells()[i])))
			}
		}
		if err := p.row(eventHeaders); err != nil {
			return err
		}
	}
	for _, e := range events {
		if err := p.row(e.cells()); err != nil {
			return err
		}
	}
	return nil
}

func cellOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// row prints cells padded to the widths (the last one as it is), two
// spaces apart as the other tables are.
func (p *eventPrinter) row(cells []string) error {
	var b strings.Builder
	for i, c := range cells {
		c = cellOrDash(c)
		b.WriteString(c)
		if i < len(p.widths) {
			b.WriteString(strings.Repeat(" ", max(p.widths[i]-utf8.RuneCountInString(c), 0)+2))
		}
	}
	_, err := fmt.Fprintln(p.w, strings.TrimRight(b.String(), " "))
	return err
}

// watchEvents lists the events, then lists them again every watchPoll and
// prints those whose seq is above the highest printed, until interrupted,
// or until --timeout ends when it was given (a normal end: exit 0).
func (a *app) watchEvents(cmd *cobra.Command, s *systemFlags, req *mgmtv1.ListEventsRequest) error {
	c, err := s.mgmtClient(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if limit := a.waitLimit(cmd, 0); limit > 0 {
		ctx, cancel = context.WithTimeout(ctx, limit)
	}
	defer cancel()

	// The first list is the user's; the later ones ask for at least the
	// default, so that a burst between two lists is not cut short.
	var resp *mgmtv1.ListEventsResponse
	cctx, ccancel := context.WithTimeout(ctx, min(a.timeout, pollCallLimit))
	err = c.DoVolume(cctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		resp, err = cl.ListEvents(ctx, req)
		return err
	})
	ccancel()
	if err != nil {
		return err
	}
	p := &eventPrinter{w: a.out, format: a.outFormat()}
	views := eventViews(resp.GetEvents())
	if err := p.print(views); err != nil {
		return err
	}
	var seen uint64
	for _, e := range views {
		seen = max(seen, e.Seq)
	}
	later := &mgmtv1.ListEventsRequest{Volume: req.GetVolume(), Node: req.GetNode(), Limit: max(req.GetLimit(), 100)}
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(watchPoll):
	}
	_, err = pollUntil(ctx, c, watchPoll, cmd.ErrOrStderr(), func(ctx context.Context, cl mgmtv1.VolumeServiceClient) (*mgmtv1.ListEventsResponse, error) {
		return cl.ListEvents(ctx, later)
	}, func(resp *mgmtv1.ListEventsResponse) (bool, error) {
		var fresh []eventView
		for _, e := range eventViews(resp.GetEvents()) {
			if e.Seq > seen {
				fresh = append(fresh, e)
			}
		}
		if len(fresh) == len(resp.GetEvents()) && len(fresh) >= int(later.GetLimit()) && len(fresh) > 0 {
			// Every event listed is new: older new ones may have been
			// cut off by the limit.
			fmt.Fprintf(cmd.ErrOrStderr(), "%s  more than %d events since the last list: some may not be shown; "+
				"see them with `nexctl event list --limit N`\n", stamp(time.Now()), later.GetLimit())
		}
		if len(fresh) > 0 {
			seen = fresh[len(fresh)-1].Seq
		}
		return false, p.print(fresh)
	})
	if ctx.Err() != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		return nil
	}
	return err
}
