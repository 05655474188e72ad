package mgmt

// Volume snapshots: one engine snapshot per replica, all with the same UUID
// and timestamp, taken while the volume's nexus holds its writes.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
)

// Fault codes of volume snapshots (snapshot.not_found and
// snapshot.name_invalid are shared with the engine's).
const (
	CodeSnapshotNotFound    = "snapshot.not_found"
	CodeSnapshotName        = "snapshot.name_invalid"
	CodeSnapshotHoldExpired = "snapshot.hold_expired"
	CodeSnapshotThick       = "snapshot.thick_volume"
	CodeSnapshotNoCopy      = "snapshot.no_copy"
	CodeSnapshotNotReady    = "snapshot.not_ready"
	CodeSnapshotSize        = "snapshot.restore_size"
)

// Event kinds of snapshots.
const (
	evSnapshot       = "snapshot.create"
	evSnapshotFailed = "snapshot.failed"
	evSnapshotDelete = "snapshot.delete"
	evSnapshotGC     = "snapshot.gc"
)

// SnapshotHold is how long a nexus may hold its writes for a snapshot:
// the engine resumes them on its own after it, and the snapshot fails.
const SnapshotHold = 10 * time.Second

// snapshotCallTimeout bounds one replica's CreateSnapshot during a hold;
// it leaves time for the resume within SnapshotHold.
const snapshotCallTimeout = 7 * time.Second

// Snapshot record states.
const (
	snapCreating = "creating"
	snapReady    = "ready"
)

// snapshotRecord is a volume snapshot as kept at
// /nexstor/<system>/snapshots/<uuid>, with an index from its name at
// /nexstor/<system>/snapshot-names/<volume-uuid>/<name>. A snapshot
// outlives its volume: the copies are pool snapshots, which outlive their
// replicas.
type snapshotRecord struct {
	UUID       string `json:"uuid"`
	Name       string `json:"name"`
	VolumeUUID string `json:"volume_uuid"`
	VolumeName string `json:"volume_name"`
	Size       uint64 `json:"size"`
	CreatedNs  int64  `json:"created_ns"`
	// Status: creating (the volume's snapshot operation is under way), or
	// ready.
	Status string `json:"status"`
	// Copies are the replicas that hold the snapshot.
	Copies []snapCopy `json:"copies,omitempty"`
	// Failed are the replicas whose snapshot failed (faulted in the nexus).
	Failed   []string `json:"failed,omitempty"`
	PausedUs uint64   `json:"paused_us,omitempty"`

	modRev int64
}

type snapCopy struct {
	Replica string `json:"replica"`
	Node    string `json:"node"` // member UUID
	Pool    string `json:"pool"`
}

// snapshotTomb is what is left of a deleted snapshot: the copies still to
// delete, on nodes that did not answer.
type snapshotTomb struct {
	Name      string     `json:"name"`
	Volume    string     `json:"volume"`
	DeletedMs int64      `json:"deleted_ms"`
	Pending   []snapCopy `json:"pending,omitempty"`
}

func (k keys) snapshot(id string) string { return k.prefix + "snapshots/" + id }
func (k keys) snapshots() string         { return k.prefix + "snapshots/" }
func (k keys) snapshotName(vol, name string) string {
	return k.prefix + "snapshot-names/" + vol + "/" + name
}
func (k keys) deletedSnapshot(id string) string { return k.prefix + "deleted-snapshots/" + id }
func (k keys) deletedSnapshots() string         { return k.prefix + "deleted-snapshots/" }

// snapshotAPI is the engine's snapshot service as the leader uses it.
type snapshotAPI interface {
	CreateSnapshot(context.Context, *enginev1.CreateSnapshotRequest) (*enginev1.Snapshot, error)
	GetSnapshot(context.Context, *enginev1.GetSnapshotRequest) (*enginev1.Snapshot, error)
	DeleteSnapshot(context.Context, *enginev1.DeleteSnapshotRequest) (*enginev1.DeleteSnapshotResponse, error)
	CloneSnapshot(context.Context, *enginev1.CloneSnapshotRequest) (*enginev1.Replica, error)
	QuiesceNexus(context.Context, *enginev1.QuiesceNexusRequest) (*enginev1.QuiesceNexusResponse, error)
	ResumeNexus(context.Context, *enginev1.ResumeNexusRequest) (*enginev1.ResumeNexusResponse, error)
}

// snapshotsOf returns the snapshot service of an engine client.
func snapshotsOf(c engineAPI, m *Member) (snapshotAPI, error) {
	sc, ok := c.(snapshotAPI)
	if !ok {
		return nil, fault.New(fault.FailedPrecondition, "snapshot.unsupported",
			fmt.Sprintf("the engine of %s takes no snapshots", m.DisplayName()), "")
	}
	return sc, nil
}

func snapshotNotFound(ref string) error {
	return fault.New(fault.NotFound, CodeSnapshotNotFound, fmt.Sprintf("snapshot %q does not exist", ref),
		"list the snapshots with `nexctl snapshot list`")
}

func decodeSnapshot(b []byte, rev int64) (*snapshotRecord, error) {
	var r snapshotRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("snapshot record: %w", err)
	}
	r.modRev = rev
	return &r, nil
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v) // plain data: cannot fail
	return string(b)
}

// getSnapshotByUUID returns the snapshot, nil when there is none.
func (s *Service) getSnapshotByUUID(ctx context.Context, id string) (*snapshotRecord, error) {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.snapshot(id))
	if err != nil {
		return nil, storeErr(err, "read snapshot "+id)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return decodeSnapshot(resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
}

// getSnapshotNamed returns the snapshot of a volume by name, nil when
// there is none.
func (s *Service) getSnapshotNamed(ctx context.Context, volUUID, name string) (*snapshotRecord, error) {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.snapshotName(volUUID, name))
	if err != nil {
		return nil, storeErr(err, "read snapshot "+name)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return s.getSnapshotByUUID(ctx, string(resp.Kvs[0].Value))
}

// resolveSnapshot finds a snapshot by UUID or VOLUME/NAME (the volume by
// name or UUID; a deleted volume's snapshots by UUID only).
func (s *Service) resolveSnapshot(ctx context.Context, ref string) (*snapshotRecord, error) {
	if vol, name, ok := strings.Cut(ref, "/"); ok {
		v, err := s.getVolume(ctx, vol)
		if err != nil {
			return nil, err
		}
		var r *snapshotRecord
		if v != nil {
			r, err = s.getSnapshotNamed(ctx, v.UUID, name)
		} else {
			r, err = s.getSnapshotNamed(ctx, vol, name)
		}
		if err != nil || r != nil {
			return r, err
		}
		return nil, snapshotNotFound(ref)
	}
	if _, err := uuid.Parse(ref); err == nil {
		r, err := s.getSnapshotByUUID(ctx, strings.ToLower(ref))
		if err != nil || r != nil {
			return r, err
		}
	}
	return nil, snapshotNotFound(ref)
}

// listSnapshots returns every snapshot (of one volume UUID when set), by
// volume and time.
func (s *Service) listSnapshots(ctx context.Context, volUUID string) ([]*snapshotRecord, error) {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.snapshots(), clientv3.WithPrefix())
	if err != nil {
		return nil, storeErr(err, "list snapshots")
	}
	var out []*snapshotRecord
	for _, kv := range resp.Kvs {
		r, err := decodeSnapshot(kv.Value, kv.ModRevision)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kv.Key, err)
		}
		if volUUID == "" || r.VolumeUUID == volUUID {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].VolumeName != out[j].VolumeName {
			return out[i].VolumeName < out[j].VolumeName
		}
		return out[i].CreatedNs < out[j].CreatedNs
	})
	return out, nil
}

// createSnapshot implements VolumeService.CreateSnapshot.
func (s *Service) createSnapshot(ctx context.Context, volRef, name string) (*snapshotRecord, error) {
	if !volumeNameRE.MatchString(name) {
		return nil, fault.New(fault.InvalidArgument, CodeSnapshotName, fmt.Sprintf("snapshot name %q is not valid", name),
			"use 1-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit")
	}
	v, unlock, err := s.lockVolume(ctx, volRef)
	if err != nil {
		return nil, err
	}
	defer unlock()
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	idx := memberIndex(members)
	if v.Op != nil && v.Op.Kind == opSnapshot {
		// Left by a leader that stopped (this call holds the lock).
		if err := s.rollbackSnapshot(ctx, v, idx, "a new snapshot of the volume was asked for"); err != nil {
			return nil, err
		}
	}
	if r, err := s.getSnapshotNamed(ctx, v.UUID, name); err != nil || r != nil {
		return r, err
	}
	switch {
	case v.Status != volCreated:
		return nil, fault.New(fault.FailedPrecondition, CodeVolumeState, fmt.Sprintf("volume %s is %s", v.Name, v.Status), "")
	case v.Op != nil:
		return nil, busy(v)
	case !v.Thin:
		return nil, fault.New(fault.FailedPrecondition, CodeSnapshotThick,
			fmt.Sprintf("volume %s is thick: snapshots are taken of thin volumes only", v.Name),
			"create the volume with --thin to take snapshots of it")
	}
	r := &snapshotRecord{UUID: uuid.NewString(), Name: name, VolumeUUID: v.UUID, VolumeName: v.Name, Size: v.Size,
		CreatedNs: s.cfg.Now().UnixNano(), Status: snapCreating}
	v.Op = &volumeOp{Kind: opSnapshot, Snapshot: r.UUID, StartedMs: s.nowMs()}
	ok, rev, err := s.txnRev(ctx, []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(s.k.volume(v.UUID)), "=", v.modRev),
		clientv3.Compare(clientv3.CreateRevision(s.k.snapshotName(v.UUID, name)), "=", 0),
	}, clientv3.OpPut(s.k.volume(v.UUID), encodeVolume(v)), clientv3.OpPut(s.k.snapshot(r.UUID), mustJSON(r)),
		clientv3.OpPut(s.k.snapshotName(v.UUID, name), r.UUID))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errStaleVolume
	}
	v.modRev, r.modRev = rev, rev
	copies, failed, paused, err := s.takeSnapshot(ctx, v, r, idx)
	if err != nil {
		s.event(ctx, evSnapshotFailed, v.Name, "", "", err.Error(), "snapshot %s of volume %s failed", name, v.Name)
		if rerr := s.rollbackSnapshot(ctx, v, idx, err.Error()); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		return nil, err
	}
	r.Status, r.Copies, r.Failed, r.PausedUs = snapReady, copies, failed, uint64(paused.Microseconds())
	v.Op = nil
	ok, rev, err = s.txnRev(ctx, []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(s.k.volume(v.UUID)), "=", v.modRev),
		clientv3.Compare(clientv3.ModRevision(s.k.snapshot(r.UUID)), "=", r.modRev),
	}, clientv3.OpPut(s.k.volume(v.UUID), encodeVolume(v)), clientv3.OpPut(s.k.snapshot(r.UUID), mustJSON(r)))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errStaleVolume
	}
	v.modRev, r.modRev = rev, rev
	cause := fmt.Sprintf("asked for; %d of %d replicas hold it", len(copies), len(copies)+len(failed))
	s.event(ctx, evSnapshot, v.Name, "", "", cause, "snapshot %s of volume %s taken (writes held %v)", name, v.Name, paused)
	if len(failed) > 0 {
		s.enqueue(v.UUID) // the faulted children are rebuilt
	}
	return r, nil
}

// takeSnapshot snapshots the volume's replicas: behind its nexus's online
// children while the nexus holds the writes, or, unpublished, the replicas
// its health record calls current. It returns the copies made, the
// replicas that failed and how long writes were held.
func (s *Service) takeSnapshot(ctx context.Context, v *volumeRecord, r *snapshotRecord, idx map[string]*Member) ([]snapCopy, []string, time.Duration, error) {
	snapOne := func(ctx context.Context, ref replicaRef) error {
		m := idx[ref.Node]
		c, err := s.engineOf(m, ref.Node)
		if err != nil {
			return err
		}
		sc, err := snapshotsOf(c, m)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, snapshotCallTimeout)
		defer cancel()
		_, err = sc.CreateSnapshot(cctx, &enginev1.CreateSnapshotRequest{ReplicaUuid: ref.UUID, Uuid: r.UUID, Name: r.UUID,
			CreatedUnixNano: r.CreatedNs})
		if err != nil {
			return fmt.Errorf("snapshot of replica %s on %s: %w", ref.UUID, m.DisplayName(), err)
		}
		return nil
	}
	// snapAll snapshots refs at once and sorts them into copies and
	// failures.
	snapAll := func(refs []replicaRef) ([]snapCopy, []string, []error) {
		errs := make([]error, len(refs))
		var wg sync.WaitGroup
		for i, ref := range refs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = snapOne(ctx, ref)
			}()
		}
		wg.Wait()
		var copies []snapCopy
		var failed []string
		var why []error
		for i, ref := range refs {
			if errs[i] != nil {
				failed = append(failed, ref.UUID)
				why = append(why, errs[i])
				s.log.Warn("snapshot: a replica's snapshot failed", "volume", v.Name, "snapshot", r.Name, "err", errs[i])
				continue
			}
			copies = append(copies, snapCopy{Replica: ref.UUID, Node: ref.Node, Pool: ref.Pool})
		}
		return copies, failed, why
	}
	noCopy := func(why []error) error {
		return fault.Wrap(errors.Join(why...), fault.Unavailable, CodeSnapshotNoCopy,
			fmt.Sprintf("volume %s: no replica could take snapshot %s", v.Name, r.Name),
			"make the volume's nodes reachable and its replicas healthy, then take the snapshot again")
	}
	if v.Target == nil {
		recorded, err := s.recordedChildren(ctx, v.UUID, nil)
		if err != nil {
			return nil, nil, 0, err
		}
		var refs []replicaRef
		for _, ref := range v.ReplicaSet {
			if ref.Replace != "" {
				continue
			}
			if st, ok := recorded[ref.UUID]; recorded == nil || (ok && st == "online") {
				refs = append(refs, ref)
			}
		}
		copies, failed, why := snapAll(refs)
		if len(copies) == 0 {
			return nil, nil, 0, noCopy(why)
		}
		return copies, failed, 0, nil
	}
	m := idx[v.Target.Node]
	c, err := s.engineOf(m, v.Target.Node)
	if err != nil {
		return nil, nil, 0, err
	}
	sc, err := snapshotsOf(c, m)
	if err != nil {
		return nil, nil, 0, err
	}
	qctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
	defer cancel()
	q, err := sc.QuiesceNexus(qctx, &enginev1.QuiesceNexusRequest{Nexus: v.Name, HoldTimeoutMs: uint32(SnapshotHold.Milliseconds())})
	if err != nil {
		return nil, nil, 0, fmt.Errorf("quiesce the nexus of volume %s on %s: %w", v.Name, m.DisplayName(), err)
	}
	var refs []replicaRef
	var uris []string
	for _, uri := range q.OnlineChildren {
		id := replicaOfURI(uri)
		for _, ref := range v.ReplicaSet {
			if ref.UUID == id {
				refs, uris = append(refs, ref), append(uris, uri)
			}
		}
	}
	copies, failed, why := snapAll(refs)
	var failedURIs []string
	for i, ref := range refs {
		if slices.Contains(failed, ref.UUID) {
			failedURIs = append(failedURIs, uris[i])
		}
	}
	res, err := sc.ResumeNexus(qctx, &enginev1.ResumeNexusRequest{Nexus: v.Name, QuiesceId: q.QuiesceId, FailedChildren: failedURIs})
	switch {
	case err != nil && notFound(err):
		res = &enginev1.ResumeNexusResponse{}
	case err != nil:
		return nil, nil, 0, fmt.Errorf("resume the nexus of volume %s on %s (the snapshot is not trusted): %w", v.Name, m.DisplayName(), err)
	}
	paused := time.Duration(res.PausedUs) * time.Microsecond
	if !res.Held {
		return nil, nil, paused, fault.New(fault.Aborted, CodeSnapshotHoldExpired,
			fmt.Sprintf("volume %s: the nexus resumed its writes before the replicas' snapshots were all taken (hold of %v)", v.Name, SnapshotHold),
			"take the snapshot again; check the replicas' nodes if it keeps failing")
	}
	if res.Error != "" {
		s.log.Warn("snapshot: the end of the hold reported an error", "volume", v.Name, "err", res.Error)
	}
	if len(copies) == 0 {
		return nil, nil, paused, noCopy(why)
	}
	return copies, failed, paused, nil
}

// rollbackSnapshot undoes the volume's recorded snapshot operation: the
// copies made on any of the volume's nodes are deleted (those on nodes
// that do not answer by garbage collection, from the tombstone), and the
// record goes. The caller holds the volume's lock.
func (s *Service) rollbackSnapshot(ctx context.Context, v *volumeRecord, idx map[string]*Member, why string) error {
	id := v.Op.Snapshot
	r, err := s.getSnapshotByUUID(ctx, id)
	if err != nil {
		return err
	}
	var where []snapCopy
	for _, ref := range append(slices.Clone(v.ReplicaSet), v.Retired...) {
		where = append(where, snapCopy{Replica: ref.UUID, Node: ref.Node, Pool: ref.Pool})
	}
	pending := s.deleteCopies(ctx, id, where, idx)
	v.Op = nil
	ops := []clientv3.Op{clientv3.OpPut(s.k.volume(v.UUID), encodeVolume(v)),
		clientv3.OpPut(s.k.deletedSnapshot(id), mustJSON(snapshotTomb{Volume: v.UUID, DeletedMs: s.nowMs(), Pending: pending}))}
	if r != nil {
		ops = append(ops, clientv3.OpDelete(s.k.snapshot(id)), clientv3.OpDelete(s.k.snapshotName(v.UUID, r.Name)))
	}
	ok, rev, err := s.txnRev(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.volume(v.UUID)), "=", v.modRev)}, ops...)
	if err != nil {
		return err
	}
	if !ok {
		return errStaleVolume
	}
	v.modRev = rev
	s.log.Info("snapshot rolled back", "volume", v.Name, "snapshot", id, "why", why, "pending", len(pending))
	return nil
}

// deleteCopies deletes the engine snapshot id on the nodes of where,
// returning those on nodes that did not answer.
func (s *Service) deleteCopies(ctx context.Context, id string, where []snapCopy, idx map[string]*Member) []snapCopy {
	var pending []snapCopy
	seen := map[string]bool{}
	for _, cp := range where {
		if seen[cp.Node] {
			continue
		}
		seen[cp.Node] = true
		m := idx[cp.Node]
		if m == nil {
			continue // the member was removed: so was its engine
		}
		err := func() error {
			c, err := s.engineOf(m, cp.Node)
			if err != nil {
				return err
			}
			sc, err := snapshotsOf(c, m)
			if err != nil {
				return err
			}
			cctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
			defer cancel()
			if _, err := sc.DeleteSnapshot(cctx, &enginev1.DeleteSnapshotRequest{Uuid: id}); err != nil && !notFound(err) {
				return err
			}
			return nil
		}()
		if err != nil {
			s.log.Warn("snapshot copy not deleted: garbage collection retries it", "snapshot", id, "node", m.DisplayName(), "err", err)
			pending = append(pending, cp)
		}
	}
	return pending
}

// deleteSnapshot implements VolumeService.DeleteSnapshot.
func (s *Service) deleteSnapshot(ctx context.Context, ref string) ([]string, error) {
	if err := s.requireLeader(ctx); err != nil {
		return nil, err
	}
	r, err := s.resolveSnapshot(ctx, ref)
	if err != nil {
		return nil, err
	}
	l := s.vols.lock(r.VolumeUUID)
	l.Lock()
	defer l.Unlock()
	if r, err = s.getSnapshotByUUID(ctx, r.UUID); err != nil {
		return nil, err
	} else if r == nil {
		return nil, snapshotNotFound(ref)
	}
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	idx := memberIndex(members)
	if r.Status == snapCreating {
		v, err := s.getVolumeByUUID(ctx, r.VolumeUUID)
		if err != nil {
			return nil, err
		}
		if v != nil && v.Op != nil && v.Op.Kind == opSnapshot && v.Op.Snapshot == r.UUID {
			// Left by a leader that stopped (this call holds the lock).
			return nil, s.rollbackSnapshot(ctx, v, idx, "deleted")
		}
	}
	pending := s.deleteCopies(ctx, r.UUID, r.Copies, idx)
	ok, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.snapshot(r.UUID)), "=", r.modRev)},
		clientv3.OpDelete(s.k.snapshot(r.UUID)), clientv3.OpDelete(s.k.snapshotName(r.VolumeUUID, r.Name)),
		clientv3.OpPut(s.k.deletedSnapshot(r.UUID), mustJSON(snapshotTomb{Name: r.Name, Volume: r.VolumeUUID, DeletedMs: s.nowMs(), Pending: pending})))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fault.New(fault.Aborted, CodeVolumeConflict, fmt.Sprintf("snapshot %s changed while it was deleted", r.Name),
			"delete it again")
	}
	var out []string
	for _, cp := range pending {
		out = append(out, nodeName(idx, cp.Node)+" (replica "+cp.Replica+")")
	}
	s.event(ctx, evSnapshotDelete, r.VolumeName, "", "", "asked for", "snapshot %s of volume %s deleted (%d copies pending)", r.Name, r.VolumeName, len(pending))
	return out, nil
}

// snapshotGC deletes the copies of deleted snapshots that were left on
// nodes that did not answer, once they do.
func (s *Service) snapshotGC(ctx context.Context, idx map[string]*Member) error {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.deletedSnapshots(), clientv3.WithPrefix())
	if err != nil {
		return storeErr(err, "list deleted snapshots")
	}
	for _, kv := range resp.Kvs {
		var t snapshotTomb
		if json.Unmarshal(kv.Value, &t) != nil || len(t.Pending) == 0 {
			continue
		}
		id := string(kv.Key[len(s.k.deletedSnapshots()):])
		var ready []snapCopy
		for _, cp := range t.Pending {
			if alive(idx[cp.Node]) || idx[cp.Node] == nil {
				ready = append(ready, cp)
			}
		}
		if len(ready) == 0 {
			continue
		}
		left := s.deleteCopies(ctx, id, ready, idx)
		var pending []snapCopy
		for _, cp := range t.Pending {
			if !slices.Contains(ready, cp) || slices.Contains(left, cp) {
				pending = append(pending, cp)
			}
		}
		if len(pending) == len(t.Pending) {
			continue
		}
		done := len(t.Pending) - len(pending)
		t.Pending = pending
		if _, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)},
			clientv3.OpPut(string(kv.Key), mustJSON(t))); err != nil {
			return err
		}
		s.event(ctx, evSnapshotGC, "", "", "", "the snapshot was deleted while the nodes were away",
			"%d copies of deleted snapshot %s removed", done, id)
	}
	return nil
}

// snapshotStatuses turns records into API snapshots with live states.
func (s *Service) snapshotStatuses(ctx context.Context, recs []*snapshotRecord) ([]*mgmtv1.VolumeSnapshot, error) {
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return nil, err
	}
	idx := memberIndex(members)
	out := make([]*mgmtv1.VolumeSnapshot, len(recs))
	var wg sync.WaitGroup
	for i, r := range recs {
		st := &mgmtv1.SnapshotStatus{PausedUs: r.PausedUs, Failed: r.Failed}
		out[i] = &mgmtv1.VolumeSnapshot{Uuid: r.UUID, Name: r.Name, Volume: r.VolumeName, VolumeUuid: r.VolumeUUID, Size: r.Size,
			CreatedUnixNano: r.CreatedNs, Status: st}
		for _, cp := range r.Copies {
			c := &mgmtv1.SnapshotCopy{Replica: cp.Replica, Node: nodeName(idx, cp.Node), Pool: cp.Pool, State: "unknown"}
			st.Copies = append(st.Copies, c)
			m := idx[cp.Node]
			if !alive(m) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ec, err := s.vols.eng.get(m.Address)
				if err != nil {
					return
				}
				sc, err := snapshotsOf(ec, m)
				if err != nil {
					return
				}
				cctx, cancel := context.WithTimeout(ctx, probeTimeout)
				defer cancel()
				_, err = sc.GetSnapshot(cctx, &enginev1.GetSnapshotRequest{Uuid: r.UUID})
				switch {
				case err == nil:
					c.State = "present"
				case notFound(err):
					c.State = "missing"
				}
			}()
		}
	}
	wg.Wait()
	for i, r := range recs {
		st := out[i].Status
		for _, c := range st.Copies {
			if c.State == "present" {
				st.ReadyCopies++
			}
		}
		switch {
		case r.Status == snapCreating:
			st.Phase = snapCreating
		case st.ReadyCopies > 0:
			st.Phase, st.ReadyToUse = "ready", true
		default:
			st.Phase = "unavailable"
		}
	}
	return out, nil
}

// restorePlan turns a volume create from a snapshot into its replicas:
// clones of the snapshot's copies that answer, on their nodes and pools,
// at most spec.Replicas of them. It fills the spec's size when it is 0.
func (s *Service) restorePlan(ctx context.Context, spec *mgmtv1.VolumeSpec, idx map[string]*Member) (*snapshotRecord, []replicaRef, error) {
	r, err := s.resolveSnapshot(ctx, spec.FromSnapshot)
	if err != nil {
		return nil, nil, err
	}
	if r.Status != snapReady {
		return nil, nil, fault.New(fault.FailedPrecondition, CodeSnapshotNotReady, fmt.Sprintf("snapshot %s is still being taken", r.Name),
			"wait until `nexctl snapshot get` shows it ready")
	}
	if spec.Size == 0 {
		spec.Size = r.Size
	}
	if spec.Size != r.Size {
		return nil, nil, fault.New(fault.InvalidArgument, CodeSnapshotSize,
			fmt.Sprintf("volume %s: size %d differs from the size %d of snapshot %s", spec.Name, spec.Size, r.Size, r.Name),
			"leave the size out (or give the snapshot's size), and resize the volume once it is created")
	}
	var refs []replicaRef
	for _, cp := range r.Copies {
		if len(refs) >= int(spec.Replicas) {
			break
		}
		m := idx[cp.Node]
		c, err := s.engineOf(m, cp.Node)
		if err != nil {
			continue
		}
		sc, err := snapshotsOf(c, m)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, probeTimeout)
		sn, err := sc.GetSnapshot(cctx, &enginev1.GetSnapshotRequest{Uuid: r.UUID})
		cancel()
		if err != nil {
			s.log.Warn("restore: a copy of the snapshot is not usable", "snapshot", r.Name, "node", m.DisplayName(), "err", err)
			continue
		}
		refs = append(refs, replicaRef{UUID: uuid.NewString(), Node: cp.Node, Pool: sn.Pool, Size: sn.Size, CloneOf: r.UUID})
	}
	if len(refs) == 0 {
		return nil, nil, fault.New(fault.Unavailable, CodeSnapshotNoCopy,
			fmt.Sprintf("snapshot %s: no node holding a copy of it answers", r.Name),
			"start the nodes that hold the snapshot (`nexctl snapshot get`)")
	}
	return r, refs, nil
}

// seedRestoredHealth records the clones of a restored volume as current,
// so that its first nexus trusts them all (they are identical) instead of
// rebuilding every one but one. A record that exists is left as it is.
func (s *Service) seedRestoredHealth(ctx context.Context, v *volumeRecord) error {
	type child struct {
		URI   string `json:"uri"`
		State string `json:"state"`
	}
	rec := struct {
		NexusUUID   string  `json:"nexus_uuid"`
		Generation  uint64  `json:"generation"`
		SegmentSize int64   `json:"segment_size"`
		Clean       bool    `json:"clean"`
		Children    []child `json:"children"`
	}{NexusUUID: v.UUID, Generation: 1, Clean: true}
	for _, r := range v.ReplicaSet {
		rec.Children = append(rec.Children, child{URI: "bdev:///" + r.UUID, State: "online"})
	}
	_, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(s.k.health(v.UUID)), "=", 0)},
		clientv3.OpPut(s.k.health(v.UUID), mustJSON(rec)))
	return err
}
