package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/engine"
)

func devCmd() *cobra.Command {
	var dataDir, grpcAddr, nbdAddr, nvmfAddr, discAddr string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a node on files under a data dir, with a shared demo replica",
		Long: `Dev runs a storage node for trying Nexstor out: a pool on a 1GiB sparse file
in the data dir, a thin 512MiB replica "demo" in it, shared over NBD and over
NVMe/TCP (any host may connect). The first start creates them; later starts
reuse the same pool, replica and shares. It prints how to reach the replica.`,
		Example: `  nexstor dev
  nexstor dev --data-dir /tmp/nexstor-dev --nbd 127.0.0.1:10810 --grpc 127.0.0.1:10125
  nexstor dev --nvmf "" --discovery ""     # NBD only`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			slog.SetDefault(logger)
			if nvmfAddr == "" {
				discAddr = ""
			}
			opts := engine.ServerOptions{DataDir: dataDir, GRPCListen: grpcAddr, NBDListen: nbdAddr,
				NVMfListen: nvmfAddr, DiscoveryListen: discAddr, Logger: logger}
			return run(opts, func(s *engine.Server) error {
				r, err := engine.SetupDev(s.Engine, dataDir)
				if err != nil {
					return err
				}
				printDev(cmd.OutOrStdout(), s, r)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "./nexstor-dev", "directory of the dev pool file and the engine state")
	cmd.Flags().StringVar(&grpcAddr, "grpc", config.DefaultGRPCListen, "engine gRPC listen address")
	cmd.Flags().StringVar(&nbdAddr, "nbd", "127.0.0.1:10809", "NBD listen address")
	cmd.Flags().StringVar(&nvmfAddr, "nvmf", "127.0.0.1:4420", `NVMe/TCP listen address ("" disables NVMe/TCP)`)
	cmd.Flags().StringVar(&discAddr, "discovery", "127.0.0.1:8009", `NVMe/TCP discovery listen address ("" disables it)`)
	return cmd
}

// hostNQN is the NQN this machine's kernel initiator uses when it has one
// (/etc/nvme/hostnqn), else a fresh one: the dev share admits any host.
func hostNQN() string {
	if b, err := os.ReadFile("/etc/nvme/hostnqn"); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s
		}
	}
	return "nqn.2014-08.org.nvmexpress:uuid:" + uuid.NewString()
}

func printDev(w io.Writer, s *engine.Server, r engine.ReplicaInfo) {
	eng := ""
	if s.GRPCAddr() != config.DefaultGRPCListen {
		eng = " --engine " + s.GRPCAddr()
	}
	var nbdURI, nvmfURI string
	for _, sh := range r.Shares {
		switch sh.Protocol {
		case engine.ProtocolNBD:
			nbdURI = sh.URI
		case engine.ProtocolNVMf:
			nvmfURI = sh.URI
		}
	}
	fmt.Fprintf(w, "\nNexstor dev node is running.\n\n  replica %s (%s, thin) in pool %s, shared at:\n", r.Name, output.Size(uint64(r.Size)), r.Pool)
	for _, sh := range r.Shares {
		fmt.Fprintf(w, "    %s\n", sh.URI)
	}
	fmt.Fprintf(w, "\nTry it:\n")
	if nbdURI != "" {
		fmt.Fprintf(w, `  nbdinfo %s
  nbdcopy ./some.img %s    # write a file into the replica
  nbdcopy %s ./copy.img    # read the replica back
`, nbdURI, nbdURI, nbdURI)
	}
	if nvmfURI != "" {
		hostPort, nqn, _ := strings.Cut(strings.TrimPrefix(nvmfURI, "nvmf://"), "/")
		host, port, _ := net.SplitHostPort(hostPort)
		fmt.Fprintf(w, "  nexctl bench %s --time 5s    # load it from the Go initiator\n", nvmfURI)
		if d := s.DiscoveryAddr(); d != "" {
			dhost, dport, _ := net.SplitHostPort(d)
			fmt.Fprintf(w, "  nvme discover -t tcp -a %s -s %s\n", dhost, dport)
		}
		fmt.Fprintf(w, "  nvme connect -t tcp -a %s -s %s -n %s --hostnqn %s\n", host, port, nqn, hostNQN())
	}
	fmt.Fprintf(w, `  nexctl%s replica list
  nexctl%s pool get %s

Press Ctrl-C to stop; the next start reuses the same pool, replica and shares.
`, eng, eng, r.Pool)
}
