package pattern

import (
	"bytes"
	"errors"
	"testing"
)

func TestFillIsOffsetAddressed(t *testing.T) {
	whole := make([]byte, 4096)
	Fill(whole, 42, 1000)
	// Any split of the range, aligned or not, yields the same bytes.
	for _, cut := range []int{0, 1, 3, 8, 13, 4095} {
		part := make([]byte, len(whole))
		Fill(part[:cut], 42, 1000)
		Fill(part[cut:], 42, 1000+int64(cut))
		if !bytes.Equal(part, whole) {
			t.Fatalf("split at %d differs from a single fill", cut)
		}
	}
	if err := Check(whole, 42, 1000); err != nil {
		t.Fatal(err)
	}
	if err := Check(whole[5:], 42, 1005); err != nil {
		t.Fatal(err)
	}
}

func TestCheckFindsFirstBadByte(t *testing.T) {
	p := make([]byte, 512)
	Fill(p, 7, 4096)
	p[100] ^= 0x01
	p[300] ^= 0x80
	var m *MismatchError
	if err := Check(p, 7, 4096); !errors.As(err, &m) || m.Off != 4196 {
		t.Fatalf("Check = %v, want a mismatch at offset 4196", err)
	}
	// The wrong seed and a shifted offset must not verify.
	Fill(p, 7, 4096)
	if Check(p, 8, 4096) == nil {
		t.Fatal("pattern of seed 7 verified as seed 8")
	}
	if Check(p, 7, 4104) == nil {
		t.Fatal("pattern verified at a shifted offset")
	}
}

func TestFileSeedsDiffer(t *testing.T) {
	seen := map[uint64]int{}
	for i := 0; i < 100; i++ {
		s := FileSeed(3, i)
		if j, ok := seen[s]; ok {
			t.Fatalf("files %d and %d share a seed", j, i)
		}
		seen[s] = i
	}
	if FileName(7) != "f007" {
		t.Fatalf("FileName(7) = %q", FileName(7))
	}
}
