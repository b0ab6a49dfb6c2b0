package analysis

import (
	"strconv"
	"testing"
)

// benchSession is a synthetic session of ranks workers over steps: one forward_pass_timing and
// one cuda_graph_usage row per rank and step, 16 experts x 4 layers of moe_expert_selection per
// rank every 32 steps, one kv_cache_usage row per step.
func benchSession(ranks, steps int) (*Tables, int) {
	tb := NewTables()
	n := 0
	for rk := 0; rk < ranks; rk++ {
		pid := strconv.Itoa(1000 + rk)
		tb.AddProcess(Process{Host: "h" + strconv.Itoa(rk/8), PID: int64(1000 + rk), Role: "worker", Rank: int64(rk)})
		for st := 1; st <= steps; st++ {
			s := strconv.Itoa(st)
			host := "h" + strconv.Itoa(rk/8)
			tb.Add("forward_pass_timing", Row{"host": host, "pid": pid, "role": "worker", "dp": "0", "step": s,
				"ts_ns": strconv.Itoa(st * 1e7), "cpu_ms": strconv.FormatFloat(10+float64((st*7+rk)%5), 'f', 3, 64)})
			tb.Add("cuda_graph_usage", Row{"host": host, "pid": pid, "role": "worker", "dp": "0", "step": s,
				"runtime_mode": "FULL", "unpadded_tokens": strconv.Itoa(st % 300), "padded_tokens": strconv.Itoa(st%300 + 3),
				"eager_fallback": "false"})
			n += 2
			if st%32 == 0 {
				for l := 0; l < 4; l++ {
					for e := 0; e < 16; e++ {
						tb.Add("moe_expert_selection", Row{"host": host, "pid": pid, "role": "worker", "dp": "0", "step": s,
							"layer": "model.layers." + strconv.Itoa(l) + ".mlp.experts", "layer_index": strconv.Itoa(l),
							"expert": strconv.Itoa(e), "count": strconv.Itoa(1000 / (e + 1)), "interval_steps": "32", "status": "counted"})
						n++
					}
				}
			}
		}
	}
	for st := 1; st <= steps; st++ {
		tb.Add("kv_cache_usage", Row{"host": "h0", "pid": "1", "role": "engine_core", "dp": "0", "step": strconv.Itoa(st),
			"usage": "0.5", "free_blocks": "500", "total_blocks": "1000"})
		n++
	}
	return tb, n
}

// BenchmarkRunAll runs the four analyses over a 64-rank, 2,000-step session (docs/BENCHMARKS.md).
func BenchmarkRunAll(b *testing.B) {
	tb, rows := benchSession(64, 2000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := RunAll(tb); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
