package storage

import (
	"path/filepath"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/pool"
)

func TestPoolProbe(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, withPool bool) string {
		path := filepath.Join(dir, name)
		dev, err := bdev.OpenFile(path, bdev.FileOptions{Create: true, Size: 64 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if withPool {
			p, err := pool.Create(dev, pool.CreateOptions{Name: "p0", ClusterSize: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			return path
		}
		dev.Close()
		return path
	}
	ref, err := PoolProbe(mk("pool.img", true))
	if err != nil || ref == nil || ref.Name != "p0" || ref.UUID == "" {
		t.Fatalf("probe of a pool: %+v, %v", ref, err)
	}
	if ref, err := PoolProbe(mk("blank.img", false)); err != nil || ref != nil {
		t.Fatalf("probe of a blank disk: %+v, %v", ref, err)
	}
	if _, err := PoolProbe(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("probe of a missing device succeeded")
	}
}
