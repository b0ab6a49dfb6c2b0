package main

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/profilemate/profilemate/plugins/host"
	"github.com/profilemate/profilemate/plugins/sdk"
)

// Finding is one row of a session's findings table (written by plugins; see docs/plugins.md).
type Finding struct {
	Plugin    string `json:"plugin"`
	Version   string `json:"plugin_version"`
	Severity  string `json:"severity"`
	Title     string `json:"title"`
	Numbers   string `json:"numbers"` // JSON object of name → number
	Ranks     string `json:"ranks"`   // global worker ranks joined by |
	FirstStep int64  `json:"first_step"`
	LastStep  int64  `json:"last_step"`
	Detail    string `json:"detail,omitempty"`
}

var severityOrder = map[string]int{sdk.SeverityCritical: 0, sdk.SeverityWarning: 1, sdk.SeverityInfo: 2}

// readFindings reads findings.csv of a session folder in sortFindings order.
func readFindings(dir string) ([]Finding, error) {
	var out []Finding
	err := eachRow(dir, sdk.FindingsTable, func(r csvRow) {
		first, _ := strconv.ParseInt(r.field("first_step"), 10, 64)
		last, _ := strconv.ParseInt(r.field("last_step"), 10, 64)
		out = append(out, Finding{Plugin: r.field("plugin"), Version: r.field("plugin_version"), Severity: r.field("severity"), Title: r.field("title"),
			Numbers: r.field("numbers"), Ranks: r.field("ranks"), FirstStep: first, LastStep: last, Detail: r.field("detail")})
	})
	sortFindings(out)
	return out, err
}

// sortFindings orders findings most severe first, then by plugin, title, ranks and steps, so one
// session lists them the same way on every run (plugins append to findings.csv as they finish, in
// no fixed order).
func sortFindings(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if sa, sb := severityOrder[a.Severity], severityOrder[b.Severity]; sa != sb {
			return sa < sb
		}
		if a.Plugin != b.Plugin {
			return a.Plugin < b.Plugin
		}
		if a.Title != b.Title {
			return a.Title < b.Title
		}
		if a.Ranks != b.Ranks {
			return a.Ranks < b.Ranks
		}
		if a.FirstStep != b.FirstStep {
			return a.FirstStep < b.FirstStep
		}
		return a.Numbers < b.Numbers
	})
}

func printFindings(w io.Writer, fs []Finding) {
	if len(fs) == 0 {
		return
	}
	fmt.Fprintln(w, "  findings:")
	for _, f := range fs {
		fmt.Fprintf(w, "    [%s] %s (%s)", f.Severity, f.Title, f.Plugin)
		if f.Ranks != "" {
			fmt.Fprintf(w, " ranks %s", f.Ranks)
		}
		if f.FirstStep >= 0 {
			fmt.Fprintf(w, " steps %d-%d", f.FirstStep, f.LastStep)
		}
		fmt.Fprintf(w, " %s\n", f.Numbers)
	}
}

// printPluginWork prints one line per plugin that worked on the session.
func printPluginWork(w io.Writer, ps map[string]host.SessionPlugin) {
	names := make([]string, 0, len(ps))
	for n := range ps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := ps[n]
		tables := make([]string, 0, len(p.Rows))
		for t := range p.Rows {
			tables = append(tables, t)
		}
		sort.Strings(tables)
		var parts []string
		for _, t := range tables {
			parts = append(parts, fmt.Sprintf("%s %d", t, p.Rows[t]))
		}
		state := "open"
		if p.Closed {
			state = "closed"
		}
		fmt.Fprintf(w, "  plugin %s %s (%s): %s; %d findings; %d restarts", n, p.Version, state, strings.Join(parts, ", "), p.Findings, p.Restarts)
		if p.RetentionCut {
			fmt.Fprint(w, "; the session's start had left the stream")
		}
		fmt.Fprintln(w)
	}
}
