package sysmon

import (
	"os"
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

// TestQuietReexecs calls Quiet for real: the test binary is executed again
// in place with the setting, runs this test again, and there Quiet finds
// the setting and returns.
func TestQuietReexecs(t *testing.T) {
	if v := os.Getenv("GODEBUG"); strings.Contains(v, "schedtrace=") && !strings.Contains(v, Setting) {
		t.Skip("GODEBUG sets schedtrace: Quiet leaves it alone")
	}
	if err := Quiet(); err != nil {
		t.Fatal(err)
	}
	if v := os.Getenv("GODEBUG"); !strings.Contains(v, Setting) {
		t.Fatalf("after Quiet, GODEBUG is %q, want %s in it", v, Setting)
	}
}
