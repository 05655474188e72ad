// Command devpprof runs the system `nexstor dev` runs (the same
// ctlserver.RunDev, the same flags and defaults) with net/http/pprof on a
// loopback address, so that a benchmark can take CPU profiles of the nodes
// while it drives them: `nexstor dev` itself serves no profiles.
//
//	go run ./bench/devpprof --pprof 127.0.0.1:6060 --data-dir DIR ...
//	go tool pprof -top 'http://127.0.0.1:6060/debug/pprof/profile?seconds=10'
//
// All the nodes run in this one process, so a profile covers every node and
// the management service together. The handlers cost nothing until a
// profile is asked for. It prints "ready" on stdout once every node has
// joined, and stops on SIGINT or SIGTERM as `nexstor dev` does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nexstor/nexstor/internal/control/config"
	ctlserver "github.com/nexstor/nexstor/internal/control/server"
	"github.com/nexstor/nexstor/internal/sysmon"
)

func main() {
	var o ctlserver.DevOptions
	pprofAddr := flag.String("pprof", "127.0.0.1:6060", "serve net/http/pprof on this address (loopback: the handlers reveal memory and can stall the process)")
	flag.IntVar(&o.Nodes, "nodes", 3, "number of storage nodes")
	flag.StringVar(&o.DataDir, "data-dir", "./nexstor-dev", "directory of the nodes' data dirs and pool files")
	flag.IntVar(&o.GRPCPort, "grpc-port", config.DefaultPort, "gRPC port of node 0 (node i: port+i)")
	flag.IntVar(&o.NBDPort, "nbd-port", 10809, "NBD port of node 0 (node i: port+i)")
	flag.IntVar(&o.NVMfPort, "nvmf-port", 4420, "NVMe/TCP port of node 0 (node i: port+i)")
	flag.IntVar(&o.DiscoveryPort, "discovery-port", 8009, "NVMe/TCP discovery port of node 0")
	flag.IntVar(&o.EtcdPort, "etcd-port", config.DefaultEtcdClientPort, "client port of the embedded etcd (its peer port is the next one)")
	flag.IntVar(&o.MetricsPort, "metrics-port", 0, "Prometheus /metrics port of node 0 (0: 9502 or a free port; -1 disables metrics)")
	flag.StringVar(&o.PoolSize, "pool-size", "1GiB", "size of each node's sparse pool file")
	flag.StringVar(&o.Demo, "demo", "demo", `name of the demo volume ("" for none), as nexstor dev's`)
	steady := flag.Bool("steady-monitor", false, "as nexstor dev's --steady-monitor (package sysmon)")
	flag.Parse()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	slog.SetDefault(logger)
	// As `nexstor dev --steady-monitor` does, so that the system profiled
	// runs as the one shipped with the same flags.
	if *steady {
		if err := sysmon.Quiet(); err != nil {
			logger.Warn("sysmon: running on without the setting", "err", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", *pprofAddr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "devpprof: listen for pprof on %s: %v (pick a free address with --pprof)\n", *pprofAddr, err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("pprof server failed", "err", err)
		}
	}()
	defer srv.Close()
	logger.Warn("pprof enabled", "addr", ln.Addr().String())

	o.Logger = logger
	o.Ready = func(ctlserver.DevSystem) { fmt.Println("ready") }
	if err := ctlserver.RunDev(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "devpprof: %v\n", err)
		os.Exit(1)
	}
}
