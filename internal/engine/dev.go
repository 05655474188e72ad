package engine

import (
	"fmt"
	"path/filepath"

	"github.com/nexstor/nexstor/internal/fault"
)

// Names and sizes of what `nexstor dev` sets up.
const (
	DevPool        = "dev"
	DevReplica     = "demo"
	DevPoolSize    = 1 << 30   // the sparse file backing the dev pool
	DevReplicaSize = 512 << 20 // the thin demo replica
	DevPoolFile    = "dev-pool.img"
)

// SetupDev makes sure the dev pool (a sparse file in dataDir), the thin demo
// replica and its NBD share exist, creating what is missing; on a second
// start everything is found again and reused. When the engine serves
// NVMe/TCP the replica is shared over it too, admitting any host. It returns
// the demo replica with its shares.
func SetupDev(e *Engine, dataDir string) (ReplicaInfo, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return ReplicaInfo{}, err
	}
	disk := "file://" + filepath.Join(abs, DevPoolFile)
	if _, err := e.Pool(DevPool); IsFault(err, fault.NotFound) {
		// The file may hold the pool while the state file was lost: import
		// before creating, so that a restart never formats the dev pool.
		if _, ierr := e.ImportPool(DevPool, disk); ierr != nil {
			if _, err := e.CreatePool(DevPool, fmt.Sprintf("%s?size=%d", disk, DevPoolSize), 0, false); err != nil {
				return ReplicaInfo{}, fmt.Errorf("dev pool: %w", err)
			}
		}
	} else if err != nil {
		return ReplicaInfo{}, err
	}
	if p, _ := e.Pool(DevPool); p.State != PoolOnline {
		return ReplicaInfo{}, fmt.Errorf("dev pool: %s", p.Reason)
	}
	if _, err := e.Replica(DevReplica); IsFault(err, fault.NotFound) {
		if _, err := e.CreateReplica(CreateReplicaOptions{Name: DevReplica, Pool: DevPool, Size: DevReplicaSize, Thin: true}); err != nil {
			return ReplicaInfo{}, fmt.Errorf("dev replica: %w", err)
		}
	} else if err != nil {
		return ReplicaInfo{}, err
	}
	ri, err := e.ShareReplica(DevReplica, ProtocolNBD, nil)
	if err != nil || e.cfg.NVMf == nil {
		return ri, err
	}
	return e.ShareReplica(DevReplica, ProtocolNVMf, nil)
}
