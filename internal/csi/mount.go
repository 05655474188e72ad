package csi

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/fault"
)

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	MajorMinor string // of the mounted device, "259:3"
	Root       string // the mounted subtree of the file system
	MountPoint string
	FsType     string
	Source     string
	Options    string // per-mount options (ro, noatime, ...)
}

// parseMountInfo parses the text of a mountinfo file (proc(5)).
func parseMountInfo(b []byte) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// id parent maj:min root mountpoint options [optional...] - fstype source superoptions
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("mountinfo: malformed line %q", sc.Text())
		}
		out = append(out, mountEntry{MajorMinor: f[2], Root: unescapeMount(f[3]), MountPoint: unescapeMount(f[4]), Options: f[5],
			FsType: f[sep+1], Source: unescapeMount(f[sep+2])})
	}
	return out, sc.Err()
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mounter reads and changes the mounts of this process's mount namespace.
type mounter struct {
	mountInfo string // /proc/self/mountinfo
}

func (m mounter) entries() ([]mountEntry, error) {
	b, err := os.ReadFile(m.mountInfo)
	if err != nil {
		return nil, fault.Wrap(err, fault.Internal, CodeMount, "read "+m.mountInfo, "give the node plugin the host's /proc")
	}
	return parseMountInfo(b)
}

// cleanPath resolves symlinks where the path exists, so that it compares
// with mount points (which the kernel shows resolved).
func cleanPath(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return filepath.Clean(p)
}

// mountedAt returns the topmost mount at path, nil when path is not a
// mount point.
func (m mounter) mountedAt(path string) (*mountEntry, error) {
	es, err := m.entries()
	if err != nil {
		return nil, err
	}
	p := cleanPath(path)
	for i := len(es) - 1; i >= 0; i-- {
		if es[i].MountPoint == p {
			return &es[i], nil
		}
	}
	return nil, nil
}

// deviceNumber returns "major:minor" of a block device node.
func deviceNumber(dev string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", dev, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("%s is not a block device", dev)
	}
	return fmt.Sprintf("%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))), nil
}

// mountFlags turns mount options (a CSI mount_flags list, each entry
// possibly comma-separated) into flags and the file system's data string.
func mountFlags(opts []string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range opts {
		for _, x := range strings.Split(o, ",") {
			switch x = strings.TrimSpace(x); x {
			case "", "defaults", "rw":
			case "ro":
				flags |= unix.MS_RDONLY
			case "noatime":
				flags |= unix.MS_NOATIME
			case "nodiratime":
				flags |= unix.MS_NODIRATIME
			case "relatime":
				flags |= unix.MS_RELATIME
			case "strictatime":
				flags |= unix.MS_STRICTATIME
			case "lazytime":
				flags |= unix.MS_LAZYTIME
			case "nodev":
				flags |= unix.MS_NODEV
			case "nosuid":
				flags |= unix.MS_NOSUID
			case "noexec":
				flags |= unix.MS_NOEXEC
			case "sync":
				flags |= unix.MS_SYNCHRONOUS
			case "dirsync":
				flags |= unix.MS_DIRSYNC
			default:
				data = append(data, x)
			}
		}
	}
	return flags, strings.Join(data, ",")
}

func mountErr(err error, what string) error {
	return fault.Wrap(err, fault.Internal, CodeMount, what, "see the kernel log (dmesg) on the node and the node plugin's log")
}

// mount mounts dev (a file system of type fs) at dir.
func (m mounter) mount(dev, dir, fs string, opts []string, ro bool) error {
	flags, data := mountFlags(opts)
	if ro {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(dev, dir, fs, flags, data); err != nil {
		return mountErr(err, fmt.Sprintf("mount %s (%s) at %s with %q", dev, fs, dir, strings.Join(opts, ",")))
	}
	return nil
}

// bind bind-mounts src at dst, read-only when ro (a second, remounting
// step: the kernel ignores MS_RDONLY on the bind itself).
func (m mounter) bind(src, dst string, ro bool) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return mountErr(err, fmt.Sprintf("bind %s at %s", src, dst))
	}
	if ro {
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			unix.Unmount(dst, 0)
			return mountErr(err, fmt.Sprintf("make the bind mount at %s read-only", dst))
		}
	}
	return nil
}

// unmountAll unmounts path until it is no longer a mount point (mounts
// may be stacked). A path that does not exist or is not mounted is fine.
func (m mounter) unmountAll(path string) error {
	for i := 0; ; i++ {
		e, err := m.mountedAt(path)
		if err != nil || e == nil {
			return err
		}
		if i >= 16 {
			return mountErr(errors.New("still mounted"), "unmount "+path)
		}
		if err := unix.Unmount(path, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return mountErr(err, "unmount "+path)
		}
	}
}

// readOnly reports whether mount options include ro.
func (e *mountEntry) readOnly() bool {
	for _, o := range strings.Split(e.Options, ",") {
		if o == "ro" {
			return true
		}
	}
	return false
}
