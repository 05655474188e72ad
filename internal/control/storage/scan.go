// Package storage discovers a node's disks from sysfs for `nexctl storage
// scan`: path, model, serial, size, rotational, NUMA node, and whether the
// disk is in use — by a Nexstor pool (found by probing the disk for a pool
// superblock), or by the system (partitions, holders such as device-mapper
// or md, or a mount).
//
// The sysfs and /dev roots are fields of Scanner so that tests run against a
// fake tree; nothing is ever written to a disk.
package storage

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Disk is one whole block device.
type Disk struct {
	Name       string `json:"name"` // kernel name, e.g. "nvme0n1"
	Path       string `json:"path"` // device node, e.g. "/dev/nvme0n1"
	Model      string `json:"model,omitempty"`
	Serial     string `json:"serial,omitempty"`
	Size       int64  `json:"size"` // bytes
	Rotational bool   `json:"rotational"`
	ReadOnly   bool   `json:"read_only,omitempty"`
	Removable  bool   `json:"removable,omitempty"`
	// NUMANode is the NUMA node of the disk's controller; -1 when the
	// platform does not say.
	NUMANode int `json:"numa_node"`
	// Pool is set when the disk holds a Nexstor pool.
	Pool *PoolRef `json:"pool,omitempty"`
	// UsedBy lists what else uses the disk: "partition sda1",
	// "holder dm-0", "mounted on /var". Empty when the disk is free.
	UsedBy []string `json:"used_by,omitempty"`
}

// InUse reports whether the disk holds a pool or is used by the system.
func (d *Disk) InUse() bool { return d.Pool != nil || len(d.UsedBy) > 0 }

// PoolRef names the pool found on a disk.
type PoolRef struct {
	Name string `json:"name"`
	UUID string `json:"uuid"`
}

// ProbeFunc reads the start of the device at path and reports the pool it
// holds, or nil when it holds none. It must only read.
type ProbeFunc func(path string) (*PoolRef, error)

// Scanner scans sysfs. The zero value scans the real system without
// probing for pools.
type Scanner struct {
	// SysRoot is the sysfs mount point ("/sys" when empty).
	SysRoot string
	// DevRoot is where device nodes live ("/dev" when empty).
	DevRoot string
	// MountsFile lists mounts ("/proc/self/mounts" when empty; a missing
	// file means nothing is mounted).
	MountsFile string
	// Probe, when set, is called for every disk that is not used by the
	// system. A probe error is reported on that disk's UsedBy rather than
	// failing the scan.
	Probe ProbeFunc
	// IncludeVirtual keeps loop, ram and zram devices (for tests and
	// development on files).
	IncludeVirtual bool
}

func (s *Scanner) root() string {
	if s.SysRoot == "" {
		return "/sys"
	}
	return s.SysRoot
}

func (s *Scanner) dev() string {
	if s.DevRoot == "" {
		return "/dev"
	}
	return s.DevRoot
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, string(b)))
}

// virtualPrefixes are kernel names of devices that are not disks.
var virtualPrefixes = []string{"loop", "ram", "zram", "nbd", "sr", "fd"}

// Scan returns the disks, sorted by name. Devices of size 0 (empty loop
// devices, card readers without media) are left out.
func (s *Scanner) Scan() ([]Disk, error) {
	blockDir := filepath.Join(s.root(), "block")
	ents, err := os.ReadDir(blockDir)
	if err != nil {
		return nil, fmt.Errorf("storage scan: %w", err)
	}
	mounts, err := s.mounts()
	if err != nil {
		return nil, err
	}
	var disks []Disk
	for _, e := range ents {
		name := e.Name()
		if !s.IncludeVirtual && hasAnyPrefix(name, virtualPrefixes) {
			continue
		}
		d, ok := s.disk(filepath.Join(blockDir, name), name, mounts)
		if ok {
			disks = append(disks, d)
		}
	}
	sort.Slice(disks, func(i, j int) bool { return disks[i].Name < disks[j].Name })
	return disks, nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func (s *Scanner) disk(dir, name string, mounts map[string]string) (Disk, bool) {
	sectors, err := strconv.ParseInt(readTrim(filepath.Join(dir, "size")), 10, 64)
	if err != nil || sectors <= 0 {
		return Disk{}, false
	}
	d := Disk{
		Name: name,
		Path: filepath.Join(s.dev(), name),
		// sysfs "size" is always in 512-byte sectors, whatever the
		// logical block size.
		Size:       sectors * 512,
		Rotational: readTrim(filepath.Join(dir, "queue", "rotational")) == "1",
		ReadOnly:   readTrim(filepath.Join(dir, "ro")) == "1",
		Removable:  readTrim(filepath.Join(dir, "removable")) == "1",
		Model:      firstOf(filepath.Join(dir, "device", "model"), filepath.Join(dir, "device", "name")),
		Serial: firstOf(filepath.Join(dir, "serial"), filepath.Join(dir, "device", "serial"),
			filepath.Join(dir, "device", "vpd_pg80")),
		NUMANode: numaNode(filepath.Join(dir, "device")),
	}
	// Partitions are subdirectories with a "partition" file.
	if parts, err := os.ReadDir(dir); err == nil {
		for _, p := range parts {
			if _, err := os.Stat(filepath.Join(dir, p.Name(), "partition")); err == nil {
				d.UsedBy = append(d.UsedBy, "partition "+p.Name())
				if mp, ok := mounts[filepath.Join(s.dev(), p.Name())]; ok {
					d.UsedBy = append(d.UsedBy, "partition "+p.Name()+" mounted on "+mp)
				}
			}
		}
	}
	if holders, err := os.ReadDir(filepath.Join(dir, "holders")); err == nil {
		for _, h := range holders {
			d.UsedBy = append(d.UsedBy, "holder "+h.Name())
		}
	}
	if mp, ok := mounts[d.Path]; ok {
		d.UsedBy = append(d.UsedBy, "mounted on "+mp)
	}
	if s.Probe != nil && len(d.UsedBy) == 0 {
		ref, err := s.Probe(d.Path)
		switch {
		case err != nil:
			d.UsedBy = append(d.UsedBy, "unreadable: "+err.Error())
		case ref != nil:
			d.Pool = ref
		}
	}
	return d, true
}

// firstOf returns the first non-empty value among files. vpd_pg80 is the SCSI
// unit serial number page: a 4-byte header, then the serial.
func firstOf(paths ...string) string {
	for _, p := range paths {
		if strings.HasSuffix(p, "vpd_pg80") {
			b, err := os.ReadFile(p)
			if err != nil || len(b) <= 4 {
				continue
			}
			if v := strings.TrimSpace(strings.Trim(string(b[4:]), "\x00")); v != "" {
				return v
			}
			continue
		}
		if v := readTrim(p); v != "" {
			return v
		}
	}
	return ""
}

// numaNode finds numa_node in the device directory or the nearest ancestor
// that has one (an NVMe namespace's controller, a virtio device's PCI
// function). -1 when there is none.
func numaNode(deviceLink string) int {
	dir, err := filepath.EvalSymlinks(deviceLink)
	if err != nil {
		return -1
	}
	for i := 0; i < 8 && dir != "/" && dir != "."; i++ {
		if v := readTrim(filepath.Join(dir, "numa_node")); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return -1
			}
			return n
		}
		dir = filepath.Dir(dir)
	}
	return -1
}

// mounts maps device paths to their first mount point.
func (s *Scanner) mounts() (map[string]string, error) {
	path := s.MountsFile
	if path == "" {
		path = "/proc/self/mounts"
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("storage scan: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || !strings.HasPrefix(fields[0], "/") {
			continue
		}
		if _, ok := out[fields[0]]; !ok {
			// Mount points escape spaces as \040.
			out[fields[0]] = strings.ReplaceAll(fields[1], `\040`, " ")
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("storage scan: %s: %w", path, err)
	}
	return out, nil
}
