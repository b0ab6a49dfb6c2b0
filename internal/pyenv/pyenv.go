// Package pyenv finds the Python interpreters ProfileMate supports (3.9–3.13) under pyenv's
// versions folder; internal/testkit runs the Python suites under each of them from Go tests.
package pyenv

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Supported lists the minor versions the shim must run on.
var Supported = []string{"3.9", "3.10", "3.11", "3.12", "3.13"}

// Interpreter is one Python found on this machine.
type Interpreter struct {
	Version string // "3.12"
	Path    string // absolute path to python3
}

// Root returns pyenv's root folder: $PYENV_ROOT, else ~/.pyenv.
func Root() string {
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
		matches, _ := filepath.Glob(filepath.Join(Root(), "versions", v+".*", "bin", "python3"))
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

// String names the interpreter for subtests.
func (i Interpreter) String() string { return fmt.Sprintf("py%s", i.Version) }
