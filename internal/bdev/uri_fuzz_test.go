package bdev_test

import (
	"reflect"
	"testing"

	"github.com/nexstor/nexstor/internal/bdev"
)

// FuzzParseURI checks that ParseURI never panics and that every URI it
// accepts prints to a canonical form that parses back to the same URI.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"/dev/sdb", "aio:///dev/sdb", "file:///var/lib/nexstor/disk0.img?size=10GiB",
		"malloc:///scratch?size=512MiB&blocksize=4096", "uring:///dev/nvme0n1",
		"file:///d?direct=false", "file://host/x", "file:///x?size=1.5GiB", "rel/path",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := bdev.ParseURI(s)
		if err != nil {
			return
		}
		if u.Path == "" || u.Path[0] != '/' {
			t.Fatalf("ParseURI(%q) accepted path %q", s, u.Path)
		}
		again, err := bdev.ParseURI(u.String())
		if err != nil {
			t.Fatalf("ParseURI(%q).String() = %q does not parse: %v", s, u.String(), err)
		}
		if !reflect.DeepEqual(again, u) {
			t.Fatalf("round trip of %q: %+v, then %+v", s, u, again)
		}
	})
}
