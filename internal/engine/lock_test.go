package engine

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/nexstor/nexstor/internal/fault"
)

// TestDataDirIsExclusive starts a second engine on the data dir of a running
// one: it is refused, naming the holder, and writes nothing; once the first
// closes, the data dir can be used again.
func TestDataDirIsExclusive(t *testing.T) {
	r := newRig(t)
	e := r.start(t, PoolConfig{Name: "p0", Disk: "malloc:///p0?size=64MiB"})
	if _, err := e.CreateReplica(context.Background(), CreateReplicaOptions{Name: "r0", Pool: "p0", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(r.dir, StateFileName)
	before, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	st0, _ := os.Stat(state)
	_, err = New(Config{DataDir: r.dir, Backend: r.be, Logger: quietLogger()})
	wantFault(t, err, fault.FailedPrecondition, r.dir, fmt.Sprintf("process %d", os.Getpid()), "--data-dir")
	after, _ := os.ReadFile(state)
	st1, _ := os.Stat(state)
	if !bytes.Equal(before, after) || !st0.ModTime().Equal(st1.ModTime()) {
		t.Fatal("the refused engine wrote the state file")
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e2 := r.start(t)
	defer e2.Close()
	if _, err := e2.Pool("p0"); err != nil {
		t.Fatalf("after the first engine closed: %v", err)
	}
}
