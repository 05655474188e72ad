package engine

import (
	"fmt"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nbd"
)

// NBDExporter adapts an nbd.Server to the engine's Exporter. advertise is
// the host:port put into nbd:// URIs (see AdvertiseAddr).
func NBDExporter(s *nbd.Server, advertise string) Exporter { return nbdExporter{s, advertise} }

type nbdExporter struct {
	s         *nbd.Server
	advertise string
}

func (x nbdExporter) AddExport(spec ExportSpec, dev bdev.Device) (string, error) {
	if err := x.s.AddExport(spec.Name, dev, nbd.ExportOptions{Description: spec.Description}); err != nil {
		return "", err
	}
	return fmt.Sprintf("nbd://%s/%s", x.advertise, spec.Name), nil
}

func (x nbdExporter) RemoveExport(name string) error { return x.s.RemoveExport(name) }

// ResizeExport implements Resizer. NBD tells a client the export's size
// only when it connects, and reads it from the device then: a client that
// connects from now on sees the new size, and one connected before keeps
// the old one until it reconnects. Nothing is to be done here.
func (x nbdExporter) ResizeExport(string) error { return nil }
