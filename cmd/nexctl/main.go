// Command nexctl is the Nexstor admin tool. This build talks to one node's
// engine over gRPC: pools, replicas, nexuses and how they are shared; bench
// loads a share or a disk directly.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/units"
)

// defaultEngine is the engine address when neither --engine nor
// NEXSTOR_ENGINE is given.
const defaultEngine = "localhost:10124"

// app holds the global flags and the connection, opened on first use.
type app struct {
	engineAddr string
	format     string
	timeout    time.Duration
	tls        tlsFlags
	out        io.Writer

	conn *grpc.ClientConn
}

func main() {
	a := &app{out: os.Stdout}
	root := a.rootCmd()
	err := root.Execute()
	if a.conn != nil {
		a.conn.Close()
	}
	if err != nil {
		output.Error(os.Stderr, cliError(err))
		os.Exit(1)
	}
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "nexctl",
		Short: "Administer Nexstor storage: pools, replicas, nexuses and shares",
		Long: `nexctl administers a Nexstor storage node through its engine's gRPC API.

Pools turn a disk (a file, a block device, or RAM) into storage; replicas are
block devices carved out of pools; a shared replica can be reached by NBD
clients (nbdinfo, nbdcopy, qemu, fio) or NVMe/TCP hosts at the URI nexctl
prints; a nexus mirrors a volume over replicas of several nodes. bench
measures a share or a disk.

The engine address comes from --engine, else from $NEXSTOR_ENGINE, else
` + defaultEngine + `.

` + tlsHelp,
		Example: `  nexctl pool create p0 'file:///var/lib/nexstor/d0.img?size=10GiB'
  nexctl replica create r0 --pool p0 --size 1GiB --thin
  nexctl replica share r0 --protocol nbd
  nexctl replica list -o json
  nexctl nexus create vol1 --child bdev:///<uuid> --child nvmf://nodeb:4420/<nqn>
  nexctl bench nvmf://127.0.0.1:4420/<nqn> --rw mixed --time 10s`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			_, err := output.ParseFormat(a.format)
			return err
		},
	}
	env := os.Getenv("NEXSTOR_ENGINE")
	if env == "" {
		env = defaultEngine
	}
	root.PersistentFlags().StringVar(&a.engineAddr, "engine", env, "engine gRPC address host:port (env NEXSTOR_ENGINE)")
	root.PersistentFlags().StringVarP(&a.format, "output", "o", "table", "output format: table, json or yaml")
	a.tls.add(root.PersistentFlags())
	root.PersistentFlags().DurationVar(&a.timeout, "timeout", 60*time.Second, "time limit of each call to the engine")
	root.AddCommand(a.poolCmd(), a.replicaCmd(), a.nexusCmd(), a.hostCmd(), a.versionCmd(), a.benchCmd(),
		a.systemCmd(), a.storageCmd())
	return root
}

func (a *app) outFormat() output.Format {
	f, _ := output.ParseFormat(a.format)
	return f
}

// dial connects to the engine once; calls reuse the connection.
func (a *app) dial() (*grpc.ClientConn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	opts, err := a.tls.dialOptions(a.engineAddr)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(a.engineAddr, opts...)
	if err != nil {
		return nil, fmt.Errorf("engine address %q: %w", a.engineAddr, err)
	}
	a.conn = conn
	return conn, nil
}

func (a *app) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), a.timeout)
}

// call dials the engine, makes a client of one of its services with
// newClient and runs fn with a context bounded by --timeout.
func call[C any](a *app, newClient func(grpc.ClientConnInterface) C, fn func(context.Context, C) error) error {
	conn, err := a.dial()
	if err != nil {
		return err
	}
	ctx, cancel := a.ctx()
	defer cancel()
	return fn(ctx, newClient(conn))
}

// parseSize parses a human size ("1GiB", "512MiB", "1073741824").
func parseSize(flag, s string) (uint64, error) {
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--%s: %w", flag, err)
	}
	if n < 0 {
		return 0, fmt.Errorf("--%s %q: a size cannot be negative", flag, s)
	}
	return uint64(n), nil
}
