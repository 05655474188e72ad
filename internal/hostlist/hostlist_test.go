package hostlist

import (
	"encoding/json"
	"errors"
	"reflect"
	"sort"
	"strings"
	"testing"
)

func TestExpand(t *testing.T) {
	cases := []struct {
		in   string
		port int
		want []string
	}{
		{"node-[1-3]:10124", 0, []string{"node-1:10124", "node-2:10124", "node-3:10124"}},
		{"10.0.0.[1-4,7]", 0, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.7"}},
		{"a,b c\tnode-[2,1]", 0, []string{"a", "b", "c", "node-2", "node-1"}},
		{"node-[08-10]", 0, []string{"node-08", "node-09", "node-10"}},
		{"rack[1-2]-n[1-2]", 0, []string{"rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"}},
		{"node-1,node-1,node-[1-2]", 0, []string{"node-1", "node-2"}},
		{"node-[1-2],h:9", 10124, []string{"node-1:10124", "node-2:10124", "h:9"}},
		{"[::1]:10124,[fe80::1]", 7, []string{"[::1]:10124", "[fe80::1]:7"}},
		{"host_a.example.com", 0, []string{"host_a.example.com"}},
	}
	for _, tc := range cases {
		got, err := Expand(tc.in, tc.port)
		if err != nil {
			t.Errorf("Expand(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Expand(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestExpandErrors(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", "empty"},
		{"node-[1-3", "'[' without ']'"},
		{"node-1-3]", "']' without '['"},
		{"node-[[1]]", "nested"},
		{"node-[3-1]", "runs backwards; write 1-3"},
		{"node-[]", "empty '[]'"},
		{"node-[1-]", "not a number or a range"},
		{"node-[1-100000]", "more than 65536 hosts"},
		{"a[1-300]b[1-300]", "more than 65536 hosts"},
		{"node-1:99999", "not between 1 and 65535"},
		{"node-1:", "empty port"},
		{"node/1", "not allowed in a host name"},
		{":10124", "no host name"},
		{"[zz]:1", "not a bracketed IPv6"},
	}
	for _, tc := range cases {
		_, err := Expand(tc.in, 0)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrSyntax) {
			t.Errorf("Expand(%q) = %v, want error containing %q", tc.in, err, tc.want)
		}
	}
}

func TestCollapse(t *testing.T) {
	cases := []struct{ in, want string }{
		{"node-3:10124,node-1:10124,node-2:10124,node-5:10124", "node-[1-3,5]:10124"},
		{"10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.7", "10.0.0.[1-4,7]"},
		{"node-1,node-10,node-2", "node-[1-2,10]"},
		{"node-08,node-09,node-10", "node-[08-10]"},
		{"node-1", "node-1"},
		{"b,a,node-2:1,node-2:2", "a,b,node-2:1,node-2:2"},
		{"n1:10124,n2:10124,n3:9000", "n[1-2]:10124,n3:9000"},
		{"rack1-n1,rack2-n1,rack1-n2", "rack1-n[1-2],rack2-n1"},
		{"[::1]:1,x", "[::1]:1,x"},
	}
	for _, tc := range cases {
		hs, err := NewHostSet(tc.in)
		if err != nil {
			t.Fatalf("NewHostSet(%q): %v", tc.in, err)
		}
		if got := hs.String(); got != tc.want {
			t.Errorf("collapse(%q) = %q, want %q", tc.in, got, tc.want)
		}
		back, err := Expand(hs.String(), 0)
		if err != nil {
			t.Fatalf("Expand(%q): %v", hs.String(), err)
		}
		sort.Slice(back, func(i, j int) bool { return naturalLess(back[i], back[j]) })
		if !reflect.DeepEqual(back, hs.Slice()) {
			t.Errorf("Expand(String()) = %v, want %v", back, hs.Slice())
		}
	}
}

func TestHostSetOps(t *testing.T) {
	var hs HostSet
	if hs.String() != "" || hs.Len() != 0 {
		t.Fatal("zero HostSet not empty")
	}
	hs.Insert("n-2", "n-1", "n-10")
	if !hs.Contains("n-10") || hs.Contains("n-3") {
		t.Fatal("Contains")
	}
	if got := hs.Slice(); !reflect.DeepEqual(got, []string{"n-1", "n-2", "n-10"}) {
		t.Fatalf("Slice = %v", got)
	}
	hs.Delete("n-2")
	b, _ := json.Marshal(&hs)
	if string(b) != `"n-[1,10]"` {
		t.Fatalf("json %s", b)
	}
	var back HostSet
	if err := json.Unmarshal(b, &back); err != nil || back.String() != hs.String() {
		t.Fatalf("unmarshal: %v %q", err, back.String())
	}
}

func TestHostGroups(t *testing.T) {
	g := HostGroups{}
	for _, h := range []string{"node-1", "node-2", "node-3", "node-5"} {
		g.Add("ok", h)
	}
	g.Add("error: disk full", "node-4")
	g.Add("error: disk full", "node-6")
	want := []Row{{"node-[1-3,5]", "ok"}, {"node-[4,6]", "error: disk full"}}
	if got := g.Rows(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Rows = %v, want %v", got, want)
	}
}

func TestRanks(t *testing.T) {
	cases := []struct {
		in, want string
		n        int
	}{
		{"0-2,5", "0-2,5", 4},
		{"[5, 0-2]", "0-2,5", 4},
		{"3,2,1,0", "0-3", 4},
		{"0-10,5-20,22", "0-20,22", 22},
		{"", "", 0},
		{"0-4294967294", "0-4294967294", 4294967295},
	}
	for _, tc := range cases {
		rs, err := ParseRanks(tc.in)
		if err != nil {
			t.Fatalf("ParseRanks(%q): %v", tc.in, err)
		}
		if rs.String() != tc.want || rs.Len() != tc.n {
			t.Errorf("ParseRanks(%q) = %q (%d), want %q (%d)", tc.in, rs.String(), rs.Len(), tc.want, tc.n)
		}
	}
	for _, bad := range []string{"a", "1-", "3-1", "-1", "4294967295", "1,,2"} {
		if _, err := ParseRanks(bad); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseRanks(%q) = %v, want syntax error", bad, err)
		}
	}
	rs := NewRankSet(7, 1, 2, 3)
	if !rs.Contains(2) || rs.Contains(4) || !rs.Contains(7) || rs.Contains(0) {
		t.Fatal("Contains")
	}
	if got := rs.Ranks(); !reflect.DeepEqual(got, []uint32{1, 2, 3, 7}) {
		t.Fatalf("Ranks = %v", got)
	}
	if rs.RangedString() != "[1-3,7]" {
		t.Fatal(rs.RangedString())
	}
	b, _ := json.Marshal(rs)
	var back RankSet
	if err := json.Unmarshal(b, &back); err != nil || back.String() != "1-3,7" {
		t.Fatalf("json round trip: %s %v %q", b, err, back.String())
	}
}

func TestRankGroups(t *testing.T) {
	g := RankGroups{}
	for r, st := range []string{"joined", "joined", "stopped", "joined", "stopped"} {
		g.Add(st, uint32(r))
	}
	want := []RankRow{{"0-1,3", "joined"}, {"2,4", "stopped"}}
	if got := g.Rows(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Rows = %v, want %v", got, want)
	}
}
