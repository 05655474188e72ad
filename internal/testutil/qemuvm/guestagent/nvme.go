package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	fabricsDev   = "/dev/nvme-fabrics"
	discoveryNQN = "nqn.2014-08.org.nvmexpress.discovery"

	// nvmeIoctlAdminCmd is _IOWR('N', 0x41, struct nvme_passthru_cmd).
	nvmeIoctlAdminCmd = 0xC0484E41
	opGetLogPage      = 0x02
	lidDiscovery      = 0x70
	discEntrySize     = 1024

	// Under TCG a controller takes seconds to come up; be generous, the
	// host kills the machine at its own deadline anyway.
	deviceWait = 120 * time.Second
)

// passthru is struct nvme_passthru_cmd of <linux/nvme_ioctl.h> (72 bytes).
type passthru struct {
	Opcode      uint8
	Flags       uint8
	Rsvd1       uint16
	NSID        uint32
	Cdw2, Cdw3  uint32
	Metadata    uint64
	Addr        uint64
	MetadataLen uint32
	DataLen     uint32
	Cdw10       uint32
	Cdw11       uint32
	Cdw12       uint32
	Cdw13       uint32
	Cdw14       uint32
	Cdw15       uint32
	TimeoutMs   uint32
	Result      uint32
}

var _ [72 - unsafe.Sizeof(passthru{})]struct{}

// fabricsConnect writes an option string to /dev/nvme-fabrics, which makes the
// kernel create a controller, and returns the "instance=N,cntlid=M" answer.
// A target that refuses the host makes the write itself fail.
func fabricsConnect(opts string) (instance int, cntlid int, err error) {
	f, err := os.OpenFile(fabricsDev, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("open %s (is nvme-fabrics loaded?): %w", fabricsDev, err)
	}
	defer f.Close()
	if _, err := f.Write([]byte(opts)); err != nil {
		return 0, 0, fmt.Errorf("connect %q: %w", opts, err)
	}
	buf := make([]byte, 256)
	n, err := f.Read(buf)
	if err != nil {
		return 0, 0, fmt.Errorf("connect %q: %w", opts, err)
	}
	answer := strings.TrimSpace(string(buf[:n]))
	instance, cntlid = -1, -1
	for _, kv := range strings.Split(answer, ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "instance":
			instance, _ = strconv.Atoi(v)
		case "cntlid":
			cntlid, _ = strconv.Atoi(v)
		}
	}
	if instance < 0 {
		return 0, 0, fmt.Errorf("connect %q: unexpected answer %q", opts, answer)
	}
	return instance, cntlid, nil
}

func fabricsOptions(addr, port, nqn, hostnqn string, extra []string) string {
	o := fmt.Sprintf("transport=tcp,traddr=%s,trsvcid=%s,nqn=%s,hostnqn=%s", addr, port, nqn, hostnqn)
	for _, e := range extra {
		o += "," + e
	}
	return o
}

func stepConnect(a *agent, args []string) error {
	opts := fabricsOptions(args[0], args[1], args[2], args[3], args[4:])
	inst, cntlid, err := fabricsConnect(opts)
	if err != nil {
		return err
	}
	ctrl := fmt.Sprintf("nvme%d", inst)
	a.out("instance=%d cntlid=%d ctrl=%s", inst, cntlid, ctrl)
	a.vars["CTRL"] = ctrl
	dev, err := waitNamespace(ctrl)
	if err != nil {
		return err
	}
	a.vars["DEV"] = dev
	size, _ := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "size"))
	lbs, _ := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "queue/logical_block_size"))
	a.out("dev=%s sectors=%s lbs=%s", dev, strings.TrimSpace(string(size)), strings.TrimSpace(string(lbs)))
	return nil
}

var (
	// nvme<subsys>c<ctrl>n<ns>: the hidden per-path disk of a multipath
	// head, whose block device is nvme<subsys>n<ns>.
	pathDiskRE = regexp.MustCompile(`^nvme(\d+)c\d+n(\d+)$`)
	diskRE     = regexp.MustCompile(`^nvme\d+n(\d+)$`)
)

// namespaces returns the block devices (/dev paths) of the namespaces of
// controller ctrl that exist now, by namespace ID.
func namespaces(ctrl string) map[int]string {
	out := map[int]string{}
	ents, _ := os.ReadDir(filepath.Join("/sys/class/nvme", ctrl))
	for _, e := range ents {
		name := e.Name()
		var nsid string
		if m := pathDiskRE.FindStringSubmatch(name); m != nil {
			name, nsid = "nvme"+m[1]+"n"+m[2], m[2]
		} else if m := diskRE.FindStringSubmatch(name); m != nil {
			nsid = m[1]
		} else {
			continue
		}
		// The kernel registers a disk's queue attributes a moment after
		// the disk itself: until they are there, the device is not
		// ready to describe (logical_block_size reads as nothing).
		if _, err := os.Stat(filepath.Join("/sys/class/block", name, "queue", "logical_block_size")); err != nil {
			continue
		}
		id, _ := strconv.Atoi(nsid)
		if dev, err := devNode(name, "/sys/class/block"); err == nil {
			out[id] = dev
		}
	}
	return out
}

// waitNamespace waits for the first namespace of controller ctrl to appear as
// a block device and returns its /dev path.
func waitNamespace(ctrl string) (string, error) {
	deadline := time.Now().Add(deviceWait)
	for {
		ns := namespaces(ctrl)
		if len(ns) > 0 {
			first := -1
			for id := range ns {
				if first < 0 || id < first {
					first = id
				}
			}
			return ns[first], nil
		}
		if time.Now().After(deadline) {
			state, _ := os.ReadFile(filepath.Join("/sys/class/nvme", ctrl, "state"))
			return "", fmt.Errorf("%s: no namespace block device after %v (controller state %q)", ctrl, deviceWait, strings.TrimSpace(string(state)))
		}
		// Often: a connect step's time (timed) is then the kernel's,
		// not this loop's.
		time.Sleep(10 * time.Millisecond)
	}
}

// stepWaitNamespaces waits until controller CTRL has exactly COUNT
// namespaces, as after the target added or removed one and the kernel
// rescanned on the Namespace Attribute Changed event, and sets $NS<nsid>.
func stepWaitNamespaces(a *agent, args []string) error {
	ctrl := args[0]
	want, err := strconv.Atoi(args[1])
	if err != nil || want < 0 {
		return fmt.Errorf("count %q: want a non-negative integer", args[1])
	}
	deadline := time.Now().Add(deviceWait)
	for {
		ns := namespaces(ctrl)
		if len(ns) == want {
			ids := make([]int, 0, len(ns))
			for id := range ns {
				ids = append(ids, id)
			}
			sort.Ints(ids)
			for _, id := range ids {
				a.vars[fmt.Sprintf("NS%d", id)] = ns[id]
				a.out("nsid=%d dev=%s", id, ns[id])
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d namespaces after %v, want %d: %v", ctrl, len(ns), deviceWait, want, ns)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stepWaitRemoved waits until the kernel has removed controller CTRL by
// itself, as when it gives up reconnecting (ctrl_loss_tmo) to a target that
// no longer lets this host in.
func stepWaitRemoved(a *agent, args []string) error {
	ctrl := args[0]
	start := time.Now()
	for {
		if _, err := os.Stat(filepath.Join("/sys/class/nvme", ctrl)); errors.Is(err, os.ErrNotExist) {
			a.out("removed %s after %v", ctrl, time.Since(start).Round(time.Millisecond))
			return nil
		}
		if time.Since(start) > deviceWait {
			state, _ := os.ReadFile(filepath.Join("/sys/class/nvme", ctrl, "state"))
			return fmt.Errorf("%s still present after %v (state %q)", ctrl, deviceWait, strings.TrimSpace(string(state)))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func stepCtrlState(a *agent, args []string) error {
	b, err := os.ReadFile(filepath.Join("/sys/class/nvme", args[0], "state"))
	if err != nil {
		return fmt.Errorf("state of %s: %w", args[0], err)
	}
	a.out("state=%s", strings.TrimSpace(string(b)))
	return nil
}

// devNode returns /dev/name, creating the node from sysfs when devtmpfs has
// not (yet) done so.
func devNode(name, class string) (string, error) {
	p := "/dev/" + name
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	b, err := os.ReadFile(filepath.Join(class, name, "dev"))
	if err != nil {
		return "", err
	}
	var maj, min uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &maj, &min); err != nil {
		return "", fmt.Errorf("%s/%s/dev: %q: %w", class, name, b, err)
	}
	mode := uint32(unix.S_IFBLK)
	if class != "/sys/class/block" {
		mode = unix.S_IFCHR
	}
	if err := unix.Mknod(p, mode|0o600, int(unix.Mkdev(maj, min))); err != nil && !errors.Is(err, unix.EEXIST) {
		return "", fmt.Errorf("mknod %s: %w", p, err)
	}
	return p, nil
}

func stepDisconnect(a *agent, args []string) error {
	ctrl := args[0]
	p := filepath.Join("/sys/class/nvme", ctrl, "delete_controller")
	if err := os.WriteFile(p, []byte("1"), 0); err != nil {
		return fmt.Errorf("disconnect %s: %w", ctrl, err)
	}
	deadline := time.Now().Add(deviceWait)
	for {
		if _, err := os.Stat(filepath.Join("/sys/class/nvme", ctrl)); errors.Is(err, os.ErrNotExist) {
			a.out("deleted %s", ctrl)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("disconnect %s: still present after %v", ctrl, deviceWait)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// discEntry is one record of the discovery log page (NVMe-oF 5.4, Figure 297).
type discEntry struct {
	trtype, adrfam, subtype, treq uint8
	portID, cntlID, asqsz         uint16
	trsvcid, subnqn, traddr       string
}

func stepDiscover(a *agent, args []string) error {
	opts := fabricsOptions(args[0], args[1], discoveryNQN, args[2], args[3:])
	inst, cntlid, err := fabricsConnect(opts)
	if err != nil {
		return err
	}
	ctrl := fmt.Sprintf("nvme%d", inst)
	a.out("instance=%d cntlid=%d ctrl=%s", inst, cntlid, ctrl)
	defer func() {
		if err := os.WriteFile(filepath.Join("/sys/class/nvme", ctrl, "delete_controller"), []byte("1"), 0); err != nil {
			a.out("delete %s: %v", ctrl, err)
		}
	}()
	var dev string
	deadline := time.Now().Add(deviceWait)
	for {
		if dev, err = devNode(ctrl, "/sys/class/nvme"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no character device after %v: %w", ctrl, deviceWait, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	hdr, err := getLogPage(f, lidDiscovery, discEntrySize)
	if err != nil {
		return err
	}
	genctr := binary.LittleEndian.Uint64(hdr[0:])
	numrec := binary.LittleEndian.Uint64(hdr[8:])
	recfmt := binary.LittleEndian.Uint16(hdr[16:])
	a.out("genctr=%d numrec=%d recfmt=%d", genctr, numrec, recfmt)
	if numrec > 256 {
		return fmt.Errorf("discovery log: implausible numrec %d", numrec)
	}
	page, err := getLogPage(f, lidDiscovery, discEntrySize*(1+int(numrec)))
	if err != nil {
		return err
	}
	for i := 0; i < int(numrec); i++ {
		e := parseDiscEntry(page[discEntrySize*(1+i):])
		a.out("entry=%d trtype=%d adrfam=%d subtype=%d treq=%d portid=%d cntlid=%d asqsz=%d trsvcid=%s traddr=%s subnqn=%s",
			i, e.trtype, e.adrfam, e.subtype, e.treq, e.portID, e.cntlID, e.asqsz, e.trsvcid, e.traddr, e.subnqn)
	}
	return nil
}

func parseDiscEntry(b []byte) discEntry {
	str := func(p []byte) string {
		p = bytes.TrimRight(p, "\x00 ")
		return string(p)
	}
	return discEntry{
		trtype: b[0], adrfam: b[1], subtype: b[2], treq: b[3],
		portID:  binary.LittleEndian.Uint16(b[4:]),
		cntlID:  binary.LittleEndian.Uint16(b[6:]),
		asqsz:   binary.LittleEndian.Uint16(b[8:]),
		trsvcid: str(b[32:64]),
		subnqn:  str(b[256:512]),
		traddr:  str(b[512:768]),
	}
}

// getLogPage issues Get Log Page for lid through the admin passthrough ioctl
// and returns length bytes (a multiple of 4) of it from offset 0.
func getLogPage(f *os.File, lid uint8, length int) ([]byte, error) {
	buf := make([]byte, length)
	numd := uint32(length/4 - 1)
	cmd := passthru{
		Opcode:  opGetLogPage,
		Addr:    uint64(uintptr(unsafe.Pointer(&buf[0]))),
		DataLen: uint32(length),
		Cdw10:   uint32(lid) | (numd&0xffff)<<16,
		Cdw11:   numd >> 16,
	}
	status, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), nvmeIoctlAdminCmd, uintptr(unsafe.Pointer(&cmd)))
	runtime.KeepAlive(buf)
	if errno != 0 {
		return nil, fmt.Errorf("get log page %#x (%d bytes): ioctl: %w", lid, length, errno)
	}
	// A positive return is the NVMe status of a completed command.
	if status != 0 {
		return nil, fmt.Errorf("get log page %#x (%d bytes): NVMe status %#x", lid, length, status)
	}
	return buf, nil
}

// stepWaitSize waits until the kernel reports the block device DEV
// (/dev/nvmeXnY) at BYTES bytes: after a target grows a namespace, the host
// revalidates it on the attribute-changed event.
func stepWaitSize(a *agent, args []string) error {
	want, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		return fmt.Errorf("wait-size: %q is not a byte count", args[1])
	}
	sysfs := filepath.Join("/sys/class/block", filepath.Base(args[0]), "size")
	start := time.Now()
	for {
		b, err := os.ReadFile(sysfs)
		if err != nil {
			return fmt.Errorf("size of %s: %w", args[0], err)
		}
		sectors, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if sectors*512 == want {
			a.out("size=%d after %v", want, time.Since(start).Round(time.Millisecond))
			return nil
		}
		if time.Since(start) > deviceWait {
			return fmt.Errorf("%s is %d bytes after %v, want %d", args[0], sectors*512, deviceWait, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
