package csi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/fault"
)

// DefaultNVMeConfigDir is where the host's NVMe identity lives, as
// nvme-cli keeps it: hostnqn and hostid.
const DefaultNVMeConfigDir = "/etc/nvme"

// uuidNQNPrefix starts the host NQNs made of a UUID (NVMe base spec
// 4.7, "nqn.2014-08.org.nvmexpress:uuid:<uuid>").
const uuidNQNPrefix = "nqn.2014-08.org.nvmexpress:uuid:"

// HostIdentity returns this host's NVMe host NQN and host ID from dir
// (DefaultNVMeConfigDir): the files hostnqn and hostid. A missing hostnqn
// is generated (a UUID NQN) and written, as `nvme gen-hostnqn` would; a
// missing hostid is derived from the NQN and written. Both files are
// written atomically (mode 0644) and never replaced once they exist.
func HostIdentity(dir string) (nqn, id string, err error) {
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return strings.TrimSpace(string(b)), err
	}
	if nqn, err = read("hostnqn"); err != nil {
		return "", "", hostIdentityErr(dir, err)
	}
	if nqn == "" {
		nqn = uuidNQNPrefix + uuid.NewString()
		if err := writeOnce(filepath.Join(dir, "hostnqn"), nqn+"\n"); err != nil {
			return "", "", hostIdentityErr(dir, err)
		}
		if nqn, err = read("hostnqn"); err != nil { // another writer may have won
			return "", "", hostIdentityErr(dir, err)
		}
	}
	if id, err = read("hostid"); err != nil {
		return "", "", hostIdentityErr(dir, err)
	}
	if id == "" {
		id = hostIDFor(nqn)
		if err := writeOnce(filepath.Join(dir, "hostid"), id+"\n"); err != nil {
			return "", "", hostIdentityErr(dir, err)
		}
		if id, err = read("hostid"); err != nil {
			return "", "", hostIdentityErr(dir, err)
		}
	}
	return nqn, id, nil
}

func hostIdentityErr(dir string, err error) error {
	return fault.Wrap(err, fault.Internal, CodeState, fmt.Sprintf("NVMe host identity in %s", dir),
		"give the node plugin a writable "+dir+" (a hostPath of the node's /etc/nvme), or set --host-nqn")
}

// writeOnce creates path with content, atomically, unless it exists.
func writeOnce(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// A hard link fails when path exists: the first writer wins.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// hostIDFor returns the host ID to connect with as host NQN nqn: the UUID
// of a UUID NQN, else a UUID derived from the NQN. The kernel refuses one
// host NQN with two host IDs (and one host ID with two NQNs), so every
// connect as one NQN must carry the same ID.
func hostIDFor(nqn string) string {
	if s, ok := strings.CutPrefix(nqn, uuidNQNPrefix); ok {
		if id, err := uuid.Parse(s); err == nil {
			return id.String()
		}
	}
	return uuid.NewSHA1(uuid.NameSpaceURL, []byte("nvme-hostnqn:"+nqn)).String()
}
