package proto

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/internal/pyenv"
	"github.com/profilemate/profilemate/internal/testkit"
)

// TestPythonContract runs shim/tests/test_contract.py under every supported Python.
func TestPythonContract(t *testing.T) {
	root := testkit.RepoRoot(t)
	dir := filepath.Join(root, "shim", "tests")
	testkit.RunSuites(t, dir, dir, "test_contract.py")
}

// TestPythonContractCatchesRename renames a column in a temp copy of proto/tables and checks that
// the Python contract suite fails on it, naming the table.
func TestPythonContractCatchesRename(t *testing.T) {
	found, _ := pyenv.Find()
	if len(found) == 0 {
		t.Skip("no supported python found")
	}
	root := testkit.RepoRoot(t)
	tmp := t.TempDir()
	files, _ := filepath.Glob(filepath.Join(root, "proto", "tables", "*.json"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "preemption_events.json" {
			nb := bytes.Replace(b, []byte(`"name": "tokens_lost"`), []byte(`"name": "lost_tokens"`), 1)
			if bytes.Equal(nb, b) {
				t.Fatal("preemption_events.json has no tokens_lost column")
			}
			b = nb
		}
		if err := os.WriteFile(filepath.Join(tmp, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(root, "shim", "tests")
	run := func(env ...string) (string, error) {
		return testkit.Unittest(found[0], dir, dir, "test_contract.py", env...)
	}
	if out, err := run("PROFILEMATE_PROTO_TABLES=" + filepath.Join(root, "proto", "tables")); err != nil {
		t.Fatalf("suite fails on the real tables:\n%s", out)
	}
	out, err := run("PROFILEMATE_PROTO_TABLES=" + tmp)
	if err == nil {
		t.Fatalf("suite passed with a renamed column:\n%s", out)
	}
	if !strings.Contains(out, "preemption_events") || !strings.Contains(out, "tokens_lost") {
		t.Errorf("failure does not name the table and column:\n%s", out)
	}
}

// TestShimTargetKinds checks the kinds the shim's target modules declare (kind = "..." or
// kinds = (...), as attribute or keyword) against proto's kinds; the Python suite checks the
// target list itself once it exists.
func TestShimTargetKinds(t *testing.T) {
	root := testkit.RepoRoot(t)
	files, _ := filepath.Glob(filepath.Join(root, "shim", "profilemate", "targets", "*.py"))
	var mods []string
	for _, f := range files {
		if filepath.Base(f) != "__init__.py" {
			mods = append(mods, f)
		}
	}
	if len(mods) == 0 {
		t.Fatal("no target modules in shim/profilemate/targets")
	}
	known := map[string]bool{}
	for _, k := range ShimKinds() {
		known[k] = true
	}
	declRE := regexp.MustCompile(`(?i)\bkinds?\s*[=:]\s*(\([^)]*\)|\[[^\]]*\]|"[^"]*"|'[^']*')`)
	strRE := regexp.MustCompile(`["']([A-Za-z0-9_]+)["']`)
	var used []string
	for _, f := range mods {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range declRE.FindAllStringSubmatch(string(b), -1) {
			for _, s := range strRE.FindAllStringSubmatch(m[1], -1) {
				used = append(used, s[1])
				if !known[s[1]] {
					t.Errorf("%s declares kind %q, which proto does not know (kinds: %v)", filepath.Base(f), s[1], ShimKinds())
				}
			}
		}
	}
	sort.Strings(used)
	t.Logf("kinds declared by %d target modules: %v", len(mods), used)
}
