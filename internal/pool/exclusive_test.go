package pool

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fsutil"
)

// TestPoolDiskExclusive: while a pool is open its disk is held: opening it
// again to create (even with force) or import another pool on it fails
// naming this process, and nothing is written. Export releases it.
func TestPoolDiskExclusive(t *testing.T) {
	path := newFile(t, 8*mib)
	p := mustCreate(t, openFile(t, path), CreateOptions{Name: "held"})
	mustReplica(t, p, "r", mib, true)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, uri := range []string{path, "file://" + path, "aio://" + path} {
		dev, err := bdev.Open(uri)
		var held *fsutil.HeldError
		if err == nil {
			dev.Close()
		}
		if !errors.As(err, &held) || held.PID != os.Getpid() {
			t.Fatalf("open of %s while its pool is open: %v, want a HeldError naming this process", uri, err)
		}
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("the refused opens changed the disk")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	q := mustImport(t, openFile(t, path))
	defer q.Close()
	if q.Name() != "held" || len(q.Replicas()) != 1 {
		t.Fatalf("after export and import: %q %+v", q.Name(), q.Replicas())
	}
}
