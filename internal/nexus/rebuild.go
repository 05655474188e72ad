package nexus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexstor/nexstor/internal/bdev"
)

// How a rebuild keeps the new child consistent while I/O continues: the
// rebuilding child receives every write, not only writes to ranges already
// copied. Each segment copy holds the range lock of its segment and reads
// the source after every earlier overlapping write has completed on it, so
// the copy carries them; any later overlapping write waits for the copy and
// then reaches the child itself. Writes to segments not yet copied are
// redundant (the copy rewrites the same data) but cost no bookkeeping, and
// there is no boundary between copied and uncopied ranges to get wrong
// under concurrent segment copies.

// HistoryLimit is how many finished rebuilds RebuildHistory keeps.
const HistoryLimit = 32

var errTargetGone = errors.New("the child being rebuilt was retired or removed")

type rebuildJob struct {
	n       *Nexus
	c       *child
	partial bool
	segs    []int64 // segments to copy; nil means all
	count   int64   // number of segments to copy
	total   int64   // bytes to copy
	done    atomic.Int64
	doneCh  chan struct{}

	mu       sync.Mutex
	cond     *sync.Cond
	state    RebuildState
	source   string
	started  time.Time
	finished time.Time
	runSince time.Time     // start of the current running stretch
	ran      time.Duration // running time before runSince
	err      error
}

// AddChild opens uri and starts a full rebuild of it from the online
// children while I/O continues; it returns once the rebuild has started
// (follow it with RebuildStatus or WaitRebuild). The child becomes online,
// persisted, when the rebuild completes. A faulted or offline child of the
// same URI is reopened and fully rebuilt; its identity is recorded anew. A
// claimable child is claimed below the nexus's epoch until it is rebuilt
// (see the package documentation); one that another nexus owns is refused
// with an error matching bdev.ErrOwned.
func (n *Nexus) AddChild(ctx context.Context, uri string) error {
	return n.startRebuild(ctx, uri, false)
}

// OnlineChild brings back an offline child: it is reopened, receives every
// write from now on, and only the segments in its write-intent bitmap (what
// it may lack) are copied to it. It becomes online when that partial
// rebuild completes. A claimable child whose identity is not the recorded
// one is another replica: it is faulted (identity-changed) and OnlineChild
// fails with an error matching ErrIdentityChanged; AddChild rebuilds it in
// full.
func (n *Nexus) OnlineChild(ctx context.Context, uri string) error {
	return n.startRebuild(ctx, uri, true)
}

func (n *Nexus) startRebuild(ctx context.Context, uri string, partial bool) error {
	if n.closed.Load() {
		return fmt.Errorf("nexus %s: %w", n.name, errClosed)
	}
	verb := "add child"
	if partial {
		verb = "online child"
	}
	n.adminMu.Lock()
	defer n.adminMu.Unlock()
	// Close sets closed holding adminMu: checked again here, a rebuild
	// cannot start on a nexus that closed while this call waited.
	if n.closed.Load() {
		return fmt.Errorf("nexus %s: %w", n.name, errClosed)
	}
	n.stateMu.Lock()
	if err := n.stoppedErr(); err != nil {
		n.stateMu.Unlock()
		return err
	}
	_, old := n.findLocked(uri)
	switch {
	case partial && old == nil:
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: %s %s: %w", n.name, verb, uri, ErrUnknownChild)
	case partial && old.st() != StateOffline:
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: %s %s: the child is %s, not offline; add it with a full rebuild instead", n.name, verb, uri, old.st())
	case !partial && old != nil && (old.st() == StateOnline || old.st() == StateRebuilding):
		n.stateMu.Unlock()
		return fmt.Errorf("nexus %s: %s %s: the child is already %s", n.name, verb, uri, old.st())
	}
	var recorded string
	if old != nil {
		recorded = old.identity
	}
	epoch := n.epoch
	n.stateMu.Unlock()
	if old != nil {
		// The old open must be closed before reopening: an opener may
		// hand out the same device object again.
		n.closeChild(old)
	}
	o, err := n.openChild(ctx, uri)
	if err != nil {
		return fmt.Errorf("nexus %s: %s: %w", n.name, verb, err)
	}
	if size := n.size.Load(); o.dev.BlockSize() != n.bs || o.dev.Size() < size {
		o.dev.Close()
		return fmt.Errorf("nexus %s: %s %s: the device has %d-byte blocks and %d bytes; the nexus needs %d-byte blocks and at least %d bytes (grow the replica first)",
			n.name, verb, uri, o.dev.BlockSize(), o.dev.Size(), n.bs, size)
	}
	lo, _ := n.open.(LocalityOpener)
	c := &child{uri: uri, dev: o.dev, base: o.dev, local: lo != nil && lo.IsLocal(uri), identity: recorded, seq: newChildSeq()}
	if o.cl != nil {
		if err := n.checkClaimable(uri, o.st); err != nil {
			o.dev.Close()
			return err
		}
		cur := o.st.Identity.String()
		if partial && recorded != "" && cur != "" && cur != recorded {
			o.dev.Close()
			return n.identityChanged(ctx, old, recorded, cur)
		}
		if cur != "" {
			c.identity = cur
		}
		// Below the epoch the nexus moves to next (see below) until
		// the copy is complete.
		if err := n.claim(ctx, c, max(o.st.Epoch, epoch)); err != nil {
			o.dev.Close()
			return fmt.Errorf("nexus %s: %s: %w", n.name, verb, err)
		}
	}
	c.state.Store(int32(StateRebuilding))

	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	i, cur := n.findLocked(uri)
	if cur != old {
		c.closeDevs()
		return fmt.Errorf("nexus %s: %s %s: the child changed meanwhile; retry", n.name, verb, uri)
	}
	var segs []int64
	if partial {
		segs = []int64{}
		for s := int64(0); s < old.dirty.n; s++ {
			if old.dirty.test(s) {
				segs = append(segs, s)
			}
		}
	}
	if i >= 0 {
		n.children[i] = c
	} else {
		n.children = append(n.children, c)
	}
	n.epoch = max(n.epoch, o.st.Epoch) + 1
	if err := n.saveLocked(context.WithoutCancel(ctx), nil); err != nil {
		c.closed = true
		c.closeDevs()
		return err
	}
	n.publishLocked()
	if err := n.raiseOnlineLocked(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	n.launchLocked(c, partial, segs)
	return nil
}

// identityChanged faults the offline child old, whose device turned out to
// be another replica, and returns the error of OnlineChild.
func (n *Nexus) identityChanged(ctx context.Context, old *child, recorded, cur string) error {
	err := fmt.Errorf("nexus %s: online child %s: %w: recorded %s, found %s; add it with a full rebuild (add-child) instead",
		n.name, old.uri, ErrIdentityChanged, recorded, cur)
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if _, c := n.findLocked(old.uri); c == old && c.st() == StateOffline {
		n.faultLocked(c, ReasonIdentityChanged, err)
		if serr := n.commitLocked(context.WithoutCancel(ctx), false); serr != nil {
			return serr
		}
	}
	return err
}

// launchLocked starts the rebuild of c, which is published rebuilding: of
// segs when partial, else of every segment.
func (n *Nexus) launchLocked(c *child, partial bool, segs []int64) {
	j := &rebuildJob{n: n, c: c, partial: partial, doneCh: make(chan struct{}), state: RebuildRunning}
	j.cond = sync.NewCond(&j.mu)
	if partial {
		j.segs, j.count = segs, int64(len(segs))
		for _, s := range segs {
			j.total += n.segLen(s)
		}
	} else {
		j.count, j.total = n.nseg.Load(), n.size.Load()
	}
	j.started = time.Now()
	j.runSince = j.started
	n.jobs[c] = j
	n.jobsWG.Add(1)
	go j.run()
	n.log.Info("rebuild started", "child", c.uri, "partial", partial, "bytes", j.total, "epoch", n.epoch)
}

var errClosed = errors.New("nexus is closed")

// zeroes is compared against to tell an all-zero segment.
var zeroes [64 << 10]byte

func isZero(p []byte) bool {
	for len(p) > 0 {
		k := min(len(p), len(zeroes))
		if !bytes.Equal(p[:k], zeroes[:k]) {
			return false
		}
		p = p[k:]
	}
	return true
}

func (n *Nexus) segLen(s int64) int64 {
	off := s * n.seg
	return min(n.seg, n.size.Load()-off)
}

func (j *rebuildJob) run() {
	n := j.n
	defer n.jobsWG.Done()
	var next atomic.Int64
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	stop := make(chan struct{})
	workers := min(int64(n.conc), max(j.count, 1))
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, n.seg)
			for {
				idx := next.Add(1) - 1
				if idx >= j.count {
					return
				}
				select {
				case <-stop:
					return
				default:
				}
				if !j.waitRunning() {
					return
				}
				s := idx
				if j.segs != nil {
					s = j.segs[idx]
				}
				if err := j.copySegment(s, buf); err != nil {
					errOnce.Do(func() { firstErr = err; close(stop) })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && n.ctx.Err() == nil && j.currentState() == RebuildRunning {
		if err := j.c.dev.Flush(); errors.Is(err, bdev.ErrFenced) {
			firstErr = n.fence(fmt.Errorf("rebuild target %s: flush: %w", j.c.uri, err))
		} else if err != nil {
			firstErr = &targetError{err}
		}
	}
	j.finish(firstErr)
}

type targetError struct{ err error }

func (e *targetError) Error() string { return "writing the child: " + e.err.Error() }
func (e *targetError) Unwrap() error { return e.err }

// copySegment copies segment s from an online child to the target under
// the segment's range lock.
func (j *rebuildJob) copySegment(s int64, buf []byte) error {
	n := j.n
	off, l := s*n.seg, n.segLen(s)
	e := n.locks.lock(off, l)
	defer n.locks.unlock(e)
	if j.c.st() != StateRebuilding {
		return errTargetGone
	}
	var tried []*child
	for {
		v := n.view.Load()
		src := n.pickReader(v, tried, off, l)
		if src == nil {
			return fmt.Errorf("no online child to copy from: %w", ErrNoHealthyChild)
		}
		if _, err := src.dev.ReadAt(buf[:l], off); err != nil {
			if rerr := n.retireForRead(src, err); rerr != nil {
				return rerr
			}
			tried = append(tried, src)
			continue
		}
		j.mu.Lock()
		j.source = src.uri
		j.mu.Unlock()
		break
	}
	// Fresh volumes are mostly zeroes: a zero segment costs a thin
	// target nothing to write as zeroes, and a data write would allocate.
	var err error
	if isZero(buf[:l]) {
		err = j.c.dev.WriteZeroes(off, l)
	} else {
		_, err = j.c.dev.WriteAt(buf[:l], off)
	}
	if err != nil {
		if errors.Is(err, bdev.ErrFenced) {
			return n.fence(fmt.Errorf("rebuild target %s: %w", j.c.uri, err))
		}
		return &targetError{err}
	}
	j.done.Add(l)
	n.rebuildBytes.Add(l)
	return nil
}

func (j *rebuildJob) currentState() RebuildState {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.state
}

// waitRunning blocks while the rebuild is paused; it reports whether to
// go on copying. A paused rebuild whose child is retired ends (faultLocked
// wakes it): nothing would ever resume it.
func (j *rebuildJob) waitRunning() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.state == RebuildPaused && j.n.ctx.Err() == nil && j.c.st() == StateRebuilding {
		j.cond.Wait()
	}
	return j.state == RebuildRunning && j.n.ctx.Err() == nil
}

func (j *rebuildJob) wake() {
	j.mu.Lock()
	j.cond.Broadcast()
	j.mu.Unlock()
}

func (j *rebuildJob) control(a RebuildAction) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch a {
	case RebuildPause:
		if j.state == RebuildRunning {
			j.ran += time.Since(j.runSince)
			j.state = RebuildPaused
		}
	case RebuildResume:
		if j.state == RebuildPaused {
			j.runSince = time.Now()
			j.state = RebuildRunning
			j.cond.Broadcast()
		}
	case RebuildStop:
		if j.state == RebuildRunning {
			j.ran += time.Since(j.runSince)
		}
		if j.state == RebuildRunning || j.state == RebuildPaused {
			j.state = RebuildStopped
			j.cond.Broadcast()
		}
	default:
		return fmt.Errorf("unknown rebuild action %q: use pause, resume or stop", a)
	}
	return nil
}

// finish records the outcome: on success the child becomes online
// (persisted); otherwise it is faulted, out-of-sync (or io-error when the
// child itself failed), except when the nexus is closing, where it stays
// recorded as rebuilding and is therefore stale for a recreated nexus.
func (j *rebuildJob) finish(err error) {
	n := j.n
	j.mu.Lock()
	state := j.state
	if state == RebuildRunning {
		j.ran += time.Since(j.runSince)
	}
	j.mu.Unlock()
	closing := n.ctx.Err() != nil
	n.stateMu.Lock()
	switch {
	case closing:
		state = RebuildStopped
		if err == nil {
			err = errClosed
		}
	case err != nil:
		state = RebuildFailed
	case state == RebuildStopped:
		err = errors.New("stopped")
	}
	if !closing && err == nil && j.c.st() == StateRebuilding && j.c.claimed != nil {
		// Online children hold the nexus's epoch.
		rctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		rerr := j.c.claimed.Raise(rctx, n.epoch)
		cancel()
		switch {
		case errors.Is(rerr, bdev.ErrFenced):
			err = n.fence(fmt.Errorf("rebuild target %s: raising it to epoch %d: %w", j.c.uri, n.epoch, rerr))
			state = RebuildFailed
		case rerr != nil:
			err = &targetError{fmt.Errorf("raising its fencing epoch to %d: %w", n.epoch, rerr)}
			state = RebuildFailed
		default:
			j.c.epoch = n.epoch
		}
	}
	if !closing && j.c.st() == StateRebuilding && n.stoppedErr() == nil {
		if err == nil {
			j.c.state.Store(int32(StateOnline))
			j.c.dirty = nil
			n.log.Info("rebuild completed; child online", "child", j.c.uri, "bytes", j.done.Load())
		} else {
			reason := ReasonOutOfSync
			var te *targetError
			if errors.As(err, &te) {
				reason = ReasonIOError
			}
			n.faultLocked(j.c, reason, fmt.Errorf("rebuild: %w", err))
		}
		if serr := n.commitLocked(nil, false); serr != nil {
			err, state = serr, RebuildFailed
		}
	} else if !closing && err == nil {
		err, state = errTargetGone, RebuildFailed
	}
	if state == RebuildRunning {
		state = RebuildCompleted
	}
	j.mu.Lock()
	j.state = state
	j.err = err
	j.finished = time.Now()
	j.mu.Unlock()
	delete(n.jobs, j.c)
	n.history = append(n.history, j.status())
	if len(n.history) > HistoryLimit {
		n.history = n.history[len(n.history)-HistoryLimit:]
	}
	n.stateMu.Unlock()
	if err != nil && !closing {
		n.log.Warn("rebuild ended", "child", j.c.uri, "state", state, "err", err)
	}
	close(j.doneCh)
}

func (j *rebuildJob) status() RebuildStatus {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := RebuildStatus{
		Child: j.c.uri, Partial: j.partial, State: j.state, Source: j.source,
		Total: j.total, Done: j.done.Load(), Started: j.started, Finished: j.finished,
	}
	if j.err != nil {
		s.Err = j.err.Error()
	}
	if s.Total > 0 {
		s.Percent = 100 * float64(s.Done) / float64(s.Total)
	} else {
		s.Percent = 100
	}
	ran := j.ran
	if j.state == RebuildRunning {
		ran += time.Since(j.runSince)
	}
	if ran > 0 {
		s.Rate = float64(s.Done) / ran.Seconds()
	}
	if s.Rate > 0 && (j.state == RebuildRunning || j.state == RebuildPaused) {
		s.ETA = time.Duration(float64(s.Total-s.Done) / s.Rate * float64(time.Second))
	}
	return s
}

// Rebuild applies a control (pause, resume, stop) to the running rebuild
// of the child. A stopped rebuild leaves the child faulted (out-of-sync).
func (n *Nexus) Rebuild(uri string, action RebuildAction) error {
	n.stateMu.Lock()
	j := n.findJobLocked(uri)
	n.stateMu.Unlock()
	if j == nil {
		return fmt.Errorf("nexus %s: rebuild %s %s: %w", n.name, action, uri, ErrNoRebuild)
	}
	if err := j.control(action); err != nil {
		return fmt.Errorf("nexus %s: %w", n.name, err)
	}
	return nil
}

// findJobLocked returns the rebuild of the child now recorded under uri;
// a job of a child it replaced is not that child's.
func (n *Nexus) findJobLocked(uri string) *rebuildJob {
	_, c := n.findLocked(uri)
	if c == nil {
		return nil
	}
	return n.jobs[c]
}

// RebuildStatus returns the progress of the child's running rebuild, or of
// its last finished one; ErrNoRebuild when there is neither.
func (n *Nexus) RebuildStatus(uri string) (RebuildStatus, error) {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	if j := n.findJobLocked(uri); j != nil {
		return j.status(), nil
	}
	for i := len(n.history) - 1; i >= 0; i-- {
		if n.history[i].Child == uri {
			return n.history[i], nil
		}
	}
	return RebuildStatus{}, fmt.Errorf("nexus %s: rebuild status %s: %w", n.name, uri, ErrNoRebuild)
}

// Rebuilds returns the status of every running or paused rebuild.
func (n *Nexus) Rebuilds() []RebuildStatus {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	out := make([]RebuildStatus, 0, len(n.jobs))
	for _, j := range n.jobs {
		out = append(out, j.status())
	}
	return out
}

// RebuildHistory returns the last HistoryLimit finished rebuilds, oldest
// first.
func (n *Nexus) RebuildHistory() []RebuildStatus {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	return append([]RebuildStatus(nil), n.history...)
}

// WaitRebuild waits until the child's current rebuild has finished and
// returns its final status (from the history when it already finished).
func (n *Nexus) WaitRebuild(ctx context.Context, uri string) (RebuildStatus, error) {
	n.stateMu.Lock()
	j := n.findJobLocked(uri)
	n.stateMu.Unlock()
	if j != nil {
		select {
		case <-j.doneCh:
		case <-ctx.Done():
			return j.status(), ctx.Err()
		}
	}
	return n.RebuildStatus(uri)
}
