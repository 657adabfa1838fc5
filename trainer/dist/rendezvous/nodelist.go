package rendezvous

import (
	"fmt"
	"strconv"
	"strings"
)

// maxRangeWidth bounds the digits of one bound in a node range.
const maxRangeWidth = 18

// ExpandNodeList expands a Slurm compressed host list such as
// "node[01-04,07],gpu5" into host names ("node01", ..., "node04", "node07",
// "gpu5"), returning at most limit names (limit <= 0: no limit, which a
// hostile list can make huge; prefer a limit). Several bracket groups in one
// name ("r[1-2]n[1-2]") expand to their product, leftmost varying slowest,
// as Slurm does; zero padding follows the range's lower bound.
func ExpandNodeList(list string, limit int) ([]string, error) {
	list = strings.TrimSpace(list)
	if list == "" {
		return nil, fmt.Errorf("empty node list")
	}
	items, err := splitTop(list)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, item := range items {
		if item == "" {
			return nil, fmt.Errorf("node list %q: empty host name", list)
		}
		names, err := expandItem(item, limit-len(out), limit > 0)
		if err != nil {
			return nil, fmt.Errorf("node list %q: %w", list, err)
		}
		out = append(out, names...)
		if limit > 0 && len(out) >= limit {
			return out[:limit], nil
		}
	}
	return out, nil
}

// FirstNode returns the first host of a Slurm compressed host list.
func FirstNode(list string) (string, error) {
	hosts, err := ExpandNodeList(list, 1)
	if err != nil {
		return "", err
	}
	return hosts[0], nil
}

// splitTop splits at commas outside brackets.
func splitTop(s string) ([]string, error) {
	var items []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			if depth > 0 {
				return nil, fmt.Errorf("node list %q: nested '['", s)
			}
			depth++
		case ']':
			if depth == 0 {
				return nil, fmt.Errorf("node list %q: unbalanced ']'", s)
			}
			depth--
		case ',':
			if depth == 0 {
				items = append(items, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("node list %q: unclosed '['", s)
	}
	return append(items, strings.TrimSpace(s[start:])), nil
}

// expandItem expands one host pattern (no top-level commas) into at most
// limit names when bounded.
func expandItem(item string, limit int, bounded bool) ([]string, error) {
	open := strings.IndexByte(item, '[')
	if open < 0 {
		if strings.ContainsAny(item, "] \t") {
			return nil, fmt.Errorf("bad host name %q", item)
		}
		return []string{item}, nil
	}
	closeAt := strings.IndexByte(item[open:], ']') + open
	prefix, body, rest := item[:open], item[open+1:closeAt], item[closeAt+1:]
	if strings.ContainsAny(prefix, "] \t") {
		return nil, fmt.Errorf("bad host name %q", item)
	}
	// Expand the rest once (bounded by limit: each of our values yields at
	// least one name per rest name), then prepend each value of this group.
	restNames, err := expandItem(rest, limit, bounded)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, part := range strings.Split(body, ",") {
		lo, hi, width, err := parseRange(part)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		for n := lo; n <= hi; n++ {
			num := strconv.FormatUint(n, 10)
			if len(num) < width {
				num = strings.Repeat("0", width-len(num)) + num
			}
			for _, r := range restNames {
				out = append(out, prefix+num+r)
				if bounded && len(out) >= limit {
					return out, nil
				}
			}
			if n == hi { // avoid wrap-around at the top of uint64
				break
			}
		}
	}
	return out, nil
}

func parseRange(s string) (lo, hi uint64, width int, err error) {
	s = strings.TrimSpace(s)
	a, b, isRange := strings.Cut(s, "-")
	if !isRange {
		b = a
	}
	for _, x := range []string{a, b} {
		if x == "" || len(x) > maxRangeWidth || strings.Trim(x, "0123456789") != "" {
			return 0, 0, 0, fmt.Errorf("bad range %q", s)
		}
	}
	lo, _ = strconv.ParseUint(a, 10, 64)
	hi, _ = strconv.ParseUint(b, 10, 64)
	if hi < lo {
		return 0, 0, 0, fmt.Errorf("descending range %q", s)
	}
	return lo, hi, len(a), nil
}

// parseTasksPerNode parses SLURM_TASKS_PER_NODE ("4(x2),2" is 4, 4, 2) and
// returns the count of node index node, expanding at most node+1 entries.
func parseTasksPerNode(s string, node int) (int, error) {
	i := 0
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		count, rep := part, "1"
		if j := strings.IndexByte(part, '('); j >= 0 {
			if !strings.HasPrefix(part[j:], "(x") || !strings.HasSuffix(part, ")") {
				return 0, fmt.Errorf("bad entry %q", part)
			}
			count, rep = part[:j], part[j+2:len(part)-1]
		}
		n, err := strconv.Atoi(count)
		if err != nil || n < 1 {
			return 0, fmt.Errorf("bad task count %q", part)
		}
		r, err := strconv.Atoi(rep)
		if err != nil || r < 1 {
			return 0, fmt.Errorf("bad repetition %q", part)
		}
		if node < i+r {
			return n, nil
		}
		i += r
	}
	return 0, fmt.Errorf("%q covers %d nodes, not node %d", s, i, node)
}
