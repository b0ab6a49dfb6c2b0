package analysis

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// With captures only up to 64 (or 8) tokens the larger batches run eager; re-running the same
// workload with the suggested sizes added turns exactly those steps into graph replays.
func TestCaptureSizesTurnEagerStepsIntoReplays(t *testing.T) {
	for _, tt := range []struct{ base, budget string }{{"1,2,4,8,16,32,64", "256"}, {"1,2,4,8", "512"}} {
		t.Run(tt.base, func(t *testing.T) { captureRerun(t, tt.base, tt.budget) })
	}
}

func captureRerun(t *testing.T, base, budget string) {
	env := map[string]string{"PMSIM_TP": "1", "PMSIM_CAPTURE_SIZES": base, "PMSIM_TOKEN_BUDGET": budget}
	dir, truth := runSim(t, env)
	run := truth.Processes[truth.runner(t)]
	eager := run.StepsByMode["NONE"]
	if eager == 0 {
		t.Fatal("no eager steps: the test proves nothing")
	}
	sums, err := CUDAGraphSummaries(open(t, dir), CUDAGraphOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 1 {
		t.Fatalf("want one replica, got %d", len(sums))
	}
	s := sums[0]
	if s.EagerSteps != eager || s.EagerFallbackSteps != eager || s.Steps != int64(len(run.TokensByStep)) {
		t.Errorf("eager %d fallback %d steps %d, want %d %d %d", s.EagerSteps, s.EagerFallbackSteps, s.Steps,
			eager, eager, len(run.TokensByStep))
	}
	if want, _ := strconv.ParseInt(base[strings.LastIndex(base, ",")+1:], 10, 64); s.MaxCaptured != want {
		t.Errorf("max captured %d, want %d", s.MaxCaptured, want)
	}
	var covered int64
	var sizes []string
	for _, c := range s.Suggested {
		covered += c.Steps
		sizes = append(sizes, fmt.Sprint(c.Size))
		if c.Size%8 != 0 {
			t.Errorf("size %d is not a multiple of 8", c.Size)
		}
	}
	if covered != eager || len(s.Suggested) == 0 || len(s.Suggested) > 4 {
		t.Fatalf("suggested %+v covers %d steps, want %d with at most 4 sizes", s.Suggested, covered, eager)
	}
	t.Logf("suggested sizes %v for %d eager steps", sizes, eager)

	env["PMSIM_CAPTURE_SIZES"] = base + "," + strings.Join(sizes, ",")
	_, truth2 := runSim(t, env)
	run2 := truth2.Processes[truth2.runner(t)]
	if n := run2.StepsByMode["NONE"]; n != 0 {
		t.Errorf("re-run: %d eager steps, want 0", n)
	}
	if len(run2.TokensByStep) != len(run.TokensByStep) {
		t.Fatalf("re-run has %d steps, want the same %d", len(run2.TokensByStep), len(run.TokensByStep))
	}
	for i, st := range run.TokensByStep {
		if st[2] == "NONE" && run2.TokensByStep[i][2] == "NONE" {
			t.Errorf("step %d (%v tokens) still eager", i+1, st[0])
		}
	}
}

// The size choice is the least padding over all ways of covering the counts with k sizes,
// checked against brute force.
func TestSuggestSizesOptimal(t *testing.T) {
	ns := []int64{70, 72, 100, 101, 130, 250, 251, 90, 90, 200}
	for k := 1; k <= 5; k++ {
		got := suggestSizes(ns, k, 8)
		var pad int64
		for _, c := range got {
			pad += c.PaddingTokens
		}
		if best := brutePadding(ns, k, 8); pad != best {
			t.Errorf("k=%d: padding %d (%+v), want the least %d", k, pad, got, best)
		}
	}
	if got := suggestSizes(nil, 4, 8); got != nil {
		t.Errorf("no eager steps: got %v", got)
	}
}

func brutePadding(ns []int64, k int, align int64) int64 {
	set := map[int64]bool{}
	for _, n := range ns {
		set[(n+align-1)/align*align] = true
	}
	var cand []int64
	for v := range set {
		cand = append(cand, v)
	}
	sort.Slice(cand, func(i, j int) bool { return cand[i] < cand[j] })
	best := int64(math.MaxInt64)
	for mask := 1; mask < 1<<len(cand); mask++ {
		var sizes []int64
		for i, v := range cand {
			if mask&(1<<i) != 0 {
				sizes = append(sizes, v)
			}
		}
		if len(sizes) > k || sizes[len(sizes)-1] != cand[len(cand)-1] {
			continue
		}
		var pad int64
		for _, n := range ns {
			for _, s := range sizes {
				if s >= n {
					pad += s - n
					break
				}
			}
		}
		best = min(best, pad)
	}
	return best
}

// Two deployments in one session each have a dp 0: each gets its own coverage.
func TestCUDAGraphReplicasPerHost(t *testing.T) {
	tb := NewTables()
	for _, h := range []string{"a", "b"} {
		for step := 1; step <= 4; step++ {
			mode, fb := "FULL", "false"
			if h == "b" && step > 2 {
				mode, fb = "NONE", "true"
			}
			tb.Add("cuda_graph_usage", Row{"host": h, "pid": "1", "dp": "0", "step": strconv.Itoa(step),
				"runtime_mode": mode, "unpadded_tokens": "100", "padded_tokens": "100", "eager_fallback": fb})
		}
	}
	sums, err := CUDAGraphSummaries(tb, CUDAGraphOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 2 || sums[0].Host != "a" || sums[0].EagerSteps != 0 || sums[1].EagerFallbackSteps != 2 ||
		sums[1].Steps != 4 || len(sums[1].Suggested) != 1 || sums[1].Suggested[0].Size != 104 {
		t.Errorf("got %+v", sums)
	}
}
