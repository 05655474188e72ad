package hostlist

import (
	"reflect"
	"sort"
	"testing"
)

// FuzzHostList checks that parsing never panics and that collapsing is the
// inverse of expanding: Expand(String(set)) is the set again.
func FuzzHostList(f *testing.F) {
	for _, s := range []string{"node-[1-3]:10124", "10.0.0.[1-4,7]", "a,b c", "node-[08-10]",
		"rack[1-2]-n[1-2]", "[::1]:10124", "node-[3-1]", "x[", "n-00,n-0,n-000", "h1:1,h1:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		hosts, err := Expand(list, 0)
		if err != nil {
			return
		}
		if len(hosts) > MaxHosts {
			t.Fatalf("%d hosts exceed MaxHosts", len(hosts))
		}
		var hs HostSet
		hs.Insert(hosts...)
		out := hs.String()
		back, err := Expand(out, 0)
		if err != nil {
			t.Fatalf("Expand(%q) of collapsed %q: %v", out, list, err)
		}
		sort.Slice(back, func(i, j int) bool { return naturalLess(back[i], back[j]) })
		if want := hs.Slice(); !reflect.DeepEqual(back, want) {
			t.Fatalf("%q collapsed to %q expands to %v, want %v", list, out, back, want)
		}
	})
}

// FuzzRanks checks that rank lists round-trip through String.
func FuzzRanks(f *testing.F) {
	for _, s := range []string{"0-2,5", "[1]", "", "4294967294", "1-,2", "5,4,3-9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := ParseRanks(s)
		if err != nil {
			return
		}
		back, err := ParseRanks(rs.String())
		if err != nil || back.String() != rs.String() || back.Len() != rs.Len() {
			t.Fatalf("%q -> %q -> %v %q", s, rs.String(), err, back)
		}
	})
}
