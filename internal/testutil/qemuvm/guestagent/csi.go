package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nexstor/nexstor/internal/csi"
)

// The csi-* steps run the CSI node plugin's own code (internal/csi: the
// NVMe/TCP transport, file systems, mounts, its state) in the guest, with
// the guest's kernel as the host's: the same calls a kubelet makes over
// the plugin's socket, without the socket.
func init() {
	for name, s := range map[string]struct {
		fn    stepFunc
		usage string
		min   int
	}{
		"csi-stage":     {stepCSIStage, "csi-stage VOLID URI NQN HOSTNQN STAGING mount|block [FSTYPE] (FSTYPE: ext4, xfs, or - for the default)", 6},
		"csi-publish":   {stepCSIPublish, "csi-publish VOLID STAGING TARGET mount|block [ro]", 4},
		"csi-unpublish": {stepCSIUnpublish, "csi-unpublish VOLID TARGET", 2},
		"csi-unstage":   {stepCSIUnstage, "csi-unstage VOLID STAGING", 2},
		"csi-expand":    {stepCSIExpand, "csi-expand VOLID PATH BYTES (reports capacity=)", 3},
		"csi-stats":     {stepCSIStats, "csi-stats VOLID PATH (reports bytes_total= bytes_used= inodes_total=)", 2},
		"csi-health":    {stepCSIHealth, "csi-health VOLID (reports health=ok, or the statuses)", 1},
		"nvme-ctrls":    {stepNVMeCtrls, "nvme-ctrls SUBNQN COUNT (the host's controllers of the subsystem)", 2},
	} {
		steps[name] = s
	}
}

// csiStateDir keeps the node plugin's records across the steps of a boot.
const csiStateDir = "/run/nexstor-csi"

// csiNode returns the node service of this boot, made on first use.
func (a *agent) csiNode() (*csi.Node, error) {
	if a.node != nil {
		return a.node, nil
	}
	nqn, id, err := csi.HostIdentity(csi.DefaultNVMeConfigDir)
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(a.echo, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// Under TCG a controller takes seconds to come up: be generous.
	tr := csi.NewNVMe(csi.NVMeOptions{HostNQN: nqn, HostID: id, DeviceTimeout: deviceWait, Log: log})
	n, err := csi.NewNode(csi.NodeOptions{NodeName: "guest", Transport: tr, StateDir: csiStateDir, Log: log})
	if err != nil {
		return nil, err
	}
	a.node = n
	return n, nil
}

func csiCapability(kind, fs string) (*csipb.VolumeCapability, error) {
	c := &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	switch kind {
	case "mount":
		if fs == "-" {
			fs = ""
		}
		c.AccessType = &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fs}}
	case "block":
		c.AccessType = &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}
	default:
		return nil, fmt.Errorf("access type %q: use mount or block", kind)
	}
	return c, nil
}

func csiContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*deviceWait)
}

func stepCSIStage(a *agent, args []string) error {
	n, err := a.csiNode()
	if err != nil {
		return err
	}
	fs := "-"
	if len(args) > 6 {
		fs = args[6]
	}
	vc, err := csiCapability(args[5], fs)
	if err != nil {
		return err
	}
	ctx, cancel := csiContext()
	defer cancel()
	start := time.Now()
	_, err = n.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: args[0], StagingTargetPath: args[4], VolumeCapability: vc,
		PublishContext: map[string]string{csi.PublishURI: args[1], csi.PublishNQN: args[2], csi.PublishHostNQN: args[3]}})
	if err != nil {
		return err
	}
	a.out("staged %s at %s in %v", args[0], args[4], time.Since(start).Round(time.Millisecond))
	return nil
}

func stepCSIPublish(a *agent, args []string) error {
	n, err := a.csiNode()
	if err != nil {
		return err
	}
	vc, err := csiCapability(args[3], "-")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(args[2]), 0o755); err != nil {
		return err
	}
	ctx, cancel := csiContext()
	defer cancel()
	_, err = n.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: args[0], StagingTargetPath: args[1], TargetPath: args[2],
		VolumeCapability: vc, Readonly: len(args) > 4 && args[4] == "ro"})
	return err
}

func stepCSIUnpublish(a *agent, args []string) error {
	n, err := a.csiNode()
	if err != nil {
		return err
	}
	ctx, cancel := csiContext()
	defer cancel()
	_, err = n.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: args[0], TargetPath: args[1]})
	if err == nil {
		if _, serr := os.Stat(args[1]); !os.IsNotExist(serr) {
			return fmt.Errorf("%s still exists after NodeUnpublishVolume (%v)", args[1], serr)
		}
	}
	return err
}

func stepCSIUnstage(a *agent, args []string) error {
	n, err := a.csiNode()
	if err != nil {
		return err
	}
	ctx, cancel := csiContext()
	defer cancel()
	_, err = n.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: args[0], StagingTargetPath: args[1]})
	return err
}

func stepCSIExpand(a *agent, args []string) error {
	n, err := a.csiNode()
	if err != nil {
		return err
	}
	size, err := strconv.ParseInt(args[2], 10, 64)
	if err != nil {
		return fmt.Errorf("csi-expand: %q is not a byte count", args[2])
	}
	ctx, cancel := csiContext()
	defer cancel()
	resp, err := n.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: args[0], VolumePath: args[1],
		CapacityRange: &csipb.CapacityRange{RequiredBytes: size}})
	if err != nil {
		return err
	}
	a.out("capacity=%d", resp.GetCapacityBytes())
	return nil
}

func stepCSIStats(a *agent, args []string) error {
	n, err := a.csiNode()
	if err != nil {
		return err
	}
	ctx, cancel := csiContext()
	defer cancel()
	resp, err := n.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: args[0], VolumePath: args[1]})
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, u := range resp.GetUsage() {
		unit := strings.ToLower(u.GetUnit().String())
		fmt.Fprintf(&b, "%s_total=%d %s_used=%d %s_available=%d ", unit, u.GetTotal(), unit, u.GetUsed(), unit, u.GetAvailable())
	}
	a.out("%s", strings.TrimSpace(b.String()))
	return nil
}

func stepCSIHealth(a *agent, args []string) error {
	n, err := a.csiNode()
	if err != nil {
		return err
	}
	ctx, cancel := csiContext()
	defer cancel()
	resp, err := n.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: args[0]})
	if err != nil {
		return err
	}
	var st []string
	for _, e := range resp.GetVolumeHealth().GetHealthStatuses() {
		st = append(st, e.GetStatus().String()+":"+e.GetReason())
	}
	if len(st) == 0 {
		st = []string{"ok"}
	}
	a.out("health=%s", strings.Join(st, ","))
	return nil
}

func stepNVMeCtrls(a *agent, args []string) error {
	want, err := strconv.Atoi(args[1])
	if err != nil || want < 0 {
		return fmt.Errorf("count %q: want a non-negative integer", args[1])
	}
	ents, _ := os.ReadDir("/sys/class/nvme")
	var found []string
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join("/sys/class/nvme", e.Name(), "subsysnqn"))
		if strings.TrimSpace(string(b)) == args[0] {
			found = append(found, e.Name())
		}
	}
	a.out("ctrls=%d %s", len(found), strings.Join(found, " "))
	if len(found) != want {
		return fmt.Errorf("%d controllers of %s (%v), want %d", len(found), args[0], found, want)
	}
	return nil
}
