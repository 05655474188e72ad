package control

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/control/storage"
	"github.com/nexstor/nexstor/internal/pool"
)

func nodeConfig(t *testing.T) *config.Server {
	t.Helper()
	return config.Default().WithDataDir(t.TempDir()).WithName("sys").WithInsecure(true).
		WithPools(config.Pool{Name: "p0", Disk: "malloc:///p0?size=64MiB"}, config.Pool{Name: "p1", Disk: "/dev/vdb"})
}

func fakeScanner(t *testing.T) *storage.Scanner {
	t.Helper()
	sys := t.TempDir()
	for p, v := range map[string]string{"block/vdb/size": "2048\n", "block/vdb/queue/rotational": "0\n"} {
		os.MkdirAll(filepath.Join(sys, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(sys, p), []byte(v), 0o644)
	}
	return &storage.Scanner{SysRoot: sys, MountsFile: filepath.Join(sys, "none"),
		Probe: func(string) (*storage.PoolRef, error) { return &storage.PoolRef{Name: "p1", UUID: "u1"}, nil }}
}

func TestNodeServerFormat(t *testing.T) {
	ctx := context.Background()
	cfg := nodeConfig(t)
	var created []string
	fail := errors.New("disk busy")
	failOn := "p1"
	create := func(_ context.Context, p config.Pool, force bool) (string, error) {
		if p.Name == failOn {
			return "", fail
		}
		created = append(created, p.Name)
		return "uuid-" + p.Name, nil
	}
	n, err := NewNodeServer(cfg, fakeScanner(t), create, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := n.NodeInfo(ctx, &mgmtv1.NodeInfoRequest{})
	if info.Formatted || info.Mode != ModeMaintenance || info.System != "sys" {
		t.Fatalf("info %+v", info)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := n.WaitFormatted(waitCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFormatted on an unformatted node: %v", err)
	}
	cancel()

	// A pool that cannot be created fails the format and writes nothing.
	_, err = n.StorageFormat(ctx, &mgmtv1.StorageFormatRequest{})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "disk busy") {
		t.Fatalf("format with a failing pool: %v", err)
	}
	if _, err := ReadSuperblock(cfg.MetadataDir); !errors.Is(err, ErrNotFormatted) {
		t.Fatalf("superblock after failed format: %v", err)
	}

	failOn = ""
	waited := make(chan *Superblock, 1)
	go func() {
		sb, _ := n.WaitFormatted(context.Background())
		waited <- sb
	}()
	resp, err := n.StorageFormat(ctx, &mgmtv1.StorageFormatRequest{})
	if err != nil || len(resp.Pools) != 2 || resp.Pools[1].Uuid != "uuid-p1" || resp.System != "sys" {
		t.Fatalf("format: %+v, %v", resp, err)
	}
	if sb := <-waited; sb == nil || sb.UUID.String() != resp.Uuid {
		t.Fatalf("WaitFormatted returned %+v", sb)
	}
	info, _ = n.NodeInfo(ctx, &mgmtv1.NodeInfoRequest{})
	if !info.Formatted || info.Mode != ModeServing || info.Uuid != resp.Uuid || info.Rank != NoRank {
		t.Fatalf("info after format %+v", info)
	}

	// Formatting again without force: refused, nothing changes.
	created = nil
	_, err = n.StorageFormat(ctx, &mgmtv1.StorageFormatRequest{})
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "--force") || len(created) != 0 {
		t.Fatalf("second format: %v (created %v)", err, created)
	}
	if err := n.SetRank(2); err != nil {
		t.Fatal(err)
	}
	// A restarted server finds the node formatted, with its rank.
	n2, err := NewNodeServer(cfg, fakeScanner(t), create, nil)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := n2.WaitFormatted(ctx)
	if err != nil || sb.UUID.String() != resp.Uuid || sb.Rank != 2 {
		t.Fatalf("after restart: %+v, %v", sb, err)
	}
	// Forced: a new identity.
	resp2, err := n2.StorageFormat(ctx, &mgmtv1.StorageFormatRequest{Force: true})
	if err != nil || resp2.Uuid == resp.Uuid {
		t.Fatalf("forced format: %+v, %v", resp2, err)
	}
	// A node formatted for another system refuses to start for this one.
	if _, err := NewNodeServer(cfg.Clone().WithName("other"), nil, create, nil); err == nil ||
		!strings.Contains(err.Error(), `formatted for system "sys"`) {
		t.Fatalf("foreign system: %v", err)
	}
}

func TestNodeServerScan(t *testing.T) {
	n, err := NewNodeServer(nodeConfig(t), fakeScanner(t), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := n.StorageScan(context.Background(), &mgmtv1.StorageScanRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Disks) != 1 || resp.Disks[0].Path != "/dev/vdb" || resp.Disks[0].Size != 2048*512 ||
		resp.Disks[0].PoolName != "p1" || resp.Disks[0].NumaNode != -1 {
		t.Fatalf("disks %+v", resp.Disks)
	}
	if len(resp.Pools) != 2 || resp.Pools[0].ClusterSize != config.DefaultClusterSize {
		t.Fatalf("pools %+v", resp.Pools)
	}
	// Without a pool creator, configured pools cannot be formatted.
	if _, err := n.StorageFormat(context.Background(), &mgmtv1.StorageFormatRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("format without creator: %v", err)
	}
}

// TestNodeServerScanProbesPools checks that a node's own scanner probes
// every free disk for a pool superblock: a scan says which disk holds which
// pool.
func TestNodeServerScanProbesPools(t *testing.T) {
	n, err := NewNodeServer(nodeConfig(t), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The default scanner, pointed at a fake sysfs whose disk vdb is a
	// file holding a real pool.
	fake := fakeScanner(t)
	devs := t.TempDir()
	dev, err := bdev.OpenFile(filepath.Join(devs, "vdb"), bdev.FileOptions{Create: true, Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.Create(dev, pool.CreateOptions{Name: "fast", ClusterSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	n.scanner.SysRoot, n.scanner.DevRoot, n.scanner.MountsFile = fake.SysRoot, devs, fake.MountsFile
	resp, err := n.StorageScan(context.Background(), &mgmtv1.StorageScanRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Disks) != 1 || resp.Disks[0].PoolName != "fast" || resp.Disks[0].PoolUuid != p.UUID() {
		t.Fatalf("disks %+v, want vdb holding pool fast (%s)", resp.Disks, p.UUID())
	}
}
