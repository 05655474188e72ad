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
