package install

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/profilemate/profilemate/internal/testkit"
)

func TestInterpreters(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	vllm := write("vllm", "#!/opt/venv/bin/python3.12\nimport sys\n")
	envScript := write("ray", "#!/usr/bin/env -S python3 -u\n")
	shell := write("start.sh", "#!/bin/sh\nexec vllm serve\n")
	look := func(name string) (string, error) {
		switch name {
		case "python3":
			return "/usr/bin/python3", nil
		case "vllm":
			return vllm, nil
		}
		return "", errors.New("not found")
	}
	for _, c := range []struct {
		name     string
		explicit []string
		argv0    string
		want     string
	}{
		{"explicit wins", []string{"/a/python", "/b/python", "/a/python"}, vllm, "/a/python,/b/python"},
		{"console script's #! python", nil, "vllm", "/opt/venv/bin/python3.12"},
		{"#!/usr/bin/env python3", nil, envScript, "/usr/bin/python3"},
		{"the command is a python", nil, "/x/bin/python3.11", "/x/bin/python3.11"},
		{"a shell script: python3 on PATH", nil, shell, "/usr/bin/python3"},
		{"no command (env)", nil, "", "/usr/bin/python3"},
		{"explicit name resolved on PATH", []string{"python3"}, "", "/usr/bin/python3"},
	} {
		if got := strings.Join(Interpreters(c.explicit, c.argv0, look), ","); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

// TestInstallRollsBackWhenByteCodeFails: a module that does not compile under the target python
// fails the install with python's message and leaves the environment as it was.
func TestInstallRollsBackWhenByteCodeFails(t *testing.T) {
	py := testkit.Interpreters(t)[0]
	python := venv(t, py)
	root := filepath.Dir(filepath.Dir(python))
	before := snapshot(t, root)
	src := fixture("0.3.0")
	src.FS.(fstest.MapFS)["profilemate/broken.py"] = &fstest.MapFile{Data: []byte("def (:\n")}
	_, err := InstallFrom(python, src)
	if err == nil || !strings.Contains(err.Error(), "compile byte-code") || !strings.Contains(err.Error(), "SyntaxError") {
		t.Fatalf("install: got %v, want a byte-code error naming the SyntaxError", err)
	}
	if d := diff(before, snapshot(t, root)); len(d) > 0 {
		t.Errorf("venv differs after the failed install: %v", d)
	}
}
