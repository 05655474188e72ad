// Package units parses and formats byte sizes the way operators type them:
// "512", "4KiB", "64MiB", "10GiB", "1TiB" (binary) and "1KB", "10GB" (decimal).
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var suffixes = []struct {
	s string
	m int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"PiB", 1 << 50},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"PB", 1e15},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"P", 1 << 50},
	{"B", 1},
}

// ParseSize parses a size in bytes. A bare number is bytes; single-letter
// suffixes (K, M, G, T, P) are binary, as in dd and qemu-img. Fractions are
// allowed when the result is a whole number of bytes ("1.5GiB").
func ParseSize(s string) (int64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("size %q: empty; use a number with an optional unit such as 64MiB or 10GiB", s)
	}
	mult := int64(1)
	num := in
	for _, suf := range suffixes {
		if len(in) > len(suf.s) && strings.EqualFold(in[len(in)-len(suf.s):], suf.s) {
			mult = suf.m
			num = strings.TrimSpace(in[:len(in)-len(suf.s)])
			break
		}
	}
	if n, err := strconv.ParseInt(num, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("size %q: must not be negative", s)
		}
		if mult > 1 && n > math.MaxInt64/mult {
			return 0, fmt.Errorf("size %q: too large", s)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("size %q: not a size; use a number with an optional unit such as 64MiB or 10GiB", s)
	}
	if f < 0 {
		return 0, fmt.Errorf("size %q: must not be negative", s)
	}
	v := f * float64(mult)
	if v > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("size %q: not a whole number of bytes", s)
	}
	return int64(v), nil
}

// FormatSize formats bytes with the largest binary unit that keeps the value
// at or above 1, with up to two decimals: 1536 -> "1.50KiB", 1<<30 -> "1GiB".
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	if n < 1024 && n > -1024 {
		return strconv.FormatInt(n, 10) + "B"
	}
	f := float64(n)
	i := 0
	for math.Abs(f) >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	s := strconv.FormatFloat(f, 'f', 2, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + units[i]
}
