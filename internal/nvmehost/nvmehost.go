// Package nvmehost drives the Linux kernel's NVMe over Fabrics host: it
// lists the NVMe subsystems and their controllers (paths) from sysfs,
// connects new controllers through /dev/nvme-fabrics, and deletes dead
// ones. It is what `nexstor agent` (and the CSI node plugin) use on a
// consuming host; it needs a kernel with nvme-tcp, and root.
//
// Layout read (Linux 5.x/6.x): /sys/class/nvme-subsystem/<subsys>/subsysnqn,
// and for every controller <subsys>/<ctrl>/{state,transport,address,cntlid}
// (the same directories as /sys/class/nvme/<ctrl>).
package nvmehost

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Host is the kernel's NVMe host as seen through a sysfs root and a
// fabrics device. The zero value is not usable: use System() or set the
// paths (tests point them at a fake tree). Methods are safe for
// concurrent use (each reads or writes the files anew).
type Host struct {
	// Sysfs is the sysfs mount ("/sys").
	Sysfs string
	// Fabrics is the fabrics control device ("/dev/nvme-fabrics").
	Fabrics string
}

// System returns the host of this machine.
func System() *Host { return &Host{Sysfs: "/sys", Fabrics: "/dev/nvme-fabrics"} }

// Controller is one controller of a subsystem: one path.
type Controller struct {
	// Name is the controller's device name ("nvme3").
	Name string
	// State is the kernel's controller state: live, connecting,
	// resetting, deleting, dead, new.
	State string
	// Transport is "tcp", "rdma", "pcie", ...
	Transport string
	// Addr and Port are the target's address (traddr, trsvcid).
	Addr, Port string
	CntlID     int
}

// Live reports whether the path carries I/O now.
func (c Controller) Live() bool { return c.State == "live" }

// Subsystem is one NVMe subsystem the host is connected to, with its
// controllers.
type Subsystem struct {
	// Name is the sysfs name ("nvme-subsys2").
	Name        string
	NQN         string
	Controllers []Controller
}

// Subsystems lists the subsystems and their controllers, by name. A host
// without NVMe (no sysfs class) has none.
func (h *Host) Subsystems() ([]Subsystem, error) {
	dir := filepath.Join(h.Sysfs, "class", "nvme-subsystem")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("nvme host: list subsystems: %w", err)
	}
	var out []Subsystem
	for _, e := range ents {
		sd := filepath.Join(dir, e.Name())
		nqn, err := readAttr(sd, "subsysnqn")
		if err != nil {
			continue // going away while we look
		}
		s := Subsystem{Name: e.Name(), NQN: nqn}
		cs, _ := os.ReadDir(sd)
		for _, c := range cs {
			if !isCtrlName(c.Name()) {
				continue
			}
			if ctrl, err := readController(filepath.Join(sd, c.Name()), c.Name()); err == nil {
				s.Controllers = append(s.Controllers, ctrl)
			}
		}
		sort.Slice(s.Controllers, func(i, j int) bool { return s.Controllers[i].Name < s.Controllers[j].Name })
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// isCtrlName matches "nvme<N>" (not namespaces such as "nvme0n1" or
// "nvme0c1n1").
func isCtrlName(s string) bool {
	n, ok := strings.CutPrefix(s, "nvme")
	if !ok || n == "" {
		return false
	}
	_, err := strconv.Atoi(n)
	return err == nil
}

func readController(dir, name string) (Controller, error) {
	c := Controller{Name: name}
	var err error
	if c.State, err = readAttr(dir, "state"); err != nil {
		return c, err
	}
	c.Transport, _ = readAttr(dir, "transport")
	addr, _ := readAttr(dir, "address")
	for _, kv := range strings.Split(addr, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
		switch k {
		case "traddr":
			c.Addr = v
		case "trsvcid":
			c.Port = v
		}
	}
	if s, err := readAttr(dir, "cntlid"); err == nil {
		c.CntlID, _ = strconv.Atoi(s)
	}
	return c, nil
}

func readAttr(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// ConnectOptions are the options of a new controller.
type ConnectOptions struct {
	// NQN is the subsystem; Addr and Port the target (TCP).
	NQN, Addr, Port string
	// HostNQN identifies this host; empty lets the kernel use its default.
	HostNQN string
	// CtrlLossTmo is how long (seconds) the kernel keeps reconnecting a
	// lost path before it gives the controller up; -1 forever. With
	// multipath, I/O is queued meanwhile while no path is live.
	CtrlLossTmo int
	// ReconnectDelay is the pause between reconnect attempts (seconds); 0
	// leaves the kernel default.
	ReconnectDelay int
	// IOQueues: 0 leaves the kernel default (one per CPU).
	IOQueues int
}

// String is the option string the fabrics device takes.
func (o ConnectOptions) String() string {
	parts := []string{"transport=tcp", "traddr=" + o.Addr, "trsvcid=" + o.Port, "nqn=" + o.NQN}
	if o.HostNQN != "" {
		parts = append(parts, "hostnqn="+o.HostNQN)
	}
	if o.CtrlLossTmo != 0 {
		parts = append(parts, "ctrl_loss_tmo="+strconv.Itoa(o.CtrlLossTmo))
	}
	if o.ReconnectDelay > 0 {
		parts = append(parts, "reconnect_delay="+strconv.Itoa(o.ReconnectDelay))
	}
	if o.IOQueues > 0 {
		parts = append(parts, "nr_io_queues="+strconv.Itoa(o.IOQueues))
	}
	return strings.Join(parts, ",")
}

// Connect creates a controller (a path) and returns its name ("nvme4").
// The kernel connects synchronously: an error is the target's refusal or
// an unreachable address, as the kernel reports it.
func (h *Host) Connect(o ConnectOptions) (string, error) {
	if o.NQN == "" || o.Addr == "" || o.Port == "" {
		return "", fmt.Errorf("nvme connect: subsystem NQN, address and port are all needed (got %q %q %q)", o.NQN, o.Addr, o.Port)
	}
	f, err := os.OpenFile(h.Fabrics, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("nvme connect %s at %s:%s: open %s (is the nvme-fabrics module loaded, and are we root?): %w",
			o.NQN, o.Addr, o.Port, h.Fabrics, err)
	}
	defer f.Close()
	if _, err := f.Write([]byte(o.String())); err != nil {
		return "", fmt.Errorf("nvme connect %s at %s:%s: %w", o.NQN, o.Addr, o.Port, err)
	}
	buf := make([]byte, 256)
	n, err := f.Read(buf)
	if err != nil {
		return "", fmt.Errorf("nvme connect %s at %s:%s: read the new controller: %w", o.NQN, o.Addr, o.Port, err)
	}
	for _, kv := range strings.Split(strings.TrimSpace(string(buf[:n])), ",") {
		if v, ok := strings.CutPrefix(kv, "instance="); ok {
			return "nvme" + v, nil
		}
	}
	return "", fmt.Errorf("nvme connect %s: the kernel answered %q, without an instance", o.NQN, buf[:n])
}

// Delete deletes a controller (disconnects that path). A controller that
// is gone already is not an error.
func (h *Host) Delete(ctrl string) error {
	if !isCtrlName(ctrl) {
		return fmt.Errorf("nvme delete: %q is not a controller name (nvmeN)", ctrl)
	}
	p := filepath.Join(h.Sysfs, "class", "nvme", ctrl, "delete_controller")
	err := os.WriteFile(p, []byte("1"), 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nvme delete %s: %w", ctrl, err)
	}
	return nil
}

// HostNQN returns this host's NQN from path ("/etc/nvme/hostnqn"),
// writing a new UUID-based one there when the file is missing.
func HostNQN(path, newUUID string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("host NQN: %w", err)
	}
	nqn := "nqn.2014-08.org.nvmexpress:uuid:" + newUUID
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("host NQN: %w", err)
	}
	if err := os.WriteFile(path, []byte(nqn+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("host NQN: %w", err)
	}
	return nqn, nil
}
