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

// TestKindsTablesAndCSVNames: the kinds of tables/kinds.json and the table files agree (every
// table of a listed kind, every kind with a table), and every table is written by a golden
// fixture (testdata/batches), so renaming a table or a kind cannot go unnoticed: the fixtures
// name the shipped tables once, and the shim's and Go's generated copies are checked fresh.
func TestKindsTablesAndCSVNames(t *testing.T) {
	files, _ := filepath.Glob("tables/*.json")
	if len(files) != len(Tables())+2 {
		t.Errorf("tables/ holds %d files, want kinds.json + common.json + %d tables", len(files), len(Tables()))
	}
	inFixtures := map[string]string{} // table → kind, as the golden batches write them
	fixtures, _ := filepath.Glob("testdata/batches/*.json")
	for _, f := range fixtures {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		l, err := DecodeLine(b)
		if err != nil || len(l.Rejected) > 0 {
			t.Fatalf("%s: %v %v", f, err, l.Rejected)
		}
		for _, e := range l.Batch.Events {
			inFixtures[e.Table] = e.Kind
		}
	}
	for _, k := range Kinds() {
		if len(KindTables(k)) == 0 {
			t.Errorf("kind %s has no table", k)
		}
		for _, tb := range KindTables(k) {
			if s, ok := Table(tb); !ok || s.Kind != k {
				t.Errorf("table %s of kind %s: %+v", tb, k, s)
			}
			if inFixtures[tb] != k {
				t.Errorf("table %s (kind %s) is in no golden fixture under that kind", tb, k)
			}
		}
	}
	if len(inFixtures) != len(Tables()) {
		t.Errorf("fixtures write %d tables, the contract has %d", len(inFixtures), len(Tables()))
	}
	for _, k := range ShimKinds() {
		if info, _ := Default().KindInfo(k); info.By != ByShim || k == KindGPU {
			t.Errorf("ShimKinds() = %v: %s is not the shim's", ShimKinds(), k)
		}
	}
	if by, _ := Default().KindInfo(KindGPU); by.By != ByAgent {
		t.Errorf("gpu is recorded by %q, want the agent", by.By)
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
	l, err := r.DecodeLine(line)
	if err != nil || len(l.Rejected) == 0 || !strings.Contains(l.Rejected[0].Error(), `no column "token_util"`) {
		t.Fatalf("fixture against renamed column: %v %v", l, err)
	}
}

func TestDeclareKind(t *testing.T) {
	r, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	tbl := Schema{Table: "straggler_scores", Columns: []Column{{Name: "score", Type: TypeFloat, Meaning: "m"}}}
	if err := r.Declare(Kind{Kind: "straggler", Meaning: "m"}, tbl); err != nil {
		t.Fatal(err)
	}
	if err := r.Declare(Kind{Kind: "straggler", Meaning: "m"}, tbl); err != nil {
		t.Errorf("declaring the same kind again: %v", err)
	}
	if !r.IsKind("straggler") || r.KindTables("straggler")[0] != "straggler_scores" || r.Kinds()[len(r.Kinds())-1] != "straggler" {
		t.Errorf("declared kind not listed: %v", r.Kinds())
	}
	if k, _ := r.KindInfo("straggler"); k.By != ByHub {
		t.Errorf("declared kind by %q", k.By)
	}
	if h := r.Header("straggler_scores"); len(h) != len(commonNames)+1 {
		t.Errorf("header %v", h)
	}
	if b, _ := r.ShimTablesJSON(); bytes.Contains(b, []byte("straggler")) {
		t.Error("a run-time kind leaked into the shim's tables")
	}
	for name, c := range map[string]struct {
		k Kind
		s []Schema
	}{
		"bad kind name":        {Kind{Kind: "Straggler"}, []Schema{tbl}},
		"no table":             {Kind{Kind: "x_kind"}, nil},
		"built-in kind":        {Kind{Kind: KindKVCache}, []Schema{tbl}},
		"changed tables":       {Kind{Kind: "straggler"}, []Schema{{Table: "straggler_scores", Columns: []Column{{Name: "z", Type: TypeInt, Meaning: "m"}}}}},
		"table name taken":     {Kind{Kind: "other"}, []Schema{{Table: "kv_cache_usage", Columns: tbl.Columns}}},
		"bad column type":      {Kind{Kind: "other"}, []Schema{{Table: "o", Columns: []Column{{Name: "a", Type: "double", Meaning: "m"}}}}},
		"common column":        {Kind{Kind: "other"}, []Schema{{Table: "o", Columns: []Column{{Name: "seq", Type: TypeInt, Meaning: "m"}}}}},
		"column not snake":     {Kind{Kind: "other"}, []Schema{{Table: "o", Columns: []Column{{Name: "A b", Type: TypeInt, Meaning: "m"}}}}},
		"table name not snake": {Kind{Kind: "other"}, []Schema{{Table: "O-1", Columns: tbl.Columns}}},
	} {
		if err := r.Declare(c.k, c.s...); err == nil {
			t.Errorf("%s: declared", name)
		}
	}
	if r.IsKind("other") || r.IsKind("x_kind") {
		t.Error("a refused declaration left a kind behind")
	}
}

// TestColumnIndex: code binds columns by name; a column that does not exist is an error.
func TestColumnIndex(t *testing.T) {
	i, c, err := ColumnIndex("kv_cache_usage", "usage")
	if err != nil || Header("kv_cache_usage")[i] != "usage" || c.Type != TypeFloat {
		t.Errorf("usage: %d %+v %v", i, c, err)
	}
	if i, _, err := ColumnIndex("kv_cache_usage", "step"); err != nil || i != 9 {
		t.Errorf("common column step: %d %v", i, err)
	}
	if _, _, err := ColumnIndex("kv_cache_usage", "usage_ratio"); err == nil || !strings.Contains(err.Error(), `no column "usage_ratio"`) {
		t.Errorf("missing column: %v", err)
	}
	if _, _, err := ColumnIndex("kv_usage", "usage"); err == nil {
		t.Error("missing table bound")
	}
	if i, err := OwnIndex("kv_cache_usage", "usage"); err != nil || Table2(t, "kv_cache_usage").Columns[i].Name != "usage" {
		t.Errorf("own index %d %v", i, err)
	}
	if _, err := OwnIndex("kv_cache_usage", "step"); err == nil {
		t.Error("a common column is not an own column")
	}
}

func Table2(t *testing.T, name string) *Schema {
	s, ok := Table(name)
	if !ok {
		t.Fatalf("no table %s", name)
	}
	return s
}
