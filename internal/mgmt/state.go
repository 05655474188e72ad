// Package mgmt is the management service of a Nexstor system: membership of
// the storage nodes and system-wide control, with all state in etcd under
// /nexstor/<system>/.
//
// Every access point runs a Service; they elect a leader through etcd
// (concurrency.Election) and only the leader answers. Every write the
// leader makes is an etcd transaction fenced on its election key, so a
// deposed leader that has not noticed yet cannot change anything. A replica
// that is not the leader answers Unavailable with the leader's address
// (NotLeaderError); Client follows that hint.
//
// Members are identified by the UUID in their superblock. A UUID keeps its
// rank forever: ranks are allocated once, by a transaction on a counter, and
// indexed under ranks/. Member states change only along the transitions in
// the table of this file (CanTransition).
package mgmt

import "fmt"

// State is a member's state.
type State string

// Member states.
const (
	// Joined: the member is part of the system and serves I/O.
	StateJoined State = "joined"
	// Stopped: the member was stopped by an operator (system stop); its
	// server keeps heartbeating but serves no I/O.
	StateStopped State = "stopped"
	// Unresponsive: the leader stopped receiving heartbeats.
	StateUnresponsive State = "unresponsive"
	// Excluded: an operator removed the member; it may not rejoin until
	// the exclusion is cleared.
	StateExcluded State = "excluded"
	// Errored: the member reported a failure of its engine.
	StateErrored State = "errored"
)

// States lists every state.
var States = []State{StateJoined, StateStopped, StateUnresponsive, StateExcluded, StateErrored}

// transitions is the table of allowed state changes (from -> to). A change
// to the same state is always allowed and changes nothing.
var transitions = map[State][]State{
	StateJoined:       {StateStopped, StateUnresponsive, StateExcluded, StateErrored},
	StateStopped:      {StateJoined, StateUnresponsive, StateExcluded, StateErrored},
	StateUnresponsive: {StateJoined, StateStopped, StateErrored, StateExcluded},
	StateExcluded:     {StateStopped},
	StateErrored:      {StateJoined, StateStopped, StateUnresponsive, StateExcluded},
}

// Valid reports whether s is a known state.
func (s State) Valid() bool {
	_, ok := transitions[s]
	return ok
}

// CanTransition reports whether a member may go from one state to another.
func CanTransition(from, to State) bool {
	if from == to {
		return from.Valid()
	}
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// TransitionError is an illegal state change.
type TransitionError struct {
	Rank     uint32
	From, To State
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("rank %d: cannot go from %s to %s%s", e.Rank, e.From, e.To, transitionHint(e.From, e.To))
}

// transitionHint says what to do instead of an illegal change.
func transitionHint(from, to State) string {
	switch {
	case from == StateExcluded:
		return "; clear the exclusion first (nexctl system exclude --clear)"
	}
	return ""
}
