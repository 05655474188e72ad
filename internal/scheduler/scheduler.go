// Package scheduler places a volume's replicas on pools and its nexus on a
// node. It is a pure function of its input: no I/O, no clock, no randomness,
// no global state, and the order of the input slices does not change the
// output. Every node or pool that cannot take a replica gets a Rejection
// with a reason an operator can act on.
//
// Placement is filter, then score:
//
//   - Node filters, in order (the first that fails is the reason): state is
//     "joined"; not cordoned; not in Request.Exclude; every NodeSelector pair
//     is among the node's labels; the node has at least one pool.
//   - Pool filters, in order: state is "online"; every PoolSelector pair is
//     among the pool's labels; capacity (see Place).
//   - One replica per node: each node that passes offers its best pool.
//   - Fault domains: the chosen nodes are in distinct fault domains, a node
//     with no declared domain ("") being a domain of its own. Domains of the
//     Exclude nodes count as used. With no domain declared anywhere the rule
//     is simply one replica per node.
//   - Order: by score (see Score), best first; ties by node name, then node
//     UUID, then pool name, then pool UUID. Nodes are taken greedily in that
//     order, skipping a node whose domain is already used. Since every node
//     uses only its own pools, the greedy pick finds a placement whenever one
//     exists: it takes the best node of each domain, best domains first.
package scheduler

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sort"
	"strings"

	"github.com/nexstor/nexstor/internal/units"
)

// Node is one storage node as the scheduler sees it. Nodes are identified by
// UUID, which must be unique within one call; Name is what reasons print.
type Node struct {
	// UUID identifies the node (the member UUID).
	UUID string
	// Name is the node's name, used in reasons and for tie-breaking; UUID
	// stands in for it when empty.
	Name string
	// Rank is the member's rank; the scheduler does not use it.
	Rank uint32
	// State is the member state; only "joined" is eligible.
	State string
	// Cordoned nodes get no new replicas and no new nexuses.
	Cordoned bool
	// FaultDomain names the failure domain (rack, zone); "" declares none,
	// which makes the node a domain of its own.
	FaultDomain string
	// Labels are matched by Request.NodeSelector.
	Labels map[string]string
	// Pools are the node's pools.
	Pools []Pool
	// Nexuses is the number of nexuses the node hosts (for PlaceNexus).
	Nexuses int
}

// Pool is one pool on a node. All sizes are in bytes.
type Pool struct {
	// Name is the pool's name, unique on its node; reasons print it.
	Name string
	// UUID identifies the pool; it breaks ties between equal names.
	UUID string
	// State is the pool state; only "online" is eligible.
	State string
	// Capacity is the pool's usable size in bytes.
	Capacity uint64
	// Free is the unallocated space in bytes.
	Free uint64
	// Committed is the sum of the sizes of the pool's replicas in bytes,
	// thin replicas counted at their full size.
	Committed uint64
	// OvercommitPercent limits thin over-commit: Committed plus a new thin
	// replica's size may reach at most this percentage of Capacity.
	// 0 means DefaultOvercommitPercent.
	OvercommitPercent uint32
	// ClusterSize is the pool's allocation unit in bytes; space needs are
	// rounded up to it. 0 is treated as 1.
	ClusterSize uint64
	// Labels are matched by Request.PoolSelector.
	Labels map[string]string
	// Replicas is the number of replicas in the pool, of all volumes.
	Replicas int
}

// DefaultOvercommitPercent is the thin over-commit limit of a pool that sets
// none: Committed may reach 250 % of Capacity.
const DefaultOvercommitPercent = 250

// ThinStartPercent is the share of a thin replica's size that must be free
// in the pool for it to be placed there, so that it has room to start.
const ThinStartPercent = 40

// Request asks for replicas of one volume.
type Request struct {
	// Size is the replica size in bytes; it must be > 0.
	Size uint64
	// Replicas is how many replicas to place now; it must be > 0.
	Replicas int
	// Thin replicas allocate on write; see Place for the capacity rule.
	Thin bool
	// NodeSelector: every pair must be among the node's labels.
	NodeSelector map[string]string
	// PoolSelector: every pair must be among the pool's labels.
	PoolSelector map[string]string
	// Exclude lists the UUIDs of nodes that already hold a replica of this
	// volume (when adding one): they are never chosen, and their fault
	// domains count as used (an Exclude UUID absent from the nodes passed to
	// Place has no known domain and uses none).
	Exclude []string
	// Avoid lists the UUIDs of nodes that are never chosen but whose fault
	// domains stay free: nodes of replicas being replaced (lost, or on a
	// draining node), which the new replica takes over from.
	Avoid []string
}

// Choice is where one replica (or, from PlaceNexus, the nexus) goes.
type Choice struct {
	// NodeUUID is the chosen node's UUID.
	NodeUUID string
	// Node is the chosen node's name.
	Node string
	// Pool is the chosen pool's name; empty from PlaceNexus.
	Pool string
}

// Rejection says why a node or one of its pools could not take a replica.
type Rejection struct {
	// Node is the node's name (its UUID when it has no name).
	Node string
	// Pool is the pool's name; "" when the whole node was rejected.
	Pool string
	// Reason is a complete phrase that names the pool when Pool is set,
	// such as "cordoned" or "pool p0 has 512MiB free, needs 1GiB".
	Reason string
}

// String formats the rejection as "node: reason".
func (r Rejection) String() string { return r.Node + ": " + r.Reason }

// NotPlaceableError is returned by Place when fewer than Want nodes can take
// a replica. Eligible lists, sorted, the names of the nodes that could;
// Rejections lists every node that could not and why, sorted by node, then
// pool. For a node rejected for its pools, every pool is listed; pools that
// failed on a node that had another usable pool are not, as they did not
// cause the shortfall.
type NotPlaceableError struct {
	Want       int
	Eligible   []string
	Rejections []Rejection
}

// Error reads, for example, "3 replicas need 3 nodes; eligible: node-a,
// node-b; node-c: pool p0 has 512MiB free, needs 1GiB; node-d: cordoned".
func (e *NotPlaceableError) Error() string {
	var b strings.Builder
	if e.Want == 1 {
		b.WriteString("1 replica needs 1 node")
	} else {
		fmt.Fprintf(&b, "%d replicas need %d nodes", e.Want, e.Want)
	}
	b.WriteString("; eligible: ")
	if len(e.Eligible) == 0 {
		b.WriteString("none")
	} else {
		b.WriteString(strings.Join(e.Eligible, ", "))
	}
	for _, r := range e.Rejections {
		b.WriteString("; ")
		b.WriteString(r.String())
	}
	return b.String()
}

// scoreScale is the resolution of each score term: millionths.
const scoreScale = 1_000_000

// Score returns the weighted score of one pool among candidate pools, higher
// being better, in [0, 100_000_000]:
//
//	25·(1 − R/Rmax) + 40·(F/Fmax) + 35·(1 − C/Cmax)
//
// where R is the pool's replica count, F its free bytes, C its commitment
// ratio Committed/Capacity, and Rmax, Fmax, Cmax the largest of each among
// the candidates (a term whose maximum is 0 counts as 1 for R and C, 0 for
// F). Each ratio is taken in millionths with integer floor division, so the
// result is exact and the same on every platform. Place takes as candidates
// the pools of all nodes that pass every filter.
func Score(p Pool, candidates []Pool) uint64 {
	m := maxima(candidates)
	return score(p, m)
}

type maxes struct{ replicas, free, ratio uint64 }

func maxima(pools []Pool) maxes {
	var m maxes
	for _, p := range pools {
		m.replicas = max(m.replicas, uint64(max(p.Replicas, 0)))
		m.free = max(m.free, p.Free)
		m.ratio = max(m.ratio, commitRatio(p))
	}
	return m
}

// commitRatio is Committed/Capacity in millionths (saturating).
func commitRatio(p Pool) uint64 {
	if p.Capacity == 0 {
		return math.MaxUint64
	}
	return mulDiv(p.Committed, scoreScale, p.Capacity)
}

func score(p Pool, m maxes) uint64 {
	r := uint64(scoreScale)
	if m.replicas > 0 {
		r = scoreScale - mulDiv(min(uint64(max(p.Replicas, 0)), m.replicas), scoreScale, m.replicas)
	}
	var f uint64
	if m.free > 0 {
		f = mulDiv(min(p.Free, m.free), scoreScale, m.free)
	}
	c := uint64(scoreScale)
	if m.ratio > 0 {
		c = scoreScale - mulDiv(min(commitRatio(p), m.ratio), scoreScale, m.ratio)
	}
	return 25*r + 40*f + 35*c
}

// mulDiv returns a·b/c rounded down, saturating at MaxUint64; c > 0.
func mulDiv(a, b, c uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi >= c {
		return math.MaxUint64
	}
	q, _ := bits.Div64(hi, lo, c)
	return q
}

// roundUp rounds n up to a multiple of unit (0 = 1), saturating.
func roundUp(n, unit uint64) uint64 {
	if unit <= 1 {
		return n
	}
	r := n % unit
	if r == 0 {
		return n
	}
	if n > math.MaxUint64-(unit-r) {
		return math.MaxUint64
	}
	return n + unit - r
}

// size formats bytes exactly, so that a printed size parses back.
func size(n uint64) string {
	if n > math.MaxInt64 {
		return fmt.Sprintf("%dB", n)
	}
	return units.FormatSizeExact(int64(n))
}

// CheckCapacity returns "" when a replica of req.Size (and req.Thin) fits in
// p, or the reason it does not, naming the pool and the numbers. Always
// Capacity ≥ Size. Thick: Free ≥ Size rounded up to the cluster size. Thin:
// Free ≥ 40 % of Size (rounded up to a byte, then to the cluster size), and
// Committed + Size ≤ Capacity × OvercommitPercent / 100.
func CheckCapacity(p Pool, req Request) string {
	if p.Capacity < req.Size {
		return fmt.Sprintf("pool %s has %s capacity, needs %s", p.Name, size(p.Capacity), size(req.Size))
	}
	if !req.Thin {
		need := roundUp(req.Size, p.ClusterSize)
		if p.Free < need {
			return fmt.Sprintf("pool %s has %s free, needs %s", p.Name, size(p.Free), size(need))
		}
		return ""
	}
	start := mulDiv(req.Size, ThinStartPercent, 100)
	if mulDivRem(req.Size, ThinStartPercent, 100) {
		start++
	}
	need := roundUp(start, p.ClusterSize)
	if p.Free < need {
		return fmt.Sprintf("pool %s has %s free, needs %s (%d%% of %s, thin)",
			p.Name, size(p.Free), size(need), ThinStartPercent, size(req.Size))
	}
	limit := uint64(p.OvercommitPercent)
	if limit == 0 {
		limit = DefaultOvercommitPercent
	}
	// (Committed + Size)·100 ≤ Capacity·limit, in 128 bits.
	sum, carry := bits.Add64(p.Committed, req.Size, 0)
	lhsHi, lhsLo := bits.Mul64(sum, 100)
	lhsHi += carry * 100
	rhsHi, rhsLo := bits.Mul64(p.Capacity, limit)
	if lhsHi < rhsHi || (lhsHi == rhsHi && lhsLo <= rhsLo) {
		return ""
	}
	// Percent rounded up, so that any excess prints above the limit.
	pct := "beyond any limit" // Committed + Size overflows 64 bits
	if carry == 0 {
		q := mulDiv(sum, 100, p.Capacity)
		if mulDivRem(sum, 100, p.Capacity) {
			q++
		}
		pct = fmt.Sprintf("%d%%", q)
	}
	return fmt.Sprintf("pool %s would be committed %s (limit %d%%)", p.Name, pct, limit)
}

// mulDivRem reports whether a·b/c leaves a remainder; c > 0 and a·b/c fits.
func mulDivRem(a, b, c uint64) bool {
	hi, lo := bits.Mul64(a, b)
	if hi >= c {
		return false
	}
	_, rem := bits.Div64(hi, lo, c)
	return rem != 0
}

func nodeName(n *Node) string {
	if n.Name != "" {
		return n.Name
	}
	return n.UUID
}

// selectorMismatch returns the selector pairs that labels lack, sorted and
// joined with ",", or "" when all match.
func selectorMismatch(sel, labels map[string]string) string {
	var miss []string
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			miss = append(miss, k+"="+v)
		}
	}
	sort.Strings(miss)
	return strings.Join(miss, ",")
}

// nodeReject returns why the node cannot take anything new ("" if it can):
// state, then cordon.
func nodeReject(n *Node) string {
	if n.State != "joined" {
		if n.State == "" {
			return "state unknown"
		}
		return n.State
	}
	if n.Cordoned {
		return "cordoned"
	}
	return ""
}

type candidate struct {
	node  *Node
	pools []*Pool // pools that passed, best first
	score uint64  // best pool's score
}

// Place chooses req.Replicas (node, pool) pairs, one per node, in distinct
// fault domains, best first (see the package comment for filters and order,
// Score for the order and CheckCapacity for the capacity rule).
//
// It returns exactly req.Replicas choices, or a *NotPlaceableError listing
// the eligible nodes and every rejection, or an ordinary error for a bad
// request (Size 0, Replicas < 1) or input (a node UUID given twice). The
// output does not depend on the order of nodes, pools, or Exclude.
func Place(req Request, nodes []Node) ([]Choice, error) {
	if req.Size == 0 {
		return nil, errors.New("scheduler: volume size is 0; give a size in bytes > 0")
	}
	if req.Replicas < 1 {
		return nil, fmt.Errorf("scheduler: %d replicas requested; ask for at least 1", req.Replicas)
	}
	byUUID := make(map[string]*Node, len(nodes))
	for i := range nodes {
		n := &nodes[i]
		if _, dup := byUUID[n.UUID]; dup {
			return nil, fmt.Errorf("scheduler: node UUID %q appears twice in the input; node UUIDs must be unique", n.UUID)
		}
		byUUID[n.UUID] = n
	}
	excluded := make(map[string]bool, len(req.Exclude))
	// used maps a declared fault domain to the name of the node using it.
	used := map[string]string{}
	for _, u := range req.Avoid {
		excluded[u] = true
	}
	for _, u := range sortedCopy(req.Exclude) {
		excluded[u] = true
		if n := byUUID[u]; n != nil && n.FaultDomain != "" {
			if _, ok := used[n.FaultDomain]; !ok {
				used[n.FaultDomain] = nodeName(n) + ", which holds a replica of this volume"
			}
		}
	}

	var rejections []Rejection
	var cands []*candidate
	var all []Pool
	for i := range nodes {
		n := &nodes[i]
		name := nodeName(n)
		reason := nodeReject(n)
		if reason == "" && excluded[n.UUID] {
			reason = "already holds a replica of this volume"
		}
		if reason == "" {
			if miss := selectorMismatch(req.NodeSelector, n.Labels); miss != "" {
				reason = "labels do not match " + miss
			}
		}
		if reason == "" && len(n.Pools) == 0 {
			reason = "no pools"
		}
		if reason != "" {
			rejections = append(rejections, Rejection{Node: name, Reason: reason})
			continue
		}
		c := &candidate{node: n}
		var poolRej []Rejection
		for j := range n.Pools {
			p := &n.Pools[j]
			var why string
			switch {
			case p.State != "online":
				st := p.State
				if st == "" {
					st = "in an unknown state"
				}
				why = fmt.Sprintf("pool %s is %s, not online", p.Name, st)
			default:
				if miss := selectorMismatch(req.PoolSelector, p.Labels); miss != "" {
					why = fmt.Sprintf("pool %s labels do not match %s", p.Name, miss)
				} else {
					why = CheckCapacity(*p, req)
				}
			}
			if why != "" {
				poolRej = append(poolRej, Rejection{Node: name, Pool: p.Name, Reason: why})
				continue
			}
			c.pools = append(c.pools, p)
			all = append(all, *p)
		}
		if len(c.pools) == 0 {
			rejections = append(rejections, poolRej...)
			continue
		}
		cands = append(cands, c)
	}

	m := maxima(all)
	for _, c := range cands {
		sort.Slice(c.pools, func(i, j int) bool {
			a, b := c.pools[i], c.pools[j]
			if sa, sb := score(*a, m), score(*b, m); sa != sb {
				return sa > sb
			}
			if a.Name != b.Name {
				return a.Name < b.Name
			}
			return a.UUID < b.UUID
		})
		c.score = score(*c.pools[0], m)
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.score != b.score {
			return a.score > b.score
		}
		if na, nb := nodeName(a.node), nodeName(b.node); na != nb {
			return na < nb
		}
		if a.node.UUID != b.node.UUID {
			return a.node.UUID < b.node.UUID
		}
		pa, pb := a.pools[0], b.pools[0]
		if pa.Name != pb.Name {
			return pa.Name < pb.Name
		}
		return pa.UUID < pb.UUID
	})

	var choices []Choice
	var eligible []string
	for _, c := range cands {
		if len(choices) == req.Replicas {
			break
		}
		name := nodeName(c.node)
		if d := c.node.FaultDomain; d != "" {
			if by, taken := used[d]; taken {
				rejections = append(rejections, Rejection{Node: name,
					Reason: fmt.Sprintf("fault domain %s already used by %s", d, by)})
				continue
			}
			used[d] = name
		}
		choices = append(choices, Choice{NodeUUID: c.node.UUID, Node: name, Pool: c.pools[0].Name})
		eligible = append(eligible, name)
	}
	if len(choices) == req.Replicas {
		return choices, nil
	}
	sort.Strings(eligible)
	sortRejections(rejections)
	return nil, &NotPlaceableError{Want: req.Replicas, Eligible: eligible, Rejections: rejections}
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

func sortRejections(r []Rejection) {
	sort.SliceStable(r, func(i, j int) bool {
		if r[i].Node != r[j].Node {
			return r[i].Node < r[j].Node
		}
		if r[i].Pool != r[j].Pool {
			return r[i].Pool < r[j].Pool
		}
		return r[i].Reason < r[j].Reason
	})
}

// PlaceNexus chooses the node for a volume's nexus. A node is eligible when
// it is joined and not cordoned. In order:
//
//  1. a 1-replica volume goes to its replica's node when that is eligible
//     (the nexus then reaches its only replica locally);
//  2. preferred (a node name or UUID; "" for none) when it is eligible;
//  3. among the eligible nodes holding a replica (replicaNodes, UUIDs), the
//     one with the fewest nexuses, ties by name, then UUID;
//  4. when no replica node is eligible (all cordoned, say), any eligible
//     node by the same order, so that the volume can still be published.
//
// The Choice has an empty Pool. The rejections say why the preferred node
// was passed over and why each ineligible replica node was, sorted by node;
// they are returned with the error too. The error, when no node at all is
// eligible, names every rejection. Input order does not matter.
func PlaceNexus(preferred string, replicaNodes []string, nodes []Node) (Choice, []Rejection, error) {
	byUUID := make(map[string]*Node, len(nodes))
	for i := range nodes {
		byUUID[nodes[i].UUID] = &nodes[i]
	}
	var rej []Rejection
	choose := func(n *Node) Choice { return Choice{NodeUUID: n.UUID, Node: nodeName(n)} }

	var pref *Node
	if preferred != "" {
		pref = byUUID[preferred]
		if pref == nil {
			// By name; when names repeat, the smallest UUID, for determinism.
			for i := range nodes {
				n := &nodes[i]
				if n.Name == preferred && (pref == nil || n.UUID < pref.UUID) {
					pref = n
				}
			}
		}
	}

	replicaSet := map[string]bool{}
	var reps []*Node
	for _, u := range sortedCopy(replicaNodes) {
		if replicaSet[u] {
			continue
		}
		replicaSet[u] = true
		n := byUUID[u]
		if n == nil {
			rej = append(rej, Rejection{Node: u, Reason: "holds a replica but is not a known node"})
			continue
		}
		if why := nodeReject(n); why != "" {
			rej = append(rej, Rejection{Node: nodeName(n), Reason: why})
			continue
		}
		reps = append(reps, n)
	}

	// prefReason records why the preferred node is passed over, if it is.
	prefReason := func(why string) {
		if preferred == "" {
			return
		}
		name := preferred
		if pref != nil {
			name = nodeName(pref)
			for _, r := range rej {
				if r.Node == name && r.Pool == "" {
					return // already rejected as a replica node
				}
			}
		}
		rej = append(rej, Rejection{Node: name, Reason: why})
	}

	var pick *Node
	switch {
	case len(replicaSet) == 1 && len(reps) == 1:
		pick = reps[0]
		if pref != nil && pref != pick {
			prefReason("the volume's only replica is on " + nodeName(pick) + ", so its nexus goes there")
		} else if pref == nil {
			prefReason("not a known node")
		}
	case pref != nil && nodeReject(pref) == "":
		pick = pref
	default:
		if pref == nil {
			prefReason("not a known node")
		} else {
			prefReason(nodeReject(pref))
		}
		pick = fewestNexuses(reps)
		if pick == nil {
			var all []*Node
			for i := range nodes {
				if nodeReject(&nodes[i]) == "" {
					all = append(all, &nodes[i])
				}
			}
			pick = fewestNexuses(all)
		}
	}
	sortRejections(rej)
	if pick == nil {
		parts := make([]string, 0, len(rej)+len(nodes))
		for _, r := range rej {
			parts = append(parts, r.String())
		}
		// Name every node that is not eligible, not only the replica nodes.
		for i := range nodes {
			n := &nodes[i]
			if replicaSet[n.UUID] || n == pref {
				continue
			}
			parts = append(parts, nodeName(n)+": "+nodeReject(n))
		}
		sort.Strings(parts[len(rej):])
		msg := "no node is joined and uncordoned"
		if len(parts) > 0 {
			msg += ": " + strings.Join(parts, "; ")
		}
		return Choice{}, rej, errors.New("scheduler: nexus cannot be placed: " + msg + "; uncordon a node or bring one back")
	}
	return choose(pick), rej, nil
}

// fewestNexuses returns the node with the fewest nexuses, ties by name then
// UUID; nil for none.
func fewestNexuses(ns []*Node) *Node {
	var best *Node
	for _, n := range ns {
		if best == nil || n.Nexuses < best.Nexuses ||
			(n.Nexuses == best.Nexuses && (nodeName(n) < nodeName(best) ||
				(nodeName(n) == nodeName(best) && n.UUID < best.UUID))) {
			best = n
		}
	}
	return best
}
