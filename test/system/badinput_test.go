package system

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
)

// TestBadConfig checks that `nexstor server --control` refuses bad
// configurations with an error naming the key and the fix, before writing
// anything (no effective configuration, no data dir).
func TestBadConfig(t *testing.T) {
	bin := testutil.BuildBinary(t, "nexstor")
	cases := []struct {
		name  string
		yaml  string
		flags []string
		want  []string
	}{
		{"unknown key", "nvmf_lisen: \":4420\"\n", nil, []string{"line 2", `unknown key "nvmf_lisen"`, `did you mean "nvmf"`}},
		{"invalid address", "grpc_listen: \"127.0.0.1:99999\"\n", nil, []string{"grpc_listen", "99999", "host:port"}},
		{"invalid address flag", "", []string{"--grpc", "no-port"}, []string{"grpc_listen", "no-port", "host:port"}},
		{"duplicate access points", "access_points: [\"127.0.0.1:10124\", \"127.0.0.1:10124\", \"127.0.0.1:10125\"]\n", nil,
			[]string{"access_points[1]", "duplicates", "list each access point once"}},
		{"even access points", "access_points: [\"127.0.0.1:10124\", \"127.0.0.1:10125\"]\n", nil,
			[]string{"access_points", "even number", "odd number"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "server.yaml")
			body := "name: bad\n" + tc.yaml + "data_dir: " + filepath.Join(dir, "data") + "\n"
			if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"server", "--control", "-o", cfg, "--runtime-dir", filepath.Join(dir, "run")}, tc.flags...)
			cmd := exec.Command(bin, args...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err == nil {
					t.Fatalf("accepted:\n%s", out.String())
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("still running:\n%s", out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("error does not mention %q:\n%s", w, out.String())
				}
			}
			for _, p := range []string{"run", "data"} {
				if _, err := os.Stat(filepath.Join(dir, p)); !os.IsNotExist(err) {
					t.Errorf("%s was created by a refused configuration (%v)", p, err)
				}
			}
		})
	}
}

// TestFormatTwice checks that formatting a formatted node without --force
// is refused with nothing changed, and that --force reformats it.
func TestFormatTwice(t *testing.T) {
	c := newCluster(t, clusterOptions{nodes: 1, accessPoints: 1})
	n := c.nodes[0]
	n.start()
	n.waitLog("waiting in maintenance mode", 20*time.Second)
	c.mustNexctl("storage", "format", "-l", n.grpc)
	m := c.waitMembers("joined", 30*time.Second, c.allState("joined"))
	sbPath := filepath.Join(n.dir, "data", "meta", "superblock.json")
	before, err := os.ReadFile(sbPath)
	if err != nil {
		t.Fatal(err)
	}
	out := c.wantFailure(c.certs, "admin", "storage", "format", "-l", n.grpc)
	if !strings.Contains(out, "already formatted") || !strings.Contains(out, "--force") {
		t.Fatalf("second format: %s", out)
	}
	after, err := os.ReadFile(sbPath)
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("superblock changed by a refused format (%v)", err)
	}
	if m2 := c.waitMembers("still joined", 10*time.Second, c.allState("joined")); m2[n.grpc].UUID != m[n.grpc].UUID {
		t.Fatalf("member changed: %+v -> %+v", m[n.grpc], m2[n.grpc])
	}
}

// TestForeignSystem checks that a node formatted for another system is
// refused when it joins: its server stops with an error naming both
// systems, and it never becomes a member.
func TestForeignSystem(t *testing.T) {
	o := clusterOptions{nodes: 2, accessPoints: 1}
	c := newCluster(t, o)
	stranger := c.nodes[1]
	c.writeConfig(stranger, "elsewhere", o)
	c.start()
	for _, n := range c.nodes {
		n.waitLog("waiting in maintenance mode", 20*time.Second)
	}
	c.mustNexctl("storage", "format", "-l", c.hosts())
	out := stranger.exited(30 * time.Second)
	if !strings.Contains(out, "refused") || !strings.Contains(out, "elsewhere") {
		t.Fatalf("the foreign node's server did not stop with a clear error:\n%s", out)
	}
	m := c.waitMembers("the system's own node joined", 30*time.Second, func(m map[string]member) bool {
		return m[c.nodes[0].grpc].State == "joined"
	})
	if _, ok := m[stranger.grpc]; ok || len(m) != 1 {
		t.Fatalf("members %v: the foreign node joined", m)
	}
}

// runBounded runs bin with args, as a script would, and returns its
// output and exit status; it fails the test when the command runs past
// bound.
func runBounded(t *testing.T, bound time.Duration, bin string, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	env := []string{"NEXSTOR_CERT_DIR=" + t.TempDir()}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "NEXSTOR_") {
			env = append(env, e)
		}
	}
	cmd.Env = env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %v still running after %v:\n%s%s", filepath.Base(bin), args, bound, out.String(), errOut.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// TestNexctlExitStatus checks what scripts rely on, with the real binary:
// 2 for a wrong command line, with a suggestion; 1 for a failed operation,
// and a management call to a dead access point fails within the dial
// timeout rather than at --timeout (a minute by default).
func TestNexctlExitStatus(t *testing.T) {
	bin := testutil.BuildBinary(t, "nexctl")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	for _, tc := range []struct {
		args   []string
		status int
		want   []string
	}{
		{[]string{"replica", "craete", "x"}, 2, []string{`unknown command "craete"`, "nexctl replica create", "Code: cli.usage"}},
		{[]string{"pool", "list", "--bogus"}, 2, []string{"unknown flag --bogus"}},
		{[]string{"replica", "create", "r0", "--pool", "p0", "--size", "lots"}, 2, []string{"lots"}},
		{[]string{"pool", "get"}, 2, []string{"accepts 1 arg(s)"}},
		{[]string{"system", "query", "-a", dead, "--insecure"}, 1, []string{"Code: mgmt.unreachable", dead}},
		{[]string{"--engine", dead, "--insecure", "pool", "list"}, 1, []string{"Code: engine.unreachable", dead}},
		{[]string{"--engine", "10.255.0.1", "pool", "list"}, 1, []string{"Code: cli.certs", "--cert-dir", "--insecure"}},
		{[]string{"version", "--client"}, 0, nil},
	} {
		out, errOut, status := runBounded(t, 10*time.Second, bin, tc.args...)
		if status != tc.status {
			t.Errorf("nexctl %v: exit status %d, want %d\n%s%s", tc.args, status, tc.status, out, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("nexctl %v: stderr does not name %q:\n%s", tc.args, w, errOut)
			}
		}
		if tc.status != 0 && (strings.Count(errOut, "Error: ") != 1 || strings.Count(errOut, "Resolution: ") != 1) {
			t.Errorf("nexctl %v: the error is not printed once:\n%s", tc.args, errOut)
		}
	}
}

// TestVersion checks that both binaries name the module version they were
// built as, and the commit when the build could record it.
func TestVersion(t *testing.T) {
	re := regexp.MustCompile(`^nexstor \S+ \((revision [0-9a-f]{40}, (modified, )?)?go1\.[0-9.]+\)\n$`)
	out, _, status := runBounded(t, time.Minute, testutil.BuildBinary(t, "nexstor"), "--version")
	if status != 0 || !re.MatchString(out) {
		t.Fatalf("nexstor --version: %d %q", status, out)
	}
	nout, _, status := runBounded(t, time.Minute, testutil.BuildBinary(t, "nexctl"), "version", "--client", "-o", "json")
	var v struct {
		Client string `json:"client"`
	}
	if status != 0 || json.Unmarshal([]byte(nout), &v) != nil || v.Client == "" ||
		!strings.Contains(out, " "+v.Client+" ") {
		t.Fatalf("nexctl version %q and nexstor --version %q disagree", nout, out)
	}
}
