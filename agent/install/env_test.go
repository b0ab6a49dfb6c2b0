package install

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestFormatSh(t *testing.T) {
	vars := Vars(EnvOptions{ShimDir: "/cache/shim 1", Socket: "/run/pm.sock", Session: "it's"})
	out, err := Format(vars, "sh")
	if err != nil {
		t.Fatal(err)
	}
	// Real sh evaluates the output; the values must come back unchanged.
	cmd := exec.Command("sh", "-c", out+`printf '%s\n%s\n%s\n%s\n' "$PYTHONPATH" "$PROFILEMATE_SOCKET" "$PROFILEMATE_SESSION" "$VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"`)
	cmd.Env = []string{"PYTHONPATH=/opt/app"}
	got, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := "/cache/shim 1:/opt/app\n/run/pm.sock\nit's\n" + strings.Join(RayCopied, ",") + "\n"
	if string(got) != want {
		t.Errorf("sh: got %q, want %q", got, want)
	}
}

func TestFormatOthers(t *testing.T) {
	vars := Vars(EnvOptions{ShimDir: "/c/shim-1", Socket: "/run/a%b.sock"})
	out, err := Format(vars, "systemd")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `Environment="PROFILEMATE_SOCKET=/run/a%%b.sock"`) || strings.Contains(out, "PROFILEMATE_SESSION=") {
		t.Errorf("systemd: got %s", out)
	}
	out, err = Format(vars, "json")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(out), &m); err != nil || m["PYTHONPATH"] != "/c/shim-1" || len(m) != 3 {
		t.Errorf("json: got %v %v", m, err)
	}
	if _, err := Format(vars, "yaml"); err == nil {
		t.Error("unknown format must fail")
	}
}

func TestShimCache(t *testing.T) {
	root := t.TempDir()
	calls := 0
	unpack := func(dst string) error {
		calls++
		return os.WriteFile(filepath.Join(dst, "sitecustomize.py"), []byte("x"), 0o644)
	}
	dir, err := ShimCache(root, "1.2.3", unpack)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sitecustomize.py")); err != nil {
		t.Fatal(err)
	}
	if again, err := ShimCache(root, "1.2.3", unpack); err != nil || again != dir || calls != 1 {
		t.Errorf("second call: %s %v, unpacked %d times", again, err, calls)
	}
	// A failed unpack leaves nothing behind.
	if _, err := ShimCache(root, "2.0.0", func(string) error { return errors.New("boom") }); err == nil {
		t.Fatal("failed unpack must fail")
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 1 {
		t.Errorf("cache root after a failed unpack: %v", ents)
	}
}
