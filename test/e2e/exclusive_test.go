package e2e

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestExclusiveDisksAndDataDirs: two servers must never share a pool's disk
// or a data dir, or both would hand out the same clusters. A second server
// on a running one's data dir fails at start, and a second server's import
// or create of a running one's pool file fails; each names the holder's
// PID and writes nothing.
func TestExclusiveDisksAndDataDirs(t *testing.T) {
	dir := t.TempDir()
	dataA := filepath.Join(dir, "a")
	procA, engA := startServer(t, dataA)
	poolFile := filepath.Join(dir, "a.img")
	disk := "file://" + poolFile + "?size=64MiB"
	mustNexctl(t, engA, "pool", "create", "pa", disk)
	mustNexctl(t, engA, "replica", "create", "r0", "--pool", "pa", "--size", "8MiB", "--thin")
	holder := "process " + strconv.Itoa(procA.cmd.Process.Pid)
	state := filepath.Join(dataA, "engine-state.json")
	stateBefore, poolBefore := fileSum(t, state), fileSum(t, poolFile)

	// A second server on the same data dir stops at once, naming A.
	procB, _ := start(t, "server", "--insecure", "--data-dir", dataA, "--grpc", "127.0.0.1:0", "--nbd", "127.0.0.1:0",
		"--nvmf", "127.0.0.1:0", "--discovery", "", "--metrics", "")
	select {
	case <-procB.done:
	case <-time.After(time.Minute):
		t.Fatalf("a second server on a data dir in use keeps running:\n%s", procB.output())
	}
	if procB.err == nil || !bytes.Contains([]byte(procB.output()), []byte("in use by "+holder)) {
		t.Fatalf("second server on the same data dir: %v\n%s", procB.err, procB.output())
	}

	// A server with its own data dir cannot import or format A's pool.
	_, engC := startServer(t, filepath.Join(dir, "c"))
	wantNexctlError(t, engC, []string{poolFile, holder}, "pool", "import", disk)
	wantNexctlError(t, engC, []string{poolFile, holder}, "pool", "create", "pc", disk, "--force")

	if fileSum(t, state) != stateBefore || fileSum(t, poolFile) != poolBefore {
		t.Fatal("a refused server wrote to the data dir or the pool")
	}
	// Once A stops, the pool can be imported elsewhere.
	if err := procA.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop A: %v\n%s", err, procA.output())
	}
	out := mustNexctl(t, engC, "pool", "import", disk)
	if !bytes.Contains([]byte(out), []byte("pa")) {
		t.Fatalf("import after A stopped:\n%s", out)
	}
}
