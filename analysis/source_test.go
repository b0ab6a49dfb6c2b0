package analysis

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A hub session folder: one CSV per table (with the hub's ts_aligned_ns column) and the ranks
// in metadata.json's processes.
func TestOpenDirHubLayout(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "metadata.json"), `{"session":"s","processes":[
		{"host":"h1","pid":7,"proc":"w0","role":"worker","dp":0,"pp":0,"tp":0,"ep":-1,"rank":0},
		{"host":"h2","pid":7,"proc":"w1","role":"worker","dp":0,"pp":0,"tp":0,"ep":-1,"rank":1}]}`)
	write(t, filepath.Join(dir, "forward_pass_timing.csv"),
		"session,host,pid,role,dp,pp,tp,ep,seq,step,ts_ns,ts_aligned_ns,cpu_ms,gpu_ms,gpu_status,tokens,runtime_mode\n"+
			"s,h1,7,worker,0,0,0,-1,1,1,100,100,10,,unavailable,8,NONE\n"+
			"s,h2,7,worker,0,0,0,-1,1,1,100,100,30,,unavailable,8,NONE\n")
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Processes()) != 2 {
		t.Fatalf("processes %+v", d.Processes())
	}
	res, err := Straggler(d, StragglerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// same pid and tp on two hosts: told apart by host, ranked by metadata.
	if f := res.Findings[0]; len(f.Ranks) != 1 || f.Ranks[0] != 1 || f.Hosts[0] != "h2" {
		t.Errorf("got %v, want rank 1 on h2", f)
	}
}

// A folder without tables is refused by name; a broken CSV is an error naming the file.
func TestOpenDirErrors(t *testing.T) {
	if _, err := OpenDir(t.TempDir()); !errors.Is(err, ErrNotSession) {
		t.Errorf("empty folder: %v, want ErrNotSession", err)
	}
	if _, err := OpenDir(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing folder: no error")
	}
	dir := t.TempDir()
	write(t, filepath.Join(dir, "metadata.json"), `{not json`)
	write(t, filepath.Join(dir, "kv_cache_usage.csv"), "a,b\n1,2\n")
	if _, err := OpenDir(dir); err == nil || !strings.Contains(err.Error(), "metadata.json") {
		t.Errorf("bad metadata: %v", err)
	}
	dir = t.TempDir()
	write(t, filepath.Join(dir, "kv_cache_usage.csv"), "session,step\n\"unterminated,1\n")
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := KVPressure(d, KVOptions{}); err == nil || !strings.Contains(err.Error(), "kv_cache_usage.csv") {
		t.Errorf("bad csv: %v, want an error naming the file", err)
	}
}

// Findings written by WriteCSV read back with their numbers, ranks and steps.
func TestFindingsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	f := Finding{Plugin: "straggler", Severity: SeverityWarning, Title: "rank 2 is 1.30x, the median",
		Numbers: []Number{{"ratio_to_median", 1.3, "ratio"}, {"steps", 8, "steps"}}, Ranks: []int64{2, 3},
		Hosts: []string{"a"}, FirstStep: 1, LastStep: 8}
	r := &Result{Analysis: "straggler", Findings: []Finding{f}, Tables: []*Table{{Name: "x", Columns: FindingsColumns[:1], Rows: [][]string{{"v"}}}}}
	if err := r.WriteCSV(dir); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteCSV(dir); err != nil { // appends findings, rewrites tables
		t.Fatal(err)
	}
	got, err := ReadFindings(filepath.Join(dir, "findings.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Title != f.Title || got[0].Ranks[1] != 3 || got[0].LastStep != 8 {
		t.Fatalf("got %+v", got)
	}
	if v, _ := got[0].Number("ratio_to_median"); v != 1.3 || got[0].Numbers[0].Unit != "ratio" || got[0].Hosts[0] != "a" {
		t.Errorf("got %+v, want ratio_to_median 1.3 ratio on host a", got[0])
	}
	b, _ := os.ReadFile(filepath.Join(dir, "x.csv"))
	if string(b) != "plugin\nv\n" {
		t.Errorf("x.csv %q", b)
	}
}
