package analysis

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/internal/pyenv"
	"github.com/profilemate/profilemate/internal/testkit"
)

// simTruth is the part of pmsim's ground truth (docs/testbed.md "Ground truth") the tests use.
type simTruth struct {
	Processes []struct {
		Role        string `json:"role"`
		Rank        int64  `json:"rank"`
		Preemptions []struct {
			TokensLost int64 `json:"tokens_lost"`
		} `json:"preemptions"`
		AllocFailures  int64            `json:"alloc_failures"`
		Evictions      int64            `json:"evictions"`
		SchedulerSteps int64            `json:"scheduler_steps"`
		StepsByMode    map[string]int64 `json:"steps_by_mode"`
		TokensByStep   [][]any          `json:"tokens_by_step"`
		ExpertCounts   [][]float64      `json:"expert_counts"`
		RunnerStepMS   []float64        `json:"runner_step_ms"`
	} `json:"processes"`
}

// engine is the EngineCore's record; runner the first process that ran the model (a worker, or
// the EngineCore itself with PMSIM_TP=1).
func (s *simTruth) engine(t *testing.T) int {
	for i, p := range s.Processes {
		if p.Role == "engine_core" {
			return i
		}
	}
	t.Fatal("ground truth has no engine_core")
	return -1
}

func (s *simTruth) runner(t *testing.T) int {
	for i, p := range s.Processes {
		if p.StepsByMode != nil {
			return i
		}
	}
	t.Fatal("ground truth has no model runner")
	return -1
}

// python picks the interpreter the simulator runs under: 3.11 when pyenv has it, else the newest
// supported one, else python3 on PATH.
func python(t *testing.T) string {
	found, _ := pyenv.Find()
	for _, p := range found {
		if p.Version == "3.11" {
			return p.Path
		}
	}
	if len(found) > 0 {
		return found[len(found)-1].Path
	}
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	return p
}

// runSim runs `vllm serve` of the simulator (era main_2026_08_20) with the real shim writing its
// standalone session folder, and returns that folder and the ground truth. env holds PMSIM_*
// settings on top of a fast workload (PMSIM_STEP_WORK_MS=0 unless given).
func runSim(t *testing.T, env map[string]string) (string, *simTruth) {
	t.Helper()
	root := testkit.RepoRoot(t)
	tmp := t.TempDir()
	gt := filepath.Join(tmp, "truth.json")
	out := filepath.Join(tmp, "pm")
	cmd := exec.Command(python(t), filepath.Join(root, "testbed", "bin", "vllm"), "serve", "sim/moe")
	cmd.Dir = tmp
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PMSIM_") || strings.HasPrefix(k, "PROFILEMATE_") || strings.HasPrefix(k, "VLLM_") || k == "PYTHONPATH" {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	vars := map[string]string{
		"PYTHONPATH": strings.Join([]string{filepath.Join(root, "shim"),
			filepath.Join(root, "testbed", "eras", "main_2026_08_20"), filepath.Join(root, "testbed")}, ":"),
		"PYTHONDONTWRITEBYTECODE": "1",
		"PMSIM_GROUND_TRUTH":      gt,
		"PMSIM_STEP_WORK_MS":      "0",
		"PROFILEMATE_OUTPUT_DIR":  out,
		"PROFILEMATE_SOCKET":      "off", // the folder sink, even where an agent listens at a default socket
	}
	for k, v := range env {
		vars[k] = v
	}
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+vars[k])
	}
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("simulator %v: %v\n%s", env, err, tail(string(b), 3000))
	}
	raw, err := os.ReadFile(gt)
	if err != nil {
		t.Fatalf("ground truth: %v\n%s", err, tail(string(b), 3000))
	}
	var truth simTruth
	if err := json.Unmarshal(raw, &truth); err != nil {
		t.Fatalf("ground truth: %v", err)
	}
	sessions, _ := filepath.Glob(filepath.Join(out, "session_*"))
	if len(sessions) != 1 {
		t.Fatalf("want one session folder under %s, got %v\n%s", out, sessions, tail(string(b), 3000))
	}
	return sessions[0], &truth
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func open(t *testing.T, dir string) *Dir {
	t.Helper()
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
