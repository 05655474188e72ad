package e2e

import (
	"bytes"
	"encoding/json"
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
	Children []struct {
		URI    string `json:"uri"`
		State  string `json:"state"`
		Reason string `json:"reason"`
		Local  bool   `json:"local"`
	} `json:"children"`
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
// NBD. fio verifies through it; node B is killed under fio load without
// fio seeing an error; the child is faulted; B comes back, the child is
// rebuilt, and verify finds the children identical.
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
	nexctlJSON(t, engA, &r1, "replica", "create", "r1", "--pool", "pa", "--size", "16MiB")
	nexctlJSON(t, engB, &r2, "replica", "create", "r2", "--pool", "pb", "--size", "16MiB")
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
	if st, reason := nx.child(t, remote); nx.State != "degraded" || st != "faulted" || reason != "io-error" {
		t.Fatalf("after the kill of node B: %+v", nx)
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
	rebuilt := mustNexctl(t, engA, "nexus", "add-child", "n0", remote, "--wait")
	if !strings.Contains(rebuilt, "completed") {
		t.Fatalf("add-child --wait:\n%s", rebuilt)
	}
	step("rebuilt")
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
