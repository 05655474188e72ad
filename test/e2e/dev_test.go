package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"

	"github.com/nexstor/nexstor/internal/testutil"
)

// TestDevRestartKeepsNexus runs `nexstor dev` with a 3-way nexus on node 0
// (its own replica and one on each other node, over NVMe/TCP), stops it with
// SIGINT and starts it again: the nexus comes back online with all three
// children, no rebuild ran, and the data is the same. Stopping the nodes
// before the nexus closed would fail its closing flush and leave the remote
// children recorded out of date.
func TestDevRestartKeepsNexus(t *testing.T) {
	testutil.RequireTool(t, "nbdcopy")
	testutil.RequireTool(t, "qemu-img")
	dir := filepath.Join(t.TempDir(), "dev")
	base := testutil.FreePortRange(t, 16) // grpc, nbd, nvmf: 3 each; discovery: 1; etcd: 2
	args := []string{"dev", "--nodes", "3", "--data-dir", dir, "--pool-size", "256MiB", "--metrics-port", "-1",
		"--grpc-port", strconv.Itoa(base), "--nbd-port", strconv.Itoa(base + 3), "--nvmf-port", strconv.Itoa(base + 6),
		"--discovery-port", strconv.Itoa(base + 9), "--etcd-port", strconv.Itoa(base + 10)}
	engine := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", base+i) }
	readyRE := regexp.MustCompile(`^Press Ctrl-C to stop`)

	p, lines := start(t, args...)
	p.waitLine(lines, readyRE)
	var r0, r1, r2 replicaJSON
	nexctlJSON(t, engine(0), &r0, "replica", "create", "r0", "--pool", "p0", "--size", "16MiB", "--thin")
	nexctlJSON(t, engine(1), &r1, "replica", "create", "r1", "--pool", "p0", "--size", "16MiB", "--thin")
	nexctlJSON(t, engine(2), &r2, "replica", "create", "r2", "--pool", "p0", "--size", "16MiB", "--thin")
	nexctlJSON(t, engine(1), &r1, "replica", "share", "r1", "--protocol", "nvmf")
	nexctlJSON(t, engine(2), &r2, "replica", "share", "r2", "--protocol", "nvmf")
	var nx nexusJSON
	nexctlJSON(t, engine(0), &nx, "nexus", "create", "vol", "--child", "bdev:///"+r0.UUID,
		"--child", r1.Share.URI, "--child", r2.Share.URI)
	nexctlJSON(t, engine(0), &nx, "nexus", "publish", "vol", "--protocol", "nbd")
	if nx.State != "online" || len(nx.Children) != 3 || nx.Share == nil {
		t.Fatalf("nexus %+v", nx)
	}
	want := make([]byte, 4*mib)
	rand.Read(want)
	writeFlushed(t, nx.Share.URI, want)
	if err := p.stop(syscall.SIGINT); err != nil {
		t.Fatalf("dev stop: %v\n%s", err, p.output())
	}

	p, lines = start(t, args...)
	// The banner lists the nexus as it came back.
	banner := regexp.MustCompile(`^\s+vol on (\S+)\s+(\S+)\s+(\d+)/(\d+) children online`)
	m := p.waitLine(lines, banner)
	if m[1] != engine(0) || m[2] != "online" || m[3] != "3" || m[4] != "3" {
		t.Fatalf("banner line %q, want vol online 3/3 on %s", m[0], engine(0))
	}
	p.waitLine(lines, readyRE)
	nexctlJSON(t, engine(0), &nx, "nexus", "get", "vol")
	if nx.State != "online" || len(nx.Children) != 3 {
		t.Fatalf("nexus after the restart: %+v", nx)
	}
	for _, c := range nx.Children {
		if c.State != "online" {
			t.Fatalf("child %s is %s (%s) after a clean restart: %+v", c.URI, c.State, c.Reason, nx)
		}
	}
	var rebuilds []map[string]any
	nexctlJSON(t, engine(0), &rebuilds, "nexus", "rebuild", "status", "vol")
	if len(rebuilds) != 0 {
		t.Fatalf("a rebuild ran after a clean restart: %v", rebuilds)
	}
	if nx.Share == nil {
		t.Fatalf("the publication did not come back: %+v", nx)
	}
	if got := readHead(t, nx.Share.URI, 4*mib); !bytes.Equal(got, want) {
		t.Fatal("data written before the restart differs")
	}
	if err := p.stop(syscall.SIGINT); err != nil {
		t.Fatalf("dev stop: %v\n%s", err, p.output())
	}
}
