package analysis

import (
	"math"
	"strconv"
	"testing"
)

// The rank slowed down with PMSIM_SLOW_RANK is the one named, at the ratio the knobs set:
// (step work + slow ms) / step work, within 5 %. The simulator spins for the step work on the
// wall clock, so a loaded machine adds the same few ms to every rank; a long step and a modest
// ratio keep that error far inside 5 % (it is about extra·slow/(work·(work+slow))).
func TestStragglerNamesSimulatorSlowRank(t *testing.T) {
	const work, slow, rank = 200.0, 60.0, 2
	dir, truth := runSim(t, map[string]string{"PMSIM_TP": "4", "PMSIM_SLOW_RANK": strconv.Itoa(rank),
		"PMSIM_STEP_WORK_MS": "200", "PMSIM_SLOW_MS": "60", "PMSIM_REQUESTS": "6", "PMSIM_MAX_TOKENS": "8"})
	res, err := Straggler(open(t, dir), StragglerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Findings) != 1 {
		t.Fatalf("got %d findings, want 1: %v", len(res.Findings), res.Findings)
	}
	f := res.Findings[0]
	t.Log(f)
	if len(f.Ranks) != 1 || f.Ranks[0] != rank {
		t.Errorf("ranks %v, want [%d]", f.Ranks, rank)
	}
	want := (work + slow) / work
	got, _ := f.Number("ratio_to_median")
	if math.Abs(got-want)/want > 0.05 {
		t.Errorf("ratio_to_median %.3f, want %.3f ±5%%", got, want)
	}
	if f.Severity != SeverityWarning {
		t.Errorf("severity %s, want warning at %.2fx (between 1.10x and 1.50x)", f.Severity, got)
	}
	if sh, _ := f.Number("slowest_share"); sh < 0.75 {
		t.Errorf("slowest_share %.2f, want >= 0.75 (the rank is slowed on every step)", sh)
	}
	if hw, _ := f.Number("host_wide"); hw != 0 {
		t.Errorf("host_wide %v, want 0: the host has three healthy ranks", hw)
	}
	steps, _ := f.Number("steps")
	runner := truth.Processes[truth.runner(t)]
	if int(steps) != len(runner.RunnerStepMS) {
		t.Errorf("steps %v, want the %d runner steps of the ground truth", steps, len(runner.RunnerStepMS))
	}
	if tb := res.Table(StragglerRanksTable); tb == nil || len(tb.Rows) != 4 {
		t.Errorf("straggler_ranks: want 4 rows, got %+v", tb)
	}
}

func timingRows(tb *Tables, host string, pid, rank int64, steps int, ms float64) {
	tb.AddProcess(Process{Host: host, PID: pid, Role: "worker", Rank: rank})
	for s := 1; s <= steps; s++ {
		tb.Add("forward_pass_timing", Row{"host": host, "pid": strconv.FormatInt(pid, 10), "role": "worker",
			"tp": "0", "step": strconv.Itoa(s), "ts_ns": strconv.Itoa(s * 1e9), "cpu_ms": FormatFloat(ms)})
	}
}

// Both ranks of one host are slow and the other host's are not: the host is named, host_wide = 1;
// ranks come from the process metadata, not the (here identical) tp column.
func TestStragglerHostWide(t *testing.T) {
	tb := NewTables()
	timingRows(tb, "a", 10, 0, 20, 10)
	timingRows(tb, "a", 11, 1, 20, 10)
	timingRows(tb, "b", 20, 2, 20, 15)
	timingRows(tb, "b", 21, 3, 20, 15)
	timingRows(tb, "c", 30, 4, 20, 10)
	res, err := Straggler(tb, StragglerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := res.Findings[0]
	if hw, _ := f.Number("host_wide"); hw != 1 {
		t.Errorf("host_wide %v, want 1 (%v)", hw, f)
	}
	if len(f.Hosts) != 1 || f.Hosts[0] != "b" || len(f.Ranks) != 2 {
		t.Errorf("hosts %v ranks %v, want [b] and ranks 2,3", f.Hosts, f.Ranks)
	}
	if r, _ := f.Number("ratio_to_median"); r != 1.5 || f.Severity != SeverityCritical {
		t.Errorf("ratio %v severity %s, want 1.5 critical", r, f.Severity)
	}
}

// Equal ranks: an info finding that says so with the numbers; one rank: no finding.
func TestStragglerNone(t *testing.T) {
	tb := NewTables()
	timingRows(tb, "a", 10, 0, 5, 10)
	timingRows(tb, "a", 11, 1, 5, 10)
	res, _ := Straggler(tb, StragglerOptions{})
	if f := res.Findings[0]; f.Severity != SeverityInfo {
		t.Errorf("got %v, want info", f)
	}
	one := NewTables()
	timingRows(one, "a", 10, 0, 5, 10)
	res, _ = Straggler(one, StragglerOptions{})
	if len(res.Findings) != 0 {
		t.Errorf("one rank: got %v, want no finding", res.Findings)
	}
}
