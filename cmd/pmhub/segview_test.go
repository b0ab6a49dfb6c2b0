package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/analysis"
	"github.com/profilemate/profilemate/export"
	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/report"
)

// TestLinkedViewReadsLikeCopiedView: without a time range, report, export and the analyses read a
// rotated session from its segment folders (hub.LinkSegments, no row copied) and get exactly what
// they get from the copy hub.CopyWindow makes: the same figures, findings (a findings table in
// two segments), timeline, Parquet rows and analysis results.
func TestLinkedViewReadsLikeCopiedView(t *testing.T) {
	_, data, _ := rotatedSession(t)
	segs, err := hub.Segments(data, "LONG")
	if err != nil {
		t.Fatal(err)
	}
	hdr := "plugin,severity,title,numbers,ranks,first_step,last_step,detail\n"
	os.WriteFile(filepath.Join(segs[0], "findings.csv"), []byte(hdr+"p,warning,first,{},0,1,2,\n"), 0o644)
	os.WriteFile(filepath.Join(segs[len(segs)-1], "findings.csv"), []byte(hdr+"p,critical,last,{},1,3,4,\n"), 0o644)

	tmp := t.TempDir()
	copied, linked := filepath.Join(tmp, "copy", "LONG"), filepath.Join(tmp, "link", "LONG")
	cm, err := hub.CopyWindow(segs, hub.Window{}, copied)
	if err != nil {
		t.Fatal(err)
	}
	lm, err := hub.LinkSegments(segs, linked)
	if err != nil {
		t.Fatal(err)
	}
	if csvs, _ := filepath.Glob(filepath.Join(linked, "*.csv")); len(csvs) != 0 {
		t.Fatalf("LinkSegments copied rows: %v", csvs)
	}
	if !reflect.DeepEqual(cm.Rows, lm.Rows) || cm.StartNS != lm.StartNS || len(cm.Processes) != len(lm.Processes) {
		t.Fatalf("metadata differs: copy rows %v start %d procs %d, link rows %v start %d procs %d",
			cm.Rows, cm.StartNS, len(cm.Processes), lm.Rows, lm.StartNS, len(lm.Processes))
	}
	for i := range cm.Processes {
		if !reflect.DeepEqual(cm.Processes[i].Rows, lm.Processes[i].Rows) {
			t.Errorf("process %d rows: copy %v, link %v", i, cm.Processes[i].Rows, lm.Processes[i].Rows)
		}
	}

	js := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	rep := func(dir string) string {
		r, err := report.Build(dir, report.Options{Analyzer: reportAnalyzer})
		if err != nil {
			t.Fatal(err)
		}
		return js([]any{r.Figures, r.Findings, r.Stats})
	}
	if a, b := rep(copied), rep(linked); a != b {
		t.Errorf("report differs:\ncopy %s\nlink %s", a, b)
	} else if !strings.Contains(a, "first") || !strings.Contains(a, "last") {
		t.Errorf("report findings miss a segment's findings: %s", a)
	}
	trace := func(dir string) string {
		tl, err := export.Build(dir)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := tl.WriteChromeJSON(&b); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	if a, b := trace(copied), trace(linked); a != b || !strings.Contains(a, "forward") {
		t.Errorf("timeline differs or is empty (%d and %d bytes)", len(a), len(b))
	}
	pq := func(dir string) map[string]int64 {
		n, err := export.WriteParquet(dir, filepath.Join(t.TempDir(), "pq"))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for f, rows := range n {
			out[filepath.Base(f)] = rows
		}
		return out
	}
	if a, b := pq(copied), pq(linked); !reflect.DeepEqual(a, b) || len(a) == 0 {
		t.Errorf("parquet rows: copy %v, link %v", a, b)
	}
	ana := func(dir string) string {
		src, err := analysis.OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		res, err := analysis.RunAll(src)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		_ = src.Rows("forward_pass_timing", func(analysis.Row) error { n++; return nil })
		return js([]any{res, n, src.Processes()})
	}
	if a, b := ana(copied), ana(linked); a != b || !strings.Contains(a, ",60,") {
		t.Errorf("analysis differs or misses rows:\ncopy %s\nlink %s", a, b)
	}
}
