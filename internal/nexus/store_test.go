package nexus

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFileStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Load(ctx, "n1"); !errors.Is(err, ErrNoRecord) {
		t.Fatalf("load missing: %v", err)
	}
	rec := HealthRecord{NexusUUID: "n1", Generation: 7, SegmentSize: 1 << 20, Children: []ChildHealth{
		{URI: "bdev:///a", State: StateOnline},
		{URI: "nvmf://h:4420/nqn.x", State: StateFaulted, Reason: ReasonIOError},
		{URI: "bdev:///c", State: StateOffline, Bitmap: []byte{0x81, 0}},
	}}
	if err := s.Save(ctx, rec); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Generation != 7 || len(got.Children) != 3 || got.Children[1].Reason != ReasonIOError ||
		got.Children[2].State != StateOffline || string(got.Children[2].Bitmap) != "\x81\x00" {
		t.Fatalf("loaded %+v", got)
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries", len(ents))
	}
	// A flipped byte is caught by the checksum.
	p := filepath.Join(dir, ents[0].Name())
	b, _ := os.ReadFile(p)
	i := strings.Index(string(b), "online")
	b[i] = 'O'
	os.WriteFile(p, b, 0o600)
	if _, err := s.Load(ctx, "n1"); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("load of a corrupted record: %v", err)
	}
	if err := s.Delete(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "n1"); !errors.Is(err, ErrNoRecord) {
		t.Fatalf("load after delete: %v", err)
	}
	if err := s.Save(ctx, HealthRecord{NexusUUID: "../x"}); err == nil {
		t.Fatal("a path-like UUID was accepted")
	}
}

func TestParseChildURI(t *testing.T) {
	good := map[string]ChildURI{
		"bdev:///5f2c":                         {Scheme: "bdev", Name: "5f2c"},
		"nvmf://10.0.0.2:4421/nqn.2026-01.x:a": {Scheme: "nvmf", Name: "nqn.2026-01.x:a", Addr: "10.0.0.2:4421"},
		"nvmf://node-1/nqn.x":                  {Scheme: "nvmf", Name: "nqn.x", Addr: "node-1:4420"},
	}
	for s, want := range good {
		got, err := ParseChildURI(s)
		if err != nil || got != want {
			t.Errorf("%s: %+v %v", s, got, err)
		}
	}
	for _, s := range []string{"bdev://host/x", "bdev:///", "nvmf:///nqn", "nvmf://h:1/", "file:///x", "::"} {
		if _, err := ParseChildURI(s); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
}
