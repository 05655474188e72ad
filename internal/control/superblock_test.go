package control

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nexstor/nexstor/internal/fault"
)

func TestFormat(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "meta")
	if _, err := ReadSuperblock(dir); !errors.Is(err, ErrNotFormatted) {
		t.Fatalf("unformatted: %v, want ErrNotFormatted", err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	sb, err := Format(dir, "sys", FormatOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if sb.System != "sys" || sb.HasRank() || !sb.FormattedAt.Equal(now) {
		t.Fatalf("superblock %+v", sb)
	}
	got, err := ReadSuperblock(dir)
	if err != nil || *got != *sb {
		t.Fatalf("read back %+v, %v; want %+v", got, err, sb)
	}
	st, _ := os.Stat(filepath.Join(dir, SuperblockFile))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}

	// Formatting again without force fails and changes nothing.
	before, _ := os.ReadFile(filepath.Join(dir, SuperblockFile))
	_, err = Format(dir, "sys", FormatOptions{})
	if !errors.Is(err, ErrFormatted) || fault.KindOf(err) != fault.AlreadyExists || fault.ResolutionOf(err) == "" {
		t.Fatalf("second format: %v, want ErrFormatted with a resolution", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, SuperblockFile))
	if !bytes.Equal(before, after) {
		t.Fatal("failed format changed the superblock")
	}

	// Force gives a new identity.
	sb2, err := Format(dir, "sys", FormatOptions{Force: true})
	if err != nil || sb2.UUID == sb.UUID {
		t.Fatalf("forced format: %+v, %v", sb2, err)
	}
}

func TestFormatPrepareFailureLeavesNodeUnformatted(t *testing.T) {
	dir := t.TempDir()
	boom := errors.New("disk missing")
	_, err := Format(dir, "sys", FormatOptions{Prepare: func(*Superblock) error { return boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("Format = %v", err)
	}
	if _, err := ReadSuperblock(dir); !errors.Is(err, ErrNotFormatted) {
		t.Fatalf("after failed prepare: %v, want ErrNotFormatted", err)
	}
	var seen *Superblock
	sb, err := Format(dir, "sys", FormatOptions{Prepare: func(s *Superblock) error { seen = s; return nil }})
	if err != nil || seen == nil || seen.UUID != sb.UUID {
		t.Fatalf("prepare did not see the new superblock: %v", err)
	}
}

func TestSuperblockCorruption(t *testing.T) {
	dir := t.TempDir()
	if _, err := Format(dir, "sys", FormatOptions{}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, SuperblockFile)
	data, _ := os.ReadFile(path)
	bad := bytes.Replace(data, []byte(`"sys"`), []byte(`"sYs"`), 1)
	if bytes.Equal(bad, data) {
		t.Fatalf("test did not alter the file:\n%s", data)
	}
	os.WriteFile(path, bad, 0o600)
	if _, err := ReadSuperblock(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("tampered superblock: %v, want ErrCorrupt", err)
	}
	if _, err := Format(dir, "sys", FormatOptions{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("format over a damaged superblock without force: %v", err)
	}
	os.WriteFile(path, []byte("{"), 0o600)
	if _, err := ReadSuperblock(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated superblock: %v", err)
	}
	if _, err := Format(dir, "sys", FormatOptions{Force: true}); err != nil {
		t.Fatalf("forced format over a damaged superblock: %v", err)
	}
}

func TestSetRankAndSystem(t *testing.T) {
	dir := t.TempDir()
	sb, err := Format(dir, "sys", FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SetRank(dir, 3); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSuperblock(dir)
	if err != nil || got.Rank != 3 || got.UUID != sb.UUID {
		t.Fatalf("after SetRank: %+v, %v", got, err)
	}
	if err := got.CheckSystem("sys"); err != nil {
		t.Fatal(err)
	}
	if err := got.CheckSystem("other"); err == nil || fault.KindOf(err) != fault.FailedPrecondition {
		t.Fatalf("CheckSystem(other) = %v", err)
	}
	if _, err := Format(dir, "", FormatOptions{Force: true}); fault.KindOf(err) != fault.InvalidArgument {
		t.Fatalf("empty system: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("leftover files %v", ents)
	}
}

// TestHostNQN: the host NQN is the UUID form of the NVMe specification,
// read back unchanged from the superblock after a restart, distinct per
// node, and new after a forced reformat.
func TestHostNQN(t *testing.T) {
	dir := t.TempDir()
	sb, err := Format(dir, "sys", FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nqn := sb.HostNQN()
	if nqn != "nqn.2014-08.org.nvmexpress:uuid:"+sb.UUID.String() {
		t.Fatalf("host NQN %q", nqn)
	}
	back, err := ReadSuperblock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if back.HostNQN() != nqn {
		t.Fatalf("host NQN after a restart %q, want %q", back.HostNQN(), nqn)
	}
	other, err := Format(t.TempDir(), "sys", FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if other.HostNQN() == nqn {
		t.Fatal("two nodes share a host NQN")
	}
	again, err := Format(dir, "sys", FormatOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if again.HostNQN() == nqn {
		t.Fatal("a reformatted node kept its host NQN")
	}
}
