package bdev_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/bdev/bdevtest"
	"github.com/nexstor/nexstor/internal/fault"
)

func ptr[T any](v T) *T { return &v }

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		in   string
		want bdev.URI
		str  string
	}{
		{"/dev/sdb", bdev.URI{Scheme: "aio", Path: "/dev/sdb"}, "aio:///dev/sdb"},
		{"aio:///dev/sdb", bdev.URI{Scheme: "aio", Path: "/dev/sdb"}, "aio:///dev/sdb"},
		{"file:///var/lib/nexstor/disk0.img?size=10GiB", bdev.URI{Scheme: "file", Path: "/var/lib/nexstor/disk0.img", Size: 10 << 30}, "file:///var/lib/nexstor/disk0.img?size=10GiB"},
		{"FILE:///x//y/../z.img?size=1536KiB", bdev.URI{Scheme: "file", Path: "/x/z.img", Size: 1536 << 10}, "file:///x/z.img?size=1536KiB"},
		{"uring:///dev/nvme0n1", bdev.URI{Scheme: "uring", Path: "/dev/nvme0n1"}, "uring:///dev/nvme0n1"},
		{"malloc:///scratch?size=512MiB", bdev.URI{Scheme: "malloc", Path: "/scratch", Size: 512 << 20}, "malloc:///scratch?size=512MiB"},
		{"malloc:///m?blocksize=4KiB&size=1M", bdev.URI{Scheme: "malloc", Path: "/m", Size: 1 << 20, BlockSize: 4096}, "malloc:///m?size=1MiB&blocksize=4096"},
		{"/data/d.img?direct=false&size=1000448", bdev.URI{Scheme: "aio", Path: "/data/d.img", Size: 1000448, Direct: ptr(false)}, "aio:///data/d.img?size=977KiB&direct=false"},
		{"file:///d?direct=1&blocksize=512", bdev.URI{Scheme: "file", Path: "/d", BlockSize: 512, Direct: ptr(true)}, "file:///d?blocksize=512&direct=true"},
		{"file:///with%20space.img", bdev.URI{Scheme: "file", Path: "/with space.img"}, "file:///with%20space.img"},
	} {
		got, err := bdev.ParseURI(c.in)
		if err != nil {
			t.Errorf("ParseURI(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseURI(%q) = %+v, want %+v", c.in, got, c.want)
		}
		if s := got.String(); s != c.str {
			t.Errorf("ParseURI(%q).String() = %q, want %q", c.in, s, c.str)
		}
		again, err := bdev.ParseURI(got.String())
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Errorf("String() of %q does not parse back: %+v, %v", c.in, again, err)
		}
	}
}

func TestParseURIErrors(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string // substrings of the error: what is wrong and the fix
	}{
		{"", []string{"empty", "/dev/sdb"}},
		{"disk0.img", []string{"relative path", "absolute path"}},
		{"./disk0.img", []string{"relative path"}},
		{"file:/x.img", []string{"missing //", "file:///absolute/path"}},
		{"nvme:///dev/nvme0n1", []string{`unknown scheme "nvme"`, "aio://"}},
		{"file://var/lib/disk.img", []string{`unexpected host "var"`, "file:///var/lib/disk.img"}},
		{"file://", []string{"empty path"}},
		{"malloc:///", []string{"empty path"}},
		{"file:///x#frag", []string{"fragment"}},
		{"file:///x?sise=1GiB", []string{`unknown key "sise"`, "size, blocksize, direct"}},
		{"file:///x?size=1GiB&size=2GiB", []string{`"size" given 2 times`}},
		{"file:///x?size=big", []string{"size", "size=10GiB"}},
		{"file:///x?size=0", []string{"not positive"}},
		{"file:///x?size=1000", []string{"not a multiple of the 512-byte block size", "size=1KiB"}},
		{"file:///x?size=6KiB&blocksize=4096", []string{"not a multiple of the 4096-byte", "size=8KiB"}},
		{"file:///x?blocksize=1000", []string{"blocksize", "power of two"}},
		{"file:///x?blocksize=256", []string{"power of two between 512"}},
		{"file:///x?direct=maybe", []string{`direct "maybe"`, "direct=true or direct=false"}},
		{"malloc:///m?size=1MiB&direct=true", []string{"direct does not apply"}},
		{"malloc:///m", []string{"malloc needs a size", "size=512MiB"}},
		{"file:///x?size=%zz", []string{"bad query"}},
	} {
		u, err := bdev.ParseURI(c.in)
		if err == nil {
			t.Errorf("ParseURI(%q) = %+v, want an error", c.in, u)
			continue
		}
		if fault.KindOf(err) != fault.InvalidArgument {
			t.Errorf("ParseURI(%q): kind %v, want InvalidArgument", c.in, fault.KindOf(err))
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("ParseURI(%q) error %q does not mention %q", c.in, err, w)
			}
		}
		if !strings.Contains(err.Error(), "disk URI") {
			t.Errorf("ParseURI(%q) error %q does not name the URI", c.in, err)
		}
	}
}

func TestOpenURI(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk0.img")

	// A missing file without a size: the error says how to create it.
	_, err := bdev.Open("file://" + img)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "?size=") {
		t.Fatalf("Open of a missing file: %v", err)
	}

	// With a size, file:// creates it sparse; a bare path opens it again.
	d, err := bdev.Open("file://" + img + "?size=2MiB&blocksize=4096")
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != 2<<20 || d.BlockSize() != 4096 {
		t.Fatalf("size %d block size %d", d.Size(), d.BlockSize())
	}
	if err := bdevtest.TestDevice(d); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(img); err != nil || st.Size() != 2<<20 {
		t.Fatalf("stat after create: %v", err)
	}
	d, err = bdev.Open(img + "?direct=false")
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := d.(*bdev.File); !ok || f.Direct() {
		t.Fatalf("bare path with direct=false: %T direct", d)
	}
	d.Close()
	if _, err := bdev.Open("aio://" + img + "?size=4MiB"); err == nil || !strings.Contains(err.Error(), "never resized") {
		t.Fatalf("reopen with another size: %v", err)
	}

	m, err := bdev.Open("malloc:///scratch?size=1MiB")
	if err != nil {
		t.Fatal(err)
	}
	if err := bdevtest.TestDevice(m); err != nil {
		t.Fatal(err)
	}
	if _, err := bdev.Open("nope://x"); err == nil {
		t.Fatal("unknown scheme opened")
	}

}

// TestResolveEngine: a bare path or file:// becomes uring:// where the probe
// allows io_uring; explicit engines and RAM disks come back as given,
// without a probe; where io_uring is refused the fault names aio:// for the
// same disk and wraps the kernel's error.
func TestResolveEngine(t *testing.T) {
	ok := func() error { return nil }
	for _, c := range []struct{ in, want string }{
		{"/dev/sdb", "uring:///dev/sdb"},
		{"/var/lib/nexstor/d0.img?size=1GiB", "uring:///var/lib/nexstor/d0.img?size=1GiB"},
		{"file:///var/lib/nexstor/d0.img?size=1024MiB&direct=false", "uring:///var/lib/nexstor/d0.img?size=1GiB&direct=false"},
		{"FILE:///dev/sdb", "uring:///dev/sdb"},
	} {
		got, err := bdev.ResolveEngine(c.in, ok)
		if err != nil || got != c.want {
			t.Errorf("ResolveEngine(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	never := func() error { t.Error("probe called for an explicit engine"); return nil }
	for _, in := range []string{"aio:///dev/sdb", "uring:///dev/nvme0n1?direct=true", "malloc:///ram?size=64MiB"} {
		got, err := bdev.ResolveEngine(in, never)
		if err != nil || got != in {
			t.Errorf("ResolveEngine(%q) = %q, %v; want it unchanged", in, got, err)
		}
	}
	if _, err := bdev.ResolveEngine("relative/d0.img", ok); err == nil {
		t.Error("ResolveEngine accepted a relative path")
	}
	for _, refused := range []error{syscall.ENOSYS, syscall.EPERM} {
		probe := func() error { return fmt.Errorf("io_uring_setup(4 entries): %w", refused) }
		got, err := bdev.ResolveEngine("file:///var/lib/nexstor/d0.img?size=1GiB", probe)
		var flt *fault.Fault
		if !errors.As(err, &flt) || flt.Code != "bdev.uring_unavailable" || flt.Kind != fault.FailedPrecondition {
			t.Fatalf("refused (%v): got %q, %v; want the FailedPrecondition fault bdev.uring_unavailable", refused, got, err)
		}
		if !errors.Is(err, refused) {
			t.Errorf("fault %v does not wrap %v", err, refused)
		}
		if !strings.Contains(flt.Resolution, "aio:///var/lib/nexstor/d0.img?size=1GiB") {
			t.Errorf("resolution %q does not name the aio:// URI of the disk", flt.Resolution)
		}
		if !strings.Contains(err.Error(), "io_uring") {
			t.Errorf("fault %q does not say io_uring was refused", err)
		}
	}
}

func TestSameDisk(t *testing.T) {
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{"/dev/sdb", "uring:///dev/sdb", true},
		{"file:///d/x.img?size=1GiB", "uring:///d/x.img?size=1GiB", true},
		{"aio:///dev/sdb", "/dev//sdb", true},
		{"/dev/sdb", "/dev/sdc", false},
		{"malloc:///dev/sdb?size=1MiB", "/dev/sdb", false},
		{"malloc:///a?size=1MiB", "malloc:///a?size=2MiB", true},
		{"not a uri", "not a uri", true},
		{"not a uri", "/dev/sdb", false},
	} {
		if got := bdev.SameDisk(c.a, c.b); got != c.same {
			t.Errorf("SameDisk(%q, %q) = %v, want %v", c.a, c.b, got, c.same)
		}
	}
}
