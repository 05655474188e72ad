package kernel

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/target"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

// TestKernelHostFollowsTargetChanges checks, in one boot, what the
// kernel's host does when the target changes under a mounted file system:
//
//   - the host idles: keep-alives keep the controller up;
//   - the target restarts on the same ports (all connections dropped): the
//     kernel reconnects by itself and the file system carries on;
//   - the target adds a namespace: the kernel learns of it through the
//     Namespace Attribute Changed event and creates its block device, on
//     which the guest writes a pattern that the host then finds, and
//     discards a range that the host then reads as zeroes;
//   - the target removes it again: the block device goes away;
//   - the host is taken off a subsystem's allow-list: the target drops its
//     controller, refuses its reconnects, and the kernel removes it.
func TestKernelHostFollowsTargetChanges(t *testing.T) {
	env := qemuvm.Require(t)
	dev, err := bdev.NewMalloc(devSize, 512)
	if err != nil {
		t.Fatal(err)
	}
	extra, err := bdev.NewMalloc(16*mib, 4096)
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := bdev.NewMalloc(8*mib, 512)
	if err != nil {
		t.Fatal(err)
	}
	nqn := target.NQN("replica", "6b65726e-656c-4000-8000-000000000003")
	revokedNQN := target.NQN("replica", "6b65726e-656c-4000-8000-000000000004")

	var mu sync.Mutex
	s := serve(t, nqn, dev)
	ioAddr := "127.0.0.1:" + strconv.Itoa(s.ioPort)
	discAddr := "127.0.0.1:" + strconv.Itoa(s.discPort)
	var extraNSID uint32
	var revokedSub *target.Subsystem
	barrier := func(name string) error {
		mu.Lock()
		defer mu.Unlock()
		switch name {
		case "restart":
			s.stop()
			s = serveAt(t, nqn, dev, ioAddr, discAddr)
		case "add-namespace":
			id, err := s.sub.AddNamespace(extra, target.NamespaceOptions{UUID: [16]byte{0x6e, 0x78, 0x73, 0x74, 2}})
			if err != nil {
				return err
			}
			extraNSID = id
		case "remove-namespace":
			// The guest discarded the first MiB.
			if err := verifyPattern(extra, mib, 3*mib, 21); err != nil {
				return fmt.Errorf("the guest's pattern on the added namespace, read on the host: %w", err)
			}
			if err := s.sub.RemoveNamespace(extraNSID); err != nil {
				return err
			}
		case "add-subsystem":
			sub, err := s.tgt.AddSubsystem(revokedNQN, target.SubsystemOptions{AllowedHosts: []string{hostNQN}})
			if err != nil {
				return err
			}
			if _, err := sub.AddNamespace(revoked, target.NamespaceOptions{UUID: [16]byte{0x6e, 0x78, 0x73, 0x74, 4}}); err != nil {
				return err
			}
			revokedSub = sub
		case "revoke":
			revokedSub.DisallowHost(hostNQN)
		default:
			return fmt.Errorf("unknown barrier %q", name)
		}
		return nil
	}

	mnt := "/mnt/nvme"
	first := fileSet{"/first", 4, 100000, 31}
	second := fileSet{"/second", 4, 100000, 32}
	files := func(verb string, f fileSet) string {
		return fmt.Sprintf("%s %s%s %d %d %d", verb, mnt, f.Dir, f.Count, f.Size, f.Seed)
	}
	vm := env.Boot(t, qemuvm.Config{Barrier: barrier, Script: []string{
		// Reconnect quickly, and keep trying long enough for a slow guest.
		fmt.Sprintf("connect 10.0.2.2 %d %s %s reconnect_delay=1 ctrl_loss_tmo=120", s.ioPort, nqn, hostNQN),
		"mkfs $DEV",
		"mount $DEV " + mnt,
		files("write-files", first),
		"sync",
		// Idle for several keep-alive periods (the kernel's default is
		// 5 s): the controller must stay up on keep-alives alone.
		"sleep 12s",
		"ctrl-state $CTRL",
		"barrier restart",
		files("write-files", second),
		"sync",
		"drop-caches",
		files("verify-files", first),
		files("verify-files", second),
		"ctrl-state $CTRL",
		"barrier add-namespace",
		"wait-namespaces $CTRL 2",
		"pattern-write $NS2 0 4194304 21",
		"pattern-verify $NS2 0 4194304 21",
		// A discard arrives as a DSM command whose range buffer is longer
		// than its ranges: Linux always sends a page of them.
		"run blkdiscard -o 0 -l 1048576 $NS2",
		"barrier remove-namespace",
		"wait-namespaces $CTRL 1",
		"umount " + mnt,
		"fsck $DEV",
		"disconnect $CTRL",
		// A host taken off the allow-list is disconnected, and its
		// reconnects are refused until the kernel gives up (ctrl_loss_tmo).
		"barrier add-subsystem",
		fmt.Sprintf("connect 10.0.2.2 %d %s %s reconnect_delay=1 ctrl_loss_tmo=3", s.ioPort, revokedNQN, hostNQN),
		"pattern-write $DEV 0 1048576 41",
		"barrier revoke",
		"wait-removed $CTRL",
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := vm.Wait(ctx)
	t.Logf("boot (%s):\n%s", env.Accel, res)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel reports its reconnect; without it the restart went unseen.
	if !strings.Contains(res.Console, "Successfully reconnected") {
		t.Errorf("the kernel did not report a reconnect after the target restarted; console:\n%s", res.Console)
	}
	for i, st := range res.StepsNamed("ctrl-state") {
		if v := st.Value("state"); v != "live" {
			t.Errorf("controller state %d = %q, want live", i, v)
		}
	}
	// Before the revocation, one error recovery: the restart's. More means
	// the target dropped the controller on its own, e.g. by missing
	// keep-alives.
	beforeRevoke, _, _ := strings.Cut(res.Console, "barrier revoke")
	if n := strings.Count(beforeRevoke, "starting error recovery"); n != 1 {
		t.Errorf("the kernel started error recovery %d times before the revocation, want once (for the restart)", n)
	}
	if got := res.Step("wait-namespaces").Output; len(got) != 2 || !strings.Contains(got[1], "nsid=2") {
		t.Errorf("namespaces after the add: %q", got)
	}
	if err := verifyPattern(revoked, 0, mib, 41); err != nil {
		t.Errorf("written before the revocation: %v", err)
	}
	if !strings.Contains(res.Console, "is not allowed, hostnqn: "+hostNQN) {
		t.Errorf("the kernel's reconnect after the revocation was not refused as an invalid host")
	}
	if err := verifyZeroes(extra, 0, mib); err != nil {
		t.Errorf("the range the kernel discarded: %v", err)
	}

	mu.Lock()
	last := s
	mu.Unlock()
	ns := last.connect(t, nqn)
	checkExt4Image(t, "file system after the reconnect", ns, devSize, first, second)
}
