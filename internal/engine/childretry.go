package engine

import (
	"context"
	"time"

	"github.com/nexstor/nexstor/internal/nexus"
)

// DefaultChildRetryInterval is how often the engine tries to bring back
// nexus children that wait offline because they could not be opened.
const DefaultChildRetryInterval = 5 * time.Second

// retryChildren brings back, every interval until the engine closes, each
// nexus child that waits offline because it could not be opened when its
// nexus was restored (its node was not up yet, say): as `nexctl nexus
// online-child` would, with a partial rebuild. Children an administrator
// took offline are left alone.
func (e *Engine) retryChildren(interval time.Duration) {
	defer e.bg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		for _, w := range e.unreachableChildren() {
			select {
			case <-e.stop:
				return
			default:
			}
			// Bounded by the interval: the nexus is busy meanwhile, and
			// an administrator's command on it would be refused.
			ctx, cancel := context.WithTimeout(context.Background(), interval)
			_, err := e.nexusChildOp(ctx, w.nexus, ChildOnline, w.child)
			cancel()
			if err != nil {
				e.log.Debug("nexus child still unreachable", "nexus", w.nexus, "child", w.child, "err", err)
				continue
			}
			e.log.Info("nexus child reachable again: rebuilding what it missed", "nexus", w.nexus, "child", w.child)
		}
	}
}

type waitingChild struct{ nexus, child string }

// unreachableChildren lists the children waiting offline with
// nexus.ReasonOpenFailed, nexus by nexus.
func (e *Engine) unreachableChildren() []waitingChild {
	e.mu.Lock()
	var ns []*nexusEntry
	for _, name := range sortedKeys(e.nexuses) {
		if ne := e.nexuses[name]; ne.n != nil {
			ns = append(ns, ne)
		}
	}
	e.mu.Unlock()
	var out []waitingChild
	for _, ne := range ns {
		for _, c := range ne.n.Children() {
			if c.State == nexus.StateOffline && c.Reason == nexus.ReasonOpenFailed {
				out = append(out, waitingChild{ne.name, c.URI})
			}
		}
	}
	return out
}
