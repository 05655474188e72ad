package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/loadgen"
	"github.com/nexstor/nexstor/internal/nbd"
	"github.com/nexstor/nexstor/internal/nvmf/target"
	"github.com/nexstor/nexstor/internal/pool"
	"github.com/nexstor/nexstor/internal/sysmon"
)

// ready is the server process's first line on stdout: where to reach it.
type ready struct {
	NVMf string            `json:"nvmf"` // host:port of the NVMe/TCP target
	NBD  string            `json:"nbd"`  // host:port of the NBD server
	NQN  map[string]string `json:"nqn"`  // backing -> subsystem NQN (namespace 1)
	PID  int               `json:"pid"`
}

// command is one request from the driver on the server's stdin; every
// command gets exactly one reply line.
type command struct {
	Op      string       `json:"op"` // raw, profile-start, profile-stop, mallocs
	Backing string       `json:"backing,omitempty"`
	Spec    loadgen.Spec `json:"spec"`
	Path    string       `json:"path,omitempty"`
}

// reply answers a command.
type reply struct {
	Err     string    `json:"err,omitempty"`
	Result  *measured `json:"result,omitempty"`
	Mallocs uint64    `json:"mallocs,omitempty"`
}

// replicaSet is one backing with what is served from it: a pool with its
// pre-filled thin replica, or (backing uring) the pre-filled file itself.
type replicaSet struct {
	dev  bdev.Device
	pool *pool.Pool    // nil for uring
	r    *pool.Replica // nil for uring
	exp  bdev.Device   // what the servers export and the raw path drives
	id   string        // for the subsystem NQN
}

func (s *replicaSet) close() {
	if s.r != nil {
		s.r.Close()
		s.pool.Close()
	}
	s.dev.Close()
}

// uringFile is the file of the uring backing under dir, which fio's raw
// io_uring path opens too.
func uringFile(dir string) string { return filepath.Join(dir, "uring.img") }

// openURing creates the uring backing: a file of size bytes under dir,
// opened with O_DIRECT and io_uring and exported as it is (no pool, no
// replica), pre-filled, so that fio with ioengine=io_uring and direct=1 on
// the same file is the raw baseline of every path to it.
func openURing(dir string, size int64) (*replicaSet, error) {
	direct := true
	dev, err := bdev.OpenFile(uringFile(dir), bdev.FileOptions{Create: true, Size: size, BlockSize: 4096, Direct: &direct, URing: true})
	if err != nil {
		return nil, fmt.Errorf("backing uring: %w", err)
	}
	s := &replicaSet{dev: dev, exp: dev, id: "bench-uring"}
	if err := prefill(dev, size); err != nil {
		s.close()
		return nil, fmt.Errorf("backing uring: %w", err)
	}
	return s, nil
}

// prefill writes the first size bytes of dev once, then flushes.
func prefill(dev bdev.Device, size int64) error {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		if _, err := dev.WriteAt(buf[:n], off); err != nil {
			return fmt.Errorf("pre-fill at %d: %w", off, err)
		}
	}
	if err := dev.Flush(); err != nil {
		return fmt.Errorf("flush after pre-fill: %w", err)
	}
	return nil
}

// openReplica creates a pool on a fresh backing (malloc or an O_DIRECT file
// under dir) and a thin replica of size bytes in it, then writes the whole
// replica once so that every cluster is allocated before anything is
// measured.
func openReplica(backing, dir string, size int64) (*replicaSet, error) {
	// Room for the pool's superblocks and metadata next to the replica.
	devSize := size + 256<<20
	var dev bdev.Device
	var err error
	switch backing {
	case "uring":
		return openURing(dir, size)
	case "malloc":
		dev, err = bdev.NewMalloc(devSize, 4096)
	case "file":
		dev, err = bdev.OpenFile(filepath.Join(dir, "pool.img"), bdev.FileOptions{Create: true, Size: devSize, BlockSize: 4096})
	default:
		return nil, fmt.Errorf("backing %q: use malloc, file or uring", backing)
	}
	if err != nil {
		return nil, fmt.Errorf("backing %s: %w", backing, err)
	}
	p, err := pool.Create(dev, pool.CreateOptions{Name: "bench-" + backing})
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("backing %s: create pool: %w", backing, err)
	}
	if _, err := p.CreateReplica(pool.ReplicaOptions{Name: "r-" + backing, Size: size, Thin: true}); err != nil {
		p.Close()
		dev.Close()
		return nil, fmt.Errorf("backing %s: create replica: %w", backing, err)
	}
	r, err := p.OpenReplica("r-" + backing)
	if err != nil {
		p.Close()
		dev.Close()
		return nil, fmt.Errorf("backing %s: open replica: %w", backing, err)
	}
	s := &replicaSet{dev: dev, pool: p, r: r, exp: r, id: r.UUID()}
	if err := prefill(r, size); err != nil {
		s.close()
		return nil, fmt.Errorf("backing %s: %w", backing, err)
	}
	return s, nil
}

// serve is the server process: it builds the replicas, serves them over
// NVMe/TCP and NBD on loopback, prints a ready line, and then executes
// commands from stdin until it is closed.
func serve(backings []string, dir string, sizes map[string]int64) error {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// As `nexstor server` does by default (--steady-monitor), so that the
	// servers measured are the ones shipped (see package sysmon);
	// GODEBUG=schedtrace=0 measures --steady-monitor=false.
	if err := sysmon.Quiet(); err != nil {
		logger.Warn("sysmon: running on without the setting", "err", err)
	}
	sets := map[string]*replicaSet{}
	defer func() {
		for _, s := range sets {
			s.close()
		}
	}()
	tgt := target.New(logger)
	defer tgt.Close()
	nbds := nbd.NewServer(logger)
	defer nbds.Close()
	rd := ready{NQN: map[string]string{}, PID: os.Getpid()}
	for _, b := range backings {
		start := time.Now()
		size := sizes[b]
		s, err := openReplica(b, dir, size)
		if err != nil {
			return err
		}
		sets[b] = s
		fmt.Fprintf(os.Stderr, "nvmfbench: %s replica of %d MiB pre-filled in %v\n", b, size>>20, time.Since(start).Round(time.Millisecond))
		nqn := target.NQN("replica", s.id)
		sub, err := tgt.AddSubsystem(nqn, target.SubsystemOptions{AllowAnyHost: true})
		if err != nil {
			return fmt.Errorf("backing %s: %w", b, err)
		}
		if _, err := sub.AddNamespace(s.exp, target.NamespaceOptions{}); err != nil {
			return fmt.Errorf("backing %s: %w", b, err)
		}
		if err := nbds.AddExport(b, s.exp, nbd.ExportOptions{}); err != nil {
			return fmt.Errorf("backing %s: %w", b, err)
		}
		rd.NQN[b] = nqn
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		nl.Close()
		return err
	}
	go tgt.Serve(ctx, nl)
	go nbds.Serve(ctx, bl)
	rd.NVMf, rd.NBD = nl.Addr().String(), bl.Addr().String()

	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(rd); err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	var prof *os.File
	for in.Scan() {
		var c command
		var rep reply
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			return fmt.Errorf("command %q: %w", in.Text(), err)
		}
		switch c.Op {
		case "raw":
			s := sets[c.Backing]
			if s == nil {
				rep.Err = fmt.Sprintf("no backing %q", c.Backing)
				break
			}
			r, err := loadgen.Run(ctx, s.exp, c.Spec)
			if err == nil && r.Errors > 0 {
				err = fmt.Errorf("%d I/O errors, first: %w", r.Errors, r.FirstError)
			}
			if err != nil {
				rep.Err = err.Error()
				break
			}
			m := fromLoadgen(r)
			rep.Result = &m
		case "profile-start":
			f, err := os.Create(c.Path)
			if err == nil {
				err = pprof.StartCPUProfile(f)
			}
			if err != nil {
				rep.Err = err.Error()
				break
			}
			prof = f
		case "profile-stop":
			if prof != nil {
				pprof.StopCPUProfile()
				prof.Close()
				prof = nil
			}
		case "mallocs":
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			rep.Mallocs = ms.Mallocs
		default:
			rep.Err = fmt.Sprintf("unknown op %q", c.Op)
		}
		if err := out.Encode(rep); err != nil {
			return err
		}
	}
	if err := in.Err(); err != nil && err != io.EOF {
		return err
	}
	return nil
}
