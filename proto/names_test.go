package proto

import (
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/internal/testkit"
)

// nameCases are names from the field: every one the boundary issue saw dropped later, and the
// ones that must keep working (default session ids, FQDNs, container host names).
var nameCases = []struct {
	what, name string
	ok         bool
}{
	{"session", "20261126_205500_a1b2c3", true},
	{"session", "exp-1.run_2", true},
	{"session", "my run", false},
	{"session", "exp/1", false},
	{"session", "x:y", false},
	{"session", "résumé", false},
	{"session", "a*", false},
	{"session", "a>", false},
	{"session", ".hidden", false},
	{"session", "", false},
	{"session", strings.Repeat("a", 128), true},
	{"session", strings.Repeat("a", 129), false},
	{"session", strings.Repeat("a", 4100), false},
	{"host", "gpu-node-7.dc1.example", true},
	{"host", "ip-10-0-0-1_ec2", true},
	{"host", strings.Repeat("h", 253), true},
	{"host", strings.Repeat("h", 254), false},
	{"host", "node a", false},
	{"host", "node\n", false},
	{"kind", "kv_cache", true},
	{"kind", "straggler_score", true},
	{"kind", "KV", false},
	{"kind", "9x", false},
	{"kind", "kv-cache", false},
	{"kind", strings.Repeat("k", 65), false},
}

func TestNameGrammar(t *testing.T) {
	rules := map[string]*NameRule{"session": SessionName, "host": HostName, "kind": KindName}
	for _, c := range nameCases {
		err := rules[c.what].Validate(c.name)
		if (err == nil) != c.ok {
			t.Errorf("%s %.50q: err %v, want ok=%v", c.what, c.name, err, c.ok)
		}
		if err != nil && (!errors.Is(err, ErrName) || !strings.Contains(err.Error(), c.what)) {
			t.Errorf("%s %.50q: error %q does not wrap ErrName or name the field", c.what, c.name, err)
		}
	}
	for _, k := range Kinds() {
		if err := ValidateKind(k); err != nil {
			t.Errorf("built-in kind %s: %v", k, err)
		}
	}
	// The longest names still make a subject NATS accepts (4 KB control line with PUB and size).
	long := EventSubject(strings.Repeat("_", MaxSessionLen), strings.Repeat(".", MaxHostLen), "p4294967295", strings.Repeat("k", MaxKindLen))
	if len(long) > 1500 {
		t.Errorf("longest subject is %d bytes", len(long))
	}
}

// TestPythonNameGrammarAgrees runs profilemate.schema.name_error on the same names under every
// supported Python and compares its verdicts with Go's.
func TestPythonNameGrammarAgrees(t *testing.T) {
	root := testkit.RepoRoot(t)
	in, _ := json.Marshal(nameCases2())
	script := `import json, sys
from profilemate import schema
cases = json.loads(sys.argv[1])
print(json.dumps([schema.name_error(c[0], c[1]) is None for c in cases]))`
	for _, py := range testkit.Interpreters(t) {
		t.Run(py.String(), func(t *testing.T) {
			cmd := exec.Command(py.Path, "-c", script, string(in))
			cmd.Dir = filepath.Join(root, "shim")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			var got []bool
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			for i, c := range nameCases {
				if got[i] != c.ok {
					t.Errorf("python: %s %.50q ok=%v, want %v", c.what, c.name, got[i], c.ok)
				}
			}
		})
	}
}

func nameCases2() [][2]string {
	var out [][2]string
	for _, c := range nameCases {
		out = append(out, [2]string{c.what, c.name})
	}
	return out
}
