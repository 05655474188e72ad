package mgmt

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nexstor/nexstor/internal/fault"
)

// Volume statuses (the persisted lifecycle; the phase users see is derived
// from it and from live reports).
const (
	volCreating = "creating"
	volCreated  = "created"
	volDeleting = "deleting"
)

// Operation kinds recorded in a volume's spec before their side effects.
const (
	opCreate    = "create"
	opPublish   = "publish"
	opUnpublish = "unpublish"
	opResize    = "resize"
	opDelete    = "delete"
	opMove      = "move"
	opSnapshot  = "snapshot"
)

// volumeRecord is a volume's spec as kept in etcd at
// /nexstor/<system>/volumes/<uuid>, with an index from its name at
// /nexstor/<system>/volume-names/<name>. Every change is a transaction that
// compares the record's mod revision (and the leader's election key), so a
// stale leader's write fails.
type volumeRecord struct {
	UUID         string            `json:"uuid"`
	Name         string            `json:"name"`
	Size         uint64            `json:"size"`
	Replicas     int               `json:"replicas"`
	Thin         bool              `json:"thin,omitempty"`
	Protocol     string            `json:"protocol"`
	NodeSelector map[string]string `json:"node_selector,omitempty"`
	PoolSelector map[string]string `json:"pool_selector,omitempty"`
	// Status is creating, created or deleting.
	Status string `json:"status"`
	// ReplicaSet are the replicas the volume owns (every one is claimed by
	// the volume's UUID in its pool). While deleting: those not yet
	// destroyed.
	ReplicaSet []replicaRef `json:"replica_set"`
	// Target is where the volume is published; nil when it is not.
	Target *targetRef `json:"target,omitempty"`
	// StaleTargets are nodes (UUIDs) that may still hold a nexus of the
	// volume: it was unpublished while they were down. The nexus is
	// destroyed when the node answers again.
	StaleTargets []string `json:"stale_targets,omitempty"`
	// Op is the operation under way, recorded before its side effects
	// start: a leader that dies halfway leaves it for the next leader,
	// which finishes it or rolls it back (resumeOp).
	Op        *volumeOp `json:"op,omitempty"`
	CreatedMs int64     `json:"created_ms"`
	// FromSnapshot is the snapshot (UUID) the volume was restored from.
	FromSnapshot string `json:"from_snapshot,omitempty"`
	// Retired are replicas taken out of the volume (replaced, or removed
	// by a smaller replica count) that still exist on their nodes: each
	// is destroyed, as the volume's own, once its node answers.
	Retired []replicaRef `json:"retired,omitempty"`

	modRev int64
}

type replicaRef struct {
	UUID string `json:"uuid"`
	Node string `json:"node"` // member UUID
	Pool string `json:"pool"`
	// Size in bytes: the volume size rounded up to the pool's cluster size.
	Size uint64 `json:"size"`
	// OutSinceMs is when the reconcilers first saw the replica out of
	// service (its node away, its child offline or faulted); 0 while it is
	// healthy. Replacement starts rebuild.partial_wait after it.
	OutSinceMs int64 `json:"out_since_ms,omitempty"`
	// Replace marks a replica to be replaced: it no longer counts towards
	// the volume's replica count, and it is removed once a replacement is
	// healthy. It is never unset: a replica given up on is not trusted
	// again.
	Replace string `json:"replace,omitempty"` // why
	// Replaces is the replica this one was added to replace.
	Replaces string `json:"replaces,omitempty"`
	// AddedMs is when the replica was added to a volume that existed.
	AddedMs int64 `json:"added_ms,omitempty"`
	// CloneOf, at create: the snapshot (UUID) the replica is cloned from
	// on its node, instead of being created blank.
	CloneOf string `json:"clone_of,omitempty"`
}

type targetRef struct {
	Node     string   `json:"node"` // member UUID
	Protocol string   `json:"protocol"`
	URI      string   `json:"uri"`
	NQN      string   `json:"nqn,omitempty"`
	HostNQNs []string `json:"host_nqns,omitempty"`
}

type volumeOp struct {
	Kind      string   `json:"kind"`
	Node      string   `json:"node,omitempty"` // publish: the nexus node (UUID)
	Protocol  string   `json:"protocol,omitempty"`
	HostNQNs  []string `json:"host_nqns,omitempty"`
	Size      uint64   `json:"size,omitempty"` // resize: the new size
	StartedMs int64    `json:"started_ms"`
	// From is the node a move takes the nexus from (UUID).
	From string `json:"from,omitempty"`
	// Stage of a move: "retire" (the old nexus stops serving: ANA
	// inaccessible), "republish" (the new one serves), then "delete old
	// target".
	Stage string `json:"stage,omitempty"`
	// Cause is why an automatic operation was started.
	Cause string `json:"cause,omitempty"`
	// Snapshot is the UUID of the snapshot a snapshot operation takes.
	Snapshot string `json:"snapshot,omitempty"`
}

func (k keys) volume(uuid string) string     { return k.prefix + "volumes/" + uuid }
func (k keys) volumes() string               { return k.prefix + "volumes/" }
func (k keys) volumeName(name string) string { return k.prefix + "volume-names/" + name }
func (k keys) health(uuid string) string     { return k.prefix + "nexus-health/" + uuid }

// deleted is the tombstone of a deleted volume: the positive evidence that
// garbage collection needs before it destroys a replica or nexus that
// still names the volume (nothing is destroyed merely because its owner is
// not found).
func (k keys) deleted(uuid string) string { return k.prefix + "deleted-volumes/" + uuid }
func (k keys) deletedVolumes() string     { return k.prefix + "deleted-volumes/" }

// ref returns the replica set's entry of a replica (nil when it has none);
// valid until the set changes.
func (v *volumeRecord) ref(id string) *replicaRef {
	for i := range v.ReplicaSet {
		if v.ReplicaSet[i].UUID == id {
			return &v.ReplicaSet[i]
		}
	}
	return &replicaRef{} // gone: changes to it are dropped
}

func decodeVolume(b []byte, modRev int64) (*volumeRecord, error) {
	var v volumeRecord
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("volume record: %w", err)
	}
	v.modRev = modRev
	return &v, nil
}

func encodeVolume(v *volumeRecord) string {
	b, _ := json.Marshal(v) // plain data: cannot fail
	return string(b)
}

// getVolumeByUUID returns the volume, nil when there is none.
func (s *Service) getVolumeByUUID(ctx context.Context, id string) (*volumeRecord, error) {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.volume(id))
	if err != nil {
		return nil, storeErr(err, "read volume "+id)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return decodeVolume(resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
}

// getVolume returns the volume named (or with the UUID) ref, nil when
// there is none.
func (s *Service) getVolume(ctx context.Context, ref string) (*volumeRecord, error) {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.volumeName(ref))
	if err != nil {
		return nil, storeErr(err, "read volume "+ref)
	}
	id := ref
	if len(resp.Kvs) > 0 {
		id = string(resp.Kvs[0].Value)
	}
	return s.getVolumeByUUID(ctx, id)
}

// listVolumes returns every volume by name.
func (s *Service) listVolumes(ctx context.Context) ([]*volumeRecord, error) {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.volumes(), clientv3.WithPrefix())
	if err != nil {
		return nil, storeErr(err, "list volumes")
	}
	out := make([]*volumeRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		v, err := decodeVolume(kv.Value, kv.ModRevision)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kv.Key, err)
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// errStaleVolume is returned by putVolume when the record changed since it
// was read: another writer (a stale leader, a concurrent call) won.
var errStaleVolume = fault.New(fault.Aborted, "volume.conflict", "the volume record changed since it was read (another call or a newer leader changed it)",
	"read the volume again (`nexctl volume get`) and retry if still needed")

// createVolumeRecord writes a new volume and its name index; it fails
// (false) when the name or UUID exists.
func (s *Service) createVolumeRecord(ctx context.Context, v *volumeRecord) (bool, error) {
	ok, rev, err := s.txnRev(ctx, []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(s.k.volume(v.UUID)), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(s.k.volumeName(v.Name)), "=", 0),
	}, clientv3.OpPut(s.k.volume(v.UUID), encodeVolume(v)), clientv3.OpPut(s.k.volumeName(v.Name), v.UUID))
	if err != nil || !ok {
		return ok, err
	}
	v.modRev = rev
	return true, nil
}

// putVolume replaces the record if it has not changed since v was read,
// and refreshes v's revision. It returns errStaleVolume when it had.
func (s *Service) putVolume(ctx context.Context, v *volumeRecord) error {
	ok, rev, err := s.txnRev(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.volume(v.UUID)), "=", v.modRev)},
		clientv3.OpPut(s.k.volume(v.UUID), encodeVolume(v)))
	if err != nil {
		return err
	}
	if !ok {
		return errStaleVolume
	}
	v.modRev = rev
	return nil
}

// removeVolumeRecord deletes the volume, its name and its health record,
// and leaves its tombstone, if the volume has not changed since v was
// read.
func (s *Service) removeVolumeRecord(ctx context.Context, v *volumeRecord) error {
	tomb, _ := json.Marshal(map[string]any{"name": v.Name, "deleted_ms": s.nowMs()})
	ok, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.volume(v.UUID)), "=", v.modRev)},
		clientv3.OpDelete(s.k.volume(v.UUID)), clientv3.OpDelete(s.k.volumeName(v.Name)), clientv3.OpDelete(s.k.health(v.UUID)),
		clientv3.OpPut(s.k.deleted(v.UUID), string(tomb)))
	if err != nil {
		return err
	}
	if !ok {
		return errStaleVolume
	}
	return nil
}
