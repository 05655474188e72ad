package engine

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nexstor/nexstor/internal/version"
)

// VersionInfo describes the running binary.
type VersionInfo struct {
	Version   string // the module version from the build info
	Commit    string // VCS revision from the build info, when known
	GoVersion string
	API       string
	Hostname  string
}

// GetVersion returns the version of the running binary, as the Go
// toolchain recorded it (see internal/version).
func GetVersion() VersionInfo {
	bi := version.Get()
	v := VersionInfo{Version: bi.Version, Commit: bi.Revision, GoVersion: bi.Go, API: "v1"}
	v.Hostname, _ = os.Hostname()
	return v
}

// BlockDevice is a block device of the host.
type BlockDevice struct {
	Name       string
	Path       string
	Size       int64 // bytes
	Model      string
	Rotational bool
}

// ListBlockDevices lists the block devices under sysBlock (normally
// /sys/block), sorted by name. Sizes come from the sysfs "size" attribute,
// which counts 512-byte sectors whatever the device's block size.
func ListBlockDevices(sysBlock string) ([]BlockDevice, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, err
	}
	var out []BlockDevice
	for _, ent := range ents {
		dir := filepath.Join(sysBlock, ent.Name())
		d := BlockDevice{Name: ent.Name(), Path: "/dev/" + strings.ReplaceAll(ent.Name(), "!", "/")}
		if n, err := strconv.ParseInt(readAttr(dir, "size"), 10, 64); err == nil {
			d.Size = n * 512
		}
		d.Model = readAttr(dir, "device/model")
		d.Rotational = readAttr(dir, "queue/rotational") == "1"
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b BlockDevice) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func readAttr(dir, name string) string {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// AdvertiseAddr returns the host:port clients should use to reach a server
// listening on listenAddr (the listener's actual address, so port 0 is
// resolved). A specific host is kept; an unspecified one (":10809",
// "0.0.0.0:10809", "[::]:10809") becomes the machine's hostname when it
// resolves, else 127.0.0.1.
func AdvertiseAddr(listenAddr string) string {
	host, port, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return listenAddr
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return net.JoinHostPort(host, port)
	}
	if hn, err := os.Hostname(); err == nil && hn != "" {
		if addrs, err := net.LookupHost(hn); err == nil && len(addrs) > 0 {
			return net.JoinHostPort(hn, port)
		}
	}
	return net.JoinHostPort("127.0.0.1", port)
}
