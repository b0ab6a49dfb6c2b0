package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/profilemate/profilemate/internal/testkit"
)

// loadsFromByteCode runs `python -v -c pass` with shimDir on PYTHONPATH and
// PYTHONDONTWRITEBYTECODE=1 (Python writes no byte-code itself) and fails the test unless
// sitecustomize and the profilemate package (the activation) were loaded from the byte-code of
// that interpreter.
func loadsFromByteCode(t *testing.T, python, shimDir string) {
	t.Helper()
	tag, err := exec.Command(python, "-I", "-c", "import sys; print(sys.implementation.cache_tag)").Output()
	if err != nil {
		t.Fatalf("%s cache tag: %v", python, err)
	}
	cmd := exec.Command(python, "-v", "-c", "pass")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "PYTHONPATH=" + shimDir,
		"PYTHONDONTWRITEBYTECODE=1", "PROFILEMATE_SOCKET=off"}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, stderr.String())
	}
	for _, want := range []string{
		filepath.Join(shimDir, "__pycache__", "sitecustomize."+strings.TrimSpace(string(tag))+".pyc"),
		filepath.Join(shimDir, "profilemate", "__pycache__", "__init__."+strings.TrimSpace(string(tag))+".pyc"),
	} {
		if !strings.Contains(stderr.String(), "code object from '"+want+"'") {
			t.Errorf("%s: not loaded from %s", python, want)
		}
	}
}

// TestEnvPreparesByteCode: `pmagent env --python A --python B` leaves byte-code for both
// interpreters in the shim cache, and each then starts the shim without compiling it.
func TestEnvPreparesByteCode(t *testing.T) {
	pys := testkit.Interpreters(t)
	cache := t.TempDir()
	args := []string{"env", "--format", "json", "--cache", cache}
	for _, py := range pys {
		args = append(args, "--python", py.Path)
	}
	out, err := exec.Command(bin(t, "pmagent"), args...).Output()
	if err != nil {
		t.Fatalf("pmagent env: %v", err)
	}
	var vars map[string]string
	if err := json.Unmarshal(out, &vars); err != nil || vars["PYTHONPATH"] == "" {
		t.Fatalf("pmagent env output %q: %v", out, err)
	}
	for _, py := range pys {
		loadsFromByteCode(t, py.Path, vars["PYTHONPATH"])
	}
}

// TestRunPreparesByteCode: `pmagent run -- <script>` compiles the shim for the interpreter named by
// the script's #! line (as vllm's console script names its venv's python).
func TestRunPreparesByteCode(t *testing.T) {
	pys := testkit.Interpreters(t)
	py := pys[0].Path
	ns := agStartNATS(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "tool")
	if err := os.WriteFile(script, []byte("#!"+py+"\nimport os\nprint(os.environ['PYTHONPATH'].split(os.pathsep)[0])\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	p := agStart(t, []string{"PROFILEMATE_CACHE=" + cache}, "run", "--nats", ns.url(), "--host", "e2e-host",
		"--session", "pyc", "--spool-dir", t.TempDir(), "--gpu-interval", "0", "--", script)
	if err := p.wait(t, 2*time.Minute); err != nil {
		t.Fatalf("pmagent run: %v", err)
	}
	dirs, _ := filepath.Glob(filepath.Join(cache, "shim-*"))
	if len(dirs) != 1 {
		t.Fatalf("shim cache folders: %v", dirs)
	}
	loadsFromByteCode(t, py, dirs[0])
}
