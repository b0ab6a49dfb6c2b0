package proto

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/profilemate/profilemate/internal/testkit"
)

var update = flag.Bool("update", false, "rewrite shim/profilemate/_tables.json from proto/tables")

// The CSV names of the seed (eleven) plus the agent's gpu_metrics, per kind: the fixed contract
// of docs/ARCHITECTURE.md, written out here so a schema file cannot silently rename a table.
var wantKindTables = map[string][]string{
	"cuda_graph":      {"cuda_graph_captures", "cuda_graph_usage"},
	"kv_cache":        {"kv_cache_evictions", "kv_cache_usage"},
	"moe_expert":      {"moe_expert_selection", "moe_expert_timing"},
	"forward_pass":    {"forward_pass_timing"},
	"cpu_timing":      {"cpu_operations_timing"},
	"batch_util":      {"batch_utilization"},
	"preemption":      {"preemption_events"},
	"encoder_decoder": {"encoder_decoder_timing"},
	"gpu":             {"gpu_metrics"},
}

func TestKindsTablesAndCSVNames(t *testing.T) {
	if got := len(Kinds()); got != len(wantKindTables) {
		t.Fatalf("Kinds() = %v, want the %d kinds of the contract", Kinds(), len(wantKindTables))
	}
	n := 0
	for _, k := range Kinds() {
		want, ok := wantKindTables[k]
		if !ok {
			t.Errorf("kind %q is not in the contract", k)
			continue
		}
		if got := KindTables(k); !reflect.DeepEqual(got, want) {
			t.Errorf("KindTables(%s) = %v, want %v", k, got, want)
		}
		for _, tb := range want {
			s, ok := Table(tb)
			if !ok {
				t.Errorf("table %s has no schema file", tb)
				continue
			}
			if s.Kind != k {
				t.Errorf("table %s: kind %s, want %s", tb, s.Kind, k)
			}
			n++
		}
	}
	if n != 12 || len(Tables()) != 12 {
		t.Errorf("%d tables in the contract, %d schema files; want 12 (eleven seed CSVs + gpu_metrics)", n, len(Tables()))
	}
	if ShimKinds()[len(ShimKinds())-1] == KindGPU || len(ShimKinds()) != 8 {
		t.Errorf("ShimKinds() = %v: want the eight shim kinds without gpu", ShimKinds())
	}
	files, _ := filepath.Glob("tables/*.json")
	if len(files) != 13 {
		t.Errorf("tables/ holds %d files, want common.json + 12 tables", len(files))
	}
}

func TestHeaders(t *testing.T) {
	common := []string{"session", "host", "pid", "role", "dp", "pp", "tp", "ep", "seq", "step", "ts_ns"}
	for _, s := range Tables() {
		h := Header(s.Table)
		if !reflect.DeepEqual(h[:len(common)], common) {
			t.Errorf("%s: header starts %v, want %v", s.Table, h[:len(common)], common)
		}
		seen := map[string]bool{}
		for _, c := range h {
			if seen[c] {
				t.Errorf("%s: column %s twice in the header", s.Table, c)
			}
			seen[c] = true
		}
		if len(h) != len(common)+len(s.Columns) {
			t.Errorf("%s: header %d columns, want %d", s.Table, len(h), len(common)+len(s.Columns))
		}
	}
	if Header("nope") != nil {
		t.Error("Header of an unknown table is not nil")
	}
}

// Timing columns name their clock: a column measured in ms says cpu_ or gpu_.
func TestTimingColumnsNameTheirClock(t *testing.T) {
	for _, s := range Tables() {
		for _, c := range s.Columns {
			if c.Unit == "ms" && !strings.Contains(c.Name, "cpu_") && !strings.Contains(c.Name, "gpu_") {
				t.Errorf("%s.%s is a timing column without cpu_ or gpu_ in its name", s.Table, c.Name)
			}
			if c.Unit == "ms" && c.Type != TypeFloat {
				t.Errorf("%s.%s: timing columns are float", s.Table, c.Name)
			}
		}
	}
}

func tablesCopy(t *testing.T) fstest.MapFS {
	t.Helper()
	m := fstest.MapFS{}
	files, err := filepath.Glob("tables/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no tables: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[filepath.Base(f)] = &fstest.MapFile{Data: b}
	}
	return m
}

func TestLoadRejectsBrokenSchemas(t *testing.T) {
	cases := []struct {
		name, file, old, new, want string
	}{
		{"duplicate column", "kv_cache_evictions.json", `"blocks_evicted"`, `"evictions"`, "twice"},
		{"unknown type", "kv_cache_usage.json", `"type": "float"`, `"type": "double"`, "unknown type"},
		{"unknown kind", "preemption_events.json", `"kind": "preemption"`, `"kind": "preempt"`, "unknown kind"},
		{"common order", "common.json", `"name": "pid"`, `"name": "proc"`, "common column 2"},
		{"repeats a common column", "cpu_operations_timing.json", `"name": "operation"`, `"name": "step"`, "repeats common"},
		{"file and table name differ", "gpu_metrics.json", `"table": "gpu_metrics"`, `"table": "gpu"`, "names table"},
		{"not snake_case", "forward_pass_timing.json", `"name": "tokens"`, `"name": "Tokens"`, "snake_case"},
		{"unknown field", "moe_expert_timing.json", `"since"`, `"sinse"`, "unknown field"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := tablesCopy(t)
			if _, err := Load(m); err != nil {
				t.Fatalf("unchanged copy: %v", err)
			}
			f := m[c.file]
			if !bytes.Contains(f.Data, []byte(c.old)) {
				t.Fatalf("%s has no %s", c.file, c.old)
			}
			f.Data = bytes.Replace(f.Data, []byte(c.old), []byte(c.new), 1)
			_, err := Load(m)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Load = %v, want an error with %q", err, c.want)
			}
		})
	}
	m := tablesCopy(t)
	delete(m, "encoder_decoder_timing.json")
	if _, err := Load(m); err == nil || !strings.Contains(err.Error(), "encoder_decoder has no table") {
		t.Errorf("Load without a kind's table = %v", err)
	}
}

func shimTablesPath(t *testing.T) string {
	return filepath.Join(testkit.RepoRoot(t), "shim", "profilemate", "_tables.json")
}

// TestShimTablesFresh fails when the shim's copy of the tables is stale; -update rewrites it.
func TestShimTablesFresh(t *testing.T) {
	want, err := Default().ShimTablesJSON()
	if err != nil {
		t.Fatal(err)
	}
	p := shimTablesPath(t)
	if *update {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run: go generate ./proto)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run go generate ./proto", p)
	}
}

// A column renamed in one schema file changes the shim's copy: the freshness check above and the
// Python contract test (see TestPythonContractCatchesRename) both fail.
func TestRenamedColumnChangesShimTables(t *testing.T) {
	m := tablesCopy(t)
	f := m["batch_utilization.json"]
	f.Data = bytes.Replace(f.Data, []byte(`"name": "token_util"`), []byte(`"name": "token_utilization"`), 1)
	r, err := Load(m)
	if err != nil {
		t.Fatal(err)
	}
	mutated, err := r.ShimTablesJSON()
	if err != nil {
		t.Fatal(err)
	}
	cur, err := os.ReadFile(shimTablesPath(t))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(mutated, cur) {
		t.Fatal("a renamed column left the shim's tables unchanged")
	}
	// The fixture that writes token_util no longer decodes against the mutated tables.
	line, err := os.ReadFile("testdata/batches/batch_util.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.DecodeLine(line); err == nil || !strings.Contains(err.Error(), `no column "token_util"`) {
		t.Fatalf("fixture against renamed column: %v", err)
	}
}
