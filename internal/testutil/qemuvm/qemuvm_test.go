package qemuvm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nexstor/nexstor/internal/testutil"
)

func TestCPIOWriterIsReadableByCpio(t *testing.T) {
	cpio := testutil.RequireTool(t, "cpio")
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	w.File("a/b/c.txt", 0o644, []byte("hello"))
	w.File("a/odd", 0o600, []byte("12345678x"))
	w.Symlink("a/link", "b/c.txt")
	w.Dir("empty", 0o700)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(cpio, "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v: %s", err, out)
	}
	for name, want := range map[string]string{"a/b/c.txt": "hello", "a/odd": "12345678x", "a/link": "hello"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", name, got, err, want)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "a/link")); err != nil || target != "b/c.txt" {
		t.Errorf("a/link -> %q, %v", target, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "empty")); err != nil || !st.IsDir() {
		t.Errorf("empty: %v", err)
	}
}

func TestModuleOrder(t *testing.T) {
	dir := t.TempDir()
	dep := `kernel/drivers/nvme/host/nvme-tcp.ko.xz: kernel/drivers/nvme/host/nvme-fabrics.ko.xz kernel/drivers/nvme/host/nvme-core.ko.xz kernel/lib/crc64.ko.xz
kernel/drivers/nvme/host/nvme-fabrics.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz kernel/lib/crc64.ko.xz
kernel/drivers/nvme/host/nvme-core.ko.xz: kernel/lib/crc64.ko.xz
kernel/lib/crc64.ko.xz:
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/lib/crc16.ko.xz:
`
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/crypto/crc32c_generic.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	idx, err := loadModuleIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := idx.order([]string{"nvme-tcp", "crc32c-generic", "ext4", "nvme_core"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range got {
		if _, dup := pos[m]; dup {
			t.Fatalf("%s twice in %v", m, got)
		}
		pos[m] = i
	}
	if len(got) != 7 {
		t.Fatalf("order = %v, want the 7 loadable modules", got)
	}
	for m, deps := range idx.deps {
		for _, d := range deps {
			if pos[d] > pos[m] {
				t.Errorf("%s loads before its dependency %s: %v", m, d, got)
			}
		}
	}
	if _, err := idx.order([]string{"nosuchmod"}, nil); err == nil {
		t.Error("an unknown module was accepted")
	}
	if _, err := idx.order([]string{"nosuchmod"}, map[string]bool{"nosuchmod": true}); err != nil {
		t.Errorf("an optional unknown module: %v", err)
	}
}

func TestResultParse(t *testing.T) {
	var r Result
	r.parse([]byte("noise\r\n" +
		"@@nexstor STEP 1 connect 10.0.2.2 4420 nqn.a nqn.h\r\n" +
		"[ 1.0] kernel says @@nexstor OUT 1 instance=3 cntlid=1 ctrl=nvme3\r\n" +
		"@@nexstor OK 1\n" +
		"@@nexstor STEP 2 -connect 10.0.2.2 4420 nqn.a nqn.bad\n" +
		"@@nexstor FAIL 2 write /dev/nvme-fabrics: input/output error\n" +
		"@@nexstor STEP 3 mkfs /dev/nvme3n1\n" +
		"@@nexstor DONE 1 1\n"))
	if !r.Done || len(r.Steps) != 3 {
		t.Fatalf("parsed %+v", r)
	}
	c := r.Step("connect")
	if !c.OK || c.Value("instance") != "3" || c.Value("ctrl") != "nvme3" || c.Tolerated {
		t.Errorf("step 1 = %+v", c)
	}
	bad := r.StepsNamed("connect")[1]
	if !bad.Failed() || !bad.Tolerated || !strings.Contains(bad.Err, "input/output error") {
		t.Errorf("step 2 = %+v", bad)
	}
	if m := r.Step("mkfs"); m.OK || m.Failed() {
		t.Errorf("an unfinished step reads as finished: %+v", m)
	}
}

// TestBootSelfCheck proves the harness end to end in one boot: the kernel
// loads the NVMe/TCP, ext4 and virtio-net modules from the initramfs, the
// guest reaches a listener on the host's loopback, barriers reach the host,
// Config.Files are in place, e2fsprogs work on a RAM disk, O_DIRECT patterns round-trip, and a failing
// step is reported as such.
func TestBootSelfCheck(t *testing.T) {
	env := Require(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	heard := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		heard <- strings.TrimSpace(line)
		fmt.Fprintf(c, "ack %s\n", strings.TrimSpace(line))
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	// A port that nobody listens on: connecting there must fail.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	var mu sync.Mutex
	var barriers []string
	vm := env.Boot(t, Config{
		Modules: []string{"brd rd_nr=1 rd_size=65536"},
		Files:   map[string][]byte{"/etc/selfcheck/data": []byte("files-reach-the-guest\n")},
		Script: []string{
			"run test -c /dev/nvme-fabrics",
			"run test -d /sys/module/nvme_tcp",
			"run test -d /sys/module/ext4",
			"run grep -qx files-reach-the-guest /etc/selfcheck/data",
			fmt.Sprintf("dial 10.0.2.2 %d hello-from-guest", port),
			"barrier net-ok",
			"pattern-write /dev/ram0 50331648 8388608 11",
			"mkfs /dev/ram0 48M",
			"mount /dev/ram0 /mnt/r",
			"write-files /mnt/r/data 4 100000 5",
			"sync",
			"verify-files /mnt/r/data 4 100000 5",
			"umount /mnt/r",
			"fsck /dev/ram0",
			"pattern-verify /dev/ram0 50331648 8388608 11",
			"-pattern-verify /dev/ram0 50331648 4096 12",
			fmt.Sprintf("-connect 10.0.2.2 %d nqn.2024-11.io.nexstor:test nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001", closedPort),
			"barrier end",
		},
		Barrier: func(name string) error {
			mu.Lock()
			defer mu.Unlock()
			barriers = append(barriers, name)
			return nil
		},
	})
	res, err := vm.Wait(context.Background())
	t.Logf("boot took %v (accel %s, kernel %s)\n%s", res.Elapsed.Round(1e6), env.Accel, env.Release, res)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-heard:
		if got != "hello-from-guest" {
			t.Errorf("listener heard %q", got)
		}
	default:
		t.Error("the guest's dial never reached the host listener")
	}
	if got := res.Step("dial").Value("reply"); got != "ack" {
		t.Errorf("dial reply = %q, want ack (output %q)", got, res.Step("dial").Output)
	}
	mu.Lock()
	if strings.Join(barriers, ",") != "net-ok,end" {
		t.Errorf("barriers = %v", barriers)
	}
	mu.Unlock()
	for _, s := range res.Steps {
		if !s.Tolerated && !s.OK {
			t.Errorf("step %d %q: %s", s.Index, s.Line, s.Err)
		}
	}
	if s := res.StepsNamed("pattern-verify")[1]; !s.Failed() || !strings.Contains(s.Err, "mismatch") {
		t.Errorf("verifying with the wrong seed: %+v", s)
	}
	if s := res.Step("connect"); !s.Failed() {
		t.Errorf("connecting to a closed port: %+v", s)
	}
}

func TestModuleReadDecompresses(t *testing.T) {
	dir := t.TempDir()
	obj := bytes.Repeat([]byte("\x7fELF module object "), 1000)
	if err := os.MkdirAll(filepath.Join(dir, "kernel/fs"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"plain": "", "xz": "xz", "zst": "zstd"}
	var dep strings.Builder
	for name, tool := range files {
		p := filepath.Join(dir, "kernel/fs", name+".ko")
		if err := os.WriteFile(p, obj, 0o644); err != nil {
			t.Fatal(err)
		}
		rel := "kernel/fs/" + name + ".ko"
		if tool != "" {
			bin := testutil.RequireTool(t, tool)
			if out, err := exec.Command(bin, "-q", p).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", tool, err, out)
			}
			rel += "." + name
			os.Remove(p) // zstd keeps its input
		}
		fmt.Fprintf(&dep, "%s:\n", rel)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	idx, err := loadModuleIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name := range files {
		got, err := idx.read(name)
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		if !bytes.Equal(got, obj) {
			t.Errorf("module %s: %d bytes differ from the object", name, len(got))
		}
	}
}
