package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// markedProcesses are the live processes whose environment holds mark ("NAME=value"): the
// descendants of a command started with it, wherever they were reparented. Zombies (no
// environment left) are not counted.
func markedProcesses(t *testing.T, mark string, except int) map[int]string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	found := map[int]string{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == except {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !bytes.Contains(append(env, 0), []byte(mark+"\x00")) {
			continue
		}
		argv, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		found[pid] = strings.TrimSpace(strings.ReplaceAll(string(argv), "\x00", " "))
	}
	return found
}

// TestDemoTimeoutStopsItsProcesses: when `pmhub demo --timeout` runs out while the simulated vLLM
// still runs (held at its first preemption by PMSIM_PAUSE_FILE, so it cannot finish first), the
// demo exits non-zero saying so, and no process it started (agents, simulated API server,
// EngineCore, workers) outlives it: they used to keep running after a killed pmagent.
func TestDemoTimeoutStopsItsProcesses(t *testing.T) {
	bin(t, "pmagent")
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("no python3 on PATH")
	}
	dir := t.TempDir()
	mark := "PMSIM_PAUSE_FILE=" + filepath.Join(dir, "never-created")
	cmd := exec.Command(bin(t, "pmhub"), "demo", "--dir", filepath.Join(dir, "demo"), "--workers", "1", "--timeout", "20s")
	cmd.Env = append(os.Environ(), mark)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		// Whatever a failed run left behind is stopped here, never left running.
		for pid := range markedProcesses(t, mark, -1) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// The demo's processes are seen running before the timeout (the agents and their vLLM).
	seen := 0
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	bound := time.NewTimer(3 * time.Minute)
	defer bound.Stop()
	var err error
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-tick.C:
			seen = max(seen, len(markedProcesses(t, mark, cmd.Process.Pid)))
		case <-bound.C:
			_ = cmd.Process.Kill()
			t.Fatalf("pmhub demo --timeout 20s still runs after 3 minutes:\n%s", out.String())
		}
	}
	if err == nil || !strings.Contains(out.String(), "gave up after --timeout 20s") {
		t.Fatalf("pmhub demo: %v, want a non-zero exit saying it gave up after --timeout:\n%s", err, out.String())
	}
	if seen < 3 {
		t.Fatalf("only %d processes of the demo were ever seen running: the test did not exercise the stop", seen)
	}
	if left := markedProcesses(t, mark, -1); len(left) > 0 {
		t.Errorf("%d processes of the demo outlived it (of %d seen running):", len(left), seen)
		for pid, argv := range left {
			t.Errorf("  pid %d: %s", pid, argv)
		}
	}
}
