package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// FindingsTable is the derived table plugins write into a session folder (findings.csv).
const FindingsTable = "findings"

// Analyzer computes findings for a session folder that has no findings table (the in-tree
// analysis library run by the report). It returns rows keyed by column name and the column order.
type Analyzer interface {
	Analyze(dir string) (columns []string, rows []map[string]string, err error)
}

// Findings is the report's findings section: the session's findings table, or what the Analyzer
// computed (Source says which; Note why there are none), laid out as `pmhub show` lists findings:
// Columns are plugin, severity, finding (the title), ranks, steps ("first-last", "" when not tied
// to steps), numbers ("name 1.234, ..."), and detail when a finding has one. The table's other
// columns (the hub's own: session, host "hub", role "plugin", dp -1, seq, ...) are not shown.
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

// readFindings reads <dir>/findings.csv with its own header (the plugins' schema), or runs a
// (Library when nil) unless skip.
func readFindings(s *Session, a Analyzer, skip bool) (*Findings, error) {
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
		sortRows(f)
		prettyNumbers(f)
		asShown(f)
		return f, nil
	}
	if skip {
		return &Findings{Note: "This session has no findings table (no analysis plugins ran on the hub), and the report was asked not to run the analyses (--no-analysis)."}, nil
	}
	if a == nil {
		a = Library{}
	}
	cols, rows, err := a.Analyze(s.Dir)
	var partial *partialError
	if err != nil && !errors.As(err, &partial) {
		// The plots stand on their own: a failed analysis is said, not fatal.
		return &Findings{Note: fmt.Sprintf("This session has no findings table (no analysis plugins ran on the hub), and the analysis library failed on it: %v", err)}, nil
	}
	f := &Findings{Source: "computed for this report by the in-tree analyses (package analysis), as no plugin wrote a findings table", Columns: cols}
	for _, r := range rows {
		rec := make([]string, len(cols))
		for i, c := range cols {
			rec[i] = r[c]
		}
		f.Rows = append(f.Rows, rec)
	}
	sortRows(f)
	switch {
	case partial != nil:
		f.Note = partial.Error()
	case len(f.Rows) == 0:
		f.Note = "The analyses found nothing to report."
	}
	prettyNumbers(f)
	asShown(f)
	return f, nil
}

// asShown keeps the columns a reader needs, in Findings' order: the plugin, severity, title as
// "finding", ranks, the steps as "first-last", the numbers, and detail when any row has one.
func asShown(f *Findings) {
	pos := map[string]int{}
	for i, c := range f.Columns {
		pos[c] = i
	}
	cell := func(r []string, name string) string {
		if i, ok := pos[name]; ok && i < len(r) {
			return r[i]
		}
		return ""
	}
	detail := false
	for _, r := range f.Rows {
		detail = detail || cell(r, "detail") != ""
	}
	cols := []string{"plugin", "severity", "finding", "ranks", "steps", "numbers"}
	if detail {
		cols = append(cols, "detail")
	}
	rows := make([][]string, 0, len(f.Rows))
	for _, r := range f.Rows {
		steps := ""
		if first, last := cell(r, "first_step"), cell(r, "last_step"); first != "" && !strings.HasPrefix(first, "-") {
			steps = first
			if last != "" && last != first {
				steps += "-" + last
			}
		}
		out := []string{cell(r, "plugin"), cell(r, "severity"), cell(r, "title"), strings.ReplaceAll(cell(r, "ranks"), "|", " "), steps, cell(r, "numbers")}
		if detail {
			out = append(out, cell(r, "detail"))
		}
		rows = append(rows, out)
	}
	f.Columns, f.Rows = cols, rows
}

// severityOrder ranks findings' severities, most severe first (unknown ones last).
var severityOrder = map[string]int{"critical": 0, "warning": 1, "info": 2}

// sortRows orders the findings most severe first, then by plugin, title and the remaining cells
// in column order, so one session's report lists them the same way on every run (plugins append
// to findings.csv as they finish, in no fixed order).
func sortRows(f *Findings) {
	pos := map[string]int{}
	for i, c := range f.Columns {
		pos[c] = i
	}
	cell := func(r []string, name string) string {
		if i, ok := pos[name]; ok && i < len(r) {
			return r[i]
		}
		return ""
	}
	sev := func(r []string) int {
		if n, ok := severityOrder[cell(r, "severity")]; ok {
			return n
		}
		return len(severityOrder)
	}
	sort.SliceStable(f.Rows, func(i, j int) bool {
		a, b := f.Rows[i], f.Rows[j]
		if sa, sb := sev(a), sev(b); sa != sb {
			return sa < sb
		}
		for _, c := range []string{"plugin", "title", "ranks", "first_step", "numbers"} {
			if x, y := cell(a, c), cell(b, c); x != y {
				return x < y
			}
		}
		return strings.Join(a, "\x00") < strings.Join(b, "\x00")
	})
}

// prettyNumbers rewrites a "numbers" cell holding a JSON object of name → number as
// "name 1.234, name 5" (keys sorted, 4 significant digits); other cells stay as written.
func prettyNumbers(f *Findings) {
	col := -1
	for i, c := range f.Columns {
		if c == "numbers" {
			col = i
		}
	}
	if col < 0 {
		return
	}
	for _, r := range f.Rows {
		if col >= len(r) {
			continue
		}
		var m map[string]float64
		if json.Unmarshal([]byte(r[col]), &m) != nil {
			continue
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s %.4g", k, m[k])
		}
		r[col] = strings.Join(parts, ", ")
	}
}
