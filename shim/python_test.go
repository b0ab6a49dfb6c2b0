package shim

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/profilemate/profilemate/internal/pyenv"
	"github.com/profilemate/profilemate/internal/testkit"
)

// TestPythonSuites runs shim/tests (import-order matrix, activation, signals, fork, spawn tree,
// doctor) under every Python 3.9–3.13 found; on CI a missing interpreter fails.
func TestPythonSuites(t *testing.T) {
	root := testkit.RepoRoot(t)
	dir := filepath.Join(root, "shim", "tests")
	testkit.RunSuites(t, dir, filepath.Join(root, "shim"), "test_*.py")
}

// TestMoETorch runs the MoE counter's tensor path (counting; switching moe_expert off and on) on
// CPU tensors with the system interpreter, which has Debian's python3-torch; skipped where that
// interpreter cannot import torch.
func TestMoETorch(t *testing.T) {
	const sys = "/usr/bin/python3"
	if err := exec.Command(sys, "-c", "import torch").Run(); err != nil {
		t.Skipf("%s cannot import torch: %v", sys, err)
	}
	root := testkit.RepoRoot(t)
	testkit.RunUnittest(t, pyenv.Interpreter{Version: "system", Path: sys}, filepath.Join(root, "shim", "tests"),
		filepath.Join(root, "shim"), "test_moe_*.py")
}

// TestUnpack writes the embedded shim and checks the files arrive and the version is stable.
func TestUnpack(t *testing.T) {
	dst := t.TempDir()
	if err := Unpack(dst); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"sitecustomize.py", "profilemate/__init__.py", "profilemate/bootstrap.py",
		"profilemate/targets/__init__.py"} {
		if _, err := os.Stat(filepath.Join(dst, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if len(Version) != 16 || Version != computeVersion() {
		t.Errorf("version %q not a stable 16-hex hash", Version)
	}
}
