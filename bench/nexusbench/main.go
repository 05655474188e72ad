// Command nexusbench measures what mirroring costs: the same workloads on a
// bare pool replica and on a nexus with 1, 2 and 3 local children, and the
// bandwidth of a full rebuild against a plain copy of the same bytes.
//
// Every child is a thin replica in its own pool, and every pool sits on its
// own file (O_DIRECT where the filesystem allows), as separate disks would.
// The replicas are pre-filled end to end with the same data before anything
// is measured, so reads hit allocated clusters and the nexuses can be
// created over them as in sync (Config.Force). "replica" is the bare replica
// Device of child 0 driven by the same load generator (internal/loadgen); a
// nexus with k children mirrors over children 0..k-1, so the 1-child nexus
// measures the nexus layer alone.
//
// Rebuild: a nexus over the pre-filled child 0 gets a fresh thin replica in
// a fourth pool (AddChild), and the time until WaitRebuild returns gives the
// rebuild bandwidth (Stats().RebuildBytes over that time), with no other
// I/O. The baseline copies the same number of bytes from the start of child
// 0's pool file into a new file with dd (bs=1M, iflag=direct, oflag=direct)
// in the same run, interleaved with the rebuilds.
//
// Workloads run on every target in turn, -r times (interleaved, so that
// changes in the machine's load hit every target alike, with the order
// rotated from run to run); medians are
// reported as markdown on stdout, progress goes to stderr.
//
// The nexuses are created over a health record that says their children
// are in sync (they were pre-filled alike), and destroyed after each run so
// that the next one can claim the children.
//
// -away measures instead what a child that is away costs the writers (see
// away.go).
//
// -remote reaches every child over NVMe/TCP on loopback, as a volume's
// remote children are, and adds the goal of 3-way writes against one
// remote child through the nexus (see remote.go).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nexstor/nexstor/bench/internal/benchutil"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/faulty"
	"github.com/nexstor/nexstor/internal/loadgen"
	"github.com/nexstor/nexstor/internal/nexus"
	"github.com/nexstor/nexstor/internal/pool"
)

// workload is one row group of the report.
type workload struct {
	name    string
	pattern loadgen.Pattern
	mix     loadgen.Mix
	bs      int
}

var workloads = []workload{
	{"randwrite-4k", loadgen.Random, loadgen.Write, 4096},
	{"randread-4k", loadgen.Random, loadgen.Read, 4096},
	{"write-1m", loadgen.Sequential, loadgen.Write, 1 << 20},
}

// targets: 0 is the bare replica, k > 0 a nexus over k children, and
// direct3 the replicas of children 0..2 written in turn without a nexus:
// the ceiling of a 3-way mirror on this machine (three copies where the
// replica makes one), against which the nexus's own cost shows.
var targets = []int{0, 1, 2, 3, direct3}

const direct3 = -3

func targetName(k int) string {
	if k == 0 {
		return "replica"
	}
	if k == direct3 {
		return "3 replicas, no nexus"
	}
	return fmt.Sprintf("nexus, %d child%s", k, map[bool]string{true: "ren"}[k > 1])
}

// sample is one measured run.
type sample struct {
	Workload string  `json:"workload"`
	Target   string  `json:"target"`
	IOPS     float64 `json:"iops"`
	BW       float64 `json:"bw"` // bytes per second
	P50      float64 `json:"p50_us"`
	P99      float64 `json:"p99_us"`
	// CPU is this process's user+system CPU time per I/O in µs (load
	// generator included).
	CPU float64 `json:"cpu_us"`
	// DiskOps is the I/Os per second the disk under the pool files
	// completed during the run (reads+writes, every process's: the disk is
	// shared), DiskUtil the share of the run it was busy (io_ticks).
	DiskOps  float64 `json:"disk_ops"`
	DiskUtil float64 `json:"disk_util"`
}

type rebuildSample struct {
	Bytes      int64   `json:"bytes"`
	RebuildBPS float64 `json:"rebuild_bps"`
	CopyBPS    float64 `json:"copy_bps"`
}

type config struct {
	dir       string
	sizeMiB   int64
	runtime   time.Duration
	repeat    int
	qd4k      int
	qdSeq     int
	profDir   string
	rawJSON   string
	noRebuild bool
	// backing is "file" (pool files on dir's filesystem) or "lat" (pools
	// on RAM devices that add latency to every operation: independent
	// devices with no shared queue, to separate the nexus's own cost from
	// that of a disk the children share).
	backing string
	lat     time.Duration
	// poolDirs, when set, holds one directory per pool.
	poolDirs string
	// away runs only the one-child-away comparison (away.go).
	away bool
	// remote: children over NVMe/TCP (remote.go).
	remote bool
	// segment is the nexus's RebuildSegment in bytes.
	segment int64
}

func main() {
	c, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nexusbench:", err)
		os.Exit(2)
	}
	// The pools log every export at Info; keep stderr for progress.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "nexusbench:", err)
		os.Exit(1)
	}
}

// parseFlags parses and checks the command line; usage and flag errors go
// to errOut.
func parseFlags(args []string, errOut io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("nexusbench", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.StringVar(&c.dir, "dir", "", "directory for the pool files (default: a new one under $TMPDIR or /var/tmp, removed at the end); must not be tmpfs, for O_DIRECT")
	fs.StringVar(&c.poolDirs, "pool-dirs", "", "comma-separated directories, one per pool (children 0, 1, 2, rebuild target), to put each pool on its own disk; default: all in -dir. The disk counters are those of -dir's disk")
	fs.Int64Var(&c.sizeMiB, "size", 512, "size of each replica in MiB (also the rebuild and copy size)")
	rt := fs.Float64("t", 5, "seconds each measured run lasts")
	fs.IntVar(&c.repeat, "r", 3, "runs of each workload on each target, and of rebuild and copy; medians reported")
	fs.IntVar(&c.qd4k, "qd", 32, "queue depth of the 4 KiB random workloads")
	fs.IntVar(&c.qdSeq, "seq-qd", 8, "queue depth of the 1 MiB sequential write")
	fs.StringVar(&c.profDir, "profile", "", "write CPU profiles of the first randwrite-4k run on the replica (replica-randwrite.pprof) and on the 3-child nexus (nexus3-randwrite.pprof) into this directory")
	fs.StringVar(&c.rawJSON, "json", "", "also write every sample as JSON to this file")
	fs.BoolVar(&c.noRebuild, "no-rebuild", false, "skip the rebuild and copy measurement")
	fs.StringVar(&c.backing, "backing", "file", "pool devices: file (files in -dir, O_DIRECT where possible) or lat (RAM devices adding -lat to every operation: independent disks, no shared queue; no rebuild/copy measurement)")
	fs.DurationVar(&c.lat, "lat", 100*time.Microsecond, "latency added to every operation with -backing lat (ignored with -backing file); 0s for RAM devices with no added latency")
	fs.BoolVar(&c.away, "away", false, "measure only 4 KiB random writes on a 3-child nexus with every child online and with one child offline (its write-intent bits saved in a file health store), interleaved; no rebuild")
	fs.BoolVar(&c.remote, "remote", false, "reach every child over NVMe/TCP on loopback, through a target in this process, as a volume's remote children are; \"replica\" is then child 0's replica through the initiator; no rebuild")
	seg := fs.Int64("segment", nexus.DefaultRebuildSegment>>10, "the nexuses' segment size in KiB (rebuild unit and write-intent bitmap granularity)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q: nexusbench takes only flags", fs.Args())
	}
	c.segment = *seg << 10
	if c.away {
		c.noRebuild = true
		if c.remote {
			return c, errors.New("-away and -remote: measure one at a time (-away keeps its children local)")
		}
	}
	if c.remote {
		c.noRebuild = true
	}
	c.runtime = time.Duration(*rt * float64(time.Second))
	switch c.backing {
	case "lat":
		c.noRebuild = true
		if err := latencyRule(c.lat).Validate(); err != nil {
			return c, fmt.Errorf("-lat %v: %w", c.lat, err)
		}
	case "file":
		// -lat is ignored, so that one set of flags (bench/nexus.sh's)
		// serves both backings.
	default:
		return c, fmt.Errorf("-backing %q: use file or lat", c.backing)
	}
	switch {
	case c.sizeMiB < 16 || c.repeat < 1:
		return c, errors.New("-size must be at least 16 (MiB) and -r at least 1")
	case c.runtime <= 0:
		return c, fmt.Errorf("-t %v: give a positive number of seconds", *rt)
	case c.qd4k < 1 || c.qdSeq < 1:
		return c, fmt.Errorf("-qd %d, -seq-qd %d: queue depths are at least 1", c.qd4k, c.qdSeq)
	case *seg <= 0:
		return c, fmt.Errorf("-segment %d: give a positive size in KiB", *seg)
	}
	return c, nil
}

// latencyRule is the rule of a -backing lat device: it delays every
// operation by lat and never fails one, lat 0 included (a faulty rule with
// neither Delay nor a latency would fail every operation).
func latencyRule(lat time.Duration) faulty.Rule {
	return faulty.Rule{Delay: true, Latency: lat}
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05")}, args...)...)
}

// rig holds the pools: pools[0..2] carry the children, pools[3] the rebuild
// target.
type rig struct {
	dir   string
	size  int64
	files []string
	pools []*pool.Pool
	uuids []string // replica UUIDs of children 0..2
	// remote, with -remote, serves children 0..2 over NVMe/TCP.
	remote *remoteRig
}

// close exports the pools and removes their files.
func (r *rig) close() {
	if r.remote != nil {
		r.remote.close()
	}
	for _, p := range r.pools {
		p.Close()
	}
	for _, f := range r.files {
		os.Remove(f)
	}
}

func newRig(c config, dir string, size int64) (*rig, error) {
	r := &rig{dir: dir, size: size}
	dirs := []string{dir, dir, dir, dir}
	if c.poolDirs != "" {
		dirs = strings.Split(c.poolDirs, ",")
		if len(dirs) != 4 {
			return nil, fmt.Errorf("-pool-dirs %q: give 4 directories (children 0, 1, 2 and the rebuild target)", c.poolDirs)
		}
	}
	// Room for the superblocks, the metadata region and a spare cluster.
	fileSize := size + 64<<20
	for i := range 4 {
		path := filepath.Join(dirs[i], fmt.Sprintf("nexusbench-pool%d.img", i))
		os.Remove(path) // a leftover of an interrupted run
		var d bdev.Device
		var err error
		if c.backing == "lat" {
			var m *bdev.Malloc
			if m, err = bdev.NewMalloc(fileSize, 512); err == nil {
				f := faulty.New(m, int64(i))
				f.AddRule(latencyRule(c.lat))
				d = f
			}
		} else {
			d, err = bdev.OpenFile(path, bdev.FileOptions{Create: true, Size: fileSize})
		}
		if err != nil {
			return nil, fmt.Errorf("pool device %d: %w", i, err)
		}
		if c.backing == "file" {
			r.files = append(r.files, path)
		}
		p, err := pool.Create(d, pool.CreateOptions{Name: fmt.Sprintf("p%d", i)})
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("pool on %s: %w", path, err)
		}
		r.pools = append(r.pools, p)
		if i == 3 {
			break
		}
		ri, err := p.CreateReplica(pool.ReplicaOptions{Name: "r", Size: size, Thin: true})
		if err != nil {
			return nil, fmt.Errorf("replica in pool %d: %w", i, err)
		}
		r.uuids = append(r.uuids, ri.UUID)
		if err := prefill(p, size); err != nil {
			return nil, fmt.Errorf("pre-fill replica in pool %d: %w", i, err)
		}
	}
	return r, nil
}

// prefill writes the whole replica once with the same non-zero data, so
// that every cluster is allocated and all children hold identical bytes.
func prefill(p *pool.Pool, size int64) error {
	d, err := p.OpenReplica("r")
	if err != nil {
		return err
	}
	defer d.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := d.WriteAt(buf, off); err != nil {
			return err
		}
	}
	return d.Flush()
}

// router resolves bdev:///<uuid> to a replica handle of any pool, as the
// engine does.
func (r *rig) router() *nexus.Router {
	return &nexus.Router{Local: func(_ context.Context, id string) (bdev.Device, error) {
		for _, p := range r.pools {
			if ri, err := p.ReplicaByUUID(id); err == nil {
				return p.OpenReplica(ri.Name)
			}
		}
		return nil, fmt.Errorf("replica %s not found", id)
	}, Remote: remoteOpener()}
}

var quiet = slog.New(slog.DiscardHandler)

// open returns the device for target k: the bare replica of child 0 or a
// nexus over children 0..k-1.
func (r *rig) open(ctx context.Context, c config, k int) (bdev.Device, error) {
	if k == 0 {
		return r.openChild(ctx, 0)
	}
	if k == direct3 {
		var t tee
		for i := range 3 {
			d, err := r.openChild(ctx, i)
			if err != nil {
				t.Close()
				return nil, err
			}
			t.devs = append(t.devs, d)
		}
		t.Device = t.devs[0]
		return &t, nil
	}
	var uris []string
	for i := range k {
		uris = append(uris, r.childURI(i))
	}
	// The children hold the same pre-filled data: a record says they are
	// in sync (a nexus without one would rebuild all but one).
	id := benchUUID(k)
	store := nexus.NewMemStore()
	if err := seedRecord(ctx, store, id, uris, c.segment); err != nil {
		return nil, err
	}
	return nexus.New(ctx, nexus.Config{Name: "bench", UUID: id, Size: r.size, RebuildSegment: c.segment,
		Children: uris, Store: store, Opener: r.router(), Logger: quiet})
}

// tee writes to every device in turn and reads from the first: a mirror
// with no mirroring logic at all, the reference for the nexus's own cost.
type tee struct {
	bdev.Device // the first
	devs        []bdev.Device
}

func (t *tee) WriteAt(p []byte, off int64) (int, error) {
	for _, d := range t.devs {
		if n, err := d.WriteAt(p, off); err != nil {
			return n, err
		}
	}
	return len(p), nil
}

func (t *tee) Flush() error {
	for _, d := range t.devs {
		if err := d.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func (t *tee) Close() error {
	var errs []error
	for _, d := range t.devs {
		errs = append(errs, d.Close())
	}
	return errors.Join(errs...)
}

// rebuild times a full rebuild from child 0 into a fresh thin replica of
// pool 3 on an idle nexus and returns the bytes copied and the bandwidth.
func (r *rig) rebuild(ctx context.Context) (int64, float64, error) {
	p := r.pools[3]
	if _, err := p.ReplicaInfo("t"); err == nil {
		if err := p.DestroyReplica("t"); err != nil {
			return 0, 0, err
		}
	}
	ri, err := p.CreateReplica(pool.ReplicaOptions{Name: "t", Size: r.size, Thin: true})
	if err != nil {
		return 0, 0, err
	}
	nx, err := nexus.New(ctx, nexus.Config{Name: "bench", UUID: benchUUID(9), Size: r.size,
		Children: []string{"bdev:///" + r.uuids[0]}, Store: nexus.NewMemStore(), Opener: r.router(), Logger: quiet})
	if err != nil {
		return 0, 0, err
	}
	defer nx.Destroy(ctx)
	uri := "bdev:///" + ri.UUID
	start := time.Now()
	if err := nx.AddChild(ctx, uri); err != nil {
		return 0, 0, fmt.Errorf("add child: %w", err)
	}
	st, err := nx.WaitRebuild(ctx, uri)
	elapsed := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("wait rebuild: %w", err)
	}
	if st.State != nexus.RebuildCompleted {
		return 0, 0, fmt.Errorf("rebuild ended %s: %s", st.State, st.Err)
	}
	n := nx.Stats().RebuildBytes
	return n, float64(n) / elapsed.Seconds(), nil
}

// plainCopy copies the first size bytes of pool 0's file into a new file
// with dd, both sides O_DIRECT, and returns the bandwidth including the
// final fsync.
func (r *rig) plainCopy(ctx context.Context) (float64, error) {
	dst := filepath.Join(r.dir, "copy.img")
	os.Remove(dst)
	defer os.Remove(dst)
	mib := r.size >> 20
	cmd := exec.CommandContext(ctx, "dd", "if="+r.files[0], "of="+dst, "bs=1M", "count="+strconv.FormatInt(mib, 10),
		"iflag=direct", "oflag=direct", "conv=fsync", "status=none")
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("dd: %w", err)
	}
	return float64(mib<<20) / time.Since(start).Seconds(), nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func run(c config) error {
	ctx := context.Background()
	dir := c.dir
	if dir == "" {
		base := os.Getenv("TMPDIR")
		if base == "" {
			base = "/var/tmp"
		}
		d, err := os.MkdirTemp(base, "nexstor-nexus-bench.")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if _, err := exec.LookPath("dd"); err != nil && !c.noRebuild {
		return fmt.Errorf("dd is missing (coreutils): %w", err)
	}
	startLoad := loadavg()
	began := time.Now().UTC()
	size := c.sizeMiB << 20
	progress("creating 4 pools of %d MiB in %s and pre-filling 3 replicas", c.sizeMiB+64, dir)
	r, err := newRig(c, dir, size)
	if r != nil {
		defer r.close()
	}
	if err != nil {
		return err
	}
	backing := "each in its own pool file, O_DIRECT: "
	if c.backing == "lat" {
		backing = fmt.Sprintf("each in its own pool on a RAM device adding %v to every operation", c.lat)
	} else if f, err := bdev.OpenFile(r.files[3], bdev.FileOptions{ReadOnly: true, Direct: ptr(true)}); err == nil {
		// Read-only: the pool holds the file open (and locked) for writing.
		backing += "yes"
		f.Close()
	} else {
		backing += "no (buffered fallback)"
	}

	if c.away {
		return runAway(ctx, c, r, dir, backing, began, startLoad)
	}
	if c.remote {
		if err := r.serveRemote(ctx); err != nil {
			return err
		}
		backing += "; every child over NVMe/TCP on loopback, target and initiators in one process"
	}
	samples := map[string][]sample{} // workload/target -> runs
	var all []sample
	var rebuilds []rebuildSample
	for rep := range c.repeat {
		for _, w := range workloads {
			qd := c.qd4k
			if w.bs >= 1<<20 {
				qd = c.qdSeq
			}
			// Each run starts the rotation at a different target, so that
			// none is always measured first (right after the previous
			// workload, or the rebuild) or last.
			for j := range targets {
				k := targets[(j+rep)%len(targets)]
				dev, err := r.open(ctx, c, k)
				if err != nil {
					return fmt.Errorf("%s: %w", targetName(k), err)
				}
				var prof *os.File
				if rep == 0 && c.profDir != "" && w.name == "randwrite-4k" && (k == 0 || k == 3) {
					name := "replica-randwrite.pprof"
					if k == 3 {
						name = "nexus3-randwrite.pprof"
					}
					if prof, err = os.Create(filepath.Join(c.profDir, name)); err != nil {
						return err
					}
					if err := pprof.StartCPUProfile(prof); err != nil {
						return err
					}
				}
				runtime.GC()
				cpu0, disk0, t0 := cpuTime(), diskStat(dir), time.Now()
				res, err := loadgen.Run(ctx, dev, loadgen.Spec{Pattern: w.pattern, Mix: w.mix, BlockSize: w.bs,
					QueueDepth: qd, Duration: c.runtime, Seed: uint64(rep + 1)})
				cpu1, disk1, el := cpuTime(), diskStat(dir), time.Since(t0)
				if prof != nil {
					pprof.StopCPUProfile()
					prof.Close()
				}
				if cerr := closeNexus(ctx, dev); err == nil && cerr != nil {
					err = fmt.Errorf("close: %w", cerr)
				}
				if err != nil {
					return fmt.Errorf("%s on %s: %w", w.name, targetName(k), err)
				}
				if res.Errors > 0 {
					return fmt.Errorf("%s on %s: %d I/O errors, first: %v", w.name, targetName(k), res.Errors, res.FirstError)
				}
				s := sample{Workload: w.name, Target: targetName(k), IOPS: res.IOPS, BW: res.Bandwidth,
					P50: us(res.Latency.P50), P99: us(res.Latency.P99)}
				if res.Ops > 0 {
					s.CPU = us(cpu1-cpu0) / float64(res.Ops)
				}
				if disk0.ok && disk1.ok {
					s.DiskOps = float64(disk1.ops-disk0.ops) / el.Seconds()
					s.DiskUtil = float64(disk1.ticks-disk0.ticks) / float64(el.Milliseconds())
				}
				progress("run %d/%d %-12s qd%-3d %-18s %9.0f IOPS %8.1f MiB/s p50 %7.0f µs cpu %5.1f µs/IO disk %6.0f IOPS %3.0f%% busy (load %s)",
					rep+1, c.repeat, w.name, qd, s.Target, s.IOPS, s.BW/(1<<20), s.P50, s.CPU, s.DiskOps, 100*s.DiskUtil, loadavg())
				key := w.name + "/" + s.Target
				samples[key] = append(samples[key], s)
				all = append(all, s)
			}
		}
		if c.noRebuild {
			continue
		}
		n, rb, err := r.rebuild(ctx)
		if err != nil {
			return fmt.Errorf("rebuild: %w", err)
		}
		cp, err := r.plainCopy(ctx)
		if err != nil {
			return err
		}
		progress("run %d/%d rebuild %d MiB: %.1f MiB/s; dd copy %.1f MiB/s (load %s)", rep+1, c.repeat, n>>20, rb/(1<<20), cp/(1<<20), loadavg())
		rebuilds = append(rebuilds, rebuildSample{Bytes: n, RebuildBPS: rb, CopyBPS: cp})
	}
	endLoad := loadavg()

	if c.rawJSON != "" {
		b, _ := json.MarshalIndent(map[string]any{"io": all, "rebuild": rebuilds}, "", "  ")
		if err := os.WriteFile(c.rawJSON, b, 0o644); err != nil {
			return err
		}
	}
	report(os.Stdout, c, samples, rebuilds, began, startLoad, endLoad, backing)
	return nil
}

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type diskCounters struct {
	ok         bool
	ops, ticks int64 // reads+writes completed; ms busy
}

// diskStat reads the block layer counters of the device holding dir
// (/sys/dev/block/MAJ:MIN/stat).
func diskStat(dir string) diskCounters {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return diskCounters{}
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/stat", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		return diskCounters{}
	}
	f := strings.Fields(string(b))
	if len(f) < 10 {
		return diskCounters{}
	}
	n := func(i int) int64 { v, _ := strconv.ParseInt(f[i], 10, 64); return v }
	return diskCounters{ok: true, ops: n(0) + n(4), ticks: n(9)}
}

func ptr[T any](v T) *T { return &v }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func field(s []sample, f func(sample) float64) float64 {
	var v []float64
	for _, x := range s {
		v = append(v, f(x))
	}
	return benchutil.Median(v)
}

// Goals: 3-child writes at least 0.7x the single replica on independent
// devices (pool files or slow RAM devices), and at least 0.3x on RAM
// devices with no added latency, where every write is CPU (copies) and 1/3
// is the ceiling of a 3-way mirror: the nexus's own cost; reads at least
// 0.95x; rebuild at least as fast as a plain O_DIRECT copy.
const (
	goalWrite    = 0.7
	goalWriteRAM = 0.3
	goalRead     = 0.95
	goalRebuild  = 1.0
	// With -remote: 3-way writes at least half the IOPS of one remote
	// child through the nexus (the goals above are about local children).
	goalRemote3of1 = 0.5
)

func report(w io.Writer, c config, samples map[string][]sample, rebuilds []rebuildSample, began time.Time, startLoad, endLoad, backing string) {
	fmt.Fprintf(w, "%s, %d CPUs, load average %s at the start and %s at the end, replicas of %d MiB (thin, pre-filled, %s), %v per run, median of %d runs, %s.\n\n",
		began.Format("2006-01-02T15:04Z"), runtime.NumCPU(), startLoad, endLoad, c.sizeMiB, backing, c.runtime, c.repeat, runtime.Version())
	fmt.Fprintln(w, "| workload | target | IOPS | MiB/s | p50 µs | p99 µs | IOPS vs replica | CPU µs/IO | disk IOPS | disk busy |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	ratio := map[string]float64{}
	for _, wl := range workloads {
		qd := c.qd4k
		if wl.bs >= 1<<20 {
			qd = c.qdSeq
		}
		base := field(samples[wl.name+"/"+targetName(0)], func(s sample) float64 { return s.IOPS })
		for _, k := range targets {
			s := samples[wl.name+"/"+targetName(k)]
			iops := field(s, func(s sample) float64 { return s.IOPS })
			rt := iops / base
			ratio[fmt.Sprintf("%s/%d", wl.name, k)] = rt
			fmt.Fprintf(w, "| %s-qd%d | %s | %.0f | %.1f | %.0f | %.0f | %.2fx | %.1f | %.0f | %.0f%% |\n", wl.name, qd, targetName(k), iops,
				field(s, func(s sample) float64 { return s.BW })/(1<<20),
				field(s, func(s sample) float64 { return s.P50 }), field(s, func(s sample) float64 { return s.P99 }), rt,
				field(s, func(s sample) float64 { return s.CPU }), field(s, func(s sample) float64 { return s.DiskOps }),
				100*field(s, func(s sample) float64 { return s.DiskUtil }))
		}
	}
	fmt.Fprintln(w)
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	rw, rr, sw := ratio["randwrite-4k/3"], ratio["randread-4k/3"], ratio["write-1m/3"]
	cw, cs := ratio[fmt.Sprintf("randwrite-4k/%d", direct3)], ratio[fmt.Sprintf("write-1m/%d", direct3)]
	gw, what := goalWrite, ""
	if c.backing == "lat" && c.lat == 0 {
		gw, what = goalWriteRAM, " on RAM devices"
	}
	if !c.remote {
		fmt.Fprintf(w, "- 3-child randwrite-4k IOPS%s %.2fx the replica (goal >= %.2fx): %s\n", what, rw, gw, verdict(rw >= gw))
		fmt.Fprintf(w, "- 3-child write-1m IOPS%s %.2fx the replica (goal >= %.2fx): %s\n", what, sw, gw, verdict(sw >= gw))
		fmt.Fprintf(w, "- 3-child randread-4k IOPS %.2fx the replica (goal >= %.2fx): %s\n", rr, goalRead, verdict(rr >= goalRead))
	} else {
		fmt.Fprintf(w, "- 3-child against the remote replica without a nexus (the goals of local children do not apply): randwrite-4k %.2fx, write-1m %.2fx, randread-4k %.2fx\n", rw, sw, rr)
		// The goal of remote children: the 3-way fan-out against one
		// remote child, both through the nexus.
		if r1 := ratio["randwrite-4k/1"]; r1 > 0 {
			fmt.Fprintf(w, "- 3-child randwrite-4k IOPS %.2fx the 1-child nexus, children over NVMe/TCP (goal >= %.2fx): %s\n", rw/r1, goalRemote3of1, verdict(rw/r1 >= goalRemote3of1))
		} else {
			fmt.Fprintf(w, "- 3-child randwrite-4k against the 1-child nexus, children over NVMe/TCP (goal >= %.2fx): **missed** (no 1-child sample)\n", goalRemote3of1)
		}
	}
	// Not goals: the ceiling, and the nexus against it.
	fmt.Fprintf(w, "- the ceiling, 3 replicas written in turn without a nexus: randwrite-4k %.2fx, write-1m %.2fx the replica; the 3-child nexus reaches %.2fx and %.2fx of it\n", cw, cs, rw/cw, sw/cs)
	if len(rebuilds) == 0 {
		return
	}
	var rb, cp []float64
	for _, s := range rebuilds {
		rb = append(rb, s.RebuildBPS)
		cp = append(cp, s.CopyBPS)
	}
	mrb, mcp := benchutil.Median(rb), benchutil.Median(cp)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| idle full rebuild | MiB | rebuild MiB/s | dd copy MiB/s | rebuild vs copy |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|")
	fmt.Fprintf(w, "| 1 pre-filled child -> fresh thin replica | %d | %.1f | %.1f | %.2fx |\n\n", rebuilds[0].Bytes>>20, mrb/(1<<20), mcp/(1<<20), mrb/mcp)
	fmt.Fprintf(w, "- rebuild %.2fx the plain copy (goal >= %.2fx): %s\n", mrb/mcp, goalRebuild, verdict(mrb/mcp >= goalRebuild))
}
