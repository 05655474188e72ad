package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/nvmf/initiator"
	"github.com/nexstor/nexstor/internal/testutil"
)

const (
	mib         = 1 << 20
	replicaSize = 64 * mib
)

// TestServerWithRealClients drives `nexstor server` with the nexctl binary,
// then reads and writes the shared replica with nbdinfo, nbdcopy, qemu-img
// and fio, kills the server with SIGKILL under a write load, and checks that
// data flushed before the kill is intact after a restart.
func TestServerWithRealClients(t *testing.T) {
	for _, tool := range []string{"nbdinfo", "nbdcopy", "qemu-img", "fio"} {
		testutil.RequireTool(t, tool)
	}
	t0 := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(t0).Seconds(), what) }
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	srv, eng := startServer(t, data)

	step("server started")
	disk := "file://" + filepath.Join(dir, "d0.img") + "?size=256MiB"
	var pool poolJSON
	nexctlJSON(t, eng, &pool, "pool", "create", "p0", disk)
	if pool.Name != "p0" || pool.State != "online" || pool.Capacity <= 0 || pool.UUID == "" {
		t.Fatalf("created pool %+v", pool)
	}
	var rep replicaJSON
	nexctlJSON(t, eng, &rep, "replica", "create", "r0", "--pool", "p0", "--size", "64MiB", "--thin")
	if rep.Size != replicaSize || !rep.Thin || rep.Pool != "p0" || rep.Share != nil {
		t.Fatalf("created replica %+v", rep)
	}
	out := mustNexctl(t, eng, "replica", "share", "r0", "--protocol", "nbd")
	uri := string(bytes.TrimSpace([]byte(out)))
	if !regexp.MustCompile(`^nbd://127\.0\.0\.1:\d+/r0$`).MatchString(uri) {
		t.Fatalf("share printed %q, want nbd://127.0.0.1:PORT/r0", out)
	}

	step("pool, replica, share created")
	// Bad input through the whole stack: exact message and resolution.
	// The same pool again is the existing one; on another disk, refused.
	mustNexctl(t, eng, "pool", "create", "p0", disk)
	wantNexctlError(t, eng, []string{"p0", "already exists"}, "pool", "create", "p0", "file://"+filepath.Join(dir, "other.img")+"?size=256MiB")
	wantNexctlError(t, eng, []string{"r0", "already exists"}, "replica", "create", "r0", "--pool", "p0", "--size", "4MiB")
	wantNexctlError(t, eng, []string{"r1", "cluster size"}, "replica", "create", "r1", "--pool", "p0", "--size", "5MiB")
	// A thin replica far beyond the pool's over-commit limit (250% of its
	// 256MiB) is refused with the numbers.
	wantNexctlError(t, eng, []string{"huge", "over-commit limit of 250%", "capacity", "committed", "asked 1099511627776"},
		"replica", "create", "huge", "--pool", "p0", "--size", "1TiB", "--thin")
	wantNexctlError(t, eng, []string{"r0", "shared"}, "replica", "destroy", "r0")
	wantNexctlError(t, eng, []string{"nope"}, "replica", "get", "nope")

	step("bad input checked")
	if got := testutil.NBDInfoSize(t, uri); got != replicaSize {
		t.Fatalf("nbdinfo size %d, want %d", got, replicaSize)
	}
	src := testutil.NBDCopyRoundTrip(t, uri, 16*mib)
	if err := testutil.QemuImgCompare(t, uri, src); err != nil {
		t.Fatal(err)
	}
	// The thin replica allocated clusters for what was written.
	nexctlJSON(t, eng, &rep, "replica", "get", "r0")
	if rep.Allocated < 16*mib || rep.Allocated > replicaSize {
		t.Fatalf("allocated %d after writing 16MiB", rep.Allocated)
	}
	flushed, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}

	step("nbdinfo, nbdcopy, qemu-img done")
	// fio with crc32c verification over the first 8MiB.
	testutil.FioVerify(t, uri, 8*mib)

	step("fio verify done")
	// Flush a known pattern, then put a write load on another region and
	// kill the server with SIGKILL in the middle of it.
	src = testutil.NBDCopyRoundTrip(t, uri, 16*mib)
	flushed, err = os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	nexctlJSON(t, eng, &rep, "replica", "get", "r0")
	before := rep.Allocated
	load := exec.Command(testutil.RequireTool(t, "fio"), "--name=load", "--ioengine=nbd", "--uri="+uri,
		"--rw=randwrite", "--bs=64k", "--iodepth=8", "--offset=32M", "--size=32M",
		"--time_based", "--runtime=300", "--randrepeat=0", "--verify_state_save=0")
	load.Dir = t.TempDir() // fio may leave state files in its working directory
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan error, 1)
	go func() { loadDone <- load.Wait() }()
	t.Cleanup(func() { load.Process.Kill(); <-loadDone })
	// The load is under way once the thin replica allocates new clusters.
	for rep.Allocated <= before {
		select {
		case err := <-loadDone:
			loadDone <- err
			t.Fatalf("fio load ended before the kill: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		nexctlJSON(t, eng, &rep, "replica", "get", "r0")
	}
	step("load running; SIGKILL")
	srv.stop(syscall.SIGKILL)

	srv, eng = startServer(t, data)
	nexctlJSON(t, eng, &rep, "replica", "get", "r0")
	if rep.State != "online" || rep.Share == nil || rep.Share.Protocol != "nbd" {
		t.Fatalf("replica after restart %+v", rep)
	}
	uri = rep.Share.URI
	got := readHead(t, uri, 16*mib)
	if !bytes.Equal(got, flushed) {
		i := 0
		for got[i] == flushed[i] {
			i++
		}
		t.Fatalf("flushed data lost across SIGKILL: first difference at byte %d", i)
	}
	step("flushed data verified after restart")
	nexctlJSON(t, eng, &pool, "pool", "get", "p0")
	if pool.State != "online" || pool.Replicas != 1 || pool.Allocated < 16*mib || pool.Allocated > replicaSize {
		t.Fatalf("pool after restart %+v", pool)
	}
	// The replica still works after the crash.
	testutil.FioVerify(t, uri, 4*mib)
	step("fio after restart done")
	if err := srv.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("graceful stop: %v\n%s", err, srv.output())
	}
}

// TestServerConfig checks that `nexstor server -o` refuses unknown keys,
// naming them, and that configured pools are imported (a blank disk is
// reported, not written).
func TestServerConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("data_dir: "+dir+"\npols:\n  - name: p0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testutil.BuildBinary(t, "nexstor"), "server", "-o", bad).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte(`unknown key "pols"`)) || !bytes.Contains(out, []byte(`"pools"`)) ||
		!bytes.Contains(out, []byte("line 2")) {
		t.Fatalf("unknown key: err %v, output:\n%s", err, out)
	}

	blank := filepath.Join(dir, "blank.img")
	if err := os.WriteFile(blank, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "server.yaml")
	yaml := "data_dir: " + filepath.Join(dir, "data") + "\npools:\n" +
		"  - name: ram\n    disk: malloc:///ram0?size=64MiB\n    cluster_size: 1MiB\n" +
		"  - name: blank\n    disk: " + blank + "\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	p, lines := start(t, "server", "--insecure", "-o", cfg, "--grpc", "127.0.0.1:0", "--nbd", "127.0.0.1:0", "--nvmf", "127.0.0.1:0", "--discovery", "", "--metrics", "")
	eng := p.waitLine(lines, servingRE)[1]
	var pools []poolJSON
	nexctlJSON(t, eng, &pools, "pool", "list")
	if len(pools) != 2 || pools[0].Name != "blank" || pools[0].State != "faulted" || pools[1].Name != "ram" || pools[1].State != "online" {
		t.Fatalf("pools %+v", pools)
	}
	b, err := os.ReadFile(blank)
	if err != nil || !bytes.Equal(b, make([]byte, 1<<20)) {
		t.Fatalf("the blank configured disk was written to (%v)", err)
	}
	wantNexctlError(t, eng, []string{"blank"}, "replica", "create", "r0", "--pool", "blank", "--size", "4MiB")

	// A replica of the RAM pool, shared over NVMe/TCP through nexctl and
	// used with the Go initiator.
	mustNexctl(t, eng, "replica", "create", "rv", "--pool", "ram", "--size", "8MiB")
	wantNexctlError(t, eng, []string{"bad-host"}, "replica", "share", "rv", "--protocol", "nvmf", "--allowed-host", "bad-host")
	var rep replicaJSON
	nexctlJSON(t, eng, &rep, "replica", "share", "rv", "--protocol", "nvmf")
	m := regexp.MustCompile(`^nvmf://([^/]+)/(nqn\.2024-11\.io\.nexstor:replica:` + rep.UUID + `)$`).FindStringSubmatch(rep.Share.URI)
	if m == nil {
		t.Fatalf("nvmf share URI %q", rep.Share.URI)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := initiator.Connect(ctx, m[1], m[2], initiator.Options{IOQueues: 1, MaxReconnect: 1})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := c.Namespace(1)
	if err != nil || ns.Size() != 8*mib {
		t.Fatalf("namespace: %v", err)
	}
	want := bytes.Repeat([]byte{0xa5}, 64<<10)
	if _, err := ns.WriteAt(want, 1*mib); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := ns.ReadAt(got, 1*mib); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("nvmf read back: %v", err)
	}
	c.Close()
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// TestServerTLS checks that a standalone `nexstor server` serves mutual TLS
// by default: without certificates (and without --insecure) it refuses to
// start and says how to get them; with them, nexctl reaches it with the
// admin certificate and a plain-text nexctl is refused.
func TestServerTLS(t *testing.T) {
	bin := testutil.BuildBinary(t, "nexstor")
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	out, err := exec.Command(bin, "server", "--data-dir", filepath.Join(dir, "data"), "--grpc", "127.0.0.1:0",
		"--nbd", "", "--nvmf", "", "--metrics", "", "--cert-dir", empty).CombinedOutput()
	if err == nil {
		t.Fatalf("server without certificates started:\n%s", out)
	}
	for _, want := range []string{"--cert-dir", "nexstor certgen", "--insecure"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("error without certificates does not mention %s:\n%s", want, out)
		}
	}

	certs := filepath.Join(dir, "certs")
	if out, err := exec.Command(bin, "certgen", "--dir", certs).CombinedOutput(); err != nil {
		t.Fatalf("certgen: %v\n%s", err, out)
	}
	p, lines := start(t, "server", "--cert-dir", certs, "--data-dir", filepath.Join(dir, "data"), "--grpc", "127.0.0.1:0",
		"--nbd", "127.0.0.1:0", "--nvmf", "", "--discovery", "", "--metrics", "")
	eng := p.waitLine(lines, servingRE)[1]
	run := func(certDir string) (string, error) {
		cmd := exec.Command(testutil.BuildBinary(t, "nexctl"), "--engine", eng, "pool", "list", "--timeout", "20s")
		cmd.Env = append(os.Environ(), "NEXSTOR_CERT_DIR="+certDir, "NEXSTOR_INSECURE=0")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(certs); err != nil {
		t.Fatalf("nexctl with the admin certificate: %v\n%s", err, out)
	}
	if out, err := run(empty); err == nil || !strings.Contains(out, "TLS") {
		t.Fatalf("plain-text nexctl against a TLS server: %v\n%s", err, out)
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("server stop: %v\n%s", err, p.output())
	}
}
