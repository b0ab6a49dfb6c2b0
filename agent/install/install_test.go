package install

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/profilemate/profilemate/internal/pyenv"
	"github.com/profilemate/profilemate/internal/testkit"
)

// fixture is a minimal profilemate package for the copy/record/remove mechanics; the real shim is
// exercised by TestInstallActivatesShim.
func fixture(version string) Source {
	return Source{Version: version, FS: fstest.MapFS{
		"profilemate/__init__.py":         {Data: []byte("VERSION = '" + version + "'\n\ndef activate(origin):\n    pass\n")},
		"profilemate/bootstrap.py":        {Data: []byte("def bootstrap(origin):\n    pass\n\ndef vllm_plugin():\n    pass\n")},
		"profilemate/targets/__init__.py": {Data: []byte("TARGETS = []\n")},
		"profilemate/__pycache__/x.pyc":   {Data: []byte("stale")},
		"profilemate/targets/stale.pyc":   {Data: []byte("stale")},
		"sitecustomize.py":                {Data: []byte("raise SystemExit('must not be installed')\n")},
	}}
}

// venv makes a scratch virtual environment and returns its python.
func venv(t *testing.T, py pyenv.Interpreter) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "venv")
	if out, err := exec.Command(py.Path, "-m", "venv", "--without-pip", dir).CombinedOutput(); err != nil {
		t.Fatalf("venv: %v\n%s", err, out)
	}
	return filepath.Join(dir, "bin", "python")
}

// snapshot maps every path under root to its type and content hash.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out[rel] = "link:" + l
		case d.IsDir():
			out[rel] = "dir"
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			out[rel] = hex.EncodeToString(s[:])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diff(a, b map[string]string) []string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, "changed/removed: "+k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "added: "+k)
		}
	}
	return d
}

// run runs python with a clean environment (no PYTHONPATH) plus env.
func run(t *testing.T, python string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(python, args...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME")}, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	return string(out)
}

// entryPointsProg lists vllm.general_plugins on 3.9 (entry_points() is a dict) and on 3.10+.
const entryPointsProg = `import importlib.metadata as m
eps = m.entry_points()
g = eps.select(group="vllm.general_plugins") if hasattr(eps, "select") else eps.get("vllm.general_plugins", [])
print(sorted(e.name + "=" + e.value for e in g))`

func TestInstallUninstallRoundTrip(t *testing.T) {
	for _, py := range testkit.Interpreters(t) {
		t.Run(py.String(), func(t *testing.T) {
			python := venv(t, py)
			root := filepath.Dir(filepath.Dir(python))
			before := snapshot(t, root)

			m, err := InstallFrom(python, fixture("0.1.0"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(m.SitePackages, root) {
				t.Fatalf("site-packages %s outside the venv %s", m.SitePackages, root)
			}
			for _, p := range []string{"profilemate/bootstrap.py", "profilemate/targets/__init__.py", PthName, "profilemate-0.1.0.dist-info/RECORD"} {
				if _, err := os.Stat(filepath.Join(m.SitePackages, p)); err != nil {
					t.Errorf("missing %s: %v", p, err)
				}
			}
			for _, p := range []string{"profilemate/__pycache__/x.pyc", "profilemate/targets/stale.pyc", "sitecustomize.py"} {
				if _, err := os.Stat(filepath.Join(m.SitePackages, p)); err == nil {
					t.Errorf("%s must not be installed", p)
				}
			}
			// Byte-code compiled by this interpreter, for every module, listed in RECORD.
			tag := strings.TrimSpace(run(t, python, nil, "-c", "import sys; print(sys.implementation.cache_tag)"))
			for _, p := range []string{"profilemate/__pycache__/__init__." + tag + ".pyc", "profilemate/__pycache__/bootstrap." + tag + ".pyc", "profilemate/targets/__pycache__/__init__." + tag + ".pyc"} {
				if !contains(m.Files, p) {
					t.Errorf("RECORD lacks %s: %v", p, m.Files)
				}
			}
			// RECORD lists exactly the files that were added.
			after := snapshot(t, root)
			var added []string
			for _, d := range diff(before, after) {
				if p := strings.TrimPrefix(d, "added: "); p != d && after[p] != "dir" {
					rel, _ := filepath.Rel(m.SitePackages, filepath.Join(root, p))
					added = append(added, filepath.ToSlash(rel))
				}
			}
			if strings.Join(sortCopy(added), ",") != strings.Join(sortCopy(m.Files), ",") {
				t.Errorf("added files %v, RECORD %v", added, m.Files)
			}
			got := run(t, python, nil, "-c", entryPointsProg)
			if !strings.Contains(got, "profilemate=profilemate.bootstrap:vllm_plugin") {
				t.Errorf("entry points: got %s", got)
			}
			// Importing the package fills __pycache__; uninstall must take that too.
			run(t, python, nil, "-c", "import profilemate.targets")

			// Re-install of the same version and an upgrade both replace cleanly.
			if _, err := InstallFrom(python, fixture("0.1.0")); err != nil {
				t.Fatalf("re-install: %v", err)
			}
			m2, err := InstallFrom(python, fixture("0.2.0-dev"))
			if err != nil {
				t.Fatalf("upgrade: %v", err)
			}
			if m2.Replaced != "profilemate-0.1.0.dist-info" || m2.DistInfo != "profilemate-0.2.0_dev.dist-info" {
				t.Errorf("upgrade: replaced %q, now %q", m2.Replaced, m2.DistInfo)
			}
			if _, err := os.Stat(filepath.Join(m.SitePackages, "profilemate-0.1.0.dist-info")); err == nil {
				t.Error("old dist-info left behind")
			}
			if got := run(t, python, nil, "-c", "import profilemate; print(profilemate.VERSION)"); strings.TrimSpace(got) != "0.2.0-dev" {
				t.Errorf("upgraded version: got %q", got)
			}

			if _, err := Uninstall(python); err != nil {
				t.Fatal(err)
			}
			if d := diff(before, snapshot(t, root)); len(d) > 0 {
				t.Errorf("venv differs after uninstall: %v", d)
			}
			if _, err := Uninstall(python); !errors.Is(err, ErrNotInstalled) {
				t.Errorf("second uninstall: got %v, want ErrNotInstalled", err)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func sortCopy(s []string) []string {
	c := append([]string(nil), s...)
	for i := range c {
		for j := i + 1; j < len(c); j++ {
			if c[j] < c[i] {
				c[i], c[j] = c[j], c[i]
			}
		}
	}
	return c
}

func TestRefusesForeignFiles(t *testing.T) {
	pys := testkit.Interpreters(t)
	python := venv(t, pys[len(pys)-1])
	m, err := InstallFrom(python, fixture("0.1.0"))
	if err != nil {
		t.Fatal(err)
	}
	site := m.SitePackages

	// A file the user put into the package folder stays, and so does its folder.
	extra := filepath.Join(site, "profilemate", "local_notes.txt")
	if err := os.WriteFile(extra, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A changed installed file makes uninstall refuse, touching nothing.
	boot := filepath.Join(site, "profilemate", "bootstrap.py")
	orig, _ := os.ReadFile(boot)
	if err := os.WriteFile(boot, append(orig, []byte("# local edit\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, site)
	if _, err := Uninstall(python); !errors.Is(err, ErrForeign) {
		t.Fatalf("uninstall of a changed file: got %v, want ErrForeign", err)
	}
	if _, err := InstallFrom(python, fixture("0.2.0")); !errors.Is(err, ErrForeign) {
		t.Fatalf("upgrade over a changed file: got %v, want ErrForeign", err)
	}
	if d := diff(before, snapshot(t, site)); len(d) > 0 {
		t.Fatalf("a refused operation changed files: %v", d)
	}
	if err := os.WriteFile(boot, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Uninstall(python); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(extra); err != nil || string(b) != "mine" {
		t.Errorf("user file: got %q %v, want kept", b, err)
	}
	if _, err := os.Stat(boot); err == nil {
		t.Error("installed file left behind")
	}

	// A dist-info of another installer (pip) is never touched.
	if err := os.Remove(extra); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(site, "profilemate")); err != nil {
		t.Fatal(err)
	}
	pip := filepath.Join(site, "profilemate-9.9.dist-info")
	if err := os.MkdirAll(pip, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"INSTALLER": "pip\n", "RECORD": "profilemate-9.9.dist-info/INSTALLER,,\n"} {
		if err := os.WriteFile(filepath.Join(pip, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := InstallFrom(python, fixture("0.1.0")); !errors.Is(err, ErrForeign) {
		t.Errorf("install over pip's profilemate: got %v, want ErrForeign", err)
	}
	if _, err := Uninstall(python); !errors.Is(err, ErrForeign) {
		t.Errorf("uninstall of pip's profilemate: got %v, want ErrForeign", err)
	}
	if _, err := os.Stat(filepath.Join(pip, "RECORD")); err != nil {
		t.Errorf("pip's dist-info touched: %v", err)
	}
}

func TestBadPython(t *testing.T) {
	_, err := InstallFrom(filepath.Join(t.TempDir(), "no-python"), fixture("0.1.0"))
	if err == nil || !strings.Contains(err.Error(), "site-packages") {
		t.Errorf("got %v, want a clear error", err)
	}
}
