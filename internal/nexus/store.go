package nexus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/nexstor/nexstor/internal/fsutil"
)

// HealthRecord is the persisted health set of a nexus: which children are
// current. A recreated nexus trusts only the children recorded as online.
type HealthRecord struct {
	NexusUUID string `json:"nexus_uuid"`
	// Generation increases by one with every change the nexus saves.
	Generation uint64 `json:"generation"`
	// SegmentSize is the granularity of the offline bitmaps, in bytes.
	SegmentSize int64 `json:"segment_size"`
	// Clean is true only in the record saved by Nexus.Close, when no
	// write was in flight. A nexus that finds it false was not closed:
	// the writes in flight when it died were never acknowledged, but they
	// may have reached some children and not others (see
	// Nexus.UncleanShutdown).
	Clean bool `json:"clean"`
	// Epoch is the nexus's fencing epoch: every online child holds a
	// claim at this epoch, and a child that left or is being rebuilt a
	// lower one. A new instance claims its children at a higher epoch
	// than this and any child's, and saves it before claiming.
	Epoch    uint64        `json:"epoch,omitempty"`
	Children []ChildHealth `json:"children"`
}

// ChildHealth is one child's entry in a HealthRecord.
type ChildHealth struct {
	URI    string      `json:"uri"`
	State  ChildState  `json:"state"`
	Reason FaultReason `json:"reason,omitempty"`
	// Identity is the replica's bdev.Identity string, learned when the
	// child was first admitted; empty for devices without one. A device
	// that reports another identity is not this child.
	Identity string `json:"identity,omitempty"`
	// Bitmap has one bit per segment (LSB first) that the child may lack:
	// written while it was offline, and, for a child that left on an
	// error, written but not yet flushed on it when it left. Set only for
	// offline children.
	Bitmap []byte `json:"bitmap,omitempty"`
}

// HealthStore persists health records. Implementations must be safe for
// concurrent use.
type HealthStore interface {
	// Load returns the last saved record of the nexus, or an error
	// wrapping ErrNoRecord when there is none.
	Load(ctx context.Context, nexusUUID string) (HealthRecord, error)
	// Save replaces the record atomically; it is durable when Save
	// returns nil. A nexus that gets an error from Save stops serving I/O.
	Save(ctx context.Context, rec HealthRecord) error
	// Delete forgets the record (the nexus was destroyed). Deleting a
	// missing record is not an error.
	Delete(ctx context.Context, nexusUUID string) error
}

// FileStore keeps one file per nexus in a directory: a JSON envelope with
// the record and its CRC32C, replaced atomically (temporary file, fsync,
// rename, fsync of the directory).
type FileStore struct {
	dir string
	mu  sync.Mutex
}

// NewFileStore returns a store under dir, creating it if needed.
func NewFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nexus health store %q: %w", dir, err)
	}
	return &FileStore{dir: dir}, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type fileEnvelope struct {
	Version  int             `json:"version"`
	Checksum uint32          `json:"crc32c"`
	Record   json.RawMessage `json:"record"`
}

func (s *FileStore) path(uuid string) (string, error) {
	if uuid == "" || strings.ContainsAny(uuid, `/\`) || uuid == "." || uuid == ".." {
		return "", fmt.Errorf("nexus health store: invalid nexus UUID %q: use a UUID without path separators", uuid)
	}
	return filepath.Join(s.dir, uuid+".health.json"), nil
}

// Load implements HealthStore. A record whose checksum does not match is an
// error, never silently ignored.
func (s *FileStore) Load(_ context.Context, uuid string) (HealthRecord, error) {
	p, err := s.path(uuid)
	if err != nil {
		return HealthRecord{}, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return HealthRecord{}, fmt.Errorf("nexus %s: %w", uuid, ErrNoRecord)
	}
	if err != nil {
		return HealthRecord{}, fmt.Errorf("nexus %s: health store: %w", uuid, err)
	}
	var env fileEnvelope
	if err := json.Unmarshal(b, &env); err != nil {
		return HealthRecord{}, fmt.Errorf("nexus %s: health record %s is corrupt: %w", uuid, p, err)
	}
	if env.Version != 1 {
		return HealthRecord{}, fmt.Errorf("nexus %s: health record %s has unsupported version %d", uuid, p, env.Version)
	}
	if crc32.Checksum(env.Record, castagnoli) != env.Checksum {
		return HealthRecord{}, fmt.Errorf("nexus %s: health record %s fails its checksum; restore it or recreate the nexus with --force", uuid, p)
	}
	var rec HealthRecord
	if err := json.Unmarshal(env.Record, &rec); err != nil {
		return HealthRecord{}, fmt.Errorf("nexus %s: health record %s is corrupt: %w", uuid, p, err)
	}
	return rec, nil
}

// Save implements HealthStore.
func (s *FileStore) Save(_ context.Context, rec HealthRecord) error {
	p, err := s.path(rec.NexusUUID)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("nexus %s: encode health record: %w", rec.NexusUUID, err)
	}
	b, err := json.Marshal(fileEnvelope{Version: 1, Checksum: crc32.Checksum(raw, castagnoli), Record: raw})
	if err != nil {
		return fmt.Errorf("nexus %s: encode health record: %w", rec.NexusUUID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := fsutil.WriteFileAtomic(p, b, 0o600); err != nil {
		return fmt.Errorf("nexus %s: save health record: %w", rec.NexusUUID, err)
	}
	return nil
}

// Delete implements HealthStore.
func (s *FileStore) Delete(_ context.Context, uuid string) error {
	p, err := s.path(uuid)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("nexus %s: delete health record: %w", uuid, err)
	}
	return fsutil.SyncDir(filepath.Dir(p))
}

// MemStore is a HealthStore in memory, for nexuses whose health need not
// survive the process (and for tests).
type MemStore struct {
	mu   sync.Mutex
	recs map[string]HealthRecord
}

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore { return &MemStore{recs: map[string]HealthRecord{}} }

// Load implements HealthStore.
func (s *MemStore) Load(_ context.Context, uuid string) (HealthRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[uuid]
	if !ok {
		return HealthRecord{}, fmt.Errorf("nexus %s: %w", uuid, ErrNoRecord)
	}
	return cloneRecord(r), nil
}

// Save implements HealthStore.
func (s *MemStore) Save(_ context.Context, rec HealthRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs[rec.NexusUUID] = cloneRecord(rec)
	return nil
}

// Delete implements HealthStore.
func (s *MemStore) Delete(_ context.Context, uuid string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.recs, uuid)
	return nil
}

func cloneRecord(r HealthRecord) HealthRecord {
	c := r
	c.Children = make([]ChildHealth, len(r.Children))
	for i, ch := range r.Children {
		ch.Bitmap = append([]byte(nil), ch.Bitmap...)
		c.Children[i] = ch
	}
	return c
}
