package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/testutil"
)

// refuseURing is a probe of a kernel or container that refuses io_uring.
func refuseURing() error { return fmt.Errorf("io_uring_setup(4 entries): %w", syscall.EPERM) }

// preResolveBackend is the production backend without the disk resolution,
// as engines before io_uring became the default: it records disks as given.
type preResolveBackend struct{ b PoolBackend }

func (p preResolveBackend) CreatePool(uri string, o CreatePoolOptions) (PoolHandle, error) {
	return p.b.CreatePool(uri, o)
}
func (p preResolveBackend) ImportPool(uri string) (PoolHandle, error) { return p.b.ImportPool(uri) }

func startEngine(t *testing.T, data string, b Backend, pools ...PoolConfig) *Engine {
	t.Helper()
	e, err := New(Config{DataDir: data, Backend: b, Pools: pools, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestNewPoolDiskGetsURing: a new pool on a bare path or file:// records
// and opens uring://, and comes back as such after a restart; an explicit
// aio:// is kept.
func TestNewPoolDiskGetsURing(t *testing.T) {
	if err := bdev.ProbeURing(); err != nil {
		if errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EPERM) {
			testutil.Missing(t, fmt.Sprintf("io_uring (%v)", err))
		}
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	e := startEngine(t, data, PoolBackend{})
	want := map[string]string{}
	for name, disk := range map[string]string{
		"bare": filepath.Join(dir, "bare.img") + "?size=64MiB",
		"file": "file://" + filepath.Join(dir, "file.img") + "?size=64MiB",
		"aio":  "aio://" + filepath.Join(dir, "aio.img") + "?size=64MiB",
	} {
		p, err := e.CreatePool(ctx, PoolSpec{Name: name, Disk: disk})
		if err != nil {
			t.Fatalf("create %s on %s: %v", name, disk, err)
		}
		want[name] = "uring://" + filepath.Join(dir, name+".img") + "?size=64MiB"
		if name == "aio" {
			want[name] = disk
		}
		if p.Disk != want[name] {
			t.Errorf("pool %s on %s: disk %q, want %q", name, disk, p.Disk, want[name])
		}
	}
	e.Close()
	e = startEngine(t, data, PoolBackend{})
	defer e.Close()
	for name, disk := range want {
		p, err := e.Pool(name)
		if err != nil || p.State != PoolOnline || p.Disk != disk {
			t.Errorf("after a restart pool %s: %+v, %v; want online on %s", name, p, err, disk)
		}
	}
}

// TestNewPoolRefusedWithoutURing: where io_uring is refused, a new pool on
// a bare path or file:// (create, import, configuration) fails with
// bdev.uring_unavailable naming aio://, writes nothing, and aio:// works;
// a pool recorded before (file://, the pread/pwrite engine) keeps its URI
// and opens as before.
func TestNewPoolRefusedWithoutURing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	legacy := "file://" + filepath.Join(dir, "legacy.img") + "?size=64MiB"
	old := startEngine(t, data, preResolveBackend{})
	if _, err := old.CreatePool(ctx, PoolSpec{Name: "legacy", Disk: legacy}); err != nil {
		t.Fatal(err)
	}
	if _, err := old.CreateReplica(ctx, CreateReplicaOptions{Name: "r0", Pool: "legacy", Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	old.Close()

	refusing := PoolBackend{URingProbe: refuseURing}
	configured := filepath.Join(dir, "conf.img")
	e := startEngine(t, data, refusing, PoolConfig{Name: "conf", Disk: configured})
	defer e.Close()
	p, err := e.Pool("legacy")
	if err != nil || p.State != PoolOnline || p.Disk != legacy {
		t.Fatalf("recorded pool: %+v, %v; want online on %s", p, err, legacy)
	}
	if _, err := e.Replica("r0"); err != nil {
		t.Errorf("replica of the recorded pool: %v", err)
	}
	c, err := e.Pool("conf")
	if err != nil || c.State != PoolFaulted || !strings.Contains(c.Reason, "aio://"+configured) {
		t.Errorf("configured pool on a bare path: %+v, %v; want faulted, naming aio://%s", c, err, configured)
	}

	img := filepath.Join(dir, "d1.img")
	for _, disk := range []string{img + "?size=64MiB", "file://" + img + "?size=64MiB"} {
		_, err := e.CreatePool(ctx, PoolSpec{Name: "p1", Disk: disk})
		var flt *fault.Fault
		if !errors.As(err, &flt) || flt.Code != "bdev.uring_unavailable" || flt.Kind != fault.FailedPrecondition {
			t.Fatalf("create on %s without io_uring: %v; want the FailedPrecondition fault bdev.uring_unavailable", disk, err)
		}
		if !strings.Contains(flt.Resolution, "aio://"+img) {
			t.Errorf("resolution %q does not name aio://%s", flt.Resolution, img)
		}
		if !errors.Is(err, syscall.EPERM) {
			t.Errorf("fault %v does not wrap the kernel's EPERM", err)
		}
		if _, err := os.Stat(img); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a refused create left %s behind (%v)", img, err)
		}
		if _, err := e.Pool("p1"); err == nil {
			t.Error("a refused create left a pool p1")
		}
	}
	if _, err := e.ImportPool(ctx, "", filepath.Join(dir, "legacy.img")); err == nil {
		t.Error("import on a bare path without io_uring succeeded")
	}
	p1, err := e.CreatePool(ctx, PoolSpec{Name: "p1", Disk: "aio://" + img + "?size=64MiB"})
	if err != nil || p1.Disk != "aio://"+img+"?size=64MiB" {
		t.Fatalf("create on aio:// without io_uring: %+v, %v", p1, err)
	}
}
