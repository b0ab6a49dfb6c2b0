package report_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/report"
	"github.com/profilemate/profilemate/report/reporttest"
)

func synthetic(t *testing.T, spec reporttest.Spec) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "s")
	if err := reporttest.Write(dir, spec); err != nil {
		t.Fatal(err)
	}
	return dir
}

func notes(f *report.Figure) string { return strings.Join(f.Notes, " ") }

// TestFindingsTablePreferred: a findings.csv the hub's plugins wrote is shown as written (numbers
// made readable), and the analyses are not run over it.
func TestFindingsTablePreferred(t *testing.T) {
	dir := synthetic(t, reporttest.Small())
	csv := "plugin,severity,title,numbers,ranks,first_step,last_step,detail\n" +
		`kv_pressure,warning,"12 preemptions per 1,000 steps","{""preemptions"":12}",,1,120,` + "\n"
	if err := os.WriteFile(filepath.Join(dir, "findings.csv"), []byte(csv), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := report.Build(dir, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := r.Findings
	if !strings.HasPrefix(f.Source, "findings.csv") || len(f.Rows) != 1 {
		t.Fatalf("findings %+v, want the one row of findings.csv", f)
	}
	if got := f.Rows[0][5]; got != "preemptions 12" {
		t.Errorf("numbers cell %q, want %q", got, "preemptions 12")
	}
	if got := f.Link(f.Rows[0]); got != "kv-usage" {
		t.Errorf("link %q, want kv-usage", got)
	}
}

// TestNotesSayWhatWasDone: downsampling, sampling and an unknown budget are stated on the plots
// they apply to and only there.
func TestNotesSayWhatWasDone(t *testing.T) {
	r, err := report.Build(synthetic(t, reporttest.Small()), report.Options{MaxPoints: 10, SampleSize: 20})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"kv-usage", "step-time", "gpu-util", "batch-tokens"} {
		if !strings.Contains(notes(r.Figure(id)), "Downsampled") {
			t.Errorf("%s: no downsampling note in %q", id, notes(r.Figure(id)))
		}
	}
	if !strings.Contains(notes(r.Figure("step-dist")), "Sampled: 8 ranks") {
		t.Errorf("step-dist: no sampling note in %q", notes(r.Figure("step-dist")))
	}
	for _, id := range []string{"expert-load", "graph-modes", "padding"} {
		if strings.Contains(notes(r.Figure(id)), "ownsampled") {
			t.Errorf("%s is exact but says it was downsampled", id)
		}
	}
	spec := reporttest.Small()
	spec.Budget = false
	unknownDir := synthetic(t, spec)
	// Downsampled or not, the rows are counted once.
	for _, maxPts := range []int{0, 10} {
		r, err = report.Build(unknownDir, report.Options{MaxPoints: maxPts})
		if err != nil {
			t.Fatal(err)
		}
		if n := notes(r.Figure("batch-tokens")); !strings.Contains(n, "Budget unknown: token_budget is empty or 0 in 240 of 240 rows") {
			t.Errorf("max points %d: batch-tokens note %q does not state the unknown budget of 240 rows", maxPts, n)
		}
	}
	for _, li := range r.Figure("batch-tokens").Legend {
		if strings.HasSuffix(li.Name, "token_budget") {
			t.Errorf("a budget line %q is drawn though the budget is unknown", li.Name)
		}
	}
}

// TestBadInput: a malformed CSV fails the report naming the file and line; a missing session
// folder names the folder.
func TestBadInput(t *testing.T) {
	dir := synthetic(t, reporttest.Small())
	if err := os.WriteFile(filepath.Join(dir, "kv_cache_usage.csv"), []byte("session,host,usage\nS,h,\"0.5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := report.Build(dir, report.Options{})
	if err == nil || !strings.Contains(err.Error(), "kv_cache_usage.csv") {
		t.Errorf("got %v, want an error naming kv_cache_usage.csv", err)
	}
	if _, err := report.Build(filepath.Join(dir, "nope"), report.Options{}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("got %v, want an error naming the missing folder", err)
	}
}

// TestSkipAnalysis: --no-analysis leaves the findings empty and says why.
func TestSkipAnalysis(t *testing.T) {
	r, err := report.Build(synthetic(t, reporttest.Small()), report.Options{SkipAnalysis: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Findings.Rows) != 0 || !strings.Contains(r.Findings.Note, "--no-analysis") {
		t.Errorf("findings %+v, want none and a note naming --no-analysis", r.Findings)
	}
}

// TestTornTailWhileActive: while the hub still appends to a session, a half-written last line is
// skipped and the rest plotted; the same line in an ended session is an error (TestBadInput).
func TestTornTailWhileActive(t *testing.T) {
	dir := synthetic(t, reporttest.Small())
	meta, err := os.ReadFile(filepath.Join(dir, "metadata.json"))
	if err != nil {
		t.Fatal(err)
	}
	meta = []byte(strings.Replace(string(meta), `"status": "ended"`, `"status": "active"`, 1))
	if err := os.WriteFile(filepath.Join(dir, "metadata.json"), meta, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "preemption_events.csv"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`20260101_000000_a1b2c3,hostA,1001,engine_core,0,-1,-1,-1,999,121,1767225602500000000,"req-`)
	f.Close()
	r, err := report.Build(dir, report.Options{})
	if err != nil {
		t.Fatalf("active session with a torn last line: %v", err)
	}
	if r.Stats.Preemptions != 8 {
		t.Errorf("preemptions %d, want the 8 whole rows", r.Stats.Preemptions)
	}
}
