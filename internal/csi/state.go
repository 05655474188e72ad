package csi

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/nexstor/nexstor/internal/fault"
)

// record is what the node knows of one volume it stages: written before
// the volume is attached (so that an interrupted stage is undone by the
// unstage that follows) and removed once it is detached.
type record struct {
	VolumeID    string `json:"volume_id"`
	Target      Target `json:"target"`
	StagingPath string `json:"staging_path"`
	Block       bool   `json:"block"`
	// FsType is the file system mounted at StagingPath (mount volumes).
	FsType string `json:"fs_type,omitempty"`
	// AccessMode is the CSI access mode it was staged with.
	AccessMode string `json:"access_mode"`
	Device     string `json:"device,omitempty"`
	// Staged: the stage completed.
	Staged  bool            `json:"staged"`
	Targets []publishRecord `json:"targets,omitempty"`
}

// publishRecord is one NodePublishVolume target of a volume.
type publishRecord struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only"`
}

func (r *record) target(path string) *publishRecord {
	for i := range r.Targets {
		if r.Targets[i].Path == path {
			return &r.Targets[i]
		}
	}
	return nil
}

func (r *record) removeTarget(path string) {
	r.Targets = slices.DeleteFunc(r.Targets, func(p publishRecord) bool { return p.Path == path })
}

// stateStore keeps records as <dir>/<volume-id>.json, each replaced
// atomically (written to a temporary file, synced, renamed, the directory
// synced), so that a crash leaves the old record or the new one.
type stateStore struct {
	dir string
}

func stateErr(err error, what string) error {
	return fault.Wrap(err, fault.Internal, CodeState, what,
		"give the node plugin a writable state directory on the node (--state-dir, a hostPath that survives restarts)")
}

func (s stateStore) path(id string) string { return filepath.Join(s.dir, id+".json") }

// load returns the volume's record, nil when there is none.
func (s stateStore) load(id string) (*record, error) {
	if !isVolumeID(id) {
		return nil, nil
	}
	b, err := os.ReadFile(s.path(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, stateErr(err, "read the state of volume "+id)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, stateErr(err, fmt.Sprintf("state of volume %s (%s)", id, s.path(id)))
	}
	return &r, nil
}

func (s stateStore) save(r *record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return stateErr(err, "encode the state of volume "+r.VolumeID)
	}
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return stateErr(err, "state directory "+s.dir)
	}
	tmp, err := os.CreateTemp(s.dir, "."+r.VolumeID+".*")
	if err != nil {
		return stateErr(err, "save the state of volume "+r.VolumeID)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), s.path(r.VolumeID))
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		return stateErr(err, "save the state of volume "+r.VolumeID)
	}
	return nil
}

func (s stateStore) remove(id string) error {
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return stateErr(err, "remove the state of volume "+id)
	}
	if err := syncDir(s.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return stateErr(err, "remove the state of volume "+id)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
