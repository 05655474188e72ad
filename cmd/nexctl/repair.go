package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
)

// repairView is the stable JSON/YAML form of a repair the reconcilers have
// pending or running on a volume (volume.proto, Repair).
type repairView struct {
	// Kind: resyncing, rebuilding, replacing, waiting, removing, blocked.
	Kind string `json:"kind" yaml:"kind"`
	// Replica is the UUID of the replica repaired (the new one when
	// replacing).
	Replica string `json:"replica,omitempty" yaml:"replica,omitempty"`
	Node    string `json:"node,omitempty" yaml:"node,omitempty"`
	Reason  string `json:"reason,omitempty" yaml:"reason,omitempty"`
	// Until: waiting: when replacement starts (RFC 3339, UTC).
	Until string `json:"until,omitempty" yaml:"until,omitempty"`
	// Percent done of a rebuild or resync, 0 to 100.
	Percent float64 `json:"percent" yaml:"percent"`
	// Started is when the repair (or the wait) started (RFC 3339, UTC).
	Started string `json:"started,omitempty" yaml:"started,omitempty"`
	// Replaces: replacing: the UUID of the replica it replaces.
	Replaces string `json:"replaces,omitempty" yaml:"replaces,omitempty"`

	untilMs int64
}

func newRepairView(r *mgmtv1.Repair) repairView {
	return repairView{Kind: r.GetKind(), Replica: r.GetReplica(), Node: r.GetNode(), Reason: r.GetReason(),
		Until: msTime(r.GetUntilMs()), Percent: r.GetPercent(), Started: msTime(r.GetStartedMs()), Replaces: r.GetReplaces(),
		untilMs: r.GetUntilMs()}
}

// shortID abbreviates a UUID for a line that names several: its first 8
// characters are enough to find it in the replica table above.
func shortID(id string) string {
	if utf8.RuneCountInString(id) <= 9 {
		return id
	}
	return string([]rune(id)[:8]) + "…"
}

// subject is what a repair works on: "kind replica X on node (replaces Y)",
// the kind padded so that the lines of a list align.
func (r repairView) subject(pad bool) string {
	kind := r.Kind
	if kind == "" {
		kind = "repair"
	}
	if pad {
		kind = fmt.Sprintf("%-9s", kind)
	}
	s := kind
	if r.Replica != "" {
		s += " replica " + shortID(r.Replica)
	}
	if r.Node != "" {
		s += " on " + r.Node
	}
	if r.Replaces != "" {
		s += " (replaces " + shortID(r.Replaces) + ")"
	}
	return s
}

// clock is a moment for people: the time of day when it is today, else
// the date too.
func clock(t, now time.Time) string {
	t, now = t.Local(), now.Local()
	if t.YearDay() == now.YearDay() && t.Year() == now.Year() {
		return t.Format("15:04:05")
	}
	return t.Format("2006-01-02 15:04:05")
}

// repairLine is a repair for people, e.g.
//
//	waiting   replica 3f2a8c1d… on node-2: node unresponsive; replacement at 14:05:31 (in 9m12s)
//	resyncing replica 3f2a8c1d… on node-2: 37.5%
//	replacing replica 77d0e4b2… on node-4 (replaces 3f2a8c1d…): 12.0%
//	blocked: no other node fits
//
// countdown adds how long a wait has left, which changes at every read.
func repairLine(r repairView, now time.Time, countdown bool) string {
	switch r.Kind {
	case "blocked":
		reason := r.Reason
		if reason == "" {
			reason = "the service gave no reason"
		}
		if r.Replica == "" && r.Node == "" {
			return "blocked: " + reason
		}
		return r.subject(true) + ": " + reason
	case "waiting":
		var parts []string
		if r.Reason != "" {
			parts = append(parts, r.Reason)
		}
		if r.untilMs != 0 {
			until := time.UnixMilli(r.untilMs)
			at := "replacement at " + clock(until, now)
			if countdown {
				if d := until.Sub(now).Round(time.Second); d > 0 {
					at += fmt.Sprintf(" (in %v)", d)
				} else {
					at += " (due now)"
				}
			}
			parts = append(parts, at)
		}
		if len(parts) == 0 {
			return r.subject(true)
		}
		return r.subject(true) + ": " + strings.Join(parts, "; ")
	case "resyncing", "rebuilding", "replacing":
		s := r.subject(true) + fmt.Sprintf(": %.1f%%", r.Percent)
		if r.Reason != "" {
			s += " (" + r.Reason + ")"
		}
		return s
	}
	if r.Reason != "" {
		return r.subject(true) + ": " + r.Reason
	}
	return r.subject(true)
}

// repairsText prints a volume's repairs under a "Repairs:" heading, one
// line each; nothing when there are none.
func repairsText(w io.Writer, repairs []repairView, now time.Time) error {
	if len(repairs) == 0 {
		return nil
	}
	if _, err := fmt.Fprintln(w, "\nRepairs:"); err != nil {
		return err
	}
	for _, r := range repairs {
		if _, err := fmt.Fprintf(w, "  %s\n", repairLine(r, now, true)); err != nil {
			return err
		}
	}
	return nil
}

// repairProgress prints a volume's progress while nexctl waits on it: a
// line when its healthy count or phase changes, when a repair starts or
// changes (a rebuild at each whole percent, not more often), and when one
// ends. It is not safe for concurrent use.
type repairProgress struct {
	w      io.Writer
	health string
	// shown maps each repair shown to what was shown of it (changes are
	// told apart by it) and the subject its end is told with.
	shown map[string][2]string
}

func newRepairProgress(w io.Writer) *repairProgress {
	return &repairProgress{w: w, shown: map[string][2]string{}}
}

// repairKey identifies a repair across reads.
func repairKey(r repairView) string {
	k := r.Kind + "|" + r.Replica + "|" + r.Node + "|" + r.Replaces
	if r.Replica == "" {
		k += "|" + r.Reason
	}
	return k
}

// show prints what changed in v since the last call.
func (p *repairProgress) show(v volumeView, now time.Time) {
	st := now.Local().Format("15:04:05")
	if h := fmt.Sprintf("%d of %d replicas healthy, %s", v.Status.Healthy, v.Spec.Replicas, v.Status.Phase); h != p.health {
		fmt.Fprintf(p.w, "%s  volume %s: %s\n", st, v.Spec.Name, h)
		p.health = h
	}
	cur := map[string]bool{}
	for _, r := range v.Status.Repairs {
		cur[repairKey(r)] = true
	}
	// Ends first: a replacement reads as the end of the wait, then the
	// start of the copy.
	var ended []string
	for k := range p.shown {
		if !cur[k] {
			ended = append(ended, k)
		}
	}
	sort.Strings(ended)
	for _, k := range ended {
		fmt.Fprintf(p.w, "%s  ended: %s\n", st, p.shown[k][1])
		delete(p.shown, k)
	}
	for _, r := range v.Status.Repairs {
		k := repairKey(r)
		// A rebuild moves by tenths of a percent every second: a line
		// per whole percent is enough to see it move.
		steady := r
		steady.Percent = math.Floor(r.Percent)
		change := repairLine(steady, now, false)
		if p.shown[k][0] == change {
			continue
		}
		fmt.Fprintf(p.w, "%s  %s\n", st, repairLine(r, now, true))
		p.shown[k] = [2]string{change, r.subject(false)}
	}
}

// pendingRepairs summarizes what a volume still waits for, for an error.
func pendingRepairs(v volumeView, now time.Time) string {
	s := fmt.Sprintf("volume %s has %d of %d replicas healthy (%s)", v.Spec.Name, v.Status.Healthy, v.Spec.Replicas, v.Status.Phase)
	switch len(v.Status.Repairs) {
	case 0:
		return s + " and no repair under way"
	case 1:
		return s + "; 1 repair left: " + strings.Join(strings.Fields(repairLine(v.Status.Repairs[0], now, false)), " ")
	}
	lines := make([]string, len(v.Status.Repairs))
	for i, r := range v.Status.Repairs {
		lines[i] = strings.Join(strings.Fields(repairLine(r, now, false)), " ")
	}
	return fmt.Sprintf("%s; %d repairs left: %s", s, len(lines), strings.Join(lines, "; "))
}
