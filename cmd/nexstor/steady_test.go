package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/sysmon"
	"github.com/nexstor/nexstor/internal/testutil"
)

// TestSteadyMonitorFlag runs `nexstor server` with and without
// --steady-monitor and reads the environment of the running process once
// it logs (it re-executes itself, if at all, before it logs anything):
// GODEBUG holds sysmon.Setting only with the flag, and an idle server
// without it keeps the runtime's default.
func TestSteadyMonitorFlag(t *testing.T) {
	if _, err := os.Stat("/proc/self/environ"); err != nil {
		t.Skip("needs /proc")
	}
	bin := testutil.BuildBinary(t, "nexstor")
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
			if steady {
				args = append(args, "--steady-monitor")
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
			defer func() {
				cmd.Process.Kill()
				cmd.Wait()
			}()
			// The insecure warning is the first line either way.
			logged := make(chan string, 1)
			go func() {
				sc := bufio.NewScanner(stderr)
				if sc.Scan() {
					logged <- sc.Text()
				}
				close(logged)
				for sc.Scan() {
				}
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
