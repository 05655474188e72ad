package units

import "testing"

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0": 0, "512": 512, "4KiB": 4096, "64MiB": 64 << 20, "10GiB": 10 << 30, "1TiB": 1 << 40,
		"1KB": 1000, "10GB": 10e9, "1G": 1 << 30, "4k": 4096, "1.5GiB": 3 << 29, " 2 MiB ": 2 << 20, "7B": 7,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "abc", "-1", "1.3B", "10XB", "99999999999PiB", "NaN"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded; want error", in)
		}
	}
}

func TestFormatSize(t *testing.T) {
	cases := map[int64]string{0: "0B", 512: "512B", 1024: "1KiB", 1536: "1.5KiB", 1 << 30: "1GiB", 10 << 30: "10GiB", 3 << 29: "1.5GiB"}
	for in, want := range cases {
		if got := FormatSize(in); got != want {
			t.Errorf("FormatSize(%d) = %q; want %q", in, got, want)
		}
	}
}

func TestFormatSizeExact(t *testing.T) {
	cases := map[int64]string{0: "0B", 512: "512B", 1024: "1KiB", 1536: "1.5KiB", 1 << 30: "1GiB", 3 << 29: "1.5GiB",
		10 << 30: "10GiB", 9999220736: "9536MiB", 1000000001: "1000000001B", 5 << 28: "1.25GiB", 1<<40 + 4<<20: "1048580MiB"}
	for in, want := range cases {
		if got := FormatSizeExact(in); got != want {
			t.Errorf("FormatSizeExact(%d) = %q; want %q", in, got, want)
		}
	}
}

// TestFormatSizeExactRoundTrips checks that every exact format parses back
// to the same number: multiples of every cluster size a pool may have, and
// odd numbers of bytes.
func TestFormatSizeExactRoundTrips(t *testing.T) {
	check := func(n int64) {
		t.Helper()
		s := FormatSizeExact(n)
		if got, err := ParseSize(s); err != nil || got != n {
			t.Fatalf("ParseSize(FormatSizeExact(%d) = %q) = %d, %v", n, s, got, err)
		}
	}
	for cs := int64(512); cs <= 1<<30; cs *= 2 {
		for k := int64(1); k < 5000; k += 7 {
			check(k * cs)
		}
		check((1<<40/cs + 1) * cs)
	}
	for _, n := range []int64{1, 1023, 1025, 1000000001, 1<<50 + 1, 1 << 62, 7<<60 + 3} {
		check(n)
	}
}
