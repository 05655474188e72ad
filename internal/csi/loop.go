package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nexstor/nexstor/internal/fault"
)

// LoopOptions configure the loop-device transport.
type LoopOptions struct {
	// Dir holds one sparse backing file per volume, <volume-id>.img. It
	// is never emptied: a volume's data outlives its attachments, as a
	// real volume's does.
	Dir string
	// DefaultSize is the size of a new backing file when the target
	// carries no capacity; default DefaultCapacity.
	DefaultSize int64
	// SysfsRoot ("/sys") and DevRoot ("/dev") as in NVMeOptions.
	SysfsRoot, DevRoot string
	Log                *slog.Logger
}

// Loop is the loop-device transport: each volume is a sparse file under
// Dir attached through a loop device. It stands in for NVMe/TCP where the
// kernel has no NVMe/TCP initiator (such as the machines that run the CSI
// sanity tests): staging, file systems, mounts and expansion are real, but
// the data is local to the node. Safe for concurrent use.
type Loop struct {
	o  LoopOptions
	mu sync.Mutex // serialises choosing and configuring free loop devices
}

// NewLoop returns the loop-device transport.
func NewLoop(o LoopOptions) *Loop {
	if o.DefaultSize == 0 {
		o.DefaultSize = DefaultCapacity
	}
	if o.SysfsRoot == "" {
		o.SysfsRoot = "/sys"
	}
	if o.DevRoot == "" {
		o.DevRoot = "/dev"
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &Loop{o: o}
}

func (l *Loop) file(t Target) (string, error) {
	if !isVolumeID(t.VolumeID) {
		return "", badRequest("volume %q: not a volume ID of this driver", t.VolumeID)
	}
	return filepath.Join(l.o.Dir, t.VolumeID+".img"), nil
}

var loopNameRE = regexp.MustCompile(`^loop\d+$`)

// find returns the loop device (loopN) backed by file, "" when none is.
func (l *Loop) find(file string) string {
	ents, _ := os.ReadDir(filepath.Join(l.o.SysfsRoot, "block"))
	for _, e := range ents {
		if !loopNameRE.MatchString(e.Name()) {
			continue
		}
		b := strings.TrimSuffix(readAttr(filepath.Join(l.o.SysfsRoot, "block", e.Name(), "loop", "backing_file")), " (deleted)")
		if b == file {
			return e.Name()
		}
	}
	return ""
}

func loopErr(err error, what string) error {
	return fault.Wrap(err, fault.Unavailable, CodeAttach, what, "check that the node has loop devices (/dev/loop-control) and that the loop directory is writable")
}

// Attach implements Transport.
func (l *Loop) Attach(ctx context.Context, t Target) (string, error) {
	file, err := l.file(t)
	if err != nil {
		return "", err
	}
	size := t.Capacity
	if size <= 0 {
		size = l.o.DefaultSize
	}
	if err := os.MkdirAll(l.o.Dir, 0o750); err != nil {
		return "", loopErr(err, "loop directory "+l.o.Dir)
	}
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", loopErr(err, "backing file of volume "+t.VolumeID)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return "", loopErr(err, "backing file of volume "+t.VolumeID)
	} else if st.Size() < size {
		if err := f.Truncate(size); err != nil {
			return "", loopErr(err, "backing file of volume "+t.VolumeID)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := l.find(file); d != "" {
		return blockDevNode(l.o.DevRoot, l.o.SysfsRoot, d)
	}
	ctl, err := os.OpenFile(filepath.Join(l.o.DevRoot, "loop-control"), os.O_RDWR, 0)
	if err != nil {
		return "", loopErr(err, "open loop-control")
	}
	defer ctl.Close()
	// Another process may take the free device between the two calls:
	// configuring it then fails with EBUSY, and the next one is tried.
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", loopErr(err, "find a free loop device")
		}
		name := "loop" + strconv.Itoa(n)
		dev := filepath.Join(l.o.DevRoot, name)
		if _, err := os.Stat(dev); errors.Is(err, os.ErrNotExist) {
			if err := unix.Mknod(dev, unix.S_IFBLK|0o600, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, unix.EEXIST) {
				return "", loopErr(err, "mknod "+dev)
			}
		}
		d, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return "", loopErr(err, "open "+dev)
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
		copy(cfg.Info.File_name[:], file)
		err = unix.IoctlLoopConfigure(int(d.Fd()), &cfg)
		d.Close()
		if errors.Is(err, unix.EBUSY) && attempt < 20 {
			continue
		}
		if err != nil {
			return "", loopErr(err, fmt.Sprintf("attach %s to %s", file, dev))
		}
		l.o.Log.Info("loop: attached", "volume", t.VolumeID, "dev", dev, "file", file)
		if err := waitSize(ctx, filepath.Join(l.o.SysfsRoot, "class", "block", name, "size"), size, 30*time.Second); err != nil {
			return "", err
		}
		return dev, nil
	}
}

// Device implements Transport.
func (l *Loop) Device(ctx context.Context, t Target) (string, error) {
	file, err := l.file(t)
	if err != nil {
		return "", err
	}
	if d := l.find(file); d != "" {
		return blockDevNode(l.o.DevRoot, l.o.SysfsRoot, d)
	}
	return "", nil
}

// Detach implements Transport. The backing file stays.
func (l *Loop) Detach(ctx context.Context, t Target) error {
	file, err := l.file(t)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	name := l.find(file)
	if name == "" {
		return nil
	}
	dev, err := blockDevNode(l.o.DevRoot, l.o.SysfsRoot, name)
	if err != nil {
		return loopErr(err, "loop device of volume "+t.VolumeID)
	}
	d, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return loopErr(err, "open "+dev)
	}
	err = unix.IoctlSetInt(int(d.Fd()), unix.LOOP_CLR_FD, 0)
	d.Close()
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return loopErr(err, "detach "+dev)
	}
	l.o.Log.Info("loop: detached", "volume", t.VolumeID, "dev", dev)
	// The kernel clears the device once its last opener is gone.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for l.find(file) != "" {
		select {
		case <-ctx.Done():
			return fault.New(fault.Unavailable, CodeAttach, fmt.Sprintf("volume %s: %s still attached to %s", t.VolumeID, dev, file),
				"unmount what still uses the device")
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// Paths implements Transport: the loop device is the one path.
func (l *Loop) Paths(ctx context.Context, t Target) ([]Path, error) {
	file, err := l.file(t)
	if err != nil {
		return nil, err
	}
	if d := l.find(file); d != "" {
		return []Path{{Name: d, State: "live", Live: true}}, nil
	}
	return nil, nil
}

// Grow implements Transport: the backing file grows to size and the loop
// device takes its new size.
func (l *Loop) Grow(ctx context.Context, t Target, size int64) error {
	file, err := l.file(t)
	if err != nil {
		return err
	}
	name := l.find(file)
	if name == "" {
		return fault.New(fault.FailedPrecondition, CodeNotStaged, fmt.Sprintf("volume %s is not attached to this node", t.VolumeID), "")
	}
	if size > 0 {
		st, err := os.Stat(file)
		if err != nil {
			return loopErr(err, "backing file of volume "+t.VolumeID)
		}
		if st.Size() < size {
			if err := os.Truncate(file, size); err != nil {
				return loopErr(err, "grow the backing file of volume "+t.VolumeID)
			}
		}
	}
	dev, err := blockDevNode(l.o.DevRoot, l.o.SysfsRoot, name)
	if err != nil {
		return loopErr(err, "loop device of volume "+t.VolumeID)
	}
	d, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return loopErr(err, "open "+dev)
	}
	err = unix.IoctlSetInt(int(d.Fd()), unix.LOOP_SET_CAPACITY, 0)
	d.Close()
	if err != nil {
		return loopErr(err, "resize "+dev)
	}
	return waitSize(ctx, filepath.Join(l.o.SysfsRoot, "class", "block", name, "size"), size, 30*time.Second)
}
