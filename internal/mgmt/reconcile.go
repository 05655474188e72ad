package mgmt

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nexstor/nexstor/internal/workqueue"
)

// Reconciler tuning.
const (
	// reconcileWorkers is how many volumes are reconciled at once.
	reconcileWorkers = 4
	// Backoff of a volume whose reconcile failed: doubling from
	// reconcileRetryBase up to reconcileRetryMax.
	reconcileRetryBase = 500 * time.Millisecond
	reconcileRetryMax  = 30 * time.Second
	// gcEvery: garbage collection runs every this many resyncs.
	gcEvery = 6
	// fullEvery: volumes last seen whole are resynced only every this
	// many resyncs (a change of theirs wakes them anyway: a nexus saves
	// its health record through the leader at every change of a child,
	// and members report their state and pools); the others every time.
	fullEvery = 6
)

// reconcilers are the leader's volume reconcilers: a work queue keyed by
// volume UUID, fed by a periodic resync of every volume, by membership
// changes, and by the volume operations; reconcileVolume is run for each
// key by a few workers, one key at a time.
type reconcilers struct {
	q    *workqueue.Queue[string]
	kick chan struct{}
}

// enqueue asks the reconcilers, if they run, to look at a volume soon.
func (s *Service) enqueue(id string) {
	s.mu.Lock()
	r := s.recon
	s.mu.Unlock()
	if r != nil {
		r.q.Add(id)
	}
}

// kickVolumes asks the reconcilers, if they run, to look at every volume
// soon (a member changed state).
func (s *Service) kickVolumes() {
	s.mu.Lock()
	r := s.recon
	s.mu.Unlock()
	if r != nil {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// runReconcilers runs the reconcilers until ctx (the leadership) ends.
func (s *Service) runReconcilers(ctx context.Context) {
	r := &reconcilers{q: workqueue.New[string](reconcileRetryBase, reconcileRetryMax), kick: make(chan struct{}, 1)}
	s.mu.Lock()
	s.recon = r
	s.mu.Unlock()
	var wg sync.WaitGroup
	defer func() {
		s.mu.Lock()
		if s.recon == r {
			s.recon = nil
		}
		s.mu.Unlock()
		r.q.ShutDown()
		wg.Wait()
	}()
	for i := 0; i < reconcileWorkers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				id, ok := r.q.Get(ctx)
				if !ok {
					return
				}
				after, err := s.reconcileVolume(ctx, id)
				switch {
				case ctx.Err() != nil:
				case err != nil:
					s.log.Warn("volume reconcile", "volume", id, "err", err, "retry", r.q.Failures(id)+1)
					r.q.AddRateLimited(id)
				default:
					r.q.Forget(id)
					if after > 0 {
						r.q.AddAfter(id, after)
					}
				}
				r.q.Done(id)
			}
		}()
	}
	t := time.NewTicker(s.cfg.VolumePass)
	defer t.Stop()
	passes, kicked := 0, false
	for {
		s.resync(ctx, r, kicked || passes%fullEvery == 0)
		if passes%gcEvery == 0 {
			if err := s.gcPass(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("garbage collection", "err", err)
			}
		}
		passes, kicked = passes+1, false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
			kicked = true
		}
	}
}

// resync queues every volume (all) or those not last seen whole.
func (s *Service) resync(ctx context.Context, r *reconcilers, all bool) {
	resp, err := s.cfg.Etcd.Get(ctx, s.k.volumes(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("volume resync", "err", storeErr(err, "list volumes"))
		}
		return
	}
	for _, kv := range resp.Kvs {
		id := string(kv.Key[len(s.k.volumes()):])
		if all || !s.healing.whole(id) {
			r.q.Add(id)
		}
	}
}
