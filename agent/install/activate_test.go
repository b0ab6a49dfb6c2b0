package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/internal/testkit"
)

// TestInstallActivatesShim installs the real shim into a scratch venv and runs the venv's python,
// with no PYTHONPATH of ours, against the vLLM-shaped test tree.
func TestInstallActivatesShim(t *testing.T) {
	repo := testkit.RepoRoot(t)
	era := filepath.Join(repo, "testbed", "eras", "v0_16_0")
	if _, err := os.Stat(filepath.Join(era, "vllm")); err != nil {
		t.Fatalf("test tree missing: %v", err)
	}
	if _, err := os.Stat(filepath.Join(repo, "shim", "profilemate", "bootstrap.py")); err != nil {
		t.Fatalf("shim missing: %v", err)
	}
	// The shim's Python files as pmagent embeds them (shim.FS holds the same tree).
	src := Source{FS: os.DirFS(filepath.Join(repo, "shim")), Version: "0.0.0.dev0"}
	for _, py := range testkit.Interpreters(t) {
		t.Run(py.String(), func(t *testing.T) {
			python := venv(t, py)
			root := filepath.Dir(filepath.Dir(python))
			before := snapshot(t, root)
			m, err := InstallFrom(python, src)
			if err != nil {
				t.Fatal(err)
			}
			if got := run(t, python, nil, "-c", entryPointsProg); !strings.Contains(got, "profilemate=profilemate.bootstrap:vllm_plugin") {
				t.Errorf("entry points: got %s", got)
			}
			// Nothing of the venv may point back into the repository or pmagent's cache.
			for _, f := range m.Files {
				b, _ := os.ReadFile(filepath.Join(m.SitePackages, f))
				if strings.Contains(string(b), repo) {
					t.Errorf("%s refers to %s", f, repo)
				}
			}
			// With PYTHONDONTWRITEBYTECODE=1 the shim still starts from byte-code, never source.
			verbose := runStderr(t, python, []string{"PYTHONDONTWRITEBYTECODE=1"}, "-v", "-c", "pass")
			tag := strings.TrimSpace(run(t, python, nil, "-c", "import sys; print(sys.implementation.cache_tag)"))
			wantPyc := filepath.Join(m.SitePackages, "profilemate", "__pycache__", "__init__."+tag+".pyc")
			if !strings.Contains(verbose, "code object from '"+wantPyc+"'") {
				t.Errorf("the activation not loaded from %s:\n%s", wantPyc, grepLines(verbose, "profilemate"))
			}
			// A Python that never imports vLLM loads the package alone (start-up cost, docs/BENCHMARKS.md).
			if strings.Contains(verbose, "profilemate.bootstrap") || strings.Contains(verbose, "bootstrap."+tag+".pyc") {
				t.Errorf("plain start loaded profilemate.bootstrap:\n%s", grepLines(verbose, "profilemate"))
			}
			out := t.TempDir()
			env := []string{"PROFILEMATE_OUTPUT_DIR=" + out, "PROFILEMATE_SOCKET=" + filepath.Join(out, "none.sock")}

			// A plain script: no output, no folder.
			if got := run(t, python, env, "-c", "print('plain')"); got != "plain\n" {
				t.Errorf("plain script output: got %q, want %q", got, "plain\n")
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("plain script created %v", ents)
			}

			// Importing the test tree's vLLM activates ProfileMate.
			got := run(t, python, append(env, "PYTHONPATH="+era+string(os.PathListSeparator)+filepath.Join(repo, "testbed")), "-c", "import vllm.v1.core.sched.scheduler")
			ents, _ := os.ReadDir(out)
			var sessions []string
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), "session_") {
					sessions = append(sessions, e.Name())
				}
			}
			if !strings.Contains(got, "[sitecustomize]") && len(sessions) == 0 {
				t.Errorf("vllm import did not activate ProfileMate: output %q, folder %v", got, ents)
			}

			if _, err := Uninstall(python); err != nil {
				t.Fatal(err)
			}
			if d := diff(before, snapshot(t, root)); len(d) > 0 {
				t.Errorf("venv differs after uninstall: %v", d)
			}
		})
	}
}

// runStderr runs python like run and returns its standard error.
func runStderr(t *testing.T, python string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(python, args...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME")}, env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, stderr.String())
	}
	return stderr.String()
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
