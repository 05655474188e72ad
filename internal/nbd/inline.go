package nbd

import (
	"sync"
	"sync/atomic"
	"time"
)

// A request that arrives while nothing else is in flight on its connection
// runs on the goroutine that read it (see conn.inline), and that goroutine
// keeps the read role while it runs: handing the role to another goroutine
// first would wake that goroutine and its thread for every request, which
// at queue depth 1 costs more CPU than the request itself. Instead a
// watchdog, one per server, passes the role on for a connection whose
// inline request has run for at least inlineTick, so that a request stuck
// in the device holds up the requests behind it for one to two ticks, plus
// whatever delays the watchdog's own scheduling (TestPipelining,
// TestInlineStuckHandsOff).
//
// The watchdog runs only while some connection has run requests inline
// lately; it stops after watchQuietTicks ticks without one, so an idle
// server costs nothing. Its ticks cost a wake-up each while it runs, fewer
// than the hand-offs they replace from about 1,000 requests a second up.

const (
	// inlineTick is the watchdog's period, and how long an inline request
	// must have been running (as far as the watchdog saw) before it takes
	// the read role over.
	inlineTick = time.Millisecond
	// watchQuietTicks ticks without an inline request stop the watchdog.
	watchQuietTicks = 10
)

// inlineWatch is the server's watchdog over inline requests.
type inlineWatch struct {
	// running is set while a watchdog goroutine runs, from just before it
	// starts; the goroutine clears it before its last scan (see run).
	running atomic.Bool

	mu    sync.Mutex
	conns map[*conn]*inlineState // the connections in transmission
	tick  uint64                 // ticks so far, over every run
}

// inlineState is a connection's state as the watchdog sees it.
type inlineState struct {
	// seq is odd while an inline request runs holding the read role, even
	// otherwise. The inline goroutine makes it odd when it starts and even
	// when it ends; the watchdog makes it even when it takes the role, so
	// that the inline goroutine's compare-and-swap fails and it knows the
	// role has moved on.
	seq atomic.Uint64

	// Guarded by inlineWatch.mu:
	seen   uint64    // seq at the watchdog's previous scan
	seenAt time.Time // when the watchdog first saw seq == seen
	// lastTick is the last tick at which the connection was seen running
	// a request inline, or to have run one since the scan before; add sets
	// it too, so that a new connection counts as busy for a while.
	lastTick uint64

	// taken counts the read roles the watchdog took over; handoffs counts
	// every passing of the read role, by the watchdog or not.
	taken, handoffs atomic.Uint64
}

func (w *inlineWatch) add(c *conn) {
	w.mu.Lock()
	if w.conns == nil {
		w.conns = make(map[*conn]*inlineState)
	}
	c.inl.lastTick = w.tick
	w.conns[c] = &c.inl
	w.mu.Unlock()
}

func (w *inlineWatch) remove(c *conn) {
	w.mu.Lock()
	delete(w.conns, c)
	w.mu.Unlock()
}

// beginInline marks the start of an inline request on c, which holds the
// read role, and makes sure a watchdog runs. The caller then runs the
// request and calls endInline.
func (c *conn) beginInline() uint64 {
	seq := c.inl.seq.Add(1)
	w := &c.s.watch
	// After the seq store: a watchdog that is stopping rescans every
	// connection after clearing running, so either it sees this request or
	// this load sees running cleared and starts a new one.
	if !w.running.Load() && w.running.CompareAndSwap(false, true) {
		go w.run()
	}
	return seq
}

// endInline marks the end of the inline request begun with seq. It reports
// whether the caller still holds the read role; false when the watchdog has
// passed it on meanwhile.
func (c *conn) endInline(seq uint64) bool {
	return c.inl.seq.CompareAndSwap(seq, seq+1)
}

// run is the watchdog goroutine.
func (w *inlineWatch) run() {
	t := time.NewTicker(inlineTick)
	defer t.Stop()
	for {
		<-t.C
		if w.scan() {
			continue
		}
		// Stop, then look once more: a request that began after the last
		// scan found running set and started no watchdog.
		w.running.Store(false)
		if !w.scan() || !w.running.CompareAndSwap(false, true) {
			return
		}
	}
}

// scan passes the read role on for every connection whose inline request
// has run for inlineTick, and reports whether any connection ran a request
// inline within the last watchQuietTicks ticks.
func (w *inlineWatch) scan() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tick++
	now := time.Now()
	busy := false
	for c, st := range w.conns {
		switch seq := st.seq.Load(); {
		case seq != st.seen:
			st.seen, st.seenAt, st.lastTick = seq, now, w.tick
		case seq&1 == 1:
			st.lastTick = w.tick
			// The inline request seen at an earlier scan still runs. Once
			// it has run for a tick, taking the role over makes the
			// inline goroutine's endInline fail, so that exactly one of
			// them holds it. A won compare-and-swap orders everything the
			// reader did before beginInline (c.workers, c.br, c.pr, c.hdr)
			// before the dispatch below, which acts as the reader; the
			// worker that receives the token is ordered after it by the
			// channel.
			if now.Sub(st.seenAt) >= inlineTick && st.seq.CompareAndSwap(seq, seq+1) {
				st.seen, st.seenAt = seq+1, now
				st.taken.Add(1)
				c.dispatch(&readToken)
			}
		}
		if w.tick-st.lastTick < watchQuietTicks {
			busy = true
		}
	}
	return busy
}
