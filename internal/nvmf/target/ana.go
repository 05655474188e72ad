package target

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/nexstor/nexstor/internal/nvmf/nvme"
)

// ANA: every subsystem reports Asymmetric Namespace Access, with all its
// namespaces in one ANA group (ANAGroupID) whose state is the subsystem's.
// A subsystem exported by several targets (the same NQN and namespace
// identities on several nodes) is one subsystem with several controllers to
// a host; each target reports its own state, and the host sends I/O on the
// paths that report optimized (Linux native multipath), falls back to
// non-optimized ones, and queues I/O while no path is usable but some
// controller is still alive or reconnecting. The control plane moves the
// volume's I/O by setting the states; a host learns of a change through the
// ANA change event, or at the latest when a command fails with an ANA
// status.

// ANAState returns the subsystem's ANA state.
func (s *Subsystem) ANAState() nvme.ANAState { return nvme.ANAState(s.ana.Load()) }

// SetANAState sets the ANA state in which this target reports every
// namespace of the subsystem, and announces it: the ANA log page (0Ch) shows
// the new state with its change count incremented, and every controller of
// the subsystem whose host enabled the ANA change notice (Set Features 0Bh
// bit 11; Linux does) gets an Asynchronous Event (notice 03h, log page
// 0Ch). Setting the current state again changes and announces nothing.
//
// From the moment it is called, I/O commands (read, write, flush, write
// zeroes, dataset management) that begin executing fail unless the state is
// optimized or non-optimized: with Asymmetric Access Inaccessible (SCT 3h,
// SC 02h) in the inaccessible state, Persistent Loss (01h) in the
// persistent loss state, Transition (03h) in the change state. None has
// DNR: a multipath host retries the command on another path instead of
// failing it. Admin commands keep working in every state.
//
// When the new state refuses I/O, SetANAState returns only after the I/O
// commands that were already executing have finished, so that once it
// returns no write this target accepted earlier can still reach a device:
// the caller may then let another target serve the namespaces. ctx bounds
// that wait; if it ends first, the state is set all the same and ctx's
// error is returned. Safe for concurrent use; concurrent calls are applied
// one after the other.
func (s *Subsystem) SetANAState(ctx context.Context, st nvme.ANAState) error {
	if !st.Valid() {
		return fmt.Errorf("subsystem %q: %v: %w: use optimized, non-optimized, inaccessible, persistent-loss or change", s.nqn, st, ErrANAState)
	}
	s.anaMu.Lock()
	defer s.anaMu.Unlock()
	s.mu.Lock()
	if s.removed {
		s.mu.Unlock()
		return fmt.Errorf("subsystem %q: %w", s.nqn, ErrNotFound)
	}
	old := nvme.ANAState(s.ana.Swap(uint32(st)))
	var ctrls []*controller
	if old != st {
		s.anaChange++
		ctrls = s.controllersLocked()
	}
	s.mu.Unlock()
	if old != st {
		s.t.log.Info("nvmf: ANA state changed", "subnqn", s.nqn, "from", old, "to", st)
	}
	for _, c := range ctrls {
		c.event(nvme.OAESANAChange, nvme.AENResult(nvme.AENTypeNotice, nvme.AENNoticeANAChange, nvme.LogANA), 0)
	}
	if st.Accessible() {
		return nil
	}
	return s.drain(ctx)
}

// drain waits until no I/O command is executing. Commands that begin after
// the state refused I/O count themselves and leave again at once, so the
// count reaches zero once those that began before have finished.
func (s *Subsystem) drain(ctx context.Context) error {
	wait := 100 * time.Microsecond
	for s.inflight.Load() > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("subsystem %q: waiting for %d I/O commands to finish: %w", s.nqn, s.inflight.Load(), ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Millisecond)
	}
	return nil
}

// CNTLIDRange returns the range of controller IDs the subsystem hands out
// (inclusive).
func (s *Subsystem) CNTLIDRange() (lo, hi uint16) { return s.minCntl, s.maxCntl }

// SubsystemStats count the I/O a subsystem executed successfully since it
// was created.
type SubsystemStats struct {
	Reads, Writes         uint64 // commands
	ReadBytes, WriteBytes uint64
}

// Stats returns the subsystem's I/O counters. Safe for concurrent use.
func (s *Subsystem) Stats() SubsystemStats {
	return SubsystemStats{
		Reads: s.stats.reads.Load(), Writes: s.stats.writes.Load(),
		ReadBytes: s.stats.readBytes.Load(), WriteBytes: s.stats.writeBytes.Load(),
	}
}

// anaLog returns the ANA log page as this target reports it: the
// subsystem's group, if it has namespaces (a group without attached
// namespaces is not reported), in the subsystem's state.
func (s *Subsystem) anaLog() nvme.ANALog {
	s.mu.RLock()
	l := nvme.ANALog{ChangeCount: s.anaChange}
	var g nvme.ANAGroup
	if len(s.nss) > 0 {
		g = nvme.ANAGroup{ID: ANAGroupID, ChangeCount: s.anaChange, State: s.ANAState(), NSIDs: make([]uint32, 0, len(s.nss))}
		for id := range s.nss {
			g.NSIDs = append(g.NSIDs, id)
		}
	}
	s.mu.RUnlock()
	if g.ID != 0 {
		slices.Sort(g.NSIDs)
		l.Groups = []nvme.ANAGroup{g}
	}
	return l
}
