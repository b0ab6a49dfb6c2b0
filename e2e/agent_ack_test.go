package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/profilemate/profilemate/internal/testkit"
)

// ackScheduler is a tiny vLLM-shaped tree: the v1 scheduler module the shim patches.
var ackTree = map[string]string{
	"vllm/__init__.py":                "__version__ = '0.10.2'\n",
	"vllm/v1/__init__.py":             "",
	"vllm/v1/core/__init__.py":        "",
	"vllm/v1/core/sched/__init__.py":  "",
	"vllm/v1/core/sched/scheduler.py": "class Out:\n    def __init__(self, n):\n        self.total_num_scheduled_tokens = n\n        self.num_scheduled_tokens = {'r': n}\n\n\nclass Scheduler:\n    max_num_scheduled_tokens = 8\n    max_num_running_reqs = 2\n\n    def __init__(self):\n        self.waiting, self.running = [], []\n\n    def schedule(self):\n        return Out(4)\n\n    def update_from_output(self, scheduler_output, model_runner_output):\n        return 'original'\n",
}

// ackScript records 5 scheduler steps, then 5 more once the agent is stopped, then 5 more once the
// next agent is up; the gates are files the test creates.
const ackScript = `import os, time
import vllm.v1.core.sched.scheduler as m
gates = os.environ["GATES"]
def wait(name):
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(gates, name)):
        if time.monotonic() > deadline:
            raise SystemExit("gate %s never opened" % name)
        time.sleep(0.01)
s = m.Scheduler()
for _ in range(5):
    s.schedule()
wait("agent-down")
for _ in range(5):
    s.schedule()
open(os.path.join(gates, "recorded"), "w").close()
wait("agent-back")
for _ in range(5):
    s.schedule()
`

// unread reports whether a connection to the Unix socket path holds bytes nobody read (ss -x
// Recv-Q): the lines a stopped agent has not taken from the kernel.
func unread(t *testing.T, path string) bool {
	out, err := exec.Command("ss", "-xH").Output()
	if err != nil {
		t.Skipf("ss -x: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && f[4] == path {
			if n, _ := strconv.Atoi(f[2]); n > 0 {
				return true
			}
		}
	}
	return false
}

// TestAgentKilledWithUnreadLines: a real shim under `pmagent serve`; the agent stops (SIGSTOP)
// while the shim writes lines into its socket, dies (SIGKILL) with them unread, and a new agent
// starts. The shim replays every batch the first agent never acknowledged, so the stream holds
// all 45 rows once, in order.
func TestAgentKilledWithUnreadLines(t *testing.T) {
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("no ss (iproute2)")
	}
	pys := testkit.Interpreters(t)
	if len(pys) == 0 {
		t.Skip("no Python interpreter")
	}
	shim, err := filepath.Abs(filepath.Join("..", "shim"))
	if err != nil {
		t.Fatal(err)
	}
	tree, gates := t.TempDir(), t.TempDir()
	for rel, body := range ackTree {
		p := filepath.Join(tree, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ns := agStartNATS(t)
	ns.createStream()
	sock := filepath.Join(agShortDir(t), "a.sock")
	args := []string{"serve", "--socket", sock, "--nats", ns.url(), "--host", "e2e-host", "--spool-dir", t.TempDir(),
		"--gpu-interval", "0", "--session-linger", "1s"}
	first := agStart(t, nil, args...)
	agWaitFor(t, time.Minute, "the agent's socket", func() bool { return agStatus(t, sock) != nil })

	py := exec.Command(pys[len(pys)-1].Path, "-c", ackScript)
	py.Env = append(os.Environ(), "PYTHONPATH="+shim+string(os.PathListSeparator)+tree, "PROFILEMATE_SOCKET="+sock,
		"GATES="+gates, "VLLM_ENABLE_PROFILING=1", "PROFILEMATE_FLUSH_MS=5", "PROFILEMATE_SESSION=acked",
		"PROFILEMATE_OUTPUT_DIR="+t.TempDir(), "PROFILEMATE_CACHE="+t.TempDir())
	var stderr strings.Builder
	py.Stderr = &stderr
	if err := py.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- py.Wait() }()
	t.Cleanup(func() {
		_ = py.Process.Kill()
		<-done
	})
	agWaitFor(t, time.Minute, "the first 5 steps (3 rows each) in the stream", func() bool { return ns.read().events() == 15 })

	if err := first.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gates, "agent-down"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	agWaitFor(t, time.Minute, "the next steps recorded", func() bool {
		_, err := os.Stat(filepath.Join(gates, "recorded"))
		return err == nil
	})
	agWaitFor(t, time.Minute, "lines unread in the stopped agent's socket", func() bool { return unread(t, sock) })
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.wait(t, time.Minute)

	agStart(t, nil, args...)
	agWaitFor(t, time.Minute, "the new agent's socket", func() bool { return agStatus(t, sock) != nil })
	if err := os.WriteFile(filepath.Join(gates, "agent-back"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("python: %v\n%s", err, stderr.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("python still running\n%s", stderr.String())
	}
	agWaitFor(t, time.Minute, "45 rows in the stream", func() bool { return ns.read().events() >= 45 })
	s := ns.read()
	for pid, seqs := range s.checkExactlyOnceInOrder(t) {
		if len(seqs) != 45 {
			t.Fatalf("pid %d: %d rows, want 1..45 once\n%s", pid, len(seqs), stderr.String())
		}
	}
}
