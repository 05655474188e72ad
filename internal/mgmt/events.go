package mgmt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

// Event kinds (Event.kind in volume.proto).
const (
	evResync       = "replica.resync"
	evRebuild      = "replica.rebuild"
	evReplace      = "replica.replace"
	evAdd          = "replica.add"
	evRemove       = "replica.remove"
	evReplicaGC    = "replica.gc"
	evReplicaOrph  = "replica.orphan"
	evNexusGC      = "nexus.gc"
	evHealed       = "volume.healed"
	evRepairFailed = "repair.failed"
	evCordon       = "node.cordon"
	evUncordon     = "node.uncordon"
	evDrain        = "node.drain"
	evDrained      = "node.drained"
)

// maxEvents bounds the event log in etcd: the oldest go first.
const maxEvents = 1000

func (k keys) events() string { return k.prefix + "events/" }

// storedEvent is an event as kept at /nexstor/<system>/events/<ms>-<rand>;
// its seq is the key's create revision.
type storedEvent struct {
	TimeMs  int64  `json:"time_ms"`
	Kind    string `json:"kind"`
	Volume  string `json:"volume,omitempty"`
	Node    string `json:"node,omitempty"`
	Replica string `json:"replica,omitempty"`
	Message string `json:"message"`
	Cause   string `json:"cause,omitempty"`
}

// eventWrites counts writes, to prune the log every so often.
var eventWrites atomic.Uint64

// event records an automatic action with its cause, in the log and in the
// event log (best effort: a store that cannot be written loses the event,
// never the action). node is a display name.
func (s *Service) event(ctx context.Context, kind, volume, node, replica, cause, format string, a ...any) {
	e := storedEvent{TimeMs: s.nowMs(), Kind: kind, Volume: volume, Node: node, Replica: replica,
		Message: fmt.Sprintf(format, a...), Cause: cause}
	s.log.Info("event: "+e.Message, "kind", kind, "volume", volume, "node", node, "replica", replica, "cause", cause)
	var r [4]byte
	_, _ = rand.Read(r[:])
	key := fmt.Sprintf("%s%020d-%s", s.k.events(), e.TimeMs, hex.EncodeToString(r[:]))
	b, _ := json.Marshal(e)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if _, err := s.cfg.Etcd.Put(cctx, key, string(b)); err != nil {
		s.log.Warn("event not recorded", "kind", kind, "err", err)
		return
	}
	if eventWrites.Add(1)%50 == 0 {
		s.pruneEvents(cctx)
	}
}

// pruneEvents deletes the oldest events beyond maxEvents.
func (s *Service) pruneEvents(ctx context.Context) {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.events(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count <= maxEvents {
		return
	}
	old, err := s.cfg.Etcd.Get(ctx, s.k.events(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(resp.Count-maxEvents))
	if err != nil || len(old.Kvs) == 0 {
		return
	}
	last := string(old.Kvs[len(old.Kvs)-1].Key)
	_, _ = s.cfg.Etcd.Delete(ctx, s.k.events(), clientv3.WithRange(last+"\x00"))
}

// listEvents returns the newest events matching req, oldest first.
func (s *Service) listEvents(ctx context.Context, req *mgmtv1.ListEventsRequest) ([]*mgmtv1.Event, error) {
	limit := int(req.Limit)
	if limit <= 0 {
		limit = 100
	}
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if req.Volume == "" && req.Node == "" {
		opts = append(opts, clientv3.WithLimit(int64(limit)))
	}
	resp, err := s.cfg.Etcd.Get(ctx, s.k.events(), opts...)
	if err != nil {
		return nil, storeErr(err, "list events")
	}
	var out []*mgmtv1.Event
	for _, kv := range resp.Kvs {
		var e storedEvent
		if json.Unmarshal(kv.Value, &e) != nil {
			continue
		}
		if (req.Volume != "" && e.Volume != req.Volume) || (req.Node != "" && e.Node != req.Node) {
			continue
		}
		out = append(out, &mgmtv1.Event{Seq: uint64(kv.CreateRevision), TimeMs: e.TimeMs, Kind: e.Kind, Volume: e.Volume,
			Node: e.Node, Replica: e.Replica, Message: e.Message, Cause: e.Cause})
		if len(out) == limit {
			break
		}
	}
	slices.Reverse(out)
	return out, nil
}
