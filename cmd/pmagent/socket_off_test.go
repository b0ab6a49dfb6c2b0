package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/internal/cliapp"
)

// runAgentCLI runs pmagent with args in-process under ctx, as main does, and returns its exit
// code and stderr.
func runAgentCLI(t *testing.T, ctx context.Context, env map[string]string, args ...string) (int, string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out, errOut bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errOut
	return cliapp.Run(ctx, app, append([]string{"pmagent"}, args...)), errOut.String()
}

// TestSocketOffIsTheShimsNoAgent: PROFILEMATE_SOCKET=off, exported for the shim's standalone mode,
// also sets pmagent's --socket. `pmagent run` then runs its own agent (it used to try a socket
// named "off" in the current folder and fail on that folder's mode); `pmagent serve` refuses it
// as a usage error that explains the clash.
func TestSocketOffIsTheShimsNoAgent(t *testing.T) {
	// The current folder is writable by all, as /tmp is: a socket may not be made there.
	spool, cwd := t.TempDir(), t.TempDir()
	if err := os.Chmod(cwd, 0o777); err != nil {
		t.Fatal(err)
	}
	t.Chdir(cwd)
	code, errOut := runAgentCLI(t, context.Background(), map[string]string{"PROFILEMATE_SOCKET": "off"},
		"run", "--cache", t.TempDir(), "--spool-dir", spool, "--gpu-interval", "0", "--", "true")
	if code != 0 {
		t.Errorf("pmagent run with PROFILEMATE_SOCKET=off: exit %d: %s", code, errOut)
	}
	if _, err := os.Lstat(filepath.Join(cwd, "off")); err == nil {
		t.Error(`pmagent run with PROFILEMATE_SOCKET=off listened on a socket named "off" in the current folder`)
	}
	// Cancelled at once: a serve that wrongly starts returns instead of serving.
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	code, errOut = runAgentCLI(t, stopped, nil, "serve", "--socket", "off", "--spool-dir", spool, "--gpu-interval", "0")
	if code != 2 || !strings.Contains(errOut, "PROFILEMATE_SOCKET=off") {
		t.Errorf("pmagent serve --socket off: exit %d, %q; want 2 explaining the shims' off", code, errOut)
	}
}
