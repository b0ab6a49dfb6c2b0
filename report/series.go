package report

import (
	"fmt"
	"math"
	"time"
)

// Agg is how a downsampled bucket summarises the rows that fall into it.
type Agg int

// Bucket summaries.
const (
	AggMean Agg = iota // mean of the bucket's values (step times, utilisation)
	AggMax             // largest value (peaks stay visible: KV usage)
)

func (a Agg) String() string {
	if a == AggMax {
		return "max"
	}
	return "mean"
}

// Series is one line of a plot: X in seconds since the session start on the aligned clock, Y in the
// plot's unit. Rows is how many CSV rows fed it; Points (len(X)) equals Rows unless Bucketed.
type Series struct {
	Key      string
	X, Y     []float64
	Rows     int64
	Bucketed bool
	// BucketNS is the bucket width when Bucketed.
	BucketNS int64
}

// emitFunc hands one point of a series to a collector: key names the series, ts is ns on the
// aligned clock.
type emitFunc func(key string, ts int64, y float64)

// walkFunc reads the current row and emits zero or more points. first is false on the second
// pass over the table (downsampling), so counts kept beside the points are taken once.
type walkFunc func(r *Rows, emit emitFunc, first bool) error

// lineSet is the outcome of collectLines: the series in first-seen order.
type lineSet struct {
	Order  []string
	Series map[string]*Series
	// MinTS/MaxTS span every emitted point (ns); Downsampled says whether any series was bucketed.
	MinTS, MaxTS int64
	Downsampled  bool
	Buckets      int
	Agg          Agg
}

// collectLines streams the session's table through walk. Every series keeps its raw points while it has
// at most maxPoints; when any series has more, a second pass over the file rebuilds those series as
// maxPoints equal time buckets spanning the table's emitted points (empty buckets are no point),
// each bucket summarised by agg at the bucket's centre. Memory stays O(series × maxPoints).
func collectLines(ss *Session, table string, origin int64, maxPoints int, agg Agg, walk walkFunc) (*lineSet, error) {
	ls := &lineSet{Series: map[string]*Series{}, MinTS: math.MaxInt64, Agg: agg}
	over := map[string]bool{}
	err := ss.Scan(table, func(r *Rows) error {
		return walk(r, func(key string, ts int64, y float64) {
			s := ls.Series[key]
			if s == nil {
				s = &Series{Key: key}
				ls.Series[key] = s
				ls.Order = append(ls.Order, key)
			}
			s.Rows++
			ls.MinTS, ls.MaxTS = min(ls.MinTS, ts), max(ls.MaxTS, ts)
			if len(s.X) < maxPoints {
				s.X = append(s.X, secs(ts, origin))
				s.Y = append(s.Y, y)
			} else {
				over[key] = true
			}
		}, true)
	})
	if err != nil {
		return nil, err
	}
	if len(over) == 0 {
		return ls, nil
	}
	ls.Downsampled, ls.Buckets = true, maxPoints
	width := (ls.MaxTS-ls.MinTS)/int64(maxPoints) + 1
	type acc struct {
		sum, max []float64
		n        []int64
	}
	accs := map[string]*acc{}
	for k := range over {
		accs[k] = &acc{sum: make([]float64, maxPoints), max: make([]float64, maxPoints), n: make([]int64, maxPoints)}
	}
	err = ss.Scan(table, func(r *Rows) error {
		return walk(r, func(key string, ts int64, y float64) {
			a := accs[key]
			if a == nil {
				return
			}
			b := int((ts - ls.MinTS) / width)
			if b < 0 || b >= maxPoints {
				return // appended after the first pass (a running session): not in this page
			}
			if a.n[b] == 0 || y > a.max[b] {
				a.max[b] = y
			}
			a.sum[b] += y
			a.n[b]++
		}, false)
	})
	if err != nil {
		return nil, err
	}
	for k, a := range accs {
		s := ls.Series[k]
		s.X, s.Y, s.Bucketed, s.BucketNS = s.X[:0], s.Y[:0], true, width
		for b := range a.n {
			if a.n[b] == 0 {
				continue
			}
			v := a.sum[b] / float64(a.n[b])
			if agg == AggMax {
				v = a.max[b]
			}
			s.X = append(s.X, secs(ls.MinTS+int64(b)*width+width/2, origin))
			s.Y = append(s.Y, v)
		}
	}
	return ls, nil
}

func secs(ts, origin int64) float64 { return float64(ts-origin) / 1e9 }

// note says how a line set was downsampled, for the plot's caption; "" when it was not.
func (ls *lineSet) note() string {
	if !ls.Downsampled {
		return ""
	}
	var rows, pts int64
	var width int64
	n := 0
	for _, s := range ls.Series {
		if s.Bucketed {
			n++
			rows += s.Rows
			pts += int64(len(s.X))
			width = s.BucketNS
		}
	}
	return fmt.Sprintf("Downsampled: %d of %d series had more than %d rows; their %d rows are drawn as %d points, "+
		"the %s of each %s time bucket (%d equal buckets over the table's time span; empty buckets are no point).",
		n, len(ls.Series), ls.Buckets, rows, pts, ls.Agg, time.Duration(width), ls.Buckets)
}
