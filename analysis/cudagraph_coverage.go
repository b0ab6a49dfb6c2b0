package analysis

import (
	"fmt"
	"math"
	"sort"

	"github.com/profilemate/profilemate/proto"
)

// CUDAGraphCoverageName is the CUDA-graph coverage analysis's name (and plugin name).
const CUDAGraphCoverageName = "cudagraph_coverage"

// CUDAGraphCoverageTable is the coverage derived table: per data-parallel replica one row per
// runtime mode (mode NONE/PIECEWISE/FULL, size = -1), and one row per suggested capture size
// (mode = "suggested").
const CUDAGraphCoverageTable = "cudagraph_coverage"

var cgColumns = []proto.Column{
	{Name: "replica_host", Type: proto.TypeString, Meaning: "host of the replica's processes, the hosts of a multi-node instance joined by +"},
	{Name: "dp", Type: proto.TypeInt, Unit: "rank", Meaning: "data-parallel rank of the replica"},
	{Name: "mode", Type: proto.TypeString, Meaning: "runtime mode (NONE, PIECEWISE, FULL), or suggested for a capture size to add"},
	{Name: "size", Type: proto.TypeInt, Unit: "tokens", Meaning: "suggested capture size; -1 on a mode row"},
	{Name: "steps", Type: proto.TypeInt, Unit: "count", Meaning: "steps run in the mode; for a suggested size, eager fallback steps it is the smallest cover of"},
	{Name: "step_share", Type: proto.TypeFloat, Unit: "fraction", Meaning: "steps / all steps of the replica"},
	{Name: "tokens", Type: proto.TypeInt, Unit: "tokens", Meaning: "unpadded tokens of those steps"},
	{Name: "token_share", Type: proto.TypeFloat, Unit: "fraction", Meaning: "tokens / all unpadded tokens of the replica"},
	{Name: "padded_steps", Type: proto.TypeInt, Unit: "count", Meaning: "steps whose padded tokens exceed the unpadded ones"},
	{Name: "padding_tokens", Type: proto.TypeInt, Unit: "tokens", Meaning: "padded - unpadded tokens summed (for a suggested size: the padding it would add)"},
	{Name: "padding_waste", Type: proto.TypeFloat, Unit: "fraction", Meaning: "padding_tokens / padded tokens of those steps"},
}

// CUDAGraphOptions tune CUDAGraphCoverage; zero values take the defaults.
type CUDAGraphOptions struct {
	// MaxNewSizes is the most capture sizes suggested (default 4).
	MaxNewSizes int
	// Align rounds suggested sizes up to a multiple (default 8, as vLLM's own size list above 8).
	Align int64
	// Warning is the share of eager fallback steps from which the finding is a warning
	// (default 0.05); Critical from which it is critical (default 0.25).
	Warning, Critical float64
}

// CUDAGraphCoverage measures CUDA-graph coverage from cuda_graph_usage (one row per step and
// process; the ranks of one replica run the same batches, so a step counts once per replica,
// (host, dp): separate deployments on different hosts each have a dp 0) and the
// captured sizes of cuda_graph_captures.
//
// Suggested sizes: the eager fallback steps (graphs on, no captured size fits) are covered by at
// most MaxNewSizes new sizes (multiples of Align) chosen to add the least padding; the largest
// covers the largest such step, so together they cover every fallback step seen.
//
// Result: the table cudagraph_coverage (cgColumns) and per replica one finding with numbers
// steps, eager_steps, eager_fallback_steps (count), eager_step_share, eager_token_share,
// padded_step_share, padding_waste (fraction), padding_tokens (tokens), max_captured_size
// (tokens), suggested_sizes (count), covered_fallback_steps (count), added_padding_tokens
// (tokens); the sizes are in the title and the table. Severity from the fallback step share
// (Warning, Critical); info without fallback steps. Errors: only the Source's.
func CUDAGraphCoverage(src Source, opt CUDAGraphOptions) (*Result, error) {
	reps, err := cudaGraphCoverage(src, &opt)
	if err != nil {
		return nil, err
	}
	res := &Result{Analysis: CUDAGraphCoverageName}
	tbl := &Table{Name: CUDAGraphCoverageTable, Columns: cgColumns}
	res.Tables = []*Table{tbl}
	for _, c := range reps {
		tbl.Rows = append(tbl.Rows, c.rows...)
		s := c.CUDAGraphSummary
		f := Finding{Plugin: CUDAGraphCoverageName, FirstStep: s.FirstStep, LastStep: s.LastStep, Hosts: splitHosts(s.Host)}
		fbShare := share(float64(s.EagerFallbackSteps), float64(s.Steps))
		switch {
		case s.EagerFallbackSteps > 0 && fbShare >= opt.Critical:
			f.Severity = SeverityCritical
		case s.EagerFallbackSteps > 0 && fbShare >= opt.Warning:
			f.Severity = SeverityWarning
		default:
			f.Severity = SeverityInfo
		}
		added := int64(0)
		covered := int64(0)
		for _, sz := range s.Suggested {
			added += sz.PaddingTokens
			covered += sz.Steps
		}
		f.Numbers = []Number{
			{"steps", float64(s.Steps), "count"},
			{"eager_steps", float64(s.EagerSteps), "count"},
			{"eager_fallback_steps", float64(s.EagerFallbackSteps), "count"},
			{"eager_step_share", share(float64(s.EagerSteps), float64(s.Steps)), "fraction"},
			{"eager_token_share", share(float64(s.EagerTokens), float64(s.Tokens)), "fraction"},
			{"padded_step_share", share(float64(s.PaddedSteps), float64(s.Steps)), "fraction"},
			{"padding_waste", share(float64(s.PaddingTokens), float64(s.PaddedTokens)), "fraction"},
			{"padding_tokens", float64(s.PaddingTokens), "tokens"},
			{"max_captured_size", float64(s.MaxCaptured), "tokens"},
			{"suggested_sizes", float64(len(s.Suggested)), "count"},
			{"covered_fallback_steps", float64(covered), "count"},
			{"added_padding_tokens", float64(added), "tokens"},
		}
		if s.EagerFallbackSteps > 0 {
			sizes := make([]int64, len(s.Suggested))
			for i, sz := range s.Suggested {
				sizes[i] = sz.Size
			}
			f.Title = fmt.Sprintf("%s dp %d: %d of %d steps (%.0f%%, %.0f%% of tokens) ran eager for want of a captured size (largest %d); capturing [%s] would cover %d of them, adding %d padding tokens",
				s.Host, s.DP, s.EagerFallbackSteps, s.Steps, 100*fbShare, 100*share(float64(s.EagerTokens), float64(s.Tokens)),
				s.MaxCaptured, joinComma(sizes), covered, added)
		} else {
			f.Title = fmt.Sprintf("%s dp %d: %d steps, %d eager (%.0f%%), no eager fallback; padding wastes %.1f%% of graph tokens",
				s.Host, s.DP, s.Steps, s.EagerSteps, 100*share(float64(s.EagerSteps), float64(s.Steps)),
				100*share(float64(s.PaddingTokens), float64(s.PaddedTokens)))
		}
		res.Findings = append(res.Findings, f)
	}
	return res, nil
}

// CaptureSize is one suggested capture size: the eager fallback steps it would be the smallest
// cover of, and the padding tokens it would add to them.
type CaptureSize struct {
	Size          int64
	Steps         int64
	PaddingTokens int64
}

// CUDAGraphSummary is one replica's coverage.
type CUDAGraphSummary struct {
	Host                string
	DP                  int64
	FirstStep, LastStep int64
	Steps               int64 // steps with a cuda_graph_usage row
	EagerSteps          int64 // steps in mode NONE
	EagerFallbackSteps  int64 // eager steps with eager_fallback true
	Tokens, EagerTokens int64 // unpadded tokens: all, of eager steps
	PaddedSteps         int64
	PaddedTokens        int64   // padded tokens of all steps
	PaddingTokens       int64   // padded - unpadded, summed
	Captured            []int64 // distinct captured sizes, ascending
	MaxCaptured         int64
	Suggested           []CaptureSize // ascending
}

// CUDAGraphSummaries returns each replica's coverage and suggested sizes, ordered by host and dp.
// Errors: only the Source's.
func CUDAGraphSummaries(src Source, opt CUDAGraphOptions) ([]CUDAGraphSummary, error) {
	reps, err := cudaGraphCoverage(src, &opt)
	out := make([]CUDAGraphSummary, len(reps))
	for i, r := range reps {
		out[i] = r.CUDAGraphSummary
	}
	return out, err
}

type cgReplica struct {
	CUDAGraphSummary
	rows [][]string
}

func share(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func cudaGraphCoverage(src Source, opt *CUDAGraphOptions) ([]cgReplica, error) {
	if opt.MaxNewSizes <= 0 {
		opt.MaxNewSizes = 4
	}
	if opt.Align <= 0 {
		opt.Align = 8
	}
	if opt.Warning <= 0 {
		opt.Warning = 0.05
	}
	if opt.Critical <= 0 {
		opt.Critical = 0.25
	}
	type stepRow struct {
		mode             string
		unpadded, padded int64
		fallback         bool
	}
	hostOf := replicaHosts(src) // the hosts of one multi-node instance are one replica
	steps := map[replica]map[int64]stepRow{}
	captured := map[replica]map[int64]bool{}
	err := src.Rows("cuda_graph_usage", func(r Row) error {
		st, ok := r.Int("step")
		if !ok || st < 0 {
			return nil
		}
		dp, _ := r.Int("dp")
		rp := replica{hostOf(r.Str("host")), dp}
		m := steps[rp]
		if m == nil {
			m = map[int64]stepRow{}
			steps[rp] = m
		}
		if _, seen := m[st]; seen {
			return nil
		}
		u, _ := r.Int("unpadded_tokens")
		p, ok := r.Int("padded_tokens")
		if !ok {
			p = u
		}
		m[st] = stepRow{mode: r.Str("runtime_mode"), unpadded: u, padded: p, fallback: r.Bool("eager_fallback")}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = src.Rows("cuda_graph_captures", func(r Row) error {
		n, ok := r.Int("num_tokens")
		if !ok || n <= 0 {
			return nil
		}
		dp, _ := r.Int("dp")
		rp := replica{hostOf(r.Str("host")), dp}
		if captured[rp] == nil {
			captured[rp] = map[int64]bool{}
		}
		captured[rp][n] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	reps := make([]replica, 0, len(steps))
	for rp := range steps {
		reps = append(reps, rp)
	}
	sort.Slice(reps, func(i, j int) bool {
		if reps[i].host != reps[j].host {
			return reps[i].host < reps[j].host
		}
		return reps[i].dp < reps[j].dp
	})
	var out []cgReplica
	for _, rp := range reps {
		dp := rp.dp
		c := cgReplica{}
		s := &c.CUDAGraphSummary
		s.Host, s.DP, s.FirstStep = rp.host, dp, -1
		type modeAcc struct{ steps, tokens, paddedSteps, padding, padded int64 }
		modes := map[string]*modeAcc{}
		var fallback []int64
		for st, r := range steps[rp] {
			if s.FirstStep < 0 || st < s.FirstStep {
				s.FirstStep = st
			}
			s.LastStep = max(s.LastStep, st)
			s.Steps++
			s.Tokens += r.unpadded
			s.PaddedTokens += r.padded
			m := modes[r.mode]
			if m == nil {
				m = &modeAcc{}
				modes[r.mode] = m
			}
			m.steps++
			m.tokens += r.unpadded
			m.padded += r.padded
			if r.padded > r.unpadded {
				s.PaddedSteps++
				s.PaddingTokens += r.padded - r.unpadded
				m.paddedSteps++
				m.padding += r.padded - r.unpadded
			}
			if r.mode == "NONE" {
				s.EagerSteps++
				s.EagerTokens += r.unpadded
				if r.fallback {
					s.EagerFallbackSteps++
					fallback = append(fallback, r.unpadded)
				}
			}
		}
		for n := range captured[rp] {
			s.Captured = append(s.Captured, n)
		}
		sort.Slice(s.Captured, func(i, j int) bool { return s.Captured[i] < s.Captured[j] })
		if len(s.Captured) > 0 {
			s.MaxCaptured = s.Captured[len(s.Captured)-1]
		}
		s.Suggested = suggestSizes(fallback, opt.MaxNewSizes, opt.Align)
		names := make([]string, 0, len(modes))
		for m := range modes {
			names = append(names, m)
		}
		sort.Strings(names)
		for _, name := range names {
			m := modes[name]
			c.rows = append(c.rows, []string{rp.host, fi(dp), name, "-1", fi(m.steps),
				FormatFloat(share(float64(m.steps), float64(s.Steps))), fi(m.tokens),
				FormatFloat(share(float64(m.tokens), float64(s.Tokens))), fi(m.paddedSteps), fi(m.padding),
				FormatFloat(share(float64(m.padding), float64(m.padded)))})
		}
		for _, sz := range s.Suggested {
			c.rows = append(c.rows, []string{rp.host, fi(dp), "suggested", fi(sz.Size), fi(sz.Steps),
				FormatFloat(share(float64(sz.Steps), float64(s.Steps))), "", "", fi(sz.Steps), fi(sz.PaddingTokens),
				""})
		}
		out = append(out, c)
	}
	return out, nil
}

// suggestSizes picks at most k sizes (multiples of align) covering every token count in ns with
// the least total padding: an exact dynamic programme over the distinct aligned counts, whose
// largest must be among the sizes.
func suggestSizes(ns []int64, k int, align int64) []CaptureSize {
	if len(ns) == 0 {
		return nil
	}
	up := func(n int64) int64 { return (n + align - 1) / align * align }
	cnt := map[int64]int64{}
	sum := map[int64]int64{}
	for _, n := range ns {
		cnt[up(n)]++
		sum[up(n)] += n
	}
	var cand []int64
	for v := range cnt {
		cand = append(cand, v)
	}
	sort.Slice(cand, func(i, j int) bool { return cand[i] < cand[j] })
	d := len(cand)
	// cost(i, j): padding when cand[j] covers the counts of cand[i..j].
	pc := make([]int64, d+1) // prefix counts
	ps := make([]int64, d+1) // prefix sums
	for i, v := range cand {
		pc[i+1] = pc[i] + cnt[v]
		ps[i+1] = ps[i] + sum[v]
	}
	cost := func(i, j int) int64 { return cand[j]*(pc[j+1]-pc[i]) - (ps[j+1] - ps[i]) }
	k = min(k, d)
	const inf = math.MaxInt64
	// best[g][j]: least padding covering cand[0..j] with g sizes, the last being cand[j].
	best := make([][]int64, k+1)
	from := make([][]int, k+1)
	for g := range best {
		best[g] = make([]int64, d)
		from[g] = make([]int, d)
		for j := range best[g] {
			best[g][j] = inf
		}
	}
	for j := 0; j < d; j++ {
		best[1][j] = cost(0, j)
		from[1][j] = -1
	}
	for g := 2; g <= k; g++ {
		for j := 0; j < d; j++ {
			for i := 0; i < j; i++ {
				if best[g-1][i] == inf {
					continue
				}
				if c := best[g-1][i] + cost(i+1, j); c < best[g][j] {
					best[g][j], from[g][j] = c, i
				}
			}
		}
	}
	g := 1
	for h := 2; h <= k; h++ {
		if best[h][d-1] < best[g][d-1] {
			g = h
		}
	}
	var out []CaptureSize
	j := d - 1
	for ; g >= 1; g-- {
		i := from[g][j]
		out = append(out, CaptureSize{Size: cand[j], Steps: pc[j+1] - pc[i+1], PaddingTokens: cost(i+1, j)})
		j = i
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Size < out[b].Size })
	return out
}
