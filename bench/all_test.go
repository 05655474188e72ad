package bench

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestAllRegeneratesSections runs bench/all.sh on a directory of two fake
// suites, one that reports a goal verdict and one that fails, and checks
// what it leaves in their results files and in the summary.
func TestAllRegeneratesSections(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is missing")
	}
	driver, err := filepath.Abs("all.sh")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), mode); err != nil {
			t.Fatal(err)
		}
	}
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	write("good.sh", `#!/usr/bin/env bash
echo "| workload | IOPS |"
echo "|---|---:|"
echo "| randwrite | 100 |"
echo
echo "- randwrite 1.20x the baseline (goal >= 1.00x): met"
echo
`)
	write("bad.sh", `#!/usr/bin/env bash
echo "| half a table |"
exit 3
`)
	goodBefore := "# Good\n\nHow it is measured.\n\n<!-- begin make bench: good -->\nan old report\n<!-- end make bench: good -->\n\nWhat it means.\n"
	badBefore := "# Bad\n\nMethod.\n\n<!-- begin make bench: bad -->\nthe last good report\n<!-- end make bench: bad -->\n\nAnalysis.\n"
	write("RESULTS-good.md", goodBefore)
	write("RESULTS-bad.md", badBefore)
	write("RESULTS.md", "# Results\n\nIntroduction.\n")

	cmd := exec.Command(bash, driver, "-d", dir, "-s", "good,bad")
	cmd.Env = append(os.Environ(), "BENCH_DIR=", "SUITES=")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("all.sh with a failing suite: err %v, want a non-zero exit status; output:\n%s", err, out)
	}

	good := read("RESULTS-good.md")
	if !strings.HasPrefix(good, "# Good\n\nHow it is measured.\n\n<!-- begin make bench: good -->\n") ||
		!strings.HasSuffix(good, "\n<!-- end make bench: good -->\n\nWhat it means.\n") {
		t.Errorf("the text around good's section changed:\n%s", good)
	}
	sec := between(t, good, "good")
	if strings.Contains(sec, "an old report") {
		t.Errorf("good's old section is still there:\n%s", sec)
	}
	for _, want := range []string{"| randwrite | 100 |", "(goal >= 1.00x): met", "command `bench/good.sh`", "load average ", "wall time "} {
		if !strings.Contains(sec, want) {
			t.Errorf("good's section lacks %q:\n%s", want, sec)
		}
	}
	if strings.HasSuffix(sec, "\n\n") {
		t.Errorf("good's section keeps the report's trailing blank lines:\n%q", sec)
	}

	if bad := read("RESULTS-bad.md"); bad != badBefore {
		t.Errorf("the failing suite's results file changed:\n%s", bad)
	}

	summary := read("RESULTS.md")
	if !strings.HasPrefix(summary, "# Results\n\nIntroduction.\n") {
		t.Errorf("RESULTS.md lost its text:\n%s", summary)
	}
	sum := between(t, summary, "summary")
	var goodRow, badRow string
	for _, l := range strings.Split(sum, "\n") {
		switch {
		case strings.HasPrefix(l, "| good |"):
			goodRow = l
		case strings.HasPrefix(l, "| bad |"):
			badRow = l
		}
	}
	if !strings.Contains(goodRow, "randwrite 1.20x the baseline (goal >= 1.00x): met") || !strings.HasSuffix(goodRow, "| ok |") {
		t.Errorf("summary row of good: %q", goodRow)
	}
	if !strings.Contains(badRow, "failed") {
		t.Errorf("summary row of bad: %q", badRow)
	}

	// A second run replaces the sections again instead of adding to them.
	cmd = exec.Command(bash, driver, "-d", dir, "-s", "good")
	cmd.Env = append(os.Environ(), "BENCH_DIR=", "SUITES=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("all.sh -s good: %v\n%s", err, out)
	}
	again := read("RESULTS-good.md")
	if n := strings.Count(again, "<!-- begin make bench: good -->"); n != 1 {
		t.Errorf("%d sections of good after a second run:\n%s", n, again)
	}
	if n := strings.Count(read("RESULTS.md"), "<!-- begin make bench: summary -->"); n != 1 {
		t.Errorf("%d summaries after a second run", n)
	}
}

// between returns the text between suite's markers in text.
func between(t *testing.T, text, suite string) string {
	t.Helper()
	_, rest, ok := strings.Cut(text, "<!-- begin make bench: "+suite+" -->\n")
	if !ok {
		t.Fatalf("no begin marker of %s in:\n%s", suite, text)
	}
	sec, _, ok := strings.Cut(rest, "<!-- end make bench: "+suite+" -->")
	if !ok {
		t.Fatalf("no end marker of %s in:\n%s", suite, text)
	}
	return sec
}
