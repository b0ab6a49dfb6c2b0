package testkit

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/internal/pyenv"
)

// Interpreters returns the Python interpreters for a test (one per supported minor version found
// by pyenv.Find); on CI (CI=true) a missing version fails the test, elsewhere it is logged, and
// the test is skipped when none is found.
func Interpreters(t testing.TB) []pyenv.Interpreter {
	t.Helper()
	found, missing := pyenv.Find()
	if len(missing) > 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python versions missing under %s: %v", pyenv.Root(), missing)
		}
		t.Logf("python versions missing (skipped): %v", missing)
	}
	if len(found) == 0 {
		t.Skip("no supported python found")
	}
	return found
}

// RepoRoot walks up from the working directory to the folder holding go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's folder")
		}
		dir = parent
	}
}

// Unittest runs `python -m unittest discover -s dir -t top -p pattern` under py with extra
// environment variables (KEY=VALUE) and returns its combined output; err is the exit error.
func Unittest(py pyenv.Interpreter, dir, top, pattern string, env ...string) (string, error) {
	cmd := exec.Command(py.Path, "-m", "unittest", "discover", "-s", dir, "-t", top, "-p", pattern, "-v")
	cmd.Env = append(append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1"), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// RunUnittest runs one suite under py (see Unittest) and fails t with the suite's output when it
// fails or prints no OK line.
func RunUnittest(t testing.TB, py pyenv.Interpreter, dir, top, pattern string, env ...string) {
	t.Helper()
	out, err := Unittest(py, dir, top, pattern, env...)
	if testing.Verbose() || err != nil {
		t.Logf("unittest discover -s %s -p %s (python %s):\n%s", dir, pattern, py.Version, out)
	}
	if err != nil {
		t.Fatalf("python %s suite %s failed: %v", py.Version, dir, err)
	}
	if !strings.Contains(out, "\nOK") {
		t.Fatalf("python %s suite %s: no OK line in output", py.Version, dir)
	}
}

// RunSuites runs one suite under every interpreter Interpreters finds, one subtest each (named
// py3.X).
func RunSuites(t *testing.T, dir, top, pattern string, env ...string) {
	t.Helper()
	for _, py := range Interpreters(t) {
		t.Run(py.String(), func(t *testing.T) {
			RunUnittest(t, py, dir, top, pattern, env...)
		})
	}
}

// RunSuiteNewest runs one suite under the newest supported interpreter only (on CI a missing
// version still fails, as in Interpreters): for suites whose subject does not depend on the
// Python version (the simulator's own ground truth), where every version would repeat the same
// minutes of multi-process runs.
func RunSuiteNewest(t *testing.T, dir, top, pattern string, env ...string) {
	t.Helper()
	pys := Interpreters(t)
	py := pys[len(pys)-1]
	t.Run(py.String(), func(t *testing.T) {
		RunUnittest(t, py, dir, top, pattern, env...)
	})
}
