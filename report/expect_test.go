package report_test

import (
	"encoding/csv"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/report"
)

// This file computes, straight from a session's CSV files with encoding/csv and none of the
// report's code, how many points, marks and cells each figure must draw.

type csvRow map[string]string

func readCSV(t *testing.T, dir, table string) []csvRow {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, table+".csv"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := csv.NewReader(f)
	head, err := r.Read()
	if err != nil {
		t.Fatal(err)
	}
	var out []csvRow
	for {
		rec, err := r.Read()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		row := csvRow{}
		for i, h := range head {
			row[h] = rec[i]
		}
		out = append(out, row)
	}
}

func (r csvRow) int(c string) (int64, bool) {
	v, err := strconv.ParseInt(r[c], 10, 64)
	return v, err == nil
}

func (r csvRow) float(c string) (float64, bool) {
	v, err := strconv.ParseFloat(r[c], 64)
	return v, err == nil && r[c] != ""
}

type point struct {
	series string
	ts     int64
}

// drawn is how many points each series keeps: its rows, or, once any series of the figure has
// more than maxPoints, the non-empty buckets of maxPoints equal buckets over the figure's time span
// for those series (the rule the captions state).
func drawn(pts []point, maxPoints int) map[string]int {
	n := map[string]int{}
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for _, p := range pts {
		n[p.series]++
		lo, hi = min(lo, p.ts), max(hi, p.ts)
	}
	over := map[string]bool{}
	for s, c := range n {
		if c > maxPoints {
			over[s] = true
		}
	}
	if len(over) == 0 {
		return n
	}
	width := (hi-lo)/int64(maxPoints) + 1
	buckets := map[string]map[int64]bool{}
	for _, p := range pts {
		if over[p.series] {
			if buckets[p.series] == nil {
				buckets[p.series] = map[int64]bool{}
			}
			buckets[p.series][(p.ts-lo)/width] = true
		}
	}
	for s := range over {
		n[s] = len(buckets[s])
	}
	return n
}

func aligned(r csvRow) int64 {
	if v, ok := r.int("ts_aligned_ns"); ok {
		return v
	}
	v, _ := r.int("ts_ns")
	return v
}

// expected returns figure id -> series -> count, and figure id -> the highlighted (slowest) rank.
func expected(t *testing.T, dir string, opt report.Options) (map[string]map[string]int, map[string]string) {
	t.Helper()
	maxPts := opt.MaxPoints
	if maxPts <= 0 {
		maxPts = 2000
	}
	m, err := hub.ReadMetadata(dir)
	if err != nil {
		t.Fatal(err)
	}
	proc := map[string]string{}
	for _, p := range m.Processes {
		proc[p.Host+"/"+strconv.FormatInt(p.PID, 10)] = p.Host + "/" + p.Proc
	}
	key := func(r csvRow) string { return proc[r["host"]+"/"+r["pid"]] }
	want := map[string]map[string]int{}
	hl := map[string]string{}

	var pts []point
	for _, r := range readCSV(t, dir, "kv_cache_usage") {
		if _, ok := r.float("usage"); ok {
			pts = append(pts, point{key(r), aligned(r)})
		}
	}
	kv := drawn(pts, maxPts)
	if pre := len(readCSV(t, dir, "preemption_events")); pre > 0 || len(kv) > 0 {
		kv["▲ preemption"] = min(pre, maxPts)
	}
	want["kv-usage"] = kv

	pts = nil
	times := map[string][]float64{}
	for _, r := range readCSV(t, dir, "forward_pass_timing") {
		if v, ok := r.float("cpu_ms"); ok {
			pts = append(pts, point{key(r), aligned(r)})
			times[key(r)] = append(times[key(r)], v)
		}
	}
	want["step-time"] = drawn(pts, maxPts)
	want["step-dist"] = map[string]int{}
	slow, slowMed := "", -1.0
	for k, v := range times {
		want["step-dist"][k] = 1
		sort.Float64s(v)
		med := v[len(v)/2]
		if len(v)%2 == 0 {
			med = (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		if med > slowMed {
			slow, slowMed = k, med
		}
	}
	if len(times) > 1 {
		hl["step-time"], hl["step-dist"] = slow, slow
	}

	ranks, modes := map[string]bool{}, map[string]bool{}
	for _, r := range readCSV(t, dir, "cuda_graph_usage") {
		ranks[key(r)] = true
		modes[r["runtime_mode"]] = true
	}
	want["graph-modes"], want["padding"] = map[string]int{}, map[string]int{}
	for md := range modes {
		want["graph-modes"][md] = len(ranks)
		want["padding"][md] = 1
	}

	cells := map[[2]string]bool{}
	for _, r := range readCSV(t, dir, "moe_expert_selection") {
		if _, ok := r.int("count"); ok && r["status"] == "counted" {
			cells[[2]string{r["layer_index"], r["expert"]}] = true
		}
	}
	want["expert-load"] = map[string]int{}
	if len(cells) > 0 {
		want["expert-load"]["layer × expert"] = len(cells)
	}

	var util, mem []point
	for _, r := range readCSV(t, dir, "gpu_metrics") {
		k := r["host"] + "/gpu" + r["gpu_index"]
		if rk, ok := r.int("rank"); ok && rk >= 0 {
			k += " (w" + r["rank"] + ")"
		}
		if _, ok := r.float("util_gpu"); ok {
			util = append(util, point{k, aligned(r)})
		}
		u, ok1 := r.int("mem_used_bytes")
		tot, ok2 := r.int("mem_total_bytes")
		if ok1 && ok2 && tot > 0 && u >= 0 {
			mem = append(mem, point{k, aligned(r)})
		}
	}
	want["gpu-util"], want["gpu-mem"] = drawn(util, maxPts), drawn(mem, maxPts)

	for fig, cols := range map[string][2]string{"batch-tokens": {"scheduled_tokens", "token_budget"}, "batch-reqs": {"running_reqs", "max_running_reqs"}} {
		pts = nil
		for _, r := range readCSV(t, dir, "batch_utilization") {
			if _, ok := r.int(cols[0]); ok {
				pts = append(pts, point{key(r), aligned(r)})
			}
			if b, ok := r.int(cols[1]); ok && b > 0 {
				pts = append(pts, point{key(r) + " " + cols[1], aligned(r)})
			}
		}
		want[fig] = drawn(pts, maxPts)
	}
	return want, hl
}
