package mgmt

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// gcState remembers, for this term, since when each candidate for
// garbage collection has been seen as one; a candidate is destroyed only
// once it has stayed one for the grace period.
type gcState struct {
	mu       sync.Mutex
	seen     map[string]time.Time // "<node>/replica/<uuid>" or "<node>/nexus/<name>"
	reported map[string]bool      // orphans of unknown owners already reported
}

// gcPass collects what no volume owns, on the nodes that answer:
//   - a replica whose engine claim names a volume that is deleted (its
//     tombstone says so) or a volume that does not list it;
//   - a nexus of a volume that is deleted, or that is not where the volume
//     is (or is being) published.
//
// A replica claimed by an owner that is neither a volume nor a deleted
// one is reported, never destroyed: nothing is destroyed merely because
// something else is not found. Unclaimed replicas (made by hand) are left
// alone. Every destroy is made as the claimed owner, so the engine checks
// the claim once more.
func (s *Service) gcPass(ctx context.Context) error {
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return err
	}
	idx := memberIndex(members)
	nodes := map[string]bool{}
	for _, m := range members {
		if alive(m) {
			nodes[m.UUID] = true
		}
	}
	// Engines first, records after: anything an engine lists was recorded
	// (records are written before replicas are made) by the time the
	// records are read.
	views := s.observe(ctx, idx, nodes)
	vols, err := s.listVolumes(ctx)
	if err != nil {
		return err
	}
	resp, err := s.cfg.Etcd.Get(ctx, s.k.deletedVolumes(), clientv3.WithPrefix())
	if err != nil {
		return storeErr(err, "list deleted volumes")
	}
	deleted := map[string]string{} // UUID -> name
	for _, kv := range resp.Kvs {
		var t struct {
			Name string `json:"name"`
		}
		_ = json.Unmarshal(kv.Value, &t)
		deleted[string(kv.Key[len(s.k.deletedVolumes()):])] = t.Name
	}
	byUUID := map[string]*volumeRecord{}
	for _, v := range vols {
		byUUID[v.UUID] = v
	}
	now := s.cfg.Now()
	g := &s.gc
	g.mu.Lock()
	if g.seen == nil {
		g.seen, g.reported = map[string]time.Time{}, map[string]bool{}
	}
	candidates := map[string]bool{}
	due := func(key string) bool {
		candidates[key] = true
		first, ok := g.seen[key]
		if !ok {
			g.seen[key] = now
			first = now
		}
		return s.cfg.GCGrace < 0 || now.Sub(first) >= s.cfg.GCGrace
	}
	type job struct {
		node       *Member
		vol        *volumeRecord
		replica    *replicaRef
		nexus, why string
		name       string // the replica's engine name
	}
	var jobs []job
	for id, nv := range views {
		if nv.err != nil {
			continue
		}
		m := idx[id]
		for _, r := range nv.replicas {
			if r.Owner == "" {
				continue
			}
			key := id + "/replica/" + r.Uuid
			v := byUUID[r.Owner]
			var why string
			switch {
			case v != nil && (v.Status == volCreating || v.Op != nil):
				continue // in flight: its operation decides
			case v != nil && (slices.ContainsFunc(v.ReplicaSet, func(x replicaRef) bool { return x.UUID == r.Uuid }) ||
				slices.ContainsFunc(v.Retired, func(x replicaRef) bool { return x.UUID == r.Uuid })):
				continue
			case v != nil:
				why = fmt.Sprintf("its volume %s does not count it among its replicas", v.Name)
			case hasKey(deleted, r.Owner):
				why = fmt.Sprintf("its volume %s (%s) was deleted", deleted[r.Owner], r.Owner)
				v = &volumeRecord{UUID: r.Owner, Name: deleted[r.Owner]}
			default:
				if !g.reported[key] {
					g.reported[key] = true
					s.event(ctx, evReplicaOrph, "", m.DisplayName(), r.Uuid, "its owner "+r.Owner+" is no volume this system knows of",
						"replica %s on %s is claimed by an unknown owner: it is left alone (destroy it by hand if it is not needed)", r.Uuid, m.DisplayName())
				}
				continue
			}
			if due(key) {
				jobs = append(jobs, job{node: m, vol: v, replica: &replicaRef{UUID: r.Uuid, Node: id}, name: r.Name, why: why})
			}
		}
		for _, n := range nv.nexuses {
			key := id + "/nexus/" + n.Name
			v := byUUID[n.Uuid]
			var why string
			switch {
			case v != nil && ((v.Target != nil && v.Target.Node == id) || (v.Op != nil && v.Op.Node == id) || slices.Contains(v.StaleTargets, id)):
				continue // where it belongs, being published there, or left to the volume's own cleanup
			case v != nil && v.Op != nil:
				continue
			case v != nil:
				why = fmt.Sprintf("volume %s is not published on this node", v.Name)
			case hasKey(deleted, n.Uuid):
				why = fmt.Sprintf("its volume %s was deleted", deleted[n.Uuid])
				v = &volumeRecord{UUID: n.Uuid, Name: n.Name}
			default:
				continue // not a volume's nexus
			}
			if due(key) {
				jobs = append(jobs, job{node: m, vol: v, nexus: n.Name, why: why})
			}
		}
	}
	for key := range g.seen {
		if !candidates[key] {
			delete(g.seen, key)
		}
	}
	g.mu.Unlock()
	for _, j := range jobs {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if j.replica != nil {
			if err := s.destroyReplicaNamed(ctx, j.node, j.vol.UUID, j.name, j.node.UUID); err != nil {
				s.log.Warn("garbage collection: replica not destroyed", "replica", j.replica.UUID, "node", j.node.DisplayName(), "err", err)
				continue
			}
			s.event(ctx, evReplicaGC, j.vol.Name, j.node.DisplayName(), j.replica.UUID, j.why,
				"replica %s on %s destroyed: no volume owns it", j.replica.UUID, j.node.DisplayName())
			continue
		}
		if err := s.destroyNexus(ctx, j.node, j.vol); err != nil {
			s.log.Warn("garbage collection: nexus not destroyed", "nexus", j.nexus, "node", j.node.DisplayName(), "err", err)
			continue
		}
		s.event(ctx, evNexusGC, j.vol.Name, j.node.DisplayName(), "", j.why, "nexus %s on %s destroyed", j.nexus, j.node.DisplayName())
	}
	return s.snapshotGC(ctx, idx)
}

func hasKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}
