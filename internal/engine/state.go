package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/nexstor/nexstor/internal/fsutil"
)

// StateFileName is the name of the engine's state file in the data dir.
const StateFileName = "engine-state.json"

const stateVersion = 1

// persistentState is what the engine remembers across restarts: the pools it
// imported or created (beyond those in the config) and how replicas are
// shared. Everything else lives on the pools' disks.
type persistentState struct {
	Version int          `json:"version"`
	Pools   []statePool  `json:"pools"`
	Shares  []stateShare `json:"shares"`
	Nexuses []stateNexus `json:"nexuses,omitempty"`
}

// stateNexus is a nexus to recreate at start. The health of its children is
// not here but in the health store, which is written before an I/O that
// changes it is acknowledged.
type stateNexus struct {
	Name     string      `json:"name"`
	UUID     string      `json:"uuid"`
	Size     int64       `json:"size"`
	Children []string    `json:"children"`
	Share    *stateShare `json:"share,omitempty"` // Replica unused
	// LeftOut are children dropped at a restore, still counted as missing.
	LeftOut []LeftOutChild `json:"left_out,omitempty"`
	// HealthStore is where its health record is: "" (the node's file
	// store, "local") or "system".
	HealthStore string `json:"health_store,omitempty"`
}

type statePool struct {
	Name string `json:"name"`
	UUID string `json:"uuid,omitempty"`
	Disk string `json:"disk"`
	// Labels set with SetPoolLabels.
	Labels map[string]string `json:"labels,omitempty"`
}

type stateShare struct {
	Replica      string   `json:"replica"`
	Protocol     string   `json:"protocol"`
	AllowedHosts []string `json:"allowed_hosts,omitempty"`
	// A nexus's nvmf publication: controller ID range and ANA state (its
	// name, as nvme.ANAState.String writes it); absent: the defaults.
	MinCNTLID uint16 `json:"min_cntlid,omitempty"`
	MaxCNTLID uint16 `json:"max_cntlid,omitempty"`
	ANAState  string `json:"ana_state,omitempty"`
}

// loadState reads the state file; a missing file is an empty state.
func loadState(path string) (persistentState, error) {
	var st persistentState
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return persistentState{Version: stateVersion}, nil
	}
	if err != nil {
		return st, fmt.Errorf("engine state %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("engine state %s is corrupt (move it away to start empty; pools can be imported again): %w", path, err)
	}
	if st.Version != stateVersion {
		return st, fmt.Errorf("engine state %s has version %d, this engine reads version %d", path, st.Version, stateVersion)
	}
	return st, nil
}

func saveState(path string, st persistentState) error {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := fsutil.WriteFileAtomic(path, b, 0o600); err != nil {
		return fmt.Errorf("engine state %s: %w", path, err)
	}
	return nil
}
