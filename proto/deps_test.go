package proto

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependsOnProtobufOnly keeps proto/ a contract anyone can link: every package under it
// depends on the standard library and protobuf only, never on a NATS client or gRPC.
func TestDependsOnProtobufOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if !strings.Contains(dep, ".") || strings.HasPrefix(dep, "github.com/profilemate/profilemate/proto") {
			continue // standard library, or proto itself
		}
		if !strings.HasPrefix(dep, "google.golang.org/protobuf/") {
			t.Errorf("proto/ depends on %s; only protobuf is allowed (NATS glue lives in internal/stream)", dep)
		}
	}
}
