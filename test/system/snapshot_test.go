package system

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

// TestSnapshotRestoreExt4 snapshots a 3-replica volume holding ext4 while
// the Linux kernel in a QEMU guest has it mounted and fio writes to it,
// restores the snapshot to a new volume over three clones, and mounts the
// restored volume in the guest: the files synced before the snapshot are
// there, and the file system checks clean (e2fsck -fn) once the kernel has
// replayed its journal, as after a crash. About 1 to 2 minutes with KVM.
func TestSnapshotRestoreExt4(t *testing.T) {
	testutil.RequireTool(t, "fio")
	env := qemuvm.Require(t)
	c := newCluster(t, clusterOptions{nodes: 3, accessPoints: 1, poolSize: "256MiB"})
	c.start()
	for _, n := range c.nodes {
		n.waitLog("waiting in maintenance mode", 30*time.Second)
	}
	c.mustNexctl("storage", "format", "-l", c.hosts())
	c.waitMembers("all joined", 60*time.Second, c.allState("joined"))
	aps := strings.Join(c.aps, ",")

	v := c.volume("create", "data", "--size", "64MiB", "--replicas", "3", "--thin")
	on := v.Status.Replicas[0].Node
	hostNQN := "nqn.2014-08.org.nvmexpress:uuid:" + uuid.NewString()
	p := c.volume("publish", "data", "--node", on, "--host-nqn", hostNQN)
	u, err := url.Parse(p.Status.Target.URI)
	if err != nil {
		t.Fatal(err)
	}
	restored := uuid.NewString()
	restoredNQN := "nqn.2024-11.io.nexstor:nexus:" + restored

	var snap struct {
		UUID        string `json:"uuid"`
		Phase       string `json:"phase"`
		ReadyCopies uint32 `json:"ready_copies"`
		PausedUs    uint64 `json:"paused_us"`
	}
	barrier := func(name string) error {
		if name != "snapshot" {
			return fmt.Errorf("unknown barrier %q", name)
		}
		out, errOut, err := c.nexctl("snapshot", "create", "data", "s1", "-a", aps, "-o", "json")
		if err != nil {
			return fmt.Errorf("snapshot create: %v: %s", err, errOut)
		}
		if err := json.Unmarshal([]byte(out), &snap); err != nil {
			return fmt.Errorf("snapshot create: %v: %s", err, out)
		}
		if snap.Phase != "ready" || snap.ReadyCopies != 3 {
			return fmt.Errorf("snapshot %s", out)
		}
		if _, errOut, err := c.nexctl("volume", "create", "restored", "--from-snapshot", "data/s1", "--replicas", "3",
			"--uuid", restored, "-a", aps); err != nil {
			return fmt.Errorf("volume create --from-snapshot: %v: %s", err, errOut)
		}
		if _, errOut, err := c.nexctl("volume", "publish", "restored", "--node", on, "--host-nqn", hostNQN, "-a", aps); err != nil {
			return fmt.Errorf("volume publish restored: %v: %s", err, errOut)
		}
		return nil
	}
	script := []string{
		fmt.Sprintf("connect 10.0.2.2 %s %s %s", u.Port(), p.Status.Target.NQN, hostNQN),
		"set C1 $CTRL",
		"mkfs $DEV", "mount $DEV /mnt/v", "write-files /mnt/v/before 8 300000 7", "sync",
		"start fio fio --name=w --filename=/mnt/v/fio.dat --size=16m --rw=randwrite --bs=4k --direct=1 --ioengine=libaio" +
			" --iodepth=8 --verify=crc32c --verify_backlog=64 --verify_fatal=1 --time_based --runtime=600",
		"sleep 4s", // past the layout of fio's file: the snapshot lands among its writes
		"running fio",
		"barrier snapshot",
		"running fio",
		"stop fio",
		"umount /mnt/v",
		"disconnect $C1",
		// The restored volume: the journal is replayed at mount, as after
		// a crash; then the files and a read-only full check.
		fmt.Sprintf("connect 10.0.2.2 %s %s %s", u.Port(), restoredNQN, hostNQN),
		"mount $DEV /mnt/r", "verify-files /mnt/r/before 8 300000 7", "umount /mnt/r",
		"fsck $DEV",
		"disconnect $CTRL",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	res, err := env.Boot(t, qemuvm.Config{Programs: []string{"fio"}, Script: script, Barrier: barrier, Timeout: 8 * time.Minute}).Wait(ctx)
	t.Logf("guest (%s):\n%s", env.Accel, res)
	if err != nil {
		t.Fatal(err)
	}
	if out := strings.Join(res.Step("stop").Output, "\n"); !strings.Contains(out, "err= 0") || strings.Contains(out, "verify:") {
		t.Errorf("fio reported an error while the snapshot was taken:\n%s", out)
	}
	t.Logf("snapshot %s: writes held %v", snap.UUID, time.Duration(snap.PausedUs)*time.Microsecond)

	// Snapshots outlive their volume; deleting one removes every copy.
	c.volume("unpublish", "restored")
	c.volume("unpublish", "data")
	c.mustNexctl("volume", "delete", "data", "-a", aps)
	out := c.mustNexctl("snapshot", "list", "-a", aps)
	if !strings.Contains(out, "s1") || !strings.Contains(out, "3/3") {
		t.Fatalf("the snapshot after its volume was deleted:\n%s", out)
	}
	c.mustNexctl("snapshot", "delete", snap.UUID, "-a", aps)
	c.mustNexctl("volume", "delete", "restored", "-a", aps)
	if inv := c.inventory(); len(inv) != 0 {
		t.Fatalf("left after the deletes: %v", inv)
	}
}
