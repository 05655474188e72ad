package system

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nexstor/nexstor/internal/testutil"
)

// TestCSIPlugin runs `nexstor csi` as Kubernetes would, against a system
// with mutual TLS, presenting the csi certificate: the controller
// provisions, publishes, expands, unpublishes and deletes through the
// management service (the only service that role may call), and the node
// plugin answers as its member.
func TestCSIPlugin(t *testing.T) {
	c := newCluster(t, clusterOptions{nodes: 2, accessPoints: 1})
	c.start()
	for _, n := range c.nodes {
		n.waitLog("waiting in maintenance mode", 30*time.Second)
	}
	c.mustNexctl("storage", "format", "-l", c.hosts())
	c.waitMembers("all joined", 60*time.Second, c.allState("joined"))

	dir := t.TempDir()
	sock := filepath.Join(dir, "csi.sock")
	out := &testutil.SyncBuffer{}
	plugin := exec.Command(testutil.BuildBinary(t, "nexstor"), "csi", "--mode", "controller,node", "--endpoint", "unix://"+sock,
		"-a", strings.Join(c.aps, ","), "--cert-dir", c.certs, "--node-name", "node0", "--state-dir", filepath.Join(dir, "state"),
		"--host-nqn", "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427")
	plugin.Stdout, plugin.Stderr = out, out
	plugin.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := plugin.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- plugin.Wait() }()
	t.Cleanup(func() {
		plugin.Process.Kill()
		if t.Failed() {
			t.Logf("nexstor csi:\n%s", out.String())
		}
	})
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id, ctl, node := csi.NewIdentityClient(cc), csi.NewControllerClient(cc), csi.NewNodeClient(cc)

	// Ready once the management service answers the csi certificate.
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := id.Probe(ctx, &csi.ProbeRequest{})
		if err == nil && p.GetReady().GetValue() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the plugin is not ready: %v %v", p, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if info, err := id.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{}); err != nil || info.GetName() != "csi.nexstor.io" {
		t.Fatalf("plugin info: %v %v", info, err)
	}
	ni, err := node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "node0" || ni.GetAccessibleTopology().GetSegments()["topology.nexstor.io/node"] != "node0" {
		t.Fatalf("node info: %v %v", ni, err)
	}

	rwo := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}}}
	cv, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-7c0e9d1e-3b8a-4d52-9f21-5a6b7c8d9e0f",
		VolumeCapabilities: []*csi.VolumeCapability{rwo}, CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
		Parameters: map[string]string{"repl": "2", "thin": "true"}})
	if err != nil {
		t.Fatal(err)
	}
	volID := cv.GetVolume().GetVolumeId()
	v := c.volume("get", "pvc-7c0e9d1e-3b8a-4d52-9f21-5a6b7c8d9e0f")
	if v.Spec.UUID != volID || v.Spec.Replicas != 2 || len(v.Status.Replicas) != 2 {
		t.Fatalf("created %+v", v)
	}
	pub, err := ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: volID, NodeId: "node0", VolumeCapability: rwo})
	if err != nil {
		t.Fatal(err)
	}
	v = c.volume("get", volID)
	if v.Status.Target == nil || pub.GetPublishContext()["uri"] != v.Status.Target.URI || pub.GetPublishContext()["hostNqn"] == "" {
		t.Fatalf("published: %v, volume %+v", pub.GetPublishContext(), v.Status.Target)
	}
	if ex, err := ctl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: volID,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 24 << 20}, VolumeCapability: rwo}); err != nil || ex.GetCapacityBytes() != 24<<20 {
		t.Fatalf("expand: %v %v", ex, err)
	}
	if capa, err := ctl.GetCapacity(ctx, &csi.GetCapacityRequest{}); err != nil || capa.GetAvailableCapacity() <= 0 {
		t.Fatalf("capacity: %v %v", capa, err)
	}
	if _, err := ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: volID, NodeId: "node0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volID}); err != nil {
		t.Fatal(err)
	}
	if inv := c.inventory(); len(inv) != 0 {
		t.Fatalf("left behind after DeleteVolume: %v", inv)
	}

	// SIGTERM stops it cleanly.
	plugin.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("nexstor csi exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nexstor csi still running 30s after SIGTERM")
	}
}
