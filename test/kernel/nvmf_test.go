package kernel

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nexstor/nexstor/internal/nvmf/target"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

const (
	mib = int64(1) << 20

	devSize = 64 * mib
	// The file system takes the first fsSize bytes; the rest stays raw for
	// O_DIRECT patterns, so both can be checked from the host.
	fsSize = 48 * mib
	// guestRaw is written by the guest in the first boot, hostRaw by the
	// Go initiator between the boots; the second boot checks both.
	guestRawOff, guestRawLen, guestSeed = 48 * mib, 8 * mib, 1
	hostRawOff, hostRawLen, hostSeed    = 56 * mib, 8 * mib, 2
	rewriteSeed                         = 4

	filesDir, fileCount, fileSize, fileSeed = "/data", 8, 200000, 3
)

// TestKernelHostNVMeTCP runs the Linux kernel's NVMe/TCP host against the
// target in two boots, on a thin replica of a pool on a file.
//
// First boot: discovery through the discovery port, connect, an O_DIRECT
// pattern written and read back, mkfs.ext4, mount, files, sync, umount,
// disconnect. On the host the Go initiator then finds the pattern and the
// files (the image read back passes e2fsck; debugfs reads the files), and
// writes a pattern of its own. The target stops and the pool is exported
// and imported again, as when the storage node restarts. Second boot, with header and data digests:
// a host NQN that is not allowed is refused, the allowed one reconnects,
// fsck is clean, the files and both patterns are there, and a pattern the
// guest writes with digests reads back on the host. A proxy between guest and
// target checks that every PDU after initialization carries a header digest.
func TestKernelHostNVMeTCP(t *testing.T) {
	env := qemuvm.Require(t)
	poolFile := filepath.Join(t.TempDir(), "pool.img")
	p, rep := createPoolReplica(t, poolFile)
	nqn := target.NQN("replica", replicaUUID)
	s := serve(t, nqn, rep)
	io := strconv.Itoa(s.ioPort)
	mnt := "/mnt/nvme"

	vm := env.Boot(t, qemuvm.Config{Script: []string{
		fmt.Sprintf("discover 10.0.2.2 %d %s", s.discPort, hostNQN),
		fmt.Sprintf("connect 10.0.2.2 %s %s %s", io, nqn, hostNQN),
		fmt.Sprintf("pattern-write $DEV %d %d %d", guestRawOff, guestRawLen, guestSeed),
		fmt.Sprintf("pattern-verify $DEV %d %d %d", guestRawOff, guestRawLen, guestSeed),
		fmt.Sprintf("mkfs $DEV %dk", fsSize/1024),
		"mount $DEV " + mnt,
		fmt.Sprintf("write-files %s%s %d %d %d", mnt, filesDir, fileCount, fileSize, fileSeed),
		"sync",
		"umount " + mnt,
		"disconnect $CTRL",
	}})
	res, err := vm.Wait(context.Background())
	t.Logf("first boot (%s):\n%s", env.Accel, res)
	if err != nil {
		t.Fatalf("first boot: %v", err)
	}

	// Discovery must list the subsystem on the I/O port.
	found := false
	for _, o := range res.Step("discover").Output {
		if strings.Contains(o, "subnqn="+nqn) && strings.Contains(o, "trsvcid="+io) {
			found = true
		}
	}
	if !found {
		t.Errorf("discovery log does not list %s on port %s: %q", nqn, io, res.Step("discover").Output)
	}
	if lbs := res.Step("connect").Value("lbs"); lbs != "512" {
		t.Errorf("kernel sees logical block size %q, want 512", lbs)
	}
	if sectors := res.Step("connect").Value("sectors"); sectors != strconv.FormatInt(devSize/512, 10) {
		t.Errorf("kernel sees %s sectors, want %d", sectors, devSize/512)
	}

	// The host side, through the Go initiator.
	ns := s.connect(t, nqn)
	if err := verifyPattern(ns, guestRawOff, guestRawLen, guestSeed); err != nil {
		t.Errorf("the guest's O_DIRECT pattern, read through the initiator: %v", err)
	}
	checkExt4Image(t, "file system read through the initiator", ns, fsSize, fileSet{filesDir, fileCount, fileSize, fileSeed})
	if err := writePattern(ns, hostRawOff, hostRawLen, hostSeed); err != nil {
		t.Fatalf("initiator write: %v", err)
	}
	if err := ns.Close(); err != nil {
		t.Errorf("initiator namespace close: %v", err)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The storage node restarts: target down, pool exported and imported
	// again, the replica served by a new target.
	s.stop()
	if err := rep.Close(); err != nil {
		t.Fatalf("replica close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("pool close: %v", err)
	}
	p, rep = importPoolReplica(t, poolFile)
	s = serve(t, nqn, rep)
	io = strconv.Itoa(s.ioPort)

	// Second boot: digests on, a refused stranger first, then reconnect.
	// The guest goes through a proxy that sees whether digests are used.
	proxy := newPDUProxy(t, "127.0.0.1:"+io)
	io = strconv.Itoa(proxy.port())
	vm = env.Boot(t, qemuvm.Config{Script: []string{
		fmt.Sprintf("-connect 10.0.2.2 %s %s %s", io, nqn, strangerNQN),
		fmt.Sprintf("connect 10.0.2.2 %s %s %s hdr_digest data_digest", io, nqn, hostNQN),
		"fsck $DEV",
		"mount $DEV " + mnt + " ro",
		fmt.Sprintf("verify-files %s%s %d %d %d", mnt, filesDir, fileCount, fileSize, fileSeed),
		"umount " + mnt,
		fmt.Sprintf("pattern-verify $DEV %d %d %d", guestRawOff, guestRawLen, guestSeed),
		fmt.Sprintf("pattern-verify $DEV %d %d %d", hostRawOff, hostRawLen, hostSeed),
		// Writes with data digests, checked once more from the host.
		fmt.Sprintf("pattern-write $DEV %d %d %d", hostRawOff, hostRawLen, rewriteSeed),
		"disconnect $CTRL",
	}})
	res, err = vm.Wait(context.Background())
	t.Logf("second boot (%s):\n%s", env.Accel, res)
	if err != nil {
		t.Fatalf("second boot: %v", err)
	}
	if refused := res.StepsNamed("connect")[0]; !refused.Failed() {
		t.Errorf("host %s, not on the allow-list, connected: %q", strangerNQN, refused.Output)
	}
	// The kernel names the reason: the Connect Invalid Host status.
	if !strings.Contains(res.Console, "is not allowed, hostnqn: "+strangerNQN) {
		t.Errorf("the kernel did not report the refusal as an invalid host; console:\n%s", res.Console)
	}
	digested, hdr, data := 0, 0, 0
	for i, c := range proxy.stats() {
		t.Logf("connection %d: ICReq DGST %#x, ICResp DGST %#x; host->target %d PDUs (%d HDGST, %d DDGST); target->host %d PDUs (%d HDGST, %d DDGST)",
			i, c.icDgst[0], c.icDgst[1], c.pdus[0], c.withHDGST[0], c.withDDGST[0], c.pdus[1], c.withHDGST[1], c.withDDGST[1])
		if c.icDgst[0] != dgstBoth {
			continue // the refused stranger asked for none
		}
		digested++
		if c.icDgst[1] != dgstBoth {
			t.Errorf("connection %d: the target answered digests %#x to a request for both", i, c.icDgst[1])
		}
		for dir := range 2 {
			if c.withHDGST[dir] != c.pdus[dir] {
				t.Errorf("connection %d direction %d: %d of %d PDUs lack a header digest", i, dir, c.pdus[dir]-c.withHDGST[dir], c.pdus[dir])
			}
			hdr += c.withHDGST[dir]
			data += c.withDDGST[dir]
		}
	}
	// An admin queue and at least one I/O queue, and data moved both ways.
	if digested < 2 || hdr == 0 || data == 0 {
		t.Errorf("digests not in use: %d connections negotiated both, %d PDUs with a header digest, %d with a data digest", digested, hdr, data)
	}

	ns = s.connect(t, nqn)
	if err := verifyPattern(ns, hostRawOff, hostRawLen, rewriteSeed); err != nil {
		t.Errorf("the pattern the guest wrote with data digests, read through the initiator: %v", err)
	}
	if err := verifyPattern(ns, guestRawOff, guestRawLen, guestSeed); err != nil {
		t.Errorf("the first boot's pattern after the second boot: %v", err)
	}
}
