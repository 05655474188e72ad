package config

import (
	"fmt"
	"os"
	"path/filepath"
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
	tmp, err := os.CreateTemp(dir, "."+EffectiveFileName+".*")
	if err != nil {
		return "", fmt.Errorf("effective config: %w", err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(append([]byte(effectiveHeader), data...)); err != nil {
		return "", fmt.Errorf("effective config %s: %w", path, err)
	}
	if err := tmp.Chmod(0o444); err != nil {
		return "", fmt.Errorf("effective config %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("effective config %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("effective config %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("effective config %s: %w", path, err)
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		// Make the rename durable; a failure here loses nothing but the
		// rename itself, which the next start redoes.
		_ = d.Sync()
		d.Close()
	}
	return path, nil
}
