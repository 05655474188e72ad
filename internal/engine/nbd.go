package engine

import (
	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nbd"
)

// NBDExporter adapts an nbd.Server to the engine's Exporter. The server does
// not own the devices: the engine closes a replica after removing its export.
func NBDExporter(s *nbd.Server) Exporter { return nbdExporter{s} }

type nbdExporter struct{ s *nbd.Server }

func (x nbdExporter) AddExport(name string, dev bdev.Device, description string) error {
	return x.s.AddExport(name, dev, nbd.ExportOptions{Description: description})
}

func (x nbdExporter) RemoveExport(name string) error { return x.s.RemoveExport(name) }
