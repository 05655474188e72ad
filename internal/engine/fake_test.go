package engine

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fault"
)

// memBackend is an in-memory stand-in for the pool layer, so that the
// registry logic is tested on its own. Disks are names in a map; a disk
// "missing:..." does not exist.
type memBackend struct {
	mu    sync.Mutex
	disks map[string]*memPool // disk key -> pool on it (nil: blank disk)
}

func newMemBackend() *memBackend { return &memBackend{disks: map[string]*memPool{}} }

const memCluster = 1 << 20

func (b *memBackend) CreatePool(uri string, o CreatePoolOptions) (PoolHandle, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if strings.Contains(uri, "missing") {
		return nil, fmt.Errorf("open %s: %w", uri, os.ErrNotExist)
	}
	k := diskKey(uri)
	if p := b.disks[k]; p != nil && !o.Force {
		return nil, fault.New(fault.AlreadyExists, "pool.has_pool", "disk holds pool "+p.name, "use --force")
	}
	p := &memPool{name: o.Name, uuid: "uuid-" + o.Name, total: 64, reps: map[string]*memReplica{}}
	b.disks[k] = p
	return p, nil
}

func (b *memBackend) ImportPool(uri string) (PoolHandle, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p, ok := b.disks[diskKey(uri)]
	if !ok {
		return nil, fmt.Errorf("open %s: %w", uri, os.ErrNotExist)
	}
	if p == nil {
		return nil, fault.New(fault.FailedPrecondition, "pool.not_pool", "not a pool", "")
	}
	p.mu.Lock()
	p.closed = false
	p.mu.Unlock()
	return p, nil
}

type memReplica struct {
	ReplicaStat
	open bool
}

type memPool struct {
	mu         sync.Mutex
	overcommit int
	name       string
	uuid       string
	total      int64
	used       int64
	reps       map[string]*memReplica
	closed     bool
}

func (p *memPool) Name() string { return p.name }
func (p *memPool) UUID() string { return p.uuid }
func (p *memPool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	var committed int64
	for _, r := range p.reps {
		committed += r.Size
	}
	oc := p.overcommit
	if oc == 0 {
		oc = 250
	}
	return PoolStats{Capacity: p.total * memCluster, ClusterSize: memCluster, TotalClusters: p.total,
		FreeClusters: p.total - p.used, Allocated: p.used * memCluster, Committed: committed, Replicas: len(p.reps),
		Overcommit: oc, CommitLimit: p.total * memCluster * int64(oc) / 100}
}
func (p *memPool) Disown(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.reps[name]
	if !ok {
		return fault.New(fault.NotFound, "pool.replica_not_found", "not found", "")
	}
	r.Owner = ""
	return nil
}
func (p *memPool) SetOvercommit(percent int) error {
	p.mu.Lock()
	p.overcommit = percent
	p.mu.Unlock()
	return nil
}
func (p *memPool) CreateReplica(s ReplicaSpec) (ReplicaStat, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.reps[s.Name]; ok {
		return ReplicaStat{}, fault.New(fault.AlreadyExists, "pool.exists", "exists", "")
	}
	n := s.Size / memCluster
	if !s.Thin {
		if n > p.total-p.used {
			return ReplicaStat{}, fault.New(fault.ResourceExhausted, "pool.no_space", "no space", "")
		}
		p.used += n
	}
	r := &memReplica{ReplicaStat: ReplicaStat{Name: s.Name, UUID: s.UUID, Size: s.Size, Thin: s.Thin, Owner: s.Owner}}
	if !s.Thin {
		r.Allocated = s.Size
	}
	if r.UUID == "" {
		r.UUID = "uuid-" + s.Name
	}
	p.reps[s.Name] = r
	return r.ReplicaStat, nil
}
func (p *memPool) Replicas() []ReplicaStat {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []ReplicaStat
	for _, r := range p.reps {
		out = append(out, r.ReplicaStat)
	}
	return out
}
func (p *memPool) ReplicaInfo(name string) (ReplicaStat, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.reps[name]
	if !ok {
		return ReplicaStat{}, fault.New(fault.NotFound, "pool.not_found", "not found", "")
	}
	return r.ReplicaStat, nil
}
func (p *memPool) OpenReplica(name string) (bdev.Device, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.reps[name]
	if !ok {
		return nil, fault.New(fault.NotFound, "pool.not_found", "not found", "")
	}
	if r.open {
		return nil, fault.New(fault.FailedPrecondition, "pool.busy", "busy", "")
	}
	m, err := bdev.NewMalloc(r.Size, 512)
	if err != nil {
		return nil, err
	}
	r.open = true
	return &memDev{Device: m, r: r, p: p}, nil
}

type memDev struct {
	bdev.Device
	r *memReplica
	p *memPool
}

func (d *memDev) Close() error {
	d.p.mu.Lock()
	d.r.open = false
	d.p.mu.Unlock()
	return d.Device.Close()
}

func (p *memPool) DestroyReplica(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.reps[name]
	if !ok {
		return fault.New(fault.NotFound, "pool.not_found", "not found", "")
	}
	if r.open {
		return fault.New(fault.FailedPrecondition, "pool.busy", "busy", "")
	}
	if !r.Thin {
		p.used -= r.Size / memCluster
	}
	delete(p.reps, name)
	return nil
}
func (p *memPool) ResizeReplica(name string, size int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.reps[name]
	if !ok {
		return fault.New(fault.NotFound, "pool.not_found", "not found", "")
	}
	r.Size = size
	return nil
}
func (p *memPool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.reps {
		if r.open {
			return fmt.Errorf("replica %s still open", r.Name)
		}
	}
	p.closed = true
	return nil
}
func (p *memPool) Destroy() error { return p.Close() }

// memExporter records exports; its URIs are nbd://127.0.0.1:10809/<name>.
type memExporter struct {
	mu      sync.Mutex
	exports map[string]bdev.Device
	specs   map[string]ExportSpec
}

func newMemExporter() *memExporter {
	return &memExporter{exports: map[string]bdev.Device{}, specs: map[string]ExportSpec{}}
}

func (x *memExporter) AddExport(spec ExportSpec, dev bdev.Device) (string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.exports[spec.Name]; ok {
		return "", fmt.Errorf("export %s exists", spec.Name)
	}
	x.exports[spec.Name] = dev
	x.specs[spec.Name] = spec
	return "nbd://127.0.0.1:10809/" + spec.Name, nil
}

func (x *memExporter) RemoveExport(name string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.exports[name]; !ok {
		return fmt.Errorf("export %s not found", name)
	}
	delete(x.exports, name)
	delete(x.specs, name)
	return nil
}

func (x *memExporter) names() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return sortedKeys(x.exports)
}
