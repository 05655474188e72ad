package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
)

// Every runnable command documents itself with a short line and examples.
func TestHelpHasExamples(t *testing.T) {
	a := &app{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Short == "" && c.HasParent() {
			t.Errorf("%q has no short help", c.CommandPath())
		}
		if c.Runnable() && !isGroup(c) && c.Example == "" && c.Name() != "help" && c.Name() != "completion" {
			t.Errorf("%q has no examples", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(a.rootCmd())
}

// The JSON field names are an interface for scripts: they must not drift.
func TestStableJSON(t *testing.T) {
	r := newReplicaView(&enginev1.Replica{Name: "r0", Uuid: "u", Pool: "p0", Size: 1 << 30, Thin: true,
		Allocated: 4 << 20, State: enginev1.ReplicaState_REPLICA_STATE_ONLINE,
		Share: &enginev1.Share{Protocol: "nbd", Uri: "nbd://h:1/r0"}})
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"name":"r0","uuid":"u","pool":"p0","size":1073741824,"thin":true,"allocated":4194304,"state":"online","share":{"protocol":"nbd","uri":"nbd://h:1/r0"},"shares":[{"protocol":"nbd","uri":"nbd://h:1/r0"}]}`
	if string(b) != want {
		t.Fatalf("replica JSON\n%s\nwant\n%s", b, want)
	}
	p := newPoolView(&enginev1.Pool{Name: "p0", State: enginev1.PoolState_POOL_STATE_FAULTED, Reason: "gone"})
	b, _ = json.Marshal(p)
	if !strings.Contains(string(b), `"state":"faulted","reason":"gone"`) {
		t.Fatalf("pool JSON %s", b)
	}
}

func TestBadFlagsFailBeforeDialing(t *testing.T) {
	for _, args := range [][]string{
		{"replica", "create", "r0", "--pool", "p0", "--size", "lots"},
		{"pool", "list", "-o", "xml"},
		{"replica", "create", "r0", "--size", "1GiB"},
	} {
		a := &app{out: &bytes.Buffer{}}
		root := a.rootCmd()
		root.SetArgs(append(args, "--engine", "127.0.0.1:1"))
		root.SetErr(&bytes.Buffer{})
		err := root.Execute()
		if err == nil || a.eng != nil {
			t.Errorf("%v: err %v, dialed %v", args, err, a.eng != nil)
		}
	}
}
