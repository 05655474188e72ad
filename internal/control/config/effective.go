package config

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/nexstor/nexstor/internal/fsutil"
)

const effectiveHeader = "# Effective configuration of this nexstor server: the file, defaults and\n" +
	"# command-line flags combined. Written at start; edits here have no effect.\n"

// WriteEffective writes the complete configuration (every key, defaults
// included) to dir/server.effective.yaml and returns its path. The file is
// written to a temporary name, synced, made read-only (0444) and renamed
// into place, so a reader sees the old or the new file, never a mix; a
// read-only file from a previous start is replaced. dir is created (0755)
// when missing.
func (s *Server) WriteEffective(dir string) (string, error) {
	data, err := s.Marshal()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("effective config: %w", err)
	}
	path := filepath.Join(dir, EffectiveFileName)
	if err := fsutil.WriteFileAtomic(path, append([]byte(effectiveHeader), data...), 0o444); err != nil {
		return "", fmt.Errorf("effective config: %w", err)
	}
	return path, nil
}
