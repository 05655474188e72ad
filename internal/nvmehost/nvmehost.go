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

	"github.com/google/uuid"
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
	// ANAState is the ANA state of the controller's namespace paths
	// (ana_state of its nvme<s>c<c>n<n> disks: optimized, non-optimized,
	// inaccessible, persistent-loss, change): the first that is not
	// optimized when they differ; "" when the kernel shows none (no
	// namespace, or a target without ANA).
	ANAState string
}

// Live reports whether the path is connected now.
func (c Controller) Live() bool { return c.State == "live" }

// Serving reports whether the path carries I/O now: live, and in an ANA
// state that admits I/O (a target without ANA admits it).
func (c Controller) Serving() bool {
	switch c.ANAState {
	case "inaccessible", "persistent-loss", "change":
		return false
	}
	return c.Live()
}

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
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !isPathDisk(e.Name()) {
			continue
		}
		st, err := readAttr(filepath.Join(dir, e.Name()), "ana_state")
		if err != nil || st == "" {
			continue
		}
		if c.ANAState == "" || c.ANAState == "optimized" {
			c.ANAState = st
		}
	}
	return c, nil
}

// isPathDisk matches a controller's namespace path "nvme<s>c<c>n<n>".
func isPathDisk(s string) bool {
	n, ok := strings.CutPrefix(s, "nvme")
	if !ok {
		return false
	}
	sub, rest, ok := strings.Cut(n, "c")
	if !ok {
		return false
	}
	ctl, ns, ok := strings.Cut(rest, "n")
	if !ok {
		return false
	}
	for _, x := range []string{sub, ctl, ns} {
		if _, err := strconv.Atoi(x); err != nil {
			return false
		}
	}
	return true
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
	// HostNQN and HostID identify this host (HostIdentity); empty lets the
	// kernel use its defaults. The kernel refuses one host NQN with two
	// host IDs, so every path connected as one NQN must carry the same ID.
	HostNQN, HostID string
	// CtrlLossTmo is how long (seconds) the kernel keeps reconnecting a
	// lost path before it gives the controller up; -1 forever; 0 leaves
	// the kernel default. With multipath, I/O is queued meanwhile while
	// no path is live.
	CtrlLossTmo int
	// ReconnectDelay is the pause between reconnect attempts (seconds); 0
	// leaves the kernel default.
	ReconnectDelay int
	// KeepAliveTmo (seconds); 0 leaves the kernel default.
	KeepAliveTmo int
	// IOQueues: 0 leaves the kernel default (one per CPU).
	IOQueues int
}

// String is the option string the fabrics device takes.
func (o ConnectOptions) String() string {
	parts := []string{"transport=tcp", "traddr=" + o.Addr, "trsvcid=" + o.Port, "nqn=" + o.NQN}
	add := func(k, v string) { parts = append(parts, k+"="+v) }
	if o.HostNQN != "" {
		add("hostnqn", o.HostNQN)
	}
	if o.HostID != "" {
		add("hostid", o.HostID)
	}
	if o.CtrlLossTmo != 0 {
		add("ctrl_loss_tmo", strconv.Itoa(o.CtrlLossTmo))
	}
	if o.ReconnectDelay > 0 {
		add("reconnect_delay", strconv.Itoa(o.ReconnectDelay))
	}
	if o.KeepAliveTmo > 0 {
		add("keep_alive_tmo", strconv.Itoa(o.KeepAliveTmo))
	}
	if o.IOQueues > 0 {
		add("nr_io_queues", strconv.Itoa(o.IOQueues))
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
	return ParseConnectAnswer(string(buf[:n]))
}

// ParseConnectAnswer reads the fabrics device's answer to a connect,
// "instance=N,cntlid=M", into the controller name "nvmeN".
func ParseConnectAnswer(s string) (string, error) {
	for _, kv := range strings.Split(strings.TrimSpace(s), ",") {
		if k, v, _ := strings.Cut(kv, "="); k == "instance" {
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				return "nvme" + strconv.Itoa(n), nil
			}
		}
	}
	return "", fmt.Errorf("the kernel answered the connect with %q, not instance=N", strings.TrimSpace(s))
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

// DefaultConfigDir is where the host's NVMe identity lives, as nvme-cli
// keeps it: the files hostnqn and hostid.
const DefaultConfigDir = "/etc/nvme"

// uuidNQNPrefix starts the host NQNs made of a UUID (NVMe base spec 4.7).
const uuidNQNPrefix = "nqn.2014-08.org.nvmexpress:uuid:"

// HostIdentity returns this host's NVMe host NQN and host ID from dir
// (DefaultConfigDir): the files hostnqn and hostid. A missing hostnqn is
// generated (a UUID NQN) and written, as `nvme gen-hostnqn` would; a
// missing hostid is derived from the NQN (HostIDFor) and written. Both are
// written atomically (mode 0644) and never replaced once they exist, so
// every program on the host (the CSI node plugin, the agent) agrees.
func HostIdentity(dir string) (nqn, id string, err error) {
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return strings.TrimSpace(string(b)), err
	}
	get := func(name, gen string) (string, error) {
		v, err := read(name)
		if err != nil || v != "" {
			return v, err
		}
		if err := writeOnce(filepath.Join(dir, name), gen+"\n"); err != nil {
			return "", err
		}
		return read(name) // another writer may have won
	}
	if nqn, err = get("hostnqn", uuidNQNPrefix+uuid.NewString()); err != nil {
		return "", "", fmt.Errorf("NVMe host identity in %s: %w", dir, err)
	}
	if id, err = get("hostid", HostIDFor(nqn)); err != nil {
		return "", "", fmt.Errorf("NVMe host identity in %s: %w", dir, err)
	}
	return nqn, id, nil
}

// HostIDFor returns the host ID to connect with as host NQN nqn: the UUID
// of a UUID NQN, else a UUID derived from the NQN.
func HostIDFor(nqn string) string {
	if s, ok := strings.CutPrefix(nqn, uuidNQNPrefix); ok {
		if id, err := uuid.Parse(s); err == nil {
			return id.String()
		}
	}
	return uuid.NewSHA1(uuid.NameSpaceURL, []byte("nvme-hostnqn:"+nqn)).String()
}

// writeOnce creates path with content, atomically, unless it exists.
func writeOnce(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(content)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// A hard link fails when path exists: the first writer wins.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}
