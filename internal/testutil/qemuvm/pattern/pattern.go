// Package pattern generates the deterministic data that the kernel interop
// tests write on one side (inside the guest, or through the Go initiator) and
// verify on the other. Every byte is a pure function of a seed and its
// absolute byte offset, so any sub-range can be written or checked on its
// own, in any order, in chunks of any size.
package pattern

import (
	"encoding/binary"
	"fmt"
)

// Fill writes into p the pattern bytes for seed that belong at absolute
// offset off (p[0] is byte off of the pattern). off must be non-negative.
func Fill(p []byte, seed uint64, off int64) {
	i := 0
	// Leading bytes up to an 8-byte boundary of the absolute offset.
	for ; i < len(p) && (off+int64(i))%8 != 0; i++ {
		p[i] = byteAt(seed, off+int64(i))
	}
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], word(seed, uint64(off+int64(i))/8))
	}
	for ; i < len(p); i++ {
		p[i] = byteAt(seed, off+int64(i))
	}
}

// Check reports whether p holds the pattern for seed at absolute offset off.
// On a mismatch the error names the absolute offset of the first bad byte
// and what was expected there, which is what a failing test needs to show.
func Check(p []byte, seed uint64, off int64) error {
	for i := 0; i < len(p); i++ {
		// Compare word by word on the aligned fast path.
		pos := off + int64(i)
		if pos%8 == 0 && i+8 <= len(p) {
			if binary.LittleEndian.Uint64(p[i:]) == word(seed, uint64(pos)/8) {
				i += 7
				continue
			}
		}
		if want := byteAt(seed, pos); p[i] != want {
			return &MismatchError{Off: pos, Got: p[i], Want: want}
		}
	}
	return nil
}

// MismatchError reports the first byte that differs from the pattern.
type MismatchError struct {
	Off       int64 // absolute offset of the byte
	Got, Want byte
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("pattern mismatch at offset %d: got %#02x, want %#02x", e.Off, e.Got, e.Want)
}

// FileSeed derives the seed of the i-th file of a set written with seed, so
// that files of one set differ from each other and from the block pattern.
func FileSeed(seed uint64, i int) uint64 {
	return mix(seed ^ (uint64(i)+1)*0xd6e8feb86659fd93)
}

// FileName is the name of the i-th file of a set, relative to its directory.
func FileName(i int) string { return fmt.Sprintf("f%03d", i) }

func byteAt(seed uint64, pos int64) byte {
	return byte(word(seed, uint64(pos)/8) >> (8 * (uint64(pos) % 8)))
}

func word(seed, index uint64) uint64 {
	return mix(seed + index*0x9e3779b97f4a7c15)
}

// mix is the splitmix64 finalizer: cheap, and every input bit affects every
// output bit, so shifted or misplaced blocks never verify by accident.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
