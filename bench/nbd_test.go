// Package bench holds benchmarks that run whole stacks in-process, so that
// they can be profiled with the go tool (go test -bench ... -cpuprofile).
package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nbd"
	"github.com/nexstor/nexstor/internal/pool"
	"github.com/nexstor/nexstor/internal/testutil"
)

var (
	nbdBenchBacking = flag.String("nbd.backing", "file", "backing of the pool in BenchmarkNBDPool: file (O_DIRECT when possible), buffered, uring (file with io_uring, O_DIRECT when possible), uring-buffered, or malloc")
	nbdBenchRuntime = flag.Int("nbd.runtime", 5, "seconds fio runs in each BenchmarkNBDPool workload")
)

// BenchmarkNBDPool serves a thin replica of a pool through an in-process
// nbd.Server and drives it with fio's nbd engine, the same workloads as
// bench/nbd.sh, so that the server's CPU profile shows where the time goes:
//
//	go test ./bench -run '^$' -bench NBDPool -benchtime 1x -cpuprofile cpu.out
//	go tool pprof -top bench.test cpu.out
//
// Each workload reports fio's IOPS, and the server's (this process's) CPU
// time and context switches per I/O, as metrics; the replica is pre-filled
// before the reads so they hit allocated clusters.
func BenchmarkNBDPool(b *testing.B) {
	fio := testutil.RequireTool(b, "fio")
	const size = 256 << 20
	var dev bdev.Device
	var err error
	switch *nbdBenchBacking {
	case "malloc":
		dev, err = bdev.NewMalloc(size+128<<20, 4096)
	case "file", "buffered", "uring", "uring-buffered":
		direct := *nbdBenchBacking == "file" || *nbdBenchBacking == "uring"
		uring := strings.HasPrefix(*nbdBenchBacking, "uring")
		dev, err = bdev.OpenFile(filepath.Join(b.TempDir(), "pool.img"), bdev.FileOptions{Create: true, Size: size + 128<<20, Direct: &direct, URing: uring})
	default:
		b.Fatalf("-nbd.backing=%q: use file, buffered, uring, uring-buffered or malloc", *nbdBenchBacking)
	}
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	p, err := pool.Create(dev, pool.CreateOptions{Name: "p0"})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	if _, err := p.CreateReplica(pool.ReplicaOptions{Name: "r0", Size: size, Thin: true}); err != nil {
		b.Fatal(err)
	}
	r, err := p.OpenReplica("r0")
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()

	s := nbd.NewServer(nil)
	defer s.Close()
	if err := s.AddExport("r0", r, nbd.ExportOptions{}); err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(context.Background(), l)
	uri := fmt.Sprintf("nbd://%s/r0", l.Addr())

	runFio := func(tb testing.TB, name string, args ...string) (iops, cpuPerIO, cswPerIO float64) {
		args = append([]string{"--name=" + name, "--ioengine=nbd", "--uri=" + uri, "--output-format=json", fmt.Sprintf("--size=%d", size)}, args...)
		cpu0, csw0 := usage()
		out, err := exec.Command(fio, args...).Output()
		cpu1, csw1 := usage()
		cpu, csw := cpu1-cpu0, csw1-csw0
		if err != nil {
			tb.Fatalf("fio %v: %v\n%s", args, err, out)
		}
		if i := strings.IndexByte(string(out), '{'); i > 0 {
			out = out[i:]
		}
		type dir struct {
			IOPS     float64
			TotalIOs float64 `json:"total_ios"`
		}
		var res struct {
			Jobs []struct {
				Error int
				Read  dir
				Write dir
			}
		}
		if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != 1 || res.Jobs[0].Error != 0 {
			tb.Fatalf("fio %v: %v\n%s", args, err, out)
		}
		j := res.Jobs[0]
		ios := j.Read.TotalIOs + j.Write.TotalIOs
		return j.Read.IOPS + j.Write.IOPS, cpu.Seconds() * 1e6 / max(ios, 1), float64(csw) / max(ios, 1)
	}
	runFio(b, "prefill", "--rw=write", "--bs=1m", "--iodepth=8")

	rt := fmt.Sprintf("--runtime=%d", *nbdBenchRuntime)
	for _, w := range []struct{ name, rw, bs, depth string }{
		{"randread-4k-qd32", "randread", "4k", "32"},
		{"randwrite-4k-qd32", "randwrite", "4k", "32"},
		{"write-1m-qd8", "write", "1m", "8"},
	} {
		b.Run(w.name, func(b *testing.B) {
			var iops, cpu, csw float64
			for b.Loop() {
				iops, cpu, csw = runFio(b, w.name, "--rw="+w.rw, "--bs="+w.bs, "--iodepth="+w.depth, "--time_based", rt, "--randrepeat=0", "--norandommap")
			}
			b.ReportMetric(iops, "IOPS")
			b.ReportMetric(cpu, "server-CPU-µs/IO")
			b.ReportMetric(csw, "server-ctxsw/IO")
		})
	}
}

// usage is the user and system CPU time of this process so far, and its
// context switches (voluntary and involuntary, all threads).
func usage() (time.Duration, int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Nvcsw + ru.Nivcsw
}
