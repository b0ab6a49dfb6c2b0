package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSetupChecksEachPackage adds a package to a copy of setup.sh's list whose check fails while
// the others' pass, runs it with apt-get, sudo and go replaced by recorders, and expects apt-get
// to install that package: no package is skipped because another one is present.
func TestSetupChecksEachPackage(t *testing.T) {
	src, err := os.ReadFile("setup.sh")
	if err != nil {
		t.Fatal(err)
	}
	const anchor = "PACKAGES=(\n"
	if !strings.Contains(string(src), anchor) {
		t.Fatal("setup.sh has no PACKAGES=( list")
	}
	script := strings.Replace(string(src), anchor, anchor+"  \"pm-new-package|false\"\n", 1)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "scripts"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "scripts", "setup.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	log := filepath.Join(t.TempDir(), "calls")
	for _, name := range []string{"apt-get", "go"} {
		rec := "#!/bin/sh\necho \"" + name + " $*\" >> " + log + "\n"
		if err := os.WriteFile(filepath.Join(bin, name), []byte(rec), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(bin, "sudo"), []byte("#!/bin/sh\nexec \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "setup.sh"))
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("setup.sh: %v\n%s", err, out)
	}
	calls, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var install string
	for _, l := range strings.Split(string(calls), "\n") {
		if strings.HasPrefix(l, "apt-get install") {
			install = l
		}
	}
	if !strings.Contains(install, " pm-new-package") {
		t.Errorf("apt-get install not called with the new package; calls:\n%s", calls)
	}
}
