// Package reporttest writes synthetic hub session folders (metadata.json and one CSV per table,
// exactly as the hub lays them out) for the report and export tests and benchmarks. The numbers are
// made up but shaped like a vLLM run: engines with KV usage and preemptions, TP workers with one
// slow rank, CUDA-graph modes with padding, MoE routing skewed towards low expert ids, NVML samples.
package reporttest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/proto"
)

// Spec sizes a synthetic session. Rows written: per step, per engine one kv_cache_usage and one
// batch_utilization row; per worker one forward_pass_timing and one cuda_graph_usage row; every
// MoEEvery steps per worker Layers×Experts moe_expert_selection rows; every GPUEvery steps one
// gpu_metrics row per worker GPU; one preemption every PreemptEvery steps per engine.
type Spec struct {
	Session        string
	Hosts          int
	WorkersPerHost int
	Steps          int
	Layers         int
	Experts        int
	MoEEvery       int
	GPUEvery       int
	PreemptEvery   int
	// Budget writes token_budget/max_running_reqs; false writes 0 (unknown), as vLLM eras without it do.
	Budget bool
	// StepNS is the time between steps (default 20 ms).
	StepNS int64
	// StartNS is the session start (default a fixed 2026 date).
	StartNS int64
}

// Small is a demo-sized session covering every plot: 2 hosts × 4 workers, 120 steps, 4 layers ×
// 8 experts, GPU samples, budgets known.
func Small() Spec {
	return Spec{Session: "20260101_000000_a1b2c3", Hosts: 2, WorkersPerHost: 4, Steps: 120, Layers: 4, Experts: 8,
		MoEEvery: 40, GPUEvery: 5, PreemptEvery: 30, Budget: true}
}

// Rows returns how many rows Write writes per table.
func (s Spec) Rows() map[string]int64 {
	s = s.defaults()
	eng, wk := int64(s.Hosts), int64(s.Hosts*s.WorkersPerHost)
	st := int64(s.Steps)
	r := map[string]int64{
		"kv_cache_usage": eng * st, "batch_utilization": eng * st,
		"forward_pass_timing": wk * st, "cuda_graph_usage": wk * st,
	}
	if s.PreemptEvery > 0 {
		r["preemption_events"] = eng * (st / int64(s.PreemptEvery))
	}
	if s.MoEEvery > 0 && s.Layers > 0 && s.Experts > 0 {
		r["moe_expert_selection"] = wk * (st / int64(s.MoEEvery)) * int64(s.Layers*s.Experts)
	}
	if s.GPUEvery > 0 {
		r["gpu_metrics"] = wk * ((st + int64(s.GPUEvery) - 1) / int64(s.GPUEvery))
	}
	return r
}

func (s Spec) defaults() Spec {
	if s.StepNS == 0 {
		s.StepNS = 20e6
	}
	if s.StartNS == 0 {
		s.StartNS = 1767225600e9
	}
	if s.Session == "" {
		s.Session = "20260101_000000_a1b2c3"
	}
	return s
}

type tableWriter struct {
	f    *os.File
	w    *bufio.Writer
	cols []string
	buf  []byte
}

// Write creates dir (the session folder) with metadata.json and the CSVs. Errors: the folder
// cannot be written.
func Write(dir string, s Spec) error {
	s = s.defaults()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("synthetic session: %w", err)
	}
	reg := proto.Default()
	tw := map[string]*tableWriter{}
	open := func(table string) (*tableWriter, error) {
		if t := tw[table]; t != nil {
			return t, nil
		}
		sc, ok := reg.Table(table)
		if !ok {
			return nil, fmt.Errorf("synthetic session: no table %s", table)
		}
		f, err := os.Create(filepath.Join(dir, table+".csv"))
		if err != nil {
			return nil, fmt.Errorf("synthetic session: %w", err)
		}
		t := &tableWriter{f: f, w: bufio.NewWriterSize(f, 1<<20), cols: append(sc.Header(), "ts_aligned_ns")}
		for i, c := range t.cols {
			if i > 0 {
				t.w.WriteByte(',')
			}
			t.w.WriteString(c)
		}
		t.w.WriteByte('\n')
		tw[table] = t
		return t, nil
	}
	meta := &hub.Metadata{SchemaVersion: proto.SchemaVersion, Session: s.Session, Status: hub.StatusEnded, EndReason: hub.EndAllProcessesEnded,
		StartNS: s.StartNS, EndNS: s.StartNS + int64(s.Steps+10)*s.StepNS,
		TimeAlignment: "synthetic: ts_aligned_ns = ts_ns + hosts[host].offset_ns",
		Hosts:         map[string]*hub.HostMeta{}, Rows: map[string]int64{}}
	type proc struct {
		host   string
		pid    int64
		role   string
		dp, tp int64
		offset int64
	}
	var engines, workers []proc
	pid := int64(1000)
	for h := 0; h < s.Hosts; h++ {
		host := fmt.Sprintf("host%c", 'A'+h%26)
		if h >= 26 {
			host += strconv.Itoa(h / 26)
		}
		off := int64(h) * 15000
		meta.Hosts[host] = &hub.HostMeta{OffsetNS: off, UncertaintyNS: 50000, Measured: true, Heartbeats: 3, AgentVersion: "test",
			Started: true, Ended: true, EndReason: "closed", LastSeenNS: meta.EndNS}
		add := func(role, tok string, dp, tp, rank int64) proc {
			pid++
			p := proc{host: host, pid: pid, role: role, dp: dp, tp: tp, offset: off}
			meta.Processes = append(meta.Processes, &hub.ProcMeta{Host: host, PID: pid, Proc: tok,
				Ident: hub.Ident{Role: role, DP: dp, PP: -1, TP: tp, EP: -1, Rank: rank}, Python: "3.11.7", VLLM: "0.28.0",
				StartNS: s.StartNS, Ended: true, EndNS: meta.EndNS, Gaps: [][2]uint64{}, Rows: map[string]int64{},
				Targets: []hub.Target{{Target: "scheduler", Status: "patched"}, {Target: "fused_moe", Status: "patched"}}})
			return p
		}
		engines = append(engines, add(proto.RoleEngineCore, "eng0", 0, -1, -1))
		for w := 0; w < s.WorkersPerHost; w++ {
			workers = append(workers, add(proto.RoleWorker, "w"+strconv.Itoa(w), 0, int64(w), int64(w)))
		}
	}
	rng := rand.New(rand.NewPCG(7, 11))
	seq := map[int64]int64{}
	row := func(table string, p proc, step, ts int64, vals map[string]string) error {
		t, err := open(table)
		if err != nil {
			return err
		}
		seq[p.pid]++
		common := map[string]string{"session": s.Session, "host": p.host, "pid": strconv.FormatInt(p.pid, 10), "role": p.role,
			"dp": strconv.FormatInt(p.dp, 10), "pp": "-1", "tp": strconv.FormatInt(p.tp, 10), "ep": "-1",
			"seq": strconv.FormatInt(seq[p.pid], 10), "step": strconv.FormatInt(step, 10), "ts_ns": strconv.FormatInt(ts, 10),
			"ts_aligned_ns": strconv.FormatInt(ts+p.offset, 10)}
		for i, c := range t.cols {
			if i > 0 {
				t.w.WriteByte(',')
			}
			v, ok := common[c]
			if !ok {
				v = vals[c]
			}
			t.w.WriteString(v)
		}
		t.w.WriteByte('\n')
		meta.Rows[table]++
		for _, pm := range meta.Processes {
			if pm.PID == p.pid {
				pm.Rows[table]++
			}
		}
		return nil
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', 8, 64) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	budget, maxReqs := int64(0), int64(0)
	if s.Budget {
		budget, maxReqs = 2048, 64
	}
	sizes := []int64{8, 16, 32, 64, 128, 256, 512}
	for step := int64(1); step <= int64(s.Steps); step++ {
		base := s.StartNS + step*s.StepNS
		for e, p := range engines {
			u := 0.5 + 0.45*math.Sin(float64(step)/15+float64(e))
			sched := int64(256 + rng.IntN(1500))
			reqs := int64(4 + rng.IntN(60))
			if err := row("kv_cache_usage", p, step, base, map[string]string{"usage": f(u), "free_blocks": i(int64((1 - u) * 1000)),
				"total_blocks": "1000", "blocks_allocated": i(int64(rng.IntN(20))), "blocks_freed": i(int64(rng.IntN(20))),
				"alloc_failures": "0", "prefix_hit_tokens": "0", "prefix_query_tokens": "0"}); err != nil {
				return err
			}
			bs, rs := "0", "0"
			if budget > 0 {
				bs, rs = f(float64(sched)/float64(budget)), f(float64(reqs)/float64(maxReqs))
			}
			if err := row("batch_utilization", p, step, base+1000, map[string]string{"scheduled_tokens": i(sched), "token_budget": i(budget),
				"token_util": bs, "running_reqs": i(reqs), "max_running_reqs": i(maxReqs), "req_util": rs, "waiting": i(int64(rng.IntN(30))),
				"running": i(reqs), "prefill_tokens": i(sched / 2), "decode_tokens": i(sched - sched/2)}); err != nil {
				return err
			}
			if s.PreemptEvery > 0 && step%int64(s.PreemptEvery) == 0 {
				if err := row("preemption_events", p, step, base+2000, map[string]string{"request_id": fmt.Sprintf("req-%d-%d", e, step),
					"tokens_lost": "187", "preemption_count": "1", "kv_usage": f(u), "waiting": "10", "running": "5", "source": "scheduler: _preempt_request"}); err != nil {
					return err
				}
			}
		}
		for w, p := range workers {
			ms := 2 + rng.Float64()
			if w == len(workers)-1 {
				ms *= 1.6 // the straggler
			}
			mode := "FULL"
			switch {
			case step <= 3:
				mode = "NONE"
			case step%7 == 0:
				mode = "PIECEWISE"
			}
			unp := int64(1 + rng.IntN(500))
			pad := unp
			if mode != "NONE" {
				for _, z := range sizes {
					if z >= unp {
						pad = z
						break
					}
				}
			}
			ts := base + 100000 + int64(w)*1000
			if err := row("forward_pass_timing", p, step, ts, map[string]string{"cpu_ms": f(ms), "gpu_ms": "", "gpu_status": "unavailable",
				"tokens": i(pad), "runtime_mode": mode}); err != nil {
				return err
			}
			if err := row("cuda_graph_usage", p, step, ts-500, map[string]string{"runtime_mode": mode, "unpadded_tokens": i(unp), "padded_tokens": i(pad),
				"num_reqs": "4", "eager_fallback": strconv.FormatBool(mode == "NONE"), "source": "dispatcher"}); err != nil {
				return err
			}
			if s.MoEEvery > 0 && step%int64(s.MoEEvery) == 0 {
				for l := 0; l < s.Layers; l++ {
					for x := 0; x < s.Experts; x++ {
						n := int64(1000/(x+1) + rng.IntN(100))
						if err := row("moe_expert_selection", p, step, ts+int64(l*s.Experts+x), map[string]string{
							"layer": fmt.Sprintf("model.layers.%d.mlp.experts", l), "layer_index": i(int64(l)), "expert": i(int64(x)),
							"count": i(n), "interval_steps": i(int64(s.MoEEvery)), "status": "counted", "runtime_modes": "FULL|PIECEWISE"}); err != nil {
							return err
						}
					}
				}
			}
			if s.GPUEvery > 0 && (step-1)%int64(s.GPUEvery) == 0 {
				if err := row("gpu_metrics", p, -1, ts+3000, map[string]string{"gpu_index": i(p.tp), "gpu_uuid": fmt.Sprintf("GPU-%s-%d", p.host, p.tp),
					"gpu_name": "NVIDIA H200", "util_gpu": f(60 + 35*rng.Float64()), "util_mem": f(30 + 20*rng.Float64()),
					"mem_used_bytes": i(int64(100e9 + rng.IntN(30e9))), "mem_total_bytes": i(141e9), "power_w": "500", "sm_clock_mhz": "1980",
					"temperature_c": "60", "throttle_reasons": "0", "throttle": "", "processes": fmt.Sprintf("%d:100000000000", p.pid), "rank": i(p.tp)}); err != nil {
					return err
				}
			}
		}
	}
	for _, t := range tw {
		if err := t.w.Flush(); err != nil {
			return fmt.Errorf("synthetic session: %w", err)
		}
		if err := t.f.Close(); err != nil {
			return fmt.Errorf("synthetic session: %w", err)
		}
	}
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, hub.MetadataFile), b, 0o644)
}
