package engine

// Quiescing nexuses for volume-level snapshots: the hold is split over two
// calls (QuiesceNexus, ResumeNexus) so that the control plane can snapshot
// the replicas on their nodes in between.

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
	"github.com/nexstor/nexstor/internal/fault"
)

// Bounds of a quiesce's hold.
const (
	// DefaultQuiesceHold is the hold timeout when the caller gives none.
	DefaultQuiesceHold = 10 * time.Second
	// MaxQuiesceHold is the longest hold a caller may ask for.
	MaxQuiesceHold = 60 * time.Second
	// quiesceForget is how long a finished hold is remembered, so that a
	// late ResumeNexus learns that it expired rather than NotFound.
	quiesceForget = time.Minute
)

// quiesceHold is one QuiesceNexus in progress or recently finished.
type quiesceHold struct {
	id, nexus string
	started   time.Time
	online    chan []string // the online children, once writes are held
	failed    chan []string // handed over by ResumeNexus (buffered 1)
	done      chan struct{} // closed when Quiesce has returned
	cancel    context.CancelFunc

	// Set before done is closed.
	expired bool // the hold timed out before ResumeNexus came
	err     error
	paused  time.Duration
}

// QuiesceResult is the answer of QuiesceNexus.
type QuiesceResult struct {
	// ID names the hold for ResumeNexus.
	ID string
	// Online are the URIs of the children holding every acknowledged write.
	Online []string
}

// ResumeResult is the answer of ResumeNexus.
type ResumeResult struct {
	// Held is true when the hold was in force until ResumeNexus: the
	// snapshot taken meanwhile is consistent.
	Held bool
	// Paused is how long the nexus's writes were held.
	Paused time.Duration
	// Err is what went wrong at the end of the hold (a failed child's
	// fault could not be saved, ...); nil when nothing did.
	Err error
}

// endHolds ends every hold at once and waits for their nexuses to resume
// writes.
func (e *Engine) endHolds() {
	e.qmu.Lock()
	holds := slices.Collect(maps.Values(e.holds))
	e.qmu.Unlock()
	for _, h := range holds {
		h.cancel()
		<-h.done
	}
}

func quiesceNotFound(id string) error {
	return fault.New(fault.NotFound, "nexus.quiesce_not_found", fmt.Sprintf("quiesce %s is not known to this engine", id),
		"the hold ended (or the engine restarted): treat the snapshot as failed and take it again")
}

// nexusByRef finds a nexus by name or UUID; the caller holds e.mu.
func (e *Engine) nexusByRefLocked(ref string) (*nexusEntry, bool) {
	if ne, ok := e.nexuses[ref]; ok {
		return ne, true
	}
	for _, ne := range e.nexuses {
		if strings.EqualFold(ne.uuid, ref) {
			return ne, true
		}
	}
	return nil, false
}

// QuiesceNexus holds the writes of the nexus named (or with the UUID) ref
// for a snapshot, and returns once they are held, with the online
// children. The hold lasts until ResumeNexus or until timeout (0:
// DefaultQuiesceHold; more than MaxQuiesceHold is refused), whichever
// comes first. ctx bounds only the wait for the writes in flight to drain.
func (e *Engine) QuiesceNexus(ctx context.Context, ref string, timeout time.Duration) (QuiesceResult, error) {
	if err := live(ctx); err != nil {
		return QuiesceResult{}, err
	}
	switch {
	case timeout == 0:
		timeout = DefaultQuiesceHold
	case timeout < 0 || timeout > MaxQuiesceHold:
		return QuiesceResult{}, fault.New(fault.InvalidArgument, "nexus.quiesce_timeout",
			fmt.Sprintf("hold timeout %v is out of range", timeout), fmt.Sprintf("give a hold timeout of at most %v", MaxQuiesceHold))
	}
	e.mu.Lock()
	ne, ok := e.nexusByRefLocked(ref)
	if !ok {
		e.mu.Unlock()
		return QuiesceResult{}, nexusNotFound(ref)
	}
	name := ne.name
	e.mu.Unlock()
	n, err := e.servingNexus(name)
	if err != nil {
		return QuiesceResult{}, err
	}
	h := &quiesceHold{id: uuid.NewString(), nexus: name, started: time.Now(), online: make(chan []string, 1),
		failed: make(chan []string, 1), done: make(chan struct{})}
	// qctx ends the quiesce when cancelled: while the writes in flight
	// drain (the caller gave up) or while they are held (ResumeNexus, a
	// shutdown). The hold's own timeout starts once the writes are held,
	// so a slow drain does not eat into it.
	qctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	e.qmu.Lock()
	for _, o := range e.holds {
		select {
		case <-o.done:
			continue
		default:
		}
		if o.nexus == name {
			e.qmu.Unlock()
			cancel()
			return QuiesceResult{}, fault.New(fault.FailedPrecondition, "nexus.quiesced",
				fmt.Sprintf("nexus %q is held by quiesce %s", name, o.id), "resume it first, or wait for its hold to expire")
		}
	}
	if e.holds == nil {
		e.holds = map[string]*quiesceHold{}
	}
	e.holds[h.id] = h
	e.qmu.Unlock()
	go func() {
		err := n.Quiesce(qctx, func(qctx context.Context, online []string) ([]string, error) {
			hctx, hcancel := context.WithTimeoutCause(qctx, timeout,
				fmt.Errorf("the hold of quiesce %s expired after %v", h.id, timeout))
			defer hcancel()
			h.online <- online
			select {
			case f := <-h.failed:
				return f, nil
			case <-hctx.Done():
				h.expired = true
				e.log.Warn("quiesce: the hold expired before the nexus was resumed; writes resume", "nexus", name, "quiesce", h.id)
				return nil, context.Cause(hctx)
			}
		})
		h.paused = time.Since(h.started)
		if err != nil && !h.expired {
			h.err = nexusFault(name, err)
		}
		cancel()
		close(h.done)
		time.AfterFunc(quiesceForget, func() {
			e.qmu.Lock()
			delete(e.holds, h.id)
			e.qmu.Unlock()
		})
	}()
	select {
	case online := <-h.online:
		e.log.Info("nexus quiesced", "nexus", name, "quiesce", h.id, "online", len(online))
		return QuiesceResult{ID: h.id, Online: online}, nil
	case <-h.done:
		return QuiesceResult{}, h.err
	case <-ctx.Done():
		cancel() // the hold ends at once if it had begun
		<-h.done
		return QuiesceResult{}, fault.Wrap(context.Cause(ctx), fault.DeadlineExceeded, "rpc.deadline_exceeded",
			fmt.Sprintf("nexus %q: the caller gave up while the writes in flight drained", name), "")
	}
}

// ResumeNexus ends the hold of quiesce id on the nexus named (or with the
// UUID) ref: the children of failed are faulted (snapshot-failed) before
// writes resume. It waits for the hold to end (bounded by ctx) and says
// whether the hold was in force until now.
func (e *Engine) ResumeNexus(ctx context.Context, ref, id string, failed []string) (ResumeResult, error) {
	e.qmu.Lock()
	h, ok := e.holds[id]
	e.qmu.Unlock()
	if !ok {
		return ResumeResult{}, quiesceNotFound(id)
	}
	e.mu.Lock()
	ne, ok := e.nexusByRefLocked(ref)
	e.mu.Unlock()
	if !ok || ne.name != h.nexus {
		return ResumeResult{}, quiesceNotFound(id)
	}
	select {
	case h.failed <- failed:
	default: // resumed already
	}
	select {
	case <-h.done:
	case <-ctx.Done():
		return ResumeResult{}, fault.Wrap(context.Cause(ctx), fault.DeadlineExceeded, "rpc.deadline_exceeded",
			fmt.Sprintf("nexus %q: waiting for the hold to end", h.nexus), "")
	}
	res := ResumeResult{Held: !h.expired, Paused: h.paused, Err: h.err}
	if h.err != nil {
		// The faults of the failed children may not be saved.
		e.log.Warn("resume: the end of the hold failed", "nexus", h.nexus, "err", h.err)
	}
	e.log.Info("nexus resumed", "nexus", h.nexus, "quiesce", id, "held", res.Held, "paused", res.Paused, "failed", len(failed))
	return res, nil
}

func (s *snapshotServer) QuiesceNexus(ctx context.Context, r *enginev1.QuiesceNexusRequest) (*enginev1.QuiesceNexusResponse, error) {
	res, err := s.e.QuiesceNexus(ctx, r.GetNexus(), time.Duration(r.GetHoldTimeoutMs())*time.Millisecond)
	if err != nil {
		return nil, err
	}
	return &enginev1.QuiesceNexusResponse{QuiesceId: res.ID, OnlineChildren: res.Online}, nil
}

func (s *snapshotServer) ResumeNexus(ctx context.Context, r *enginev1.ResumeNexusRequest) (*enginev1.ResumeNexusResponse, error) {
	res, err := s.e.ResumeNexus(ctx, r.GetNexus(), r.GetQuiesceId(), r.GetFailedChildren())
	if err != nil {
		return nil, err
	}
	out := &enginev1.ResumeNexusResponse{Held: res.Held, PausedUs: uint64(res.Paused.Microseconds())}
	if res.Err != nil {
		out.Error = res.Err.Error()
	}
	return out, nil
}
