package scheduler

import (
	"errors"
	"fmt"
	"math/big"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"time"
)

const (
	MiB = uint64(1) << 20
	GiB = uint64(1) << 30
)

// pool returns an online pool with the given capacity and free bytes.
func pool(name string, capacity, free uint64) Pool {
	return Pool{Name: name, UUID: "u-" + name, State: "online", Capacity: capacity, Free: free}
}

// node returns a joined node named name with UUID "uuid-"+name.
func node(name string, pools ...Pool) Node {
	return Node{UUID: "uuid-" + name, Name: name, State: "joined", Pools: pools}
}

func withDomain(n Node, d string) Node { n.FaultDomain = d; return n }

func withLabels(n Node, kv ...string) Node {
	n.Labels = map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		n.Labels[kv[i]] = kv[i+1]
	}
	return n
}

func placed(cs []Choice) string {
	var s []string
	for _, c := range cs {
		s = append(s, c.Node+"/"+c.Pool)
	}
	return strings.Join(s, " ")
}

func shuffled(r *rand.Rand, nodes []Node) []Node {
	out := make([]Node, len(nodes))
	for i, j := range r.Perm(len(nodes)) {
		out[i] = nodes[j]
		ps := append([]Pool(nil), nodes[j].Pools...)
		r.Shuffle(len(ps), func(a, b int) { ps[a], ps[b] = ps[b], ps[a] })
		out[i].Pools = ps
	}
	return out
}

func TestPlace(t *testing.T) {
	big := func(name string) Pool { return pool(name, 100*GiB, 100*GiB) }
	cordoned := node("node-d", big("p0"))
	cordoned.Cordoned = true
	down := node("node-c", big("p0"))
	down.State = "unresponsive"
	offline := big("p0")
	offline.State = "faulted"
	tierFast := big("fast")
	tierFast.Labels = map[string]string{"tier": "fast"}
	clustered := pool("p0", 10*GiB, GiB+4*MiB)
	clustered.ClusterSize = 4 * MiB
	clustered8 := clustered
	clustered8.ClusterSize = 8 * MiB
	thinCl := pool("p0", 10*GiB, 412*MiB)
	thinCl.ClusterSize = 8 * MiB // 40 % of 1GiB = 409.6MiB -> 416MiB
	committed := pool("p0", 10*GiB, 10*GiB)
	committed.Committed = 24 * GiB // + 2GiB = 260 %
	committed200 := committed
	committed200.OvercommitPercent = 300

	cases := []struct {
		name  string
		req   Request
		nodes []Node
		want  string // placed(choices), or the error text
	}{
		{"three of three", Request{Size: GiB, Replicas: 3},
			[]Node{node("a", big("p0")), node("b", big("p0")), node("c", big("p0"))},
			"a/p0 b/p0 c/p0"},
		{"example error", Request{Size: GiB, Replicas: 3},
			[]Node{node("node-a", big("p0")), node("node-b", big("p0")), node("node-c", pool("p0", 10*GiB, 512*MiB))},
			"3 replicas need 3 nodes; eligible: node-a, node-b; node-c: pool p0 has 512MiB free, needs 1GiB"},
		{"node rejections sorted", Request{Size: GiB, Replicas: 3},
			[]Node{cordoned, node("node-a", big("p0")), down, node("node-b")},
			"3 replicas need 3 nodes; eligible: node-a; node-b: no pools; node-c: unresponsive; node-d: cordoned"},
		{"one replica singular", Request{Size: GiB, Replicas: 1}, []Node{down},
			"1 replica needs 1 node; eligible: none; node-c: unresponsive"},
		{"no nodes", Request{Size: GiB, Replicas: 2}, nil, "2 replicas need 2 nodes; eligible: none"},
		{"state unknown", Request{Size: GiB, Replicas: 1}, []Node{{UUID: "x", Name: "n", Pools: []Pool{big("p")}}},
			"1 replica needs 1 node; eligible: none; n: state unknown"},
		{"name falls back to uuid", Request{Size: GiB, Replicas: 1}, []Node{{UUID: "uuid-x", State: "joined", Pools: []Pool{big("p")}}},
			"uuid-x/p"},
		{"excluded", Request{Size: GiB, Replicas: 2, Exclude: []string{"uuid-a"}},
			[]Node{node("a", big("p0")), node("b", big("p0"))},
			"2 replicas need 2 nodes; eligible: b; a: already holds a replica of this volume"},
		{"excluded but cordoned says cordoned", Request{Size: GiB, Replicas: 1, Exclude: []string{"uuid-node-d"}},
			[]Node{cordoned}, "1 replica needs 1 node; eligible: none; node-d: cordoned"},
		{"node selector", Request{Size: GiB, Replicas: 2, NodeSelector: map[string]string{"zone": "a", "disk": "ssd"}},
			[]Node{withLabels(node("a", big("p0")), "zone", "a", "disk", "ssd"), withLabels(node("b", big("p0")), "zone", "b", "disk", "ssd"), node("c", big("p0"))},
			"2 replicas need 2 nodes; eligible: a; b: labels do not match zone=a; c: labels do not match disk=ssd,zone=a"},
		{"pool offline, others on the node not listed once one fits", Request{Size: GiB, Replicas: 2},
			[]Node{node("a", offline, big("p1")), node("b", offline)},
			"2 replicas need 2 nodes; eligible: a; b: pool p0 is faulted, not online"},
		{"pool selector", Request{Size: GiB, Replicas: 1, PoolSelector: map[string]string{"tier": "fast"}},
			[]Node{node("a", big("p0"), tierFast)}, "a/fast"},
		{"pool selector fails", Request{Size: GiB, Replicas: 1, PoolSelector: map[string]string{"tier": "fast"}},
			[]Node{node("a", big("p0"))}, "1 replica needs 1 node; eligible: none; a: pool p0 labels do not match tier=fast"},
		{"every pool listed", Request{Size: 2 * GiB, Replicas: 1},
			[]Node{node("a", pool("p1", GiB, GiB), offline)},
			"1 replica needs 1 node; eligible: none; a: pool p0 is faulted, not online; a: pool p1 has 1GiB capacity, needs 2GiB"},
		{"thick exact fit", Request{Size: GiB, Replicas: 1}, []Node{node("a", pool("p0", GiB, GiB))}, "a/p0"},
		{"thick cluster rounding fits", Request{Size: GiB + 1, Replicas: 1}, []Node{node("a", clustered)}, "a/p0"},
		{"thick cluster rounding short", Request{Size: GiB + 1, Replicas: 1}, []Node{node("a", clustered8)},
			"1 replica needs 1 node; eligible: none; a: pool p0 has 1028MiB free, needs 1032MiB"},
		{"thick capacity below size", Request{Size: 2 * GiB, Replicas: 1}, []Node{node("a", pool("p0", GiB, GiB))},
			"1 replica needs 1 node; eligible: none; a: pool p0 has 1GiB capacity, needs 2GiB"},
		{"thin needs 40 % free", Request{Size: GiB, Replicas: 1, Thin: true}, []Node{node("a", pool("p0", 10*GiB, 410*MiB))}, "a/p0"},
		{"thin start short", Request{Size: GiB, Replicas: 1, Thin: true}, []Node{node("a", pool("p0", 10*GiB, 409*MiB))},
			"1 replica needs 1 node; eligible: none; a: pool p0 has 409MiB free, needs 429496730B (40% of 1GiB, thin)"},
		{"thin start cluster rounding", Request{Size: GiB, Replicas: 1, Thin: true}, []Node{node("a", thinCl)},
			"1 replica needs 1 node; eligible: none; a: pool p0 has 412MiB free, needs 416MiB (40% of 1GiB, thin)"},
		{"thin capacity below size", Request{Size: 2 * GiB, Replicas: 1, Thin: true}, []Node{node("a", pool("p0", GiB, GiB))},
			"1 replica needs 1 node; eligible: none; a: pool p0 has 1GiB capacity, needs 2GiB"},
		{"thin over-commit", Request{Size: 2 * GiB, Replicas: 1, Thin: true}, []Node{node("a", committed)},
			"1 replica needs 1 node; eligible: none; a: pool p0 would be committed 260% (limit 250%)"},
		{"thin over-commit at limit", Request{Size: GiB, Replicas: 1, Thin: true}, []Node{node("a", committed)}, "a/p0"},
		{"thin over-commit rounds up", Request{Size: GiB + 1, Replicas: 1, Thin: true}, []Node{node("a", committed)},
			"1 replica needs 1 node; eligible: none; a: pool p0 would be committed 251% (limit 250%)"},
		{"thin over-commit own limit", Request{Size: 2 * GiB, Replicas: 1, Thin: true}, []Node{node("a", committed200)}, "a/p0"},
		{"thick ignores over-commit", Request{Size: 2 * GiB, Replicas: 1}, []Node{node("a", committed)}, "a/p0"},
		{"fault domains distinct", Request{Size: GiB, Replicas: 2},
			[]Node{withDomain(node("a", big("p0")), "r1"), withDomain(node("b", big("p0")), "r1"), withDomain(node("c", pool("p0", 100*GiB, 10*GiB)), "r2")},
			"a/p0 c/p0"},
		{"fault domains impossible", Request{Size: GiB, Replicas: 2},
			[]Node{withDomain(node("a", big("p0")), "r1"), withDomain(node("b", big("p0")), "r1")},
			"2 replicas need 2 nodes; eligible: a; b: fault domain r1 already used by a"},
		{"fault domains mixed", Request{Size: GiB, Replicas: 3},
			[]Node{withDomain(node("a", big("p0")), "r1"), withDomain(node("b", big("p0")), "r1"), node("c", big("p0")), node("d", big("p0"))},
			"a/p0 c/p0 d/p0"},
		{"fault domains with exclude", Request{Size: GiB, Replicas: 1, Exclude: []string{"uuid-a"}},
			[]Node{withDomain(node("a", big("p0")), "r1"), withDomain(node("b", big("p0")), "r1"), withDomain(node("c", pool("p0", 100*GiB, GiB)), "r2")},
			"c/p0"},
		{"fault domain taken by exclude", Request{Size: GiB, Replicas: 1, Exclude: []string{"uuid-a"}},
			[]Node{withDomain(node("a", big("p0")), "r1"), withDomain(node("b", big("p0")), "r1")},
			"1 replica needs 1 node; eligible: none; a: already holds a replica of this volume; b: fault domain r1 already used by a, which holds a replica of this volume"},
		{"more free wins", Request{Size: GiB, Replicas: 1},
			[]Node{node("a", pool("p0", 100*GiB, 50*GiB)), node("b", pool("p0", 100*GiB, 60*GiB))}, "b/p0"},
		{"best pool on the node", Request{Size: GiB, Replicas: 1},
			[]Node{node("a", pool("p0", 100*GiB, 50*GiB), pool("p1", 100*GiB, 60*GiB))}, "a/p1"},
		{"ties by node name then pool name", Request{Size: GiB, Replicas: 2},
			[]Node{node("b", big("p1"), big("p0")), node("a", big("z"), big("y")), node("c", big("p0"))}, "a/y b/p0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewSource(1))
			for i := 0; i < 5; i++ {
				nodes := tc.nodes
				if i > 0 {
					nodes = shuffled(r, tc.nodes)
				}
				got, err := Place(tc.req, nodes)
				s := placed(got)
				if err != nil {
					var np *NotPlaceableError
					if !errors.As(err, &np) {
						t.Fatalf("error %v is not a *NotPlaceableError", err)
					}
					if got != nil {
						t.Fatalf("choices %v with error", got)
					}
					s = err.Error()
				} else if len(got) != tc.req.Replicas {
					t.Fatalf("%d choices, want %d", len(got), tc.req.Replicas)
				}
				if s != tc.want {
					t.Fatalf("try %d:\n got %s\nwant %s", i, s, tc.want)
				}
			}
		})
	}
}

// The weights: 25 replicas, 40 free, 35 commitment.
func TestPlaceOrderingWeights(t *testing.T) {
	// a: fewest replicas (25) only; b: most free (40) only. b wins.
	a := pool("p0", 100*GiB, 2*GiB)
	b := pool("p0", 100*GiB, 100*GiB)
	b.Replicas = 10
	a.Committed, b.Committed = 50*GiB, 50*GiB
	got, err := Place(Request{Size: GiB, Replicas: 1}, []Node{node("a", a), node("b", b)})
	if err != nil || got[0].Node != "b" {
		t.Fatalf("got %v, %v; want b (free space 40 %% beats replicas 25 %%)", got, err)
	}
	// a: lowest commitment (35) only; b: fewest replicas (25) only. a wins.
	a = pool("p0", 100*GiB, 100*GiB)
	b = pool("p0", 100*GiB, 100*GiB)
	a.Replicas, b.Replicas = 5, 0
	a.Committed, b.Committed = 0, 100*GiB
	got, err = Place(Request{Size: GiB, Replicas: 1, Thin: true}, []Node{node("a", a), node("b", b)})
	if err != nil || got[0].Node != "a" {
		t.Fatalf("got %v, %v; want a (commitment 35 %% beats replicas 25 %%)", got, err)
	}
	// Score values: the best in every term scores 100M; the worst 0.
	best := pool("p0", 100*GiB, 100*GiB)
	worst := pool("p1", 100*GiB, 0)
	worst.Replicas, worst.Committed = 4, 100*GiB
	all := []Pool{best, worst}
	if s := Score(best, all); s != 100_000_000 {
		t.Fatalf("Score(best) = %d", s)
	}
	if s := Score(worst, all); s != 0 {
		t.Fatalf("Score(worst) = %d", s)
	}
	half := pool("p2", 100*GiB, 50*GiB)
	half.Replicas, half.Committed = 2, 50*GiB
	if s := Score(half, append(all, half)); s != 50_000_000 {
		t.Fatalf("Score(half) = %d", s)
	}
}

func TestPlaceBadRequest(t *testing.T) {
	nodes := []Node{node("a", pool("p0", GiB, GiB))}
	for _, req := range []Request{{Size: 0, Replicas: 1}, {Size: GiB, Replicas: 0}, {Size: GiB, Replicas: -1}} {
		_, err := Place(req, nodes)
		var np *NotPlaceableError
		if err == nil || errors.As(err, &np) {
			t.Errorf("Place(%+v) = %v; want an ordinary error", req, err)
		}
	}
	_, err := Place(Request{Size: GiB, Replicas: 1}, append(nodes, nodes[0]))
	if err == nil || !strings.Contains(err.Error(), "appears twice") {
		t.Errorf("duplicate UUIDs: %v", err)
	}
}

func TestPlaceNexus(t *testing.T) {
	a, b, c := node("a"), node("b"), node("c")
	a.Nexuses, b.Nexuses, c.Nexuses = 3, 1, 1
	cordB := b
	cordB.Cordoned = true
	downC := c
	downC.State = "unresponsive"
	cases := []struct {
		name      string
		preferred string
		replicas  []string
		nodes     []Node
		want      string // node name, or "error: <substring>"
		rej       string
	}{
		{"preferred eligible by name", "a", []string{"uuid-b", "uuid-c"}, []Node{a, b, c}, "a", ""},
		{"preferred eligible by uuid", "uuid-a", []string{"uuid-b", "uuid-c"}, []Node{a, b, c}, "a", ""},
		{"preferred cordoned falls back", "b", []string{"uuid-a", "uuid-b", "uuid-c"}, []Node{a, cordB, c}, "c", "b: cordoned"},
		{"preferred unknown", "zz", []string{"uuid-a", "uuid-c"}, []Node{a, b, c}, "c", "zz: not a known node"},
		{"fewest nexuses, ties by name", "", []string{"uuid-a", "uuid-b", "uuid-c"}, []Node{c, b, a}, "b", ""},
		{"ineligible replica nodes named", "", []string{"uuid-a", "uuid-b", "uuid-c"}, []Node{a, cordB, downC}, "a", "b: cordoned; c: unresponsive"},
		{"one replica co-located over preferred", "b", []string{"uuid-a"}, []Node{a, b, c}, "a",
			"b: the volume's only replica is on a, so its nexus goes there"},
		{"one replica co-located", "", []string{"uuid-a"}, []Node{a, b, c}, "a", ""},
		{"one replica node down: preferred", "c", []string{"uuid-b"}, []Node{a, cordB, c}, "c", "b: cordoned"},
		{"one replica node down: fewest", "", []string{"uuid-b"}, []Node{a, cordB, c}, "c", "b: cordoned"},
		{"no replica node eligible: any node", "", []string{"uuid-b", "uuid-c"}, []Node{a, cordB, downC}, "a", "b: cordoned; c: unresponsive"},
		{"nothing eligible", "a", []string{"uuid-b"}, []Node{cordB, downC, func() Node { n := a; n.State = "stopped"; return n }()},
			"error: no node is joined and uncordoned: a: stopped; b: cordoned; c: unresponsive", "a: stopped; b: cordoned"},
		{"no nodes", "", nil, nil, "error: no node is joined and uncordoned; uncordon", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewSource(2))
			for i := 0; i < 4; i++ {
				nodes := tc.nodes
				reps := append([]string(nil), tc.replicas...)
				if i > 0 {
					nodes = shuffled(r, tc.nodes)
					r.Shuffle(len(reps), func(x, y int) { reps[x], reps[y] = reps[y], reps[x] })
				}
				ch, rej, err := PlaceNexus(tc.preferred, reps, nodes)
				var rs []string
				for _, x := range rej {
					rs = append(rs, x.String())
				}
				if got := strings.Join(rs, "; "); got != tc.rej {
					t.Fatalf("rejections %q, want %q", got, tc.rej)
				}
				if want, ok := strings.CutPrefix(tc.want, "error: "); ok {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("err %v, want it to contain %q", err, want)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if ch.Node != tc.want || ch.NodeUUID != "uuid-"+tc.want || ch.Pool != "" {
					t.Fatalf("got %+v, want %s", ch, tc.want)
				}
			}
		})
	}
}

// fits is an independent, arbitrary-precision statement of the capacity
// rule, for the property test.
func fits(p Pool, req Request) bool {
	bi := func(v uint64) *big.Int { return new(big.Int).SetUint64(v) }
	unit := p.ClusterSize
	if unit == 0 {
		unit = 1
	}
	roundUp := func(x *big.Int) *big.Int {
		u := bi(unit)
		q := new(big.Int).Add(x, new(big.Int).Sub(u, big.NewInt(1)))
		q.Div(q, u)
		return q.Mul(q, u)
	}
	if p.Capacity < req.Size {
		return false
	}
	if !req.Thin {
		return bi(p.Free).Cmp(roundUp(bi(req.Size))) >= 0
	}
	start := new(big.Int).Mul(bi(req.Size), big.NewInt(40))
	start.Add(start, big.NewInt(99)).Div(start, big.NewInt(100))
	if bi(p.Free).Cmp(roundUp(start)) < 0 {
		return false
	}
	limit := uint64(p.OvercommitPercent)
	if limit == 0 {
		limit = 250
	}
	lhs := new(big.Int).Add(bi(p.Committed), bi(req.Size))
	lhs.Mul(lhs, big.NewInt(100))
	return lhs.Cmp(new(big.Int).Mul(bi(p.Capacity), bi(limit))) <= 0
}

func matches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// usablePools lists, for the property test, the pools of n a replica may go
// to, from the rules stated independently of the implementation.
func usablePools(req Request, n Node) []string {
	if n.State != "joined" || n.Cordoned || !matches(req.NodeSelector, n.Labels) {
		return nil
	}
	for _, u := range req.Exclude {
		if u == n.UUID {
			return nil
		}
	}
	var out []string
	for _, p := range n.Pools {
		if p.State == "online" && matches(req.PoolSelector, p.Labels) && fits(p, req) {
			out = append(out, p.Name)
		}
	}
	return out
}

// feasible reports by brute force whether req.Replicas nodes with usable
// pools exist in distinct fault domains, given those used by Exclude.
func feasible(req Request, nodes []Node) bool {
	used := map[string]bool{}
	for _, n := range nodes {
		for _, u := range req.Exclude {
			if u == n.UUID && n.FaultDomain != "" {
				used[n.FaultDomain] = true
			}
		}
	}
	var ok []Node
	for _, n := range nodes {
		if len(usablePools(req, n)) > 0 {
			ok = append(ok, n)
		}
	}
	var try func(i, left int, used map[string]bool) bool
	try = func(i, left int, used map[string]bool) bool {
		if left == 0 {
			return true
		}
		if i == len(ok) {
			return false
		}
		if d := ok[i].FaultDomain; d == "" || !used[d] {
			if d != "" {
				used[d] = true
			}
			if try(i+1, left-1, used) {
				return true
			}
			delete(used, d)
		}
		return try(i+1, left, used)
	}
	return try(0, req.Replicas, used)
}

func randomCluster(r *rand.Rand) (Request, []Node) {
	pick := func(s ...string) string { return s[r.Intn(len(s))] }
	sizes := []uint64{MiB, 64 * MiB, GiB, 3 * GiB, 10 * GiB, GiB + 12345}
	req := Request{Size: sizes[r.Intn(len(sizes))], Replicas: 1 + r.Intn(4), Thin: r.Intn(2) == 0}
	if r.Intn(4) == 0 {
		req.NodeSelector = map[string]string{"zone": pick("a", "b")}
	}
	if r.Intn(4) == 0 {
		req.PoolSelector = map[string]string{"tier": pick("fast", "slow")}
	}
	nodes := make([]Node, r.Intn(9))
	for i := range nodes {
		n := Node{UUID: fmt.Sprintf("uuid-%d", i), Name: fmt.Sprintf("n%d", i),
			State: pick("joined", "joined", "joined", "unresponsive"), Cordoned: r.Intn(6) == 0,
			Labels: map[string]string{"zone": pick("a", "b")}, Nexuses: r.Intn(3)}
		if r.Intn(2) == 0 {
			n.FaultDomain = pick("", "r1", "r2", "r3")
		}
		if r.Intn(2) == 0 {
			n.Name = fmt.Sprintf("n%d", r.Intn(3)) // repeated names: ties by UUID
		}
		for j := r.Intn(3); j > 0; j-- {
			capacity := uint64(1+r.Intn(20)) * GiB
			p := Pool{Name: fmt.Sprintf("p%d", j), UUID: fmt.Sprintf("pu-%d-%d", i, j),
				State: pick("online", "online", "online", "degraded"), Capacity: capacity,
				Free: uint64(r.Int63n(int64(capacity) + 1)), Committed: uint64(r.Int63n(int64(3 * capacity))),
				OvercommitPercent: uint32(r.Intn(2) * 300), ClusterSize: []uint64{0, 512, 4 * MiB}[r.Intn(3)],
				Labels: map[string]string{"tier": pick("fast", "slow")}, Replicas: r.Intn(5)}
			n.Pools = append(n.Pools, p)
		}
		nodes[i] = n
	}
	for i := range nodes {
		if r.Intn(5) == 0 {
			req.Exclude = append(req.Exclude, nodes[i].UUID)
		}
	}
	return req, nodes
}

func TestPlaceProperties(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewSource(seed))
	placedOK, failed := 0, 0
	for iter := 0; iter < 3000; iter++ {
		req, nodes := randomCluster(r)
		got, err := Place(req, nodes)
		again, err2 := Place(req, shuffled(r, nodes))
		if !reflect.DeepEqual(got, again) || fmt.Sprint(err) != fmt.Sprint(err2) {
			t.Fatalf("iter %d: input order changed the output: %v %v / %v %v", iter, got, err, again, err2)
		}
		if err != nil {
			var np *NotPlaceableError
			if !errors.As(err, &np) {
				t.Fatalf("iter %d: %v", iter, err)
			}
			if feasible(req, nodes) {
				t.Fatalf("iter %d: Place failed (%v) but a placement exists\nreq %+v\nnodes %+v", iter, err, req, nodes)
			}
			if len(np.Eligible) >= req.Replicas {
				t.Fatalf("iter %d: %d eligible for %d replicas", iter, len(np.Eligible), req.Replicas)
			}
			failed++
			continue
		}
		placedOK++
		if len(got) != req.Replicas {
			t.Fatalf("iter %d: %d choices for %d replicas", iter, len(got), req.Replicas)
		}
		byUUID := map[string]Node{}
		for _, n := range nodes {
			byUUID[n.UUID] = n
		}
		domains := map[string]bool{}
		for _, u := range req.Exclude {
			if d := byUUID[u].FaultDomain; d != "" {
				domains[d] = true
			}
		}
		seen := map[string]bool{}
		for _, c := range got {
			n, ok := byUUID[c.NodeUUID]
			if !ok || seen[c.NodeUUID] {
				t.Fatalf("iter %d: choice %+v unknown or repeated", iter, c)
			}
			seen[c.NodeUUID] = true
			if d := n.FaultDomain; d != "" {
				if domains[d] {
					t.Fatalf("iter %d: fault domain %s used twice: %v", iter, d, got)
				}
				domains[d] = true
			}
			okPool := false
			for _, p := range usablePools(req, n) {
				okPool = okPool || p == c.Pool
			}
			if !okPool || c.Node != n.Name {
				t.Fatalf("iter %d: choice %+v breaks a rule\nreq %+v\nnode %+v", iter, c, req, n)
			}
		}
	}
	if placedOK == 0 || failed == 0 {
		t.Fatalf("random clusters too one-sided: %d placed, %d failed", placedOK, failed)
	}
}

// TestPlaceAvoid: a node being replaced is never chosen, but its fault
// domain is free for the replacement; an excluded node's domain is not.
func TestPlaceAvoid(t *testing.T) {
	mk := func(name, domain string) Node {
		n := node(name, pool("p", 1<<30, 1<<30))
		n.FaultDomain = domain
		return n
	}
	nodes := []Node{mk("a", "/r1"), mk("b", "/r2"), mk("c", "/r3"), mk("d", "/r3")}
	req := Request{Size: 64 << 20, Replicas: 1, Exclude: []string{"uuid-a", "uuid-b"}, Avoid: []string{"uuid-c"}}
	got, err := Place(req, nodes)
	if err != nil || len(got) != 1 || got[0].NodeUUID != "uuid-d" {
		t.Fatalf("replacing c: %v %v", got, err)
	}
	req.Exclude, req.Avoid = []string{"uuid-a", "uuid-b", "uuid-c"}, nil
	if _, err := Place(req, nodes); err == nil {
		t.Fatal("placed in the domain of an excluded node")
	}
}
