package sysmon

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestWithSetting(t *testing.T) {
	cases := []struct {
		in   []string
		want []string // nil: left alone
	}{
		{[]string{"PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=" + Setting}},
		{[]string{"GODEBUG=", "A=b"}, []string{"GODEBUG=" + Setting, "A=b"}},
		{[]string{"GODEBUG=madvdontneed=1"}, []string{"GODEBUG=madvdontneed=1," + Setting}},
		{[]string{"GODEBUG=schedtrace=0"}, nil},
		{[]string{"GODEBUG=gctrace=1, schedtrace=1000"}, nil},
		// A variable that merely ends in GODEBUG is not GODEBUG.
		{[]string{"XGODEBUG=schedtrace=0"}, []string{"XGODEBUG=schedtrace=0", "GODEBUG=" + Setting}},
	}
	for _, c := range cases {
		got, ok := withSetting(c.in)
		if c.want == nil {
			if ok || !slices.Equal(got, c.in) {
				t.Errorf("%q: changed to %q, want it left alone", c.in, got)
			}
			continue
		}
		if !ok || !slices.Equal(got, c.want) {
			t.Errorf("%q: got %q (%v), want %q", c.in, got, ok, c.want)
		}
	}
}

// TestQuietReexecs calls Quiet for real, in a child process (this test
// binary, running only this test): Quiet executes the child again in place
// with the setting, where Quiet finds it and returns, and the child prints
// what its GODEBUG is then.
func TestQuietReexecs(t *testing.T) {
	if os.Getenv("SYSMON_TEST_CHILD") == "1" {
		if err := Quiet(); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("child pid %d GODEBUG=%s\n", os.Getpid(), os.Getenv("GODEBUG"))
		return
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestQuietReexecs$", "-test.v", "-test.count=1")
	cmd.Env = append(env, "SYSMON_TEST_CHILD=1", "GODEBUG=madvdontneed=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	want := "GODEBUG=madvdontneed=1," + Setting + "\n"
	if !strings.Contains(string(out), want) {
		t.Fatalf("child printed:\n%s\nwant a line ending in %q", out, want)
	}
	// One process, executed twice: its test ran twice, the second time
	// with the setting.
	if n := strings.Count(string(out), "=== RUN   TestQuietReexecs"); n != 2 {
		t.Fatalf("the child ran the test %d times, want 2 (once before the exec, once after):\n%s", n, out)
	}
	if n := strings.Count(string(out), "child pid "); n != 1 {
		t.Fatalf("the child printed %d lines, want 1:\n%s", n, out)
	}
}
