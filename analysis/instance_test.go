package analysis

import (
	"strconv"
	"strings"
	"testing"
)

// oneInstanceOverHosts is a TP=4 instance over two hosts (ranks 0-1 on hostA, 2-3 on hostB, one
// DP replica) with CUDA graph and MoE rows from every worker; key "" leaves the instance unknown.
// twoDeployments makes it two TP=2 deployments instead, each host with ranks 0-1.
func oneInstanceOverHosts(key string, twoDeployments bool) *Tables {
	tb := NewTables()
	for i := int64(0); i < 4; i++ {
		host, rank := "hostA", i
		if i >= 2 {
			host = "hostB"
			if twoDeployments {
				rank = i - 2
			}
		}
		pid := 100 + i
		tb.AddProcess(Process{Host: host, PID: pid, Role: "worker", Rank: rank, DP: 0, TP: rank, InstanceKey: key})
		common := func(step int) Row {
			return Row{"host": host, "pid": strconv.FormatInt(pid, 10), "role": "worker", "dp": "0", "tp": strconv.FormatInt(rank, 10),
				"step": strconv.Itoa(step), "ts_ns": strconv.Itoa(step * 1e6)}
		}
		for _, n := range []int{8, 16} {
			r := common(0)
			r["num_tokens"] = strconv.Itoa(n)
			tb.Add("cuda_graph_captures", r)
		}
		for step := 1; step <= 20; step++ {
			r := common(step)
			tok := 8
			mode := "FULL"
			if step%2 == 0 {
				tok, mode = 100, "NONE"
				r["eager_fallback"] = "true"
			}
			r["runtime_mode"], r["unpadded_tokens"], r["padded_tokens"] = mode, strconv.Itoa(tok), strconv.Itoa(tok)
			tb.Add("cuda_graph_usage", r)
			for e := 0; e < 8; e++ {
				m := common(step)
				c := 1
				if e == 0 {
					c = 30
				}
				m["status"], m["layer"], m["layer_index"], m["expert"], m["count"] = "counted", "model.layers.0.mlp.experts", "0", strconv.Itoa(e), strconv.Itoa(c)
				tb.Add("moe_expert_selection", m)
			}
		}
	}
	return tb
}

// TestPerDPFindingsOncePerInstance: a DP replica whose workers span two hosts of one instance is
// one replica: moe_balance and cudagraph_coverage give one finding for it naming both hosts
// (they once gave one per host, the same finding twice), whether the metadata names the instance
// or only the workers' disjoint global ranks tell (a plugin's view: batches carry no instance
// key). Two deployments (each host with its own rank 0) stay two replicas, one finding each.
func TestPerDPFindingsOncePerInstance(t *testing.T) {
	count := func(tb *Tables) map[string][]Finding {
		res, err := RunAll(tb)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]Finding{}
		for _, r := range res {
			for _, f := range r.Findings {
				out[f.Plugin] = append(out[f.Plugin], f)
			}
		}
		return out
	}
	for _, key := range []string{"mp:10.0.0.1:29500", ""} {
		got := count(oneInstanceOverHosts(key, false))
		for _, name := range []string{MoEBalanceName, CUDAGraphCoverageName} {
			fs := got[name]
			if len(fs) != 1 {
				t.Errorf("key %q: %s: %d findings for one replica, want 1: %+v", key, name, len(fs), fs)
				continue
			}
			if strings.Join(fs[0].Hosts, ",") != "hostA,hostB" || !strings.HasPrefix(fs[0].Title, "hostA+hostB dp 0") {
				t.Errorf("key %q: %s: hosts %v title %q, want both hosts", key, name, fs[0].Hosts, fs[0].Title)
			}
		}
	}
	sep := count(oneInstanceOverHosts("", true))
	for _, name := range []string{MoEBalanceName, CUDAGraphCoverageName} {
		if len(sep[name]) != 2 {
			t.Errorf("%s of two deployments: %d findings, want one per host", name, len(sep[name]))
		}
	}
}

// TestStragglerHeadlineNamesEveryHost: stragglers on two hosts of one instance: the headline
// names both hosts and each straggler rank with its host (it once named the slowest rank's host
// only).
func TestStragglerHeadlineNamesEveryHost(t *testing.T) {
	tb := NewTables()
	timingRows(tb, "hostA", 10, 0, 20, 15)
	timingRows(tb, "hostA", 11, 1, 20, 10)
	timingRows(tb, "hostB", 20, 2, 20, 10)
	timingRows(tb, "hostB", 21, 3, 20, 14)
	timingRows(tb, "hostB", 22, 4, 20, 10)
	res, err := Straggler(tb, StragglerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := res.Findings[0]
	for _, want := range []string{"rank 0 on host hostA", "2 straggler ranks on 2 hosts: hostA 0; hostB 3"} {
		if !strings.Contains(f.Title, want) {
			t.Errorf("headline %q lacks %q", f.Title, want)
		}
	}
	if strings.Join(f.Hosts, ",") != "hostA,hostB" {
		t.Errorf("hosts %v, want both", f.Hosts)
	}
}
