package mgmt

import (
	"context"
	"time"
)

// DefaultVolumePass is how often the leader revisits volumes with
// unfinished business (Config.VolumePass).
const DefaultVolumePass = 5 * time.Second

// volumePass is one synchronous pass of the reconcilers over every
// volume, then garbage collection: what the leader's background
// reconcilers do continuously (Config.VolumePass < 0 leaves it to the
// owner). A volume whose operation lock is held is skipped.
func (s *Service) volumePass(ctx context.Context) error {
	vols, err := s.listVolumes(ctx)
	if err != nil {
		return err
	}
	for _, v := range vols {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := s.reconcileVolume(ctx, v.UUID); err != nil && ctx.Err() == nil {
			s.log.Warn("volume reconcile", "volume", v.Name, "err", err)
		}
	}
	return s.gcPass(ctx)
}

// resumeVolume finishes or rolls back what the record of a volume says is
// under way; the caller holds the volume's lock.
func (s *Service) resumeVolume(ctx context.Context, id string) error {
	v, err := s.getVolumeByUUID(ctx, id)
	if err != nil || v == nil {
		return err
	}
	members, err := listMembers(ctx, s.cfg.Etcd, s.k)
	if err != nil {
		return err
	}
	idx := memberIndex(members)
	switch {
	case v.Status == volDeleting:
		_, err := s.finishDelete(ctx, v)
		return err
	case v.Op == nil:
		// Nexuses left on nodes that were down when the volume was
		// unpublished or moved.
		var left []string
		for _, n := range v.StaleTargets {
			if v.Target != nil && v.Target.Node == n {
				continue // the live nexus is there now
			}
			if err := s.destroyNexus(ctx, idx[n], v); err != nil {
				left = append(left, n)
			}
		}
		if len(left) == len(v.StaleTargets) {
			return nil
		}
		v.StaleTargets = left
		return s.putVolume(ctx, v)
	}
	s.log.Info("volume: resuming an operation a previous leader left", "volume", v.Name, "op", v.Op.Kind)
	switch v.Op.Kind {
	case opCreate:
		// Roll forward: creating a replica again is idempotent by UUID,
		// and a failure rolls the volume back (deleting).
		return s.finishCreateLocked(ctx, v)
	case opPublish:
		// Roll back: the publish was never acknowledged; the caller
		// retries it.
		s.rollbackPublish(ctx, v, idx)
		v.Op = nil
		return s.putVolume(ctx, v)
	case opUnpublish:
		return s.finishUnpublish(ctx, v)
	case opResize:
		return s.finishResize(ctx, v, idx)
	case opDelete:
		_, err := s.finishDelete(ctx, v)
		return err
	case opMove:
		// Roll forward: the volume must end up published.
		return s.finishMove(ctx, v, idx)
	case opSnapshot:
		// Roll back: the hold of the nexus is long over, so the
		// snapshot's copies cannot be known to be consistent.
		return s.rollbackSnapshot(ctx, v, idx, "the leader that took it stopped")
	}
	return nil
}
