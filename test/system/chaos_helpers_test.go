package system

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	enginev1 "github.com/nexstor/nexstor/api/engine/v1"
)

// The self-healing timing of the systems in namespaces: an outage shorter
// than chaosPartialWait comes back with a partial resync, a longer one is
// replaced on another node; an orphan goes chaosGCGrace after it is known.
const (
	chaosPartialWait = 20 * time.Second
	chaosGCGrace     = 10 * time.Second
)

// newNetnsCluster starts a system of nodes, rebuild.partial_wait set to
// partialWait, (the first aps of them access
// points with embedded etcd), each node in its own network namespace,
// formats it and waits until every node has joined.
func newNetnsCluster(t *testing.T, nodes, aps int, partialWait time.Duration) *cluster {
	t.Helper()
	c := newCluster(t, clusterOptions{nodes: nodes, accessPoints: aps, poolSize: "256MiB", nbd: true, netns: true,
		partialWait: partialWait.String(), gcGrace: chaosGCGrace.String()})
	c.start()
	for _, n := range c.nodes {
		n.waitLog("waiting in maintenance mode", 60*time.Second)
	}
	c.mustNexctl("storage", "format", "-l", c.hosts())
	c.waitMembers("all joined", 90*time.Second, c.allState("joined"))
	return c
}

// keepLogs makes a failed test leave every node's whole log (all its
// processes) in a directory it names, for the timeline to be read against.
func (c *cluster) keepLogs(seed uint64) {
	c.t.Cleanup(func() {
		if !c.t.Failed() {
			return
		}
		dir, err := os.MkdirTemp("", fmt.Sprintf("nexstor-chaos-%d-", seed))
		if err != nil {
			c.t.Log(err)
			return
		}
		for _, n := range c.nodes {
			text := strings.Join(n.past, "\n--- restarted ---\n")
			if n.out != nil {
				text += "\n--- restarted ---\n" + n.out.String()
			}
			os.WriteFile(filepath.Join(dir, n.name+".log"), []byte(text), 0o644)
		}
		c.t.Logf("node logs kept in %s", dir)
	})
}

// timeline is the log of what a test did to a system, each line stamped
// with the time since the start; safe for concurrent use.
type timeline struct {
	t     *testing.T
	start time.Time
	mu    sync.Mutex
	lines []string
}

func newTimeline(t *testing.T) *timeline { return &timeline{t: t, start: time.Now()} }

// add records a line and logs it.
func (l *timeline) add(format string, a ...any) {
	line := fmt.Sprintf("%6.1fs  ", time.Since(l.start).Seconds()) + fmt.Sprintf(format, a...)
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	l.t.Log(line)
}

func (l *timeline) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// volumeList is `volume list` decoded; an error when the management
// service does not answer (which faults make normal).
func (c *cluster) volumeList(timeout string) ([]volumeStatusJSON, error) {
	out, errOut, err := c.nexctl("volume", "list", "-a", strings.Join(c.aps, ","), "-o", "json", "--timeout", timeout)
	if err != nil {
		return nil, fmt.Errorf("volume list: %v: %s", err, strings.TrimSpace(errOut))
	}
	var l []volumeStatusJSON
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		return nil, fmt.Errorf("volume list: decode: %v\n%s", err, out)
	}
	return l, nil
}

// volumeStatusJSON is the part of a volume's view the heal checks read.
type volumeStatusJSON struct {
	Spec struct {
		Name     string `json:"name"`
		Replicas int    `json:"replicas"`
	} `json:"spec"`
	Status struct {
		Phase     string              `json:"phase"`
		Reason    string              `json:"reason"`
		Operation string              `json:"operation"`
		Healthy   int                 `json:"healthy"`
		Replicas  []replicaStatusJSON `json:"replicas"`
		Target    *struct {
			Node string `json:"node"`
			URI  string `json:"uri"`
		} `json:"target"`
		Repairs []repairJSON `json:"repairs"`
	} `json:"status"`
}

// replicaStatusJSON is a replica in a volume's view.
type replicaStatusJSON struct {
	UUID       string `json:"uuid"`
	Node       string `json:"node"`
	State      string `json:"state"`
	ChildState string `json:"child_state"`
}

// repairJSON is a repair under way in a volume's view.
type repairJSON struct {
	Kind    string `json:"kind"`
	Replica string `json:"replica"`
}

// whole reports whether the volume is back to all its replicas healthy
// with nothing under way.
func (v volumeStatusJSON) whole() bool {
	return v.Status.Phase == "online" && v.Status.Healthy == v.Spec.Replicas && len(v.Status.Replicas) == v.Spec.Replicas &&
		len(v.Status.Repairs) == 0 && v.Status.Operation == ""
}

func (v volumeStatusJSON) summary() string {
	var rs []string
	for _, r := range v.Status.Replicas {
		rs = append(rs, fmt.Sprintf("%s@%s:%s", short(r.UUID), r.Node, r.State))
	}
	var reps []string
	for _, r := range v.Status.Repairs {
		reps = append(reps, r.Kind+":"+short(r.Replica))
	}
	return fmt.Sprintf("%s %s healthy %d/%d [%s] repairs [%s] %s", v.Spec.Name, v.Status.Phase, v.Status.Healthy,
		v.Spec.Replicas, strings.Join(rs, " "), strings.Join(reps, " "), v.Status.Operation)
}

func short(uuid string) string {
	if len(uuid) > 8 {
		return uuid[:8]
	}
	return uuid
}

// waitWhole waits (bounded) until every volume has all its replicas
// healthy and no repair under way; it returns the last list and whether
// that was reached.
func (c *cluster) waitWhole(within time.Duration) ([]volumeStatusJSON, bool) {
	deadline := time.Now().Add(within)
	var last []volumeStatusJSON
	for {
		l, err := c.volumeList("10s")
		if err == nil {
			last = l
			if !slices.ContainsFunc(l, func(v volumeStatusJSON) bool { return !v.whole() }) {
				return l, true
			}
		}
		if time.Now().After(deadline) {
			return last, false
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// eventJSON is an entry of `event list -o json`.
type eventJSON struct {
	Seq     uint64 `json:"seq"`
	Time    string `json:"time"`
	Kind    string `json:"kind"`
	Volume  string `json:"volume"`
	Node    string `json:"node"`
	Replica string `json:"replica"`
	Message string `json:"message"`
	Cause   string `json:"cause"`
}

func (c *cluster) events() []eventJSON {
	c.t.Helper()
	var evs []eventJSON
	out := c.mustNexctl("event", "list", "--limit", "1000", "-a", strings.Join(c.aps, ","), "-o", "json")
	if err := json.Unmarshal([]byte(out), &evs); err != nil {
		c.t.Fatalf("event list: %v\n%s", err, out)
	}
	return evs
}

// nodeByName returns the node called name.
func (c *cluster) nodeByName(name string) *node {
	c.t.Helper()
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	c.t.Fatalf("no node %q", name)
	return nil
}

// orphanNexuses lists the nexuses that are not the target of a volume of
// their name on their node.
func (c *cluster) orphanNexuses(vols []volumeStatusJSON) []string {
	c.t.Helper()
	want := map[string]bool{}
	for _, v := range vols {
		if v.Status.Target != nil {
			want[v.Status.Target.Node+" nexus "+v.Spec.Name] = true
		}
	}
	var out []string
	for _, x := range c.inventory() {
		if strings.Contains(x, " nexus ") && !want[x] {
			out = append(out, x)
		}
	}
	return out
}

// rebuildOf returns the nexus's last rebuild of the child that is replica
// (nil when there is none).
func (c *cluster) rebuildOf(target *node, nexus, replica string) *enginev1.Rebuild {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := enginev1.NewNexusServiceClient(c.engineConn(target)).RebuildStatus(ctx, &enginev1.RebuildStatusRequest{Nexus: nexus})
	if err != nil {
		c.t.Fatalf("rebuild status of %s on %s: %v", nexus, target.name, err)
	}
	var rb *enginev1.Rebuild
	for _, r := range st.Rebuilds {
		if strings.HasSuffix(r.Child, replica) {
			rb = r
		}
	}
	return rb
}

// verifyIdentical runs `volume verify` and fails unless the replicas are
// identical.
func (c *cluster) verifyIdentical(name string) {
	c.t.Helper()
	out, errOut, err := c.nexctl("volume", "verify", name, "-a", strings.Join(c.aps, ","), "-o", "json", "--timeout", "120s")
	var v struct {
		Identical bool     `json:"identical"`
		Children  []string `json:"children"`
	}
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || !v.Identical || len(v.Children) < 3 {
		c.t.Fatalf("volume verify %s: %v %+v\n%s%s", name, err, v, out, errOut)
	}
}

// monitor samples the volumes' status while faults are injected, to prove
// afterwards that no volume was ever left without a healthy replica.
type monitor struct {
	c       *cluster
	mu      sync.Mutex
	samples []volumeSample
	failed  int // polls the management service did not answer
	stop    chan struct{}
	done    chan struct{}
}

// volumeSample is one volume's status as one poll saw it.
type volumeSample struct {
	at      time.Time
	v       volumeStatusJSON
	healthy map[string]bool // replica UUID → healthy
}

func (c *cluster) startMonitor(every time.Duration) *monitor {
	m := &monitor{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		for {
			at := time.Now()
			l, err := c.volumeList("5s")
			m.record(at, l, err)
			select {
			case <-m.stop:
				return
			case <-time.After(every):
			}
		}
	}()
	return m
}

// record adds the volumes of one poll (taken at at) to the samples.
func (m *monitor) record(at time.Time, l []volumeStatusJSON, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.failed++
	}
	for _, v := range l {
		if v.Status.Phase == "unknown" {
			continue // the nexus's node did not answer: no news
		}
		s := volumeSample{at: at, v: v, healthy: map[string]bool{}}
		for _, r := range v.Status.Replicas {
			// Published, in sync is the nexus's word; otherwise
			// the engine's.
			if v.Status.Target != nil {
				s.healthy[r.UUID] = r.ChildState == "online"
			} else {
				s.healthy[r.UUID] = r.State == "online"
			}
		}
		m.samples = append(m.samples, s)
	}
}

func (m *monitor) finish() {
	close(m.stop)
	<-m.done
}

// lastCopyViolations checks the samples and the events: no sample shows a
// volume without a healthy replica, and every replica.remove event is
// followed by a sample in which the volume still has a healthy replica
// other than the removed one (what the reconcilers must ensure when they
// take a replica out). The returned lines describe each violation.
func (m *monitor) lastCopyViolations(evs []eventJSON) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var bad []string
	for _, s := range m.samples {
		if s.v.Status.Healthy == 0 || !slices.Contains(mapValues(s.healthy), true) {
			bad = append(bad, fmt.Sprintf("%s: no healthy replica: %s", s.at.Format("15:04:05.000"), s.v.summary()))
		}
	}
	for _, e := range evs {
		if e.Kind != "replica.remove" {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, e.Time)
		if err != nil {
			bad = append(bad, fmt.Sprintf("event %d: time %q: %v", e.Seq, e.Time, err))
			continue
		}
		found := false
		for _, s := range m.samples {
			if s.v.Spec.Name != e.Volume || s.at.Before(at) {
				continue
			}
			found = true
			others := false
			for u, h := range s.healthy {
				others = others || (h && u != e.Replica)
			}
			if !others {
				bad = append(bad, fmt.Sprintf("after %s %s of %s (%s): no other healthy replica: %s", e.Kind,
					short(e.Replica), e.Volume, e.Cause, s.v.summary()))
			}
			break
		}
		if !found {
			bad = append(bad, fmt.Sprintf("%s %s of %s at %s: no status sampled after it", e.Kind, short(e.Replica), e.Volume, e.Time))
		}
	}
	return bad
}

func mapValues(m map[string]bool) []bool {
	var out []bool
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
