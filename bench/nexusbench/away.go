package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/bench/internal/benchutil"
	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/loadgen"
	"github.com/nexstor/nexstor/internal/nexus"
)

// The -away mode measures what a child that is away costs the writers: 4 KiB
// random writes at QD -qd on a 3-child nexus with every child online, and on
// the same nexus with child 2 offline. While a child is away, the first write
// to each segment must have its write-intent bit saved in the health store
// before it is issued; the store is a nexus.FileStore in -dir (an fsync'd
// file, as the engine's), so each save costs a file write and two fsyncs.
// Each run starts with an empty bitmap (a fresh nexus, the child taken
// offline just before the load starts), so the bits of every segment are
// saved during the run. -segment sets the segment size: smaller segments
// stand for a larger volume (512 MiB in 64 KiB segments has the segment
// count of an 8 GiB volume in the default 1 MiB ones).

const (
	awayOnline  = "nexus, 3 children"
	awayOffline = "nexus, 3 children, 1 away"
)

// countingStore counts the saves of a health store.
type countingStore struct {
	nexus.HealthStore
	saves atomic.Int64
}

func (s *countingStore) Save(ctx context.Context, rec nexus.HealthRecord) error {
	s.saves.Add(1)
	return s.HealthStore.Save(ctx, rec)
}

type awaySample struct {
	Target string  `json:"target"`
	IOPS   float64 `json:"iops"`
	P50    float64 `json:"p50_us"`
	P99    float64 `json:"p99_us"`
	Saves  int64   `json:"saves"`
}

// openAway creates the 3-child nexus over a record that says its children
// are in sync (they hold the same pre-filled data), taking child 2 offline
// when away is set.
func (r *rig) openAway(ctx context.Context, c config, store nexus.HealthStore, away bool) (*nexus.Nexus, error) {
	id := benchUUID(3)
	var uris []string
	for i := range 3 {
		uris = append(uris, "bdev:///"+r.uuids[i])
	}
	if err := seedRecord(ctx, store, id, uris, c.segment); err != nil {
		return nil, err
	}
	nx, err := nexus.New(ctx, nexus.Config{Name: "bench", UUID: id, Size: r.size, Children: uris, Store: store,
		Opener: r.router(), RebuildSegment: c.segment, Logger: quiet})
	if err != nil {
		return nil, err
	}
	if away {
		if err := nx.OfflineChild(ctx, uris[2]); err != nil {
			nx.Close()
			return nil, err
		}
	}
	return nx, nil
}

// seedRecord saves a clean health record with every child online: the
// children were pre-filled alike, so they are in sync.
func seedRecord(ctx context.Context, store nexus.HealthStore, id string, uris []string, seg int64) error {
	rec := nexus.HealthRecord{NexusUUID: id, Generation: 1, SegmentSize: seg, Clean: true}
	for _, u := range uris {
		rec.Children = append(rec.Children, nexus.ChildHealth{URI: u, State: nexus.StateOnline})
	}
	return store.Save(ctx, rec)
}

func runAway(ctx context.Context, c config, r *rig, dir, backing string, began time.Time, startLoad string) error {
	fs, err := nexus.NewFileStore(filepath.Join(dir, "health"))
	if err != nil {
		return err
	}
	samples := map[string][]awaySample{}
	targets := []string{awayOnline, awayOffline}
	for rep := range c.repeat {
		for j := range targets {
			name := targets[(j+rep)%len(targets)]
			store := &countingStore{HealthStore: fs}
			nx, err := r.openAway(ctx, c, store, name == awayOffline)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			saves0 := store.saves.Load()
			runtime.GC()
			res, err := loadgen.Run(ctx, nx, loadgen.Spec{Pattern: loadgen.Random, Mix: loadgen.Write, BlockSize: 4096,
				QueueDepth: c.qd4k, Duration: c.runtime, Seed: uint64(rep + 1)})
			saves := store.saves.Load() - saves0
			if cerr := closeNexus(ctx, nx); err == nil && cerr != nil {
				err = fmt.Errorf("close: %w", cerr)
			}
			if err != nil {
				return fmt.Errorf("randwrite-4k on %s: %w", name, err)
			}
			if res.Errors > 0 {
				return fmt.Errorf("randwrite-4k on %s: %d I/O errors, first: %v", name, res.Errors, res.FirstError)
			}
			s := awaySample{Target: name, IOPS: res.IOPS, P50: us(res.Latency.P50), P99: us(res.Latency.P99), Saves: saves}
			progress("run %d/%d randwrite-4k qd%-3d %-26s %9.0f IOPS p50 %7.0f µs p99 %7.0f µs %6d store saves (load %s)",
				rep+1, c.repeat, c.qd4k, name, s.IOPS, s.P50, s.P99, s.Saves, loadavg())
			samples[name] = append(samples[name], s)
		}
	}
	reportAway(os.Stdout, c, samples, began, startLoad, loadavg(), backing)
	return nil
}

// goalAway: with one child away, writes keep at least this share of the
// all-online rate.
const goalAway = 0.8

func reportAway(w io.Writer, c config, samples map[string][]awaySample, began time.Time, startLoad, endLoad, backing string) {
	fmt.Fprintf(w, "%s, %d CPUs, load average %s at the start and %s at the end, replicas of %d MiB (thin, pre-filled, %s), %d KiB segments (%d of them), file health store, %v per run, median of %d runs, %s.\n\n",
		began.Format("2006-01-02T15:04Z"), runtime.NumCPU(), startLoad, endLoad, c.sizeMiB, backing, c.segment>>10,
		(c.sizeMiB<<20)/c.segment, c.runtime, c.repeat, runtime.Version())
	fmt.Fprintln(w, "| workload | target | IOPS | p50 µs | p99 µs | store saves per run | IOPS vs all online |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|")
	med := func(s []awaySample, f func(awaySample) float64) float64 {
		var v []float64
		for _, x := range s {
			v = append(v, f(x))
		}
		return benchutil.Median(v)
	}
	base := med(samples[awayOnline], func(s awaySample) float64 { return s.IOPS })
	var ratio float64
	for _, name := range []string{awayOnline, awayOffline} {
		s := samples[name]
		iops := med(s, func(s awaySample) float64 { return s.IOPS })
		ratio = iops / base
		fmt.Fprintf(w, "| randwrite-4k-qd%d | %s | %.0f | %.0f | %.0f | %.0f | %.2fx |\n", c.qd4k, name, iops,
			med(s, func(s awaySample) float64 { return s.P50 }), med(s, func(s awaySample) float64 { return s.P99 }),
			med(s, func(s awaySample) float64 { return float64(s.Saves) }), ratio)
	}
	fmt.Fprintln(w)
	verdict := "met"
	if ratio < goalAway {
		verdict = "**missed**"
	}
	fmt.Fprintf(w, "- randwrite-4k IOPS with one child away %.2fx the rate with every child online (goal >= %.2fx): %s\n", ratio, goalAway, verdict)
}

// closeNexus ends a benchmark target: a nexus is destroyed, which releases
// its claims on the children so that the next target (another nexus) can
// claim them.
func closeNexus(ctx context.Context, d bdev.Device) error {
	if nx, ok := d.(*nexus.Nexus); ok {
		return nx.Destroy(ctx)
	}
	return d.Close()
}

// benchUUID is the UUID of the benchmark's nexus number k (nexuses claim
// their children with their UUID).
func benchUUID(k int) string { return fmt.Sprintf("6e657875-7362-656e-6368-%012x", k) }
