package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAgentLogsThroughItsLogger: every line pmagent logs goes through the logger its --log-level
// made (slog text: "time=… level=…"), also the lines of the parts that log through slog's default
// logger (the clock tracker, internal/clock). Those used to come out in the log package's format
// ("2026/11/30 09:20:49 WARN clock offset not measured …"), whatever --log-level said.
func TestAgentLogsThroughItsLogger(t *testing.T) {
	dir := t.TempDir()
	var stderr syncBuffer
	// No NATS server at the address: the clock tracker's first measurement fails and says so.
	cmd := exec.Command(bin(t, "pmagent"), "serve", "--socket", filepath.Join(dir, "a.sock"),
		"--nats", "nats://"+freeAddr(t), "--spool-dir", filepath.Join(dir, "spool"),
		"--gpu-interval", "0", "--log-level", "warn")
	cmd.Env = append(os.Environ(), "PROFILEMATE_CACHE="+filepath.Join(dir, "cache"))
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	agWaitFor(t, time.Minute, "the clock tracker's warning", func() bool {
		return strings.Contains(stderr.String(), "clock offset not measured")
	})
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if !strings.HasPrefix(l, "time=") || !strings.Contains(l, " level=") {
			t.Errorf("a line not from the agent's logger: %q", l)
		}
		if strings.Contains(l, "level=INFO") {
			t.Errorf("an INFO line with --log-level warn: %q", l)
		}
	}
}
