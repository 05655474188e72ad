// Command nexctl is the Nexstor admin tool. It talks to the management
// service (volumes, nodes, the pools of every node, system membership), to
// one node's engine over gRPC (pools, replicas, nexuses and how they are
// shared), and to the node services of many servers at once (storage);
// bench loads a share or a disk directly.
//
// Exit status: 0 on success, 1 when the operation failed, 2 when nexctl was
// called wrongly (unknown command or flag, wrong number of arguments, a bad
// flag value). Errors are printed on stderr as "Error: ...", "Code: ..."
// and "Resolution: ...", each once.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/engine/engineclient"
	"github.com/nexstor/nexstor/internal/units"
)

// defaultEngine is the engine address when neither --engine nor
// NEXSTOR_ENGINE is given.
const defaultEngine = "localhost:10124"

// app holds the global flags and the engine client, made on first use.
type app struct {
	engineAddr string
	format     string
	timeout    time.Duration
	tls        tlsFlags
	out        io.Writer

	eng *engineclient.Client
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run runs nexctl with args, printing results on stdout and errors on
// stderr, and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	a := &app{out: stdout}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteC()
	if a.eng != nil {
		a.eng.Close()
	}
	if err == nil {
		return 0
	}
	err, status := classify(cmd, err)
	output.Error(stderr, err)
	return status
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "nexctl",
		Short: "Administer Nexstor storage: volumes, nodes, pools, replicas, nexuses and shares",
		Long: `nexctl administers a Nexstor system through its management service (volume,
node, event, pool list, system) and one storage node through its engine's
gRPC API (pool, replica, nexus, host).

A volume is mirrored over replicas on several nodes; the management service
places, creates and publishes it (nexctl volume), and heals it by itself when
a node fails (nexctl event list says what it did). nexctl node cordons and
drains nodes for maintenance. Pools turn a disk (a file, a
block device, or RAM) into storage; replicas are block devices carved out of
pools; a shared replica can be reached by NBD clients (nbdinfo, nbdcopy, qemu,
fio) or NVMe/TCP hosts at the URI nexctl prints; a nexus mirrors a volume over
replicas of several nodes. bench measures a share or a disk.

The management service is reached at --access-points (-a), else
$NEXSTOR_ACCESS_POINTS, else localhost:10124, in host-list notation; the
leader answers.

The engine address comes from --engine, else from $NEXSTOR_ENGINE, else
` + defaultEngine + `. It is host[:port] (port 10124 when left out) or an IP
address, IPv6 in brackets with a port ([::1]:10124). A host list such as
node-[1-3] is taken by the commands that fan out (storage scan, storage
format) and refused by the others, which talk to one engine.

Exit status: 0 on success, 1 when the operation failed, 2 when the command
line is wrong. Errors print on stderr as Error, Code and Resolution lines.

` + tlsHelp,
		Example: `  nexctl volume create v1 --size 10GiB --replicas 3
  nexctl volume publish v1 --node node-0
  nexctl node list
  nexctl node drain node-2 --wait
  nexctl event list --watch
  nexctl pool create p0 'file:///var/lib/nexstor/d0.img?size=10GiB'
  nexctl replica create r0 --pool p0 --size 1GiB --thin
  nexctl replica share r0 --protocol nbd
  nexctl replica list -o json
  nexctl nexus create vol1 --child bdev:///<uuid> --child nvmf://nodeb:4420/<nqn>
  nexctl bench nvmf://127.0.0.1:4420/<nqn> --rw mixed --time 10s`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if _, err := output.ParseFormat(a.format); err != nil {
				return usage(cmd, fmt.Errorf("-o: %w", err))
			}
			if a.timeout <= 0 {
				return usage(cmd, fmt.Errorf("--timeout %v: give a positive duration such as 30s", a.timeout))
			}
			return nil
		},
	}
	env := os.Getenv("NEXSTOR_ENGINE")
	if env == "" {
		env = defaultEngine
	}
	root.PersistentFlags().StringVar(&a.engineAddr, "engine", env, "engine gRPC address host[:port] (env NEXSTOR_ENGINE)")
	root.PersistentFlags().StringVarP(&a.format, "output", "o", "table", "output format: table, json or yaml")
	a.tls.add(root.PersistentFlags())
	root.PersistentFlags().DurationVar(&a.timeout, "timeout", 60*time.Second,
		"time limit of each call (connecting to a server that does not answer fails sooner)")
	root.AddCommand(a.poolCmd(), a.replicaCmd(), a.snapshotCmd(), a.nexusCmd(), a.hostCmd(), a.versionCmd(), a.benchCmd(),
		a.systemCmd(), a.storageCmd(), a.volumeCmd(), a.nodeCmd(), a.eventCmd())
	strict(root)
	return root
}

func (a *app) outFormat() output.Format {
	f, _ := output.ParseFormat(a.format)
	return f
}

// engine returns the client of the engine of --engine, made once. A host
// list is refused: the commands that use it talk to one engine.
func (a *app) engine(cmd *cobra.Command) (*engineclient.Client, error) {
	if a.eng != nil {
		return a.eng, nil
	}
	addrs, err := expandEngines("--engine", a.engineAddr)
	if err != nil {
		return nil, usage(cmd, err)
	}
	if len(addrs) > 1 {
		return nil, usage(cmd, fmt.Errorf("--engine %s names %d engines, and `%s` talks to one; "+
			"give one address (storage scan and storage format take a host list)", a.engineAddr, len(addrs), cmd.CommandPath()))
	}
	c, err := engineclient.New(addrs[0], engineclient.Options{TLS: a.tls.files(), Insecure: a.tls.plain(addrs)})
	if err != nil {
		return nil, a.tls.certsFault(err)
	}
	a.eng = c
	return c, nil
}

func (a *app) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), a.timeout)
}

// withEngine runs fn with the engine's client and a context bounded by
// --timeout.
func (a *app) withEngine(cmd *cobra.Command, fn func(ctx context.Context, c *engineclient.Client) error) error {
	c, err := a.engine(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := a.ctx()
	defer cancel()
	return fn(ctx, c)
}

// parseSize parses the human size of a flag ("1GiB", "512MiB",
// "1073741824"); a bad one is a usage error of cmd.
func parseSize(cmd *cobra.Command, flag, s string) (uint64, error) {
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, usage(cmd, fmt.Errorf("--%s: %w", flag, err))
	}
	return uint64(n), nil
}
