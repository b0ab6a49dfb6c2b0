package analysis

import (
	"fmt"
	"sort"
	"strings"

	"github.com/profilemate/profilemate/proto"
)

// MoEBalanceName is the MoE balance analysis's name (and plugin name).
const MoEBalanceName = "moe_balance"

// replica is a data-parallel replica: the host of its processes and its dp rank.
type replica struct {
	host string
	dp   int64
}

// MoEBalanceTable is the MoE balance derived table: one row per data-parallel replica, layer and
// window of steps, plus one whole-session row per layer (window = -1).
const MoEBalanceTable = "moe_balance"

var moeColumns = []proto.Column{
	{Name: "replica_host", Type: proto.TypeString, Meaning: "host of the replica's workers, the hosts of a multi-node instance joined by + (separate deployments on different hosts each have their own dp 0)"},
	{Name: "dp", Type: proto.TypeInt, Unit: "rank", Meaning: "data-parallel rank of the replica"},
	{Name: "layer", Type: proto.TypeString, Meaning: "MoE layer name"},
	{Name: "layer_index", Type: proto.TypeInt, Meaning: "layer number; -1 when the name has none"},
	{Name: "window", Type: proto.TypeInt, Unit: "count", Meaning: "window number (steps (window·W, (window+1)·W]); -1 for the whole session"},
	{Name: "first_step", Type: proto.TypeInt, Unit: "count", Meaning: "first step the window's counts cover"},
	{Name: "last_step", Type: proto.TypeInt, Unit: "count", Meaning: "last step the window's counts cover"},
	{Name: "assignments", Type: proto.TypeInt, Unit: "tokens", Meaning: "token-to-expert assignments in the window (sum of expert loads)"},
	{Name: "experts", Type: proto.TypeInt, Unit: "count", Meaning: "experts of the layer"},
	{Name: "max_over_mean", Type: proto.TypeFloat, Unit: "ratio", Meaning: "load of the busiest expert / mean expert load"},
	{Name: "cv", Type: proto.TypeFloat, Unit: "ratio", Meaning: "coefficient of variation of the expert loads (population std / mean)"},
	{Name: "hot_experts", Type: proto.TypeString, Meaning: "experts with load >= HotFactor x mean, busiest first, joined by |"},
	{Name: "cold_experts", Type: proto.TypeString, Meaning: "experts with load <= ColdFactor x mean, idlest first, joined by |"},
	{Name: "ep_size", Type: proto.TypeInt, Unit: "count", Meaning: "expert-parallel ranks assumed for the placement figures"},
	{Name: "redundant_experts", Type: proto.TypeInt, Unit: "count", Meaning: "extra expert replicas the rebalance may place"},
	{Name: "rank_imbalance", Type: proto.TypeFloat, Unit: "ratio", Meaning: "max / mean load per EP rank with experts placed contiguously (expert e on rank e·ep_size/experts)"},
	{Name: "eplb_rank_imbalance", Type: proto.TypeFloat, Unit: "ratio", Meaning: "max / mean load per EP rank after an EPLB-style rebalance (replicate the busiest experts, pack greedily)"},
	{Name: "imbalance_removed", Type: proto.TypeFloat, Unit: "fraction", Meaning: "(rank_imbalance - eplb_rank_imbalance) / (rank_imbalance - 1): share of the excess load the rebalance removes"},
}

// MoEOptions tune MoEBalance; zero values take the defaults.
type MoEOptions struct {
	WindowSteps int     // steps per window (default 100)
	HotFactor   float64 // hot expert: load >= HotFactor x mean (default 1.5)
	ColdFactor  float64 // cold expert: load <= ColdFactor x mean (default 0.5)
	// EPSize is the number of expert-parallel ranks for the placement figures (default: the
	// distinct ep ranks of the workers when more than one, else the worker processes of the
	// replica, at least 2).
	EPSize int
	// Redundant is the number of extra expert replicas the rebalance may place (default EPSize,
	// one per rank).
	Redundant int
	Warning   float64 // max_over_mean from which a layer is a warning (default 1.5)
	Critical  float64 // max_over_mean from which a layer is critical (default 3)
}

// MoELayerBalance is the whole-session balance of one layer of one replica, as the derived
// table's window = -1 row holds it.
type MoELayerBalance struct {
	Host        string // host of the replica's workers
	DP          int64
	Layer       string
	LayerIndex  int64
	Loads       []float64 // per expert id 0..experts-1: assignments (mean over the replica's processes that report it)
	Assignments float64
	MaxOverMean float64
	CV          float64
	Hot, Cold   []int64
	EPSize      int
	Redundant   int
	RankImb     float64
	EPLBRankImb float64
}

// MoEBalance measures the expert load balance from moe_expert_selection (status counted). The
// load of an expert in a replica (host, dp) is its count summed over the window and the
// replica's processes, divided by the number of its processes that report that expert in the
// session: tensor-parallel ranks route the same tokens and
// report the same counts, expert-parallel ranks each report their own experts. A row belongs to
// the window holding its step (the step that closes its interval).
//
// Result: the table moe_balance (moeColumns) and, per replica, one finding for the worst layer
// (highest max_over_mean), the replica being (host, dp): numbers max_over_mean, cv (ratio), hot_experts, cold_experts, layers,
// layers_over_warning (count), rank_imbalance, eplb_rank_imbalance (ratio), imbalance_removed
// (fraction), assignments (tokens); hot and cold expert ids in the title. Severity from
// Warning/Critical on max_over_mean. No counted rows: no finding. Errors: only the Source's.
func MoEBalance(src Source, opt MoEOptions) (*Result, error) {
	layers, err := moeBalance(src, &opt)
	if err != nil {
		return nil, err
	}
	res := &Result{Analysis: MoEBalanceName}
	tbl := &Table{Name: MoEBalanceTable, Columns: moeColumns}
	res.Tables = []*Table{tbl}
	for _, l := range layers {
		tbl.Rows = append(tbl.Rows, l.rows...)
	}
	byRep := map[replica][]*moeLayer{}
	var reps []replica
	for _, l := range layers {
		rp := replica{l.all.Host, l.all.DP}
		if _, ok := byRep[rp]; !ok {
			reps = append(reps, rp)
		}
		byRep[rp] = append(byRep[rp], l)
	}
	for _, rp := range reps {
		ls := byRep[rp]
		worst := ls[0]
		over := 0
		for _, l := range ls {
			if l.all.MaxOverMean > worst.all.MaxOverMean {
				worst = l
			}
			if l.all.MaxOverMean >= opt.Warning {
				over++
			}
		}
		b := worst.all
		f := Finding{Plugin: MoEBalanceName, FirstStep: worst.first, LastStep: worst.last, Hosts: splitHosts(rp.host)}
		switch {
		case b.MaxOverMean >= opt.Critical:
			f.Severity = SeverityCritical
		case b.MaxOverMean >= opt.Warning:
			f.Severity = SeverityWarning
		default:
			f.Severity = SeverityInfo
		}
		removed := imbalanceRemoved(b.RankImb, b.EPLBRankImb)
		f.Title = fmt.Sprintf("%s dp %d %s: busiest expert %.2fx the mean, CV %.2f, hot experts [%s], cold experts [%s]; %d of %d layers >= %.1fx; an EPLB-style rebalance (%d ranks, %d redundant) takes rank imbalance %.2fx -> %.2fx",
			rp.host, rp.dp, b.Layer, b.MaxOverMean, b.CV, joinComma(b.Hot), joinComma(b.Cold), over, len(ls), opt.Warning,
			b.EPSize, b.Redundant, b.RankImb, b.EPLBRankImb)
		f.Numbers = []Number{
			{"max_over_mean", b.MaxOverMean, "ratio"},
			{"cv", b.CV, "ratio"},
			{"hot_experts", float64(len(b.Hot)), "count"},
			{"cold_experts", float64(len(b.Cold)), "count"},
			{"layers", float64(len(ls)), "count"},
			{"layers_over_warning", float64(over), "count"},
			{"rank_imbalance", b.RankImb, "ratio"},
			{"eplb_rank_imbalance", b.EPLBRankImb, "ratio"},
			{"imbalance_removed", removed, "fraction"},
			{"assignments", b.Assignments, "tokens"},
		}
		res.Findings = append(res.Findings, f)
	}
	return res, nil
}

// MoELayers returns the whole-session balance of every layer of every replica (the window = -1
// rows of MoEBalance), ordered by host, dp and layer index. Errors: only the Source's.
func MoELayers(src Source, opt MoEOptions) ([]MoELayerBalance, error) {
	layers, err := moeBalance(src, &opt)
	if err != nil {
		return nil, err
	}
	out := make([]MoELayerBalance, len(layers))
	for i, l := range layers {
		out[i] = l.all
	}
	return out, nil
}

type moeLayer struct {
	all         MoELayerBalance
	first, last int64
	rows        [][]string
}

func moeBalance(src Source, opt *MoEOptions) ([]*moeLayer, error) {
	if opt.WindowSteps <= 0 {
		opt.WindowSteps = 100
	}
	if opt.HotFactor <= 0 {
		opt.HotFactor = 1.5
	}
	if opt.ColdFactor <= 0 {
		opt.ColdFactor = 0.5
	}
	if opt.Warning <= 0 {
		opt.Warning = 1.5
	}
	if opt.Critical <= 0 {
		opt.Critical = 3
	}
	// A replica is (hosts, dp): separate deployments on different hosts each have a dp 0; the
	// hosts of one multi-node instance are one (replicaHosts).
	hostOf := replicaHosts(src)
	type lkey struct {
		host  string
		dp    int64
		layer string
	}
	type wkey struct {
		lkey
		window int64
	}
	// window → expert → count summed over the processes; and per layer and expert, the processes
	// that report it (session-wide, so memory stays at windows x layers x experts).
	counts := map[wkey]map[int64]float64{}
	reporters := map[lkey]map[int64]map[procKey]bool{}
	idx := map[lkey]int64{}
	nExperts := map[lkey]int64{}
	first, last := map[wkey]int64{}, map[wkey]int64{}
	eps := map[replica]map[int64]bool{}
	procs := map[replica]map[procKey]bool{}
	err := src.Rows("moe_expert_selection", func(r Row) error {
		if r.Str("status") != "counted" {
			return nil
		}
		e, ok1 := r.Int("expert")
		c, ok2 := r.Float("count")
		step, ok3 := r.Int("step")
		if !ok1 || !ok2 || !ok3 || e < 0 {
			return nil
		}
		dp, _ := r.Int("dp")
		lk := lkey{hostOf(r.Str("host")), dp, r.Str("layer")}
		if li, ok := r.Int("layer_index"); ok {
			idx[lk] = li
		} else if _, seen := idx[lk]; !seen {
			idx[lk] = -1
		}
		if e+1 > nExperts[lk] {
			nExperts[lk] = e + 1
		}
		w := (step - 1) / int64(opt.WindowSteps)
		if step <= 0 {
			w = 0
		}
		wk := wkey{lk, w}
		m := counts[wk]
		if m == nil {
			m = map[int64]float64{}
			counts[wk] = m
		}
		m[e] += c
		k := keyOf(r)
		if reporters[lk] == nil {
			reporters[lk] = map[int64]map[procKey]bool{}
		}
		if reporters[lk][e] == nil {
			reporters[lk][e] = map[procKey]bool{}
		}
		reporters[lk][e][k] = true
		iv, _ := r.Int("interval_steps")
		if iv < 1 {
			iv = 1
		}
		if f, ok := first[wk]; !ok || step-iv+1 < f {
			first[wk] = step - iv + 1
		}
		if step > last[wk] {
			last[wk] = step
		}
		rep := replica{lk.host, dp}
		if ep, ok := r.Int("ep"); ok && ep >= 0 {
			if eps[rep] == nil {
				eps[rep] = map[int64]bool{}
			}
			eps[rep][ep] = true
		}
		if procs[rep] == nil {
			procs[rep] = map[procKey]bool{}
		}
		procs[rep][k] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	// loads of one window: per expert, the sum over the processes divided by the processes
	// reporting that expert.
	loads := func(lk lkey, m map[int64]float64, n int64) []float64 {
		ld := make([]float64, n)
		for e, v := range m {
			if k := len(reporters[lk][e]); k > 0 {
				ld[e] = v / float64(k)
			}
		}
		return ld
	}
	byLayer := map[lkey][]int64{}
	for wk := range counts {
		byLayer[wk.lkey] = append(byLayer[wk.lkey], wk.window)
	}
	var out []*moeLayer
	for lk, windows := range byLayer {
		sort.Slice(windows, func(i, j int) bool { return windows[i] < windows[j] })
		n := nExperts[lk]
		ep := opt.EPSize
		if ep <= 0 {
			ep = len(eps[replica{lk.host, lk.dp}])
			if ep < 2 {
				ep = len(procs[replica{lk.host, lk.dp}])
			}
			if ep < 2 {
				ep = 2
			}
		}
		red := opt.Redundant
		if red <= 0 {
			red = ep
		}
		l := &moeLayer{}
		total := make([]float64, n)
		row := func(window, f, la int64, ld []float64) MoELayerBalance {
			b := balanceOf(ld, opt.HotFactor, opt.ColdFactor, ep, red)
			b.Host, b.DP, b.Layer, b.LayerIndex = lk.host, lk.dp, lk.layer, idx[lk]
			l.rows = append(l.rows, []string{lk.host, fi(lk.dp), lk.layer, fi(idx[lk]), fi(window), fi(f), fi(la),
				FormatFloat(b.Assignments), fi(n), FormatFloat(b.MaxOverMean), FormatFloat(b.CV),
				joinInts(b.Hot), joinInts(b.Cold), fi(int64(ep)), fi(int64(red)), FormatFloat(b.RankImb),
				FormatFloat(b.EPLBRankImb), FormatFloat(imbalanceRemoved(b.RankImb, b.EPLBRankImb))})
			return b
		}
		l.first = -1
		for _, w := range windows {
			wk := wkey{lk, w}
			ld := loads(lk, counts[wk], n)
			for e, v := range ld {
				total[e] += v
			}
			if l.first < 0 || first[wk] < l.first {
				l.first = first[wk]
			}
			if last[wk] > l.last {
				l.last = last[wk]
			}
			row(w, first[wk], last[wk], ld)
		}
		l.all = row(-1, l.first, l.last, total)
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].all, out[j].all
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		if a.DP != b.DP {
			return a.DP < b.DP
		}
		if a.LayerIndex != b.LayerIndex {
			return a.LayerIndex < b.LayerIndex
		}
		return a.Layer < b.Layer
	})
	return out, nil
}

// balanceOf computes the balance figures of one set of expert loads.
func balanceOf(ld []float64, hot, cold float64, ep, red int) MoELayerBalance {
	b := MoELayerBalance{Loads: ld, EPSize: ep, Redundant: red}
	mean, std := meanStd(ld)
	for _, v := range ld {
		b.Assignments += v
	}
	if mean <= 0 {
		return b
	}
	mx := 0.0
	for _, v := range ld {
		if v > mx {
			mx = v
		}
	}
	b.MaxOverMean, b.CV = mx/mean, std/mean
	order := make([]int64, len(ld))
	for i := range order {
		order[i] = int64(i)
	}
	sort.SliceStable(order, func(i, j int) bool { return ld[order[i]] > ld[order[j]] })
	for _, e := range order {
		if ld[e] >= hot*mean {
			b.Hot = append(b.Hot, e)
		}
	}
	for i := len(order) - 1; i >= 0; i-- {
		if e := order[i]; ld[e] <= cold*mean {
			b.Cold = append(b.Cold, e)
		}
	}
	b.RankImb = contiguousImbalance(ld, ep)
	b.EPLBRankImb = eplbImbalance(ld, ep, red)
	return b
}

// contiguousImbalance is max/mean rank load with expert e on rank e·ep/len(ld).
func contiguousImbalance(ld []float64, ep int) float64 {
	rank := make([]float64, ep)
	for e, v := range ld {
		rank[e*ep/len(ld)] += v
	}
	return maxOverMean(rank)
}

// eplbImbalance is max/mean rank load after an EPLB-style rebalance: red extra replicas go one
// at a time to the expert with the highest load per replica (each replica takes an equal share),
// then replicas are packed, heaviest first, onto the least-loaded rank with a free slot
// (ceil((experts+red)/ep) slots per rank).
func eplbImbalance(ld []float64, ep, red int) float64 {
	n := len(ld)
	reps := make([]int, n)
	for e := range reps {
		reps[e] = 1
	}
	for i := 0; i < red; i++ {
		best := 0
		for e := range ld {
			if ld[e]/float64(reps[e]) > ld[best]/float64(reps[best]) {
				best = e
			}
		}
		reps[best]++
	}
	var items []float64
	for e, v := range ld {
		for i := 0; i < reps[e]; i++ {
			items = append(items, v/float64(reps[e]))
		}
	}
	sort.Sort(sort.Reverse(sort.Float64Slice(items)))
	slots := (len(items) + ep - 1) / ep
	rank := make([]float64, ep)
	used := make([]int, ep)
	for _, v := range items {
		best := -1
		for r := 0; r < ep; r++ {
			if used[r] < slots && (best < 0 || rank[r] < rank[best]) {
				best = r
			}
		}
		rank[best] += v
		used[best]++
	}
	return maxOverMean(rank)
}

func maxOverMean(v []float64) float64 {
	mean, _ := meanStd(v)
	if mean <= 0 {
		return 0
	}
	mx := 0.0
	for _, x := range v {
		if x > mx {
			mx = x
		}
	}
	return mx / mean
}

func imbalanceRemoved(before, after float64) float64 {
	if before <= 1 {
		return 0
	}
	return (before - after) / (before - 1)
}

func joinComma(v []int64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fi(x)
	}
	return strings.Join(s, ",")
}
