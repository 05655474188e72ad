package storage

import (
	"errors"
	"fmt"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/pool"
)

// PoolProbe is the ProbeFunc of a real node: it opens the device read-only,
// reads the pool superblock with pool.Probe and closes it again. A device
// without a Nexstor superblock holds no pool (nil, nil); a damaged pool
// superblock is reported as an error.
func PoolProbe(path string) (*PoolRef, error) {
	dev, err := bdev.OpenFile(path, bdev.FileOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer dev.Close()
	info, err := pool.Probe(dev)
	if errors.Is(err, pool.ErrNotPool) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", path, err)
	}
	return &PoolRef{Name: info.Name, UUID: info.UUID}, nil
}
