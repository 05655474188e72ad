// Package qemuvm boots Debian's Linux kernel under QEMU as a real NVMe/TCP
// host for interop tests. The initramfs is built at test time: busybox, the
// nvme-tcp, ext4 and virtio-net modules, mke2fs/e2fsck with their libraries,
// and a small static Go program (./guestagent) that runs the test's script
// of steps and reports each on a second serial line.
//
// The guest reaches the host's loopback at 10.0.2.2 through QEMU's user-mode
// network, so a target listening on 127.0.0.1 of the host is reachable from
// inside the guest as 10.0.2.2 with the same port.
//
// Booting is the slow part (seconds with KVM, tens of seconds under TCG):
// run several steps in one boot, and boot again only to test what needs a
// fresh host, such as reconnecting to data written by an earlier boot.
//
//	env := qemuvm.Require(t)
//	vm := env.Boot(t, qemuvm.Config{Script: []string{
//		"connect 10.0.2.2 4420 " + subnqn + " " + hostnqn,
//		"pattern-write $DEV 0 1048576 7",
//		"disconnect $CTRL",
//	}})
//	res, err := vm.Wait(ctx)
//
// See ./guestagent for the steps a script may use.
package qemuvm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
)

// DefaultTimeout bounds one boot when Config.Timeout is zero: generous for
// TCG on a loaded machine, but a hung guest never hangs the test run.
const DefaultTimeout = 5 * time.Minute

// Config describes one boot.
type Config struct {
	// Script is the guest agent's steps, one per element, run in order.
	// A step prefixed with "-" may fail without stopping the script.
	Script []string
	// Modules are extra kernel modules to load after the base set, each
	// optionally followed by parameters: "brd rd_nr=1 rd_size=65536".
	// Dependencies are resolved from modules.dep.
	Modules []string
	// Append is added to the kernel command line.
	Append string
	// MemoryMiB is the guest memory; 0 means 1024.
	MemoryMiB int
	// Timeout bounds the boot from start to power-off; 0 means
	// DefaultTimeout. At the deadline QEMU is killed.
	Timeout time.Duration
	// Programs are host executables (names looked up on PATH, or paths)
	// copied into the guest's /usr/bin, with the shared libraries they
	// load at the paths they have on the host (and the host's
	// /etc/ld.so.cache), for steps such as "start load fio ...". Check
	// for them with testutil.RequireTool first: a missing one fails Boot.
	Programs []string
	// Files are put into the guest at their paths (absolute, in the
	// guest), mode 0600: what a program there reads, such as certificates.
	Files map[string][]byte
	// Barrier is called, on its own goroutine, when the script reaches a
	// "barrier NAME" step; the step waits until it returns and fails with
	// its error. Nil answers every barrier at once. Being off the test's
	// goroutine, it must report problems as its error, not with t.Fatal.
	Barrier func(name string) error
	// BarrierVars, when set, is called instead of Barrier; the variables
	// it returns are set in the guest's script (used as $NAME by later
	// steps), for what only the host learns at the barrier (the port of
	// the node a volume moved to). Names and values are single words.
	BarrierVars func(name string) (map[string]string, error)
}

// VM is one running guest. Its methods are not safe for concurrent use.
type VM struct {
	t       testing.TB
	cmd     *exec.Cmd
	results string // file behind the second serial line
	console *testutil.SyncBuffer
	exited  chan struct{}
	waitErr error
	ctl     net.Listener
	slot    *bootSlot
	timeout time.Duration
	start   time.Time
	res     *Result
}

// Boot builds this boot's initramfs and starts QEMU. The machine is killed,
// at the latest, when the test ends; when the test failed, the console log
// is written to the test log.
//
// Guests run one at a time on a machine, across test processes: Boot waits
// (up to 10 minutes) until the previous guest's Wait returned or its test
// ended. So Wait for one VM before booting the next.
func (e *Env) Boot(t testing.TB, cfg Config) *VM {
	t.Helper()
	dir := t.TempDir()
	vm := &VM{
		t:       t,
		results: filepath.Join(dir, "results.log"),
		console: &testutil.SyncBuffer{},
		exited:  make(chan struct{}),
		timeout: cfg.Timeout,
	}
	if vm.timeout <= 0 {
		vm.timeout = DefaultTimeout
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("qemuvm: control listener: %v", err)
	}
	vm.ctl = ln
	fn := cfg.BarrierVars
	if fn == nil && cfg.Barrier != nil {
		fn = func(name string) (map[string]string, error) { return nil, cfg.Barrier(name) }
	}
	go serveBarriers(ln, fn)

	initrd := filepath.Join(dir, "initrd")
	if err := e.writeInitrd(initrd, cfg, ln.Addr().(*net.TCPAddr).Port); err != nil {
		ln.Close()
		t.Fatalf("qemuvm: %v", err)
	}
	vm.slot = acquireSlot(t)
	mem := cfg.MemoryMiB
	if mem == 0 {
		mem = 1024
	}
	args := []string{"-machine", "q35", "-cpu", "max", "-m", strconv.Itoa(mem), "-smp", "2"}
	for _, a := range strings.Split(e.Accel, ":") {
		args = append(args, "-accel", a)
	}
	args = append(args,
		"-no-user-config", "-nodefaults", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-serial", "file:"+vm.results,
		"-kernel", e.Kernel, "-initrd", initrd,
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 quiet loglevel=4 "+cfg.Append),
		"-nic", "user,model=virtio-net-pci",
	)
	cmd := exec.Command(e.QEMU, args...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = vm.console, vm.console
	// A test binary killed by its -timeout must not leave QEMU behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		ln.Close()
		vm.slot.release()
		t.Fatalf("qemuvm: start %s: %v", e.QEMU, err)
	}
	vm.cmd, vm.start = cmd, time.Now()
	go func() {
		vm.waitErr = cmd.Wait()
		close(vm.exited)
	}()
	t.Cleanup(func() {
		vm.kill()
		ln.Close()
		if t.Failed() {
			con := vm.console.String()
			if con == "" {
				con = "(empty: the kernel printed nothing; with KVM, try NEXSTOR_QEMU_ACCEL=tcg)"
			}
			t.Logf("qemuvm: console of the guest:\n%s", con)
		}
	})
	return vm
}

func (vm *VM) kill() {
	select {
	case <-vm.exited:
	default:
		vm.cmd.Process.Kill()
		<-vm.exited
	}
	vm.slot.release()
}

// Wait waits until the guest powers off, the boot's timeout passes or ctx is
// done, whichever comes first; in the latter two cases it kills QEMU. It
// returns what the script reported, also on error. The error is non-nil when
// the script did not run to its end (killed, crashed, or a step failed that
// was not allowed to); step outcomes are in the Result.
func (vm *VM) Wait(ctx context.Context) (*Result, error) {
	if vm.res != nil {
		return vm.res, vm.res.err
	}
	timer := time.NewTimer(vm.timeout - time.Since(vm.start))
	defer timer.Stop()
	var why error
	select {
	case <-vm.exited:
	case <-timer.C:
		why = fmt.Errorf("guest still running after %v; killed", vm.timeout)
	case <-ctx.Done():
		why = fmt.Errorf("killed the guest: %w", ctx.Err())
	}
	vm.kill()
	vm.ctl.Close()
	res := &Result{Console: vm.console.String(), Elapsed: time.Since(vm.start)}
	if b, err := os.ReadFile(vm.results); err == nil {
		res.parse(b)
	}
	switch {
	case why != nil:
		res.err = why
	case !res.Done:
		res.err = fmt.Errorf("guest stopped before the script ended (qemu: %v)", vm.waitErr)
	default:
		for _, s := range res.Steps {
			if s.Failed() && !s.Tolerated {
				res.err = fmt.Errorf("step %d %q failed: %s", s.Index, s.Line, s.Err)
				break
			}
		}
	}
	if res.err != nil {
		if s := res.Last(); s != nil {
			res.err = fmt.Errorf("%w (last step %d %q)", res.err, s.Index, s.Line)
		}
	}
	vm.res = res
	return res, res.err
}

// Console returns the guest console output so far.
func (vm *VM) Console() string { return vm.console.String() }

// Result is what the script reported.
type Result struct {
	Steps   []*Step
	Done    bool // the script ran to its end
	Console string
	Elapsed time.Duration
	err     error
}

// Step is the report of one step.
type Step struct {
	Index     int      // 1-based position among the steps that ran
	Line      string   // the line as written in the script, without a leading "-"
	Name      string   // the first word of the line
	Tolerated bool     // the line started with "-"
	Output    []string // the step's output lines
	OK        bool     // the step completed successfully
	Err       string   // why it failed, when it did
	finished  bool
}

// Failed reports whether the step ran and failed.
func (s *Step) Failed() bool { return s.finished && !s.OK }

// Value returns the value of the first "key=value" word in the step's
// output, or "" when there is none.
func (s *Step) Value(key string) string {
	for _, l := range s.Output {
		for _, f := range strings.Fields(l) {
			if k, v, ok := strings.Cut(f, "="); ok && k == key {
				return v
			}
		}
	}
	return ""
}

// Step returns the first step with the given name, or nil.
func (r *Result) Step(name string) *Step {
	for _, s := range r.Steps {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// StepsNamed returns every step with the given name, in order.
func (r *Result) StepsNamed(name string) []*Step {
	var out []*Step
	for _, s := range r.Steps {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// Last returns the last step that started, or nil.
func (r *Result) Last() *Step {
	if len(r.Steps) == 0 {
		return nil
	}
	return r.Steps[len(r.Steps)-1]
}

// Err is the error Wait returned.
func (r *Result) Err() error { return r.err }

// String summarizes every step, one per line, for test logs.
func (r *Result) String() string {
	var b strings.Builder
	for _, s := range r.Steps {
		verdict := "ok"
		switch {
		case !s.finished:
			verdict = "did not finish"
		case !s.OK:
			verdict = "FAILED: " + s.Err
		}
		fmt.Fprintf(&b, "%3d %-60s %s\n", s.Index, s.Line, verdict)
		for _, o := range s.Output {
			fmt.Fprintf(&b, "      | %s\n", o)
		}
	}
	fmt.Fprintf(&b, "done=%v elapsed=%v\n", r.Done, r.Elapsed.Round(time.Millisecond))
	return b.String()
}

const markerPrefix = "@@nexstor "

func (r *Result) parse(b []byte) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	byIndex := map[int]*Step{}
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		i := strings.Index(line, markerPrefix)
		if i < 0 {
			continue
		}
		kind, rest, _ := strings.Cut(line[i+len(markerPrefix):], " ")
		if kind == "DONE" {
			r.Done = true
			continue
		}
		num, text, _ := strings.Cut(rest, " ")
		n, err := strconv.Atoi(num)
		if err != nil {
			continue
		}
		s := byIndex[n]
		if s == nil && kind != "STEP" {
			continue
		}
		switch kind {
		case "STEP":
			s = &Step{Index: n, Line: text, Tolerated: strings.HasPrefix(text, "-")}
			s.Line = strings.TrimSpace(strings.TrimPrefix(text, "-"))
			if f := strings.Fields(s.Line); len(f) > 0 {
				s.Name = f[0]
			}
			byIndex[n] = s
			r.Steps = append(r.Steps, s)
		case "OUT":
			s.Output = append(s.Output, text)
		case "OK":
			s.OK, s.finished = true, true
		case "FAIL":
			s.Err, s.finished = text, true
		}
	}
}

// serveBarriers answers "barrier NAME" requests of the guest with "ok" or
// "error: ..." after running fn.
func serveBarriers(ln net.Listener, fn func(string) (map[string]string, error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			answered := false
			defer func() {
				// fn ended without returning (t.FailNow on this
				// goroutine, a panic): fail the step rather than leave
				// the guest waiting until the boot's deadline.
				if !answered {
					fmt.Fprintf(c, "error: the host's barrier handler did not return\n")
				}
				c.Close()
			}()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				answered = true
				return
			}
			verb, name, _ := strings.Cut(strings.TrimSpace(line), " ")
			reply := "ok"
			switch {
			case verb != "barrier":
				reply = "error: unknown request " + verb
			case fn != nil:
				vars, err := fn(name)
				if err != nil {
					reply = "error: " + strings.ReplaceAll(err.Error(), "\n", " ")
					break
				}
				for _, k := range slices.Sorted(maps.Keys(vars)) {
					reply += " " + k + "=" + vars[k]
				}
			}
			answered = true
			fmt.Fprintf(c, "%s\n", reply)
		}()
	}
}

// writeInitrd writes the base initramfs followed by this boot's part: the
// script, the module list, the control address and any extra modules. The
// kernel unpacks concatenated archives in order.
func (e *Env) writeInitrd(path string, cfg Config, ctlPort int) error {
	var extra bytes.Buffer
	w := newCPIOWriter(&extra)
	w.File("nexstor/script", 0o644, []byte(strings.Join(cfg.Script, "\n")+"\n"))
	w.File("nexstor/ctl", 0o644, []byte(fmt.Sprintf("10.0.2.2:%d\n", ctlPort)))
	for _, name := range slices.Sorted(maps.Keys(cfg.Files)) {
		w.File(name, 0o600, cfg.Files[name])
	}

	base, err := e.modules.order(baseModules, optionalModules)
	if err != nil {
		return err
	}
	params := map[string]string{}
	var names []string
	for _, m := range cfg.Modules {
		name, p, _ := strings.Cut(strings.TrimSpace(m), " ")
		params[modName(name)] = strings.TrimSpace(p)
		names = append(names, name)
	}
	all, err := e.modules.order(append(append([]string{}, baseModules...), names...), optionalModules)
	if err != nil {
		return err
	}
	inBase := map[string]bool{}
	for _, m := range base {
		inBase[m] = true
	}
	var list strings.Builder
	for _, m := range all {
		fmt.Fprintf(&list, "%s %s\n", m, params[m])
		if !inBase[m] {
			b, err := e.modules.read(m)
			if err != nil {
				return err
			}
			w.File("lib/modules/"+m+".ko", 0o644, b)
		}
	}
	w.File("nexstor/modules", 0o644, []byte(list.String()))
	if err := addPrograms(w, cfg.Programs); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(e.base); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(extra.Bytes()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// addPrograms copies host executables and the shared libraries they load
// into the initramfs.
func addPrograms(w *cpioWriter, progs []string) error {
	if len(progs) == 0 {
		return nil
	}
	libs := map[string]bool{}
	for _, p := range progs {
		exe, err := lookTool(p)
		if err != nil {
			return fmt.Errorf("program for the guest: %w", err)
		}
		b, err := os.ReadFile(exe)
		if err != nil {
			return err
		}
		w.File("usr/bin/"+filepath.Base(exe), 0o755, b)
		ls, err := sharedLibs(exe)
		if err != nil {
			return err
		}
		for _, l := range ls {
			libs[l] = true
		}
	}
	for l := range libs {
		b, err := os.ReadFile(l)
		if err != nil {
			return fmt.Errorf("shared library: %w", err)
		}
		w.File(l, 0o755, b)
	}
	if b, err := os.ReadFile("/etc/ld.so.cache"); err == nil {
		w.File("etc/ld.so.cache", 0o644, b)
	}
	return nil
}
