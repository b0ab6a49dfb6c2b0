package analysis

import (
	"fmt"
	"math"
	"sort"

	"github.com/profilemate/profilemate/proto"
)

// KVPressureName is the KV pressure analysis's name (and plugin name).
const KVPressureName = "kv_pressure"

// KVPressureTable is the KV pressure derived table: one row per engine (EngineCore process) and
// window of steps, plus one whole-session row per engine (window = -1).
const KVPressureTable = "kv_pressure"

var kvColumns = []proto.Column{
	{Name: "engine_host", Type: proto.TypeString, Meaning: "host of the EngineCore"},
	{Name: "dp", Type: proto.TypeInt, Unit: "rank", Meaning: "data-parallel rank of the EngineCore"},
	{Name: "window", Type: proto.TypeInt, Unit: "count", Meaning: "window number (steps (window·W, (window+1)·W]); -1 for the whole session"},
	{Name: "first_step", Type: proto.TypeInt, Unit: "count", Meaning: "first scheduler step of the window"},
	{Name: "last_step", Type: proto.TypeInt, Unit: "count", Meaning: "last scheduler step of the window"},
	{Name: "steps", Type: proto.TypeInt, Unit: "count", Meaning: "scheduler steps with a kv_cache_usage row"},
	{Name: "peak_usage", Type: proto.TypeFloat, Unit: "fraction", Meaning: "highest KV cache usage after a step"},
	{Name: "preemptions", Type: proto.TypeInt, Unit: "count", Meaning: "preemption events"},
	{Name: "preemptions_per_1k_steps", Type: proto.TypeFloat, Unit: "count", Meaning: "preemptions per 1,000 scheduler steps"},
	{Name: "recomputed_tokens", Type: proto.TypeInt, Unit: "tokens", Meaning: "computed tokens the preemptions discarded (sum of tokens_lost)"},
	{Name: "alloc_failures", Type: proto.TypeInt, Unit: "count", Meaning: "allocation attempts that found no room"},
	{Name: "blocks_evicted", Type: proto.TypeInt, Unit: "blocks", Meaning: "cached blocks whose prefix-cache entry was dropped"},
	{Name: "evicted_then_missed_blocks", Type: proto.TypeInt, Unit: "blocks", Meaning: "at most this many evicted blocks were needed again: prefix-cache misses (in blocks) after evictions, capped by the blocks evicted before them"},
	{Name: "prefix_hit_rate", Type: proto.TypeFloat, Unit: "fraction", Meaning: "prefix_hit_tokens / prefix_query_tokens"},
	{Name: "total_blocks", Type: proto.TypeInt, Unit: "blocks", Meaning: "KV cache blocks in the pool"},
	{Name: "block_size", Type: proto.TypeInt, Unit: "tokens", Meaning: "tokens per block: KVOptions.BlockSize when given, else 16 (vLLM's default) unless the gcd of the prefix hits is not a multiple of 16, then that gcd"},
	{Name: "suggested_blocks", Type: proto.TypeInt, Unit: "blocks", Meaning: "KV size that would have avoided the preemptions seen in the window (empty without preemptions)"},
}

// KVOptions tune KVPressure; zero values take the defaults.
type KVOptions struct {
	WindowSteps int // steps per window (default 1000)
	// BlockSize is the tokens per block (the tables do not record it). Default: 16, vLLM's
	// default, unless the gcd of the session's prefix hits (whole blocks) is not a multiple of
	// 16, which shows the blocks are smaller or otherwise sized: then that gcd.
	BlockSize int64
	// Critical is the preemptions per 1,000 steps from which the finding is critical (default 50).
	Critical float64
}

// KVSummary is one engine's whole-session KV figures (the derived table's window = -1 row).
type KVSummary struct {
	Host                   string
	DP                     int64
	FirstStep, LastStep    int64
	Steps                  int64
	PeakUsage              float64
	Preemptions            int64
	PreemptionsPer1kSteps  float64
	RecomputedTokens       int64
	AllocFailures          int64
	BlocksEvicted          int64
	EvictedThenMissed      int64
	PrefixHitRate          float64
	TotalBlocks            int64
	BlockSize              int64
	PeakBlocksPerRequest   float64 // highest (blocks in use + blocks preempted) / (requests running + preempted), over steps
	PeakRequestsInFlight   int64   // highest running + waiting, capped by max_running_reqs when known
	SuggestedBlocks        int64   // ceil(PeakBlocksPerRequest x PeakRequestsInFlight); 0 without preemptions
	LowerBoundBlocks       int64   // highest blocks in use + blocks preempted at a step: the pool can be no smaller
	PreemptedRequestBlocks int64   // blocks the victims held (tokens_lost / block size, rounded up), summed
}

// KVPressure measures KV cache pressure per EngineCore from kv_cache_usage, kv_cache_evictions,
// preemption_events and batch_utilization.
//
// The suggested KV size is a sufficient size, not the least one: every request that was in
// flight at once (running + waiting; the waiting ones would have been admitted with more room)
// holding as many blocks as the highest per-request average seen at a step (blocks in use plus
// the victims' blocks, over the running requests and the victims). LowerBoundBlocks is the size
// below which the preemptions seen could not have been avoided.
//
// Result: the table kv_pressure (kvColumns) and per engine one finding with numbers
// preemptions, preemptions_per_1k_steps (count), recomputed_tokens (tokens), alloc_failures
// (count), blocks_evicted, evicted_then_missed_blocks (blocks), prefix_hit_rate (fraction),
// peak_usage (fraction), total_blocks, suggested_blocks, lower_bound_blocks (blocks),
// suggested_over_total (ratio). Severity: critical from Critical preemptions per 1,000 steps,
// warning with any preemption, info otherwise. Errors: only the Source's.
func KVPressure(src Source, opt KVOptions) (*Result, error) {
	sums, rows, err := kvPressure(src, &opt)
	if err != nil {
		return nil, err
	}
	res := &Result{Analysis: KVPressureName}
	res.Tables = []*Table{{Name: KVPressureTable, Columns: kvColumns, Rows: rows}}
	for _, s := range sums {
		f := Finding{Plugin: KVPressureName, Hosts: []string{s.Host}, FirstStep: s.FirstStep, LastStep: s.LastStep}
		ratio := 0.0
		if s.TotalBlocks > 0 {
			ratio = float64(s.SuggestedBlocks) / float64(s.TotalBlocks)
		}
		f.Numbers = []Number{
			{"preemptions", float64(s.Preemptions), "count"},
			{"preemptions_per_1k_steps", s.PreemptionsPer1kSteps, "count"},
			{"recomputed_tokens", float64(s.RecomputedTokens), "tokens"},
			{"alloc_failures", float64(s.AllocFailures), "count"},
			{"blocks_evicted", float64(s.BlocksEvicted), "blocks"},
			{"evicted_then_missed_blocks", float64(s.EvictedThenMissed), "blocks"},
			{"prefix_hit_rate", s.PrefixHitRate, "fraction"},
			{"peak_usage", s.PeakUsage, "fraction"},
			{"total_blocks", float64(s.TotalBlocks), "blocks"},
			{"suggested_blocks", float64(s.SuggestedBlocks), "blocks"},
			{"lower_bound_blocks", float64(s.LowerBoundBlocks), "blocks"},
			{"suggested_over_total", ratio, "ratio"},
		}
		switch {
		case s.Preemptions > 0 && s.PreemptionsPer1kSteps >= opt.Critical:
			f.Severity = SeverityCritical
		case s.Preemptions > 0:
			f.Severity = SeverityWarning
		default:
			f.Severity = SeverityInfo
		}
		if s.Preemptions > 0 {
			f.Title = fmt.Sprintf("%s dp %d: %d preemptions (%.1f per 1,000 steps) recomputed %d tokens; %d KV blocks (%.2fx the %d blocks, %d tokens) would have avoided them (at least %d needed)",
				s.Host, s.DP, s.Preemptions, s.PreemptionsPer1kSteps, s.RecomputedTokens, s.SuggestedBlocks, ratio,
				s.TotalBlocks, s.SuggestedBlocks*s.BlockSize, s.LowerBoundBlocks)
		} else {
			f.Title = fmt.Sprintf("%s dp %d: no preemptions in %d steps; peak KV usage %.0f%%, %d blocks evicted, prefix hit rate %.0f%%",
				s.Host, s.DP, s.Steps, 100*s.PeakUsage, s.BlocksEvicted, 100*s.PrefixHitRate)
		}
		res.Findings = append(res.Findings, f)
	}
	return res, nil
}

// KVSummaries returns the whole-session KV figures per EngineCore, ordered by dp and host.
// Errors: only the Source's.
func KVSummaries(src Source, opt KVOptions) ([]KVSummary, error) {
	sums, _, err := kvPressure(src, &opt)
	return sums, err
}

type kvStep struct {
	used, total, freed, failures   int64
	usage                          float64
	hit, query, evicted, evictions int64
	running, waiting, maxRunning   int64
	haveUsage, haveBatch           bool
	preempt, lost, lostBlocks      int64
}

func kvPressure(src Source, opt *KVOptions) ([]KVSummary, [][]string, error) {
	if opt.WindowSteps <= 0 {
		opt.WindowSteps = 1000
	}
	given := opt.BlockSize > 0
	if !given {
		opt.BlockSize = 16
	}
	if opt.Critical <= 0 {
		opt.Critical = 50
	}
	type eng struct {
		host  string
		dp    int64
		steps map[int64]*kvStep
		gcd   int64
		lost  []int64 // tokens_lost per preemption, with its step below
		lstep []int64
	}
	engines := map[procKey]*eng{}
	get := func(r Row) (*kvStep, *eng, bool) {
		step, ok := r.Int("step")
		if !ok || step < 0 {
			return nil, nil, false
		}
		k := keyOf(r)
		e := engines[k]
		if e == nil {
			dp, _ := r.Int("dp")
			e = &eng{host: r.Str("host"), dp: dp, steps: map[int64]*kvStep{}}
			engines[k] = e
		}
		s := e.steps[step]
		if s == nil {
			s = &kvStep{}
			e.steps[step] = s
		}
		return s, e, true
	}
	engineRole := func(r Row) bool { return r.Str("role") == "engine_core" }
	err := src.Rows("kv_cache_usage", func(r Row) error {
		if !engineRole(r) {
			return nil
		}
		s, e, ok := get(r)
		if !ok {
			return nil
		}
		free, _ := r.Int("free_blocks")
		s.total, _ = r.Int("total_blocks")
		s.used = s.total - free
		s.usage, _ = r.Float("usage")
		s.freed, _ = r.Int("blocks_freed")
		s.failures, _ = r.Int("alloc_failures")
		s.hit, _ = r.Int("prefix_hit_tokens")
		s.query, _ = r.Int("prefix_query_tokens")
		s.haveUsage = true
		if s.hit > 0 {
			e.gcd = gcd(e.gcd, s.hit)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	err = src.Rows("kv_cache_evictions", func(r Row) error {
		if !engineRole(r) {
			return nil
		}
		if s, _, ok := get(r); ok {
			v, _ := r.Int("evictions")
			b, _ := r.Int("blocks_evicted")
			s.evictions += v
			s.evicted += b
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	err = src.Rows("batch_utilization", func(r Row) error {
		if !engineRole(r) {
			return nil
		}
		if s, _, ok := get(r); ok {
			s.running, _ = r.Int("running")
			s.waiting, _ = r.Int("waiting")
			s.maxRunning, _ = r.Int("max_running_reqs")
			s.haveBatch = true
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	err = src.Rows("preemption_events", func(r Row) error {
		if !engineRole(r) {
			return nil
		}
		s, e, ok := get(r)
		if !ok {
			return nil
		}
		lost, _ := r.Int("tokens_lost")
		s.preempt++
		s.lost += lost
		step, _ := r.Int("step")
		e.lost = append(e.lost, lost)
		e.lstep = append(e.lstep, step)
		if !s.haveBatch {
			// the preemption's own queue lengths stand in when batch_utilization is off.
			run, _ := r.Int("running")
			wait, _ := r.Int("waiting")
			s.running, s.waiting = max(s.running, run), max(s.waiting, wait)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	keys := make([]procKey, 0, len(engines))
	for k := range engines {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := engines[keys[i]], engines[keys[j]]
		if a.dp != b.dp {
			return a.dp < b.dp
		}
		if a.host != b.host {
			return a.host < b.host
		}
		return keys[i].pid < keys[j].pid
	})
	var sums []KVSummary
	var rows [][]string
	for _, k := range keys {
		e := engines[k]
		bs := opt.BlockSize
		// hits are whole blocks, so their gcd is a multiple of the block size: it can only
		// overrule the default when 16 does not divide it.
		if !given && e.gcd > 0 && e.gcd%bs != 0 {
			bs = e.gcd
		}
		for i, l := range e.lost {
			e.steps[e.lstep[i]].lostBlocks += (l + bs - 1) / bs
		}
		steps := make([]int64, 0, len(e.steps))
		for st := range e.steps {
			steps = append(steps, st)
		}
		sort.Slice(steps, func(i, j int) bool { return steps[i] < steps[j] })
		type acc struct {
			KVSummary
			hit, query, pool int64
		}
		newAcc := func() *acc { a := &acc{}; a.FirstStep = -1; return a }
		all := newAcc()
		win := map[int64]*acc{}
		var wins []int64
		for _, st := range steps {
			s := e.steps[st]
			w := int64(0)
			if st > 0 {
				w = (st - 1) / int64(opt.WindowSteps)
			}
			if win[w] == nil {
				win[w] = newAcc()
				wins = append(wins, w)
			}
			for _, a := range []*acc{all, win[w]} {
				if a.FirstStep < 0 {
					a.FirstStep = st
				}
				a.LastStep = st
				if s.haveUsage {
					a.Steps++
				}
				a.PeakUsage = math.Max(a.PeakUsage, s.usage)
				a.Preemptions += s.preempt
				a.RecomputedTokens += s.lost
				a.AllocFailures += s.failures
				a.BlocksEvicted += s.evicted
				a.hit += s.hit
				a.query += s.query
				a.TotalBlocks = max(a.TotalBlocks, s.total)
				a.PreemptedRequestBlocks += s.lostBlocks
				// misses after evictions, capped by the evicted blocks not yet matched.
				a.pool += s.evicted
				if miss := (s.query - s.hit) / bs; miss > 0 && a.pool > 0 {
					m := min(miss, a.pool)
					a.EvictedThenMissed += m
					a.pool -= m
				}
				demand := s.used + s.lostBlocks
				a.LowerBoundBlocks = max(a.LowerBoundBlocks, demand)
				// the victims' blocks are in demand, so they count among the requests holding it.
				if holders := s.running + s.preempt; holders > 0 {
					a.PeakBlocksPerRequest = math.Max(a.PeakBlocksPerRequest, float64(demand)/float64(holders))
				}
				inflight := s.running + s.waiting
				if s.maxRunning > 0 {
					inflight = min(inflight, s.maxRunning)
				}
				a.PeakRequestsInFlight = max(a.PeakRequestsInFlight, inflight)
			}
		}
		finish := func(a *acc, window int64) {
			a.Host, a.DP, a.BlockSize = e.host, e.dp, bs
			if a.Steps > 0 {
				a.PreemptionsPer1kSteps = 1000 * float64(a.Preemptions) / float64(a.Steps)
			}
			if a.query > 0 {
				a.PrefixHitRate = float64(a.hit) / float64(a.query)
			}
			sug := ""
			if a.Preemptions > 0 {
				a.SuggestedBlocks = int64(math.Ceil(a.PeakBlocksPerRequest * float64(a.PeakRequestsInFlight)))
				a.SuggestedBlocks = max(a.SuggestedBlocks, a.LowerBoundBlocks, a.TotalBlocks+1)
				sug = fi(a.SuggestedBlocks)
			}
			rows = append(rows, []string{a.Host, fi(a.DP), fi(window), fi(a.FirstStep), fi(a.LastStep), fi(a.Steps),
				FormatFloat(a.PeakUsage), fi(a.Preemptions), FormatFloat(a.PreemptionsPer1kSteps),
				fi(a.RecomputedTokens), fi(a.AllocFailures), fi(a.BlocksEvicted), fi(a.EvictedThenMissed),
				FormatFloat(a.PrefixHitRate), fi(a.TotalBlocks), fi(bs), sug})
		}
		for _, w := range wins {
			finish(win[w], w)
		}
		finish(all, -1)
		sums = append(sums, all.KVSummary)
	}
	return sums, rows, nil
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
