package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/profilemate/profilemate/testbed"
)

// TestUnprivilegedDefaults runs pmhub serve, pmagent run and pmhub sessions as an unprivileged
// user (nobody when the test runs as root) with no folder flags: every default folder is the
// user's own (~/.local/state/profilemate/…), the hub and the agent work, and sessions reads what
// serve wrote (before: serve wanted /var/lib, sessions read ./profilemate-data).
func TestUnprivilegedDefaults(t *testing.T) {
	home, err := os.MkdirTemp("", "pm-unpriv-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	bins, err := os.MkdirTemp("", "pm-unpriv-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(bins) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: 65534, Gid: 65534}
		if err := os.Chown(home, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{home, bins} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"pmhub", "pmagent"} {
		b, err := os.ReadFile(bin(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bins, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tb := filepath.Join(home, "testbed")
	if err := testbed.Unpack(tb); err != nil {
		t.Fatal(err)
	}
	const py = "/usr/bin/python3" // readable by every user, unlike a pyenv under /root
	if _, err := os.Stat(py); err != nil {
		t.Skipf("no %s: %v", py, err)
	}
	env := []string{"HOME=" + home, "PATH=/usr/bin:/bin", "TMPDIR=" + home,
		"PYTHONPATH=" + filepath.Join(tb, "eras", "v0_16_0") + string(os.PathListSeparator) + tb,
		"PMSIM_TP=1", "PMSIM_REQUESTS=2", "PMSIM_STEP_WORK_MS=1", "PMSIM_GROUND_TRUTH=" + filepath.Join(home, "truth.json")}
	command := func(name string, args ...string) *exec.Cmd {
		c := exec.Command(filepath.Join(bins, name), args...)
		c.Env, c.Dir = env, home
		if cred != nil {
			c.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		return c
	}

	hub := command("pmhub", "serve", "--listen", freeAddr(t), "--http", "127.0.0.1:0")
	out, err := hub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	hub.Stderr = &testLog{t: t, prefix: "pmhub: "}
	if err := hub.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- hub.Wait() }()
	t.Cleanup(func() { _ = hub.Process.Kill(); <-done })
	natsURL, httpAddr := make(chan string, 1), make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if _, u, ok := strings.Cut(sc.Text(), "agents connect to "); ok {
				natsURL <- strings.TrimSpace(u)
			}
			if _, a, ok := strings.Cut(sc.Text(), "http on "); ok {
				httpAddr <- strings.TrimSpace(a)
			}
		}
		io.Copy(io.Discard, out)
	}()
	var url, addr string
	for url == "" || addr == "" {
		select {
		case url = <-natsURL:
		case addr = <-httpAddr:
		case err := <-done:
			t.Fatalf("pmhub serve as an unprivileged user exited: %v", err)
		case <-time.After(60 * time.Second):
			t.Fatal("pmhub serve did not start")
		}
	}
	data := filepath.Join(home, ".local", "state", "profilemate", "hub")
	if _, err := os.Stat(filepath.Join(data, "jetstream")); err != nil {
		t.Errorf("default data folder not used: %v", err)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var health struct{ OK bool }
	_ = json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	if resp.StatusCode != 200 || !health.OK {
		t.Errorf("/healthz %d %+v", resp.StatusCode, health)
	}

	agent := command("pmagent", "run", "--nats", url, "--session", "unpriv-1", "--gpu-interval", "0",
		"--", py, "-m", "vllm.entrypoints.openai.api_server", "--model", "pm-e2e-model")
	if b, err := agent.CombinedOutput(); err != nil || !strings.Contains(string(b), "all events delivered") {
		t.Fatalf("pmagent run as an unprivileged user: %v\n%s", err, b)
	}
	if _, err := os.Stat(filepath.Join(home, ".local", "state", "profilemate", "spool")); err != nil {
		t.Errorf("default spool folder not used: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := command("pmhub", "sessions").CombinedOutput()
		if err == nil && strings.Contains(string(b), "unpriv-1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pmhub sessions (default --data) does not list the session: %v\n%s", err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestServeBusyAddressExitsAtOnce: pmhub serve on a taken NATS address exits with an error
// naming it, without waiting (before: 30 s of silence, deaf to SIGTERM).
func TestServeBusyAddressExitsAtOnce(t *testing.T) {
	addr := freeAddr(t)
	startHub(t, t.TempDir(), addr)
	c := exec.Command(bin(t, "pmhub"), "serve", "--data", t.TempDir(), "--listen", addr, "--http", "")
	b, err := c.CombinedOutput()
	if err == nil {
		t.Fatal("second hub on the same address started")
	}
	if !strings.Contains(string(b), addr) || !strings.Contains(string(b), "address already in use") {
		t.Errorf("error does not name the address and the cause:\n%s", b)
	}
}
