// Package testbed embeds the vLLM-shaped test tree (one vllm package per era), the simulated engine
// pmsim behind it and the `vllm` console script, so Go tests and the demo can unpack a runnable copy.
package testbed

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// FS holds eras/<era>/vllm, pmsim and bin/vllm.
//
//go:embed all:eras all:pmsim all:bin
var FS embed.FS

// Eras maps targets.json era keys to their folder under eras/.
var Eras = map[string]string{
	"v0.7.3":          "v0_7_3",
	"v0.10.2":         "v0_10_2",
	"v0.11.0":         "v0_11_0",
	"v0.16.0":         "v0_16_0",
	"main-2026-08-20": "main_2026_08_20",
}

// Unpack writes the embedded tree under dst (dst/eras, dst/pmsim, dst/bin), skipping __pycache__.
// A run selects an era with PYTHONPATH=dst/eras/<folder>:dst and starts dst/bin/vllm.
func Unpack(dst string) error {
	return fs.WalkDir(FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "__pycache__" {
			return fs.SkipDir
		}
		target := filepath.Join(dst, filepath.FromSlash(path))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := FS.ReadFile(path)
		if err != nil {
			return fmt.Errorf("testbed: read %s: %w", path, err)
		}
		mode := os.FileMode(0o644)
		if filepath.Dir(path) == "bin" {
			mode = 0o755
		}
		if err := os.WriteFile(target, data, mode); err != nil {
			return fmt.Errorf("testbed: write %s: %w", target, err)
		}
		return nil
	})
}
