package engine

import (
	"context"
	"fmt"
	"sync"

	"github.com/google/uuid"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/nvmf/nvme"
	"github.com/nexstor/nexstor/internal/nvmf/target"
)

// NVMfExporter adapts an NVMe/TCP target to the engine's Exporter: each
// shared replica or published nexus is one subsystem, NQN
// nqn.2024-11.io.nexstor:<kind>:<uuid>, with the device as namespace 1
// (namespace UUID = the object's UUID). advertise
// is the host:port put into nvmf:// URIs.
func NVMfExporter(t *target.Target, advertise string) Exporter {
	return &nvmfExporter{t: t, advertise: advertise, nqns: map[string]string{}}
}

type nvmfExporter struct {
	t         *target.Target
	advertise string

	mu   sync.Mutex
	nqns map[string]string // replica name -> subsystem NQN
}

func (x *nvmfExporter) AddExport(spec ExportSpec, dev bdev.Device) (string, error) {
	id, err := uuid.Parse(spec.UUID)
	if err != nil {
		return "", fmt.Errorf("replica %q: uuid %q: %w", spec.Name, spec.UUID, err)
	}
	kind := spec.Kind
	if kind == "" {
		kind = "replica"
	}
	nqn := target.NQN(kind, id.String())
	sub, err := x.t.AddSubsystem(nqn, target.SubsystemOptions{
		AllowedHosts: spec.AllowedHosts,
		AllowAnyHost: len(spec.AllowedHosts) == 0,
		Serial:       id.String()[:20],
		Model:        "Nexstor " + kind,
		MinCNTLID:    spec.MinCNTLID,
		MaxCNTLID:    spec.MaxCNTLID,
		ANAState:     spec.ANAState,
	})
	if err != nil {
		return "", err
	}
	if _, err := sub.AddNamespace(dev, target.NamespaceOptions{UUID: id, NGUID: spec.NGUID}); err != nil {
		x.t.RemoveSubsystem(nqn)
		return "", err
	}
	x.mu.Lock()
	x.nqns[spec.Name] = nqn
	x.mu.Unlock()
	return fmt.Sprintf("nvmf://%s/%s", x.advertise, nqn), nil
}

// ResizeExport implements Resizer: namespace 1 takes the device's size and
// connected hosts get a Namespace Attribute Changed event.
func (x *nvmfExporter) ResizeExport(name string) error {
	x.mu.Lock()
	nqn, ok := x.nqns[name]
	x.mu.Unlock()
	if !ok {
		return fmt.Errorf("nvmf: %q is not exported", name)
	}
	sub := x.t.Subsystem(nqn)
	if sub == nil {
		return fmt.Errorf("nvmf: subsystem %s of %q: %w", nqn, name, target.ErrNotFound)
	}
	_, err := sub.ResizeNamespace(1)
	return err
}

// SetExportANAState implements ANASetter: the subsystem of export name
// takes ANA state st (see target.Subsystem.SetANAState).
func (x *nvmfExporter) SetExportANAState(ctx context.Context, name string, st nvme.ANAState) error {
	x.mu.Lock()
	nqn, ok := x.nqns[name]
	x.mu.Unlock()
	if !ok {
		return fmt.Errorf("nvmf: %q is not exported", name)
	}
	sub := x.t.Subsystem(nqn)
	if sub == nil {
		return fmt.Errorf("nvmf: subsystem %s of %q: %w", nqn, name, target.ErrNotFound)
	}
	return sub.SetANAState(ctx, st)
}

func (x *nvmfExporter) RemoveExport(name string) error {
	x.mu.Lock()
	nqn, ok := x.nqns[name]
	delete(x.nqns, name)
	x.mu.Unlock()
	if !ok {
		return fmt.Errorf("nvmf: replica %q is not exported", name)
	}
	return x.t.RemoveSubsystem(nqn)
}
