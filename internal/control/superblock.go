// Package control holds the node-local half of the control plane: the node
// superblock that makes a node "formatted" (its UUID, system name and rank)
// and the format operation that writes it.
//
// The superblock lives at <metadata_dir>/superblock.json as a checksummed
// JSON envelope. It is replaced atomically (temporary file, fsync, rename,
// fsync of the directory), so after a crash the node has the old superblock
// or the new one, never a torn one; a damaged file is detected by its
// checksum and reported, never silently reformatted.
package control

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/nexstor/nexstor/internal/fsutil"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/fault"
)

// SuperblockFile is the superblock's file name inside metadata_dir.
const SuperblockFile = "superblock.json"

// SuperblockVersion is the format version this code writes and reads.
const SuperblockVersion = 1

// NoRank marks a node that has not been given a rank by the management
// service yet.
const NoRank = math.MaxUint32

// Superblock is the identity of a formatted node.
type Superblock struct {
	Version int `json:"version"`
	// UUID identifies the node for its whole formatted life; the
	// management service gives the same UUID the same rank back.
	UUID uuid.UUID `json:"uuid"`
	// System is the name of the system the node was formatted for.
	System string `json:"system"`
	// Rank is the rank the management service assigned, NoRank before
	// the first join.
	Rank uint32 `json:"rank"`
	// FormattedAt is when the node was formatted (UTC).
	FormattedAt time.Time `json:"formatted_at"`
}

// HasRank reports whether a rank was assigned.
func (sb *Superblock) HasRank() bool { return sb.Rank != NoRank }

// HostNQNPrefix starts every UUID-based NVMe host NQN (NVMe Base
// Specification, 4.5): the node's host NQN is this prefix and its UUID.
const HostNQNPrefix = "nqn.2014-08.org.nvmexpress:uuid:"

// HostNQN returns the NVMe host NQN of the node whose superblock UUID is
// node: the same on every start of the node, distinct between nodes, and
// new only when the node is reformatted (which gives it a new UUID). The
// node's engine connects to remote replicas with it.
func HostNQN(node uuid.UUID) string { return HostNQNPrefix + node.String() }

// HostNQN returns the node's NVMe host NQN; see the function HostNQN.
func (sb *Superblock) HostNQN() string { return HostNQN(sb.UUID) }

type envelope struct {
	Superblock json.RawMessage `json:"superblock"`
	// Checksum is "sha256:<hex>" of the compact JSON encoding of Superblock.
	Checksum string `json:"checksum"`
}

// Fault codes of this package.
const (
	CodeNotFormatted     = "control.not_formatted"
	CodeFormatted        = "control.already_formatted"
	CodeCorrupt          = "control.superblock_corrupt"
	CodeForeignSystem    = "control.foreign_system"
	CodeSuperblockAccess = "control.superblock_io"
)

// Sentinel faults; match them with errors.Is.
var (
	ErrNotFormatted = fault.New(fault.FailedPrecondition, CodeNotFormatted, "this node is not formatted",
		"run `nexctl storage format` to format it")
	ErrFormatted = fault.New(fault.AlreadyExists, CodeFormatted, "this node is already formatted",
		"nothing was changed; add --force to reformat (the node gets a new identity and its pools are recreated)")
	ErrCorrupt = fault.New(fault.FailedPrecondition, CodeCorrupt, "the node superblock is damaged",
		"restore it from a backup, or reformat the node with `nexctl storage format --force`")
)

// ReadSuperblock reads and verifies the superblock in dir. A missing file is
// ErrNotFormatted; a bad checksum, bad JSON or unknown version is ErrCorrupt.
func ReadSuperblock(dir string) (*Superblock, error) {
	path := filepath.Join(dir, SuperblockFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", path, ErrNotFormatted)
	}
	if err != nil {
		return nil, fault.Wrap(err, fault.Internal, CodeSuperblockAccess, "read node superblock",
			"check that metadata_dir is readable")
	}
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrCorrupt, err)
	}
	// The checksum covers the compact encoding, so that indentation is
	// free to change.
	var compact bytes.Buffer
	if err := json.Compact(&compact, env.Superblock); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrCorrupt, err)
	}
	sum := sha256.Sum256(compact.Bytes())
	if env.Checksum != "sha256:"+hex.EncodeToString(sum[:]) {
		return nil, fmt.Errorf("%s: %w: checksum mismatch", path, ErrCorrupt)
	}
	var sb Superblock
	if err := json.Unmarshal(env.Superblock, &sb); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrCorrupt, err)
	}
	if sb.Version != SuperblockVersion {
		return nil, fmt.Errorf("%s: %w: version %d, this build reads %d", path, ErrCorrupt, sb.Version, SuperblockVersion)
	}
	if sb.UUID == uuid.Nil || sb.System == "" {
		return nil, fmt.Errorf("%s: %w: no UUID or system name", path, ErrCorrupt)
	}
	return &sb, nil
}

// WriteSuperblock replaces the superblock in dir (created 0700 when
// missing) atomically and durably: when it returns nil the new superblock
// survives a crash; when it fails the old one is intact.
func WriteSuperblock(dir string, sb *Superblock) error {
	payload, err := json.Marshal(sb)
	if err != nil {
		return fmt.Errorf("superblock: %w", err)
	}
	sum := sha256.Sum256(payload)
	data, err := json.MarshalIndent(envelope{Superblock: payload, Checksum: "sha256:" + hex.EncodeToString(sum[:])}, "", "  ")
	if err != nil {
		return fmt.Errorf("superblock: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fault.Wrap(err, fault.Internal, CodeSuperblockAccess, "write node superblock",
			"check that metadata_dir is writable and has space")
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, SuperblockFile), append(data, '\n'), 0o600); err != nil {
		return fault.Wrap(err, fault.Internal, CodeSuperblockAccess, "write node superblock",
			"check that metadata_dir is writable and has space")
	}
	return nil
}

// FormatOptions controls Format.
type FormatOptions struct {
	// Force reformats a formatted (or damaged) node: it gets a new UUID
	// and no rank.
	Force bool
	// Prepare, when set, runs after the checks and before the superblock
	// is written; it creates the configured pools. If it fails nothing is
	// written and the node stays unformatted (or keeps its old superblock),
	// so a format can simply be retried.
	Prepare func(sb *Superblock) error
	// Now is the format time (time.Now when zero).
	Now time.Time
}

// Format formats the node whose metadata directory is dir for system. On a
// formatted node without Force it returns ErrFormatted (wrapped, naming the
// existing identity) and changes nothing; the same for a damaged superblock
// (ErrCorrupt). The superblock is written last: it is what makes the node
// formatted.
func Format(dir, system string, opts FormatOptions) (*Superblock, error) {
	if system == "" {
		return nil, fault.New(fault.InvalidArgument, "control.no_system", "format: empty system name",
			"set name in the server configuration")
	}
	old, err := ReadSuperblock(dir)
	switch {
	case err == nil && !opts.Force:
		return nil, fmt.Errorf("node %s of system %q, formatted %s: %w", old.UUID, old.System,
			old.FormattedAt.Format(time.RFC3339), ErrFormatted)
	case errors.Is(err, ErrCorrupt) && !opts.Force:
		return nil, err
	case err != nil && !errors.Is(err, ErrNotFormatted) && !errors.Is(err, ErrCorrupt):
		return nil, err
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	sb := &Superblock{
		Version:     SuperblockVersion,
		UUID:        uuid.New(),
		System:      system,
		Rank:        NoRank,
		FormattedAt: now.UTC().Truncate(time.Second),
	}
	if opts.Prepare != nil {
		if err := opts.Prepare(sb); err != nil {
			return nil, fmt.Errorf("format: %w", err)
		}
	}
	if err := WriteSuperblock(dir, sb); err != nil {
		return nil, err
	}
	return sb, nil
}

// SetRank records the rank the management service assigned. It is a no-op
// when the rank is already recorded.
func SetRank(dir string, rank uint32) (*Superblock, error) {
	sb, err := ReadSuperblock(dir)
	if err != nil {
		return nil, err
	}
	if sb.Rank == rank {
		return sb, nil
	}
	sb.Rank = rank
	if err := WriteSuperblock(dir, sb); err != nil {
		return nil, err
	}
	return sb, nil
}

// CheckSystem returns a fault when the superblock belongs to another system
// than the configured one: the node was formatted for a different system
// and must not join this one.
func (sb *Superblock) CheckSystem(configured string) error {
	if sb.System == configured {
		return nil
	}
	return fault.New(fault.FailedPrecondition, CodeForeignSystem,
		fmt.Sprintf("this node was formatted for system %q but is configured for %q", sb.System, configured),
		"set name back to "+fmt.Sprintf("%q", sb.System)+" in the configuration, or reformat with --force")
}
