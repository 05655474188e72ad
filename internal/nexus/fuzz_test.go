package nexus

import (
	"strings"
	"testing"
)

// FuzzParseChildURI: child URIs arrive over the engine API; parsing must
// never panic, and what it accepts must be well formed.
func FuzzParseChildURI(f *testing.F) {
	for _, s := range []string{"bdev:///5f2c", "nvmf://10.0.0.2:4420/nqn.2024-11.io.nexstor:replica:x", "nvmf://h/n", "bdev://h/x", "::", "nvmf://[::1]:4420/nqn.a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseChildURI(s)
		if err != nil {
			return
		}
		switch u.Scheme {
		case "bdev":
			if u.Name == "" || strings.Contains(u.Name, "/") || u.Addr != "" {
				t.Fatalf("%q parsed as %+v", s, u)
			}
		case "nvmf":
			if u.Name == "" || u.Addr == "" {
				t.Fatalf("%q parsed as %+v", s, u)
			}
		default:
			t.Fatalf("%q parsed with scheme %q", s, u.Scheme)
		}
	})
}
