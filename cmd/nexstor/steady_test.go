package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/sysmon"
	"github.com/nexstor/nexstor/internal/testutil"
)

// TestSteadyMonitorFlag runs `nexstor server` as it starts by default and
// with --steady-monitor=false, and reads the environment of the running
// process once it logs (it re-executes itself, if at all, before it logs
// anything): GODEBUG holds sysmon.Setting by default and nothing with the
// flag off, which keeps the runtime's default.
func TestSteadyMonitorFlag(t *testing.T) {
	if _, err := os.Stat("/proc/self/environ"); err != nil {
		t.Skip("needs /proc")
	}
	// Built here rather than with testutil.BuildBinary, whose directory
	// outlives the test: this runs in every `go test ./...`.
	bin := filepath.Join(t.TempDir(), "nexstor")
	build := exec.Command("go", "build", "-o", bin, "./cmd/nexstor")
	build.Dir = testutil.RepoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/nexstor: %v\n%s", err, out)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	for _, steady := range []bool{false, true} {
		t.Run("steady="+strconv.FormatBool(steady), func(t *testing.T) {
			args := []string{"server", "--insecure", "--data-dir", t.TempDir(), "--grpc", "127.0.0.1:0",
				"--nbd", "", "--nvmf", "", "--discovery", "", "--metrics", "", "--log-level", "warn"}
			if !steady {
				args = append(args, "--steady-monitor=false")
			}
			cmd := exec.Command(bin, args...)
			cmd.Env = env
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// The insecure warning is the first line either way.
			logged := make(chan string, 1)
			drained := make(chan struct{})
			go func() {
				defer close(drained)
				sc := bufio.NewScanner(stderr)
				if sc.Scan() {
					logged <- sc.Text()
				}
				close(logged)
				for sc.Scan() {
				}
			}()
			defer func() {
				cmd.Process.Kill()
				<-drained // the pipe is read to its end before Wait closes it
				cmd.Wait()
			}()
			select {
			case line, ok := <-logged:
				if !ok {
					t.Fatal("the server exited without logging")
				}
				t.Logf("first line: %s", line)
			case <-time.After(30 * time.Second):
				t.Fatal("the server logged nothing in 30 s")
			}
			raw, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/environ")
			if err != nil {
				t.Fatal(err)
			}
			// An exited process (a zombie until Wait) shows an empty
			// environment: that would prove nothing.
			if len(raw) == 0 {
				t.Fatal("the server's environment reads empty: it has exited")
			}
			var godebug string
			for _, kv := range bytes.Split(raw, []byte{0}) {
				if v, ok := strings.CutPrefix(string(kv), "GODEBUG="); ok {
					godebug = v
				}
			}
			want := ""
			if steady {
				want = sysmon.Setting
			}
			if godebug != want {
				t.Fatalf("GODEBUG of the running server %q, want %q", godebug, want)
			}
		})
	}
}
