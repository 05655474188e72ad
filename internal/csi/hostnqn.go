package csi

import (
	"fmt"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nvmehost"
)

// DefaultNVMeConfigDir is where the host's NVMe identity lives, as
// nvme-cli keeps it: hostnqn and hostid.
const DefaultNVMeConfigDir = nvmehost.DefaultConfigDir

// HostIdentity returns this host's NVMe host NQN and host ID from dir
// (nvmehost.HostIdentity: generated and written when missing, never
// replaced), as a fault that says how to give the plugin the directory.
func HostIdentity(dir string) (nqn, id string, err error) {
	nqn, id, err = nvmehost.HostIdentity(dir)
	if err != nil {
		return "", "", fault.Wrap(err, fault.Internal, CodeState, fmt.Sprintf("NVMe host identity in %s", dir),
			"give the node plugin a writable "+dir+" (a hostPath of the node's /etc/nvme), or set --host-nqn")
	}
	return nqn, id, nil
}
