package hub

import "sort"

// seqSet is the set of sequence numbers already written for one process, kept as sorted disjoint
// closed ranges. A process's sequence numbers are dense across all its kinds (gaps only where the
// shim dropped events), so the set stays a handful of ranges however long the session runs.
type seqSet struct {
	r [][2]uint64 // sorted, disjoint, non-adjacent
}

// has reports whether s was added before.
func (q *seqSet) has(s uint64) bool {
	n := len(q.r)
	if n == 0 {
		return false
	}
	if last := q.r[n-1]; s >= last[0] {
		return s <= last[1]
	}
	i := sort.Search(n, func(i int) bool { return q.r[i][1] >= s })
	return i < n && q.r[i][0] <= s
}

// add inserts s and reports whether it was new.
func (q *seqSet) add(s uint64) bool {
	n := len(q.r)
	// Fast path: the next number after the newest range, the common case for in-order batches.
	if n > 0 && q.r[n-1][1]+1 == s {
		q.r[n-1][1] = s
		return true
	}
	if n == 0 || s > q.r[n-1][1]+1 {
		q.r = append(q.r, [2]uint64{s, s})
		return true
	}
	i := sort.Search(n, func(i int) bool { return q.r[i][1]+1 >= s })
	// q.r[i] is the first range ending at or just before s.
	if q.r[i][0] <= s && s <= q.r[i][1] {
		return false
	}
	switch {
	case q.r[i][1]+1 == s: // extends range i upwards; may join range i+1
		q.r[i][1] = s
		if i+1 < n && q.r[i+1][0] == s+1 {
			q.r[i][1] = q.r[i+1][1]
			q.r = append(q.r[:i+1], q.r[i+2:]...)
		}
	case q.r[i][0] == s+1: // extends range i downwards (range i-1 ends before s-1, see Search)
		q.r[i][0] = s
	default:
		q.r = append(q.r, [2]uint64{})
		copy(q.r[i+1:], q.r[i:])
		q.r[i] = [2]uint64{s, s}
	}
	return true
}

// max returns the largest number in the set (0 when empty).
func (q *seqSet) max() uint64 {
	if len(q.r) == 0 {
		return 0
	}
	return q.r[len(q.r)-1][1]
}

// gaps returns the missing ranges between the first and the last number seen, and after it up to
// last when last is larger (the process said how far it counted when it ended).
func (q *seqSet) gaps(last uint64) [][2]uint64 {
	var g [][2]uint64
	for i := 1; i < len(q.r); i++ {
		g = append(g, [2]uint64{q.r[i-1][1] + 1, q.r[i][0] - 1})
	}
	if len(q.r) > 0 && last > q.max() {
		g = append(g, [2]uint64{q.max() + 1, last})
	}
	return g
}

// addRanges inserts the closed ranges rs (in any order, overlapping or not), e.g. the ranges an
// earlier segment recorded; invalid ranges (lo > hi) are ignored.
func (q *seqSet) addRanges(rs [][2]uint64) {
	if len(rs) == 0 {
		return
	}
	all := append(append(make([][2]uint64, 0, len(q.r)+len(rs)), q.r...), rs...)
	sort.Slice(all, func(i, j int) bool { return all[i][0] < all[j][0] })
	out := all[:0]
	for _, r := range all {
		if r[0] > r[1] {
			continue
		}
		if n := len(out); n > 0 && (r[0] <= out[n-1][1] || r[0] == out[n-1][1]+1) {
			out[n-1][1] = max(out[n-1][1], r[1])
			continue
		}
		out = append(out, r)
	}
	q.r = out
}

// ranges returns a copy of the set as sorted disjoint closed ranges.
func (q *seqSet) ranges() [][2]uint64 { return append([][2]uint64(nil), q.r...) }
