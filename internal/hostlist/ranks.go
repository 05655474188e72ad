package hostlist

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// RankSet is a set of system ranks kept as sorted, disjoint intervals, so
// that "0-4000000000" costs two numbers, not four billion. The zero value is
// an empty set.
type RankSet struct {
	iv []interval // sorted by lo, disjoint, not adjacent
}

type interval struct{ lo, hi uint32 }

// ParseRanks parses a rank list: "0-2,5", "[0-2,5]", "3". White space is
// allowed around numbers. An empty string is the empty set.
func ParseRanks(s string) (*RankSet, error) {
	rs := &RankSet{}
	body := strings.TrimSpace(s)
	if strings.HasPrefix(body, "[") && strings.HasSuffix(body, "]") {
		body = body[1 : len(body)-1]
	}
	if strings.TrimSpace(body) == "" {
		return rs, nil
	}
	for _, part := range strings.Split(body, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := parseRank(strings.TrimSpace(lo))
		b, err2 := parseRank(strings.TrimSpace(hi))
		if err1 != nil || err2 != nil {
			return nil, &SyntaxError{s, fmt.Sprintf("%q is not a rank or a range a-b; write ranks such as 0-2,5", part)}
		}
		if a > b {
			return nil, &SyntaxError{s, fmt.Sprintf("range %q runs backwards; write %d-%d", part, b, a)}
		}
		rs.AddRange(a, b)
	}
	return rs, nil
}

func parseRank(s string) (uint32, error) {
	if s == "" {
		return 0, strconv.ErrSyntax
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == math.MaxUint32 {
		// MaxUint32 is reserved as "no rank".
		return 0, strconv.ErrRange
	}
	return uint32(n), nil
}

// NewRankSet returns the set of the given ranks.
func NewRankSet(ranks ...uint32) *RankSet {
	rs := &RankSet{}
	rs.Add(ranks...)
	return rs
}

// Add adds ranks.
func (r *RankSet) Add(ranks ...uint32) {
	for _, x := range ranks {
		r.AddRange(x, x)
	}
}

// AddRange adds lo..hi inclusive; lo must not exceed hi.
func (r *RankSet) AddRange(lo, hi uint32) {
	if lo > hi {
		return
	}
	// Find the intervals that overlap or touch [lo, hi] and merge them.
	i := sort.Search(len(r.iv), func(i int) bool { return uint64(r.iv[i].hi)+1 >= uint64(lo) })
	j := i
	for j < len(r.iv) && uint64(r.iv[j].lo) <= uint64(hi)+1 {
		lo = min(lo, r.iv[j].lo)
		hi = max(hi, r.iv[j].hi)
		j++
	}
	merged := append([]interval{}, r.iv[:i]...)
	merged = append(merged, interval{lo, hi})
	r.iv = append(merged, r.iv[j:]...)
}

// Contains reports whether rank is in the set.
func (r *RankSet) Contains(rank uint32) bool {
	i := sort.Search(len(r.iv), func(i int) bool { return r.iv[i].hi >= rank })
	return i < len(r.iv) && r.iv[i].lo <= rank
}

// Len is the number of ranks in the set.
func (r *RankSet) Len() int {
	n := 0
	for _, v := range r.iv {
		n += int(v.hi-v.lo) + 1
	}
	return n
}

// Ranks returns the ranks in increasing order. It allocates Len() entries;
// callers that accept user input should check Len first.
func (r *RankSet) Ranks() []uint32 {
	out := make([]uint32, 0, r.Len())
	for _, v := range r.iv {
		for x := uint64(v.lo); x <= uint64(v.hi); x++ {
			out = append(out, uint32(x))
		}
	}
	return out
}

// String returns "0-2,5"; "" for the empty set.
func (r *RankSet) String() string {
	var b strings.Builder
	for i, v := range r.iv {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(uint64(v.lo), 10))
		if v.hi > v.lo {
			b.WriteByte('-')
			b.WriteString(strconv.FormatUint(uint64(v.hi), 10))
		}
	}
	return b.String()
}

// RangedString returns the set in brackets, "[0-2,5]", as tables print it.
func (r *RankSet) RangedString() string { return "[" + r.String() + "]" }

// MarshalJSON writes the compact form.
func (r *RankSet) MarshalJSON() ([]byte, error) { return json.Marshal(r.String()) }

// UnmarshalJSON reads a rank list.
func (r *RankSet) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	n, err := ParseRanks(s)
	if err != nil {
		return err
	}
	*r = *n
	return nil
}

// RankGroups groups ranks by a per-rank result (a state, an error), for
// tables: one row per distinct result.
type RankGroups map[string]*RankSet

// Add records that rank produced result.
func (g RankGroups) Add(result string, rank uint32) {
	rs := g[result]
	if rs == nil {
		rs = &RankSet{}
		g[result] = rs
	}
	rs.Add(rank)
}

// RankRow is one line of a grouped rank table.
type RankRow struct {
	Ranks  string `json:"ranks"`
	Result string `json:"result"`
}

// Rows returns one row per result, ordered by lowest rank.
func (g RankGroups) Rows() []RankRow {
	keys := make([]string, 0, len(g))
	for k := range g {
		keys = append(keys, k)
	}
	first := func(k string) uint64 {
		if rs := g[k]; len(rs.iv) > 0 {
			return uint64(rs.iv[0].lo)
		}
		return math.MaxUint64
	}
	sort.Slice(keys, func(i, j int) bool {
		fi, fj := first(keys[i]), first(keys[j])
		if fi != fj {
			return fi < fj
		}
		return keys[i] < keys[j]
	})
	out := make([]RankRow, len(keys))
	for i, k := range keys {
		out[i] = RankRow{g[k].String(), k}
	}
	return out
}
