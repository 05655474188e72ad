package mgmt

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
)

// NoRank is the rank of a node that has none.
const NoRank = ^uint32(0)

// Member is the record of one storage node, stored as JSON at
// /nexstor/<system>/members/<uuid>.
type Member struct {
	UUID        string `json:"uuid"`
	Rank        uint32 `json:"rank"`
	Address     string `json:"address"`
	FaultDomain string `json:"fault_domain,omitempty"`
	State       State  `json:"state"`
	Info        string `json:"info,omitempty"`
	// PrevState is the state before the member became unresponsive, which
	// it returns to when its heartbeats resume (a stopped member stays
	// stopped).
	PrevState State `json:"prev_state,omitempty"`
	// LastHB is the last heartbeat persisted; the leader keeps newer ones
	// in memory and writes them with the next state change.
	LastHB   int64             `json:"last_heartbeat_ms"`
	JoinedAt int64             `json:"joined_ms"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Name is the node's name: configured, or "node-<rank>".
	Name string `json:"name,omitempty"`
	// HostNQN is the NVMe host NQN of the node's engine.
	HostNQN string `json:"host_nqn,omitempty"`
	// Cordoned members get no new replicas or nexuses.
	Cordoned bool `json:"cordoned,omitempty"`
	// Draining members are cordoned, and their replicas are replaced on
	// other nodes by the reconcilers (VolumeService.DrainNode).
	Draining bool `json:"draining,omitempty"`
	// DrainStartedMs is when the drain was asked for.
	DrainStartedMs int64 `json:"drain_started_ms,omitempty"`

	// modRev is the etcd revision the record was read at, for
	// compare-and-swap updates.
	modRev int64
}

// Proto returns the wire form.
func (m *Member) Proto() *mgmtv1.Member {
	return &mgmtv1.Member{Uuid: m.UUID, Rank: m.Rank, Address: m.Address, FaultDomain: m.FaultDomain,
		State: string(m.State), Info: m.Info, LastHeartbeatMs: m.LastHB, JoinedMs: m.JoinedAt, Labels: m.Labels,
		Name: m.DisplayName(), HostNqn: m.HostNQN, Cordoned: m.Cordoned, Draining: m.Draining}
}

// DisplayName is the member's name, "node-<rank>" when it has none.
func (m *Member) DisplayName() string {
	if m.Name != "" {
		return m.Name
	}
	return fmt.Sprintf("node-%d", m.Rank)
}

// keys lays out the system's etcd namespace.
type keys struct{ prefix string }

func newKeys(system string) keys { return keys{prefix: "/nexstor/" + system + "/"} }

func (k keys) member(uuid string) string { return k.prefix + "members/" + uuid }
func (k keys) members() string           { return k.prefix + "members/" }

// rank keys are zero-padded so that they sort numerically.
func (k keys) rank(r uint32) string { return fmt.Sprintf("%sranks/%010d", k.prefix, r) }
func (k keys) nextRank() string     { return k.prefix + "next_rank" }
func (k keys) election() string     { return k.prefix + "leader" }

func storeErr(err error, what string) error {
	return fault.Wrap(err, fault.Unavailable, CodeStore, what,
		"check that the etcd cluster has a quorum (etcd.endpoints or the embedded members on the access points)")
}

func decodeMember(kv []byte, modRev int64) (*Member, error) {
	var m Member
	if err := json.Unmarshal(kv, &m); err != nil {
		return nil, fmt.Errorf("member record: %w", err)
	}
	m.modRev = modRev
	return &m, nil
}

func encodeMember(m *Member) string {
	b, _ := json.Marshal(m) // a struct of strings, numbers and a string map cannot fail
	return string(b)
}

// getMember returns the member with uuid, or nil when there is none.
// Serializable reads skip the raft round trip; the record's revision still
// guards any update made from it.
func getMember(ctx context.Context, cli *clientv3.Client, k keys, uuid string, opts ...clientv3.OpOption) (*Member, error) {
	resp, err := cli.Get(ctx, k.member(uuid), opts...)
	if err != nil {
		return nil, storeErr(err, "read member "+uuid)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return decodeMember(resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
}

// listMembers returns every member, by rank.
func listMembers(ctx context.Context, cli *clientv3.Client, k keys) ([]*Member, error) {
	resp, err := cli.Get(ctx, k.members(), clientv3.WithPrefix())
	if err != nil {
		return nil, storeErr(err, "list members")
	}
	out := make([]*Member, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m, err := decodeMember(kv.Value, kv.ModRevision)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kv.Key, err)
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rank < out[j].Rank })
	return out, nil
}

// readNextRank returns the next unallocated rank and the counter's
// modification revision (0 when it does not exist yet).
func readNextRank(ctx context.Context, cli *clientv3.Client, k keys) (uint32, int64, error) {
	resp, err := cli.Get(ctx, k.nextRank())
	if err != nil {
		return 0, 0, storeErr(err, "read rank counter")
	}
	if len(resp.Kvs) == 0 {
		return 0, 0, nil
	}
	n, err := strconv.ParseUint(string(resp.Kvs[0].Value), 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("rank counter %q: %w", resp.Kvs[0].Value, err)
	}
	return uint32(n), resp.Kvs[0].ModRevision, nil
}
