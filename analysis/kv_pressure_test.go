package analysis

import (
	"strconv"
	"testing"
)

// A small KV pool preempts; the counts agree with the ground truth, and re-running the same
// workload with the suggested KV size has no preemption at all: for a pool that thrashes (48
// blocks) and one that preempts once (96 blocks).
func TestKVSuggestionRemovesPreemptions(t *testing.T) {
	for _, blocks := range []int64{48, 96} {
		t.Run(strconv.FormatInt(blocks, 10), func(t *testing.T) { kvSuggestionRerun(t, blocks) })
	}
}

func kvSuggestionRerun(t *testing.T, blocks int64) {
	env := map[string]string{"PMSIM_TP": "1", "PMSIM_NUM_BLOCKS": strconv.FormatInt(blocks, 10)}
	dir, truth := runSim(t, env)
	eng := truth.Processes[truth.engine(t)]
	if len(eng.Preemptions) == 0 {
		t.Fatalf("the simulator did not preempt with %d blocks: the test proves nothing", blocks)
	}
	sums, err := KVSummaries(open(t, dir), KVOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 1 {
		t.Fatalf("want one engine, got %+v", sums)
	}
	s := sums[0]
	var lost int64
	for _, p := range eng.Preemptions {
		lost += p.TokensLost
	}
	if s.Preemptions != int64(len(eng.Preemptions)) || s.RecomputedTokens != lost {
		t.Errorf("preemptions %d recomputed %d, want %d %d", s.Preemptions, s.RecomputedTokens, len(eng.Preemptions), lost)
	}
	if s.AllocFailures != eng.AllocFailures {
		t.Errorf("alloc failures %d, want %d", s.AllocFailures, eng.AllocFailures)
	}
	if s.Steps != eng.SchedulerSteps {
		t.Errorf("steps %d, want %d", s.Steps, eng.SchedulerSteps)
	}
	want := 1000 * float64(len(eng.Preemptions)) / float64(eng.SchedulerSteps)
	if s.PreemptionsPer1kSteps != want {
		t.Errorf("per 1k steps %v, want %v", s.PreemptionsPer1kSteps, want)
	}
	if s.TotalBlocks != blocks || s.BlockSize != 16 {
		t.Errorf("total %d block size %d, want %d and 16 (PMSIM_BLOCK_SIZE default)", s.TotalBlocks, s.BlockSize, blocks)
	}
	if s.SuggestedBlocks <= s.TotalBlocks || s.LowerBoundBlocks > s.SuggestedBlocks {
		t.Fatalf("suggested %d lower bound %d for %d blocks", s.SuggestedBlocks, s.LowerBoundBlocks, s.TotalBlocks)
	}
	t.Logf("suggested %d blocks (lower bound %d)", s.SuggestedBlocks, s.LowerBoundBlocks)

	env["PMSIM_NUM_BLOCKS"] = strconv.FormatInt(s.SuggestedBlocks, 10)
	dir2, truth2 := runSim(t, env)
	if n := len(truth2.Processes[truth2.engine(t)].Preemptions); n != 0 {
		t.Fatalf("re-run with %d blocks: %d preemptions, want 0", s.SuggestedBlocks, n)
	}
	res, err := KVPressure(open(t, dir2), KVOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if f := res.Findings[0]; f.Severity != SeverityInfo {
		t.Errorf("re-run: got %v, want an info finding", f)
	}
}

// Evicted blocks are matched against later prefix-cache misses, capped by what was evicted.
func TestKVEvictedThenMissed(t *testing.T) {
	tb := NewTables()
	row := func(step int, hit, query int) {
		tb.Add("kv_cache_usage", Row{"role": "engine_core", "pid": "1", "step": strconv.Itoa(step), "usage": "0.5",
			"free_blocks": "5", "total_blocks": "10", "prefix_hit_tokens": strconv.Itoa(hit),
			"prefix_query_tokens": strconv.Itoa(query)})
	}
	row(1, 16, 16)
	tb.Add("kv_cache_evictions", Row{"role": "engine_core", "pid": "1", "step": "2", "evictions": "1", "blocks_evicted": "3"})
	row(2, 0, 0)
	row(3, 16, 16+5*16) // 5 blocks missed, only 3 evicted before
	row(4, 0, 2*16)     // nothing evicted left to match
	sums, err := KVSummaries(tb, KVOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := sums[0]; s.EvictedThenMissed != 3 || s.BlocksEvicted != 3 || s.Preemptions != 0 || s.SuggestedBlocks != 0 {
		t.Errorf("got %+v, want 3 evicted then missed, no preemption, no suggestion", s)
	}
}

// Prefix hits are whole blocks, so their gcd (48 here) is a multiple of the block size, not the
// block size: 16 stays unless the gcd says otherwise (24 → not a multiple of 16 → 24); a given
// size wins.
func TestKVBlockSize(t *testing.T) {
	for _, tt := range []struct {
		hits  []int
		given int64
		want  int64
	}{{[]int{48, 96}, 0, 16}, {[]int{24, 48}, 0, 24}, {nil, 0, 16}, {[]int{48}, 32, 32}} {
		tb := NewTables()
		for i, h := range tt.hits {
			tb.Add("kv_cache_usage", Row{"role": "engine_core", "pid": "1", "step": strconv.Itoa(i + 1),
				"total_blocks": "10", "free_blocks": "5", "prefix_hit_tokens": strconv.Itoa(h), "prefix_query_tokens": strconv.Itoa(h)})
		}
		tb.Add("kv_cache_usage", Row{"role": "engine_core", "pid": "1", "step": "9", "total_blocks": "10", "free_blocks": "5"})
		sums, err := KVSummaries(tb, KVOptions{BlockSize: tt.given})
		if err != nil {
			t.Fatal(err)
		}
		if sums[0].BlockSize != tt.want {
			t.Errorf("hits %v given %d: block size %d, want %d", tt.hits, tt.given, sums[0].BlockSize, tt.want)
		}
	}
}
