package report

import (
	"path/filepath"
	"testing"

	"github.com/profilemate/profilemate/report/reporttest"
)

// TestSecondPassIgnoresNewRows: a row that appears only in the downsampling pass (appended to a
// running session meanwhile) lies outside the buckets and is left out.
func TestSecondPassIgnoresNewRows(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	if err := reporttest.Write(dir, reporttest.Small()); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := collectLines(s, "kv_cache_usage", s.Origin, 10, AggMax, func(r *Rows, emit emitFunc, first bool) error {
		ts, _ := r.TS()
		emit("e", ts, 0.5)
		if !first {
			emit("e", ts+1e12, 0.9) // later than anything the first pass saw
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(ls.Series["e"].X); got != 10 {
		t.Errorf("%d points, want the 10 buckets", got)
	}
	for _, y := range ls.Series["e"].Y {
		if y != 0.5 {
			t.Fatalf("a row of the second pass only was drawn: %v", ls.Series["e"].Y)
		}
	}
}
