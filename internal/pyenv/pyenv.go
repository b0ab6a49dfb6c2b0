// Package pyenv finds the Python interpreters ProfileMate supports (3.9–3.13) and runs Python
// test suites under each of them from Go tests, so one `go test` drives every language.
package pyenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Supported lists the minor versions the shim must run on.
var Supported = []string{"3.9", "3.10", "3.11", "3.12", "3.13"}

// Interpreter is one Python found on this machine.
type Interpreter struct {
	Version string // "3.12"
	Path    string // absolute path to python3
}

// root returns pyenv's root folder: $PYENV_ROOT, else ~/.pyenv.
func root() string {
	if r := os.Getenv("PYENV_ROOT"); r != "" {
		return r
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".pyenv")
}

// Find returns one interpreter per supported minor version found under pyenv's versions folder,
// plus the names of the versions that are missing.
func Find() (found []Interpreter, missing []string) {
	for _, v := range Supported {
		matches, _ := filepath.Glob(filepath.Join(root(), "versions", v+".*", "bin", "python3"))
		sort.Strings(matches)
		var pick string
		for _, m := range matches {
			// "3.1.x" must not match "3.10": check the folder name's minor exactly.
			ver := filepath.Base(filepath.Dir(filepath.Dir(m)))
			if strings.HasPrefix(ver, v+".") && strings.Count(ver, ".") == 2 {
				pick = m
			}
		}
		if pick == "" {
			missing = append(missing, v)
			continue
		}
		found = append(found, Interpreter{Version: v, Path: pick})
	}
	return found, missing
}

// ForTest returns the interpreters for a test; on CI (CI=true) a missing version fails the test,
// elsewhere it is logged and skipped.
func ForTest(t testing.TB) []Interpreter {
	t.Helper()
	found, missing := Find()
	if len(missing) > 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python versions missing under %s: %v", root(), missing)
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

// RunUnittest runs `python -m unittest discover -s dir -t top -p pattern -v` under py with extra
// environment variables, and fails t with the suite's output if the suite fails.
func RunUnittest(t testing.TB, py Interpreter, dir, top, pattern string, env ...string) {
	t.Helper()
	cmd := exec.Command(py.Path, "-m", "unittest", "discover", "-s", dir, "-t", top, "-p", pattern)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if testing.Verbose() || err != nil {
		t.Logf("%s (python %s):\n%s", strings.Join(cmd.Args, " "), py.Version, out.String())
	}
	if err != nil {
		t.Fatalf("python %s suite %s failed: %v", py.Version, dir, err)
	}
	if !strings.Contains(out.String(), "\nOK") {
		t.Fatalf("python %s suite %s: no OK line in output", py.Version, dir)
	}
}

// String names the interpreter for subtests.
func (i Interpreter) String() string { return fmt.Sprintf("py%s", i.Version) }
