// Command guestagent runs inside the test virtual machine that package qemuvm
// boots. The initramfs /init starts it once the modules are loaded and the
// network is up; it executes the steps of a script, one per line, and reports
// each on the result port (a second serial line) with markers that the host
// parses:
//
//	@@nexstor STEP <n> <line>
//	@@nexstor OUT <n> <text>       zero or more per step
//	@@nexstor OK <n>
//	@@nexstor FAIL <n> <error>
//	@@nexstor DONE <ok> <failed>
//
// A step that fails stops the script, unless its line starts with "-" (the
// failure is then reported and the script goes on), which is how a test
// asserts that something is refused. $DEV and $CTRL in a line are replaced by
// the namespace block device and the controller (nvmeN) of the last connect,
// $NS<nsid> by the devices found by the last wait-namespaces.
//
// The agent is built statically (CGO_ENABLED=0) and uses only the Linux
// kernel interfaces: /dev/nvme-fabrics, the NVMe admin passthrough ioctl,
// sysfs, and the e2fsprogs (and, when the host has them, xfsprogs)
// binaries copied into the initramfs. The csi-* steps run the CSI node
// plugin's code (internal/csi) against the guest's kernel.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nexstor/nexstor/internal/csi"
)

// marker prefixes every result line; the host ignores all other output.
const marker = "@@nexstor"

type agent struct {
	res  io.Writer // result port
	echo io.Writer // console, for people reading the log
	step int
	vars map[string]string
	ctl  string // host control address for barriers, "" when none
	bg   map[string]*bgProc
	// node is the CSI node service of the csi-* steps, made on first use.
	node *csi.Node
}

func main() {
	script := flag.String("script", "/nexstor/script", "file with one step per line")
	resPath := flag.String("results", "/dev/ttyS1", "where the result markers go")
	ctlPath := flag.String("ctl", "/nexstor/ctl", "file holding the host control address")
	flag.Parse()

	res, err := os.OpenFile(*resPath, os.O_WRONLY, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "guestagent: open results %s: %v; using stdout\n", *resPath, err)
		res = os.Stdout
	}
	a := &agent{res: res, echo: os.Stdout, vars: map[string]string{}, bg: map[string]*bgProc{}}
	if b, err := os.ReadFile(*ctlPath); err == nil {
		a.ctl = strings.TrimSpace(string(b))
	}
	data, err := os.ReadFile(*script)
	if err != nil {
		a.emit("DONE", "0 1 cannot read script: "+err.Error())
		os.Exit(1)
	}
	ok, failed := a.run(strings.Split(string(data), "\n"))
	a.emit("DONE", fmt.Sprintf("%d %d", ok, failed))
	if failed > 0 {
		os.Exit(1)
	}
}

// run executes the lines and returns how many steps passed and failed.
func (a *agent) run(lines []string) (ok, failed int) {
	for _, line := range lines {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		a.step++
		a.emit("STEP", fmt.Sprintf("%d %s", a.step, line))
		tolerate := strings.HasPrefix(line, "-")
		args := strings.Fields(a.expand(strings.TrimPrefix(line, "-")))
		if err := a.exec(args); err != nil {
			failed++
			a.emit("FAIL", fmt.Sprintf("%d %s", a.step, oneLine(err.Error())))
			if !tolerate {
				return ok, failed
			}
			continue
		}
		ok++
		a.emit("OK", fmt.Sprintf("%d", a.step))
	}
	return ok, failed
}

func (a *agent) expand(line string) string {
	return os.Expand(line, func(k string) string {
		if v, ok := a.vars[k]; ok {
			return v
		}
		return "$" + k
	})
}

// out reports one line of output of the current step.
func (a *agent) out(format string, args ...any) {
	for _, l := range strings.Split(strings.TrimRight(fmt.Sprintf(format, args...), "\n"), "\n") {
		a.emit("OUT", fmt.Sprintf("%d %s", a.step, l))
	}
}

func (a *agent) emit(kind, text string) {
	line := marker + " " + kind + " " + text + "\n"
	// One write per line keeps a line whole on the serial port.
	io.WriteString(a.res, line)
	if a.echo != a.res {
		io.WriteString(a.echo, line)
	}
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", " | ") }

type stepFunc func(a *agent, args []string) error

// steps maps a step name to its implementation and its usage.
var steps = map[string]struct {
	fn    stepFunc
	usage string
	min   int
}{
	"discover":        {stepDiscover, "discover ADDR PORT HOSTNQN", 3},
	"connect":         {stepConnect, "connect ADDR PORT SUBNQN HOSTNQN [OPTION...] (OPTION: hdr_digest, data_digest, key=value)", 4},
	"disconnect":      {stepDisconnect, "disconnect CTRL (nvmeN)", 1},
	"wait-namespaces": {stepWaitNamespaces, "wait-namespaces CTRL COUNT (sets $NS<nsid>)", 2},
	"ctrl-state":      {stepCtrlState, "ctrl-state CTRL", 1},
	"wait-removed":    {stepWaitRemoved, "wait-removed CTRL", 1},
	"pattern-write":   {stepPatternWrite, "pattern-write DEV OFF LEN SEED", 4},
	"pattern-verify":  {stepPatternVerify, "pattern-verify DEV OFF LEN SEED", 4},
	"mkfs":            {stepMkfs, "mkfs DEV [mke2fs-arg...]", 1},
	"fsck":            {stepFsck, "fsck DEV", 1},
	"mount":           {stepMount, "mount DEV DIR [ro]", 2},
	"umount":          {stepUmount, "umount DIR", 1},
	"write-files":     {stepWriteFiles, "write-files DIR COUNT SIZE SEED", 4},
	"verify-files":    {stepVerifyFiles, "verify-files DIR COUNT SIZE SEED", 4},
	"sync":            {stepSync, "sync", 0},
	"drop-caches":     {stepDropCaches, "drop-caches", 0},
	"dial":            {stepDial, "dial ADDR PORT MESSAGE...", 3},
	"barrier":         {stepBarrier, "barrier NAME", 1},
	"run":             {stepRun, "run PROGRAM [ARG...]", 1},
	"sleep":           {stepSleep, "sleep DURATION", 1},
	"wait-size":       {stepWaitSize, "wait-size DEV BYTES (the block device's size, as the kernel sees it)", 2},
	"set":             {stepSet, "set VAR VALUE... (then $VAR)", 2},
	"start":           {stepStart, "start NAME PROGRAM [ARG...] (in the background)", 2},
	"running":         {stepRunning, "running NAME (fails when the program has exited)", 1},
	"stop":            {stepStop, "stop NAME (SIGINT, wait, report the output)", 1},
	"multipath":       {stepMultipath, "multipath (fails unless nvme_core's native multipath is on)", 0},
	"wait-ana":        {stepWaitANA, "wait-ana CTRL STATE (every path of CTRL in that ANA state)", 2},
	"paths":           {stepPaths, "paths (the subsystems, controllers and ANA states in sysfs)", 0},
	"wait-path":       {stepWaitPath, "wait-path ADDR PORT STATE (the controller to ADDR:PORT is live, gone, or its paths in that ANA state)", 3},
	"wait":            {stepWait, "wait NAME (until the background program exits by itself; fails unless with status 0)", 1},
	"write-file":      {stepWriteFile, "write-file PATH WORD... (the words and a newline; directories made)", 2},
}

func (a *agent) exec(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("empty step")
	}
	s, ok := steps[args[0]]
	if !ok {
		return fmt.Errorf("unknown step %q", args[0])
	}
	if len(args)-1 < s.min {
		return fmt.Errorf("usage: %s", s.usage)
	}
	return s.fn(a, args[1:])
}

// readLine reads one line from r, without its newline.
func readLine(r io.Reader) (string, error) {
	l, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && l == "" {
		return "", err
	}
	return strings.TrimRight(l, "\r\n"), nil
}
