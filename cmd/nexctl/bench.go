package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/loadgen"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/units"
)

// benchOptions are the flags of `nexctl bench`.
type benchOptions struct {
	pattern, rw, bs, hostNQN string
	readPct, qd, queues      int
	duration                 time.Duration
	digest, verify           bool
}

func (a *app) benchCmd() *cobra.Command {
	o := benchOptions{}
	cmd := &cobra.Command{
		Use:   "bench URI",
		Short: "Measure IOPS, bandwidth and latency of a share or a disk",
		Long: `Bench puts a load on a block device and reports IOPS, bandwidth and latency
percentiles, like spdk_nvme_perf or fio. It talks to the device directly and
needs no engine.

URI is an NVMe/TCP share, nvmf://HOST:PORT/NQN (namespace 1, through the
built-in NVMe/TCP initiator), or a disk URI for a baseline of the backing
store: uring:///dev/sdb or aio:///dev/sdb (the io_uring and the pread/pwrite
engines), file:///path?size=1GiB or a bare path (io_uring, as for a pool),
malloc:///ram?size=512MiB.

Writes destroy the data in the region they touch. --verify makes every write
carry a pattern and checks every read of a block written during the run; a
mismatch or an I/O error makes the command fail after printing the results.`,
		Example: `  nexctl bench nvmf://10.0.0.5:4420/nqn.2024-11.io.nexstor:replica:<uuid>
  nexctl bench nvmf://127.0.0.1:4420/<nqn> --rw write --bs 128KiB --qd 8 --pattern sequential
  nexctl bench nvmf://127.0.0.1:4420/<nqn> --rw mixed --read-pct 70 --verify --time 30s -o json
  nexctl bench 'malloc:///ram?size=1GiB' --qd 32    # the same load without a network`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := o.spec()
			if err != nil {
				return usage(cmd, err)
			}
			if strings.HasPrefix(args[0], "nvmf://") {
				if _, _, err := parseNVMfURI(args[0]); err != nil {
					return usage(cmd, err)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			res, err := runBench(ctx, args[0], o, spec)
			if err != nil {
				return err
			}
			if err := output.Print(a.out, a.outFormat(), res, func(w io.Writer) error { return benchTable(w, res) }); err != nil {
				return err
			}
			if res.Errors > 0 {
				return fmt.Errorf("bench: %d I/O errors or verification failures, the first: %s", res.Errors, res.FirstError)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.pattern, "pattern", "random", "access pattern: random or sequential")
	f.StringVar(&o.rw, "rw", "read", "read, write or mixed")
	f.IntVar(&o.readPct, "read-pct", 70, "percentage of reads with --rw mixed")
	f.StringVar(&o.bs, "bs", "4KiB", "size of each I/O, a multiple of the device's block size")
	f.IntVar(&o.qd, "qd", 32, "I/Os in flight")
	f.DurationVar(&o.duration, "time", 10*time.Second, "how long to run")
	f.IntVar(&o.queues, "queues", 0, "NVMe/TCP I/O queues (connections); 0 means min(4, CPUs)")
	f.StringVar(&o.hostNQN, "hostnqn", "", "host NQN to connect with (must be on the share's allow-list, if it has one)")
	f.BoolVar(&o.digest, "digest", false, "request NVMe/TCP header and data digests (CRC32C)")
	f.BoolVar(&o.verify, "verify", false, "write self-checking data and verify every read of it")
	return cmd
}

// spec validates the flags into a workload.
func (o benchOptions) spec() (loadgen.Spec, error) {
	s := loadgen.Spec{QueueDepth: o.qd, Duration: o.duration, Verify: o.verify}
	switch o.pattern {
	case "random":
		s.Pattern = loadgen.Random
	case "sequential", "seq":
		s.Pattern = loadgen.Sequential
	default:
		return s, fmt.Errorf("--pattern %q: use random or sequential", o.pattern)
	}
	switch o.rw {
	case "read":
		s.Mix = loadgen.Read
	case "write":
		s.Mix = loadgen.Write
	case "mixed", "rw":
		s.Mix, s.ReadPercent = loadgen.Mixed, o.readPct
		if o.readPct < 0 || o.readPct > 100 {
			return s, fmt.Errorf("--read-pct %d: use 0 to 100", o.readPct)
		}
		if o.readPct == 0 {
			// loadgen reads 0 as its default; all writes is --rw write.
			return s, fmt.Errorf("--read-pct 0: use --rw write for a write-only load")
		}
	default:
		return s, fmt.Errorf("--rw %q: use read, write or mixed", o.rw)
	}
	bs, err := units.ParseSize(o.bs)
	if err != nil {
		return s, fmt.Errorf("--bs: %w", err)
	}
	if bs <= 0 || bs > 16<<20 {
		return s, fmt.Errorf("--bs %s: use a size from 512 bytes to 16MiB", o.bs)
	}
	s.BlockSize = int(bs)
	if o.qd < 1 || o.qd > 4096 {
		return s, fmt.Errorf("--qd %d: use 1 to 4096", o.qd)
	}
	if o.duration <= 0 {
		return s, fmt.Errorf("--time %v: give a positive duration such as 10s", o.duration)
	}
	if o.queues < 0 {
		return s, fmt.Errorf("--queues %d: use 0 (default) or more", o.queues)
	}
	return s, nil
}

// benchResult is the stable JSON/YAML form of a bench run. Latencies are
// microseconds, bandwidth bytes per second.
type benchResult struct {
	URI        string       `json:"uri" yaml:"uri"`
	Pattern    string       `json:"pattern" yaml:"pattern"`
	RW         string       `json:"rw" yaml:"rw"`
	ReadPct    int          `json:"read_pct,omitempty" yaml:"read_pct,omitempty"`
	BlockSize  int          `json:"block_size" yaml:"block_size"`
	QueueDepth int          `json:"queue_depth" yaml:"queue_depth"`
	Queues     int          `json:"queues,omitempty" yaml:"queues,omitempty"`
	Verify     bool         `json:"verify" yaml:"verify"`
	Seconds    float64      `json:"seconds" yaml:"seconds"`
	Ops        int64        `json:"ops" yaml:"ops"`
	Reads      int64        `json:"reads" yaml:"reads"`
	Writes     int64        `json:"writes" yaml:"writes"`
	Bytes      int64        `json:"bytes" yaml:"bytes"`
	IOPS       float64      `json:"iops" yaml:"iops"`
	Bandwidth  float64      `json:"bandwidth" yaml:"bandwidth"`
	LatencyUS  benchLatency `json:"latency_us" yaml:"latency_us"`
	Errors     int64        `json:"errors" yaml:"errors"`
	FirstError string       `json:"first_error,omitempty" yaml:"first_error,omitempty"`
}

type benchLatency struct {
	Min  float64 `json:"min" yaml:"min"`
	Mean float64 `json:"mean" yaml:"mean"`
	P50  float64 `json:"p50" yaml:"p50"`
	P90  float64 `json:"p90" yaml:"p90"`
	P99  float64 `json:"p99" yaml:"p99"`
	P999 float64 `json:"p99_9" yaml:"p99_9"`
	Max  float64 `json:"max" yaml:"max"`
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// openBenchDevice opens the device a bench URI names; close releases it (and
// the NVMe/TCP connection).
func openBenchDevice(ctx context.Context, uri string, o benchOptions) (bdev.Device, func() error, error) {
	if !strings.HasPrefix(uri, "nvmf://") {
		// A bare path or file:// means what it means for a pool: io_uring.
		uri, err := bdev.ResolveEngine(uri, bdev.ProbeURing)
		if err != nil {
			return nil, nil, err
		}
		dev, err := bdev.Open(uri)
		if err != nil {
			return nil, nil, err
		}
		return dev, dev.Close, nil
	}
	addr, nqn, err := parseNVMfURI(uri)
	if err != nil {
		return nil, nil, err
	}
	// One command slot per outstanding I/O on every queue: loadgen's workers
	// may all land on one queue.
	c, err := initiator.Connect(ctx, addr, nqn, initiator.Options{HostNQN: o.hostNQN, IOQueues: o.queues,
		QueueDepth: o.qd, HeaderDigest: o.digest, DataDigest: o.digest, MaxReconnect: 1})
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s at %s: %w", nqn, addr, err)
	}
	ns, err := c.Namespace(1)
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("%s: namespace 1: %w", nqn, err)
	}
	return ns, c.Close, nil
}

// parseNVMfURI splits nvmf://HOST:PORT/NQN; the port defaults to 4420.
func parseNVMfURI(uri string) (addr, nqn string, err error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "nvmf" || u.Host == "" {
		return "", "", fmt.Errorf("URI %q: use nvmf://HOST:PORT/NQN", uri)
	}
	nqn = strings.TrimPrefix(u.Path, "/")
	if nqn == "" || strings.Contains(nqn, "/") {
		return "", "", fmt.Errorf("URI %q: no subsystem NQN after the address: use nvmf://HOST:PORT/NQN", uri)
	}
	addr = u.Host
	if u.Port() == "" {
		addr += ":4420"
	}
	return addr, nqn, nil
}

// runBench opens the device, runs the load, and closes the device.
func runBench(ctx context.Context, uri string, o benchOptions, spec loadgen.Spec) (benchResult, error) {
	dev, closeDev, err := openBenchDevice(ctx, uri, o)
	if err != nil {
		return benchResult{}, err
	}
	res, err := loadgen.Run(ctx, dev, spec)
	if cerr := closeDev(); cerr != nil && err == nil && res.Errors == 0 {
		err = fmt.Errorf("close %s: %w", uri, cerr)
	}
	if err != nil {
		return benchResult{}, err
	}
	r := benchResult{URI: uri, Pattern: spec.Pattern.String(), RW: spec.Mix.String(), BlockSize: spec.BlockSize,
		QueueDepth: spec.QueueDepth, Queues: o.queues, Verify: spec.Verify, Seconds: res.Elapsed.Seconds(),
		Ops: res.Ops, Reads: res.Reads, Writes: res.Writes, Bytes: res.Bytes, IOPS: res.IOPS, Bandwidth: res.Bandwidth,
		LatencyUS: benchLatency{Min: us(res.Latency.Min), Mean: us(res.Latency.Mean), P50: us(res.Latency.P50),
			P90: us(res.Latency.P90), P99: us(res.Latency.P99), P999: us(res.Latency.P999), Max: us(res.Latency.Max)},
		Errors: res.Errors}
	if spec.Mix == loadgen.Mixed {
		r.ReadPct = spec.ReadPercent
	}
	if res.FirstError != nil {
		r.FirstError = res.FirstError.Error()
	}
	return r, nil
}

func benchTable(w io.Writer, r benchResult) error {
	mix := r.RW
	if r.ReadPct > 0 {
		mix += " (" + strconv.Itoa(r.ReadPct) + "% reads)"
	}
	lat := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) + "us" }
	return output.KeyValues(w,
		"URI", r.URI,
		"Load", fmt.Sprintf("%s %s, %s blocks, queue depth %d", r.Pattern, mix, units.FormatSize(int64(r.BlockSize)), r.QueueDepth),
		"Time", strconv.FormatFloat(r.Seconds, 'f', 2, 64)+"s",
		"IOPS", strconv.FormatFloat(r.IOPS, 'f', 0, 64),
		"Bandwidth", fmt.Sprintf("%.1f MiB/s", r.Bandwidth/(1<<20)),
		"I/Os", fmt.Sprintf("%d (%d reads, %d writes)", r.Ops, r.Reads, r.Writes),
		"Latency", fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s", lat(r.LatencyUS.P50), lat(r.LatencyUS.P90), lat(r.LatencyUS.P99), lat(r.LatencyUS.P999)),
		"Latency range", fmt.Sprintf("min %s  mean %s  max %s", lat(r.LatencyUS.Min), lat(r.LatencyUS.Mean), lat(r.LatencyUS.Max)),
		"Errors", strconv.FormatInt(r.Errors, 10))
}
