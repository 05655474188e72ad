// Package healthstore is the engines' client of the system health store:
// the health records of volume nexuses kept by the management service (in
// etcd), so that a volume's nexus can be recreated on any node and still
// know which of its children are current. It implements nexus.HealthStore
// over VolumeService.LoadNexusHealth, SaveNexusHealth and
// DeleteNexusHealth, through the management client (which follows the
// leader).
//
// A save is a compare-and-swap on the record's generation: the stored
// record must be the previous generation, or there must be none. Two
// nexuses of one volume (an old instance that lost its node's connection
// and the new one that replaced it) can therefore never both save; the one
// that loses gets ErrStale and must stop serving.
package healthstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/bdev"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
	"github.com/nexstor/nexstor/internal/nexus"
)

// CodeStaleGeneration is the fault code with which the management service
// refuses a save whose generation does not follow the stored record's.
const CodeStaleGeneration = "health.stale_generation"

// ErrStale is wrapped by the error of a Save that lost its compare: another
// nexus of the same volume saved a newer record, so this nexus is not the
// volume's current one and must not serve it. Match it with errors.Is. It
// wraps bdev.ErrSuperseded: the nexus's frontend sends hosts to their
// other paths, where the current nexus serves.
var ErrStale = fmt.Errorf("another nexus of the same volume saved a newer health record: this nexus is stale and must stop serving (destroy it; the volume's current nexus serves it): %w", bdev.ErrSuperseded)

// Store is a nexus.HealthStore kept by the management service. It is safe
// for concurrent use (as is the client). Every method honours its
// context's deadline and cancellation; the client retries a call on
// another access point while the leader changes (or does not answer for
// a few seconds), within that context.
type Store struct {
	client *mgmtclient.Client
	node   atomic.Value // string: the member UUID named in calls
}

// CodeNotTarget is the fault of a load or save the management service
// refused because the volume is not published on this node: the nexus is
// a stale instance.
const CodeNotTarget = "health.not_target"

// SetNode names this node (its member UUID) in every later call, so that
// the management service can refuse the record of a volume that is not
// published here: a stale nexus is then never reopened (Load reports
// nexus.ErrNoRecord) and stops serving at its next save (ErrStale).
func (s *Store) SetNode(uuid string) { s.node.Store(uuid) }

func (s *Store) nodeUUID() string {
	n, _ := s.node.Load().(string)
	return n
}

var _ nexus.HealthStore = (*Store)(nil)

// New returns a store that calls the management service through client.
// The client must carry a certificate of role server (the health store's
// methods are for engines); Store does not close it.
func New(client *mgmtclient.Client) *Store { return &Store{client: client} }

// Load implements nexus.HealthStore: the record last saved for the nexus,
// or an error wrapping nexus.ErrNoRecord when there is none. A record that
// does not decode, or that is another nexus's, is an error.
func (s *Store) Load(ctx context.Context, nexusUUID string) (nexus.HealthRecord, error) {
	var resp *mgmtv1.NexusHealth
	err := s.client.DoVolumeQuick(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		var err error
		resp, err = cl.LoadNexusHealth(ctx, &mgmtv1.LoadNexusHealthRequest{NexusUuid: nexusUUID, NodeUuid: s.nodeUUID()})
		return err
	})
	if fault.CodeOf(err) == CodeNotTarget {
		return nexus.HealthRecord{}, fmt.Errorf("nexus %s: %v: %w", nexusUUID, err, nexus.ErrNoRecord)
	}
	if status.Code(err) == codes.NotFound || (err == nil && !resp.GetFound()) {
		return nexus.HealthRecord{}, fmt.Errorf("nexus %s: no record in the system health store: %w", nexusUUID, nexus.ErrNoRecord)
	}
	if err != nil {
		return nexus.HealthRecord{}, fmt.Errorf("nexus %s: load the health record from the system health store: %w", nexusUUID, err)
	}
	return decode(nexusUUID, resp.Record)
}

func decode(nexusUUID string, b []byte) (nexus.HealthRecord, error) {
	var rec nexus.HealthRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nexus.HealthRecord{}, fmt.Errorf("nexus %s: the system health store holds a record that does not decode "+
			"(recreate the nexus with --force if its children are known to be current): %w", nexusUUID, err)
	}
	if rec.NexusUUID != nexusUUID {
		return nexus.HealthRecord{}, fmt.Errorf("nexus %s: the system health store returned the record of nexus %q; "+
			"check that the management service and this engine are of the same release", nexusUUID, rec.NexusUUID)
	}
	return rec, nil
}

// Save implements nexus.HealthStore: the record replaces the stored one
// when the stored one is rec.Generation-1 (or there is none), and is
// durable in the management service's store when Save returns nil. When
// the service refuses the generation, Save returns an error wrapping
// ErrStale, unless the stored record is exactly rec: then an earlier
// attempt of this same save was applied and its answer lost (the client
// retries across a leader change), and Save returns nil.
func (s *Store) Save(ctx context.Context, rec nexus.HealthRecord) error {
	if rec.NexusUUID == "" {
		return errors.New("save a health record: the record names no nexus (HealthRecord.NexusUUID is empty)")
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("nexus %s: encode the health record: %w", rec.NexusUUID, err)
	}
	err = s.client.DoVolumeQuick(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		_, err := cl.SaveNexusHealth(ctx, &mgmtv1.SaveNexusHealthRequest{NexusUuid: rec.NexusUUID, Generation: rec.Generation, Record: b,
			NodeUuid: s.nodeUUID()})
		return err
	})
	if err == nil {
		return nil
	}
	if fault.CodeOf(err) == CodeNotTarget {
		return fmt.Errorf("nexus %s: %v: %w", rec.NexusUUID, err, ErrStale)
	}
	if fault.CodeOf(err) != CodeStaleGeneration {
		return fmt.Errorf("nexus %s: save health record generation %d to the system health store: %w", rec.NexusUUID, rec.Generation, err)
	}
	stored, lerr := s.Load(ctx, rec.NexusUUID)
	if lerr == nil {
		mine, derr := decode(rec.NexusUUID, b)
		if derr == nil && reflect.DeepEqual(stored, mine) {
			return nil
		}
		return fmt.Errorf("nexus %s: save health record generation %d: the store holds generation %d: %w (%w)",
			rec.NexusUUID, rec.Generation, stored.Generation, ErrStale, err)
	}
	return fmt.Errorf("nexus %s: save health record generation %d: %w (%w; reading the stored record back failed: %v)",
		rec.NexusUUID, rec.Generation, ErrStale, err, lerr)
}

// Delete implements nexus.HealthStore: the nexus's record is forgotten;
// deleting a missing record is not an error.
func (s *Store) Delete(ctx context.Context, nexusUUID string) error {
	err := s.client.DoVolumeQuick(ctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
		_, err := cl.DeleteNexusHealth(ctx, &mgmtv1.DeleteNexusHealthRequest{NexusUuid: nexusUUID})
		return err
	})
	if err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("nexus %s: delete the health record from the system health store: %w", nexusUUID, err)
	}
	return nil
}
