package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
)

type snapshotJSON struct {
	UUID        string `json:"uuid"`
	Name        string `json:"name"`
	Pool        string `json:"pool"`
	ReplicaUUID string `json:"replica_uuid"`
	ReplicaName string `json:"replica_name"`
	Created     string `json:"created"`
	Size        int64  `json:"size"`
	Referenced  int64  `json:"referenced"`
	Exclusive   int64  `json:"exclusive"`
}

// TestSnapshotCloneUnderLoad drives `nexctl snapshot` against `nexstor
// server`: it fills a thin replica over NBD, snapshots it, puts a random
// write load on the replica with fio, and meanwhile runs fio with crc32c
// verification on a clone of the snapshot exported over NBD, and compares
// a second clone with the data flushed before the snapshot using qemu-img
// (its own NBD client). Then it deletes the snapshot before its clones.
// About 16 s.
func TestSnapshotCloneUnderLoad(t *testing.T) {
	for _, tool := range []string{"nbdcopy", "qemu-img", "fio"} {
		testutil.RequireTool(t, tool)
	}
	dir := t.TempDir()
	srv, eng := startServer(t, filepath.Join(dir, "data"))
	defer srv.stop(9)
	mustNexctl(t, eng, "pool", "create", "p0", "file://"+filepath.Join(dir, "d0.img")+"?size=512MiB", "--cluster-size", "1MiB")
	var rep replicaJSON
	nexctlJSON(t, eng, &rep, "replica", "create", "r0", "--pool", "p0", "--size", "64MiB", "--thin")
	uri := strings.TrimSpace(mustNexctl(t, eng, "replica", "share", "r0", "--protocol", "nbd"))
	src := testutil.NBDCopyRoundTrip(t, uri, 32*mib)

	var snap snapshotJSON
	nexctlJSON(t, eng, &snap, "snapshot", "create", "s0", "--replica", "r0", "--created", "2026-01-02T03:04:05Z")
	if snap.ReplicaUUID != rep.UUID || snap.Size != replicaSize || snap.Referenced != 32*mib || snap.Created != "2026-01-02T03:04:05Z" {
		t.Fatalf("snapshot %+v", snap)
	}
	// A random write load on the replica: every write to a cluster it
	// shares with the snapshot copies it first.
	load := exec.Command(testutil.RequireTool(t, "fio"), "--name=load", "--ioengine=nbd", "--uri="+uri,
		"--rw=randwrite", "--bs=16k", "--iodepth=8", "--size=64M",
		"--time_based", "--runtime=300", "--randrepeat=0", "--verify_state_save=0")
	load.Dir = t.TempDir()
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan error, 1)
	go func() { loadDone <- load.Wait() }()
	defer func() { load.Process.Kill(); <-loadDone }()
	for snap.Exclusive == 0 {
		select {
		case err := <-loadDone:
			loadDone <- err
			t.Fatalf("fio load ended: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		nexctlJSON(t, eng, &snap, "snapshot", "get", "s0")
	}

	var c0, c1 replicaJSON
	nexctlJSON(t, eng, &c0, "snapshot", "clone", "s0", "c0")
	curi := strings.TrimSpace(mustNexctl(t, eng, "replica", "share", "c0", "--protocol", "nbd"))
	testutil.FioVerify(t, curi, 8*mib)

	nexctlJSON(t, eng, &c1, "snapshot", "clone", snap.UUID, "c1")
	c1uri := strings.TrimSpace(mustNexctl(t, eng, "replica", "share", "c1", "--protocol", "nbd"))
	if err := testutil.QemuImgCompare(t, c1uri, padded(t, src, replicaSize)); err != nil {
		t.Fatalf("a clone made under load differs from the data flushed before the snapshot: %v", err)
	}
	load.Process.Kill()
	<-loadDone
	loadDone <- nil

	// The snapshot goes first; its clones keep their content.
	mustNexctl(t, eng, "snapshot", "delete", "s0")
	wantNexctlError(t, eng, []string{"s0"}, "snapshot", "get", "s0")
	if err := testutil.QemuImgCompare(t, c1uri, padded(t, src, replicaSize)); err != nil {
		t.Fatalf("clone changed when its snapshot was deleted: %v", err)
	}
	testutil.FioVerify(t, curi, 4*mib)
	for _, r := range []string{"c0", "c1", "r0"} {
		mustNexctl(t, eng, "replica", "unshare", r)
		mustNexctl(t, eng, "replica", "destroy", r)
	}
	var pool poolJSON
	nexctlJSON(t, eng, &pool, "pool", "get", "p0")
	if pool.Allocated != 0 {
		t.Fatalf("pool allocates %d bytes after everything was deleted", pool.Allocated)
	}
}

// padded returns the path of a copy of file extended with zeroes to size
// bytes (a thin replica reads zeroes beyond what was written).
func padded(t *testing.T, file string, size int64) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, bytes.Repeat([]byte{0}, int(size)-len(data))...)
	out := filepath.Join(t.TempDir(), "padded.img")
	if err := os.WriteFile(out, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}
