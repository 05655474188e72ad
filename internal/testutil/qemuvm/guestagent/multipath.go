package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Steps for NVMe native multipath and ANA, and for programs that run in the
// background while the host changes things (fio under a path switch).

// bgProc is a program started by "start".
type bgProc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	err  error // valid once done is closed
}

// lockedBuffer collects a background program's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// stepSet sets a variable: "set CA $CTRL" keeps the controller of a connect
// for later steps.
func stepSet(a *agent, args []string) error {
	a.vars[args[0]] = strings.Join(args[1:], " ")
	a.out("%s=%s", args[0], a.vars[args[0]])
	return nil
}

// stepStart starts PROGRAM in the background under NAME.
func stepStart(a *agent, args []string) error {
	name := args[0]
	if _, ok := a.bg[name]; ok {
		return fmt.Errorf("start %s: already started", name)
	}
	p := &bgProc{cmd: exec.Command(args[1], args[2:]...), out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Dir = os.TempDir() // fio leaves state files in its working directory
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	a.bg[name] = p
	a.out("pid=%d", p.cmd.Process.Pid)
	return nil
}

func (a *agent) bgProc(name string) (*bgProc, error) {
	p, ok := a.bg[name]
	if !ok {
		return nil, fmt.Errorf("no program was started as %q", name)
	}
	return p, nil
}

// stepRunning fails when the program NAME has exited, reporting its output.
func stepRunning(a *agent, args []string) error {
	p, err := a.bgProc(args[0])
	if err != nil {
		return err
	}
	select {
	case <-p.done:
		a.out("%s", p.out.String())
		return fmt.Errorf("%s exited early: %v", args[0], exitText(p.err))
	default:
		return nil
	}
}

// stepStop ends the program NAME with SIGINT (what Ctrl-C sends: fio then
// ends its jobs and prints its report), waits for it and reports its output
// and exit. It fails when the program had already exited with an error, or
// does not exit within the device wait.
func stepStop(a *agent, args []string) error {
	p, err := a.bgProc(args[0])
	if err != nil {
		return err
	}
	early := false
	select {
	case <-p.done:
		early = true
	default:
		p.cmd.Process.Signal(syscall.SIGINT)
	}
	select {
	case <-p.done:
	case <-time.After(deviceWait):
		p.cmd.Process.Kill()
		return fmt.Errorf("%s did not exit within %v of SIGINT", args[0], deviceWait)
	}
	a.out("%s", p.out.String())
	a.out("exit=%q early=%v", exitText(p.err), early)
	if early && p.err != nil {
		return fmt.Errorf("%s had exited by itself: %v", args[0], exitText(p.err))
	}
	return nil
}

func exitText(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// stepMultipath checks that the kernel's NVMe native multipath is on.
func stepMultipath(a *agent, args []string) error {
	b, err := os.ReadFile("/sys/module/nvme_core/parameters/multipath")
	if err != nil {
		return fmt.Errorf("nvme_core multipath parameter: %w", err)
	}
	v := strings.TrimSpace(string(b))
	a.out("multipath=%s", v)
	if v != "Y" {
		return fmt.Errorf("nvme_core native multipath is off (%s)", v)
	}
	return nil
}

// pathDisks returns the per-path namespace disks (nvme<s>c<c>n<n>) of
// controller ctrl.
func pathDisks(ctrl string) []string {
	ents, _ := os.ReadDir(filepath.Join("/sys/class/nvme", ctrl))
	var out []string
	for _, e := range ents {
		if pathDiskRE.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func readAttr(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// stepWaitANA waits until every path of controller CTRL reports ANA state
// STATE in sysfs (ana_state), as after the kernel read the ANA log page on
// an ANA change event.
func stepWaitANA(a *agent, args []string) error {
	ctrl, want := args[0], args[1]
	start := time.Now()
	for {
		paths := pathDisks(ctrl)
		states := make([]string, len(paths))
		all := len(paths) > 0
		for i, p := range paths {
			states[i] = readAttr(filepath.Join("/sys/class/nvme", ctrl, p, "ana_state"))
			all = all && states[i] == want
		}
		if all {
			a.out("%s %v ana_state=%s after %v", ctrl, paths, want, time.Since(start).Round(time.Millisecond))
			return nil
		}
		if time.Since(start) > deviceWait {
			return fmt.Errorf("%s: paths %v in ANA states %v after %v, want %s (controller state %s)",
				ctrl, paths, states, deviceWait, want, readAttr(filepath.Join("/sys/class/nvme", ctrl, "state")))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stepPaths reports what /sys/class/nvme-subsystem shows: each subsystem
// with its NQN and I/O policy, its multipath head disks, and per controller
// its state, controller ID, address and the ANA group and state of each
// path. One line per subsystem and per controller path, key=value words.
func stepPaths(a *agent, args []string) error {
	subs, _ := filepath.Glob("/sys/class/nvme-subsystem/nvme-subsys*")
	if len(subs) == 0 {
		return errors.New("no NVMe subsystems in /sys/class/nvme-subsystem")
	}
	for _, s := range subs {
		var heads, ctrls []string
		ents, _ := os.ReadDir(s)
		for _, e := range ents {
			switch {
			case diskRE.MatchString(e.Name()):
				heads = append(heads, e.Name())
			case strings.HasPrefix(e.Name(), "nvme") && !strings.Contains(e.Name(), "-"):
				if _, err := os.Stat(filepath.Join(s, e.Name(), "cntlid")); err == nil {
					ctrls = append(ctrls, e.Name())
				}
			}
		}
		a.out("subsys=%s nqn=%s iopolicy=%s heads=%s controllers=%d", filepath.Base(s),
			readAttr(filepath.Join(s, "subsysnqn")), readAttr(filepath.Join(s, "iopolicy")), strings.Join(heads, ","), len(ctrls))
		for _, c := range ctrls {
			dir := filepath.Join("/sys/class/nvme", c)
			base := fmt.Sprintf("subsys=%s ctrl=%s state=%s cntlid=%s address=%s", filepath.Base(s), c,
				readAttr(filepath.Join(dir, "state")), readAttr(filepath.Join(dir, "cntlid")),
				strings.ReplaceAll(readAttr(filepath.Join(dir, "address")), ",", ";"))
			paths := pathDisks(c)
			if len(paths) == 0 {
				a.out("%s path=none", base)
			}
			for _, p := range paths {
				a.out("%s path=%s ana_grpid=%s ana_state=%s", base, p,
					readAttr(filepath.Join(dir, p, "ana_grpid")), readAttr(filepath.Join(dir, p, "ana_state")))
			}
		}
	}
	return nil
}

// ctrlsTo returns the controllers (nvmeN) whose transport address is
// addr:port.
func ctrlsTo(addr, port string) []string {
	ents, _ := os.ReadDir("/sys/class/nvme")
	var out []string
	for _, e := range ents {
		kv := map[string]string{}
		for _, f := range strings.Split(readAttr(filepath.Join("/sys/class/nvme", e.Name(), "address")), ",") {
			if k, v, ok := strings.Cut(strings.TrimSpace(f), "="); ok {
				kv[k] = v
			}
		}
		if kv["traddr"] == addr && kv["trsvcid"] == port {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// stepWaitPath waits until the controller to ADDR:PORT is in STATE: "gone"
// (no controller to it), "live" (one is live), or an ANA state (one whose
// paths are all in it, as "wait-ana"). It sets $PATHCTRL to the
// controller when there is one.
func stepWaitPath(a *agent, args []string) error {
	addr, port, want := args[0], args[1], args[2]
	start := time.Now()
	for {
		ctrls := ctrlsTo(addr, port)
		var seen []string
		done := want == "gone" && len(ctrls) == 0
		for _, c := range ctrls {
			st := readAttr(filepath.Join("/sys/class/nvme", c, "state"))
			paths := pathDisks(c)
			ana := make([]string, len(paths))
			all := len(paths) > 0
			for i, p := range paths {
				ana[i] = readAttr(filepath.Join("/sys/class/nvme", c, p, "ana_state"))
				all = all && ana[i] == want
			}
			seen = append(seen, fmt.Sprintf("%s state=%s ana=%v", c, st, ana))
			if (want == "live" && st == "live") || (want != "live" && want != "gone" && all) {
				a.vars["PATHCTRL"] = c
				done = true
			}
		}
		if done {
			a.out("%s:%s %s after %v: %v", addr, port, want, time.Since(start).Round(time.Millisecond), seen)
			return nil
		}
		if time.Since(start) > deviceWait {
			return fmt.Errorf("the path to %s:%s is not %s after %v: %v", addr, port, want, deviceWait, seen)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stepWait waits for the background program NAME to exit by itself and
// reports its output; it fails unless the program exited with status 0.
// The wait is bounded by the boot's own deadline.
func stepWait(a *agent, args []string) error {
	p, err := a.bgProc(args[0])
	if err != nil {
		return err
	}
	<-p.done
	a.out("%s", p.out.String())
	a.out("exit=%q", exitText(p.err))
	if p.err != nil {
		return fmt.Errorf("%s: %v", args[0], exitText(p.err))
	}
	return nil
}

// stepWriteFile writes the words of the step, joined by spaces, and a
// newline to PATH, making its directory (a host identity under /etc/nvme
// before a program reads it).
func stepWriteFile(a *agent, args []string) error {
	if err := os.MkdirAll(filepath.Dir(args[0]), 0o755); err != nil {
		return err
	}
	return os.WriteFile(args[0], []byte(strings.Join(args[1:], " ")+"\n"), 0o644)
}
