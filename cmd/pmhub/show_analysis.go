package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/profilemate/profilemate/analysis"
)

// computedVersion marks findings `pmhub show` computed itself (package analysis on the session's
// tables) because no plugin wrote findings.csv for the session.
const computedVersion = "computed"

// computedFindings runs the in-tree analyses (straggler, moe_balance, kv_pressure,
// cudagraph_coverage) on a session folder that has no findings.csv, so a session recorded without
// plugins still lists the same findings, in sortFindings order. Errors: a table cannot be read.
func computedFindings(dir string) ([]Finding, error) {
	src, err := analysis.OpenDir(dir)
	if errors.Is(err, analysis.ErrNotSession) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	res, err := analysis.RunAll(src)
	var out []Finding
	for _, r := range res {
		for _, f := range r.Findings {
			c := f.Cells()
			out = append(out, Finding{Plugin: f.Plugin, Version: computedVersion, Severity: f.Severity, Title: f.Title,
				Numbers: c[3], Ranks: c[4], FirstStep: f.FirstStep, LastStep: f.LastStep, Detail: f.Detail()})
		}
	}
	sortFindings(out)
	return out, err
}

// noteComputed says, under the findings, that show computed them itself.
func noteComputed(w io.Writer, fs []Finding) {
	if len(fs) > 0 && fs[0].Version == computedVersion {
		fmt.Fprintln(w, "    (computed now from the session's tables by package analysis: no plugin wrote findings.csv)")
	}
}
