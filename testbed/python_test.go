package testbed

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/profilemate/profilemate/internal/testkit"
)

// TestPythonSuites runs testbed/tests (conformance, ground truth, discrimination) under the newest
// Python. The simulator is the test tree, not the product: the shim's suites (shim/python_test.go)
// run it under every Python 3.9–3.13, so running its own ground-truth suite once keeps the
// coverage and saves four repeats of its multi-process runs.
func TestPythonSuites(t *testing.T) {
	root := testkit.RepoRoot(t)
	dir := filepath.Join(root, "testbed", "tests")
	testkit.RunSuiteNewest(t, dir, filepath.Join(root, "testbed"), "test_*.py")
}

// TestUnpack writes the embedded tree and checks that every era's vllm package and the script arrive.
func TestUnpack(t *testing.T) {
	dst := t.TempDir()
	if err := Unpack(dst); err != nil {
		t.Fatal(err)
	}
	for _, folder := range Eras {
		if _, err := os.Stat(filepath.Join(dst, "eras", folder, "vllm", "__init__.py")); err != nil {
			t.Errorf("era %s: %v", folder, err)
		}
	}
	st, err := os.Stat(filepath.Join(dst, "bin", "vllm"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&0o111 == 0 {
		t.Errorf("bin/vllm is not executable: %v", st.Mode())
	}
	if _, err := os.Stat(filepath.Join(dst, "pmsim", "__init__.py")); err != nil {
		t.Error(err)
	}
}
