package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/control/config"
	"github.com/nexstor/nexstor/internal/control/storage"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/mgmt"
	"github.com/nexstor/nexstor/internal/security"
)

// PoolCreator creates one configured pool during format and returns its
// UUID. With force it may destroy what the disk holds. Without force, a
// disk that already holds a pool of the same name (left by an earlier,
// failed format) should be accepted and its UUID returned, so that a format
// can be retried.
type PoolCreator func(ctx context.Context, p config.Pool, force bool) (uuid string, err error)

// Node modes, as NodeInfo reports them.
const (
	ModeMaintenance = "maintenance"
	ModeServing     = "serving"
)

// NodeServer is the node service of one `nexstor server`: identity, storage
// scan and format. It is what keeps an unformatted node in maintenance mode
// until `nexctl storage format` reaches it. Safe for concurrent use.
type NodeServer struct {
	mgmtv1.UnimplementedNodeServiceServer

	cfg     *config.Server
	scanner *storage.Scanner
	create  PoolCreator
	log     *slog.Logger

	mu        sync.Mutex // serializes formats; guards sb
	sb        *Superblock
	formatted chan struct{} // closed once the node is formatted
}

// NewNodeServer reads the node superblock from cfg.MetadataDir. An
// unformatted node (or one whose superblock is damaged, which only a
// forced format repairs) starts in maintenance mode. A node formatted for
// another system than cfg.Name is an error: it must not serve this one.
// create may be nil when there is nothing to create (no configured pools).
func NewNodeServer(cfg *config.Server, scanner *storage.Scanner, create PoolCreator, log *slog.Logger) (*NodeServer, error) {
	if log == nil {
		log = slog.Default()
	}
	if scanner == nil {
		// The real disks, each probed for a pool superblock, so that a
		// scan says which disk holds which pool.
		scanner = &storage.Scanner{Probe: storage.PoolProbe}
	}
	n := &NodeServer{cfg: cfg, scanner: scanner, create: create, log: log, formatted: make(chan struct{})}
	sb, err := ReadSuperblock(cfg.MetadataDir)
	switch {
	case err == nil:
		if err := sb.CheckSystem(cfg.Name); err != nil {
			return nil, err
		}
		n.sb = sb
		close(n.formatted)
	case errors.Is(err, ErrNotFormatted):
	case errors.Is(err, ErrCorrupt):
		log.Error("node superblock damaged; staying in maintenance mode", "err", err)
	default:
		return nil, err
	}
	return n, nil
}

// Superblock returns the node's superblock, nil while unformatted.
func (n *NodeServer) Superblock() *Superblock {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sb == nil {
		return nil
	}
	c := *n.sb
	return &c
}

// WaitFormatted returns the superblock once the node is formatted: at once
// for a formatted node; otherwise it logs that the node waits in
// maintenance mode and blocks until a format succeeds or ctx ends.
func (n *NodeServer) WaitFormatted(ctx context.Context) (*Superblock, error) {
	select {
	case <-n.formatted:
		return n.Superblock(), nil
	default:
	}
	n.log.Warn("node is not formatted: waiting in maintenance mode; run `nexctl storage format` to format it",
		"metadata_dir", n.cfg.MetadataDir)
	select {
	case <-n.formatted:
		return n.Superblock(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// SetRank persists the rank the management service assigned (the OnRank
// hook of mgmt.RunMember).
func (n *NodeServer) SetRank(rank uint32) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	sb, err := SetRank(n.cfg.MetadataDir, rank)
	if err != nil {
		return err
	}
	n.sb = sb
	return nil
}

// NodeInfo implements NodeService.NodeInfo.
func (n *NodeServer) NodeInfo(ctx context.Context, _ *mgmtv1.NodeInfoRequest) (*mgmtv1.NodeInfoResponse, error) {
	host, _ := os.Hostname()
	resp := &mgmtv1.NodeInfoResponse{System: n.cfg.Name, Mode: ModeMaintenance, Rank: NoRank,
		Address: n.cfg.GRPCListen, Hostname: host, FaultDomain: n.cfg.FaultDomain}
	if sb := n.Superblock(); sb != nil {
		resp.Formatted, resp.Uuid, resp.Rank, resp.Mode = true, sb.UUID.String(), sb.Rank, ModeServing
		resp.FormattedMs = sb.FormattedAt.UnixMilli()
	}
	return resp, nil
}

// StorageScan implements NodeService.StorageScan.
func (n *NodeServer) StorageScan(ctx context.Context, _ *mgmtv1.StorageScanRequest) (*mgmtv1.StorageScanResponse, error) {
	disks, err := n.scanner.Scan()
	if err != nil {
		return nil, mgmt.ToStatus(fault.Wrap(err, fault.Internal, "control.scan", "storage scan", "check that /sys is mounted"))
	}
	resp := &mgmtv1.StorageScanResponse{}
	for _, d := range disks {
		pd := &mgmtv1.Disk{Name: d.Name, Path: d.Path, Model: d.Model, Serial: d.Serial, Size: d.Size,
			Rotational: d.Rotational, NumaNode: int32(d.NUMANode), UsedBy: d.UsedBy}
		if d.Pool != nil {
			pd.PoolName, pd.PoolUuid = d.Pool.Name, d.Pool.UUID
		}
		resp.Disks = append(resp.Disks, pd)
	}
	for _, p := range n.cfg.Pools {
		resp.Pools = append(resp.Pools, &mgmtv1.ConfiguredPool{Name: p.Name, Disk: p.Disk, ClusterSize: p.ClusterSize})
	}
	return resp, nil
}

// StorageFormat implements NodeService.StorageFormat: Format with the
// configured pools created in its Prepare step, so the superblock is
// written only when every pool exists.
func (n *NodeServer) StorageFormat(ctx context.Context, req *mgmtv1.StorageFormatRequest) (*mgmtv1.StorageFormatResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	resp := &mgmtv1.StorageFormatResponse{System: n.cfg.Name}
	sb, err := Format(n.cfg.MetadataDir, n.cfg.Name, FormatOptions{Force: req.Force, Prepare: func(sb *Superblock) error {
		if len(n.cfg.Pools) > 0 && n.create == nil {
			return fault.New(fault.FailedPrecondition, "control.no_engine", "pools are configured but this server cannot create pools",
				"start the server with its engine")
		}
		var errs []error
		for _, p := range n.cfg.Pools {
			id, err := n.create(ctx, p, req.Force)
			r := &mgmtv1.PoolResult{Name: p.Name, Disk: p.Disk, Uuid: id}
			if err != nil {
				r.Error = err.Error()
				errs = append(errs, fmt.Errorf("pool %q on %s: %w", p.Name, p.Disk, err))
			}
			resp.Pools = append(resp.Pools, r)
		}
		if len(errs) > 0 {
			return fault.Wrap(errors.Join(errs...), fault.FailedPrecondition, "control.pool_create",
				"creating the configured pools failed",
				"fix the disks or the pools section of the configuration, then format again (the node superblock was not written)")
		}
		return nil
	}})
	if err != nil {
		return nil, mgmt.ToStatus(err)
	}
	resp.Uuid = sb.UUID.String()
	wasFormatted := n.sb != nil
	n.sb = sb
	if !wasFormatted {
		close(n.formatted)
	}
	n.log.Info("node formatted", "uuid", sb.UUID, "system", sb.System, "pools", len(resp.Pools), "force", req.Force)
	return resp, nil
}

// NodePolicy is the authorization table of the node service: only an admin
// may scan or format; anyone may ask who the node is.
func NodePolicy() *security.Policy {
	p := &security.Policy{}
	p.Allow(mgmtv1.NodeService_NodeInfo_FullMethodName, security.RoleAdmin, security.RoleServer, security.RoleCSI)
	p.Allow(mgmtv1.NodeService_StorageScan_FullMethodName, security.RoleAdmin)
	p.Allow(mgmtv1.NodeService_StorageFormat_FullMethodName, security.RoleAdmin)
	return p
}
