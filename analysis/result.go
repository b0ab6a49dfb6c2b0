package analysis

import (
	"encoding/csv"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/profilemate/profilemate/proto"
)

// Severities of a Finding, in rising order.
const (
	SeverityInfo     = "info"     // a number worth knowing, nothing to act on
	SeverityWarning  = "warning"  // costs throughput or latency; an action is named
	SeverityCritical = "critical" // costs a large share (thresholds per analysis, in its doc)
)

// Number is one figure behind a finding: a name in the field's standard terms, its value and
// unit (ms, ratio, fraction, blocks, tokens, steps, count, ...).
type Number struct {
	Name  string
	Value float64
	Unit  string
}

// Finding is one row of the common findings table: what an analysis found, with the numbers
// behind it and the ranks and steps it concerns.
type Finding struct {
	Plugin   string   // analysis (and plugin) name, e.g. "straggler"
	Severity string   // SeverityInfo, SeverityWarning or SeverityCritical
	Title    string   // one line that states the numbers, e.g. "rank 2 is 2.00x the median rank"
	Numbers  []Number // the figures behind the title, in a fixed order per finding
	Ranks    []int64  // global worker ranks concerned (empty: none in particular)
	Hosts    []string // hosts concerned (empty: none in particular)
	// FirstStep and LastStep bound the steps concerned (inclusive); -1 when not tied to steps.
	FirstStep int64
	LastStep  int64
}

// Number returns the value of the named number and whether the finding has it.
func (f Finding) Number(name string) (float64, bool) {
	for _, n := range f.Numbers {
		if n.Name == name {
			return n.Value, true
		}
	}
	return 0, false
}

// FindingsTable is the name of the common findings table.
const FindingsTable = "findings"

// FindingsColumns are the columns of the findings table, in order.
var FindingsColumns = []proto.Column{
	{Name: "plugin", Type: proto.TypeString, Meaning: "analysis (plugin) that made the finding"},
	{Name: "severity", Type: proto.TypeString, Meaning: "info, warning or critical"},
	{Name: "title", Type: proto.TypeString, Meaning: "one line stating the finding with its numbers"},
	{Name: "numbers", Type: proto.TypeString, Meaning: "the numbers behind it: name=value unit, joined by ; "},
	{Name: "ranks", Type: proto.TypeString, Meaning: "global worker ranks concerned, joined by |"},
	{Name: "hosts", Type: proto.TypeString, Meaning: "hosts concerned, joined by |"},
	{Name: "first_step", Type: proto.TypeInt, Unit: "count", Meaning: "first step concerned; -1 when not tied to steps"},
	{Name: "last_step", Type: proto.TypeInt, Unit: "count", Meaning: "last step concerned; -1 when not tied to steps"},
}

// Cells formats the finding as a findings-table row in FindingsColumns order.
func (f Finding) Cells() []string {
	nums := make([]string, len(f.Numbers))
	for i, n := range f.Numbers {
		nums[i] = n.Name + "=" + FormatFloat(n.Value)
		if n.Unit != "" {
			nums[i] += " " + n.Unit
		}
	}
	ranks := make([]string, len(f.Ranks))
	for i, r := range f.Ranks {
		ranks[i] = strconv.FormatInt(r, 10)
	}
	return []string{f.Plugin, f.Severity, f.Title, strings.Join(nums, "; "), strings.Join(ranks, "|"),
		strings.Join(f.Hosts, "|"), strconv.FormatInt(f.FirstStep, 10), strconv.FormatInt(f.LastStep, 10)}
}

// String is the finding as one line: "[severity] plugin: title (numbers)".
func (f Finding) String() string {
	c := f.Cells()
	return fmt.Sprintf("[%s] %s: %s (%s)", f.Severity, f.Plugin, f.Title, c[3])
}

// Table is a derived table: its name (snake_case, e.g. "straggler_ranks"), its columns and its
// rows, each a slice of cell texts in column order.
type Table struct {
	Name    string
	Columns []proto.Column
	Rows    [][]string
}

// Header is the table's column names.
func (t *Table) Header() []string {
	h := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		h[i] = c.Name
	}
	return h
}

// Result is what one analysis returns: its derived tables and its findings.
type Result struct {
	Analysis string
	Tables   []*Table
	Findings []Finding
}

// Table returns the derived table of that name, nil when absent.
func (r *Result) Table(name string) *Table {
	for _, t := range r.Tables {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// WriteCSV writes the result's derived tables as <dir>/<table>.csv and appends its findings to
// <dir>/findings.csv (header written when the file is new). Errors: the files cannot be written.
func (r *Result) WriteCSV(dir string) error {
	for _, t := range r.Tables {
		if err := writeCSV(filepath.Join(dir, t.Name+".csv"), t.Header(), t.Rows, false); err != nil {
			return err
		}
	}
	rows := make([][]string, len(r.Findings))
	for i, f := range r.Findings {
		rows[i] = f.Cells()
	}
	h := make([]string, len(FindingsColumns))
	for i, c := range FindingsColumns {
		h[i] = c.Name
	}
	return writeCSV(filepath.Join(dir, FindingsTable+".csv"), h, rows, true)
}

func writeCSV(path string, header []string, rows [][]string, appendTo bool) error {
	flag := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if appendTo {
		flag = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	w := csv.NewWriter(f)
	if st.Size() == 0 {
		_ = w.Write(header)
	}
	_ = w.WriteAll(rows)
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ReadFindings reads a findings.csv written by WriteCSV (or by the plugins); a missing file is
// no findings. Errors: the file cannot be read or parsed.
func ReadFindings(path string) ([]Finding, error) {
	var out []Finding
	err := readCSV(path, func(r Row) error {
		f := Finding{Plugin: r["plugin"], Severity: r["severity"], Title: r["title"], FirstStep: -1, LastStep: -1}
		f.FirstStep, _ = r.Int("first_step")
		f.LastStep, _ = r.Int("last_step")
		for _, part := range strings.Split(r["numbers"], ";") {
			part = strings.TrimSpace(part)
			name, rest, ok := strings.Cut(part, "=")
			if !ok {
				continue
			}
			val, unit, _ := strings.Cut(rest, " ")
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				continue
			}
			f.Numbers = append(f.Numbers, Number{Name: name, Value: v, Unit: unit})
		}
		for _, s := range strings.Split(r["ranks"], "|") {
			if v, err := strconv.ParseInt(s, 10, 64); err == nil {
				f.Ranks = append(f.Ranks, v)
			}
		}
		if h := r["hosts"]; h != "" {
			f.Hosts = strings.Split(h, "|")
		}
		out = append(out, f)
		return nil
	})
	return out, err
}

// FormatFloat prints a number with up to 4 decimals and no trailing zeros.
func FormatFloat(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return ""
	}
	return strconv.FormatFloat(math.Round(v*1e4)/1e4, 'f', -1, 64)
}

func fi(v int64) string { return strconv.FormatInt(v, 10) }

func joinInts(v []int64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fi(x)
	}
	return strings.Join(s, "|")
}

// median of v (not modified); 0 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// meanStd is the mean and population standard deviation of v.
func meanStd(v []float64) (mean, std float64) {
	if len(v) == 0 {
		return 0, 0
	}
	for _, x := range v {
		mean += x
	}
	mean /= float64(len(v))
	for _, x := range v {
		std += (x - mean) * (x - mean)
	}
	return mean, math.Sqrt(std / float64(len(v)))
}

// Analysis describes one analysis: its name, the event kinds and tables it reads, the derived
// tables it emits (besides findings) and the function that runs it.
type Analysis struct {
	Name    string
	Kinds   []string // event kinds consumed (proto.Kind*)
	Inputs  []string // tables read (proto/tables)
	Outputs []*Table // derived tables emitted: name and columns, no rows
	Run     func(Source) (*Result, error)
}

// All lists the analyses: straggler, moe_balance, kv_pressure, cudagraph_coverage.
func All() []Analysis {
	return []Analysis{
		{Name: StragglerName, Kinds: []string{proto.KindForwardPass, proto.KindCPUTiming},
			Inputs:  []string{"forward_pass_timing", "cpu_operations_timing"},
			Outputs: []*Table{{Name: StragglerRanksTable, Columns: stragglerColumns}},
			Run:     func(s Source) (*Result, error) { return Straggler(s, StragglerOptions{}) }},
		{Name: MoEBalanceName, Kinds: []string{proto.KindMoEExpert},
			Inputs:  []string{"moe_expert_selection"},
			Outputs: []*Table{{Name: MoEBalanceTable, Columns: moeColumns}},
			Run:     func(s Source) (*Result, error) { return MoEBalance(s, MoEOptions{}) }},
		{Name: KVPressureName, Kinds: []string{proto.KindKVCache, proto.KindPreemption, proto.KindBatchUtil},
			Inputs:  []string{"kv_cache_usage", "kv_cache_evictions", "preemption_events", "batch_utilization"},
			Outputs: []*Table{{Name: KVPressureTable, Columns: kvColumns}},
			Run:     func(s Source) (*Result, error) { return KVPressure(s, KVOptions{}) }},
		{Name: CUDAGraphCoverageName, Kinds: []string{proto.KindCudaGraph},
			Inputs:  []string{"cuda_graph_usage", "cuda_graph_captures"},
			Outputs: []*Table{{Name: CUDAGraphCoverageTable, Columns: cgColumns}},
			Run:     func(s Source) (*Result, error) { return CUDAGraphCoverage(s, CUDAGraphOptions{}) }},
	}
}

// Lookup returns the analysis of that name.
func Lookup(name string) (Analysis, bool) {
	for _, a := range All() {
		if a.Name == name {
			return a, true
		}
	}
	return Analysis{}, false
}

// RunAll runs every analysis on src, in All's order. An analysis that fails does not stop the
// others: its error is returned joined with the rest, and its result is left out.
func RunAll(src Source) ([]*Result, error) {
	var out []*Result
	var errs []error
	for _, a := range All() {
		r, err := a.Run(src)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Name, err))
			continue
		}
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}
