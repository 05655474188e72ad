package storage

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/nexstor/nexstor/internal/testutil"
)

// tree builds a fake sysfs. Paths are relative to root; values are file
// contents; a value starting with "->" makes a symlink.
func tree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, v := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if len(v) > 2 && v[:2] == "->" {
			if err := os.Symlink(v[2:], full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func fakeSys(t *testing.T) (string, string) {
	root := t.TempDir()
	sys := filepath.Join(root, "sys")
	tree(t, sys, map[string]string{
		// An NVMe namespace: the block dir is a symlink into devices, its
		// "device" the controller, whose PCI parent has the NUMA node.
		"devices/pci0000:00/0000:00:04.0/numa_node":                           "1\n",
		"devices/pci0000:00/0000:00:04.0/nvme/nvme0/model":                    "Fast NVMe 1TB       \n",
		"devices/pci0000:00/0000:00:04.0/nvme/nvme0/serial":                   "S123NVME\n",
		"devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/size":             "1953525168\n",
		"devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/queue/rotational": "0\n",
		"devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/device":           "->../../nvme0",
		"block/nvme0n1": "->../devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1",
		// A SCSI disk with a serial in VPD page 0x80 and a partition that is mounted.
		"block/sda/size":             "7814037168\n",
		"block/sda/queue/rotational": "1\n",
		"block/sda/device/model":     "BigDisk\n",
		"block/sda/device/vpd_pg80":  "\x00\x80\x00\x08ZA1B2C3D",
		"block/sda/device/numa_node": "0\n",
		"block/sda/sda1/partition":   "1\n",
		"block/sda/sda1/size":        "2048\n",
		// A free disk (virtio) with the serial at block level, no NUMA.
		"block/vdb/size":             "2097152\n",
		"block/vdb/serial":           "vserial\n",
		"block/vdb/queue/rotational": "1\n",
		"block/vdb/holders/.keep":    "",
		// A disk held by device-mapper.
		"block/vdc/size":         "2097152\n",
		"block/vdc/holders/dm-0": "",
		// A disk with a pool on it, mounted nowhere.
		"block/vdd/size": "4194304\n",
		"block/vdd/ro":   "0\n",
		// Virtual and empty devices.
		"block/loop0/size": "0\n",
		"block/loop1/size": "2048\n",
		"block/sr0/size":   "0\n",
	})
	// .keep is a file, not a holder: remove it so holders/ is empty.
	os.Remove(filepath.Join(sys, "block/vdb/holders/.keep"))
	mounts := filepath.Join(root, "mounts")
	os.WriteFile(mounts, []byte("proc /proc proc rw 0 0\n/dev/sda1 /mnt/my\\040data ext4 rw 0 0\n"), 0o644)
	return sys, mounts
}

func TestScan(t *testing.T) {
	sys, mounts := fakeSys(t)
	probed := map[string]bool{}
	s := &Scanner{SysRoot: sys, DevRoot: "/dev", MountsFile: mounts, Probe: func(path string) (*PoolRef, error) {
		probed[path] = true
		if path == "/dev/vdd" {
			return &PoolRef{Name: "pool-0", UUID: "3f1c0a52-0000-4000-8000-000000000001"}, nil
		}
		return nil, nil
	}}
	disks, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	want := []Disk{
		{Name: "nvme0n1", Path: "/dev/nvme0n1", Model: "Fast NVMe 1TB", Serial: "S123NVME", Size: 1953525168 * 512, NUMANode: 1},
		{Name: "sda", Path: "/dev/sda", Model: "BigDisk", Serial: "ZA1B2C3D", Size: 7814037168 * 512, Rotational: true, NUMANode: 0,
			UsedBy: []string{"partition sda1", "partition sda1 mounted on /mnt/my data"}},
		{Name: "vdb", Path: "/dev/vdb", Serial: "vserial", Size: 2097152 * 512, Rotational: true, NUMANode: -1},
		{Name: "vdc", Path: "/dev/vdc", Size: 2097152 * 512, NUMANode: -1, UsedBy: []string{"holder dm-0"}},
		{Name: "vdd", Path: "/dev/vdd", Size: 4194304 * 512, NUMANode: -1,
			Pool: &PoolRef{Name: "pool-0", UUID: "3f1c0a52-0000-4000-8000-000000000001"}},
	}
	if !reflect.DeepEqual(disks, want) {
		t.Fatalf("Scan:\n got %+v\nwant %+v", disks, want)
	}
	// Disks used by the system are never opened.
	if probed["/dev/sda"] || probed["/dev/vdc"] || !probed["/dev/vdb"] {
		t.Fatalf("probed %v", probed)
	}
	for _, d := range disks {
		if d.InUse() != (d.Name == "sda" || d.Name == "vdc" || d.Name == "vdd") {
			t.Errorf("%s InUse = %v", d.Name, d.InUse())
		}
	}
}

func TestScanVirtualAndProbeErrors(t *testing.T) {
	sys, mounts := fakeSys(t)
	s := &Scanner{SysRoot: sys, MountsFile: mounts, IncludeVirtual: true,
		Probe: func(path string) (*PoolRef, error) { return nil, errors.New("permission denied") }}
	disks, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range disks {
		names = append(names, d.Name)
		if d.Name == "vdb" && (len(d.UsedBy) != 1 || d.UsedBy[0] != "unreadable: permission denied") {
			t.Errorf("vdb UsedBy = %v", d.UsedBy)
		}
	}
	// loop1 has a size and is kept; loop0 and sr0 are empty.
	if want := []string{"loop1", "nvme0n1", "sda", "vdb", "vdc", "vdd"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("names %v, want %v", names, want)
	}
	if _, err := (&Scanner{SysRoot: filepath.Join(sys, "nope")}).Scan(); err == nil {
		t.Fatal("scan of a missing sysfs succeeded")
	}
}

func TestScanRealSystem(t *testing.T) {
	if _, err := os.Stat("/sys/block"); err != nil {
		testutil.Missing(t, "/sys/block")
	}
	disks, err := (&Scanner{}).Scan()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if d.Size <= 0 || d.Size%512 != 0 || filepath.Dir(d.Path) != "/dev" || d.NUMANode < -1 {
			t.Errorf("implausible disk %+v", d)
		}
	}
}
