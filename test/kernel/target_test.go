// Package kernel holds interop tests in which Debian's Linux kernel, booted
// under QEMU by package qemuvm, is the NVMe/TCP host of Nexstor's target.
package kernel

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/nvmf/target"
	"github.com/nexstor/nexstor/internal/pool"
	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm/pattern"
)

const (
	// hostNQN is the guest's host NQN, the only one the subsystems allow.
	hostNQN = "nqn.2014-08.org.nvmexpress:uuid:6e6f6465-0000-4000-8000-000000000001"
	// strangerNQN is a host NQN that no subsystem allows.
	strangerNQN = "nqn.2014-08.org.nvmexpress:uuid:6e6f6465-0000-4000-8000-00000000dead"
	// goHostNQN is the host NQN of the initiator that checks on the host.
	goHostNQN = "nqn.2014-08.org.nvmexpress:uuid:6e6f6465-0000-4000-8000-000000000002"
)

// served is a target on loopback ports that the guest reaches at 10.0.2.2.
type served struct {
	tgt      *target.Target
	sub      *target.Subsystem
	ioPort   int
	discPort int
	log      *testutil.SyncBuffer
	stopOnce sync.Once
	stopFn   func()
}

// stop closes the listeners and every connection; the test's cleanup calls
// it too.
func (s *served) stop() { s.stopOnce.Do(s.stopFn) }

// serve exports dev as namespace 1 of subsystem nqn, allowing hostNQN and
// goHostNQN, with an I/O and a discovery listener on free loopback ports.
// The target's log is shown when the test fails.
func serve(t *testing.T, nqn string, dev bdev.Device) *served {
	t.Helper()
	return serveAt(t, nqn, dev, "127.0.0.1:0", "127.0.0.1:0")
}

// serveAt is serve on the given listen addresses, so that a restarted target
// can come back on the ports hosts know.
func serveAt(t *testing.T, nqn string, dev bdev.Device, ioAddr, discAddr string) *served {
	t.Helper()
	s := &served{log: &testutil.SyncBuffer{}}
	s.tgt = target.New(slog.New(slog.NewTextHandler(s.log, &slog.HandlerOptions{Level: slog.LevelInfo})))
	sub, err := s.tgt.AddSubsystem(nqn, target.SubsystemOptions{AllowedHosts: []string{hostNQN, goHostNQN}})
	if err != nil {
		t.Fatal(err)
	}
	s.sub = sub
	if _, err := sub.AddNamespace(dev, target.NamespaceOptions{UUID: [16]byte{0x6e, 0x78, 0x73, 0x74, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}}); err != nil {
		t.Fatal(err)
	}
	io, err := net.Listen("tcp", ioAddr)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := net.Listen("tcp", discAddr)
	if err != nil {
		t.Fatal(err)
	}
	s.ioPort = io.Addr().(*net.TCPAddr).Port
	s.discPort = disc.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.tgt.Serve(ctx, io) }()
	go func() { defer wg.Done(); s.tgt.ServeDiscovery(ctx, disc) }()
	s.stopFn = func() {
		cancel()
		s.tgt.Close()
		wg.Wait()
	}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("target log:\n%s", s.log.String())
		}
	})
	return s
}

// connect opens namespace 1 through the Go initiator, as the host side of a
// test checks what the guest left behind.
func (s *served) connect(t *testing.T, nqn string) bdev.Device {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := initiator.Connect(ctx, "127.0.0.1:"+strconv.Itoa(s.ioPort), nqn, initiator.Options{HostNQN: goHostNQN, IOQueues: 2})
	if err != nil {
		t.Fatalf("initiator connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ns, err := c.Namespace(1)
	if err != nil {
		t.Fatalf("initiator namespace 1: %v", err)
	}
	return ns
}

// verifyPattern reads [off, off+n) of dev and checks the pattern of seed.
func verifyPattern(dev bdev.Device, off, n int64, seed uint64) error {
	buf := make([]byte, 1<<20)
	for pos := off; pos < off+n; pos += int64(len(buf)) {
		p := buf[:min(int64(len(buf)), off+n-pos)]
		if _, err := dev.ReadAt(p, pos); err != nil {
			return fmt.Errorf("read at %d: %w", pos, err)
		}
		if err := pattern.Check(p, seed, pos); err != nil {
			return err
		}
	}
	return nil
}

// verifyZeroes checks that [off, off+n) of dev reads as zeroes.
func verifyZeroes(dev bdev.Device, off, n int64) error {
	buf := make([]byte, 1<<20)
	for pos := off; pos < off+n; pos += int64(len(buf)) {
		p := buf[:min(int64(len(buf)), off+n-pos)]
		if _, err := dev.ReadAt(p, pos); err != nil {
			return fmt.Errorf("read at %d: %w", pos, err)
		}
		for i, b := range p {
			if b != 0 {
				return fmt.Errorf("byte at %d is %#02x, want zero", pos+int64(i), b)
			}
		}
	}
	return nil
}

// writePattern writes the pattern of seed to [off, off+n) of dev and flushes.
func writePattern(dev bdev.Device, off, n int64, seed uint64) error {
	buf := make([]byte, 1<<20)
	for pos := off; pos < off+n; pos += int64(len(buf)) {
		p := buf[:min(int64(len(buf)), off+n-pos)]
		pattern.Fill(p, seed, pos)
		if _, err := dev.WriteAt(p, pos); err != nil {
			return fmt.Errorf("write at %d: %w", pos, err)
		}
	}
	return dev.Flush()
}

// fileSet names a set of files written by the guest's write-files step:
// Count files of Size bytes in Dir (a path inside the file system), Seed.
type fileSet struct {
	Dir   string
	Count int
	Size  int64
	Seed  uint64
}

// checkExt4Image copies the first n bytes of dev (an ext4 file system) into a
// file, checks it with e2fsck, and compares the files of each set, read with
// debugfs, with what the guest wrote.
func checkExt4Image(t *testing.T, what string, dev bdev.Device, n int64, sets ...fileSet) {
	t.Helper()
	e2fsck := testutil.RequireTool(t, "e2fsck")
	debugfs := testutil.RequireTool(t, "debugfs")
	img := filepath.Join(t.TempDir(), "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for pos := int64(0); pos < n; pos += int64(len(buf)) {
		p := buf[:min(int64(len(buf)), n-pos)]
		if _, err := dev.ReadAt(p, pos); err != nil {
			t.Fatalf("%s: read at %d: %v", what, pos, err)
		}
		if _, err := f.WriteAt(p, pos); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(e2fsck, "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("%s: e2fsck -fn: %v\n%s", what, err, out)
	}
	for _, set := range sets {
		for i := 0; i < set.Count; i++ {
			name := set.Dir + "/" + pattern.FileName(i)
			var stderr bytes.Buffer
			cmd := exec.Command(debugfs, "-R", "cat "+name, img)
			cmd.Stderr = &stderr
			got, err := cmd.Output()
			if err != nil {
				t.Errorf("%s: debugfs cat %s: %v: %s", what, name, err, stderr.String())
				continue
			}
			if int64(len(got)) != set.Size {
				t.Errorf("%s: %s: %d bytes, want %d (debugfs: %s)", what, name, len(got), set.Size, strings.TrimSpace(stderr.String()))
				continue
			}
			if err := pattern.Check(got, pattern.FileSeed(set.Seed, i), 0); err != nil {
				t.Errorf("%s: %s: %v", what, name, err)
			}
		}
	}
}

const (
	replicaUUID = "6b65726e-656c-4000-8000-000000000001"
	replicaName = "kernel-interop"
)

// createPoolReplica formats a pool on a file at path, twice as large as the
// replica, and opens a thin replica of devSize bytes on it.
func createPoolReplica(t *testing.T, path string) (*pool.Pool, *pool.Replica) {
	t.Helper()
	disk, err := bdev.OpenFile(path, bdev.FileOptions{Create: true, Size: 2 * devSize})
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.Create(disk, pool.CreateOptions{Name: "kernel"})
	if err != nil {
		t.Fatalf("pool create: %v", err)
	}
	if _, err := p.CreateReplica(pool.ReplicaOptions{Name: replicaName, UUID: replicaUUID, Size: devSize, Thin: true}); err != nil {
		t.Fatalf("replica create: %v", err)
	}
	return p, openReplica(t, p)
}

// importPoolReplica imports the pool on the file at path and opens the
// replica again.
func importPoolReplica(t *testing.T, path string) (*pool.Pool, *pool.Replica) {
	t.Helper()
	disk, err := bdev.OpenFile(path, bdev.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.Import(disk)
	if err != nil {
		t.Fatalf("pool import: %v", err)
	}
	if err := p.Check(); err != nil {
		t.Errorf("pool check after import: %v", err)
	}
	return p, openReplica(t, p)
}

func openReplica(t *testing.T, p *pool.Pool) *pool.Replica {
	t.Helper()
	r, err := p.OpenReplica(replicaName)
	if err != nil {
		t.Fatalf("replica open: %v", err)
	}
	// Closing twice is harmless; the pool's Close comes last.
	t.Cleanup(func() {
		r.Close()
		p.Close()
	})
	return r
}
