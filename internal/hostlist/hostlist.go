// Package hostlist reads and writes the compact host and rank notation that
// operators type and tables print: "node-[1-3]:10124", "10.0.0.[1-4,7]",
// "node-[01-10]" (zero-padded), comma-separated lists of those, and rank
// lists such as "0-2,5".
//
// Expansion is bounded (MaxHosts) so that a typo such as "node-[1-99999999]"
// is an error rather than an allocation of gigabytes. Collapsing is the
// inverse: a set of hosts is printed back in range notation, grouped by
// everything but the last run of digits of the host name (the port, when
// present, stays outside the brackets). Sets are not safe for concurrent
// mutation.
package hostlist

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
)

// MaxHosts bounds the number of hosts one list may expand to.
const MaxHosts = 1 << 16

// ErrSyntax is matched (errors.Is) by every parse error of this package.
var ErrSyntax = errors.New("hostlist: bad syntax")

// SyntaxError describes what is wrong with a host or rank list.
type SyntaxError struct {
	Input string // the whole list
	Msg   string // what is wrong, and how to write it
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("host list %q: %s", e.Input, e.Msg) }

// Is makes errors.Is(err, ErrSyntax) true.
func (e *SyntaxError) Is(target error) bool { return target == ErrSyntax }

// splitTop splits s at commas and white space outside brackets.
func splitTop(s string) ([]string, error) {
	var out []string
	depth, start := 0, 0
	flush := func(end int) {
		if p := strings.TrimSpace(s[start:end]); p != "" {
			out = append(out, p)
		}
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '[':
			depth++
			if depth > 1 {
				return nil, &SyntaxError{s, "nested '['"}
			}
		case ']':
			depth--
			if depth < 0 {
				return nil, &SyntaxError{s, "']' without '['"}
			}
		case ',', ' ', '\t', '\n':
			if depth == 0 {
				flush(i)
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, &SyntaxError{s, "'[' without ']'"}
	}
	flush(len(s))
	return out, nil
}

// span is an inclusive range of numbers printed at a fixed width (0 for no
// padding).
type span struct {
	lo, hi uint64
	width  int
}

// parseRanges parses "1-3,7" or "01-10". The second result is false when
// body is not a range expression at all (an IPv6 literal in brackets).
func parseRanges(input, body string) ([]span, bool, error) {
	if body == "" {
		return nil, true, &SyntaxError{input, "empty '[]'; write ranges such as [1-3,7]"}
	}
	for _, c := range body {
		if !(c >= '0' && c <= '9') && c != '-' && c != ',' && c != ' ' {
			return nil, false, nil
		}
	}
	var out []span
	for _, part := range strings.Split(body, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := parseNum(lo)
		b, err2 := parseNum(hi)
		if err1 != nil || err2 != nil {
			return nil, true, &SyntaxError{input, fmt.Sprintf("%q is not a number or a range a-b", part)}
		}
		if a > b {
			return nil, true, &SyntaxError{input, fmt.Sprintf("range %q runs backwards; write %d-%d", part, b, a)}
		}
		w := 0
		if len(lo) > 1 && lo[0] == '0' {
			w = len(lo)
		}
		out = append(out, span{a, b, w})
	}
	return out, true, nil
}

func parseNum(s string) (uint64, error) {
	if s == "" || len(s) > 10 {
		return 0, strconv.ErrSyntax
	}
	return strconv.ParseUint(s, 10, 64)
}

// expandOne expands one entry with any number of bracketed ranges.
func expandOne(input, entry string, limit int) ([]string, error) {
	i := strings.IndexByte(entry, '[')
	if i < 0 {
		return []string{entry}, nil
	}
	j := strings.IndexByte(entry[i:], ']')
	if j < 0 {
		return nil, &SyntaxError{input, "'[' without ']'"}
	}
	j += i
	spans, isRange, err := parseRanges(input, entry[i+1:j])
	if err != nil {
		return nil, err
	}
	if !isRange {
		// A bracketed IPv6 literal: keep it, expand what follows.
		rest, err := expandOne(input, entry[j+1:], limit)
		if err != nil {
			return nil, err
		}
		for k := range rest {
			rest[k] = entry[:j+1] + rest[k]
		}
		return rest, nil
	}
	rest, err := expandOne(input, entry[j+1:], limit)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, sp := range spans {
		if n := (sp.hi - sp.lo + 1) * uint64(len(rest)); n > uint64(limit) || len(out)+int(n) > limit {
			return nil, &SyntaxError{input, fmt.Sprintf("expands to more than %d hosts", limit)}
		}
		for n := sp.lo; n <= sp.hi; n++ {
			num := strconv.FormatUint(n, 10)
			if len(num) < sp.width {
				num = strings.Repeat("0", sp.width-len(num)) + num
			}
			for _, r := range rest {
				out = append(out, entry[:i]+num+r)
			}
		}
	}
	return out, nil
}

// checkHost validates one expanded host[:port].
func checkHost(input, h string) error {
	host, port := h, ""
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 || net.ParseIP(h[1:end]) == nil {
			return &SyntaxError{input, fmt.Sprintf("%q is not a bracketed IPv6 address", h)}
		}
		host = h[1:end]
		rest := h[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return &SyntaxError{input, fmt.Sprintf("%q: expected :port after ]", h)}
			}
			port = rest[1:]
			if port == "" {
				return &SyntaxError{input, fmt.Sprintf("%q: empty port", h)}
			}
		}
	} else {
		if i := strings.LastIndexByte(h, ':'); i >= 0 {
			host, port = h[:i], h[i+1:]
			if port == "" {
				return &SyntaxError{input, fmt.Sprintf("%q: empty port", h)}
			}
		}
		if host == "" {
			return &SyntaxError{input, fmt.Sprintf("%q has no host name", h)}
		}
		for _, c := range host {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
				return &SyntaxError{input, fmt.Sprintf("%q: %q is not allowed in a host name (IPv6 addresses go in brackets: [::1]:10124)", h, c)}
			}
		}
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port[0] == '0' {
			return &SyntaxError{input, fmt.Sprintf("%q: port %q is not between 1 and 65535", h, port)}
		}
	}
	return nil
}

// Expand parses a host list and returns every host in it, in the order
// written, duplicates removed. When defaultPort is not zero it is added to
// hosts written without a port.
func Expand(list string, defaultPort int) ([]string, error) {
	entries, err := splitTop(list)
	if err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, &SyntaxError{list, "empty; list hosts such as node-[1-3] or 10.0.0.1,10.0.0.2"}
	}
	seen := map[string]bool{}
	var out []string
	for _, e := range entries {
		hosts, err := expandOne(list, e, MaxHosts-len(out))
		if err != nil {
			return nil, err
		}
		for _, h := range hosts {
			if err := checkHost(list, h); err != nil {
				return nil, err
			}
			if defaultPort != 0 && !hasPort(h) {
				h = net.JoinHostPort(strings.Trim(h, "[]"), strconv.Itoa(defaultPort))
			}
			if !seen[h] {
				seen[h] = true
				out = append(out, h)
			}
		}
	}
	return out, nil
}

func hasPort(h string) bool {
	if strings.HasPrefix(h, "[") {
		return strings.Contains(h, "]:")
	}
	return strings.Contains(h, ":")
}

// HostSet is a set of hosts ("name[:port]") that prints itself collapsed.
// The zero value is an empty set.
type HostSet struct {
	hosts map[string]struct{}
}

// NewHostSet returns the set of the hosts in list (see Expand; no default
// port is added).
func NewHostSet(list string) (*HostSet, error) {
	hs := &HostSet{}
	if strings.TrimSpace(list) == "" {
		return hs, nil
	}
	hosts, err := Expand(list, 0)
	if err != nil {
		return nil, err
	}
	hs.Insert(hosts...)
	return hs, nil
}

// Insert adds hosts, each a single host (not a list); it is how callers
// collect per-host results.
func (h *HostSet) Insert(hosts ...string) {
	if h.hosts == nil {
		h.hosts = make(map[string]struct{}, len(hosts))
	}
	for _, x := range hosts {
		h.hosts[x] = struct{}{}
	}
}

// Delete removes hosts.
func (h *HostSet) Delete(hosts ...string) {
	for _, x := range hosts {
		delete(h.hosts, x)
	}
}

// Contains reports whether host is in the set.
func (h *HostSet) Contains(host string) bool {
	_, ok := h.hosts[host]
	return ok
}

// Len is the number of hosts.
func (h *HostSet) Len() int { return len(h.hosts) }

// Slice returns the hosts in natural order (numbers compared as numbers:
// node-2 before node-10).
func (h *HostSet) Slice() []string {
	out := make([]string, 0, len(h.hosts))
	for x := range h.hosts {
		out = append(out, x)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i], out[j]) })
	return out
}

// hostParts splits a host into the text before its last run of digits (in
// the name, not the port), the digits, and the rest (port included).
func hostParts(h string) (prefix, digits, suffix string, ok bool) {
	name, port := h, ""
	if strings.HasPrefix(h, "[") {
		return "", "", "", false // IPv6: never grouped
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		name, port = h[:i], h[i:]
	}
	end := len(name)
	for end > 0 && !isDigit(name[end-1]) {
		end--
	}
	start := end
	for start > 0 && isDigit(name[start-1]) {
		start--
	}
	if start == end || end-start > 10 {
		return "", "", "", false
	}
	return name[:start], name[start:end], name[end:] + port, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// String returns the set in range notation, groups ordered by their first
// host: "10.0.0.[1-2],node-[1-3,5]:10124". It is "" for an empty set.
// Expand(String()) returns the same hosts.
func (h *HostSet) String() string {
	type gkey struct {
		prefix, suffix string
		width          int
	}
	groups := map[gkey][]uint64{}
	var plain []string
	// Padded widths seen per prefix/suffix, so that "node-10" joins the
	// group of "node-09" rather than standing alone.
	padded := map[[2]string]map[int]bool{}
	type parsed struct {
		p, d, s string
	}
	var nums []parsed
	for x := range h.hosts {
		p, d, s, ok := hostParts(x)
		if !ok {
			plain = append(plain, x)
			continue
		}
		nums = append(nums, parsed{p, d, s})
		if len(d) > 1 && d[0] == '0' {
			k := [2]string{p, s}
			if padded[k] == nil {
				padded[k] = map[int]bool{}
			}
			padded[k][len(d)] = true
		}
	}
	for _, n := range nums {
		w := 0
		if len(n.d) > 1 && n.d[0] == '0' || padded[[2]string{n.p, n.s}][len(n.d)] {
			w = len(n.d)
		}
		v, _ := strconv.ParseUint(n.d, 10, 64)
		k := gkey{n.p, n.s, w}
		groups[k] = append(groups[k], v)
	}
	type item struct{ sortKey, text string }
	var items []item
	for k, vs := range groups {
		sort.Slice(vs, func(i, j int) bool { return vs[i] < vs[j] })
		body := formatRanges(vs, k.width)
		text := k.prefix + body + k.suffix
		if len(vs) > 1 {
			text = k.prefix + "[" + body + "]" + k.suffix
		}
		items = append(items, item{k.prefix + formatRanges(vs[:1], k.width) + k.suffix, text})
	}
	for _, p := range plain {
		items = append(items, item{p, p})
	}
	sort.Slice(items, func(i, j int) bool {
		if items[i].sortKey != items[j].sortKey {
			return naturalLess(items[i].sortKey, items[j].sortKey)
		}
		return items[i].text < items[j].text
	})
	parts := make([]string, len(items))
	for i, it := range items {
		parts[i] = it.text
	}
	return strings.Join(parts, ",")
}

// formatRanges writes sorted, distinct numbers as "1-3,5".
func formatRanges(vs []uint64, width int) string {
	f := func(v uint64) string {
		s := strconv.FormatUint(v, 10)
		if len(s) < width {
			s = strings.Repeat("0", width-len(s)) + s
		}
		return s
	}
	var b strings.Builder
	for i := 0; i < len(vs); {
		j := i
		for j+1 < len(vs) && vs[j+1] == vs[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(f(vs[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(f(vs[j]))
		}
		i = j + 1
	}
	return b.String()
}

// MarshalJSON writes the collapsed form, so JSON output is stable and short.
func (h *HostSet) MarshalJSON() ([]byte, error) { return json.Marshal(h.String()) }

// UnmarshalJSON reads a host list.
func (h *HostSet) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	n, err := NewHostSet(s)
	if err != nil {
		return err
	}
	*h = *n
	return nil
}

// naturalLess orders strings with digit runs compared as numbers.
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		if isDigit(a[0]) && isDigit(b[0]) {
			i, j := 0, 0
			for i < len(a) && isDigit(a[i]) {
				i++
			}
			for j < len(b) && isDigit(b[j]) {
				j++
			}
			na, nb := strings.TrimLeft(a[:i], "0"), strings.TrimLeft(b[:j], "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			if i != j { // same value, different padding
				return i < j
			}
			a, b = a[i:], b[j:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

// HostGroups collects per-host results and groups the hosts that share a
// result, for tables: one row per distinct result with its hosts collapsed.
type HostGroups map[string]*HostSet

// Add records that host produced result.
func (g HostGroups) Add(result, host string) {
	hs := g[result]
	if hs == nil {
		hs = &HostSet{}
		g[result] = hs
	}
	hs.Insert(host)
}

// Row is one line of a grouped table.
type Row struct {
	Hosts  string `json:"hosts"`
	Result string `json:"result"`
}

// Rows returns one row per distinct result, ordered by their first host.
func (g HostGroups) Rows() []Row {
	type r struct {
		row   Row
		first string
	}
	var rs []r
	for res, hs := range g {
		sl := hs.Slice()
		first := ""
		if len(sl) > 0 {
			first = sl[0]
		}
		rs = append(rs, r{Row{hs.String(), res}, first})
	}
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].first != rs[j].first {
			return naturalLess(rs[i].first, rs[j].first)
		}
		return rs[i].row.Result < rs[j].row.Result
	})
	out := make([]Row, len(rs))
	for i := range rs {
		out[i] = rs[i].row
	}
	return out
}
