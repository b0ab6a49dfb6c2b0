package proto

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedFresh regenerates the Go code from the .proto into a temp folder and compares it
// with the committed pmpb/ (skips where protoc or the pinned plugin is missing).
func TestGeneratedFresh(t *testing.T) {
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		t.Skip("protoc not installed")
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		t.Skip("go env GOPATH failed")
	}
	plugin := filepath.Join(string(bytes.TrimSpace(gopath)), "bin", "protoc-gen-go")
	if v, err := exec.Command(plugin, "--version").Output(); err != nil || !bytes.Contains(v, []byte("v1.36.12")) {
		t.Skipf("pinned protoc-gen-go v1.36.12 not at %s", plugin)
	}
	out := t.TempDir()
	cmd := exec.Command(protoc, "-I", ".", "--plugin=protoc-gen-go="+plugin, "--go_out="+out,
		"--go_opt=module=github.com/profilemate/profilemate/proto", "profilemate/v1/profilemate.proto")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, b)
	}
	got, err := os.ReadFile(filepath.Join(out, "pmpb", "profilemate.pb.go"))
	if err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile(filepath.Join("pmpb", "profilemate.pb.go"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, have) {
		t.Fatal("pmpb/profilemate.pb.go is stale: run proto/generate.sh")
	}
}
