package report

import (
	"fmt"
)

// FindingsTable is the derived table plugins write into a session folder (findings.csv).
const FindingsTable = "findings"

// Analyzer computes findings for a session folder that has no findings table (the in-tree
// analysis library run by the report). It returns rows keyed by column name and the column order.
type Analyzer interface {
	Analyze(dir string) (columns []string, rows []map[string]string, err error)
}

// Findings is the report's findings section: the session's findings table as written, or what
// the Analyzer computed. Source says which; Note why there are none.
type Findings struct {
	Source  string
	Columns []string
	Rows    [][]string
	Note    string
}

// plotFor links a finding to the figure that shows its evidence, by the finding's kind or name.
var plotFor = map[string]string{
	"straggler": "step-time", "moe_balance": "expert-load", "kv_pressure": "kv-usage",
	"cudagraph_coverage": "graph-modes", "preemption": "kv-usage", "padding": "padding",
}

// Link returns the id of the figure a findings row refers to ("" when none): the first cell that
// names a known finding kind.
func (f *Findings) Link(row []string) string {
	for _, c := range row {
		if id, ok := plotFor[c]; ok {
			return id
		}
	}
	return ""
}

// readFindings reads <dir>/findings.csv with its own header (the plugins' schema), or runs a.
func readFindings(s *Session, a Analyzer) (*Findings, error) {
	t, ok, err := OpenTable(s.Dir, FindingsTable)
	if err != nil {
		return nil, err
	}
	if ok {
		defer t.Close()
		f := &Findings{Source: "findings.csv (written by the hub's plugins)"}
		f.Columns = make([]string, len(t.index))
		for name, i := range t.index {
			f.Columns[i] = name
		}
		for {
			more, err := t.Next()
			if err != nil {
				return nil, err
			}
			if !more {
				break
			}
			f.Rows = append(f.Rows, append([]string(nil), t.rec...))
		}
		if len(f.Rows) == 0 {
			f.Note = "The findings table has no rows: the plugins found nothing to report."
		}
		return f, nil
	}
	if a == nil {
		return &Findings{Note: "This session has no findings table (no analysis plugins ran on the hub) and this report was built without the analysis library."}, nil
	}
	cols, rows, err := a.Analyze(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("analyze %s: %w", s.Dir, err)
	}
	f := &Findings{Source: "computed by the analysis library for this report", Columns: cols}
	for _, r := range rows {
		rec := make([]string, len(cols))
		for i, c := range cols {
			rec[i] = r[c]
		}
		f.Rows = append(f.Rows, rec)
	}
	if len(f.Rows) == 0 {
		f.Note = "The analysis found nothing to report."
	}
	return f, nil
}
