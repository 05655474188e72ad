package version

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nexstor/nexstor/internal/testutil"
)

func TestString(t *testing.T) {
	i := Info{Version: "v0.3.0", Revision: "abc", Modified: true, Go: "go1.26.8"}
	if got := i.String(); got != "v0.3.0 (revision abc, modified, go1.26.8)" {
		t.Errorf("String() = %q", got)
	}
	if got := (Info{Version: "(devel)", Go: "go1"}).String(); got != "(devel) (go1)" {
		t.Errorf("String() = %q", got)
	}
	if g := Get(); g.Go != runtime.Version() || g.Version == "" {
		t.Errorf("Get() = %+v", g)
	}
}

// TestBinaryVersion builds a program that prints Get() from a checkout and
// checks that it names the module's pseudo-version and the checkout's
// commit, as `go build` records them.
func TestBinaryVersion(t *testing.T) {
	root := testutil.RepoRoot(t)
	head, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		testutil.Missing(t, "a git checkout of the repository")
	}
	// The go command stamps a binary only from a checkout whose .git is a
	// directory (not from a linked worktree or a submodule).
	if st, err := os.Stat(filepath.Join(root, ".git")); err != nil || !st.IsDir() {
		testutil.Missing(t, "a git checkout whose .git is a directory, where go build records the revision")
	}
	bin := filepath.Join(t.TempDir(), "v")
	build := exec.Command("go", "build", "-buildvcs=true", "-o", bin, "./internal/version/testdata/printversion")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	rev := strings.TrimSpace(string(head))
	if !strings.Contains(string(out), "revision "+rev) || !strings.HasPrefix(string(out), "v") {
		t.Fatalf("version %q does not name the module version and revision %s", out, rev)
	}
}
