package main

import (
	"io"
	"strconv"
	"strings"
	"time"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
)

// poolView is the stable JSON/YAML form of a pool. Sizes are bytes.
type poolView struct {
	Name          string `json:"name" yaml:"name"`
	UUID          string `json:"uuid" yaml:"uuid"`
	Disk          string `json:"disk" yaml:"disk"`
	State         string `json:"state" yaml:"state"`
	Reason        string `json:"reason,omitempty" yaml:"reason,omitempty"`
	Capacity      uint64 `json:"capacity" yaml:"capacity"`
	ClusterSize   uint64 `json:"cluster_size" yaml:"cluster_size"`
	TotalClusters uint64 `json:"total_clusters" yaml:"total_clusters"`
	FreeClusters  uint64 `json:"free_clusters" yaml:"free_clusters"`
	Free          uint64 `json:"free" yaml:"free"`
	Allocated     uint64 `json:"allocated" yaml:"allocated"`
	Committed     uint64 `json:"committed" yaml:"committed"`
	// CommittedPercent is committed in percent of the capacity; thin
	// replicas may take it up to OvercommitPercent.
	CommittedPercent  float64 `json:"committed_percent" yaml:"committed_percent"`
	OvercommitPercent uint32  `json:"overcommit_percent" yaml:"overcommit_percent"`
	Replicas          uint32  `json:"replicas" yaml:"replicas"`
	Snapshots         uint32  `json:"snapshots,omitempty" yaml:"snapshots,omitempty"`
	// Labels set on the engine (nexctl pool label).
	Labels map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
}

func newPoolView(p *enginev1.Pool) poolView {
	return poolView{Name: p.GetName(), UUID: p.GetUuid(), Disk: p.GetDisk(), State: stateName(p.GetState().String()),
		Reason: p.GetReason(), Capacity: p.GetCapacity(), ClusterSize: p.GetClusterSize(),
		TotalClusters: p.GetTotalClusters(), FreeClusters: p.GetFreeClusters(),
		Free: p.GetFreeClusters() * p.GetClusterSize(), Allocated: p.GetAllocated(),
		Committed: p.GetCommitted(), Replicas: p.GetReplicaCount(), Snapshots: p.GetSnapshotCount(), OvercommitPercent: p.GetOvercommitPercent(),
		CommittedPercent: percentOf(p.GetCommitted(), p.GetCapacity()), Labels: p.GetLabels()}
}

// percentOf is n in percent of total, rounded to a tenth; 0 of nothing.
func percentOf(n, total uint64) float64 {
	if total == 0 {
		return 0
	}
	return float64(n*1000/total) / 10
}

// shareView is the stable form of a share.
type shareView struct {
	Protocol     string   `json:"protocol" yaml:"protocol"`
	URI          string   `json:"uri" yaml:"uri"`
	AllowedHosts []string `json:"allowed_hosts,omitempty" yaml:"allowed_hosts,omitempty"`
}

// replicaView is the stable JSON/YAML form of a replica. Sizes are bytes.
type replicaView struct {
	Name      string     `json:"name" yaml:"name"`
	UUID      string     `json:"uuid" yaml:"uuid"`
	Pool      string     `json:"pool" yaml:"pool"`
	Size      uint64     `json:"size" yaml:"size"`
	Thin      bool       `json:"thin" yaml:"thin"`
	Allocated uint64     `json:"allocated" yaml:"allocated"`
	State     string     `json:"state" yaml:"state"`
	Reason    string     `json:"reason,omitempty" yaml:"reason,omitempty"`
	Share     *shareView `json:"share,omitempty" yaml:"share,omitempty"`
	// Shares lists every share (one per protocol); Share is the first.
	Shares []shareView `json:"shares,omitempty" yaml:"shares,omitempty"`
	// NGUID identifies this incarnation of the replica; Owner is the UUID
	// of the nexus that holds it, Epoch its highest fencing epoch.
	NGUID string `json:"nguid,omitempty" yaml:"nguid,omitempty"`
	Owner string `json:"owner,omitempty" yaml:"owner,omitempty"`
	Epoch uint64 `json:"epoch,omitempty" yaml:"epoch,omitempty"`
	// Origin is, for a clone, the UUID of its snapshot; Exclusive the
	// bytes only this replica holds (the rest is shared).
	Origin    string `json:"origin,omitempty" yaml:"origin,omitempty"`
	Exclusive uint64 `json:"exclusive,omitempty" yaml:"exclusive,omitempty"`
}

func newReplicaView(r *enginev1.Replica) replicaView {
	v := replicaView{Name: r.GetName(), UUID: r.GetUuid(), Pool: r.GetPool(), Size: r.GetSize(), Thin: r.GetThin(),
		Allocated: r.GetAllocated(), State: stateName(r.GetState().String()), Reason: r.GetReason(),
		NGUID: r.GetNguid(), Owner: r.GetOwner(), Epoch: r.GetEpoch(), Origin: r.GetOrigin(), Exclusive: r.GetExclusive()}
	if s := r.GetShare(); s != nil {
		v.Share = &shareView{Protocol: s.GetProtocol(), URI: s.GetUri(), AllowedHosts: s.GetAllowedHosts()}
	}
	for _, s := range r.GetShares() {
		v.Shares = append(v.Shares, shareView{Protocol: s.GetProtocol(), URI: s.GetUri(), AllowedHosts: s.GetAllowedHosts()})
	}
	if len(v.Shares) == 0 && v.Share != nil {
		v.Shares = []shareView{*v.Share} // a server that predates shares
	}
	return v
}

// stateName turns POOL_STATE_ONLINE into "online".
func stateName(enum string) string {
	if i := strings.LastIndex(enum, "_STATE_"); i >= 0 {
		enum = enum[i+len("_STATE_"):]
	}
	return strings.ToLower(enum)
}

func poolTable(w io.Writer, pools []poolView) error {
	t := output.NewTable(w, "NAME", "STATE", "CAPACITY", "FREE", "ALLOCATED", "COMMITTED", "REPLICAS", "DISK")
	for _, p := range pools {
		if p.State != "online" {
			t.Row(p.Name, p.State, "", "", "", "", "", p.Disk)
			continue
		}
		t.Row(p.Name, p.State, output.Size(p.Capacity), output.Size(p.Free), output.Size(p.Allocated),
			output.Size(p.Committed), itoa(uint64(p.Replicas)), p.Disk)
	}
	if err := t.Flush(); err != nil {
		return err
	}
	for _, p := range pools {
		if p.Reason != "" {
			if _, err := io.WriteString(w, "\n"+p.Name+": "+p.Reason+"\n"); err != nil {
				return err
			}
		}
	}
	return nil
}

func poolDetail(w io.Writer, p poolView) error {
	kv := []string{
		"Name", p.Name, "UUID", p.UUID, "Disk", p.Disk, "State", p.State, "Reason", p.Reason,
		"Capacity", output.Size(p.Capacity), "Cluster size", output.Size(p.ClusterSize),
		"Clusters", itoa(p.FreeClusters) + " free of " + itoa(p.TotalClusters),
		"Free", output.Size(p.Free), "Allocated", output.Size(p.Allocated) + " (" + output.Percent(p.Allocated, p.Capacity) + ")",
		"Committed", output.Size(p.Committed) + " (" + output.Percent(p.Committed, p.Capacity) +
			" of the capacity; the limit is " + itoa(uint64(p.OvercommitPercent)) + "%)",
		"Replicas", itoa(uint64(p.Replicas)),
		"Snapshots", itoa(uint64(p.Snapshots)) + " (their exclusive bytes: nexctl snapshot list --pool " + p.Name + ")"}
	if len(p.Labels) > 0 {
		kv = append(kv, "Labels", selector(p.Labels))
	}
	return output.KeyValues(w, kv...)
}

func replicaTable(w io.Writer, reps []replicaView) error {
	t := output.NewTable(w, "NAME", "POOL", "SIZE", "ALLOCATED", "TYPE", "STATE", "OWNER", "SHARE")
	for _, r := range reps {
		var uris []string
		for _, sh := range r.Shares {
			if sh.URI != "" {
				uris = append(uris, sh.URI)
			} else {
				uris = append(uris, sh.Protocol)
			}
		}
		share := strings.Join(uris, " ")
		owner := r.Owner
		if owner == "" {
			owner = "-"
		}
		t.Row(r.Name, r.Pool, output.Size(r.Size), output.Size(r.Allocated), kind(r.Thin), r.State, owner, share)
	}
	return t.Flush()
}

func replicaDetail(w io.Writer, r replicaView) error {
	kv := []string{"Name", r.Name, "UUID", r.UUID, "Pool", r.Pool, "Size", output.Size(r.Size),
		"Type", kind(r.Thin), "Allocated", output.Size(r.Allocated) + " (" + output.Percent(r.Allocated, r.Size) + ")",
		"State", r.State}
	if r.Reason != "" {
		kv = append(kv, "Reason", r.Reason)
	}
	for _, sh := range r.Shares {
		kv = append(kv, "Share ("+sh.Protocol+")", sh.URI)
		if len(sh.AllowedHosts) > 0 {
			kv = append(kv, "Allowed hosts ("+sh.Protocol+")", strings.Join(sh.AllowedHosts, ", "))
		}
	}
	if len(r.Shares) == 0 {
		kv = append(kv, "Share", "not shared")
	}
	owner := "none"
	if r.Owner != "" {
		owner = "nexus " + r.Owner
	}
	kv = append(kv, "Owner", owner, "Epoch", itoa(r.Epoch), "NGUID", r.NGUID)
	if r.Exclusive != r.Allocated {
		kv = append(kv, "Exclusive", output.Size(r.Exclusive)+" (the rest is shared with snapshots or clones)")
	}
	if r.Origin != "" {
		kv = append(kv, "Clone of", "snapshot "+r.Origin)
	}
	return output.KeyValues(w, kv...)
}

// snapshotView is a snapshot as nexctl prints it.
type snapshotView struct {
	UUID        string `json:"uuid" yaml:"uuid"`
	Name        string `json:"name" yaml:"name"`
	Pool        string `json:"pool" yaml:"pool"`
	ReplicaUUID string `json:"replica_uuid" yaml:"replica_uuid"`
	ReplicaName string `json:"replica_name,omitempty" yaml:"replica_name,omitempty"`
	Created     string `json:"created" yaml:"created"`
	Size        uint64 `json:"size" yaml:"size"`
	Referenced  uint64 `json:"referenced" yaml:"referenced"`
	Exclusive   uint64 `json:"exclusive" yaml:"exclusive"`
}

func newSnapshotView(s *enginev1.Snapshot) snapshotView {
	return snapshotView{UUID: s.GetUuid(), Name: s.GetName(), Pool: s.GetPool(), ReplicaUUID: s.GetReplicaUuid(),
		ReplicaName: s.GetReplicaName(), Created: time.Unix(0, s.GetCreatedUnixNano()).UTC().Format(time.RFC3339Nano),
		Size: s.GetSize(), Referenced: s.GetReferenced(), Exclusive: s.GetExclusive()}
}

func snapshotTable(w io.Writer, list []snapshotView) error {
	t := output.NewTable(w, "NAME", "UUID", "POOL", "REPLICA", "CREATED", "SIZE", "REFERENCED", "EXCLUSIVE")
	for _, s := range list {
		rep := s.ReplicaName
		if rep == "" {
			rep = s.ReplicaUUID + " (destroyed)"
		}
		t.Row(s.Name, s.UUID, s.Pool, rep, s.Created, output.Size(s.Size), output.Size(s.Referenced), output.Size(s.Exclusive))
	}
	return t.Flush()
}

func snapshotDetail(w io.Writer, s snapshotView) error {
	rep := s.ReplicaName + " (" + s.ReplicaUUID + ")"
	if s.ReplicaName == "" {
		rep = s.ReplicaUUID + " (destroyed)"
	}
	return output.KeyValues(w, "Name", s.Name, "UUID", s.UUID, "Pool", s.Pool, "Replica", rep, "Created", s.Created,
		"Size", output.Size(s.Size), "Referenced", output.Size(s.Referenced),
		"Exclusive", output.Size(s.Exclusive)+" (freed when the snapshot is deleted)")
}

func kind(thin bool) string {
	if thin {
		return "thin"
	}
	return "thick"
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
