package sdk

import (
	"encoding/json"
	"sort"
	"strconv"
	"strings"
)

// FindingsTable is the derived table every plugin may write to without declaring it; pmhub show
// prints it. Its rows are made with Finding.Row.
const FindingsTable = "findings"

// Severities of a finding, mildest first.
const (
	SeverityInfo     = "info"
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// FindingsSchema is the findings table's own columns (the host adds the common and key columns,
// plugin among them).
var FindingsSchema = Table{
	Table: FindingsTable, Kind: "finding", Since: "1",
	Columns: []Column{
		{Name: "severity", Type: TypeString, Meaning: "info, warning or critical"},
		{Name: "title", Type: TypeString, Meaning: "one line saying what was found"},
		{Name: "numbers", Type: TypeString, Meaning: "the figures behind the finding: a JSON object of name → number, keys sorted"},
		{Name: "ranks", Type: TypeString, Meaning: "global worker ranks concerned, joined by | (empty: all or none in particular)"},
		{Name: "first_step", Type: TypeInt, Unit: "count", Meaning: "first step concerned; -1 when not tied to steps"},
		{Name: "last_step", Type: TypeInt, Unit: "count", Meaning: "last step concerned; -1 when not tied to steps"},
		{Name: "detail", Type: TypeString, Meaning: "longer explanation and what to do about it"},
	},
}

// Finding is one thing a plugin found, with the numbers that show it.
type Finding struct {
	Severity string             // SeverityInfo, SeverityWarning or SeverityCritical
	Title    string             // one line
	Numbers  map[string]float64 // e.g. {"skew_ms": 12.5, "p99_ms": 40}
	Ranks    []int              // global worker ranks concerned
	// FirstStep and LastStep bound the steps concerned; -1 (or both 0) when not tied to steps.
	FirstStep, LastStep int64
	Detail              string
}

// Row turns the finding into a row of the findings table.
func (f Finding) Row() Row {
	nums := "{}"
	if len(f.Numbers) > 0 {
		b, err := json.Marshal(f.Numbers) // map keys come out sorted
		if err == nil {
			nums = string(b)
		}
	}
	ranks := append([]int(nil), f.Ranks...)
	sort.Ints(ranks)
	rs := make([]string, len(ranks))
	for i, r := range ranks {
		rs[i] = strconv.Itoa(r)
	}
	first, last := f.FirstStep, f.LastStep
	if first == 0 && last == 0 {
		first, last = -1, -1
	}
	sev := f.Severity
	if sev == "" {
		sev = SeverityInfo
	}
	r := NewRow(FindingsTable, map[string]any{
		"severity": sev, "title": f.Title, "numbers": nums, "ranks": strings.Join(rs, "|"),
		"first_step": first, "last_step": last, "detail": f.Detail,
	})
	r.Step = last
	return r
}
