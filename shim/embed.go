// Package shim embeds the Python shim (sitecustomize.py and the profilemate package) so pmagent
// can unpack it into a versioned cache folder and put it on vLLM's PYTHONPATH.
package shim

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// FS holds the shim files; `all:` keeps __init__.py and other underscore files.
//
//go:embed sitecustomize.py all:profilemate
var FS embed.FS

// Version is a content hash of the embedded files (names and bytes), so a changed shim lands
// in a new cache folder instead of overwriting one a running vLLM imports from.
var Version = computeVersion()

func skip(p string) bool {
	return strings.Contains(p, "__pycache__") || strings.HasSuffix(p, ".pyc")
}

func computeVersion() string {
	var names []string
	_ = fs.WalkDir(FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !skip(p) {
			names = append(names, p)
		}
		return nil
	})
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		b, _ := FS.ReadFile(n)
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Unpack writes the shim under dst (dst/sitecustomize.py, dst/profilemate/...), skipping
// __pycache__.
func Unpack(dst string) error {
	return fs.WalkDir(FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("walk %s: %w", p, err)
		}
		if skip(p) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := FS.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return fmt.Errorf("mkdir for %s: %w", path.Base(p), err)
		}
		if err := os.WriteFile(target, b, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", target, err)
		}
		return nil
	})
}
