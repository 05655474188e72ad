package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/fault"
)

// SnapshotInfo describes a snapshot of a replica.
type SnapshotInfo struct {
	UUID, Name, Pool string
	// ReplicaUUID is the replica the snapshot was taken of; ReplicaName
	// its name while it exists.
	ReplicaUUID, ReplicaName string
	Created                  time.Time
	Size                     int64
	// Referenced is the bytes of the clusters the snapshot holds,
	// Exclusive those only it holds (what deleting it frees).
	Referenced, Exclusive int64
}

// CreateSnapshotOptions describe a snapshot to take.
type CreateSnapshotOptions struct {
	// ReplicaUUID names the replica to snapshot.
	ReplicaUUID string
	// UUID of the snapshot (required): the same UUID and timestamp on every
	// replica of a volume make a volume-level snapshot.
	UUID string
	// Name of the snapshot, unique among the pool's replicas and
	// snapshots.
	Name string
	// Created is the snapshot's timestamp; zero means now.
	Created time.Time
}

// CloneSnapshotOptions describe a clone to make.
type CloneSnapshotOptions struct {
	SnapshotUUID string
	// UUID (required) and Name of the new replica; Owner, when set, claims
	// it for that nexus as it is created (see CreateReplicaOptions.Owner).
	UUID, Name, Owner string
}

func snapshotInfo(pool string, s SnapshotStat) SnapshotInfo {
	return SnapshotInfo{UUID: s.UUID, Name: s.Name, Pool: pool, ReplicaUUID: s.Origin, ReplicaName: s.OriginName,
		Created: s.Created, Size: s.Size, Referenced: s.Referenced, Exclusive: s.Exclusive}
}

// parseUUIDArg validates a required UUID argument, returning its canonical
// form; code is the fault code of a bad or missing one.
func parseUUIDArg(what, s string) (string, error) {
	id, err := uuid.Parse(s)
	if err == nil && id == uuid.Nil {
		err = errors.New("the nil UUID")
	}
	if err != nil {
		if s == "" {
			err = errors.New("missing")
		}
		return "", fault.Wrap(err, fault.InvalidArgument, "snapshot.uuid", fmt.Sprintf("%s %q is not a UUID", what, s),
			"give a UUID such as 9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e")
	}
	return id.String(), nil
}

func snapshotNotFound(id string) error {
	return fault.New(fault.NotFound, "snapshot.not_found", fmt.Sprintf("snapshot %s not found", id),
		"list the snapshots with `nexctl snapshot list`")
}

func snapshotsUnsupported(pool string) error {
	return fault.New(fault.FailedPrecondition, "snapshot.unsupported", fmt.Sprintf("pool %q does not take snapshots", pool),
		"use a pool of this node's pool backend")
}

// onlinePools returns the online pools (only pool when it is set).
func (e *Engine) onlinePools(pool string) ([]*poolEntry, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*poolEntry
	for _, name := range sortedKeys(e.pools) {
		if pool != "" && name != pool {
			continue
		}
		if pe := e.pools[name]; pe.h != nil {
			out = append(out, pe)
		}
	}
	if pool != "" && len(out) == 0 {
		if _, ok := e.pools[pool]; !ok {
			return nil, poolNotFound(pool)
		}
	}
	return out, nil
}

// findSnapshot finds the snapshot of a UUID in the online pools.
func (e *Engine) findSnapshot(id string) (*poolEntry, SnapshotStat, bool) {
	pools, _ := e.onlinePools("")
	for _, pe := range pools {
		sn, ok := pe.h.(Snapshotter)
		if !ok {
			continue
		}
		for _, s := range sn.Snapshots() {
			if strings.EqualFold(s.UUID, id) {
				return pe, s, true
			}
		}
	}
	return nil, SnapshotStat{}, false
}

// CreateSnapshot takes a snapshot of the replica of o.ReplicaUUID. I/O to
// the replica pauses while the snapshot is made durable. Idempotent by
// o.UUID: a snapshot of that UUID of the same replica and name is returned
// as it is, any other is AlreadyExists (snapshot.exists).
func (e *Engine) CreateSnapshot(ctx context.Context, o CreateSnapshotOptions) (SnapshotInfo, error) {
	if err := live(ctx); err != nil {
		return SnapshotInfo{}, err
	}
	if err := checkName("snapshot", o.Name); err != nil {
		return SnapshotInfo{}, err
	}
	rid, err := parseUUIDArg("replica uuid", o.ReplicaUUID)
	if err != nil {
		return SnapshotInfo{}, err
	}
	sid, err := parseUUIDArg("snapshot uuid", o.UUID)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if pe, s, ok := e.findSnapshot(sid); ok {
		if strings.EqualFold(s.Origin, rid) && s.Name == o.Name {
			return snapshotInfo(pe.name, s), nil
		}
		return SnapshotInfo{}, fault.New(fault.AlreadyExists, "snapshot.exists",
			fmt.Sprintf("snapshot %s exists as %q of replica %s in pool %q", sid, s.Name, s.Origin, pe.name),
			"choose another uuid, or delete that snapshot first")
	}
	all, err := e.Replicas("")
	if err != nil {
		return SnapshotInfo{}, err
	}
	name := ""
	for _, ri := range all {
		if strings.EqualFold(ri.UUID, rid) {
			name = ri.Name
		}
	}
	if name == "" {
		return SnapshotInfo{}, replicaNotFound(rid)
	}
	pe, done, err := e.beginReplicaOp(name, "", false)
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer func() {
		e.mu.Lock()
		done()
		e.mu.Unlock()
	}()
	sn, ok := pe.h.(Snapshotter)
	if !ok {
		return SnapshotInfo{}, snapshotsUnsupported(pe.name)
	}
	st, err := sn.CreateSnapshot(name, SnapshotSpec{Name: o.Name, UUID: sid, Created: o.Created})
	if err != nil {
		return SnapshotInfo{}, mapPoolErr(err, "replica", name)
	}
	e.log.Info("snapshot created", "snapshot", o.Name, "uuid", sid, "replica", name, "pool", pe.name)
	return snapshotInfo(pe.name, st), nil
}

// Snapshots lists the snapshots of the online pools (of one pool, of one
// replica, when set), sorted by pool and name.
func (e *Engine) Snapshots(pool, replicaUUID string) ([]SnapshotInfo, error) {
	pools, err := e.onlinePools(pool)
	if err != nil {
		return nil, err
	}
	var out []SnapshotInfo
	for _, pe := range pools {
		sn, ok := pe.h.(Snapshotter)
		if !ok {
			continue
		}
		for _, s := range sn.Snapshots() {
			if replicaUUID == "" || strings.EqualFold(s.Origin, replicaUUID) {
				out = append(out, snapshotInfo(pe.name, s))
			}
		}
	}
	return out, nil
}

// Snapshot returns the snapshot of a UUID; NotFound (snapshot.not_found)
// when there is none.
func (e *Engine) Snapshot(id string) (SnapshotInfo, error) {
	pe, s, ok := e.findSnapshot(id)
	if !ok {
		return SnapshotInfo{}, snapshotNotFound(id)
	}
	return snapshotInfo(pe.name, s), nil
}

// DeleteSnapshot deletes the snapshot of a UUID; NotFound
// (snapshot.not_found) when there is none.
func (e *Engine) DeleteSnapshot(ctx context.Context, id string) error {
	if err := live(ctx); err != nil {
		return err
	}
	pe, s, ok := e.findSnapshot(id)
	if !ok {
		return snapshotNotFound(id)
	}
	key := "snapshot/" + strings.ToLower(s.UUID)
	e.mu.Lock()
	switch {
	case e.pools[pe.name] != pe || pe.h == nil:
		e.mu.Unlock()
		return snapshotNotFound(id)
	case pe.exclusive:
		e.mu.Unlock()
		return busyErr(fmt.Sprintf("pool %q", pe.name))
	case e.busy[key]:
		e.mu.Unlock()
		return busyErr(fmt.Sprintf("snapshot %s", id))
	}
	e.busy[key] = true
	pe.ops++
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.busy, key)
		pe.ops--
		e.mu.Unlock()
	}()
	if err := pe.h.(Snapshotter).DeleteSnapshot(s.Name); err != nil {
		return mapPoolErr(err, "pool", pe.name)
	}
	e.log.Info("snapshot deleted", "snapshot", s.Name, "uuid", s.UUID, "pool", pe.name)
	return nil
}

// CloneSnapshot creates a thin replica from the snapshot of
// o.SnapshotUUID, in its pool. Idempotent by o.UUID: a clone of that UUID
// and name of the same snapshot (and owner) is returned as it is; a
// replica of that name or UUID otherwise is AlreadyExists (replica.exists).
func (e *Engine) CloneSnapshot(ctx context.Context, o CloneSnapshotOptions) (ReplicaInfo, error) {
	if err := live(ctx); err != nil {
		return ReplicaInfo{}, err
	}
	if err := checkName("replica", o.Name); err != nil {
		return ReplicaInfo{}, err
	}
	sid, err := parseUUIDArg("snapshot uuid", o.SnapshotUUID)
	if err != nil {
		return ReplicaInfo{}, err
	}
	if o.UUID, err = parseUUIDArg("clone uuid", o.UUID); err != nil {
		return ReplicaInfo{}, err
	}
	if o.Owner != "" {
		id, err := uuid.Parse(o.Owner)
		if err != nil || id == uuid.Nil {
			if err == nil {
				err = errors.New("the nil UUID owns nothing")
			}
			return ReplicaInfo{}, fault.Wrap(err, fault.InvalidArgument, "replica.owner",
				fmt.Sprintf("clone %q: owner %q is not a nexus UUID", o.Name, o.Owner),
				"give the UUID of the nexus that will own the clone, or leave the owner out")
		}
		o.Owner = id.String()
	}
	all, err := e.Replicas("")
	if err != nil {
		return ReplicaInfo{}, err
	}
	for _, ri := range all {
		if ri.Name != o.Name && !strings.EqualFold(ri.UUID, o.UUID) {
			continue
		}
		if ri.Name == o.Name && strings.EqualFold(ri.UUID, o.UUID) && strings.EqualFold(ri.Origin, sid) && strings.EqualFold(ri.Owner, o.Owner) {
			return ri, nil
		}
		return ReplicaInfo{}, fault.New(fault.AlreadyExists, "replica.exists",
			fmt.Sprintf("replica %q (%s) exists and is not a clone of snapshot %s with that name, uuid and owner", ri.Name, ri.UUID, sid),
			"choose another name and uuid, or destroy the existing replica first")
	}
	pe, s, ok := e.findSnapshot(sid)
	if !ok {
		return ReplicaInfo{}, snapshotNotFound(sid)
	}
	pe, done, err := e.beginReplicaOp(o.Name, pe.name, true)
	if err != nil {
		return ReplicaInfo{}, err
	}
	rs, err := pe.h.(Snapshotter).CloneSnapshot(s.Name, ReplicaSpec{Name: o.Name, UUID: o.UUID, Owner: o.Owner})
	e.mu.Lock()
	done()
	if err == nil {
		e.replicas[o.Name] = pe.name
	}
	e.mu.Unlock()
	if err != nil {
		return ReplicaInfo{}, mapPoolErr(err, "replica", o.Name)
	}
	e.log.Info("snapshot cloned", "snapshot", s.Name, "clone", o.Name, "pool", pe.name, "owner", o.Owner)
	return replicaInfo(pe.name, rs, nil), nil
}

type snapshotServer struct {
	enginev1.UnimplementedSnapshotServiceServer
	e *Engine
}

// SnapshotToProto converts a SnapshotInfo to its API message.
func SnapshotToProto(s SnapshotInfo) *enginev1.Snapshot {
	return &enginev1.Snapshot{Uuid: s.UUID, Name: s.Name, Pool: s.Pool, ReplicaUuid: s.ReplicaUUID, ReplicaName: s.ReplicaName,
		CreatedUnixNano: s.Created.UnixNano(), Size: uint64(s.Size), Referenced: uint64(s.Referenced), Exclusive: uint64(s.Exclusive)}
}

func (s *snapshotServer) CreateSnapshot(ctx context.Context, r *enginev1.CreateSnapshotRequest) (*enginev1.Snapshot, error) {
	var created time.Time
	if r.GetCreatedUnixNano() != 0 {
		created = time.Unix(0, r.GetCreatedUnixNano())
	}
	si, err := s.e.CreateSnapshot(ctx, CreateSnapshotOptions{ReplicaUUID: r.GetReplicaUuid(), UUID: r.GetUuid(), Name: r.GetName(), Created: created})
	if err != nil {
		return nil, err
	}
	return SnapshotToProto(si), nil
}

func (s *snapshotServer) ListSnapshots(_ context.Context, r *enginev1.ListSnapshotsRequest) (*enginev1.ListSnapshotsResponse, error) {
	list, err := s.e.Snapshots(r.GetPool(), r.GetReplicaUuid())
	if err != nil {
		return nil, err
	}
	resp := &enginev1.ListSnapshotsResponse{}
	for _, si := range list {
		resp.Snapshots = append(resp.Snapshots, SnapshotToProto(si))
	}
	return resp, nil
}

func (s *snapshotServer) GetSnapshot(_ context.Context, r *enginev1.GetSnapshotRequest) (*enginev1.Snapshot, error) {
	si, err := s.e.Snapshot(r.GetUuid())
	if err != nil {
		return nil, err
	}
	return SnapshotToProto(si), nil
}

func (s *snapshotServer) DeleteSnapshot(ctx context.Context, r *enginev1.DeleteSnapshotRequest) (*enginev1.DeleteSnapshotResponse, error) {
	if err := s.e.DeleteSnapshot(ctx, r.GetUuid()); err != nil {
		return nil, err
	}
	return &enginev1.DeleteSnapshotResponse{}, nil
}

func (s *snapshotServer) CloneSnapshot(ctx context.Context, r *enginev1.CloneSnapshotRequest) (*enginev1.Replica, error) {
	ri, err := s.e.CloneSnapshot(ctx, CloneSnapshotOptions{SnapshotUUID: r.GetSnapshotUuid(), UUID: r.GetUuid(), Name: r.GetName(), Owner: r.GetOwner()})
	if err != nil {
		return nil, err
	}
	return ReplicaToProto(ri), nil
}
