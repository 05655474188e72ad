package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/testutil"
)

type nexusJSON struct {
	Name     string `json:"name"`
	UUID     string `json:"uuid"`
	Size     int64  `json:"size"`
	State    string `json:"state"`
	Epoch    uint64 `json:"epoch"`
	Children []struct {
		URI        string `json:"uri"`
		State      string `json:"state"`
		Reason     string `json:"reason"`
		Local      bool   `json:"local"`
		DirtyBytes uint64 `json:"dirty_bytes"`
		Identity   string `json:"identity"`
	} `json:"children"`
	LeftOut []struct {
		URI    string `json:"uri"`
		State  string `json:"state"`
		Reason string `json:"reason"`
	} `json:"left_out"`
	Share *struct {
		Protocol string `json:"protocol"`
		URI      string `json:"uri"`
	} `json:"share"`
}

func (n nexusJSON) child(t *testing.T, uri string) (state, reason string) {
	t.Helper()
	for _, c := range n.Children {
		if c.URI == uri {
			return c.State, c.Reason
		}
	}
	t.Fatalf("nexus %s has no child %s: %+v", n.Name, uri, n.Children)
	return "", ""
}

func startServerAt(t *testing.T, dataDir, nvmfAddr string) (*proc, string) {
	t.Helper()
	p, lines := start(t, "server", "--insecure", "--data-dir", dataDir, "--grpc", "127.0.0.1:0", "--nbd", "127.0.0.1:0",
		"--nvmf", nvmfAddr, "--discovery", "", "--metrics", "")
	return p, p.waitLine(lines, servingRE)[1]
}

// TestNexusAcrossNodes runs two nodes on loopback: node A hosts a nexus over
// its own replica r1 and node B's replica r2 (over NVMe/TCP), published over
// NBD. fio verifies through it; node B is killed (SIGKILL) under fio load
// without fio seeing an error; the child goes offline with a write-intent
// bitmap; B comes back, online-child copies only the segments it missed,
// and verify finds the children identical.
func TestNexusAcrossNodes(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	dir := t.TempDir()
	const repSize = 16 * mib
	began := time.Now()
	step := func(what string) { t.Logf("%6.1fs %s", time.Since(began).Seconds(), what) }
	_, engA := startServer(t, filepath.Join(dir, "a"))
	addrB := testutil.FreeAddr(t)
	procB, engB := startServerAt(t, filepath.Join(dir, "b"), addrB)

	mustNexctl(t, engA, "pool", "create", "pa", "file://"+filepath.Join(dir, "a.img")+"?size=96MiB")
	mustNexctl(t, engB, "pool", "create", "pb", "file://"+filepath.Join(dir, "b.img")+"?size=96MiB")
	var r1, r2 replicaJSON
	// Thin and never written: a nexus over them starts in sync.
	nexctlJSON(t, engA, &r1, "replica", "create", "r1", "--pool", "pa", "--size", "16MiB", "--thin")
	nexctlJSON(t, engB, &r2, "replica", "create", "r2", "--pool", "pb", "--size", "16MiB", "--thin")
	nexctlJSON(t, engB, &r2, "replica", "share", "r2", "--protocol", "nvmf")
	local, remote := "bdev:///"+r1.UUID, r2.Share.URI
	if !strings.HasPrefix(remote, "nvmf://"+addrB+"/") {
		t.Fatalf("r2 share %s, want it on %s", remote, addrB)
	}

	wantNexctlError(t, engA, []string{"n0"}, "nexus", "create", "n0", "--child", "bdev:///00000000-0000-4000-8000-000000000000")
	var nx nexusJSON
	nexctlJSON(t, engA, &nx, "nexus", "create", "n0", "--child", local, "--child", remote)
	if nx.State != "online" || nx.Size != repSize || len(nx.Children) != 2 {
		t.Fatalf("nexus %+v", nx)
	}
	nexctlJSON(t, engA, &nx, "nexus", "publish", "n0", "--protocol", "nbd")
	if nx.Share == nil || !regexp.MustCompile(`^nbd://127\.0\.0\.1:\d+/nexus/n0$`).MatchString(nx.Share.URI) {
		t.Fatalf("publication %+v", nx.Share)
	}
	uri := nx.Share.URI
	if table := mustNexctl(t, engA, "nexus", "list"); !strings.Contains(table, "2/2 online") || !strings.Contains(table, uri) {
		t.Fatalf("nexus list:\n%s", table)
	}

	step("nexus published")
	testutil.FioVerify(t, uri, 4*mib)
	step("fio verify done")

	// A verifying write load, with node B killed in its middle.
	load := exec.Command(fio, "--name=nexus-load", "--ioengine=nbd", "--uri="+uri,
		"--rw=randwrite", "--bs=16k", "--iodepth=8", "--size=8M", "--time_based", "--runtime=4",
		"--verify=crc32c", "--verify_backlog=256", "--verify_fatal=1", "--randrepeat=0",
		"--verify_state_save=0", "--output-format=json")
	load.Dir = t.TempDir()
	var loadOut bytes.Buffer
	load.Stdout, load.Stderr = &loadOut, &loadOut
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan error, 1)
	go func() { loadDone <- load.Wait() }()
	t.Cleanup(func() { load.Process.Kill() })
	time.Sleep(time.Second) // let the load get going; not a timing assertion
	procB.stop(syscall.SIGKILL)
	if err := <-loadDone; err != nil {
		t.Fatalf("fio under the node kill: %v\n%s", err, loadOut.String())
	}
	out := loadOut.Bytes()
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != 1 || res.Jobs[0].Error != 0 || res.Jobs[0].Write.IOBytes == 0 {
		t.Fatalf("fio result (%v):\n%s", err, loadOut.String())
	}
	step("load done")
	nexctlJSON(t, engA, &nx, "nexus", "get", "n0")
	// The child left unexpectedly: it is offline with a write-intent
	// bitmap of what it missed, not faulted into a full copy.
	if st, reason := nx.child(t, remote); nx.State != "degraded" || st != "offline" || reason != "io-error" {
		t.Fatalf("after the kill of node B: %+v", nx)
	}
	var dirty uint64
	for _, c := range nx.Children {
		if c.URI == remote {
			dirty = c.DirtyBytes
		}
	}
	if dirty == 0 || dirty > repSize {
		t.Fatalf("the offline child's bitmap covers %d bytes of %d", dirty, repSize)
	}
	if st, _ := nx.child(t, local); st != "online" {
		t.Fatalf("local child after the kill: %+v", nx)
	}

	// Node B comes back on the same address; its share is restored.
	_, engB = startServerAt(t, filepath.Join(dir, "b"), addrB)
	nexctlJSON(t, engB, &r2, "replica", "get", "r2")
	if r2.State != "online" || r2.Share == nil || r2.Share.URI != remote {
		t.Fatalf("r2 after restart %+v", r2)
	}
	step("node B back")
	// The same replica is back: online-child copies only what it missed.
	rebuilt := mustNexctl(t, engA, "nexus", "online-child", "n0", remote, "--wait")
	if !strings.Contains(rebuilt, "completed") {
		t.Fatalf("online-child --wait:\n%s", rebuilt)
	}
	var rb []struct {
		Child      string `json:"child"`
		State      string `json:"state"`
		Partial    bool   `json:"partial"`
		TotalBytes uint64 `json:"total_bytes"`
	}
	nexctlJSON(t, engA, &rb, "nexus", "rebuild", "status", "n0", remote)
	if len(rb) != 1 || rb[0].State != "completed" || !rb[0].Partial || rb[0].TotalBytes > dirty {
		t.Fatalf("rebuild %+v, want a partial one of at most the %d dirty bytes", rb, dirty)
	}
	step(fmt.Sprintf("resynced: %d of %d bytes copied", rb[0].TotalBytes, repSize))
	nexctlJSON(t, engA, &nx, "nexus", "get", "n0")
	if st, _ := nx.child(t, remote); nx.State != "online" || st != "online" {
		t.Fatalf("after the rebuild: %+v", nx)
	}
	var ver struct {
		Identical  bool     `json:"identical"`
		Children   []string `json:"children"`
		Mismatches []any    `json:"mismatches"`
		Segments   int      `json:"segments"`
	}
	nexctlJSON(t, engA, &ver, "nexus", "verify", "n0")
	if !ver.Identical || len(ver.Children) != 2 || len(ver.Mismatches) != 0 || ver.Segments == 0 {
		t.Fatalf("verify %+v", ver)
	}
	step("verified")
	testutil.FioVerify(t, uri, 4*mib)
}
