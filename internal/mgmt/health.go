package mgmt

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
)

// Fault codes of the nexus health store.
const (
	CodeStaleGeneration = "health.stale_generation"
	CodeBadHealth       = "health.bad_record"
	CodeCorruptHealth   = "health.corrupt_record"
	CodeNotTarget       = "health.not_target"
)

// checkTarget refuses the health record of a volume's nexus to a node that
// is not where the volume is published, or being published or moved to:
// its nexus is a stale instance (the volume moved, or was unpublished,
// while the node was away), which must never be reopened or save. node ""
// (a caller that does not say) is not checked.
func (s *Service) checkTarget(ctx context.Context, id, node string) error {
	if node == "" {
		return nil
	}
	v, err := s.getVolumeByUUID(ctx, id)
	if err != nil || v == nil {
		return err
	}
	if (v.Target != nil && v.Target.Node == node) || (v.Op != nil && v.Op.Node == node &&
		(v.Op.Kind == opPublish || v.Op.Kind == opMove || v.Op.Kind == opUnpublish || v.Op.Kind == opResize)) {
		return nil
	}
	where := "it is not published"
	if v.Target != nil {
		where = "it is published on node " + v.Target.Node
	}
	return fault.New(fault.FailedPrecondition, CodeNotTarget,
		fmt.Sprintf("volume %s: the nexus on node %s is stale: %s", v.Name, node, where),
		"destroy that nexus; the volume's current nexus serves it")
}

// healthHeader is the part of a nexus health record the store reads: the
// rest is the nexus's business.
type healthHeader struct {
	NexusUUID  string `json:"nexus_uuid"`
	Generation uint64 `json:"generation"`
}

func checkNexusUUID(id string) error {
	if _, err := uuid.Parse(id); err != nil {
		return fault.New(fault.InvalidArgument, CodeBadHealth, fmt.Sprintf("nexus health: %q is not a nexus UUID", id),
			"give the UUID of the nexus")
	}
	return nil
}

// loadHealth returns the stored record of a nexus (nil when none), to node
// (see checkTarget).
func (s *Service) loadHealth(ctx context.Context, id, node string) ([]byte, error) {
	if err := checkNexusUUID(id); err != nil {
		return nil, err
	}
	if err := s.requireLeader(ctx); err != nil {
		return nil, err
	}
	if err := s.checkTarget(ctx, id, node); err != nil {
		return nil, err
	}
	resp, err := s.cfg.Etcd.Get(ctx, s.k.health(id))
	if err != nil {
		return nil, storeErr(err, "read the health record of nexus "+id)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

// saveHealth stores rec when the stored record's generation is gen-1 (or
// none is stored). The compare and the write are one transaction on the
// key's revision, fenced on this leader's election key: two nexuses of one
// volume that both read generation g cannot both save g+1.
func (s *Service) saveHealth(ctx context.Context, id string, gen uint64, rec []byte, node string) error {
	if err := checkNexusUUID(id); err != nil {
		return err
	}
	if err := s.checkTarget(ctx, id, node); err != nil {
		return err
	}
	var h healthHeader
	if err := json.Unmarshal(rec, &h); err != nil || h.NexusUUID != id || h.Generation != gen || gen == 0 {
		return fault.New(fault.InvalidArgument, CodeBadHealth,
			fmt.Sprintf("nexus %s: the health record is malformed or does not match the request (generation %d)", id, gen),
			"send the JSON health record of this nexus with its generation")
	}
	for attempt := 0; attempt < maxTxnAttempts; attempt++ {
		resp, err := s.cfg.Etcd.Get(ctx, s.k.health(id))
		if err != nil {
			return storeErr(err, "read the health record of nexus "+id)
		}
		var cmp clientv3.Cmp
		if len(resp.Kvs) == 0 {
			// A first record: generation 1 of the nexus of a live volume.
			// A stray instance that outlived its volume cannot plant one
			// for a later volume of the same UUID.
			if gen != 1 {
				return fault.New(fault.FailedPrecondition, CodeStaleGeneration,
					fmt.Sprintf("nexus %s: no health record is stored, and this nexus saves generation %d: it is stale", id, gen),
					"this nexus is stale and must stop")
			}
			if v, err := s.getVolumeByUUID(ctx, id); err != nil {
				return err
			} else if v == nil || v.Status == volDeleting {
				return fault.New(fault.FailedPrecondition, CodeStaleGeneration,
					fmt.Sprintf("nexus %s: no volume of this UUID exists (or it is being deleted)", id),
					"this nexus is stale and must stop")
			}
			cmp = clientv3.Compare(clientv3.CreateRevision(s.k.health(id)), "=", 0)
		} else {
			var cur healthHeader
			if err := json.Unmarshal(resp.Kvs[0].Value, &cur); err != nil {
				return fault.Wrap(err, fault.Internal, CodeCorruptHealth, "nexus "+id+": the stored health record is corrupt",
					"recreate the nexus from a replica you trust (nexus create --source)")
			}
			if cur.Generation != gen-1 {
				return fault.New(fault.FailedPrecondition, CodeStaleGeneration,
					fmt.Sprintf("nexus %s: health record generation %d is stored; this nexus saves %d from %d: another nexus of the volume saved since",
						id, cur.Generation, gen, gen-1),
					"this nexus is stale and must stop; the volume's current nexus holds the record")
			}
			cmp = clientv3.Compare(clientv3.ModRevision(s.k.health(id)), "=", resp.Kvs[0].ModRevision)
		}
		ok, err := s.txn(ctx, []clientv3.Cmp{cmp}, clientv3.OpPut(s.k.health(id), string(rec)))
		if err != nil {
			return err
		}
		if ok {
			// A nexus saves its record at every change of a child's
			// state: the volume's reconciler takes a look.
			s.enqueue(id)
			return nil
		}
	}
	return fault.New(fault.Unavailable, CodeStore, "nexus "+id+": health save: too many concurrent changes", "retry")
}

// deleteHealth forgets the record of a nexus, except that the record of a
// volume's nexus lives as long as the volume: unpublishing destroys the
// nexus, and the next publish must find which replicas are current.
func (s *Service) deleteHealth(ctx context.Context, id string) error {
	if err := checkNexusUUID(id); err != nil {
		return err
	}
	v, err := s.getVolumeByUUID(ctx, id)
	if err != nil {
		return err
	}
	if v != nil {
		s.log.Info("kept the health record of a volume's nexus", "volume", v.Name)
		return nil
	}
	_, err = s.txn(ctx, nil, clientv3.OpDelete(s.k.health(id)))
	return err
}

// LoadNexusHealth implements VolumeService.LoadNexusHealth.
func (vs *VolumeServer) LoadNexusHealth(ctx context.Context, req *mgmtv1.LoadNexusHealthRequest) (*mgmtv1.NexusHealth, error) {
	b, err := vs.s.loadHealth(ctx, req.NexusUuid, req.NodeUuid)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &mgmtv1.NexusHealth{Record: b, Found: b != nil}, nil
}

// SaveNexusHealth implements VolumeService.SaveNexusHealth.
func (vs *VolumeServer) SaveNexusHealth(ctx context.Context, req *mgmtv1.SaveNexusHealthRequest) (*mgmtv1.SaveNexusHealthResponse, error) {
	if err := vs.s.saveHealth(ctx, req.NexusUuid, req.Generation, req.Record, req.NodeUuid); err != nil {
		return nil, ToStatus(err)
	}
	return &mgmtv1.SaveNexusHealthResponse{}, nil
}

// DeleteNexusHealth implements VolumeService.DeleteNexusHealth.
func (vs *VolumeServer) DeleteNexusHealth(ctx context.Context, req *mgmtv1.DeleteNexusHealthRequest) (*mgmtv1.DeleteNexusHealthResponse, error) {
	if err := vs.s.deleteHealth(ctx, req.NexusUuid); err != nil {
		return nil, ToStatus(err)
	}
	return &mgmtv1.DeleteNexusHealthResponse{}, nil
}
