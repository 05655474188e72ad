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

// FormatSize formats bytes for reading with the largest binary unit that
// keeps the value at or above 1, rounded to two decimals: 1536 -> "1.5KiB",
// 1<<30 -> "1GiB", 10000000000 -> "9.31GiB". The rounding makes it unfit
// for a size someone is to type back: use FormatSizeExact for those.
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

// FormatSizeExact formats bytes so that ParseSize returns exactly n again,
// as briefly as that allows: in the largest binary unit in which n is a
// whole number or has at most two decimals. 10<<30 -> "10GiB", 3<<29 ->
// "1.5GiB", 9999220736 -> "9536MiB", 1000000001 -> "1000000001B". Every size
// a program suggests to be typed is formatted with it. n must not be
// negative.
func FormatSizeExact(n int64) string {
	units := []struct {
		s string
		m int64
	}{{"PiB", 1 << 50}, {"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if n < u.m {
			continue
		}
		whole, rest := n/u.m, n%u.m
		if rest == 0 {
			return strconv.FormatInt(whole, 10) + u.s
		}
		// rest/u.m has at most two decimals when 100*rest is a multiple of
		// u.m; u.m is a power of two of at least 1024, so 100*rest cannot
		// overflow.
		if (100*rest)%u.m == 0 {
			frac := strings.TrimRight(fmt.Sprintf("%02d", 100*rest/u.m), "0")
			return strconv.FormatInt(whole, 10) + "." + frac + u.s
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}
