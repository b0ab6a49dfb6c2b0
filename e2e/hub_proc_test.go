package e2e

import (
	"bufio"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hubProc is a running pmhub serve.
type hubProc struct {
	cmd  *exec.Cmd
	url  string
	done chan error
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startHub runs pmhub serve on data and waits for the line with the agents' URL.
func startHub(t testing.TB, data, listen string, extra ...string) *hubProc {
	t.Helper()
	args := append([]string{"serve", "--data", data, "--listen", listen, "--http", ""}, extra...)
	cmd := exec.Command(bin(t, "pmhub"), args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &testLog{t: t, prefix: "pmhub: "}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &hubProc{cmd: cmd, done: make(chan error, 1)}
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if _, u, ok := strings.Cut(sc.Text(), "agents connect to "); ok {
				urlc <- strings.TrimSpace(u)
			}
		}
		io.Copy(io.Discard, out)
	}()
	go func() { h.done <- cmd.Wait() }()
	select {
	case h.url = <-urlc:
	case err := <-h.done:
		t.Fatalf("pmhub exited before it was ready: %v", err)
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("pmhub did not print its URL")
	}
	t.Cleanup(func() { h.stop(syscall.SIGKILL) })
	return h
}

// stop sends sig and waits for the process to end.
func (h *hubProc) stop(sig syscall.Signal) error {
	if h.cmd.ProcessState != nil {
		return nil
	}
	_ = h.cmd.Process.Signal(sig)
	select {
	case err := <-h.done:
		h.done <- err
		return err
	case <-time.After(30 * time.Second):
		_ = h.cmd.Process.Kill()
		return <-h.done
	}
}

// testLog forwards a child's stderr to the test log.
type testLog struct {
	t      testing.TB
	prefix string
}

func (l *testLog) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		l.t.Log(l.prefix + line)
	}
	return len(b), nil
}
