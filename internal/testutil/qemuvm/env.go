package qemuvm

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/nexstor/nexstor/internal/testutil"
)

// Env is what booting a test machine needs from the host: QEMU, Debian's
// kernel and modules, and the programs copied into the initramfs. Require
// finds it once per test process; it is safe for concurrent use.
type Env struct {
	QEMU    string // qemu-system-x86_64
	Kernel  string // the kernel image (bzImage)
	Release string // kernel release, e.g. 6.1.0-56-amd64
	Accel   string // QEMU accelerators in order of preference, e.g. "tcg"

	modules *moduleIndex
	base    []byte // the initramfs shared by every boot
	tools   map[string]bool
}

// optionalTools are copied into the guest's /sbin when the host has them:
// resize2fs, and xfsprogs for XFS. HasTool says which made it.
var optionalTools = []string{"resize2fs", "mkfs.xfs", "xfs_growfs"}

// HasTool reports whether the guest has the program name: mke2fs and
// e2fsck always, the optionalTools the host has.
func (e *Env) HasTool(name string) bool { return e.tools[name] }

// baseModules are loaded in every guest: virtio networking for QEMU's user
// net, the NVMe/TCP initiator, ext4, and the crc32c implementations that
// nvme-tcp (digests) and ext4 (metadata checksums) ask the crypto API for at
// run time, which modules.dep cannot know about.
var baseModules = []string{
	"virtio_pci", "virtio_net",
	"crc32c_generic", "crc32c_intel", "libcrc32c",
	"nvme_tcp", "nvme_fabrics", "nvme_core",
	"ext4",
}

// optionalModules may be missing or built in without harm.
var optionalModules = map[string]bool{"crc32c_intel": true, "libcrc32c": true, "crc32c_generic": true}

var (
	envMu  sync.Mutex
	envVal *Env
	envErr error
)

// KernelDir is where scripts/fetch-test-kernel.sh unpacks the kernel:
// $NEXSTOR_TEST_KERNEL_DIR, else <user cache dir>/nexstor-test/kernel.
func KernelDir() string {
	if d := os.Getenv("NEXSTOR_TEST_KERNEL_DIR"); d != "" {
		return d
	}
	c, err := os.UserCacheDir()
	if err != nil {
		c = filepath.Join(os.TempDir(), "nexstor-cache")
	}
	return filepath.Join(c, "nexstor-test", "kernel")
}

// Require returns the environment for booting test machines, fetching
// Debian's kernel into KernelDir first when it is not there. When something
// is missing the test is skipped on a workstation and fails under CI.
func Require(t testing.TB) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: booting a kernel under QEMU is slow; not in -short mode")
	}
	envMu.Lock()
	defer envMu.Unlock()
	if envVal == nil && envErr == nil {
		envVal, envErr = newEnv(t)
	}
	if envErr != nil {
		var m *missingError
		if errors.As(envErr, &m) {
			testutil.Missing(t, m.what)
		}
		t.Fatalf("qemuvm: %v", envErr)
	}
	return envVal
}

// missingError is a host prerequisite that is absent, as opposed to a
// broken one: tests skip on the former outside CI.
type missingError struct{ what string }

func (e *missingError) Error() string { return e.what + " is missing" }

func newEnv(t testing.TB) (*Env, error) {
	qemu, err := lookTool("qemu-system-x86_64")
	if err != nil {
		return nil, &missingError{"qemu-system-x86_64 (Debian package qemu-system-x86)"}
	}
	busybox, err := lookTool("busybox")
	if err != nil {
		return nil, &missingError{"busybox (Debian package busybox-static)"}
	}
	if !isStatic(busybox) {
		return nil, &missingError{"a static busybox (Debian package busybox-static; " + busybox + " is dynamic)"}
	}
	mke2fs, err1 := lookTool("mke2fs")
	e2fsck, err2 := lookTool("e2fsck")
	if err1 != nil || err2 != nil {
		return nil, &missingError{"mke2fs and e2fsck (Debian package e2fsprogs)"}
	}
	dir := KernelDir()
	if !kernelComplete(dir) {
		script := filepath.Join(testutil.RepoRoot(t), "scripts", "fetch-test-kernel.sh")
		cmd := exec.Command(script)
		if out, err := cmd.CombinedOutput(); err != nil || !kernelComplete(dir) {
			return nil, &missingError{fmt.Sprintf("Debian's kernel in %s (%s failed: %v: %s)", dir, script, err, bytes.TrimSpace(out))}
		}
	}
	rel, err := os.ReadFile(filepath.Join(dir, "release"))
	if err != nil {
		return nil, err
	}
	idx, err := loadModuleIndex(filepath.Join(dir, "modules"))
	if err != nil {
		return nil, err
	}
	e := &Env{
		QEMU:    qemu,
		Kernel:  filepath.Join(dir, "vmlinuz"),
		Release: strings.TrimSpace(string(rel)),
		Accel:   accel(),
		modules: idx,
		tools:   map[string]bool{"mke2fs": true, "e2fsck": true},
	}
	tools := []string{mke2fs, e2fsck}
	for _, name := range optionalTools {
		if p, err := lookTool(name); err == nil {
			tools = append(tools, p)
			e.tools[name] = true
		}
	}
	agent, err := buildAgent(t)
	if err != nil {
		return nil, err
	}
	if e.base, err = e.buildBase(busybox, tools, agent); err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	return e, nil
}

func kernelComplete(dir string) bool {
	for _, f := range []string{"release", "vmlinuz", "modules/modules.dep"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			return false
		}
	}
	return true
}

// accel picks the accelerator: $NEXSTOR_QEMU_ACCEL when set ("kvm:tcg" is
// KVM with TCG as QEMU's fallback), else TCG. TCG is the default because a
// /dev/kvm that opens is no promise that KVM works (nested virtualization
// may hang the guest at boot), and TCG boots this kernel in seconds anyway.
func accel() string {
	if a := os.Getenv("NEXSTOR_QEMU_ACCEL"); a != "" {
		return a
	}
	return "tcg"
}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

func isStatic(p string) bool {
	f, err := elf.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// buildAgent builds the guest program, statically, for the guest's
// architecture (the same as the host's: QEMU emulates x86_64).
func buildAgent(t testing.TB) ([]byte, error) {
	dir, err := os.MkdirTemp("", "nexstor-guestagent-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./internal/testutil/qemuvm/guestagent")
	cmd.Dir = testutil.RepoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build guestagent: %v\n%s", err, b)
	}
	return os.ReadFile(out)
}

// lddLine matches "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" and
// "/lib64/ld-linux-x86-64.so.2 (0x...)".
var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)`)

// sharedLibs returns the shared objects a dynamic executable loads,
// including the loader, as paths on the host.
func sharedLibs(exe string) ([]string, error) {
	out, err := exec.Command("ldd", exe).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %v: %s", exe, err, out)
	}
	var libs []string
	for _, l := range strings.Split(string(out), "\n") {
		if m := lddLine.FindStringSubmatch(l); m != nil {
			libs = append(libs, m[1])
		}
	}
	return libs, nil
}

// buildBase assembles the initramfs part that is the same for every boot:
// busybox, the agent, and the host programs tools (copied to /sbin, with
// their shared libraries).
func (e *Env) buildBase(busybox string, tools []string, agent []byte) ([]byte, error) {
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	for _, d := range []string{"dev", "proc", "sys", "tmp", "mnt", "etc", "bin", "sbin", "usr/bin", "usr/sbin", "lib/modules", "nexstor"} {
		w.Dir(d, 0o755)
	}
	// The kernel opens /dev/console for init before devtmpfs is mounted.
	w.CharDev("dev/console", 0o600, 5, 1)
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	w.File("bin/busybox", 0o755, bb)
	w.Symlink("bin/sh", "busybox")
	w.File("init", 0o755, []byte(initScript))
	w.File("nexstor/agent", 0o755, agent)

	libs := map[string]bool{}
	for _, exe := range tools {
		b, err := os.ReadFile(exe)
		if err != nil {
			return nil, err
		}
		w.File("sbin/"+filepath.Base(exe), 0o755, b)
		ls, err := sharedLibs(exe)
		if err != nil {
			return nil, err
		}
		for _, l := range ls {
			libs[l] = true
		}
	}
	for l := range libs {
		// Copy the content under the name the loader looks for; the host
		// path may be a symlink into a versioned file.
		b, err := os.ReadFile(l)
		if err != nil {
			return nil, fmt.Errorf("shared library: %w", err)
		}
		w.File(l, 0o755, b)
	}
	if b, err := os.ReadFile("/etc/mke2fs.conf"); err == nil {
		w.File("etc/mke2fs.conf", 0o644, b)
	}

	mods, err := e.modules.order(baseModules, optionalModules)
	if err != nil {
		return nil, err
	}
	for _, m := range mods {
		b, err := e.modules.read(m)
		if err != nil {
			return nil, err
		}
		w.File("lib/modules/"+m+".ko", 0o644, b)
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// initScript is /init: it prepares the guest, runs the agent and powers off.
// Its output goes to the console; only the agent's markers are parsed.
const initScript = `#!/bin/sh
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ln -sf /proc/mounts /etc/mtab
echo "nexstor-init: kernel $(uname -r)"
while read -r mod params; do
	[ -n "$mod" ] || continue
	insmod "/lib/modules/$mod.ko" $params || echo "nexstor-init: insmod $mod $params failed"
done < /nexstor/modules
ip link set lo up
n=0
while ! ip link show eth0 >/dev/null 2>&1 && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
# From here on the console shows the kernel's info messages too (NVMe
# reconnects, rescans): quiet kept only the boot short.
dmesg -n 7
echo "nexstor-init: running the script"
/nexstor/agent
echo "nexstor-init: agent exited with status $?"
sync
poweroff -f
`
