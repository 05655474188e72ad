package csi

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	ctlserver "github.com/nexstor/nexstor/internal/control/server"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
	"github.com/nexstor/nexstor/internal/testutil"
)

// devSystem is a whole Nexstor system in this test process (the one
// `nexstor dev` runs): three storage nodes node-0..node-2 with a file
// pool each, the management service on node 0. The tests of the package
// share it; TestMain stops it.
type devSystem struct {
	ap      string
	members []*mgmtv1.Member
	client  *mgmtclient.Client
	logs    *testutil.SyncBuffer
	stop    func()
}

var (
	devOnce sync.Once
	devSys  *devSystem
	devErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if devSys != nil {
		devSys.stop()
	}
	os.Exit(code)
}

// startDev returns the shared system, starting it on first use.
func startDev(t *testing.T) *devSystem {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: a whole system in-process is slow; not in -short mode")
	}
	devOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nexstor-csi-dev-")
		if err != nil {
			devErr = err
			return
		}
		base := testutil.FreePortRange(t, 16)
		logs := &testutil.SyncBuffer{}
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan ctlserver.DevSystem, 1)
		done := make(chan error, 1)
		o := ctlserver.DevOptions{Nodes: 3, DataDir: dir, GRPCPort: base, NVMfPort: base + 3, NBDPort: base + 6, EtcdPort: base + 9,
			DiscoveryPort: base + 11, MetricsPort: -1, PoolSize: "2GiB", HeartbeatInterval: 200 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
			Ready:  func(s ctlserver.DevSystem) { ready <- s }}
		go func() { done <- ctlserver.RunDev(ctx, o) }()
		var sys ctlserver.DevSystem
		select {
		case sys = <-ready:
		case err := <-done:
			cancel()
			devErr = fmt.Errorf("dev system: %v\n%s", err, logs.String())
			return
		case <-time.After(3 * time.Minute):
			cancel()
			<-done
			devErr = fmt.Errorf("dev system not up after 3 minutes\n%s", logs.String())
			return
		}
		ap := sys.Configs[0].GRPCListen
		cl, err := mgmtclient.New([]string{ap}, mgmtclient.Options{Insecure: true})
		if err != nil {
			cancel()
			<-done
			devErr = err
			return
		}
		devSys = &devSystem{ap: ap, members: sys.Members, client: cl, logs: logs, stop: func() {
			cl.Close()
			cancel()
			<-done
			os.RemoveAll(dir)
		}}
	})
	if devErr != nil {
		t.Fatal(devErr)
	}
	return devSys
}

// volumes lists the system's volumes.
func (d *devSystem) volumes(t *testing.T) []*mgmtv1.Volume {
	t.Helper()
	var out []*mgmtv1.Volume
	err := d.client.DoVolume(context.Background(), func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		resp, err := cl.ListVolumes(ctx, &mgmtv1.ListVolumesRequest{})
		out = resp.GetVolumes()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (d *devSystem) snapshots(t *testing.T) []*mgmtv1.VolumeSnapshot {
	t.Helper()
	var out []*mgmtv1.VolumeSnapshot
	err := d.client.DoVolume(context.Background(), func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		resp, err := cl.ListSnapshots(ctx, &mgmtv1.ListSnapshotsRequest{})
		out = resp.GetSnapshots()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// requireLoop skips (fails under CI) where the test cannot attach loop
// devices and mount: not root, or no loop driver.
func requireLoop(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Missing(t, "root (to attach loop devices and mount)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		testutil.Missing(t, "/dev/loop-control (the loop device driver)")
	}
	testutil.RequireTool(t, "mke2fs")
	testutil.RequireTool(t, "resize2fs")
}
