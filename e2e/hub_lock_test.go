package e2e

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHubDataFolderLock runs two real `pmhub serve` on one --data folder: the second exits
// non-zero at once with an error naming the folder and the first one's pid, and the first keeps
// running. After the first is killed with SIGKILL (no clean-up of its own), the kernel has
// released the lock and a new hub starts on the folder.
func TestHubDataFolderLock(t *testing.T) {
	data := t.TempDir()
	first := startHub(t, data, freeAddr(t))

	cmd := exec.Command(bin(t, "pmhub"), "serve", "--data", data, "--listen", freeAddr(t), "--http", "")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("second pmhub serve on %s exited 0:\n%s", data, out.String())
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("second pmhub serve on %s kept running:\n%s", data, out.String())
	}
	for _, want := range []string{data, "pid " + strconv.Itoa(first.cmd.Process.Pid), "in use"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("second hub's output does not name %q:\n%s", want, out.String())
		}
	}
	select {
	case err := <-first.done:
		first.done <- err
		t.Fatalf("first hub ended when the second was refused: %v", err)
	default:
	}

	if err := first.stop(syscall.SIGKILL); err == nil {
		t.Fatal("SIGKILL did not end the first hub")
	}
	startHub(t, data, freeAddr(t)) // fails the test if it cannot start
}
