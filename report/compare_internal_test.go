package report

import (
	"io"
	"path/filepath"
	"testing"

	"github.com/profilemate/profilemate/report/reporttest"
)

// TestCompareAlignsAxes: side by side, paired plots share the value axis, plots over time the time
// axis too; heat maps keep their own.
func TestCompareAlignsAxes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	if err := reporttest.Write(dir, reporttest.Small()); err != nil {
		t.Fatal(err)
	}
	a, err := Build("testdata/demo", Options{SkipAnalysis: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(dir, Options{SkipAnalysis: true})
	if err != nil {
		t.Fatal(err)
	}
	before := *a.Figure("step-time").plot
	if err := WriteCompareHTML(io.Discard, a, b); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"kv-usage", "step-time", "step-dist", "padding", "batch-tokens"} {
		pa, pb := a.Figure(id).plot, b.Figure(id).plot
		if pa.Y.Min != pb.Y.Min || pa.Y.Max != pb.Y.Max {
			t.Errorf("%s: y axes %v..%v and %v..%v differ", id, pa.Y.Min, pa.Y.Max, pb.Y.Min, pb.Y.Max)
		}
	}
	for _, id := range []string{"kv-usage", "step-time", "batch-tokens"} {
		pa, pb := a.Figure(id).plot, b.Figure(id).plot
		if pa.X.Min != pb.X.Min || pa.X.Max != pb.X.Max {
			t.Errorf("%s: time axes %v..%v and %v..%v differ", id, pa.X.Min, pa.X.Max, pb.X.Min, pb.X.Max)
		}
	}
	if st := a.Figure("step-time").plot; st.Y.Max < before.Y.Max || st.Y.Min > before.Y.Min {
		t.Errorf("aligned step-time axis %v..%v no longer holds A's own %v..%v", st.Y.Min, st.Y.Max, before.Y.Min, before.Y.Max)
	}
	ea, eb := a.Figure("expert-load").plot, b.Figure("expert-load").plot
	if ea.X.Max == eb.X.Max {
		t.Errorf("heat maps of 16 and 8 experts were given one expert axis")
	}
}
