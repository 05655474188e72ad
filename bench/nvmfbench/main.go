// Command nvmfbench compares four paths to the same pool replicas, in one
// run, with the same workloads:
//
//   - nvmf: internal/loadgen over this module's NVMe/TCP initiator, against
//     this module's target on loopback;
//   - nbd: fio (ioengine=nbd, libnbd) against this module's NBD server on
//     loopback;
//   - raw: internal/loadgen directly on the replica's bdev.Device, in the
//     process that owns it (no network, no protocol): the backing store;
//   - nbd-go: internal/loadgen over a minimal Go NBD client against the same
//     NBD server, so that NBD and NVMe/TCP are also compared with the same
//     load generator.
//
// Two replicas are measured: a thin replica of a pool on a malloc device and
// one on a file (O_DIRECT where the filesystem allows), both pre-filled. They
// live in a separate server process (this program re-executed with -serve),
// which also runs the raw path on request, so that the client and server
// sides of a network path do not share a Go runtime, and the server's CPU
// time, system calls, context switches and allocations per I/O can be read
// on their own.
//
// Every workload runs on every path and backing in turn, -r times, and the
// median of each is reported as a markdown table on stdout; progress goes to
// stderr.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nexstor/nexstor/bench/internal/benchutil"
	"github.com/nexstor/nexstor/bench/internal/nbdclient"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/loadgen"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
)

// measured is one run of one workload on one path.
type measured struct {
	IOPS      float64 `json:"iops"`
	Bandwidth float64 `json:"bw"` // bytes per second
	P50       float64 `json:"p50_us"`
	P99       float64 `json:"p99_us"`
	Ops       int64   `json:"ops"`
	// ServerCPU is the server process's CPU time per I/O in µs, and
	// ServerAllocs its heap allocations per I/O (network paths only).
	ServerCPU    float64 `json:"server_cpu_us"`
	ServerAllocs float64 `json:"server_allocs"`
	// ServerSyscalls is the server's read and write system calls per I/O
	// (all threads) and ServerSwitches its context switches per I/O
	// (voluntary and not, summed over its live threads).
	ServerSyscalls float64 `json:"server_syscalls"`
	ServerSwitches float64 `json:"server_switches"`
}

func fromLoadgen(r loadgen.Result) measured {
	return measured{
		IOPS:      r.IOPS,
		Bandwidth: r.Bandwidth,
		P50:       float64(r.Latency.P50) / float64(time.Microsecond),
		P99:       float64(r.Latency.P99) / float64(time.Microsecond),
		Ops:       r.Ops,
	}
}

// workload is one row of the tables.
type workload struct {
	name    string
	pattern loadgen.Pattern
	mix     loadgen.Mix
	bs, qd  int
}

var allWorkloads = []workload{
	{"randread-4k-qd1", loadgen.Random, loadgen.Read, 4096, 1},
	{"randread-4k-qd32", loadgen.Random, loadgen.Read, 4096, 32},
	{"randwrite-4k-qd1", loadgen.Random, loadgen.Write, 4096, 1},
	{"randwrite-4k-qd32", loadgen.Random, loadgen.Write, 4096, 32},
	{"read-128k-qd8", loadgen.Sequential, loadgen.Read, 128 << 10, 8},
	{"write-128k-qd8", loadgen.Sequential, loadgen.Write, 128 << 10, 8},
	{"write-1m-qd8", loadgen.Sequential, loadgen.Write, 1 << 20, 8},
}

// serverPath says whether the server process serves path p (and so whether
// its CPU, system calls and switches per I/O mean anything for it).
func serverPath(p string) bool { return p != "raw" && p != "fio-raw" }

func main() {
	var (
		serveMode = flag.Bool("serve", false, "run as the server process (used by the driver)")
		dir       = flag.String("dir", "", "directory for the file-backed pool (default: a new one under $TMPDIR or /var/tmp); must not be tmpfs for O_DIRECT")
		mallocMiB = flag.Int64("malloc-size", 64, "size of the malloc-backed replica in MiB (small by default: on virtual machines a large random working set in RAM measures the host's page-table walks more than the I/O path)")
		fileMiB   = flag.Int64("file-size", 1024, "size of the file-backed replica in MiB")
		runtimeS  = flag.Float64("t", 5, "seconds each measured run lasts")
		repeat    = flag.Int("r", 3, "runs of each workload on each path; the median is reported")
		backs     = flag.String("backings", "malloc,file", "comma-separated backings: malloc, file (thin replicas of pools), uring (a file of -file-size MiB exported as it is, O_DIRECT through io_uring: the backing of the fio-raw path)")
		wls       = flag.String("workloads", "", "comma-separated workload names (default: all): "+workloadNames())
		paths     = flag.String("paths", "nvmf,nbd,nbd-go,raw", "comma-separated paths: nvmf, nbd (fio), nbd-go, raw, fio-raw (fio ioengine=io_uring direct=1 on the uring backing's file; other backings skip it)")
		profDir   = flag.String("profile", "", "write CPU profiles of the server process (server-PATH-BACKING.pprof) and of this process (client-PATH-BACKING.pprof, where the Go initiator or NBD client runs) during the first run of the -profile-workload on each network path and backing into this directory")
		profWL    = flag.String("profile-workload", "randread-4k-qd32", "the workload -profile profiles")
		rawJSON   = flag.String("json", "", "also write every sample as JSON to this file")
		from      = flag.String("from", "", "measure nothing: report the samples of these comma-separated -json files together (runs of one build, interleaved with another's by bench/nvmf-ab.sh); -backings, -paths and -workloads select the rows")
		verify    = flag.Bool("verify", false, "check the loadgen paths instead of measuring them: every workload becomes a 50/50 read/write mix whose reads of blocks the run wrote are checked")
	)
	flag.Parse()
	backings := strings.Split(*backs, ",")
	if *serveMode {
		if err := serve(backings, *dir, map[string]int64{"malloc": *mallocMiB << 20, "file": *fileMiB << 20, "uring": *fileMiB << 20}); err != nil {
			fmt.Fprintln(os.Stderr, "nvmfbench -serve:", err)
			os.Exit(1)
		}
		return
	}
	cfg := config{
		sizeMiB:  map[string]int64{"malloc": *mallocMiB, "file": *fileMiB, "uring": *fileMiB},
		runtime:  time.Duration(*runtimeS * float64(time.Second)),
		repeat:   *repeat,
		backings: backings,
		paths:    strings.Split(*paths, ","),
		profDir:  *profDir,
		profWL:   *profWL,
		dir:      *dir,
		rawJSON:  *rawJSON,
		verify:   *verify,
	}
	if *wls == "" {
		cfg.workloads = allWorkloads
	} else {
		for _, n := range strings.Split(*wls, ",") {
			i := slices.IndexFunc(allWorkloads, func(w workload) bool { return w.name == n })
			if i < 0 {
				fmt.Fprintf(os.Stderr, "nvmfbench: unknown workload %q; known: %s\n", n, workloadNames())
				os.Exit(2)
			}
			cfg.workloads = append(cfg.workloads, allWorkloads[i])
		}
	}
	for _, p := range cfg.paths {
		if !slices.Contains([]string{"nvmf", "nbd", "nbd-go", "raw", "fio-raw"}, p) {
			fmt.Fprintf(os.Stderr, "nvmfbench: unknown path %q: use nvmf, nbd, nbd-go, raw or fio-raw\n", p)
			os.Exit(2)
		}
	}
	if *from != "" {
		if err := reportFrom(cfg, strings.Split(*from, ",")); err != nil {
			fmt.Fprintln(os.Stderr, "nvmfbench:", err)
			os.Exit(1)
		}
		return
	}
	if err := drive(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "nvmfbench:", err)
		os.Exit(1)
	}
}

func workloadNames() string {
	var s []string
	for _, w := range allWorkloads {
		s = append(s, w.name)
	}
	return strings.Join(s, ", ")
}

type config struct {
	sizeMiB   map[string]int64 // backing -> replica size
	runtime   time.Duration
	repeat    int
	backings  []string
	paths     []string
	workloads []workload
	profDir   string
	profWL    string
	dir       string
	rawJSON   string
	verify    bool
}

// server is the driver's handle on the server process.
type server struct {
	cmd   *exec.Cmd
	stdin io.Closer
	in    *json.Encoder
	out   *bufio.Scanner
	ready ready
}

func (s *server) call(c command) (reply, error) {
	if err := s.in.Encode(c); err != nil {
		return reply{}, fmt.Errorf("server: send %s: %w", c.Op, err)
	}
	if !s.out.Scan() {
		return reply{}, fmt.Errorf("server: no reply to %s: %v", c.Op, s.out.Err())
	}
	var r reply
	if err := json.Unmarshal(s.out.Bytes(), &r); err != nil {
		return reply{}, fmt.Errorf("server: reply to %s: %w", c.Op, err)
	}
	if r.Err != "" {
		return r, fmt.Errorf("server: %s: %s", c.Op, r.Err)
	}
	return r, nil
}

// cpuTime is the server process's user+system CPU time, all threads.
func (s *server) cpuTime() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.ready.PID))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	// USER_HZ is 100 on every Linux ABI Go supports.
	return time.Duration(ut+st) * (time.Second / 100)
}

// syscalls is the number of read and write system calls the server process
// has made, from /proc/PID/io (syscr, syscw).
func (s *server) syscalls() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", s.ready.PID))
	if err != nil {
		return 0
	}
	var n int64
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "syscr: "); ok {
			x, _ := strconv.ParseInt(v, 10, 64)
			n += x
		} else if v, ok := strings.CutPrefix(l, "syscw: "); ok {
			x, _ := strconv.ParseInt(v, 10, 64)
			n += x
		}
	}
	return n
}

// switches is the number of context switches of the server's live threads.
func (s *server) switches() int64 {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", s.ready.PID))
	var n int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if _, v, ok := strings.Cut(l, "ctxt_switches:"); ok {
				x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += x
			}
		}
	}
	return n
}

func (s *server) mallocs() uint64 {
	r, err := s.call(command{Op: "mallocs"})
	if err != nil {
		return 0
	}
	return r.Mallocs
}

func startServer(cfg config, dir string) (*server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-serve", "-dir", dir, "-malloc-size", strconv.FormatInt(cfg.sizeMiB["malloc"], 10), "-file-size", strconv.FormatInt(cfg.sizeMiB["file"], 10), "-backings", strings.Join(cfg.backings, ","))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, stdin: stdin, in: json.NewEncoder(stdin), out: bufio.NewScanner(stdout)}
	if !s.out.Scan() {
		cmd.Wait()
		return nil, fmt.Errorf("server process exited before it was ready")
	}
	if err := json.Unmarshal(s.out.Bytes(), &s.ready); err != nil {
		return nil, fmt.Errorf("server ready line %q: %w", s.out.Text(), err)
	}
	return s, nil
}

func (s *server) stop() {
	// EOF on its stdin makes the server process close everything and exit.
	s.stdin.Close()
	s.cmd.Wait()
}

type key struct{ workload, backing, path string }

func drive(cfg config) error {
	dir := cfg.dir
	if dir == "" {
		base := os.Getenv("TMPDIR")
		if base == "" {
			base = "/var/tmp"
		}
		d, err := os.MkdirTemp(base, "nexstor-nvmf-bench.")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
		cfg.dir = d
	}
	load0 := loadAvg()
	start := time.Now().UTC()
	logf("starting the server process (pre-filling the replicas)")
	srv, err := startServer(cfg, dir)
	if err != nil {
		return err
	}
	defer srv.stop()

	ctx := context.Background()
	namespaces := map[string]bdev.Device{}
	for _, b := range cfg.backings {
		if slices.Contains(cfg.paths, "nvmf") {
			c, err := initiator.Connect(ctx, srv.ready.NVMf, srv.ready.NQN[b], initiator.Options{})
			if err != nil {
				return fmt.Errorf("nvmf connect %s: %w", b, err)
			}
			defer c.Close()
			ns, err := c.Namespace(1)
			if err != nil {
				return fmt.Errorf("nvmf namespace %s: %w", b, err)
			}
			namespaces["nvmf/"+b] = ns
		}
		if slices.Contains(cfg.paths, "nbd-go") {
			nc, err := nbdclient.Dial(ctx, srv.ready.NBD, b, min(4, runtime.GOMAXPROCS(0)))
			if err != nil {
				return fmt.Errorf("nbd-go connect %s: %w", b, err)
			}
			defer nc.Close()
			namespaces["nbd-go/"+b] = nc
		}
	}

	samples := map[key][]measured{}
	for _, w := range cfg.workloads {
		for i := range cfg.repeat {
			for _, b := range cfg.backings {
				// Rotate the order of the paths from run to run, so that
				// none always comes first after a change of backing.
				order := append(slices.Clone(cfg.paths[i%len(cfg.paths):]), cfg.paths[:i%len(cfg.paths)]...)
				for _, p := range order {
					if p == "fio-raw" && b != "uring" {
						continue
					}
					logf("%s: %s: %s (run %d of %d)", w.name, b, p, i+1, cfg.repeat)
					profile := cfg.profDir != "" && i == 0 && serverPath(p) && w.name == cfg.profWL
					m, err := runOne(ctx, cfg, srv, namespaces, w, b, p, profile)
					if err != nil {
						return fmt.Errorf("%s %s %s: %w", w.name, b, p, err)
					}
					samples[key{w.name, b, p}] = append(samples[key{w.name, b, p}], m)
				}
			}
		}
	}
	if cfg.rawJSON != "" {
		var rows []sampleRow
		for k, v := range samples {
			rows = append(rows, sampleRow{k.workload, k.backing, k.path, v})
		}
		b, _ := json.MarshalIndent(rows, "", "  ")
		if err := os.WriteFile(cfg.rawJSON, b, 0o644); err != nil {
			return err
		}
	}
	report(cfg, samples, start, load0, loadAvg(), fsType(dir))
	return nil
}

// sampleRow is one workload, backing and path of a -json file.
type sampleRow struct {
	Workload, Backing, Path string
	Samples                 []measured
}

// reportFrom prints the report of the samples in files, pooled.
func reportFrom(cfg config, files []string) error {
	samples := map[key][]measured{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var rows []sampleRow
		if err := json.Unmarshal(b, &rows); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		for _, r := range rows {
			k := key{r.Workload, r.Backing, r.Path}
			samples[k] = append(samples[k], r.Samples...)
		}
	}
	cfg.repeat = len(files)
	// The names only: the report goes into results files that are
	// committed, where the directory of a run means nothing.
	names := make([]string, len(files))
	for i, f := range files {
		names[i] = filepath.Base(f)
	}
	fmt.Printf("Pooled from %d runs (%s).\n\n", len(files), strings.Join(names, ", "))
	report(cfg, samples, time.Now().UTC(), "(see the runs)", "(see the runs)", "(see the runs)")
	return nil
}

func spec(cfg config, w workload) loadgen.Spec {
	s := loadgen.Spec{Pattern: w.pattern, Mix: w.mix, BlockSize: w.bs, QueueDepth: w.qd, Duration: cfg.runtime, Seed: uint64(time.Now().UnixNano())}
	if cfg.verify {
		s.Mix, s.ReadPercent, s.Verify = loadgen.Mixed, 50, true
	}
	return s
}

func runOne(ctx context.Context, cfg config, srv *server, namespaces map[string]bdev.Device, w workload, backing, path string, profile bool) (measured, error) {
	if path == "raw" {
		r, err := srv.call(command{Op: "raw", Backing: backing, Spec: spec(cfg, w)})
		if err != nil {
			return measured{}, err
		}
		return *r.Result, nil
	}
	if profile {
		if _, err := srv.call(command{Op: "profile-start", Path: filepath.Join(cfg.profDir, "server-"+path+"-"+backing+".pprof")}); err != nil {
			return measured{}, err
		}
		defer srv.call(command{Op: "profile-stop"})
		// fio is a process of its own: this one would only profile waiting.
		if path != "nbd" {
			f, err := os.Create(filepath.Join(cfg.profDir, "client-"+path+"-"+backing+".pprof"))
			if err != nil {
				return measured{}, err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return measured{}, err
			}
			defer pprof.StopCPUProfile()
		}
	}
	a0, c0, y0, w0 := srv.mallocs(), srv.cpuTime(), srv.syscalls(), srv.switches()
	var m measured
	var wall time.Duration
	switch path {
	case "nbd":
		var err error
		m, wall, err = runFio(cfg, w, backing, "nbd://"+srv.ready.NBD+"/"+backing)
		if err != nil {
			return measured{}, err
		}
	case "fio-raw":
		var err error
		m, _, err = runFio(cfg, w, backing, uringFile(cfg.dir))
		if err != nil {
			return measured{}, err
		}
		return m, nil
	default:
		dev := namespaces[path+"/"+backing]
		t0 := time.Now()
		r, err := loadgen.Run(ctx, dev, spec(cfg, w))
		if err != nil {
			return measured{}, err
		}
		wall = time.Since(t0)
		if r.Errors > 0 {
			return measured{}, fmt.Errorf("%d I/O errors, first: %w", r.Errors, r.FirstError)
		}
		m = fromLoadgen(r)
	}
	c1, y1, w1, a1 := srv.cpuTime(), srv.syscalls(), srv.switches(), srv.mallocs()
	// I/Os over the whole time the server was busy (fio's ramp included).
	ios := m.IOPS * wall.Seconds()
	if ios > 0 {
		m.ServerCPU = float64(c1-c0) / float64(time.Microsecond) / ios
		// Less the one allocation-free ReadMemStats call itself makes; the
		// JSON reply to it is allocated after the count is taken.
		m.ServerAllocs = float64(a1-a0) / ios
		m.ServerSyscalls = float64(y1-y0) / ios
		m.ServerSwitches = float64(w1-w0) / ios
	}
	return m, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "nvmfbench: "+format+"\n", args...)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}

func fsType(dir string) string {
	out, err := exec.Command("df", "--output=fstype", dir).Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(out))
	return f[len(f)-1]
}

func med(ms []measured, f func(measured) float64) float64 {
	v := make([]float64, len(ms))
	for i, m := range ms {
		v[i] = f(m)
	}
	return benchutil.Median(v)
}

func report(cfg config, samples map[key][]measured, start time.Time, load0, load1, fs string) {
	fioVer, _ := exec.Command("fio", "--version").Output()
	fmt.Printf("%s, %d CPUs (GOMAXPROCS %d), load average %s at the start and %s at the end, backings %s (thin replicas, pre-filled, of %d MiB on malloc and %d MiB on a file; uring: a pre-filled file of %d MiB exported as it is), files on %s, %v per run, median of %d runs, %s, %s.\n\n",
		start.Format("2006-01-02T15:04Z"), runtime.NumCPU(), runtime.GOMAXPROCS(0), load0, load1, strings.Join(cfg.backings, ","), cfg.sizeMiB["malloc"], cfg.sizeMiB["file"], cfg.sizeMiB["uring"], fs, cfg.runtime, cfg.repeat, strings.TrimSpace(string(fioVer)), runtime.Version())
	has := func(p string) bool { return slices.Contains(cfg.paths, p) }
	var netPaths []string
	for _, p := range cfg.paths {
		if serverPath(p) {
			netPaths = append(netPaths, p)
		}
	}
	ratio := func(a, b float64) string {
		if b == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	iops := func(m measured) float64 { return m.IOPS }
	p50 := func(m measured) float64 { return m.P50 }
	for _, b := range cfg.backings {
		get := func(w workload, p string, f func(measured) float64) float64 {
			return med(samples[key{w.name, b, p}], f)
		}
		fmt.Printf("#### %s replica\n\n", b)
		hdr, sep := "| workload |", "|---|"
		for _, p := range cfg.paths {
			hdr += " " + p + " IOPS |"
			sep += "---:|"
		}
		for _, p := range cfg.paths {
			hdr += " " + p + " p50 µs |"
			sep += "---:|"
		}
		if has("nvmf") && has("nbd") {
			hdr += " nvmf/nbd IOPS |"
			sep += "---:|"
		}
		if has("nvmf") && has("nbd-go") {
			hdr += " nvmf/nbd-go IOPS |"
			sep += "---:|"
		}
		if has("nvmf") && has("raw") {
			hdr += " nvmf/raw IOPS | nvmf−raw p50 µs |"
			sep += "---:|---:|"
		}
		fmt.Println(hdr)
		fmt.Println(sep)
		for _, w := range cfg.workloads {
			row := "| " + w.name + " |"
			for _, p := range cfg.paths {
				row += fmt.Sprintf(" %.0f |", get(w, p, iops))
			}
			for _, p := range cfg.paths {
				row += fmt.Sprintf(" %.1f |", get(w, p, p50))
			}
			if has("nvmf") && has("nbd") {
				row += " " + ratio(get(w, "nvmf", iops), get(w, "nbd", iops)) + " |"
			}
			if has("nvmf") && has("nbd-go") {
				row += " " + ratio(get(w, "nvmf", iops), get(w, "nbd-go", iops)) + " |"
			}
			if has("nvmf") && has("raw") {
				row += " " + ratio(get(w, "nvmf", iops), get(w, "raw", iops)) + " |"
				row += fmt.Sprintf(" %+.1f |", get(w, "nvmf", p50)-get(w, "raw", p50))
			}
			fmt.Println(row)
		}
		fmt.Println()

		if len(netPaths) > 0 {
			fmt.Printf("Server process per I/O (%s replica; medians):\n\n", b)
			hdr, sep = "| workload |", "|---|"
			for _, c := range []string{"CPU µs", "syscalls", "switches", "allocs"} {
				for _, p := range netPaths {
					hdr += " " + c + " " + p + " |"
					sep += "---:|"
				}
			}
			fmt.Println(hdr)
			fmt.Println(sep)
			for _, w := range cfg.workloads {
				row := "| " + w.name + " |"
				for _, c := range []struct {
					f   func(measured) float64
					fmt string
				}{
					{func(m measured) float64 { return m.ServerCPU }, " %.1f |"},
					{func(m measured) float64 { return m.ServerSyscalls }, " %.2f |"},
					{func(m measured) float64 { return m.ServerSwitches }, " %.2f |"},
					{func(m measured) float64 { return m.ServerAllocs }, " %.2f |"},
				} {
					for _, p := range netPaths {
						row += fmt.Sprintf(c.fmt, get(w, p, c.f))
					}
				}
				fmt.Println(row)
			}
			fmt.Println()
		}

		if b == "uring" && has("fio-raw") {
			fmt.Printf("Against fio on the same file (ioengine=io_uring, direct=1; medians):\n\n")
			hdr, sep = "| workload | fio-raw IOPS | fio-raw p50 µs | fio-raw p99 µs |", "|---|---:|---:|---:|"
			for _, p := range netPaths {
				hdr += " " + p + "/fio-raw IOPS | " + p + " p50 added µs | " + p + " p99 added µs |"
				sep += "---:|---:|---:|"
			}
			fmt.Println(hdr)
			fmt.Println(sep)
			p99 := func(m measured) float64 { return m.P99 }
			for _, w := range cfg.workloads {
				row := fmt.Sprintf("| %s | %.0f | %.1f | %.1f |", w.name, get(w, "fio-raw", iops), get(w, "fio-raw", p50), get(w, "fio-raw", p99))
				for _, p := range netPaths {
					row += fmt.Sprintf(" %s | %+.1f | %+.1f |", ratio(get(w, p, iops), get(w, "fio-raw", iops)), get(w, p, p50)-get(w, "fio-raw", p50), get(w, p, p99)-get(w, "fio-raw", p99))
				}
				fmt.Println(row)
			}
			fmt.Println()
		}

		var g []string
		for _, w := range cfg.workloads {
			if w.qd == 32 && has("nvmf") && has("nbd") {
				r := get(w, "nvmf", iops) / get(w, "nbd", iops)
				g = append(g, fmt.Sprintf("%s nvmf/nbd %.2fx (goal >= 1.2x: %s)", w.name, r, verdict(r >= 1.2)))
			}
			if w.qd == 1 && has("nvmf") && has("raw") {
				d := get(w, "nvmf", p50) - get(w, "raw", p50)
				g = append(g, fmt.Sprintf("%s p50 %+.1f µs over raw (goal <= 30 µs: %s)", w.name, d, verdict(d <= 30)))
			}
		}
		if len(g) > 0 {
			fmt.Printf("Goals (%s): %s.\n\n", b, strings.Join(g, "; "))
		}
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}
