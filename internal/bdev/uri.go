package bdev

import (
	"fmt"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/units"
)

// Disk URI schemes.
//
// Two engines move the data of a file or block device: io_uring (uring://)
// and positioned pread/pwrite from many goroutines (aio://). A new pool
// (pool create, pool import, a pool of the configuration file) given a bare
// path or a file:// URI gets io_uring: ResolveEngine turns the URI into
// uring:// before the disk is opened, and that is what the pool records.
// Where the kernel or container refuses io_uring, that fails, naming aio://
// as the user's choice; nothing falls back silently. Open itself takes the
// schemes literally, so a pool recorded before io_uring became the default
// (as file:// or a bare path, which Open reads as pread/pwrite) keeps its
// engine.
const (
	// SchemeFile is a regular file or block device. For a new pool it
	// means uring:// (see ResolveEngine); Open, which reads recorded URIs,
	// takes it as aio://, the engine it always had.
	SchemeFile = "file"
	// SchemeAIO is the pread/pwrite engine (positioned reads and writes
	// from many goroutines, O_DIRECT where possible): the choice for hosts
	// where io_uring is not allowed. Open reads a bare path as aio://.
	SchemeAIO = "aio"
	// SchemeURing is the file backend with its reads, writes and flushes
	// going through io_uring (FileOptions.URing; without O_DIRECT only
	// flushes and the reads the page cache cannot serve): the same files,
	// keys and on-disk result as aio, and the engine a new pool gets for a
	// bare path or file://. Open fails, naming aio://, where the kernel or
	// container does not allow io_uring.
	SchemeURing = "uring"
	// SchemeMalloc is a RAM device; the path is only a label.
	SchemeMalloc = "malloc"
)

// URI is a parsed disk URI, as users type them:
//
//	file:///var/lib/nexstor/disk0.img?size=10GiB
//	aio:///dev/sdb
//	uring:///dev/nvme0n1
//	/dev/sdb                            (a bare path: see the schemes)
//	malloc:///scratch?size=512MiB&blocksize=4096
//
// Query keys: size (a human size such as 10GiB; for file, aio and uring it
// creates a sparse file of that size when the path does not exist, and must
// match the size of one that does), blocksize (bytes, a power of two >= 512)
// and direct (true or false: force or forbid O_DIRECT; unset tries it).
type URI struct {
	Scheme string
	// Path is the absolute, cleaned path; for malloc, "/" and the name.
	Path string
	// Size is in bytes; 0 means unset.
	Size int64
	// BlockSize is in bytes; 0 means the backend's default.
	BlockSize int
	// Direct is nil when unset.
	Direct *bool
}

var uriKeys = []string{"size", "blocksize", "direct"}

func uriError(s, what, fix string) error {
	return fault.New(fault.InvalidArgument, "bdev.uri", fmt.Sprintf("disk URI %q: %s", s, what), fix)
}

// ParseURI parses and validates a disk URI without opening anything. Errors
// are InvalidArgument *fault.Fault values naming the URI, the offending part
// and the fix.
func ParseURI(s string) (URI, error) {
	if s == "" {
		return URI{}, uriError(s, "empty", "give a path such as /dev/sdb or a URI such as file:///var/lib/nexstor/disk0.img?size=10GiB")
	}
	raw := s
	if !strings.Contains(s, "://") {
		if !strings.HasPrefix(s, "/") {
			if i := strings.Index(s, ":"); i > 0 && !strings.ContainsAny(s[:i], "/.") {
				return URI{}, uriError(s, "missing // after the scheme", fmt.Sprintf("write %s:///absolute/path", s[:i]))
			}
			return URI{}, uriError(s, "relative path", "use an absolute path such as /var/lib/nexstor/disk0.img")
		}
		raw = SchemeAIO + "://" + s
	}
	u, err := url.Parse(raw)
	if err != nil {
		return URI{}, uriError(s, "not a valid URI: "+err.Error(), "use scheme:///absolute/path?key=value, e.g. aio:///dev/sdb")
	}
	out := URI{Scheme: strings.ToLower(u.Scheme)}
	switch out.Scheme {
	case SchemeFile, SchemeAIO, SchemeURing, SchemeMalloc:
	default:
		return URI{}, uriError(s, fmt.Sprintf("unknown scheme %q", u.Scheme), "use file://, aio://, uring:// or malloc://, or a bare absolute path")
	}
	if u.User != nil || u.Host != "" {
		return URI{}, uriError(s, fmt.Sprintf("unexpected host %q", u.Host), fmt.Sprintf("paths need three slashes, as in %s:///%s%s", out.Scheme, u.Host, u.Path))
	}
	if u.Fragment != "" {
		return URI{}, uriError(s, "unexpected #fragment", "remove the part after #")
	}
	if u.Path != "" && !strings.HasPrefix(u.Path, "/") {
		return URI{}, uriError(s, "relative path", "use an absolute path such as /var/lib/nexstor/disk0.img")
	}
	out.Path = path.Clean("/" + u.Path)
	if out.Path == "/" {
		return URI{}, uriError(s, "empty path", fmt.Sprintf("give an absolute path, as in %s:///var/lib/nexstor/disk0.img", out.Scheme))
	}

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return URI{}, uriError(s, "bad query: "+err.Error(), "use ?size=10GiB&blocksize=4096&direct=true")
	}
	for key, vals := range q {
		known := false
		for _, k := range uriKeys {
			known = known || k == key
		}
		if !known {
			return URI{}, uriError(s, fmt.Sprintf("unknown key %q", key), "use only "+strings.Join(uriKeys, ", "))
		}
		if len(vals) != 1 {
			return URI{}, uriError(s, fmt.Sprintf("key %q given %d times", key, len(vals)), "give it once")
		}
	}
	if v := q.Get("blocksize"); q.Has("blocksize") {
		n, err := units.ParseSize(v)
		if err != nil || n < 512 || n > 1<<16 || n&(n-1) != 0 {
			return URI{}, uriError(s, fmt.Sprintf("blocksize %q is not a power of two between 512 and 65536", v), "use blocksize=512 or blocksize=4096")
		}
		out.BlockSize = int(n)
	}
	if v := q.Get("size"); q.Has("size") {
		n, err := units.ParseSize(v)
		if err != nil {
			return URI{}, uriError(s, fmt.Sprintf("size: %v", err), "use a size such as size=10GiB")
		}
		if n <= 0 {
			return URI{}, uriError(s, fmt.Sprintf("size %q is not positive", v), "use a size such as size=10GiB")
		}
		bs := int64(max(out.BlockSize, 512))
		if n%bs != 0 {
			return URI{}, uriError(s, fmt.Sprintf("size %q (%d bytes) is not a multiple of the %d-byte block size", v, n, bs),
				fmt.Sprintf("round it to a multiple of %d, e.g. size=%s", bs, exactSize((n+bs-1)/bs*bs)))
		}
		out.Size = n
	}
	if v := q.Get("direct"); q.Has("direct") {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return URI{}, uriError(s, fmt.Sprintf("direct %q is not a boolean", v), "use direct=true or direct=false, or leave it unset to try O_DIRECT")
		}
		if out.Scheme == SchemeMalloc {
			return URI{}, uriError(s, "direct does not apply to malloc", "remove direct")
		}
		out.Direct = &b
	}
	if out.Scheme == SchemeMalloc && out.Size == 0 {
		return URI{}, uriError(s, "malloc needs a size", "add ?size=512MiB")
	}
	return out, nil
}

// String returns the canonical form of u, which ParseURI reads back to an
// equal URI: the scheme always spelled out, keys in a fixed order and sizes
// in the largest exact binary unit.
func (u URI) String() string {
	var b strings.Builder
	b.WriteString(u.Scheme)
	b.WriteString("://")
	b.WriteString((&url.URL{Path: u.Path}).EscapedPath())
	sep := byte('?')
	add := func(k, v string) {
		b.WriteByte(sep)
		sep = '&'
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(v)
	}
	if u.Size != 0 {
		add("size", exactSize(u.Size))
	}
	if u.BlockSize != 0 {
		add("blocksize", strconv.Itoa(u.BlockSize))
	}
	if u.Direct != nil {
		add("direct", strconv.FormatBool(*u.Direct))
	}
	return b.String()
}

// exactSize formats n in the largest binary unit that divides it exactly.
func exactSize(n int64) string {
	for _, u := range []struct {
		s string
		m int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n%u.m == 0 {
			return strconv.FormatInt(n/u.m, 10) + u.s
		}
	}
	return strconv.FormatInt(n, 10)
}

// Open parses a disk URI and opens the device it names. See URI for the
// syntax. file, aio and uring open a regular file or block device (creating
// a sparse file when a size is given and the path does not exist), uring
// with FileOptions.URing, and hold it exclusively until Close (see
// OpenFile: a second open fails naming the holder); malloc returns a new,
// zero-filled RAM device on every call (the name is only a label, devices
// are not shared, so there is nothing to hold).
func Open(uri string) (Device, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	return u.Open()
}

// Open opens the device u names; see the package-level Open.
func (u URI) Open() (Device, error) {
	switch u.Scheme {
	case SchemeFile, SchemeAIO, SchemeURing:
		f, err := OpenFile(u.Path, FileOptions{Create: u.Size > 0, Size: u.Size, BlockSize: u.BlockSize, Direct: u.Direct, URing: u.Scheme == SchemeURing})
		if err != nil {
			return nil, err
		}
		return f, nil
	case SchemeMalloc:
		m, err := NewMalloc(u.Size, u.BlockSize)
		if err != nil {
			return nil, fault.Wrap(err, fault.InvalidArgument, "bdev.uri", fmt.Sprintf("disk URI %q", u.String()), "use a positive size that is a multiple of the block size")
		}
		return m, nil
	}
	return nil, uriError(u.String(), fmt.Sprintf("unknown scheme %q", u.Scheme), "use file://, aio://, uring:// or malloc://")
}

// ResolveEngine returns the disk URI a new pool records for s. A bare path
// or a file:// URI means the io_uring engine: when probe (ProbeURing in
// production) says this host allows io_uring, the result is the same disk
// as uring:// in canonical form (see URI.String); aio://, uring:// and
// malloc:// come back as given. When probe fails (ENOSYS, EPERM from
// io_uring_setup: an old kernel, kernel.io_uring_disabled, a seccomp
// filter) the error is a FailedPrecondition fault bdev.uring_unavailable
// whose resolution names aio:// for the same disk: the pread/pwrite engine
// is the user's choice, never a silent fallback. Parse errors are those of
// ParseURI.
func ResolveEngine(s string, probe func() error) (string, error) {
	u, err := ParseURI(s)
	if err != nil {
		return "", err
	}
	bare := !strings.Contains(s, "://")
	if !bare && u.Scheme != SchemeFile {
		return s, nil
	}
	if err := probe(); err != nil {
		aio := u
		aio.Scheme = SchemeAIO
		return "", fault.Wrap(err, fault.FailedPrecondition, "bdev.uring_unavailable",
			fmt.Sprintf("disk %q: a bare path or file:// means io_uring (uring://), which this kernel or container refuses: %v", s, err),
			fmt.Sprintf("choose the pread/pwrite engine explicitly with %s, or allow io_uring (Linux 5.6 or later, sysctl kernel.io_uring_disabled=0, a seccomp profile that permits io_uring_setup)", aio.String()))
	}
	u.Scheme = SchemeURing
	return u.String(), nil
}

// SameDisk reports whether two disk URIs name the same disk, whatever the
// engine: the same path for file://, aio://, uring:// and bare paths (so a
// disk given as /dev/sdb is the one a pool recorded as uring:///dev/sdb),
// the same name for malloc://. URIs that do not parse are compared as
// strings.
func SameDisk(a, b string) bool {
	ua, errA := ParseURI(a)
	ub, errB := ParseURI(b)
	if errA != nil || errB != nil {
		return a == b
	}
	if (ua.Scheme == SchemeMalloc) != (ub.Scheme == SchemeMalloc) {
		return false
	}
	return ua.Path == ub.Path
}
