package csi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/fault"
)

// signature is a format recognisable by magic bytes at an offset.
type signature struct {
	name  string
	off   int
	magic []byte
}

// signatures are the formats probeFS recognises: the file systems the
// driver makes, and the other common contents of a disk, so that a device
// holding any of them is never taken for blank.
var signatures = []signature{
	{"ext4", 1024 + 56, []byte{0x53, 0xef}}, // ext2/3/4 superblock magic
	{"xfs", 0, []byte("XFSB")},
	{"btrfs", 65536 + 64, []byte("_BHRfS_M")},
	{"LUKS", 0, []byte("LUKS\xba\xbe")},
	{"swap", 4096 - 10, []byte("SWAPSPACE2")},
	{"swap", 4096 - 10, []byte("SWAP-SPACE")},
	{"iso9660", 32768 + 1, []byte("CD001")},
	{"gpt", 512, []byte("EFI PART")},
	{"LVM2_member", 512 + 24, []byte("LVM2 001")},
	{"dos", 510, []byte{0x55, 0xaa}}, // MBR partition table or boot sector
}

// probeLen covers every signature's bytes.
const probeLen = 65536 + 64 + 8

// probeFS returns what a device holds by its signatures: "ext4", "xfs",
// another format's name, or "" for none (blank as far as can be told).
// util-linux blkid, when the host has it, is asked too, so that formats
// this list does not know still count as data.
func probeFS(ctx context.Context, dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", fault.Wrap(err, fault.Unavailable, CodeNoDevice, "open "+dev, "see the node plugin's log")
	}
	defer f.Close()
	buf := make([]byte, probeLen)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fault.Wrap(err, fault.Unavailable, CodeNoDevice, "read "+dev, "see the kernel log (dmesg) on the node")
	}
	buf = buf[:n]
	for _, s := range signatures {
		if s.off+len(s.magic) <= len(buf) && bytes.Equal(buf[s.off:s.off+len(s.magic)], s.magic) {
			if s.name == "ext4" && !plausibleExt(buf) {
				continue
			}
			return s.name, nil
		}
	}
	if t, ok := blkidType(ctx, dev); ok {
		return t, nil
	}
	return "", nil
}

// plausibleExt checks more of an ext superblock than its two magic bytes:
// a log block size of 1 KiB to 64 KiB.
func plausibleExt(b []byte) bool {
	return len(b) >= 1024+28 && binary.LittleEndian.Uint32(b[1024+24:]) <= 6
}

// blkidType asks util-linux blkid for the device's content type; ok is
// false when blkid is absent, not util-linux's (busybox), or found none.
func blkidType(ctx context.Context, dev string) (string, bool) {
	p := utilLinuxBlkid()
	if p == "" {
		return "", false
	}
	out, err := exec.CommandContext(ctx, p, "-p", "-o", "value", "-s", "TYPE", "-s", "PTTYPE", dev).Output()
	if err != nil {
		return "", false // exit 2: nothing found; other failures: no opinion
	}
	t := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	return t, t != ""
}

var blkidPath = sync.OnceValue(func() string {
	p, err := tool("blkid")
	if err != nil {
		return ""
	}
	// busybox's blkid takes other options and lists every device.
	if out, err := exec.Command(p, "-V").CombinedOutput(); err != nil || !strings.Contains(string(out), "util-linux") {
		return ""
	}
	return p
})

// utilLinuxBlkid returns util-linux's blkid, "" when the host has none.
func utilLinuxBlkid() string { return blkidPath() }

// tool finds a program in PATH or the sbin directories, which a
// container's PATH may lack.
func tool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or the sbin directories", name)
}

// run runs a program, with empty stdin (a program asking for
// confirmation reads "no"), and returns its combined output in the error.
func run(ctx context.Context, name string, args ...string) error {
	p, err := tool(name)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, p, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// mkfs makes file system fs on dev, which probeFS found blank. Neither
// program is forced: mkfs.xfs checks the device once more and refuses one
// that holds a file system (mke2fs asks only on a terminal, so for ext4
// probeFS is the check). Discards are skipped: a new volume reads zeroes
// already.
func mkfs(ctx context.Context, fs, dev string) error {
	var err error
	switch fs {
	case "ext4":
		err = run(ctx, "mke2fs", "-t", "ext4", "-q", "-E", "nodiscard", dev)
	case "xfs":
		err = run(ctx, "mkfs.xfs", "-q", "-K", dev)
	default:
		return badRequest("file system %q: use %s", fs, strings.Join(supportedFsTypes, " or "))
	}
	if err != nil {
		return fault.Wrap(err, fault.Internal, CodeMkfs, fmt.Sprintf("make a %s file system on %s", fs, dev),
			"install e2fsprogs (ext4) or xfsprogs (xfs) where the node plugin runs; see its log")
	}
	return nil
}

// growFS grows the file system fs on dev, mounted at dir, to the device's
// size, online.
func growFS(ctx context.Context, fs, dev, dir string) error {
	var err error
	switch fs {
	case "ext4":
		err = run(ctx, "resize2fs", dev)
	case "xfs":
		err = run(ctx, "xfs_growfs", dir)
	default:
		return fault.New(fault.FailedPrecondition, CodeFilesystem, fmt.Sprintf("%s on %s: the driver grows only %s", fs, dev,
			strings.Join(supportedFsTypes, " and ")), "")
	}
	if err != nil {
		return fault.Wrap(err, fault.Internal, CodeResize, fmt.Sprintf("grow the %s file system of %s", fs, dev),
			"install e2fsprogs (ext4) or xfsprogs (xfs) where the node plugin runs; see its log")
	}
	return nil
}

// deviceSize returns a block device's size in bytes.
func deviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n uint64
	if err := ioctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64, &n); err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	return int64(n), nil
}

func ioctlGetUint64(fd int, req uint, v *uint64) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(v)))
	if errno != 0 {
		return errno
	}
	return nil
}
