package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/testutil/qemuvm/pattern"
)

const (
	// directAlign is the alignment of offsets and lengths of pattern steps:
	// a page satisfies O_DIRECT on every logical block size up to 4 KiB.
	directAlign = 4096
	chunk       = 1 << 20
)

func parseInt(name, s string) (int64, error) {
	v, err := strconv.ParseInt(s, 0, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%s %q: want a non-negative integer", name, s)
	}
	return v, nil
}

func parseRange(args []string) (dev string, off, length int64, seed uint64, err error) {
	dev = args[0]
	if off, err = parseInt("offset", args[1]); err != nil {
		return
	}
	if length, err = parseInt("length", args[2]); err != nil {
		return
	}
	if off%directAlign != 0 || length%directAlign != 0 {
		err = fmt.Errorf("offset %d and length %d must be multiples of %d for O_DIRECT", off, length, directAlign)
		return
	}
	s, err := parseInt("seed", args[3])
	return dev, off, length, uint64(s), err
}

// alignedBuffer returns a page-aligned buffer, as O_DIRECT requires; anonymous
// mappings are page-aligned by construction.
func alignedBuffer(n int) ([]byte, func(), error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap %d bytes: %w", n, err)
	}
	return b, func() { unix.Munmap(b) }, nil
}

func stepPatternWrite(a *agent, args []string) error {
	dev, off, length, seed, err := parseRange(args)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s O_DIRECT: %w", dev, err)
	}
	defer f.Close()
	buf, free, err := alignedBuffer(chunk)
	if err != nil {
		return err
	}
	defer free()
	start := time.Now()
	for pos := off; pos < off+length; pos += chunk {
		n := min(int64(chunk), off+length-pos)
		pattern.Fill(buf[:n], seed, pos)
		if _, err := f.WriteAt(buf[:n], pos); err != nil {
			return fmt.Errorf("write %s at %d: %w", dev, pos, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush %s: %w", dev, err)
	}
	a.out("wrote %d bytes at %d seed %d in %v", length, off, seed, time.Since(start).Round(time.Millisecond))
	return nil
}

func stepPatternVerify(a *agent, args []string) error {
	dev, off, length, seed, err := parseRange(args)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s O_DIRECT: %w", dev, err)
	}
	defer f.Close()
	buf, free, err := alignedBuffer(chunk)
	if err != nil {
		return err
	}
	defer free()
	start := time.Now()
	for pos := off; pos < off+length; pos += chunk {
		n := min(int64(chunk), off+length-pos)
		if _, err := f.ReadAt(buf[:n], pos); err != nil {
			return fmt.Errorf("read %s at %d: %w", dev, pos, err)
		}
		if err := pattern.Check(buf[:n], seed, pos); err != nil {
			return fmt.Errorf("%s: %w", dev, err)
		}
	}
	a.out("verified %d bytes at %d seed %d in %v", length, off, seed, time.Since(start).Round(time.Millisecond))
	return nil
}

// command runs a program and reports its output as step output.
func command(a *agent, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if s := strings.TrimSpace(out.String()); s != "" {
		a.out("%s", s)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

func stepMkfs(a *agent, args []string) error {
	// -F: the target is a whole device; -q keeps the console short; the
	// extra arguments may set a size so that part of a device stays raw.
	return command(a, "/sbin/mke2fs", append([]string{"-t", "ext4", "-F", "-q", args[0]}, args[1:]...)...)
}

func stepFsck(a *agent, args []string) error {
	// -f: check even a clean file system; -n: never change it. Exit 0 is
	// the only clean verdict.
	return command(a, "/sbin/e2fsck", "-f", "-n", args[0])
}

func stepMount(a *agent, args []string) error {
	dev, dir := args[0], args[1]
	var flags uintptr
	if len(args) > 2 && args[2] == "ro" {
		flags |= unix.MS_RDONLY
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, dir, "ext4", flags, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", dev, dir, err)
	}
	return nil
}

func stepUmount(a *agent, args []string) error {
	if err := unix.Unmount(args[0], 0); err != nil {
		return fmt.Errorf("umount %s: %w", args[0], err)
	}
	return nil
}

func fileSet(args []string) (dir string, count int, size int64, seed uint64, err error) {
	dir = args[0]
	c, err := parseInt("count", args[1])
	if err != nil {
		return
	}
	if size, err = parseInt("size", args[2]); err != nil {
		return
	}
	s, err := parseInt("seed", args[3])
	return dir, int(c), size, uint64(s), err
}

func stepWriteFiles(a *agent, args []string) error {
	dir, count, size, seed, err := fileSet(args)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	buf := make([]byte, size)
	for i := 0; i < count; i++ {
		pattern.Fill(buf, pattern.FileSeed(seed, i), 0)
		if err := os.WriteFile(filepath.Join(dir, pattern.FileName(i)), buf, 0o644); err != nil {
			return err
		}
	}
	a.out("wrote %d files of %d bytes in %s", count, size, dir)
	return nil
}

func stepVerifyFiles(a *agent, args []string) error {
	dir, count, size, seed, err := fileSet(args)
	if err != nil {
		return err
	}
	for i := 0; i < count; i++ {
		p := filepath.Join(dir, pattern.FileName(i))
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if int64(len(b)) != size {
			return fmt.Errorf("%s: %d bytes, want %d", p, len(b), size)
		}
		if err := pattern.Check(b, pattern.FileSeed(seed, i), 0); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	a.out("verified %d files of %d bytes in %s", count, size, dir)
	return nil
}

func stepSync(a *agent, args []string) error {
	unix.Sync()
	return nil
}

// stepDropCaches writes dirty pages back and drops clean ones, so that the
// next reads of files and block devices go to the device.
func stepDropCaches(a *agent, args []string) error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}

func stepDial(a *agent, args []string) error {
	addr := net.JoinHostPort(args[0], args[1])
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", strings.Join(args[2:], " ")); err != nil {
		return fmt.Errorf("send to %s: %w", addr, err)
	}
	reply, err := readLine(c)
	if err != nil {
		return fmt.Errorf("reply from %s: %w", addr, err)
	}
	a.out("reply=%s", reply)
	return nil
}

// stepBarrier tells the host that the script reached a named point and
// waits until the host has done what it does there (fault a replica, check
// data...). The host answers "ok" or "error: <why>".
func stepBarrier(a *agent, args []string) error {
	if a.ctl == "" {
		return fmt.Errorf("barrier %s: no host control address", args[0])
	}
	c, err := net.DialTimeout("tcp", a.ctl, 30*time.Second)
	if err != nil {
		return fmt.Errorf("barrier %s: dial %s: %w", args[0], a.ctl, err)
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "barrier %s\n", args[0]); err != nil {
		return fmt.Errorf("barrier %s: %w", args[0], err)
	}
	reply, err := readLine(c)
	if err != nil {
		return fmt.Errorf("barrier %s: no answer: %w", args[0], err)
	}
	// "ok", then any variables the host sets: "ok NEW=4421 OLD=4420".
	f := strings.Fields(reply)
	if len(f) == 0 || f[0] != "ok" {
		return fmt.Errorf("barrier %s: host: %s", args[0], reply)
	}
	for _, kv := range f[1:] {
		if k, v, ok := strings.Cut(kv, "="); ok {
			a.vars[k] = v
			a.out("%s=%s", k, v)
		}
	}
	return nil
}

func stepRun(a *agent, args []string) error {
	return command(a, args[0], args[1:]...)
}

// timed is registered at init: it runs steps itself, through the map.
func init() {
	steps["timed"] = struct {
		fn    stepFunc
		usage string
		min   int
	}{stepTimed, "timed STEP [ARG...] (runs the step; reports elapsed_ms=, in the guest's monotonic clock, and started=, its wall clock at the start)", 1}
}

// stepTimed runs another step and reports how long it took, measured in
// the guest, so that a benchmark's numbers carry neither the serial line's
// latency nor the host's view of the guest's scheduling.
func stepTimed(a *agent, args []string) error {
	if args[0] == "timed" {
		return fmt.Errorf("timed: nothing to time in %q", strings.Join(args, " "))
	}
	start := time.Now()
	err := a.exec(args)
	// started= in the format of log/slog's text handler, to line the
	// step up with what the programs it ran logged.
	a.out("elapsed_ms=%.1f started=%s", float64(time.Since(start).Microseconds())/1000, start.Format("2006-01-02T15:04:05.000Z07:00"))
	return err
}

func stepSleep(a *agent, args []string) error {
	d, err := time.ParseDuration(args[0])
	if err != nil {
		return fmt.Errorf("sleep %q: %w", args[0], err)
	}
	time.Sleep(d)
	return nil
}
