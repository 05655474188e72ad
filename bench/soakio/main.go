// Command soakio is the verifying load of bench/soak.sh: it writes
// self-describing blocks to a replica over NBD or NVMe/TCP, keeps a log of
// every write the server acknowledged (a state file, saved when it stops),
// and checks that every acknowledged write is still there after the server
// was killed with SIGKILL and restarted.
//
//	soakio run   -target nbd://HOST:PORT/NAME|nvmf://HOST:PORT/NQN -state FILE -seed N [-killed FILE]
//	soakio check -pool DISK_URI
//
// run first reads every block of the region and compares it with the state:
// a block holds the generation of its last acknowledged write (zeroes for
// none), or, where a write was in flight when the server died, that write's
// generation (which then counts as acknowledged). Then it runs a mixed load
// (reads that verify, writes of 1 to 16 blocks, write-zeroes, flushes, and
// now and then write-zeroes of a whole -cluster, which a thin replica
// answers by freeing the cluster, so that later writes allocate it again
// and the pool's metadata keeps changing) from
// -qd workers that never touch the same block at once, until SIGTERM or
// SIGINT, and saves the state. An I/O error stops the load; it is expected
// once the file -killed exists (the script creates it just before the
// kill), and a failure before that.
//
// check imports the pool on the disk (as the server does after a crash) and
// runs the pool's consistency check (pool.Check).
//
// Exit status: 0 success; 1 usage or setup error; 2 could not connect (the
// server may already be dead); 3 data mismatch; 4 an I/O error while the
// server was up; 5 the pool check failed.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nexstor/nexstor/bench/internal/nbdclient"
	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/pool"
)

const (
	blockSize = 4096
	maxBlocks = 16
	magic     = 0x31304b414f53584e // "NXSOAK01"
	noPending = -1
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "run":
		os.Exit(run(os.Args[2:]))
	case "check":
		os.Exit(check(os.Args[2:]))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: soakio run -target URI -state FILE -seed N [-killed FILE] [-qd N] | soakio check -pool DISK_URI")
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soakio: "+format+"\n", args...)
}

// check imports the pool on a disk and runs pool.Check.
func check(args []string) int {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	uri := fs.String("pool", "", "disk URI of the pool")
	fs.Parse(args)
	dev, err := bdev.Open(*uri)
	if err != nil {
		logf("open %s: %v", *uri, err)
		return 1
	}
	p, err := pool.Import(dev)
	if err != nil {
		dev.Close()
		logf("import %s: %v", *uri, err)
		return 5
	}
	defer p.Close()
	if err := p.Check(); err != nil {
		logf("pool check %s: %v", *uri, err)
		return 5
	}
	n := len(p.Replicas())
	logf("pool %s: imported, check passed, %d replicas", *uri, n)
	return 0
}

// state is the log of acknowledged writes: per block the generation of the
// last acknowledged write (0: zeroes) and of one in flight, if any, when the
// load stopped.
type state struct {
	Seed    uint64
	NextGen uint32
	Acked   []uint32
	Pending []int64
}

func loadState(path string, seed uint64, blocks int) (*state, error) {
	st := &state{Seed: seed, NextGen: 1, Acked: make([]uint32, blocks), Pending: make([]int64, blocks)}
	for i := range st.Pending {
		st.Pending[i] = noPending
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	r := bytes.NewReader(b)
	var hdr struct {
		Seed    uint64
		NextGen uint32
		Blocks  uint32
	}
	if err := binary.Read(r, binary.LittleEndian, &hdr); err != nil {
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	if hdr.Seed != seed || int(hdr.Blocks) != blocks {
		return nil, fmt.Errorf("state %s: seed %d, %d blocks; this run has seed %d, %d blocks", path, hdr.Seed, hdr.Blocks, seed, blocks)
	}
	st.NextGen = hdr.NextGen
	if err := binary.Read(r, binary.LittleEndian, st.Acked); err != nil {
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	if err := binary.Read(r, binary.LittleEndian, st.Pending); err != nil {
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	return st, nil
}

func (st *state) save(path string) error {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, struct {
		Seed    uint64
		NextGen uint32
		Blocks  uint32
	}{st.Seed, st.NextGen, uint32(len(st.Acked))})
	binary.Write(&b, binary.LittleEndian, st.Acked)
	binary.Write(&b, binary.LittleEndian, st.Pending)
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(b.Bytes()); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// fill writes the content of generation gen of block lba into b: zeroes
// for generation 0, else a header (magic, lba, gen, seed) and a
// pseudo-random body derived from all three.
func fill(b []byte, lba uint64, gen uint32, seed uint64) {
	if gen == 0 {
		clear(b)
		return
	}
	binary.LittleEndian.PutUint64(b[0:], magic)
	binary.LittleEndian.PutUint64(b[8:], lba)
	binary.LittleEndian.PutUint64(b[16:], uint64(gen))
	binary.LittleEndian.PutUint64(b[24:], seed)
	x := seed ^ lba*0x9e3779b97f4a7c15 ^ uint64(gen)<<32 ^ 0x5bd1e995
	for i := 32; i < len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
}

// describe says what a block that matched nothing holds.
func describe(b []byte) string {
	if binary.LittleEndian.Uint64(b) == magic {
		return fmt.Sprintf("a soak block of lba %d, generation %d, seed %d (body may differ)",
			binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:]), binary.LittleEndian.Uint64(b[24:]))
	}
	if bytes.Count(b, []byte{0}) == len(b) {
		return "zeroes"
	}
	return fmt.Sprintf("foreign data starting %x", b[:16])
}

func open(ctx context.Context, target string, qd int) (bdev.Device, func() error, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, nil, err
	}
	name := strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd":
		c, err := nbdclient.Dial(ctx, u.Host, name, 2)
		if err != nil {
			return nil, nil, err
		}
		return c, c.Close, nil
	case "nvmf":
		c, err := initiator.Connect(ctx, u.Host, name, initiator.Options{IOQueues: 2, QueueDepth: qd,
			CommandTimeout: 20 * time.Second, MaxReconnect: 1, ReconnectDelay: 200 * time.Millisecond})
		if err != nil {
			return nil, nil, err
		}
		ns, err := c.Namespace(1)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		return ns, c.Close, nil
	}
	return nil, nil, fmt.Errorf("target %q: use nbd://HOST:PORT/NAME or nvmf://HOST:PORT/NQN", target)
}

// mismatch is a verification failure.
type mismatch struct{ msg string }

func (m *mismatch) Error() string { return m.msg }

type runner struct {
	dev    bdev.Device
	st     *state
	killed string

	mu   sync.Mutex
	busy []bool

	cluster int // blocks per pool cluster

	stop  atomic.Bool
	ioErr atomic.Pointer[error]
	// errBeforeKill: the first I/O error came before the kill marker.
	errBeforeKill atomic.Bool
	bad           atomic.Pointer[mismatch]
	reads         atomic.Int64
	writes        atomic.Int64
	zeroes        atomic.Int64
	flushes       atomic.Int64
	freed         atomic.Int64
	verified      atomic.Int64
}

func run(args []string) int {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	target := fs.String("target", "", "nbd://HOST:PORT/NAME or nvmf://HOST:PORT/NQN")
	statePath := fs.String("state", "", "state file (the log of acknowledged writes)")
	seed := fs.Uint64("seed", 1, "seed of the data and the load")
	epoch := fs.Uint64("epoch", 0, "run number, mixed into the load's random choices")
	killed := fs.String("killed", "", "file whose existence means the server is being killed")
	qd := fs.Int("qd", 16, "I/Os in flight")
	cluster := fs.Int("cluster", 1<<20, "the pool's cluster size in bytes (whole clusters are zeroed now and then)")
	fs.Parse(args)
	if *target == "" || *statePath == "" {
		usage()
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	dev, closeDev, err := open(dctx, *target, *qd)
	dcancel()
	if err != nil {
		logf("connect %s: %v", *target, err)
		return 2
	}
	blocks := int(dev.Size() / blockSize)
	st, err := loadState(*statePath, *seed, blocks)
	if err != nil {
		closeDev()
		logf("%v", err)
		return 1
	}
	r := &runner{dev: dev, st: st, killed: *killed, busy: make([]bool, blocks), cluster: max(*cluster/blockSize, 1)}
	start := time.Now()
	r.verifyAll(*qd)
	verifyTime := time.Since(start)
	checked := r.verified.Load()
	if r.bad.Load() == nil && r.ioErr.Load() == nil {
		// What was found is now the acknowledged state.
		if err := st.save(*statePath); err != nil {
			logf("save state: %v", err)
			return 1
		}
		var wg sync.WaitGroup
		for w := range *qd {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.worker(rand.New(rand.NewPCG(*seed, *epoch<<16|uint64(w))))
			}()
		}
		go func() {
			<-ctx.Done()
			r.stop.Store(true)
		}()
		wg.Wait()
	}
	closeDev()
	if err := st.save(*statePath); err != nil {
		logf("save state: %v", err)
		return 1
	}
	pending := 0
	for _, p := range st.Pending {
		if p != noPending {
			pending++
		}
	}
	logf("%s: verified %d blocks in %v; then %d reads (%d blocks verified), %d writes, %d write-zeroes, %d clusters zeroed, %d flushes in %v; %d blocks with a write in flight at the end",
		*target, checked, verifyTime.Round(time.Millisecond), r.reads.Load(), r.verified.Load()-checked, r.writes.Load(), r.zeroes.Load(), r.freed.Load(), r.flushes.Load(),
		time.Since(start).Round(time.Millisecond)-verifyTime.Round(time.Millisecond), pending)
	if m := r.bad.Load(); m != nil {
		logf("FAIL: %s", m.msg)
		return 3
	}
	if p := r.ioErr.Load(); p != nil {
		if r.errBeforeKill.Load() {
			logf("FAIL: I/O error while the server was up: %v", *p)
			return 4
		}
		logf("I/O stopped by the kill: %v", *p)
	}
	return 0
}

func (r *runner) killedNow() bool {
	if r.killed == "" {
		return false
	}
	_, err := os.Stat(r.killed)
	return err == nil
}

// fail records an I/O error and stops the load. Whether it is expected is
// decided at the end; the kill marker is looked at now, when the error
// happened.
func (r *runner) fail(err error) {
	if r.ioErr.CompareAndSwap(nil, &err) {
		r.errBeforeKill.Store(!r.killedNow())
	}
	r.stop.Store(true)
}

// verifyAll reads every block once and checks it against the state.
func (r *runner) verifyAll(qd int) {
	const chunk = 256 // blocks per read
	n := len(r.st.Acked)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunk*blockSize)
			want := make([]byte, blockSize)
			for !r.stop.Load() {
				first := int(next.Add(chunk)) - chunk
				if first >= n {
					return
				}
				cnt := min(chunk, n-first)
				b := buf[:cnt*blockSize]
				if _, err := r.dev.ReadAt(b, int64(first)*blockSize); err != nil {
					r.fail(fmt.Errorf("read blocks %d-%d: %w", first, first+cnt-1, err))
					return
				}
				for i := range cnt {
					if !r.checkBlock(first+i, b[i*blockSize:(i+1)*blockSize], want, true) {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// checkBlock compares one block with its acknowledged generation or, with
// afterCrash, the generation of a write in flight at the crash (which then
// becomes the acknowledged one). It records a mismatch and returns false.
func (r *runner) checkBlock(lba int, got, want []byte, afterCrash bool) bool {
	st := r.st
	acked := st.Acked[lba]
	fill(want, uint64(lba), acked, st.Seed)
	if bytes.Equal(got, want) {
		if afterCrash {
			st.Pending[lba] = noPending
		}
		r.verified.Add(1)
		return true
	}
	if p := st.Pending[lba]; afterCrash && p != noPending {
		fill(want, uint64(lba), uint32(p), st.Seed)
		if bytes.Equal(got, want) {
			st.Acked[lba] = uint32(p)
			st.Pending[lba] = noPending
			r.verified.Add(1)
			return true
		}
	}
	msg := fmt.Sprintf("block %d (byte %d): want generation %d", lba, int64(lba)*blockSize, acked)
	if p := st.Pending[lba]; p != noPending {
		msg += fmt.Sprintf(" or the in-flight %d", p)
	}
	msg += ", found " + describe(got)
	r.bad.CompareAndSwap(nil, &mismatch{msg})
	r.stop.Store(true)
	return false
}

// lock claims n free blocks from first, or fails without waiting.
func (r *runner) lock(first, n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := first; i < first+n; i++ {
		if r.busy[i] {
			return false
		}
	}
	for i := first; i < first+n; i++ {
		r.busy[i] = true
	}
	return true
}

func (r *runner) unlock(first, n int) {
	r.mu.Lock()
	for i := first; i < first+n; i++ {
		r.busy[i] = false
	}
	r.mu.Unlock()
}

// worker runs the mixed load until stopped. A block's Acked and Pending
// are only touched by the worker holding it.
func (r *runner) worker(rng *rand.Rand) {
	st := r.st
	nblocks := len(st.Acked)
	buf := make([]byte, max(maxBlocks, r.cluster)*blockSize)
	want := make([]byte, blockSize)
	for !r.stop.Load() {
		n := 1
		if rng.IntN(4) == 0 {
			n = 1 + rng.IntN(maxBlocks)
		}
		first := rng.IntN(nblocks - n + 1)
		op := rng.IntN(100)
		whole := op == 99 && rng.IntN(4) == 0 && r.cluster > 0 && r.cluster <= nblocks
		if whole {
			// A whole cluster, which a thin replica frees.
			n = r.cluster
			first = rng.IntN(nblocks/n) * n
		}
		if op < 2 {
			if err := r.dev.Flush(); err != nil {
				r.fail(fmt.Errorf("flush: %w", err))
				return
			}
			r.flushes.Add(1)
			continue
		}
		if !r.lock(first, n) {
			continue
		}
		b := buf[:n*blockSize]
		off := int64(first) * blockSize
		switch {
		case op < 50: // read and verify
			if _, err := r.dev.ReadAt(b, off); err != nil {
				r.unlock(first, n)
				r.fail(fmt.Errorf("read blocks %d-%d: %w", first, first+n-1, err))
				return
			}
			for i := range n {
				if !r.checkBlock(first+i, b[i*blockSize:(i+1)*blockSize], want, false) {
					r.unlock(first, n)
					return
				}
			}
			r.reads.Add(1)
		default: // write, or write zeroes
			zero := op < 55 || whole
			r.mu.Lock()
			gen := st.NextGen
			st.NextGen++
			r.mu.Unlock()
			if zero {
				gen = 0
			}
			for i := range n {
				fill(b[i*blockSize:(i+1)*blockSize], uint64(first+i), gen, st.Seed)
				st.Pending[first+i] = int64(gen)
			}
			var err error
			if zero {
				err = r.dev.WriteZeroes(off, int64(len(b)))
			} else {
				_, err = r.dev.WriteAt(b, off)
			}
			if err != nil {
				// Unknown outcome: the blocks stay pending.
				r.unlock(first, n)
				r.fail(fmt.Errorf("write blocks %d-%d: %w", first, first+n-1, err))
				return
			}
			for i := range n {
				st.Acked[first+i] = gen
				st.Pending[first+i] = noPending
			}
			switch {
			case whole:
				r.freed.Add(1)
			case zero:
				r.zeroes.Add(1)
			default:
				r.writes.Add(1)
			}
		}
		r.unlock(first, n)
	}
}
