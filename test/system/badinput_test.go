package system

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
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
