// Package e2e runs the real nexstor and nexctl binaries against each other
// and against real NBD clients.
package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
)

// proc is a running nexstor process whose output is captured.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer // stdout and stderr, interleaved
	done chan struct{}
	err  error
}

// lineWriter captures output and lets a waiter see each line.
type lineWriter struct {
	p     *proc
	lines chan string
	buf   []byte
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	w.p.out.Write(b)
	w.p.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		select {
		case w.lines <- line:
		default: // nobody is waiting for more lines
		}
	}
	return len(b), nil
}

// start runs nexstor with args; the process is killed when the test ends.
func start(t *testing.T, args ...string) (*proc, chan string) {
	t.Helper()
	bin := testutil.BuildBinary(t, "nexstor")
	p := &proc{t: t, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	lines := make(chan string, 1024)
	w := &lineWriter{p: p, lines: lines}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("nexstor %v output:\n%s", args, p.output())
		}
	})
	return p, lines
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitLine waits for a line matching re and returns its submatches. The
// limit only bounds a hung process; it is not a performance assertion.
func (p *proc) waitLine(lines chan string, re *regexp.Regexp) []string {
	p.t.Helper()
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l := <-lines:
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-p.done:
			p.t.Fatalf("nexstor exited (%v) before printing %q:\n%s", p.err, re, p.output())
		case <-timeout:
			p.t.Fatalf("nexstor did not print %q:\n%s", re, p.output())
		}
	}
}

var servingRE = regexp.MustCompile(`msg="engine serving" grpc=(\S+) nbd=(\S+)`)

// startServer starts `nexstor server` on loopback with free ports and
// returns it with its gRPC address.
func startServer(t *testing.T, dataDir string) (*proc, string) {
	t.Helper()
	p, lines := start(t, "server", "--insecure", "--data-dir", dataDir, "--grpc", "127.0.0.1:0", "--nbd", "127.0.0.1:0",
		"--nvmf", "127.0.0.1:0", "--discovery", "", "--metrics", "")
	m := p.waitLine(lines, servingRE)
	return p, m[1]
}

// stop sends sig and waits for the process to exit.
func (p *proc) stop(sig syscall.Signal) error {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		p.t.Fatalf("nexstor did not exit after %v:\n%s", sig, p.output())
	}
	return p.err
}

// nexctl runs the nexctl binary against engine and returns stdout, stderr
// and the exit error.
func nexctl(t *testing.T, engine string, args ...string) (string, string, error) {
	t.Helper()
	bin := testutil.BuildBinary(t, "nexctl")
	cmd := exec.Command(bin, append([]string{"--engine", engine}, args...)...)
	// The standalone servers of these tests run without TLS.
	cmd.Env = append(os.Environ(), "NEXSTOR_INSECURE=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// plainNexctl runs nexctl with no transport flags and no certificates (an
// empty NEXSTOR_CERT_DIR), as a user of `nexstor dev` would, and returns its
// stdout; it fails the test when nexctl fails.
func plainNexctl(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(testutil.BuildBinary(t, "nexctl"), args...)
	env := []string{"NEXSTOR_CERT_DIR=" + t.TempDir()}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "NEXSTOR_") {
			env = append(env, e)
		}
	}
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nexctl %v: %v\n%s%s", args, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// mustNexctl runs nexctl and fails the test when it fails.
func mustNexctl(t *testing.T, engine string, args ...string) string {
	t.Helper()
	out, errOut, err := nexctl(t, engine, args...)
	if err != nil {
		t.Fatalf("nexctl %v: %v\n%s%s", args, err, out, errOut)
	}
	return out
}

// nexctlJSON runs nexctl with -o json and decodes its output into v.
func nexctlJSON(t *testing.T, engine string, v any, args ...string) {
	t.Helper()
	out := mustNexctl(t, engine, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("nexctl %v: decode %v:\n%s", args, err, out)
	}
}

// wantNexctlError runs nexctl, expects it to fail, and checks that stderr
// carries an error and a resolution naming every given thing.
func wantNexctlError(t *testing.T, engine string, names []string, args ...string) string {
	t.Helper()
	out, errOut, err := nexctl(t, engine, args...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("nexctl %v: want a failure, got %v\n%s%s", args, err, out, errOut)
	}
	if !strings.HasPrefix(errOut, "Error: ") || !strings.Contains(errOut, "\nResolution: ") {
		t.Errorf("nexctl %v: stderr lacks the error or the resolution:\n%s", args, errOut)
	}
	for _, n := range names {
		if !strings.Contains(errOut, n) {
			t.Errorf("nexctl %v: stderr does not name %q:\n%s", args, n, errOut)
		}
	}
	return errOut
}

type replicaJSON struct {
	Name      string `json:"name"`
	UUID      string `json:"uuid"`
	Pool      string `json:"pool"`
	Size      int64  `json:"size"`
	Thin      bool   `json:"thin"`
	Allocated int64  `json:"allocated"`
	State     string `json:"state"`
	Share     *struct {
		Protocol string `json:"protocol"`
		URI      string `json:"uri"`
	} `json:"share"`
	Shares []struct {
		Protocol string `json:"protocol"`
		URI      string `json:"uri"`
	} `json:"shares"`
}

type poolJSON struct {
	Name      string `json:"name"`
	UUID      string `json:"uuid"`
	State     string `json:"state"`
	Capacity  int64  `json:"capacity"`
	Allocated int64  `json:"allocated"`
	Committed int64  `json:"committed"`
	Replicas  int    `json:"replicas"`
}

// readHead reads the first n bytes (a multiple of 1MiB) of the export at
// uri with qemu-img dd, so that large exports need not be read whole.
func readHead(t *testing.T, uri string, n int64) []byte {
	t.Helper()
	qemuImg := testutil.RequireTool(t, "qemu-img")
	out := filepath.Join(t.TempDir(), "head.img")
	cmd := exec.Command(qemuImg, "dd", "-f", "raw", "-O", "raw", "if="+uri, "of="+out,
		"bs=1M", "count="+strconv.FormatInt(n>>20, 10))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img dd if=%s: %v\n%s", uri, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != n {
		t.Fatalf("qemu-img dd read %d bytes of %s, want %d", len(b), uri, n)
	}
	return b
}

// writeFlushed writes data at the start of the export at uri with nbdcopy
// and flushes it.
func writeFlushed(t *testing.T, uri string, data []byte) {
	t.Helper()
	nbdcopy := testutil.RequireTool(t, "nbdcopy")
	src := filepath.Join(t.TempDir(), "src.img")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(nbdcopy, "--flush", src, uri).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy --flush %s %s: %v\n%s", src, uri, err, b)
	}
}
