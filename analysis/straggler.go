package analysis

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/profilemate/profilemate/proto"
)

// StragglerName is the straggler analysis's name (and plugin name).
const StragglerName = "straggler"

// StragglerRanksTable is the straggler's derived table: one row per worker rank.
const StragglerRanksTable = "straggler_ranks"

var stragglerColumns = []proto.Column{
	{Name: "rank_host", Type: proto.TypeString, Meaning: "host of the rank"},
	{Name: "rank", Type: proto.TypeInt, Unit: "rank", Meaning: "global worker rank"},
	{Name: "steps", Type: proto.TypeInt, Unit: "count", Meaning: "steps with a time for this rank"},
	{Name: "median_ms", Type: proto.TypeFloat, Unit: "ms", Meaning: "median step time of the rank (forward pass + worker CPU operations)"},
	{Name: "p90_ms", Type: proto.TypeFloat, Unit: "ms", Meaning: "90th percentile step time of the rank"},
	{Name: "ratio_to_median", Type: proto.TypeFloat, Unit: "ratio", Meaning: "median_ms / the median rank's median_ms (the middle rank by median_ms, the lower middle for an even count)"},
	{Name: "slowest_share", Type: proto.TypeFloat, Unit: "fraction", Meaning: "share of the steps every rank ran in which this rank was the slowest"},
	{Name: "mean_late_ms", Type: proto.TypeFloat, Unit: "ms", Meaning: "mean time the rank's step ended after the median rank's on the aligned clock (ts_aligned_ns, else ts_ns)"},
}

type rankKey struct {
	host string
	rank int64
}

// StragglerOptions tune Straggler; zero values take the defaults.
type StragglerOptions struct {
	// Threshold is the ratio to the median rank from which a rank counts as a straggler
	// (default 1.10).
	Threshold float64
	// Critical is the ratio from which the finding is critical (default 1.50).
	Critical float64
}

// Straggler finds the slowest worker rank from forward_pass_timing (cpu_ms, per rank per step)
// plus the worker's own cpu_operations_timing rows of the same step, on each rank's median step
// time, compared with the median rank's: the rank in the middle when ranks are sorted by median
// step time (the lower middle for an even count, so with two ranks the faster one). Ranks come
// from the processes' metadata (global worker rank), else the tp column.
//
// Result: the table straggler_ranks (stragglerColumns) and one finding: "rank R on host H is
// X.XXx the median rank" (warning from Threshold, critical from Critical; info when no rank
// reaches Threshold) with numbers ratio_to_median (ratio), median_ms, median_rank_ms (ms),
// excess_ms_per_step (ms), slowest_share (fraction of common steps), steps (count),
// straggler_ranks (count of ranks at or above Threshold), host_wide (1 when the straggler ranks
// are exactly the ranks of one host, so the host rather than a rank is slow; else 0); stragglers on
// several hosts are listed in the title per host ("; 2 straggler ranks on 2 hosts: hostA 0;
// hostB 3"). Fewer than two ranks: no
// finding, an empty table. Errors: only the Source's.
func Straggler(src Source, opt StragglerOptions) (*Result, error) {
	if opt.Threshold <= 0 {
		opt.Threshold = 1.10
	}
	if opt.Critical <= 0 {
		opt.Critical = 1.50
	}
	ix := newRankIndex(src)
	type cell struct {
		ms  float64
		end float64 // aligned end time, ns
	}
	type rankData struct {
		host  string
		steps map[int64]*cell
	}
	// A rank is (host, global rank): separate deployments on different hosts reuse rank numbers.
	ranks := map[rankKey]*rankData{}
	add := func(r Row, ms float64, end bool) {
		if r.Str("role") != "worker" {
			return
		}
		step, ok := r.Int("step")
		if !ok || step < 0 {
			return
		}
		n := ix.rank(r)
		if n < 0 {
			return
		}
		rk := rankKey{r.Str("host"), n}
		d := ranks[rk]
		if d == nil {
			d = &rankData{host: r.Str("host"), steps: map[int64]*cell{}}
			ranks[rk] = d
		}
		c := d.steps[step]
		if c == nil {
			c = &cell{}
			d.steps[step] = c
		}
		c.ms += ms
		if end {
			ts, ok := r.Float("ts_aligned_ns")
			if !ok {
				ts, _ = r.Float("ts_ns")
			}
			if ts > c.end {
				c.end = ts
			}
		}
	}
	err := src.Rows("forward_pass_timing", func(r Row) error {
		if ms, ok := r.Float("cpu_ms"); ok {
			add(r, ms, true)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = src.Rows("cpu_operations_timing", func(r Row) error {
		if ms, ok := r.Float("cpu_ms"); ok {
			add(r, ms, false)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	res := &Result{Analysis: StragglerName}
	tbl := &Table{Name: StragglerRanksTable, Columns: stragglerColumns}
	res.Tables = []*Table{tbl}
	if len(ranks) < 2 {
		return res, nil
	}
	order := make([]rankKey, 0, len(ranks))
	for rk := range ranks {
		order = append(order, rk)
	}
	sort.Slice(order, func(i, j int) bool {
		if order[i].host != order[j].host {
			return order[i].host < order[j].host
		}
		return order[i].rank < order[j].rank
	})

	med := map[rankKey]float64{}
	p90 := map[rankKey]float64{}
	var meds []float64
	for _, rk := range order {
		var v []float64
		for _, c := range ranks[rk].steps {
			v = append(v, c.ms)
		}
		sort.Float64s(v)
		med[rk] = median(v)
		p90[rk] = v[int(math.Ceil(0.9*float64(len(v))))-1]
		meds = append(meds, med[rk])
	}
	// The median rank is a real rank: the middle one by median step time, the lower middle for an
	// even count (with two ranks, the faster), so the ratio compares with a rank that ran.
	sort.Float64s(meds)
	medRank := meds[(len(meds)-1)/2]

	// Steps every rank ran: who was slowest, and how late each ended after the median end.
	slowest := map[rankKey]int{}
	late := map[rankKey]float64{}
	common := 0
	var firstStep, lastStep int64 = -1, -1
	// Steps in order, so the float sums below come out the same on every run (a plugin's rows must
	// be the same when it is replayed).
	stepList := make([]int64, 0, len(ranks[order[0]].steps))
	for step := range ranks[order[0]].steps {
		stepList = append(stepList, step)
	}
	sort.Slice(stepList, func(i, j int) bool { return stepList[i] < stepList[j] })
	for _, step := range stepList {
		all := true
		for _, rk := range order {
			if _, ok := ranks[rk].steps[step]; !ok {
				all = false
				break
			}
		}
		if !all {
			continue
		}
		common++
		if firstStep < 0 || step < firstStep {
			firstStep = step
		}
		if step > lastStep {
			lastStep = step
		}
		best, bestMS := order[0], -1.0
		var ends []float64
		for _, rk := range order {
			c := ranks[rk].steps[step]
			if c.ms > bestMS {
				best, bestMS = rk, c.ms
			}
			ends = append(ends, c.end)
		}
		slowest[best]++
		mEnd := median(ends)
		for _, rk := range order {
			late[rk] += (ranks[rk].steps[step].end - mEnd) / 1e6
		}
	}
	share := func(rk rankKey) float64 {
		if common == 0 {
			return 0
		}
		return float64(slowest[rk]) / float64(common)
	}
	ratio := func(rk rankKey) float64 {
		if medRank <= 0 {
			return 0
		}
		return med[rk] / medRank
	}
	top := order[0]
	for _, rk := range order {
		if ratio(rk) > ratio(top) {
			top = rk
		}
		meanLate := 0.0
		if common > 0 {
			meanLate = late[rk] / float64(common)
		}
		tbl.Rows = append(tbl.Rows, []string{rk.host, fi(rk.rank), fi(int64(len(ranks[rk].steps))),
			FormatFloat(med[rk]), FormatFloat(p90[rk]), FormatFloat(ratio(rk)), FormatFloat(share(rk)),
			FormatFloat(meanLate)})
	}

	var slow []rankKey
	slowHosts := map[string]bool{}
	for _, rk := range order {
		if ratio(rk) >= opt.Threshold {
			slow = append(slow, rk)
			slowHosts[ranks[rk].host] = true
		}
	}
	oneHost := 0.0
	if len(slowHosts) == 1 {
		oneHost = 1
		for _, rk := range order {
			if slowHosts[ranks[rk].host] && ratio(rk) < opt.Threshold {
				oneHost = 0 // the host also has healthy ranks: the rank, not the host
			}
		}
	}
	f := Finding{Plugin: StragglerName, FirstStep: firstStep, LastStep: lastStep,
		Ranks: []int64{top.rank}, Hosts: []string{top.host}}
	f.Numbers = []Number{
		{"ratio_to_median", ratio(top), "ratio"},
		{"median_ms", med[top], "ms"},
		{"median_rank_ms", medRank, "ms"},
		{"excess_ms_per_step", med[top] - medRank, "ms"},
		{"slowest_share", share(top), "fraction"},
		{"steps", float64(common), "steps"},
		{"straggler_ranks", float64(len(slow)), "count"},
		{"host_wide", oneHost, "bool"},
	}
	switch r := ratio(top); {
	case r >= opt.Critical:
		f.Severity = SeverityCritical
	case r >= opt.Threshold:
		f.Severity = SeverityWarning
	default:
		f.Severity = SeverityInfo
	}
	if f.Severity == SeverityInfo {
		f.Title = fmt.Sprintf("no straggler: slowest rank %d on host %s is %.2fx the median rank (threshold %.2fx)", top.rank, top.host, ratio(top), opt.Threshold)
	} else {
		f.Title = fmt.Sprintf("rank %d on host %s is %.2fx the median rank (%.2f ms vs %.2f ms per step), slowest in %.0f%% of %d steps",
			top.rank, top.host, ratio(top), med[top], medRank, 100*share(top), common)
		if len(slow) > 1 {
			// the slowest first, then the other stragglers in rank order.
			f.Ranks = []int64{top.rank}
			for _, rk := range order {
				if rk != top && ratio(rk) >= opt.Threshold {
					f.Ranks = append(f.Ranks, rk.rank)
				}
			}
			hosts := make([]string, 0, len(slowHosts))
			for h := range slowHosts {
				hosts = append(hosts, h)
			}
			sort.Strings(hosts)
			f.Hosts = hosts
		}
		if oneHost == 1 {
			f.Title += fmt.Sprintf("; every rank of host %s is slow (%d ranks)", top.host, len(slow))
		} else if len(slowHosts) > 1 {
			// Stragglers on several hosts (one instance spanning hosts): each host with its ranks.
			byHost := map[string][]string{}
			for _, rk := range order {
				if ratio(rk) >= opt.Threshold {
					byHost[rk.host] = append(byHost[rk.host], fi(rk.rank))
				}
			}
			var parts []string
			for _, h := range f.Hosts {
				parts = append(parts, h+" "+strings.Join(byHost[h], ","))
			}
			f.Title += fmt.Sprintf("; %d straggler ranks on %d hosts: %s", len(slow), len(slowHosts), strings.Join(parts, "; "))
		}
	}
	res.Findings = []Finding{f}
	return res, nil
}
