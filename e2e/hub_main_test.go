// Package e2e runs ProfileMate's real binaries together: hub, agents and the vLLM-shaped test tree.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// binDir holds the binaries built once for the whole package (pmhub and pmagent).
var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "pm-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	for _, cmd := range []string{"pmhub", "pmagent"} {
		b := exec.Command("go", "build", "-ldflags=-extldflags=-Wl,-z,lazy", "-o", filepath.Join(dir, cmd), "./cmd/"+cmd)
		b.Dir = ".."
		b.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
		if out, err := b.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", cmd, err, out)
			return 1
		}
	}
	return m.Run()
}

// bin returns a built binary's path.
func bin(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(binDir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not built: %v", name, err)
	}
	return p
}
