package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestPlainText checks the one rule every command dials by: TLS unless
// asked otherwise, or unless there is no CA certificate and every address
// is on the loopback.
func TestPlainText(t *testing.T) {
	empty := t.TempDir()
	withCA := t.TempDir()
	if err := os.WriteFile(filepath.Join(withCA, "ca.crt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dir      string
		insecure bool
		addrs    []string
		want     bool
	}{
		{empty, false, []string{"127.0.0.1:10124"}, true},
		{empty, false, []string{"localhost:10124", "[::1]:10125", "127.0.0.2:1"}, true},
		{empty, false, []string{"127.0.0.1:10124", "node-1:10124"}, false},
		{empty, false, []string{"10.0.0.1:10124"}, false},
		{empty, false, nil, false},
		{withCA, false, []string{"127.0.0.1:10124"}, false},
		{withCA, true, []string{"node-1:10124"}, true},
		{empty, true, []string{"node-1:10124"}, true},
	} {
		tf := tlsFlags{certDir: c.dir, identity: "admin", insecure: c.insecure}
		if got := tf.plain(c.addrs); got != c.want {
			t.Errorf("cert dir with CA %v, --insecure %v, %v: plain %v, want %v", c.dir == withCA, c.insecure, c.addrs, got, c.want)
		}
	}
}

// TestEngineCommandsHaveTLSFlags checks that the engine commands take the
// same transport flags as system and storage.
func TestEngineCommandsHaveTLSFlags(t *testing.T) {
	a := &app{}
	root := a.rootCmd()
	for _, path := range [][]string{{"pool", "list"}, {"replica", "list"}, {"nexus", "list"}, {"system", "query"}, {"storage", "scan"},
		{"volume", "create"}, {"node", "list"}} {
		c, _, err := root.Find(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"cert-dir", "identity", "insecure"} {
			if c.Flags().Lookup(f) == nil && c.InheritedFlags().Lookup(f) == nil {
				t.Errorf("%v has no --%s", path, f)
			}
		}
	}
}
