package csi

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nexstor/nexstor/internal/testutil"
	"github.com/nexstor/nexstor/internal/testutil/qemuvm"
)

// guestVolume is a volume created and published through the controller
// for the QEMU guest to attach.
type guestVolume struct {
	id, nqn, uri, host string
}

// stage is the csi-stage step of v at staging as kind (mount or block)
// with file system fs ("-" for the default).
func (v guestVolume) stage(staging, kind, fs string) string {
	return strings.Join([]string{"csi-stage", v.id, v.uri, v.nqn, v.host, staging, kind, fs}, " ")
}

// TestNodeKernel runs the node plugin's code (csi-* steps of the guest
// agent) against a real Linux kernel in a QEMU guest, over NVMe/TCP to a
// whole system on this machine, with volumes made and published by the
// controller: ext4 and xfs file systems made on blank volumes and found
// again after a disconnect (never formatted over), data written through a
// bind mount, a read-only publish, a stage with the wrong file system
// refused and undone, a block volume's pattern, expansion seen by the file
// system and the block device, and no controller left after unstaging.
func TestNodeKernel(t *testing.T) {
	env := qemuvm.Require(t)
	sys := startDev(t)
	c := NewController(sys.client, nil)
	ctx := context.Background()
	xfs := env.HasTool("mkfs.xfs") && env.HasTool("xfs_growfs")
	if !xfs {
		if testutil.InCI() {
			t.Fatal("required test peer missing under CI: xfsprogs (mkfs.xfs, xfs_growfs) for the guest")
		}
		t.Log("the guest has no xfsprogs (mkfs.xfs, xfs_growfs on this host): XFS is not tested")
	}
	mkvol := func(name string, size int64, vc *csi.VolumeCapability) guestVolume {
		t.Helper()
		resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{vc},
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: map[string]string{ParamReplicas: "2", ParamThin: "true"}})
		if err != nil {
			t.Fatal(err)
		}
		id := resp.GetVolume().GetVolumeId()
		t.Cleanup(func() {
			if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Errorf("delete %s: %v", name, err)
			}
		})
		pr, err := c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-0", VolumeCapability: vc})
		if err != nil {
			t.Fatal(err)
		}
		pc := pr.GetPublishContext()
		// The guest reaches this machine's loopback as 10.0.2.2.
		u, err := url.Parse(pc[PublishURI])
		if err != nil {
			t.Fatal(err)
		}
		u.Host = net.JoinHostPort("10.0.2.2", u.Port())
		return guestVolume{id: id, nqn: pc[PublishNQN], uri: u.String(), host: pc[PublishHostNQN]}
	}
	rwo := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	a := mkvol("kernel-ext4", 64<<20, mountCap(rwo, "ext4"))
	cv := mkvol("kernel-block", 32<<20, blockCap(rwo))
	var b guestVolume
	if xfs {
		b = mkvol("kernel-xfs", 320<<20, mountCap(rwo, "xfs")) // mkfs.xfs makes nothing under 300MB
	}
	grow := map[string]struct {
		id   string
		size int64
	}{"grow-a": {a.id, 96 << 20}, "grow-b": {b.id, 400 << 20}, "grow-c": {cv.id, 48 << 20}}
	barrier := func(name string) error {
		g, ok := grow[name]
		if !ok {
			return fmt.Errorf("unknown barrier %q", name)
		}
		_, err := c.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: g.id,
			CapacityRange: &csi.CapacityRange{RequiredBytes: g.size}})
		return err
	}

	script := []string{
		// ext4: made on the blank volume, written through the target,
		// grown online.
		a.stage("/csi/a/staging", "mount", "ext4"),
		"csi-health " + a.id,
		"csi-publish " + a.id + " /csi/a/staging /csi/a/pod mount",
		"write-files /csi/a/pod/d 8 300000 7", "sync",
		"csi-stats " + a.id + " /csi/a/pod",
		"barrier grow-a",
		"csi-expand " + a.id + " /csi/a/pod " + strconv.Itoa(96<<20),
		"csi-stats " + a.id + " /csi/a/pod",
		"csi-unpublish " + a.id + " /csi/a/pod",
		"csi-unstage " + a.id + " /csi/a/staging",
		"nvme-ctrls " + a.nqn + " 0",
		// Asked for as xfs, it is refused (it holds ext4), and the
		// attach is undone.
		"-" + a.stage("/csi/a/staging", "mount", "xfs"),
		"nvme-ctrls " + a.nqn + " 0",
		// Staged again: the same file system, the files there; a
		// read-only publish refuses writes.
		"drop-caches",
		a.stage("/csi/a/staging", "mount", "ext4"),
		"csi-publish " + a.id + " /csi/a/staging /csi/a/ro mount ro",
		"verify-files /csi/a/ro/d 8 300000 7",
		"-write-files /csi/a/ro/new 1 4096 1",
		"csi-unpublish " + a.id + " /csi/a/ro",
		"csi-unstage " + a.id + " /csi/a/staging",
		"nvme-ctrls " + a.nqn + " 0",

		// Block: the device bound at the target, a pattern, grown.
		cv.stage("/csi/c/staging", "block", "-"),
		"csi-publish " + cv.id + " /csi/c/staging /csi/c/dev block",
		"pattern-write /csi/c/dev 0 1048576 9",
		"barrier grow-c",
		"csi-expand " + cv.id + " /csi/c/dev " + strconv.Itoa(48<<20),
		"pattern-write /csi/c/dev " + strconv.Itoa(40<<20) + " 1048576 10",
		"csi-unpublish " + cv.id + " /csi/c/dev",
		"csi-unstage " + cv.id + " /csi/c/staging",
		"nvme-ctrls " + cv.nqn + " 0",
		"drop-caches",
		cv.stage("/csi/c/staging", "block", "-"),
		"csi-publish " + cv.id + " /csi/c/staging /csi/c/dev block",
		"pattern-verify /csi/c/dev 0 1048576 9",
		"pattern-verify /csi/c/dev " + strconv.Itoa(40<<20) + " 1048576 10",
		"csi-unpublish " + cv.id + " /csi/c/dev",
		"csi-unstage " + cv.id + " /csi/c/staging",
		"nvme-ctrls " + cv.nqn + " 0",
	}
	var modules []string
	if xfs {
		modules = []string{"xfs"}
		script = append(script,
			b.stage("/csi/b/staging", "mount", "xfs"),
			"csi-publish "+b.id+" /csi/b/staging /csi/b/pod mount",
			"write-files /csi/b/pod/d 4 300000 11", "sync",
			"csi-stats "+b.id+" /csi/b/pod",
			"barrier grow-b",
			"csi-expand "+b.id+" /csi/b/pod "+strconv.Itoa(400<<20),
			"csi-stats "+b.id+" /csi/b/pod",
			"csi-unpublish "+b.id+" /csi/b/pod",
			"csi-unstage "+b.id+" /csi/b/staging",
			"nvme-ctrls "+b.nqn+" 0",
			// No file system named: the one on the volume is mounted,
			// never the default made over it.
			"drop-caches",
			b.stage("/csi/b/staging", "mount", "-"),
			"csi-publish "+b.id+" /csi/b/staging /csi/b/pod mount",
			"verify-files /csi/b/pod/d 4 300000 11",
			"csi-unpublish "+b.id+" /csi/b/pod",
			"csi-unstage "+b.id+" /csi/b/staging",
			"nvme-ctrls "+b.nqn+" 0",
		)
	}
	bctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	res, err := env.Boot(t, qemuvm.Config{Script: script, Barrier: barrier, Modules: modules, Timeout: 14 * time.Minute}).Wait(bctx)
	t.Logf("guest (%s):\n%s", env.Accel, res)
	if err != nil {
		t.Fatal(err)
	}

	// The refused steps failed for the right reason.
	for _, s := range res.Steps {
		if !s.Tolerated {
			continue
		}
		switch {
		case s.Name == "csi-stage" && !strings.Contains(s.Err, "holds ext4"):
			t.Errorf("stage of an ext4 volume as xfs: %q, want a refusal naming ext4", s.Err)
		case s.Name == "write-files" && !strings.Contains(s.Err, "read-only"):
			t.Errorf("write through a read-only publish: %q, want read-only", s.Err)
		case !s.Failed():
			t.Errorf("step %d %q succeeded, but must be refused", s.Index, s.Line)
		}
	}
	if h := res.Step("csi-health"); h == nil || h.Value("health") != "ok" {
		t.Errorf("health of a staged volume: %+v", h)
	}
	// Each file system saw its volume grow.
	stats := res.StepsNamed("csi-stats")
	growth := [][2]int{{0, 1}}
	if xfs {
		growth = append(growth, [2]int{2, 3})
	}
	for _, g := range growth {
		before, _ := strconv.ParseInt(stats[g[0]].Value("bytes_total"), 10, 64)
		after, _ := strconv.ParseInt(stats[g[1]].Value("bytes_total"), 10, 64)
		if before <= 0 || after <= before+16<<20 {
			t.Errorf("%s: file system of %d bytes before the expansion, %d after", stats[g[0]].Line, before, after)
		}
	}
	for _, s := range res.StepsNamed("csi-expand") {
		if s.Value("capacity") == "" {
			t.Errorf("%s: no capacity reported", s.Line)
		}
	}
	if got := res.StepsNamed("csi-expand")[1].Value("capacity"); got != strconv.Itoa(48<<20) {
		t.Errorf("block volume capacity after expansion %s, want %d", got, 48<<20)
	}
}
