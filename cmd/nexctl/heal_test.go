package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/fault"
)

const (
	lostReplica = "3f2a8c1d-0000-4000-8000-000000000002"
	newReplica  = "77d0e4b2-0000-4000-8000-000000000004"
)

// healingVolume is v1 (3 replicas) with healthy of them healthy and the
// repairs given under way.
func healingVolume(healthy uint32, repairs ...*mgmtv1.Repair) *mgmtv1.Volume {
	v := degradedVolume()
	v.Status.Healthy = healthy
	v.Status.Repairs = repairs
	v.Status.Phase = "degraded"
	if healthy == v.Spec.Replicas && len(repairs) == 0 {
		v.Status.Phase = "online"
	}
	return v
}

func waitingRepair(until time.Time) *mgmtv1.Repair {
	return &mgmtv1.Repair{Kind: "waiting", Replica: lostReplica, Node: "node-2", Reason: "node unresponsive",
		UntilMs: until.UnixMilli(), StartedMs: until.Add(-10 * time.Minute).UnixMilli()}
}

func resyncRepair(percent float64) *mgmtv1.Repair {
	return &mgmtv1.Repair{Kind: "resyncing", Replica: lostReplica, Node: "node-2", Percent: percent}
}

// TestRepairLines pins how each kind of repair reads, with the countdown
// of a wait counted from now.
func TestRepairLines(t *testing.T) {
	now := time.Date(2025, 3, 4, 14, 0, 0, 0, time.Local)
	until := now.Add(9*time.Minute + 12*time.Second)
	for _, tc := range []struct {
		r         *mgmtv1.Repair
		countdown bool
		want      string
	}{
		{waitingRepair(until), true, "waiting   replica 3f2a8c1d… on node-2: node unresponsive; replacement at 14:09:12 (in 9m12s)"},
		{waitingRepair(until), false, "waiting   replica 3f2a8c1d… on node-2: node unresponsive; replacement at 14:09:12"},
		{waitingRepair(now.Add(-time.Second)), true, "waiting   replica 3f2a8c1d… on node-2: node unresponsive; replacement at 13:59:59 (due now)"},
		{waitingRepair(now.Add(48 * time.Hour)), false,
			"waiting   replica 3f2a8c1d… on node-2: node unresponsive; replacement at 2025-03-06 14:00:00"},
		{resyncRepair(37.5), true, "resyncing replica 3f2a8c1d… on node-2: 37.5%"},
		{&mgmtv1.Repair{Kind: "rebuilding", Replica: lostReplica, Node: "node-2", Percent: 5, Reason: "identity changed"}, true,
			"rebuilding replica 3f2a8c1d… on node-2: 5.0% (identity changed)"},
		{&mgmtv1.Repair{Kind: "replacing", Replica: newReplica, Node: "node-4", Percent: 12, Replaces: lostReplica}, true,
			"replacing replica 77d0e4b2… on node-4 (replaces 3f2a8c1d…): 12.0%"},
		{&mgmtv1.Repair{Kind: "removing", Replica: "r9", Node: "node-3", Reason: "extra replica"}, true,
			"removing  replica r9 on node-3: extra replica"},
		{&mgmtv1.Repair{Kind: "blocked", Reason: "no other node fits: node-3 is cordoned"}, true,
			"blocked: no other node fits: node-3 is cordoned"},
		{&mgmtv1.Repair{Kind: "blocked"}, true, "blocked: the service gave no reason"},
	} {
		if got := repairLine(newRepairView(tc.r), now, tc.countdown); got != tc.want {
			t.Errorf("%v:\n got %q\nwant %q", tc.r, got, tc.want)
		}
	}
}

// TestVolumeGetRepairs shows a volume's repairs under its replicas, one
// line each, and carries them in JSON.
func TestVolumeGetRepairs(t *testing.T) {
	until := time.Now().Add(10 * time.Minute)
	v := healingVolume(1, waitingRepair(until),
		&mgmtv1.Repair{Kind: "replacing", Replica: newReplica, Node: "node-4", Percent: 12, Replaces: lostReplica},
		&mgmtv1.Repair{Kind: "blocked", Reason: "no other node fits"})
	f := &fakeVolumes{volume: v}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "get", "v1")
	if r.status != 0 {
		t.Fatalf("get: %+v", r)
	}
	replicas, repairs, target := strings.Index(r.stdout, "Replicas:\n"), strings.Index(r.stdout, "\nRepairs:\n"), strings.Index(r.stdout, "Target:")
	if replicas < 0 || repairs < replicas || target < repairs {
		t.Fatalf("the repairs are not between the replicas and the target:\n%s", r.stdout)
	}
	section := r.stdout[repairs:target]
	for _, want := range []string{
		"\n  waiting   replica 3f2a8c1d… on node-2: node unresponsive; replacement at " + until.Local().Format("15:04:05") + " (in ",
		"\n  replacing replica 77d0e4b2… on node-4 (replaces 3f2a8c1d…): 12.0%\n",
		"\n  blocked: no other node fits\n",
	} {
		if !strings.Contains(section, want) {
			t.Errorf("the repairs do not show %q:\n%s", want, section)
		}
	}

	r = volumeRun(t, addr, "volume", "get", "v1", "-o", "json")
	var got volumeView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || len(got.Status.Repairs) != 3 {
		t.Fatalf("get -o json: %+v", r)
	}
	w := got.Status.Repairs[0]
	if w.Kind != "waiting" || w.Replica != lostReplica || w.Node != "node-2" || w.Reason != "node unresponsive" ||
		w.Until != msTime(until.UnixMilli()) || w.Started == "" {
		t.Errorf("waiting repair in JSON: %+v", w)
	}
	if rp := got.Status.Repairs[1]; rp.Kind != "replacing" || rp.Percent != 12 || rp.Replaces != lostReplica {
		t.Errorf("replacing repair in JSON: %+v", rp)
	}

	// A volume with nothing to repair shows no Repairs section, and an
	// empty list in JSON.
	f.volume = healingVolume(3)
	r = volumeRun(t, addr, "volume", "get", "v1")
	if r.status != 0 || strings.Contains(r.stdout, "Repairs:") {
		t.Errorf("get of a healthy volume: %+v", r)
	}
	r = volumeRun(t, addr, "volume", "get", "v1", "-o", "yaml")
	if r.status != 0 || !strings.Contains(r.stdout, "  repairs: []\n") {
		t.Errorf("get -o yaml of a healthy volume: %+v", r)
	}
}

// TestHealBadInput checks that the new commands refuse wrong input with
// exit status 2 before anything is asked of the service.
func TestHealBadInput(t *testing.T) {
	f := &fakeVolumes{volume: degradedVolume(), node: &mgmtv1.Node{Member: &mgmtv1.Member{Name: "node-2"}}}
	addr := startVolumes(t, f)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"volume", "set-replicas", "v1", "0"}, []string{"N 0", "at least 1 replica"}},
		{[]string{"volume", "set-replicas", "v1", "abc"}, []string{`N "abc"`, "whole number"}},
		{[]string{"volume", "set-replicas", "v1", "2.5", "--wait"}, []string{`N "2.5"`}},
		{[]string{"volume", "set-replicas", "v1", "99999999999"}, []string{`N "99999999999"`}},
		{[]string{"volume", "set-replicas", "v1"}, []string{"accepts 2 arg(s)"}},
		{[]string{"volume", "set-replicas", "v1", "3", "--wiat"}, []string{"unknown flag --wiat", "did you mean --wait?"}},
		{[]string{"volume", "set-replica", "v1", "3"}, []string{"did you mean `nexctl volume set-replicas`"}},
		{[]string{"node", "cordon"}, []string{"accepts 1 arg(s)"}},
		{[]string{"node", "cordon", " "}, []string{"NODE is empty"}},
		{[]string{"node", "uncordon", "a", "b"}, []string{"accepts 1 arg(s)"}},
		{[]string{"node", "drain", "", "--wait"}, []string{"NODE is empty"}},
		{[]string{"node", "darin", "node-2"}, []string{"did you mean `nexctl node drain`"}},
		{[]string{"event", "list", "--limit", "-1"}, []string{"--limit -1"}},
		{[]string{"event", "list", "--limit", "many"}, []string{"--limit", "many"}},
		{[]string{"event", "list", "--volume", "Bad_Name"}, []string{`"Bad_Name"`, "lowercase"}},
		{[]string{"event", "list", "--node", ""}, []string{"--node is empty"}},
		{[]string{"event", "list", "extra"}, []string{"unknown command"}},
		{[]string{"event", "lsit"}, []string{"did you mean `nexctl event list`"}},
	} {
		r := volumeRun(t, addr, tc.args...)
		wantError(t, r, exitUsage, "cli.usage", tc.want...)
		if r.stdout != "" {
			t.Errorf("%v printed on stdout:\n%s", tc.args, r.stdout)
		}
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("bad input reached the service %d times: %v", n, f.requests())
	}
}

// TestSetReplicas sends the count and prints the volume the service
// answered with; a refusal of the service is printed with its resolution.
func TestSetReplicas(t *testing.T) {
	f := &fakeVolumes{volume: healingVolume(2, &mgmtv1.Repair{Kind: "replacing", Replica: newReplica, Node: "node-4", Percent: 0})}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "set-replicas", "v1", "3")
	if r.status != 0 {
		t.Fatalf("set-replicas: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.SetVolumeReplicasRequest{Name: "v1", Replicas: 3}) {
		t.Errorf("request %v", got)
	}
	for _, s := range []string{"2 healthy of 3", "Repairs:", "replacing replica 77d0e4b2… on node-4: 0.0%"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("set-replicas does not print %q:\n%s", s, r.stdout)
		}
	}
	r = volumeRun(t, addr, "volume", "set-replicas", "v1", "3", "-o", "json")
	var got volumeView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || got.Status.Healthy != 2 || len(got.Status.Repairs) != 1 {
		t.Errorf("set-replicas -o json: %+v", r)
	}
	f.last(t)

	f.err = fault.New(fault.FailedPrecondition, "volume.not_placeable", "4 replicas need 4 nodes; eligible: node-0, node-1, node-2",
		"add nodes or pools, or ask for fewer replicas")
	r = volumeRun(t, addr, "volume", "set-replicas", "v1", "4", "--wait")
	wantError(t, r, exitFailed, "volume.not_placeable", "4 replicas need 4 nodes", "fewer replicas")
	if got := f.last(t); !proto.Equal(got, &mgmtv1.SetVolumeReplicasRequest{Name: "v1", Replicas: 4}) {
		t.Errorf("request %v", got)
	}
}

// TestSetReplicasWait follows a volume from a wait through a resync to
// healthy: a line per change, the end said, and no read after it.
func TestSetReplicasWait(t *testing.T) {
	until := time.Now().Add(10 * time.Minute)
	f := &fakeVolumes{volume: healingVolume(2, waitingRepair(until)),
		volumeSeq: []*mgmtv1.Volume{healingVolume(2, resyncRepair(10.2)), healingVolume(2, resyncRepair(10.7)),
			healingVolume(2, resyncRepair(60)), healingVolume(3)}}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "set-replicas", "v1", "3", "--wait")
	if r.status != 0 {
		t.Fatalf("set-replicas --wait: %+v", r)
	}
	reqs := f.requests()
	if len(reqs) != 5 || !proto.Equal(reqs[0], &mgmtv1.SetVolumeReplicasRequest{Name: "v1", Replicas: 3}) {
		t.Fatalf("requests: %v", reqs)
	}
	for _, q := range reqs[1:] {
		if !proto.Equal(q, &mgmtv1.GetVolumeRequest{Name: "v1"}) {
			t.Errorf("read %v", q)
		}
	}
	out := r.stdout
	order := []string{
		"Name:", // the volume the set answered with
		"Waiting for 3 healthy replicas",
		"  volume v1: 2 of 3 replicas healthy, degraded\n",
		"  waiting   replica 3f2a8c1d… on node-2: node unresponsive; replacement at ",
		"  ended: waiting replica 3f2a8c1d… on node-2\n",
		"  resyncing replica 3f2a8c1d… on node-2: 10.2%\n",
		"  resyncing replica 3f2a8c1d… on node-2: 60.0%\n",
		"  volume v1: 3 of 3 replicas healthy, online\n",
		"  ended: resyncing replica 3f2a8c1d… on node-2\n",
		"volume v1 has 3 healthy replicas and no repairs\n",
	}
	at := 0
	for _, s := range order {
		i := strings.Index(out[at:], s)
		if i < 0 {
			t.Fatalf("set-replicas --wait does not print %q after offset %d:\n%s", s, at, out)
		}
		at += i + len(s)
	}
	// 10.2% and 10.7% are the same whole percent: one line.
	if strings.Contains(out, "10.7%") {
		t.Errorf("a change below a whole percent printed a line:\n%s", out)
	}

	// With -o json the lines go to stderr, the healed volume to stdout.
	f.volume = healingVolume(2, resyncRepair(50))
	f.volumeSeq = []*mgmtv1.Volume{healingVolume(3)}
	f.mu.Lock()
	f.reqs = nil
	f.mu.Unlock()
	r = volumeRun(t, addr, "volume", "set-replicas", "v1", "3", "--wait", "-o", "json")
	var got volumeView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || got.Status.Healthy != 3 || got.Status.Phase != "online" {
		t.Fatalf("set-replicas --wait -o json: %+v", r)
	}
	if !strings.Contains(r.stderr, "resyncing replica 3f2a8c1d… on node-2: 50.0%") {
		t.Errorf("the progress is not on stderr:\n%s", r.stderr)
	}
	if n := len(f.requests()); n != 2 {
		t.Errorf("%d requests, want the set and one read", n)
	}

	// Healed at once: no read at all.
	f.volume = healingVolume(3)
	f.mu.Lock()
	f.reqs = nil
	f.mu.Unlock()
	if r := volumeRun(t, addr, "volume", "set-replicas", "v1", "3", "--wait"); r.status != 0 ||
		!strings.HasSuffix(r.stdout, "volume v1 has 3 healthy replicas and no repairs\n") {
		t.Errorf("set-replicas --wait of a healthy volume: %+v", r)
	}
	f.last(t)
}

// TestSetReplicasWaitEnds checks the ends of a wait that does not heal:
// --timeout fails it with what was left, and a count changed by someone
// else fails it at once.
func TestSetReplicasWaitEnds(t *testing.T) {
	f := &fakeVolumes{volume: healingVolume(2, resyncRepair(40))}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "volume", "set-replicas", "v1", "3", "--wait", "--timeout", "3s")
	wantError(t, r, exitFailed, "cli.wait_timeout", "gave up waiting after 3s", "volume v1 has 2 of 3 replicas healthy",
		"1 repair left: resyncing replica 3f2a8c1d… on node-2: 40.0%", "nexctl volume get v1", "nexctl event list --volume v1")
	if n := len(f.requests()); n < 2 {
		t.Errorf("%d requests: the volume was not read while waiting", n)
	}

	other := healingVolume(2, resyncRepair(40))
	other.Spec.Replicas = 4
	f.volumeSeq = []*mgmtv1.Volume{other}
	r = volumeRun(t, addr, "volume", "set-replicas", "v1", "3", "--wait")
	wantError(t, r, exitFailed, "cli.wait_ended", "now keeps 4 replicas, not 3")
}

// TestNodeCordonUncordon sends the node as given and prints the node the
// service answered with.
func TestNodeCordonUncordon(t *testing.T) {
	f := &fakeVolumes{node: &mgmtv1.Node{Member: &mgmtv1.Member{Rank: 2, Name: "node-2", Uuid: "u2", Address: "10.0.0.3:10124",
		State: "joined", Cordoned: true}, Replicas: 4, Nexuses: 1}}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "node", "cordon", "2")
	if r.status != 0 {
		t.Fatalf("cordon: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.NodeRequest{Node: "2"}) {
		t.Errorf("request %v", got)
	}
	for _, s := range []string{"node node-2 cordoned: it gets no new replicas or nexuses", "nexctl node uncordon node-2",
		"State:", "joined,cordoned", "Replicas:", "4"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("cordon does not print %q:\n%s", s, r.stdout)
		}
	}
	r = volumeRun(t, addr, "node", "cordon", "node-2", "-o", "json")
	var nv nodeView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &nv) != nil || !nv.Cordoned || nv.Name != "node-2" || nv.Drain != nil {
		t.Errorf("cordon -o json: %+v", r)
	}
	f.last(t)

	f.node.Member.Cordoned = false
	r = volumeRun(t, addr, "node", "uncordon", "u2")
	if r.status != 0 || !strings.Contains(r.stdout, "node node-2 uncordoned") || strings.Contains(r.stdout, "joined,") {
		t.Errorf("uncordon: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.NodeRequest{Node: "u2"}) {
		t.Errorf("request %v", got)
	}

	f.err = fault.New(fault.NotFound, "volume.unknown_node", `node "node-9" is not a member`, "")
	wantError(t, volumeRun(t, addr, "node", "cordon", "node-9"), exitFailed, "volume.unknown_node", `node "node-9"`, "nexctl node list")
}

// drainingNode is node-2 draining with left replicas left and the reasons
// blocked; drained when left is 0.
func drainingNode(left uint32, blocked ...string) *mgmtv1.Node {
	state := "draining"
	if left == 0 {
		state = "drained"
	}
	return &mgmtv1.Node{Member: &mgmtv1.Member{Rank: 2, Name: "node-2", Uuid: "u2", State: "joined", Cordoned: true, Draining: left > 0},
		Replicas: left, Nexuses: 1,
		Drain: &mgmtv1.DrainStatus{State: state, ReplicasLeft: left, Blocked: blocked, StartedMs: 1000, Nexuses: 1}}
}

// TestNodeDrain prints a drain's status, and with --wait follows it to
// drained, a line per change.
func TestNodeDrain(t *testing.T) {
	blocked := "volume v3: not published; its replica is copied when the volume is next published"
	other := &mgmtv1.Node{Member: &mgmtv1.Member{Rank: 0, Name: "node-0", Uuid: "u0", State: "joined"}}
	f := &fakeVolumes{node: drainingNode(3, blocked)}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "node", "drain", "node-2")
	if r.status != 0 {
		t.Fatalf("drain: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.NodeRequest{Node: "node-2"}) {
		t.Errorf("request %v", got)
	}
	for _, s := range []string{"node node-2 is draining: 3 replicas left to replace on other nodes, 1 nexus to move (1 blocked for now",
		"joined,draining", "Blocked:\n  " + blocked + "\n", "Node node-2 still hosts the nexus of 1 volume: a drain does not move them",
		"nexctl volume publish V --node OTHER"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("drain does not print %q:\n%s", s, r.stdout)
		}
	}
	r = volumeRun(t, addr, "node", "drain", "node-2", "-o", "yaml")
	if r.status != 0 || !strings.Contains(r.stdout, "draining: true\n") || !strings.Contains(r.stdout, "replicas_left: 3\n") ||
		!strings.Contains(r.stdout, "blocked:\n") {
		t.Errorf("drain -o yaml: %+v", r)
	}
	f.last(t)

	// --wait, the node named by its rank: found again by its UUID.
	f.nodesSeq = [][]*mgmtv1.Node{{other, drainingNode(3, blocked)}, {other, drainingNode(2, blocked)},
		{drainingNode(1), other}, {other, drainingNode(0)}}
	r = volumeRun(t, addr, "node", "drain", "2", "--wait")
	if r.status != 0 {
		t.Fatalf("drain --wait: %+v", r)
	}
	reqs := f.requests()
	if len(reqs) != 5 || !proto.Equal(reqs[0], &mgmtv1.NodeRequest{Node: "2"}) || !proto.Equal(reqs[4], &mgmtv1.ListNodesRequest{}) {
		t.Fatalf("requests: %v", reqs)
	}
	order := []string{"Waiting until node node-2 is drained", "  node node-2: 3 replicas left\n", "  blocked: " + blocked + "\n",
		"  node node-2: 2 replicas left\n", "  node node-2: 1 replica left\n", "  no longer blocked\n", "  node node-2: 0 replicas left\n",
		"node node-2 drained: no replica of a volume is left on it\n", "Node node-2 still hosts the nexus of 1 volume"}
	at := 0
	for _, s := range order {
		i := strings.Index(r.stdout[at:], s)
		if i < 0 {
			t.Fatalf("drain --wait does not print %q after offset %d:\n%s", s, at, r.stdout)
		}
		at += i + len(s)
	}
	if n := strings.Count(r.stdout, "  blocked: "); n != 1 {
		t.Errorf("the same blocked reason printed %d times:\n%s", n, r.stdout)
	}

	// An answer without the drain's status yet: the reads tell.
	f.node = &mgmtv1.Node{Member: &mgmtv1.Member{Rank: 2, Name: "node-2", Uuid: "u2", State: "joined", Cordoned: true}}
	f.nodesSeq = [][]*mgmtv1.Node{{drainingNode(0)}}
	r = volumeRun(t, addr, "node", "drain", "node-2", "--wait")
	if r.status != 0 || !strings.Contains(r.stdout, "node node-2 drained") {
		t.Errorf("drain --wait from an answer without status: %+v", r)
	}
}

// TestNodeDrainWaitEnds: --timeout ends a drain that does not finish,
// and an uncordon during the wait ends it at once.
func TestNodeDrainWaitEnds(t *testing.T) {
	blocked := "volume v3: no other node fits (node-0: pool p0 has 1GiB free, needs 10GiB)"
	f := &fakeVolumes{node: drainingNode(3, blocked), nodes: []*mgmtv1.Node{drainingNode(3, blocked)}}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "node", "drain", "node-2", "--wait", "--timeout", "3s")
	wantError(t, r, exitFailed, "cli.wait_timeout", "gave up waiting after 3s", "node node-2 is still draining: 3 replicas left",
		"blocked: "+blocked, "nexctl event list --node node-2")
	if n := len(f.requests()); n < 2 {
		t.Errorf("%d requests: the nodes were not read while waiting", n)
	}

	uncordoned := &mgmtv1.Node{Member: &mgmtv1.Member{Rank: 2, Name: "node-2", Uuid: "u2", State: "joined"}}
	f.nodesSeq = [][]*mgmtv1.Node{{uncordoned}}
	r = volumeRun(t, addr, "node", "drain", "node-2", "--wait")
	wantError(t, r, exitFailed, "cli.wait_ended", "the drain of node node-2 ended before it finished")

	// With -o json the progress is on stderr, before the error.
	f.nodesSeq = [][]*mgmtv1.Node{{}}
	r = volumeRun(t, addr, "node", "drain", "node-2", "--wait", "-o", "json")
	i := strings.Index(r.stderr, "Error: ")
	if i < 0 || !strings.Contains(r.stderr[:i], "  node node-2: 3 replicas left\n") {
		t.Fatalf("drain --wait -o json: %+v", r)
	}
	r.stderr = r.stderr[i:]
	wantError(t, r, exitFailed, "cli.wait_ended", "no longer a member")
	if r.stdout != "" {
		t.Errorf("a failed wait printed on stdout with -o json:\n%s", r.stdout)
	}
}

// TestNodeListMaintenance shows cordoned, draining and drained nodes in
// STATE, and the drain in JSON.
func TestNodeListMaintenance(t *testing.T) {
	f := &fakeVolumes{nodes: []*mgmtv1.Node{
		{Member: &mgmtv1.Member{Rank: 0, Name: "node-0", State: "joined"}},
		{Member: &mgmtv1.Member{Rank: 1, Name: "node-1", State: "joined", Cordoned: true}},
		drainingNode(3, "volume v3: not published"),
		{Member: &mgmtv1.Member{Rank: 3, Name: "node-3", State: "unresponsive", Cordoned: true},
			Drain: &mgmtv1.DrainStatus{State: "drained", StartedMs: 1000}},
	}}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "node", "list")
	if r.status != 0 {
		t.Fatalf("node list: %+v", r)
	}
	lines := strings.Split(r.stdout, "\n")
	want := []string{"RANK NAME ADDRESS STATE", "0 node-0 - joined ", "1 node-1 - joined,cordoned ", "2 node-2 - joined,draining ",
		"3 node-3 - unresponsive,drained "}
	for i, w := range want {
		if i >= len(lines) || !strings.HasPrefix(strings.Join(strings.Fields(lines[i]), " ")+" ", w) {
			t.Errorf("line %d does not start with %q:\n%s", i, w, r.stdout)
		}
	}
	r = volumeRun(t, addr, "node", "list", "-o", "json")
	var views []nodeView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &views) != nil || len(views) != 4 {
		t.Fatalf("node list -o json: %+v", r)
	}
	if d := views[2].Drain; !views[2].Draining || d == nil || d.State != "draining" || d.ReplicasLeft != 3 || len(d.Blocked) != 1 ||
		d.Started != "1970-01-01T00:00:01Z" || d.Nexuses != 1 {
		t.Errorf("node-2 in JSON: %+v %+v", views[2], d)
	}
	if views[0].Drain != nil || views[0].Draining || !strings.Contains(r.stdout, `"draining": false`) {
		t.Errorf("node-0 in JSON: %+v", views[0])
	}
}

func testEvents(base time.Time) []*mgmtv1.Event {
	return []*mgmtv1.Event{
		{Seq: 8, TimeMs: base.Add(2 * time.Second).UnixMilli(), Kind: "replica.resync", Volume: "v1", Node: "node-2", Replica: lostReplica,
			Message: "replica 3f2a8c1d resynced: 512MiB copied", Cause: "node-2 returned after 2m"},
		{Seq: 7, TimeMs: base.UnixMilli(), Kind: "node.cordon", Node: "node-3", Message: "node-3 cordoned", Cause: "nexctl node cordon"},
	}
}

// TestEventList sends the filters and prints the events oldest first,
// the time local and to the second.
func TestEventList(t *testing.T) {
	base := time.Date(2025, 3, 4, 14, 5, 31, 250e6, time.UTC)
	f := &fakeVolumes{events: testEvents(base)}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "event", "list", "--volume", "v1", "--node", "node-2", "--limit", "20")
	if r.status != 0 {
		t.Fatalf("event list: %+v", r)
	}
	if got := f.last(t); !proto.Equal(got, &mgmtv1.ListEventsRequest{Volume: "v1", Node: "node-2", Limit: 20}) {
		t.Errorf("request %v", got)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "TIME KIND VOLUME NODE MESSAGE CAUSE" {
		t.Fatalf("event list:\n%s", r.stdout)
	}
	first := base.Local().Format(time.RFC3339) + " node.cordon - node-3 node-3 cordoned nexctl node cordon"
	second := base.Add(2*time.Second).Local().Format(time.RFC3339) +
		" replica.resync v1 node-2 replica 3f2a8c1d resynced: 512MiB copied node-2 returned after 2m"
	if got := strings.Join(strings.Fields(lines[1]), " "); got != first {
		t.Errorf("row 1 %q, want %q", got, first)
	}
	if got := strings.Join(strings.Fields(lines[2]), " "); got != second {
		t.Errorf("row 2 %q, want %q", got, second)
	}

	r = volumeRun(t, addr, "event", "list", "-o", "json")
	if got := f.last(t); !proto.Equal(got, &mgmtv1.ListEventsRequest{}) {
		t.Errorf("request %v", got)
	}
	var views []eventView
	if r.status != 0 || json.Unmarshal([]byte(r.stdout), &views) != nil || len(views) != 2 {
		t.Fatalf("event list -o json: %+v", r)
	}
	if e := views[1]; e.Seq != 8 || e.Time != "2025-03-04T14:05:33.25Z" || e.Kind != "replica.resync" || e.Volume != "v1" ||
		e.Node != "node-2" || e.Replica != lostReplica || e.Cause != "node-2 returned after 2m" {
		t.Errorf("event in JSON: %+v", e)
	}
	f.events = nil
	if r := volumeRun(t, addr, "event", "list", "-o", "json"); r.status != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("no events: %+v", r)
	}
}

// TestEventWatch lists again and prints only the events not yet printed,
// and --timeout ends the watch as a normal end.
func TestEventWatch(t *testing.T) {
	base := time.Date(2025, 3, 4, 14, 5, 31, 0, time.UTC)
	ev := func(seq uint64, msg string) *mgmtv1.Event {
		return &mgmtv1.Event{Seq: seq, TimeMs: base.Add(time.Duration(seq) * time.Second).UnixMilli(), Kind: "replica.rebuild",
			Volume: "v1", Node: "node-4", Message: msg, Cause: "node-2 away for 10m"}
	}
	e1, e2, e3, e4 := ev(1, "first"), ev(2, "second"), ev(3, "third"), ev(4, "fourth")
	f := &fakeVolumes{eventsSeq: [][]*mgmtv1.Event{{e1, e2}, {e1, e2, e3}, {e2, e3, e4}}}
	addr := startVolumes(t, f)
	r := volumeRun(t, addr, "event", "list", "--watch", "--limit", "5", "--volume", "v1", "--timeout", "6s")
	if r.status != 0 {
		t.Fatalf("event list --watch: %+v", r)
	}
	reqs := f.requests()
	if len(reqs) < 2 {
		t.Fatalf("%d lists in 6s: %v", len(reqs), reqs)
	}
	if !proto.Equal(reqs[0], &mgmtv1.ListEventsRequest{Volume: "v1", Limit: 5}) ||
		!proto.Equal(reqs[1], &mgmtv1.ListEventsRequest{Volume: "v1", Limit: 100}) {
		t.Errorf("requests %v", reqs)
	}
	if strings.Count(r.stdout, "TIME") != 1 {
		t.Errorf("the header is not printed once:\n%s", r.stdout)
	}
	wantOnce := []string{"first", "second", "third"}
	if len(reqs) >= 3 {
		wantOnce = append(wantOnce, "fourth")
	}
	for _, m := range wantOnce {
		if n := strings.Count(r.stdout, " "+m+" "); n != 1 {
			t.Errorf("%q printed %d times:\n%s", m, n, r.stdout)
		}
	}
	if i, j := strings.Index(r.stdout, "second"), strings.Index(r.stdout, "third"); i < 0 || j < i {
		t.Errorf("not in order:\n%s", r.stdout)
	}
	// The columns of later rows line up with the first ones.
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	col := strings.Index(lines[0], "MESSAGE")
	for _, l := range lines[1:] {
		if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
			t.Errorf("MESSAGE is not at column %d in %q", col, l)
		}
	}

	// JSON: one object per line.
	f.mu.Lock()
	f.reqs = nil
	f.mu.Unlock()
	f.eventsSeq = [][]*mgmtv1.Event{{e1}, {e1, e2}}
	r = volumeRun(t, addr, "event", "list", "--watch", "-o", "json", "--timeout", "5s")
	if r.status != 0 {
		t.Fatalf("event list --watch -o json: %+v", r)
	}
	var seqs []uint64
	for _, l := range strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n") {
		var e eventView
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %q is not a JSON event: %v", l, err)
		}
		seqs = append(seqs, e.Seq)
	}
	if len(seqs) != 2 || seqs[0] != 1 || seqs[1] != 2 {
		t.Errorf("watched seqs %v, want [1 2]", seqs)
	}
}
