// Package install places the ProfileMate shim into a Python environment's site-packages (a copy of
// the profilemate package, a .pth line and a dist-info with a vllm.general_plugins entry point),
// so every process of that Python — whatever launched it — loads the shim, with nothing pointing
// back into pmagent's own files. Uninstall removes exactly what the RECORD lists.
package install

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Installer is the value of the dist-info's INSTALLER file; only dist-infos carrying it are ours.
const Installer = "pmagent"

// PthName is the .pth file placed at the root of site-packages. A .pth line that starts with
// "import" is executed by site.py at interpreter start; it must stay one line. It imports the
// package alone (the activation lives in profilemate/__init__.py), so a Python that never imports
// vLLM loads one module of the shim; older installs' line, `import profilemate.bootstrap as b;
// b.bootstrap("pth")`, keeps working.
const (
	PthName = "profilemate.pth"
	PthLine = `import profilemate; profilemate.activate("pth")`
)

// EntryPoints is the dist-info's entry_points.txt: vLLM loads general plugins in every process it
// starts (API server, EngineCore, workers, Ray actors).
const EntryPoints = "[vllm.general_plugins]\nprofilemate = profilemate.bootstrap:vllm_plugin\n"

// ErrForeign means the target holds a profilemate that pmagent did not install (or that was changed
// since); nothing is touched.
var ErrForeign = errors.New("refusing to touch files pmagent did not install")

// ErrNotInstalled means no pmagent-installed profilemate was found.
var ErrNotInstalled = errors.New("profilemate not installed")

// Source is the shim to install: FS holds the package folder Package ("profilemate") at its root.
type Source struct {
	FS      fs.FS
	Version string
}

// Manifest describes one installation.
type Manifest struct {
	Python       string   `json:"python"`
	PyVersion    string   `json:"python_version"`
	SitePackages string   `json:"site_packages"`
	Version      string   `json:"version"`
	DistInfo     string   `json:"dist_info"` // folder name inside site-packages
	Files        []string `json:"files"`     // paths relative to site-packages, as in RECORD
	Replaced     string   `json:"replaced,omitempty"`
}

// Env is what the interpreter says about itself.
type Env struct {
	Purelib string `json:"purelib"`
	Version string `json:"version"`
}

// Query asks python for its purelib site-packages. -I keeps PYTHONPATH and the user site out of
// the answer: the install must land where the interpreter looks by itself. -B: asking must not
// leave byte-code behind (an installed .pth imports the shim).
func Query(python string) (Env, error) {
	const prog = `import sysconfig,json,sys;print(json.dumps({"purelib":sysconfig.get_paths()["purelib"],"version":"%d.%d.%d"%sys.version_info[:3]}))`
	cmd := exec.Command(python, "-I", "-B", "-c", prog)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return Env{}, fmt.Errorf("ask %s for its site-packages: %w", python, err)
	}
	var e Env
	// The answer is the last line: a .pth in that environment may print before it.
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &e); err != nil || e.Purelib == "" {
		return Env{}, fmt.Errorf("ask %s for its site-packages: unexpected answer %q", python, out)
	}
	return e, nil
}

var distInfoRe = regexp.MustCompile(`^profilemate-([^/]+)\.dist-info$`)

// distName makes a version safe for a dist-info folder name (wheel spec: "-" becomes "_").
func distName(version string) string {
	return "profilemate-" + strings.ReplaceAll(version, "-", "_") + ".dist-info"
}

// found returns the profilemate dist-info folders in site.
func found(site string) ([]string, error) {
	ents, err := os.ReadDir(site)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", site, err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && distInfoRe.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// InstallFrom installs src into python's site-packages. An earlier pmagent install is replaced
// (upgrade, or repair of the same version); a profilemate from anywhere else is refused.
func InstallFrom(python string, src Source) (Manifest, error) {
	if src.Version == "" {
		return Manifest{}, errors.New("install: shim version is empty")
	}
	env, err := Query(python)
	if err != nil {
		return Manifest{}, err
	}
	site := env.Purelib
	if err := os.MkdirAll(site, 0o755); err != nil {
		return Manifest{}, fmt.Errorf("install: %w", err)
	}
	if abs, err := filepath.Abs(python); err == nil {
		python = abs
	}
	m := Manifest{Python: python, PyVersion: env.Version, SitePackages: site, Version: src.Version, DistInfo: distName(src.Version)}

	olds, err := found(site)
	if err != nil {
		return Manifest{}, err
	}
	for _, old := range olds {
		// Check ownership and integrity first: an upgrade must not half-remove a foreign install.
		if _, err := readRecord(site, old); err != nil {
			return Manifest{}, fmt.Errorf("install into %s: existing %s: %w", site, old, err)
		}
	}
	for _, old := range olds {
		if err := removeDist(site, old); err != nil {
			return Manifest{}, fmt.Errorf("install: remove previous %s: %w", old, err)
		}
		m.Replaced = old
	}
	// With the old install gone, anything left under our names belongs to someone else.
	for _, p := range []string{"profilemate", PthName, m.DistInfo} {
		if _, err := os.Lstat(filepath.Join(site, p)); err == nil {
			return Manifest{}, fmt.Errorf("install into %s: %s exists: %w", site, p, ErrForeign)
		}
	}

	files := map[string][]byte{} // relative path (slash) → content
	err = fs.WalkDir(src.FS, "profilemate", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "__pycache__" {
				return fs.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(p, ".pyc") || !d.Type().IsRegular() {
			return nil
		}
		b, err := fs.ReadFile(src.FS, p)
		if err != nil {
			return err
		}
		files[p] = b
		return nil
	})
	if err != nil {
		return Manifest{}, fmt.Errorf("install: read shim: %w", err)
	}
	if _, ok := files["profilemate/bootstrap.py"]; !ok {
		return Manifest{}, errors.New("install: shim has no profilemate/bootstrap.py")
	}
	files[PthName] = []byte(PthLine + "\n")
	files[m.DistInfo+"/METADATA"] = []byte(fmt.Sprintf("Metadata-Version: 2.1\nName: profilemate\nVersion: %s\nSummary: ProfileMate shim for vLLM, installed by pmagent\n", src.Version))
	files[m.DistInfo+"/INSTALLER"] = []byte(Installer + "\n")
	files[m.DistInfo+"/entry_points.txt"] = []byte(EntryPoints)

	// The package first; byte-code next, compiled by this interpreter into the installed tree (it
	// loads the shim at every start, and PYTHONDONTWRITEBYTECODE=1 or a read-only site-packages
	// would otherwise make it compile the sources every time); then RECORD; the .pth goes last:
	// until it exists no interpreter tries to load a half-copied package.
	di := m.DistInfo
	var pkg, sources []string
	for p := range files {
		pkg = append(pkg, p)
	}
	sort.Strings(pkg)
	var written []string
	rollback := func(err error) (Manifest, error) {
		removeFiles(site, written)
		return Manifest{}, err
	}
	write := func(p string) error {
		dst := filepath.Join(site, filepath.FromSlash(p))
		err := os.MkdirAll(filepath.Dir(dst), 0o755)
		if err == nil {
			err = os.WriteFile(dst, files[p], 0o644)
		}
		if err != nil {
			return fmt.Errorf("install: write %s: %w", dst, err)
		}
		written = append(written, p)
		return nil
	}
	for _, p := range pkg {
		if p == PthName {
			continue
		}
		if err := write(p); err != nil {
			return rollback(err)
		}
		if strings.HasSuffix(p, ".py") {
			sources = append(sources, filepath.Join(site, filepath.FromSlash(p)))
		}
	}
	pycs, err := Compile(python, sources, false)
	if err != nil {
		return rollback(fmt.Errorf("install: %w", err))
	}
	for _, pyc := range pycs {
		rel, err := filepath.Rel(site, pyc)
		if err != nil || strings.HasPrefix(rel, "..") {
			return rollback(fmt.Errorf("install: byte-code %s outside %s", pyc, site))
		}
		b, err := os.ReadFile(pyc)
		if err != nil {
			return rollback(fmt.Errorf("install: %w", err))
		}
		rel = filepath.ToSlash(rel)
		files[rel] = b
		written = append(written, rel)
	}

	names := make([]string, 0, len(files)+1)
	for p := range files {
		names = append(names, p)
	}
	sort.Strings(names)
	var rec bytes.Buffer
	w := csv.NewWriter(&rec)
	for _, p := range names {
		_ = w.Write([]string{p, hashOf(files[p]), strconv.Itoa(len(files[p]))})
	}
	_ = w.Write([]string{di + "/RECORD", "", ""})
	w.Flush()
	files[di+"/RECORD"] = rec.Bytes()
	names = append(names, di+"/RECORD")
	for _, p := range []string{di + "/RECORD", PthName} {
		if err := write(p); err != nil {
			return rollback(err)
		}
	}
	m.Files = names
	return m, nil
}

// hashOf is RECORD's hash format: sha256, urlsafe base64 without padding.
func hashOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256=" + base64.RawURLEncoding.EncodeToString(s[:])
}

type recEntry struct{ path, hash string }

// readRecord reads and checks a dist-info: it must be ours (INSTALLER), its RECORD must stay inside
// site-packages, and every file must still hold what was installed.
func readRecord(site, distInfo string) ([]recEntry, error) {
	inst, err := os.ReadFile(filepath.Join(site, distInfo, "INSTALLER"))
	if err != nil || strings.TrimSpace(string(inst)) != Installer {
		return nil, fmt.Errorf("INSTALLER is not %q: %w", Installer, ErrForeign)
	}
	f, err := os.Open(filepath.Join(site, distInfo, "RECORD"))
	if err != nil {
		return nil, fmt.Errorf("read RECORD: %w", err)
	}
	defer f.Close()
	rows, err := csv.NewReader(bufio.NewReader(f)).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("parse RECORD: %w", err)
	}
	var out []recEntry
	var changed []string
	for _, r := range rows {
		if len(r) < 1 || r[0] == "" {
			continue
		}
		p := r[0]
		clean := path.Clean(p)
		if clean != p || path.IsAbs(p) || strings.HasPrefix(p, "../") || p == ".." {
			return nil, fmt.Errorf("RECORD path %q leaves site-packages: %w", p, ErrForeign)
		}
		hash := ""
		if len(r) > 1 {
			hash = r[1]
		}
		if hash != "" {
			b, err := os.ReadFile(filepath.Join(site, filepath.FromSlash(p)))
			switch {
			case errors.Is(err, fs.ErrNotExist):
				// Already gone: nothing of ours to remove, nothing foreign to protect.
			case err != nil:
				return nil, fmt.Errorf("read %s: %w", p, err)
			case hashOf(b) != hash && !isByteCode(p):
				changed = append(changed, p)
			}
		}
		out = append(out, recEntry{p, hash})
	}
	if len(changed) > 0 {
		return nil, fmt.Errorf("changed since install (%s): %w", strings.Join(changed, ", "), ErrForeign)
	}
	return out, nil
}

// isByteCode reports whether a RECORD path is byte-code install compiled: Python may rewrite it
// (a source touched since), so its hash is not held against the install; uninstall removes it.
func isByteCode(p string) bool {
	return strings.HasSuffix(p, ".pyc") && path.Base(path.Dir(p)) == "__pycache__"
}

// removeDist deletes what distInfo's RECORD lists, the byte-code Python compiled from those files,
// and the folders that end up empty. Files it did not list stay, and so do their folders.
func removeDist(site, distInfo string) error {
	ents, err := readRecord(site, distInfo)
	if err != nil {
		return err
	}
	var paths []string
	for _, e := range ents {
		paths = append(paths, e.path)
	}
	return removeFiles(site, paths)
}

// removeFiles deletes the site-relative files, the byte-code any Python compiled from the .py
// among them (__pycache__/<stem>.<tag>.pyc, every tag), and the folders that end up empty.
func removeFiles(site string, files []string) error {
	var paths []string
	for _, p := range files {
		paths = append(paths, p)
		full := filepath.Join(site, filepath.FromSlash(p))
		if err := os.Remove(full); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", full, err)
		}
		if strings.HasSuffix(p, ".py") {
			stem := strings.TrimSuffix(path.Base(p), ".py")
			cache := filepath.Join(filepath.Dir(full), "__pycache__")
			pycs, _ := filepath.Glob(filepath.Join(cache, stem+".*.pyc"))
			for _, pyc := range pycs {
				if err := os.Remove(pyc); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("remove %s: %w", pyc, err)
				}
			}
			paths = append(paths, path.Join(path.Dir(p), "__pycache__", "x"))
		}
	}
	pruneDirs(site, paths)
	return nil
}

// pruneDirs removes the now-empty folders above the given site-relative files, deepest first,
// never site-packages itself.
func pruneDirs(site string, files []string) {
	dirs := map[string]bool{}
	for _, p := range files {
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	list := make([]string, 0, len(dirs))
	for d := range dirs {
		list = append(list, d)
	}
	sort.Slice(list, func(i, j int) bool { return strings.Count(list[i], "/") > strings.Count(list[j], "/") })
	for _, d := range list {
		// os.Remove fails on a non-empty folder: exactly the guard we want.
		_ = os.Remove(filepath.Join(site, filepath.FromSlash(d)))
	}
}

// Uninstall removes the pmagent-installed profilemate from python's site-packages. It refuses (and
// changes nothing) when the install is not pmagent's or its files were changed.
func Uninstall(python string) (Manifest, error) {
	env, err := Query(python)
	if err != nil {
		return Manifest{}, err
	}
	site := env.Purelib
	dists, err := found(site)
	if err != nil {
		return Manifest{}, err
	}
	if len(dists) == 0 {
		return Manifest{}, fmt.Errorf("uninstall from %s: %w", site, ErrNotInstalled)
	}
	m := Manifest{Python: python, PyVersion: env.Version, SitePackages: site}
	for _, d := range dists {
		ents, err := readRecord(site, d)
		if err != nil {
			return Manifest{}, fmt.Errorf("uninstall from %s: %s: %w", site, d, err)
		}
		for _, e := range ents {
			m.Files = append(m.Files, e.path)
		}
		m.DistInfo = d
		if sub := distInfoRe.FindStringSubmatch(d); sub != nil {
			m.Version = sub[1]
		}
	}
	for _, d := range dists {
		if err := removeDist(site, d); err != nil {
			return Manifest{}, fmt.Errorf("uninstall from %s: %w", site, err)
		}
	}
	return m, nil
}
