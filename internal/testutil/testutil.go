// Package testutil holds helpers shared by the tests of several packages:
// finding real peer programs (which must exist under CI) and building the
// project's binaries once per test run.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// InCI reports whether the tests run under continuous integration, where a
// missing peer is a failure rather than a reason to skip.
func InCI() bool { return os.Getenv("CI") != "" }

// RequireTool returns the path of the named program. When it is missing the
// test is skipped on a workstation and fails under CI: `make test` installs
// every peer, so a missing one there is a broken setup, not a reason to pass.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
			if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil {
				return filepath.Join(dir, name)
			}
		}
		Missing(t, name+" (run `make test-deps` to install it)")
	}
	return p
}

// Missing skips the test, or fails it under CI, because what is described is
// not available.
func Missing(t testing.TB, what string) {
	t.Helper()
	if InCI() {
		t.Fatalf("required test peer missing under CI: %s", what)
	}
	t.Skipf("skipping: %s is not available", what)
}

// RepoRoot returns the root of the source tree (the directory with go.mod).
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	buildMu  sync.Mutex
	built    = map[string]string{}
	buildDir string
)

// BuildBinary builds ./cmd/<name> once per test process (with -race when the
// test binary has it) and returns the path of the executable.
func BuildBinary(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "nexstor-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, name)
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/"+name)
	cmd := exec.Command("go", args...)
	cmd.Dir = RepoRoot(t)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, b)
	}
	built[name] = out
	return out
}
