package gpu

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/profilemate/profilemate/internal/testkit"
)

// TestColumnsMatchSchema checks every column the sampler emits against the gpu_metrics schema
// file the hub writes CSVs from (name and type).
func TestColumnsMatchSchema(t *testing.T) {
	path := filepath.Join(testkit.RepoRoot(t), "proto", "tables", Table+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("schema missing: %v", err)
	}
	var schema struct {
		Table   string `json:"table"`
		Kind    string `json:"kind"`
		Columns []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"columns"`
	}
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if schema.Table != Table || schema.Kind != Kind {
		t.Errorf("schema names %s/%s, want %s/%s", schema.Table, schema.Kind, Table, Kind)
	}
	types := map[string]string{}
	for _, c := range schema.Columns {
		types[c.Name] = c.Type
	}
	srv := dgxh100()
	load(srv)
	s := New(Config{Lib: srv})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	for name, v := range s.Sample()[0].Cols {
		want, ok := types[name]
		if !ok {
			t.Errorf("column %q is not in %s", name, path)
			continue
		}
		var got string
		switch v.(type) {
		case int, int64:
			got = "int"
		case float64:
			got = "float"
		case string:
			got = "string"
		case bool:
			got = "bool"
		}
		if got != want {
			t.Errorf("column %q: sampler gives %s, schema says %s", name, got, want)
		}
	}
}

// TestRealNVML samples the host's GPUs when a driver is present.
func TestRealNVML(t *testing.T) {
	s := New(Config{})
	if err := s.Start(); err != nil {
		t.Skipf("no NVML here: %v", err)
	}
	defer s.Close()
	rows := s.Sample()
	if len(rows) == 0 {
		t.Skip("NVML without GPUs")
	}
	for i, r := range rows {
		if r.Cols["gpu_uuid"] == nil || r.Cols["mem_total_bytes"] == nil {
			t.Errorf("gpu %d: identity or memory missing: %v", i, r.Cols)
		}
		t.Logf("gpu %d: %v", i, r.Cols)
	}
}
