package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/profilemate/profilemate/hub"
)

// fusedMoEStatus is the fused_moe target's status on every worker of the session (nil until every
// worker reported one).
func fusedMoEStatus(dir string, workers int) []string {
	m, err := hub.ReadMetadata(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, p := range m.Processes {
		if p.Role != "worker" {
			continue
		}
		for _, tg := range p.Targets {
			if tg.Target == "fused_moe" {
				out = append(out, tg.Status)
			}
		}
	}
	if len(out) != workers {
		return nil
	}
	return out
}

func allAre(v []string, want string) bool {
	for _, s := range v {
		if s != want {
			return false
		}
	}
	return len(v) > 0
}

// checkMoEAfterOn compares every moe_expert_selection row after step pauseStep (switched off and
// on again there) with the simulator's per-step truth on every worker: a row at step s with
// interval_steps n counts the steps s-n+1..s, so its count must equal the truth summed over them
// for its layer and expert; every expert with truth in those steps has a row; and the rows after
// "on" cover every step from the first of them to the worker's last step, none twice (the shim
// re-baselines at the first snapshot after "on", so that first interval starts after it).
func checkMoEAfterOn(t *testing.T, path, truthPath string, pauseStep, workers int) {
	t.Helper()
	tr := agReadTruth(t, truthPath)
	idx, rows := csvRows(t, path)
	type key struct {
		pid, layer, expert string
		step               int
	}
	got := map[key]int{}
	spans := map[string]map[int]int{} // pid -> step -> interval_steps
	for _, r := range rows {
		step, _ := strconv.Atoi(r[idx["step"]])
		if step <= pauseStep || r[idx["status"]] != "counted" {
			continue
		}
		n, _ := strconv.Atoi(r[idx["interval_steps"]])
		c, _ := strconv.Atoi(r[idx["count"]])
		pid := r[idx["pid"]]
		got[key{pid, r[idx["layer_index"]], r[idx["expert"]], step}] += c
		if spans[pid] == nil {
			spans[pid] = map[int]int{}
		}
		spans[pid][step] = n
	}
	checked := 0
	for _, p := range tr.Processes {
		if p.Role != "worker" {
			continue
		}
		checked++
		pid := fmt.Sprint(p.PID)
		steps := make([]int, 0, len(spans[pid]))
		for s := range spans[pid] {
			steps = append(steps, s)
		}
		sort.Ints(steps)
		if len(steps) == 0 {
			t.Errorf("worker %s (rank %d): no counted MoE rows after step %d", pid, p.Rank, pauseStep)
			continue
		}
		if last := steps[len(steps)-1]; last != len(p.ExpertCountsByStep) {
			t.Errorf("worker %s: last MoE row at step %d, the worker ran %d steps", pid, last, len(p.ExpertCountsByStep))
		}
		want := map[key]int{}
		for i, s := range steps {
			n := spans[pid][s]
			if i > 0 && s-n != steps[i-1] {
				t.Errorf("worker %s: row at step %d covers %d steps, the previous row ended at step %d", pid, s, n, steps[i-1])
			}
			for st := s - n + 1; st <= s; st++ {
				if st < 1 || st > len(p.ExpertCountsByStep) {
					t.Fatalf("worker %s: row at step %d covers step %d, outside the run's 1..%d", pid, s, st, len(p.ExpertCountsByStep))
				}
				for _, c := range p.ExpertCountsByStep[st-1] {
					want[key{pid, fmt.Sprint(c[0]), fmt.Sprint(c[1]), s}] += c[2]
				}
			}
		}
		bad := 0
		for k, w := range want {
			if got[k] != w {
				if bad++; bad <= 5 {
					t.Errorf("worker %s step %d layer %s expert %s: %d counted, truth %d", pid, k.step, k.layer, k.expert, got[k], w)
				}
			}
		}
		for k, g := range got {
			if _, ok := want[k]; k.pid == pid && !ok && g != 0 {
				if bad++; bad <= 5 {
					t.Errorf("worker %s step %d layer %s expert %s: %d counted, truth 0", pid, k.step, k.layer, k.expert, g)
				}
			}
		}
		if bad > 5 {
			t.Errorf("worker %s: %d mismatches in all", pid, bad)
		}
	}
	if checked != workers {
		t.Errorf("ground truth has %d workers, want %d", checked, workers)
	}
}

// maxStep is the highest step per pid in a session table (-1 for none).
func maxStep(t *testing.T, path string) map[string]int {
	t.Helper()
	idx, rows := csvRows(t, path)
	out := map[string]int{}
	for _, r := range rows {
		s, _ := strconv.Atoi(r[idx["step"]])
		if p := r[idx["pid"]]; s > out[p] {
			out[p] = s
		}
	}
	return out
}

// TestProfilersOffOnDuringRun: the simulated run pauses mid-session; `pmhub profilers off
// moe_expert --session S` reaches every worker through the agent (the fused_moe target reports
// "disabled"); after the run, no MoE rows have a step past the pause while forward passes do.
// A second run switches it off and on again during its pause: MoE rows come back after it on
// every worker, and each of them equals the simulator's per-step ground truth for the steps it
// covers, with no step after the first row after "on" left out (checkMoEAfterOn).
func TestProfilersOffOnDuringRun(t *testing.T) {
	bin(t, "pmagent")
	data := t.TempDir()
	h := startHub(t, data, freeAddr(t), "--plugins=false")
	workers := agWorkers()
	for _, back := range []bool{false, true} {
		name := map[bool]string{false: "off", true: "off-then-on"}[back]
		t.Run(name, func(t *testing.T) {
			session := fmt.Sprintf("20261130_062000_%06x", map[bool]int{false: 1, true: 2}[back])
			pause := filepath.Join(t.TempDir(), "continue")
			py, env, truthPath := agSim(t, "PMSIM_REQUESTS=12", "PMSIM_PAUSE_FILE="+pause, "PROFILEMATE_MOE_INTERVAL_STEPS=1")
			args := append([]string{"run", "--nats", h.url, "--host", "sw-host", "--session", session, "--spool-dir", t.TempDir()}, agSimArgs(py)...)
			p := agStart(t, env, args...)
			defer os.WriteFile(pause, nil, 0o644)
			dir := hub.SessionDir(data, session)
			agWaitFor(t, 3*time.Minute, "the pause with every worker's MoE target patched", func() bool {
				_, err := os.Stat(pause + ".waiting")
				return err == nil && allAre(fusedMoEStatus(dir, workers), "patched")
			})
			w, err := os.ReadFile(pause + ".waiting")
			if err != nil {
				t.Fatal(err)
			}
			pauseStep, _ := strconv.Atoi(strings.Fields(string(w))[1])

			pmhubOut(t, "profilers", "off", "moe_expert", "--session", session, "--nats", h.url)
			agWaitFor(t, time.Minute, "every worker's MoE target disabled", func() bool {
				return allAre(fusedMoEStatus(dir, workers), "disabled")
			})
			if back {
				pmhubOut(t, "profilers", "on", "moe_expert", "--session", session, "--host", "sw-host", "--nats", h.url)
				agWaitFor(t, time.Minute, "every worker's MoE target patched again", func() bool {
					return allAre(fusedMoEStatus(dir, workers), "patched")
				})
			}
			if err := os.WriteFile(pause, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := p.wait(t, 4*time.Minute); err != nil {
				t.Fatalf("pmagent run: %v\n%s", err, p.output())
			}
			agWaitFor(t, time.Minute, "the session to end", func() bool {
				m, err := hub.ReadMetadata(dir)
				return err == nil && m.Status == hub.StatusEnded
			})
			fp := maxStep(t, filepath.Join(dir, "forward_pass_timing.csv"))
			moe := maxStep(t, filepath.Join(dir, "moe_expert_selection.csv"))
			if len(fp) != workers {
				t.Fatalf("forward passes from %d workers, want %d", len(fp), workers)
			}
			for pid, last := range fp {
				if last <= pauseStep {
					t.Fatalf("worker %s stopped at step %d, before the pause at %d: the run did not go on", pid, last, pauseStep)
				}
				switch {
				case !back && moe[pid] > pauseStep:
					t.Errorf("worker %s: MoE rows up to step %d after being switched off at step %d", pid, moe[pid], pauseStep)
				case back && moe[pid] <= pauseStep:
					t.Errorf("worker %s: no MoE rows after being switched on again at step %d (last %d)", pid, pauseStep, moe[pid])
				}
			}
			if back {
				checkMoEAfterOn(t, filepath.Join(dir, "moe_expert_selection.csv"), truthPath, pauseStep, workers)
			}
		})
	}
}
