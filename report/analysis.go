package report

import (
	"fmt"

	"github.com/profilemate/profilemate/analysis"
)

// Library is the Analyzer Build uses by default: the in-tree analyses of package analysis
// (straggler, moe_balance, kv_pressure, cudagraph_coverage) run over the session folder, their
// findings as rows of the findings table's columns. An analysis that fails leaves the others'
// findings and its error in the report's findings note.
type Library struct{}

var _ Analyzer = Library{}

// Analyze implements Analyzer.
func (Library) Analyze(dir string) ([]string, []map[string]string, error) {
	src, err := analysis.OpenDir(dir)
	if err != nil {
		return nil, nil, err
	}
	results, runErr := analysis.RunAll(src)
	cols := make([]string, len(analysis.FindingsColumns))
	for i, c := range analysis.FindingsColumns {
		cols[i] = c.Name
	}
	var rows []map[string]string
	for _, r := range results {
		for _, f := range r.Findings {
			cells := f.Cells()
			row := make(map[string]string, len(cols))
			for i, c := range cols {
				row[c] = cells[i]
			}
			rows = append(rows, row)
		}
	}
	if runErr != nil {
		return cols, rows, &partialError{runErr}
	}
	return cols, rows, nil
}

// partialError is an analysis failure that still left findings of the other analyses.
type partialError struct{ err error }

func (e *partialError) Error() string { return fmt.Sprintf("some analyses failed: %v", e.err) }
func (e *partialError) Unwrap() error { return e.err }
