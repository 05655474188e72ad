package nexus

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ChildState is the health of one child of a nexus.
type ChildState int

const (
	// StateOnline children receive every write and serve reads.
	StateOnline ChildState = iota + 1
	// StateRebuilding children receive every write but are never read
	// until their rebuild completes.
	StateRebuilding
	// StateFaulted children receive no I/O; their content is out of date.
	// The reason says why.
	StateFaulted
	// StateOffline children are known but temporarily away: no I/O goes to
	// them and the nexus records which segments were written meanwhile
	// (the write-intent bitmap) so that OnlineChild copies only those.
	StateOffline
)

var stateNames = map[ChildState]string{
	StateOnline:     "online",
	StateRebuilding: "rebuilding",
	StateFaulted:    "faulted",
	StateOffline:    "offline",
}

// String returns the state's name as stored and shown ("online", ...).
func (s ChildState) String() string {
	if n, ok := stateNames[s]; ok {
		return n
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// MarshalText encodes the state by name, so stored records stay readable.
func (s ChildState) MarshalText() ([]byte, error) {
	if _, ok := stateNames[s]; !ok {
		return nil, fmt.Errorf("nexus: unknown child state %d", int(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes a state name written by MarshalText.
func (s *ChildState) UnmarshalText(b []byte) error {
	for k, v := range stateNames {
		if v == string(b) {
			*s = k
			return nil
		}
	}
	return fmt.Errorf("nexus: unknown child state %q", b)
}

// FaultReason says why a child is faulted, or offline.
type FaultReason string

const (
	// ReasonIOError: the child failed a read, write or flush (a failing
	// disk, a lost connection). The child goes offline with a write-intent
	// bitmap, so OnlineChild resyncs it once it is back; a rebuild target
	// that fails is faulted instead.
	ReasonIOError FaultReason = "io-error"
	// ReasonNoSpace: a write failed because the child's thin backing store
	// is full (the error wraps bdev.ErrNoSpace). The child goes offline
	// with a write-intent bitmap; free space in its pool, then OnlineChild.
	ReasonNoSpace FaultReason = "no-space"
	// ReasonAdmin: an administrator faulted the child, or took it offline.
	ReasonAdmin FaultReason = "admin"
	// ReasonOutOfSync: the child missed writes (an interrupted or stopped
	// rebuild) and must be rebuilt before use.
	ReasonOutOfSync FaultReason = "out-of-sync"
	// ReasonOpenFailed: the child could not be opened. When a nexus that
	// closed cleanly is recreated, such a child waits offline (OnlineChild
	// brings it back with a partial rebuild); otherwise it is faulted.
	ReasonOpenFailed FaultReason = "open-failed"
	// ReasonIdentityChanged: the device behind the child's URI is another
	// replica than the one the health record knows (it was destroyed and
	// created again): it holds none of the nexus's data. AddChild rebuilds
	// it in full.
	ReasonIdentityChanged FaultReason = "identity-changed"
	// ReasonSnapshotFailed: while the nexus was quiesced for a snapshot
	// of the volume, the child's own snapshot failed, so it lacks a
	// snapshot its peers hold. AddChild rebuilds it in full.
	ReasonSnapshotFailed FaultReason = "snapshot-failed"
)

// Sentinel errors callers branch on. Errors returned by the nexus wrap them
// with context; test with errors.Is.
var (
	// ErrNexusFailed is returned by every I/O after the nexus could not
	// persist a change of its health set: serving on would risk
	// acknowledging writes that a recreated nexus would not see.
	ErrNexusFailed = errors.New("nexus: failed: the health store could not be updated; recreate the nexus once the store is reachable")
	// ErrNoHealthyChild is returned when no online child is left to
	// serve the I/O.
	ErrNoHealthyChild = errors.New("nexus: no healthy child left")
	// ErrNoRecord is returned by HealthStore.Load for a nexus the store
	// has never seen.
	ErrNoRecord = errors.New("nexus: no health record")
	// ErrUnknownChild names a child URI that is not part of the nexus.
	ErrUnknownChild = errors.New("nexus: no such child")
	// ErrLastChild refuses an operation that would leave no online child.
	ErrLastChild = errors.New("nexus: refusing to take the last healthy child out of service")
	// ErrNoRebuild is returned by rebuild controls when the child is not
	// being rebuilt.
	ErrNoRebuild = errors.New("nexus: no rebuild in progress for the child")
	// ErrFencedNexus is returned by every I/O and change after a child
	// reported that a newer claim holds it (bdev.ErrFenced): a newer
	// instance of this nexus, elsewhere, owns the children. This one never
	// writes the health store again (the record is the newer one's now);
	// close it. Errors that wrap it also wrap bdev.ErrFenced and
	// bdev.ErrSuperseded (a host retries such I/O on the newer instance).
	ErrFencedNexus = errors.New("nexus: fenced: a newer instance of this nexus holds its children; this one stopped serving and must be closed")
	// ErrIdentityChanged is returned by OnlineChild when the device behind
	// the child's URI is another replica than the one recorded (destroyed
	// and created again under the same name): a partial rebuild would
	// leave it with holes. The child is faulted (identity-changed); add it
	// with AddChild for a full rebuild.
	ErrIdentityChanged = errors.New("nexus: the child is a different replica than the one recorded (it was destroyed and created again)")
)

// StaleChildError refuses to create a nexus over children that the health
// store does not record as current.
type StaleChildError struct {
	Nexus    string
	Children []StaleChild
}

// StaleChild is one refused child and what the store says about it.
type StaleChild struct {
	URI string
	// State is the recorded state, "unknown" when not recorded, or
	// "identity-changed" when the device is another replica than the one
	// recorded (Recorded and Current then hold the two identities).
	State  string
	Reason FaultReason
	// Recorded and Current are bdev.Identity strings, set for a child
	// whose identity changed.
	Recorded, Current string
}

// StateIdentityChanged is the StaleChild.State of a child whose device is
// another replica than the one the health record knows.
const StateIdentityChanged = "identity-changed"

// ErrStaleChild matches every *StaleChildError with errors.Is.
var ErrStaleChild = errors.New("nexus: stale child")

func (e *StaleChildError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nexus %s: ", e.Nexus)
	stale, changed := false, false
	for i, c := range e.Children {
		if i > 0 {
			b.WriteString("; ")
		}
		if c.State == StateIdentityChanged {
			fmt.Fprintf(&b, "child %s is another replica (identity %s) than the one recorded (%s): it was destroyed and created again and holds none of the data", c.URI, c.Current, c.Recorded)
			changed = true
			continue
		}
		fmt.Fprintf(&b, "child %s is %s", c.URI, c.State)
		if c.Reason != "" {
			fmt.Fprintf(&b, " (%s)", c.Reason)
		}
		b.WriteString(" in the health store")
		stale = true
	}
	switch {
	case stale && changed:
		b.WriteString(": leave these children out and add them afterwards to rebuild them in full (--force trusts a child the store calls stale, never a replaced one)")
	case changed:
		b.WriteString(": leave it out and add it afterwards to rebuild it in full")
	default:
		b.WriteString(" and may be out of date: add it as a new child to rebuild it, or use --force if you know it is current")
	}
	return b.String()
}

// Is makes errors.Is(err, ErrStaleChild) true.
func (e *StaleChildError) Is(target error) bool { return target == ErrStaleChild }

// Range is a byte range of the nexus.
type Range struct {
	Off, Len int64
}

// ChildStatus describes one child.
type ChildStatus struct {
	URI    string
	State  ChildState
	Reason FaultReason // set when State is StateFaulted or StateOffline
	Local  bool
	// Identity is the replica's bdev.Identity string as recorded; empty
	// for devices that have none (not claimable).
	Identity string
	// Epoch is the fencing epoch this nexus holds the child's claim at
	// (0 when the child is not claimable or not open). Online children
	// hold the nexus's epoch; a rebuilding child a lower one.
	Epoch uint64
	// DirtyBytes is the amount of data written while the child was
	// offline (the bytes a partial rebuild will copy), in whole segments.
	DirtyBytes int64
	// LastError is the error that retired the child, if any.
	LastError string
}

// RebuildState is the phase of a rebuild.
type RebuildState string

const (
	// RebuildRunning: segments are being copied.
	RebuildRunning RebuildState = "running"
	// RebuildPaused: no new segment copy starts until resumed; the child
	// keeps receiving writes.
	RebuildPaused RebuildState = "paused"
	// RebuildStopped: stopped by Rebuild(RebuildStop) or by Close; the
	// child is faulted (out-of-sync), or stays recorded as rebuilding
	// after Close.
	RebuildStopped RebuildState = "stopped"
	// RebuildCompleted: every segment was copied; the child is online.
	RebuildCompleted RebuildState = "completed"
	// RebuildFailed: a copy failed (see Err); the child is faulted.
	RebuildFailed RebuildState = "failed"
)

// RebuildAction is a control applied to a running rebuild.
type RebuildAction string

const (
	// RebuildPause lets in-flight segment copies finish and starts no more.
	RebuildPause RebuildAction = "pause"
	// RebuildResume continues a paused rebuild where it left off.
	RebuildResume RebuildAction = "resume"
	// RebuildStop ends the rebuild; the child is faulted (out-of-sync)
	// and must be added again to be rebuilt from scratch.
	RebuildStop RebuildAction = "stop"
)

// RebuildStatus is a snapshot of a rebuild's progress. Total and Done are in
// bytes; Rate is bytes per second of running (unpaused) time; ETA is zero
// when unknown or finished.
type RebuildStatus struct {
	Child    string
	Partial  bool // copies only the segments written while offline
	State    RebuildState
	Source   string
	Total    int64
	Done     int64
	Percent  float64
	Rate     float64
	ETA      time.Duration
	Started  time.Time
	Finished time.Time
	Err      string
}

// VerifyReport is the result of Verify: how many segments were compared and
// which ranges differ between online children (adjacent segments merged).
type VerifyReport struct {
	Segments   int64
	Children   []string
	Mismatches []Range
}

// Stats are cumulative counters of a nexus.
type Stats struct {
	// RebuildBytes is every byte copied by rebuilds, full and partial.
	RebuildBytes int64
	// Retired is how many times a child was retired for an I/O error.
	Retired int64
	// ReadRetries counts reads retried on another child.
	ReadRetries int64
	// ResyncRepaired is the bytes the resync after an unclean shutdown
	// copied from the authority because a child differed.
	ResyncRepaired int64
}
