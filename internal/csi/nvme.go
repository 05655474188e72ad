package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/nvmehost"
)

// NVMeOptions configure the NVMe/TCP transport. Zero values take the
// defaults named on each field.
type NVMeOptions struct {
	// HostNQN and HostID are the host's own NVMe identity, used when a
	// publish context names no host NQN (HostIdentity reads them).
	HostNQN, HostID string
	// CtrlLossTimeout is how long the kernel keeps reconnecting a lost
	// path before it removes the controller (ctrl_loss_tmo); default
	// DefaultCtrlLossTimeout. Long enough to ride out a node restart and
	// a nexus moving, bounded so that a path that never returns goes.
	CtrlLossTimeout time.Duration
	// ReconnectDelay is the pause between reconnect attempts
	// (reconnect_delay); default DefaultReconnectDelay.
	ReconnectDelay time.Duration
	// KeepAliveTimeout is the controller's keep-alive timeout
	// (keep_alive_tmo); zero leaves the kernel's default.
	KeepAliveTimeout time.Duration
	// DeviceTimeout bounds the wait for a namespace's block device after
	// a connect, for a controller to go away after a disconnect, and for
	// a grown size; default DefaultDeviceTimeout.
	DeviceTimeout time.Duration
	// SysfsRoot ("/sys"), DevRoot ("/dev") and FabricsDevice
	// ("/dev/nvme-fabrics") are where the kernel's interfaces are; tests
	// point them at a fake tree.
	SysfsRoot, DevRoot, FabricsDevice string
	Log                               *slog.Logger
}

// Defaults of NVMeOptions.
const (
	DefaultCtrlLossTimeout = 30 * time.Minute
	DefaultReconnectDelay  = 2 * time.Second
	DefaultDeviceTimeout   = 2 * time.Minute
)

// NVMe is the NVMe/TCP transport: it connects through the kernel's
// initiator by writing a connect string to /dev/nvme-fabrics (no nvme-cli
// needed), finds the namespace's block device in sysfs, and disconnects
// through each controller's delete_controller. With native NVMe multipath
// the block device is the multipath head (nvme<subsys>n<nsid>) that every
// path of the subsystem shares. Safe for concurrent use.
type NVMe struct {
	o NVMeOptions
	// connectFn writes a connect string to the fabrics device; tests
	// replace it.
	connectFn func(opts string) (string, error)
}

// NewNVMe returns the NVMe/TCP transport.
func NewNVMe(o NVMeOptions) *NVMe {
	if o.CtrlLossTimeout == 0 {
		o.CtrlLossTimeout = DefaultCtrlLossTimeout
	}
	if o.ReconnectDelay == 0 {
		o.ReconnectDelay = DefaultReconnectDelay
	}
	if o.DeviceTimeout == 0 {
		o.DeviceTimeout = DefaultDeviceTimeout
	}
	if o.SysfsRoot == "" {
		o.SysfsRoot = "/sys"
	}
	if o.DevRoot == "" {
		o.DevRoot = "/dev"
	}
	if o.FabricsDevice == "" {
		o.FabricsDevice = "/dev/nvme-fabrics"
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	x := &NVMe{o: o}
	x.connectFn = x.connect
	return x
}

// ctrl is one NVMe controller as sysfs shows it.
type ctrl struct {
	name, subsysNQN, transport, state, hostNQN string
	addr                                       map[string]string
}

func (x *NVMe) sys(p ...string) string {
	return filepath.Join(append([]string{x.o.SysfsRoot}, p...)...)
}

func readAttr(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

var ctrlNameRE = regexp.MustCompile(`^nvme\d+$`)

// controllers lists the host's NVMe controllers.
func (x *NVMe) controllers() []ctrl {
	ents, _ := os.ReadDir(x.sys("class", "nvme"))
	var out []ctrl
	for _, e := range ents {
		if !ctrlNameRE.MatchString(e.Name()) {
			continue
		}
		d := x.sys("class", "nvme", e.Name())
		c := ctrl{name: e.Name(), subsysNQN: readAttr(filepath.Join(d, "subsysnqn")), transport: readAttr(filepath.Join(d, "transport")),
			state: readAttr(filepath.Join(d, "state")), hostNQN: readAttr(filepath.Join(d, "hostnqn")), addr: map[string]string{}}
		for _, kv := range strings.Split(readAttr(filepath.Join(d, "address")), ",") {
			if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
				c.addr[k] = v
			}
		}
		out = append(out, c)
	}
	return out
}

// hostOf returns the host NQN and host ID to connect to t as.
func (x *NVMe) hostOf(t Target) (nqn, id string) {
	if t.HostNQN == "" || t.HostNQN == x.o.HostNQN {
		return x.o.HostNQN, x.o.HostID
	}
	return t.HostNQN, nvmehost.HostIDFor(t.HostNQN)
}

// paths returns the controllers of the volume's subsystem that this host
// opened as the target's host NQN, on any address (a nexus that moved
// leaves a path to its old address).
func (x *NVMe) paths(t Target) []ctrl {
	host, _ := x.hostOf(t)
	var out []ctrl
	for _, c := range x.controllers() {
		if c.subsysNQN == t.NQN && c.transport == "tcp" && (c.hostNQN == "" || c.hostNQN == host) {
			out = append(out, c)
		}
	}
	return out
}

// connectOptions is the string written to /dev/nvme-fabrics. A lost path
// is retried every reconnect_delay until ctrl_loss_tmo, while the
// multipath head queues I/O for the other paths or the return.
func (x *NVMe) connectOptions(addr, port, nqn, hostNQN, hostID string) string {
	o := nvmehost.ConnectOptions{NQN: nqn, Addr: addr, Port: port, HostNQN: hostNQN, HostID: hostID,
		CtrlLossTmo: int(x.o.CtrlLossTimeout / time.Second), ReconnectDelay: max(1, int(x.o.ReconnectDelay/time.Second))}
	if x.o.KeepAliveTimeout > 0 {
		o.KeepAliveTmo = max(1, int(x.o.KeepAliveTimeout/time.Second))
	}
	return o.String()
}

// connect writes opts to the fabrics device and returns the new
// controller's name from the kernel's answer ("instance=3,cntlid=1").
func (x *NVMe) connect(opts string) (string, error) {
	f, err := os.OpenFile(x.o.FabricsDevice, os.O_RDWR, 0)
	if err != nil {
		return "", fault.Wrap(err, fault.Unavailable, CodeAttach, fmt.Sprintf("open %s", x.o.FabricsDevice),
			"load the kernel's NVMe/TCP initiator on the node (modprobe nvme-tcp) and give the node plugin /dev")
	}
	defer f.Close()
	if _, err := f.Write([]byte(opts)); err != nil {
		return "", err
	}
	buf := make([]byte, 256)
	n, err := f.Read(buf)
	if err != nil {
		return "", fmt.Errorf("read the answer of %s: %w", x.o.FabricsDevice, err)
	}
	return nvmehost.ParseConnectAnswer(string(buf[:n]))
}

var (
	// nvme<subsys>c<ctrl>n<ns>: the hidden per-path disk of a multipath
	// head, whose block device is nvme<subsys>n<ns>.
	pathDiskRE = regexp.MustCompile(`^nvme(\d+)c\d+n(\d+)$`)
	diskRE     = regexp.MustCompile(`^nvme\d+n\d+$`)
)

// namespaceDisk returns the block device name of the first namespace of
// controller c, "" while it has none.
func (x *NVMe) namespaceDisk(c string) string {
	ents, _ := os.ReadDir(x.sys("class", "nvme", c))
	var disks []string
	for _, e := range ents {
		if m := pathDiskRE.FindStringSubmatch(e.Name()); m != nil {
			disks = append(disks, "nvme"+m[1]+"n"+m[2])
		} else if diskRE.MatchString(e.Name()) {
			disks = append(disks, e.Name())
		}
	}
	slices.Sort(disks) // a nexus exports one namespace, nsid 1
	for _, d := range disks {
		if _, err := os.Stat(x.sys("class", "block", d)); err == nil {
			return d
		}
	}
	return ""
}

// checkIdentity refuses a namespace whose UUID is not the volume's: a
// device is never mounted on the word of its address alone.
func (x *NVMe) checkIdentity(disk string, t Target) error {
	got := strings.ToLower(readAttr(x.sys("class", "block", disk, "uuid")))
	if got == "" || strings.Trim(got, "0-") == "" {
		// The kernel shows no UUID for a namespace without one; ours
		// always have one, so this is another target.
		return fault.New(fault.FailedPrecondition, CodeIdentity,
			fmt.Sprintf("%s (subsystem %s) reports no namespace UUID; volume %s's has one", disk, t.NQN, t.VolumeID),
			"check that the URI in the publish context is the volume's nexus")
	}
	if got != strings.ToLower(t.VolumeID) {
		return fault.New(fault.FailedPrecondition, CodeIdentity,
			fmt.Sprintf("%s (subsystem %s) is namespace %s, not volume %s", disk, t.NQN, got, t.VolumeID),
			"check that the URI in the publish context is the volume's nexus")
	}
	return nil
}

// devNode returns /dev/<disk>, making the node from sysfs when the
// host's /dev does not have it (a container's private /dev).
func (x *NVMe) devNode(disk string) (string, error) {
	return blockDevNode(x.o.DevRoot, x.o.SysfsRoot, disk)
}

func blockDevNode(devRoot, sysfsRoot, disk string) (string, error) {
	p := filepath.Join(devRoot, disk)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	b, err := os.ReadFile(filepath.Join(sysfsRoot, "class", "block", disk, "dev"))
	if err != nil {
		return "", err
	}
	var maj, mnr uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &maj, &mnr); err != nil {
		return "", fmt.Errorf("%s/class/block/%s/dev: %q: %w", sysfsRoot, disk, b, err)
	}
	if err := unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(maj, mnr))); err != nil && !errors.Is(err, unix.EEXIST) {
		return "", fmt.Errorf("mknod %s: %w", p, err)
	}
	return p, nil
}

// resolve returns an IP address for host: the kernel's traddr is numeric.
func resolve(ctx context.Context, host string) (string, error) {
	if ip := net.ParseIP(host); ip != nil {
		return host, nil
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil || len(ips) == 0 {
		return "", fault.Wrap(err, fault.Unavailable, CodeAttach, fmt.Sprintf("resolve %s", host),
			"make the nexus node's NVMe/TCP address resolvable from this node, or advertise an IP address")
	}
	return ips[0].IP.String(), nil
}

// Attach implements Transport.
func (x *NVMe) Attach(ctx context.Context, t Target) (string, error) {
	host, port, nqn, err := parseNVMfURI(t.URI)
	if err != nil {
		return "", err
	}
	if nqn != t.NQN {
		return "", badRequest("volume %s: URI %s names subsystem %s, not %s", t.VolumeID, t.URI, nqn, t.NQN)
	}
	addr, err := resolve(ctx, host)
	if err != nil {
		return "", err
	}
	hostNQN, hostID := x.hostOf(t)
	if hostNQN == "" {
		return "", fault.New(fault.FailedPrecondition, CodeHostNQN, fmt.Sprintf("volume %s: no host NQN to connect as", t.VolumeID),
			"give the node plugin the host's NVMe identity (/etc/nvme) or --host-nqn")
	}
	var c string
	for _, p := range x.paths(t) {
		if p.addr["traddr"] == addr && p.addr["trsvcid"] == port && p.state != "deleting" {
			c = p.name
			x.o.Log.Info("nvme: reusing the connection", "volume", t.VolumeID, "ctrl", c, "state", p.state)
			break
		}
	}
	if c == "" {
		opts := x.connectOptions(addr, port, nqn, hostNQN, hostID)
		c, err = x.connectFn(opts)
		if errors.Is(err, syscall.EALREADY) {
			// Connected meanwhile (or the kernel kept a connection this
			// scan missed): use it.
			for _, p := range x.paths(t) {
				if p.addr["traddr"] == addr && p.addr["trsvcid"] == port {
					c, err = p.name, nil
				}
			}
		}
		if err != nil {
			if fault.CodeOf(err) == CodeAttach {
				return "", err
			}
			return "", fault.Wrap(err, fault.Unavailable, CodeAttach,
				fmt.Sprintf("volume %s: connect to %s:%s as %s", t.VolumeID, addr, port, hostNQN),
				"check that the volume is published to this node (its nexus admits this host NQN) and that port "+port+" is reachable")
		}
		x.o.Log.Info("nvme: connected", "volume", t.VolumeID, "ctrl", c, "traddr", addr, "trsvcid", port, "hostnqn", hostNQN)
	}
	dev, err := x.waitDisk(ctx, c)
	if err != nil {
		return "", err
	}
	if err := x.checkIdentity(dev, t); err != nil {
		return "", err
	}
	return x.devNode(dev)
}

// waitDisk waits for controller c's namespace block device.
func (x *NVMe) waitDisk(ctx context.Context, c string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, x.o.DeviceTimeout)
	defer cancel()
	for {
		if d := x.namespaceDisk(c); d != "" {
			return d, nil
		}
		select {
		case <-ctx.Done():
			return "", fault.New(fault.Unavailable, CodeNoDevice,
				fmt.Sprintf("%s: no namespace block device after %v (controller state %q)", c, x.o.DeviceTimeout, readAttr(x.sys("class", "nvme", c, "state"))),
				"see the kernel log (dmesg) on the node; the nexus may have no healthy replica")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Device implements Transport.
func (x *NVMe) Device(ctx context.Context, t Target) (string, error) {
	for _, p := range x.paths(t) {
		if d := x.namespaceDisk(p.name); d != "" {
			if err := x.checkIdentity(d, t); err != nil {
				return "", err
			}
			return x.devNode(d)
		}
	}
	return "", nil
}

// Detach implements Transport: every controller of the volume's subsystem
// opened as the target's host NQN is deleted.
func (x *NVMe) Detach(ctx context.Context, t Target) error {
	ps := x.paths(t)
	for _, p := range ps {
		err := os.WriteFile(x.sys("class", "nvme", p.name, "delete_controller"), []byte("1"), 0)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fault.Wrap(err, fault.Unavailable, CodeAttach, fmt.Sprintf("volume %s: disconnect %s", t.VolumeID, p.name),
				"see the kernel log (dmesg); disconnect it by hand with `nvme disconnect -d "+p.name+"`")
		}
		x.o.Log.Info("nvme: disconnecting", "volume", t.VolumeID, "ctrl", p.name)
	}
	ctx, cancel := context.WithTimeout(ctx, x.o.DeviceTimeout)
	defer cancel()
	for _, p := range ps {
		for {
			if _, err := os.Stat(x.sys("class", "nvme", p.name)); errors.Is(err, os.ErrNotExist) {
				break
			}
			select {
			case <-ctx.Done():
				return fault.New(fault.Unavailable, CodeAttach, fmt.Sprintf("volume %s: %s still present after %v", t.VolumeID, p.name, x.o.DeviceTimeout),
					"see the kernel log (dmesg) on the node")
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// Paths implements Transport.
func (x *NVMe) Paths(ctx context.Context, t Target) ([]Path, error) {
	var out []Path
	for _, p := range x.paths(t) {
		out = append(out, Path{Name: p.name, State: p.state, Live: p.state == "live"})
	}
	return out, nil
}

// Grow implements Transport: the target announces a grown namespace to
// its hosts (Namespace Attribute Changed); a rescan is asked for as well,
// in case the notice was lost with a reconnect.
func (x *NVMe) Grow(ctx context.Context, t Target, size int64) error {
	ps := x.paths(t)
	if len(ps) == 0 {
		return fault.New(fault.FailedPrecondition, CodeNotStaged, fmt.Sprintf("volume %s is not attached to this node", t.VolumeID), "")
	}
	var disk string
	for _, p := range ps {
		if err := os.WriteFile(x.sys("class", "nvme", p.name, "rescan_controller"), []byte("1"), 0); err != nil {
			x.o.Log.Warn("nvme: rescan", "ctrl", p.name, "err", err)
		}
		if disk == "" {
			disk = x.namespaceDisk(p.name)
		}
	}
	if disk == "" || size <= 0 {
		return nil
	}
	return waitSize(ctx, x.sys("class", "block", disk, "size"), size, x.o.DeviceTimeout)
}

// waitSize waits until the sysfs size attribute at p (512-byte sectors)
// reaches size bytes.
func waitSize(ctx context.Context, p string, size int64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		sectors, _ := strconv.ParseInt(readAttr(p), 10, 64)
		if sectors*512 >= size {
			return nil
		}
		select {
		case <-ctx.Done():
			return fault.New(fault.Unavailable, CodeNoDevice,
				fmt.Sprintf("%s: %d bytes after %v, want %d", filepath.Base(filepath.Dir(p)), sectors*512, timeout, size),
				"check that the volume was expanded (`nexctl volume get`); see the kernel log (dmesg) on the node")
		case <-time.After(100 * time.Millisecond):
		}
	}
}
