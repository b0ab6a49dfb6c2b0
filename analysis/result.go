package analysis

import (
	"encoding/csv"
	"encoding/json"
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
	Hosts    []string // hosts concerned (empty: none in particular); written into the detail cell
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

// FindingsColumns are the columns of the findings table as this package writes and reads it, in
// the order of the plugin SDK's findings table (plugins/sdk FindingsSchema) with the plugin
// column in front, so one reader serves files the hub's plugins wrote and files written here.
var FindingsColumns = []proto.Column{
	{Name: "plugin", Type: proto.TypeString, Meaning: "analysis (plugin) that made the finding"},
	{Name: "severity", Type: proto.TypeString, Meaning: "info, warning or critical"},
	{Name: "title", Type: proto.TypeString, Meaning: "one line stating the finding with its numbers"},
	{Name: "numbers", Type: proto.TypeString, Meaning: "the figures behind the finding: a JSON object of name → number, keys sorted"},
	{Name: "ranks", Type: proto.TypeString, Meaning: "global worker ranks concerned, joined by |"},
	{Name: "first_step", Type: proto.TypeInt, Unit: "count", Meaning: "first step concerned; -1 when not tied to steps"},
	{Name: "last_step", Type: proto.TypeInt, Unit: "count", Meaning: "last step concerned; -1 when not tied to steps"},
	{Name: "detail", Type: proto.TypeString, Meaning: "hosts concerned and the unit of each number: hosts: a|b; units: name unit, ..."},
}

// NumbersJSON is the numbers as a JSON object of name → value, keys sorted.
func (f Finding) NumbersJSON() string {
	m := make(map[string]float64, len(f.Numbers))
	for _, n := range f.Numbers {
		if !math.IsNaN(n.Value) && !math.IsInf(n.Value, 0) {
			m[n.Name] = Round(n.Value)
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return "{}"
	}
	return string(b)
}

// Detail is the detail cell: "hosts: a|b; units: name unit, name unit" (parts left out when
// empty).
func (f Finding) Detail() string {
	var parts []string
	if len(f.Hosts) > 0 {
		parts = append(parts, "hosts: "+strings.Join(f.Hosts, "|"))
	}
	var units []string
	for _, n := range f.Numbers {
		if n.Unit != "" {
			units = append(units, n.Name+" "+n.Unit)
		}
	}
	if len(units) > 0 {
		parts = append(parts, "units: "+strings.Join(units, ", "))
	}
	return strings.Join(parts, "; ")
}

// Cells formats the finding as a findings-table row in FindingsColumns order.
func (f Finding) Cells() []string {
	return []string{f.Plugin, f.Severity, f.Title, f.NumbersJSON(), joinInts(f.Ranks),
		strconv.FormatInt(f.FirstStep, 10), strconv.FormatInt(f.LastStep, 10), f.Detail()}
}

// String is the finding as one line: "[severity] plugin: title".
func (f Finding) String() string {
	return fmt.Sprintf("[%s] %s: %s", f.Severity, f.Plugin, f.Title)
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

// ReadFindings reads a findings.csv: one written by Result.WriteCSV, or one the hub wrote for
// its plugins (extra columns are ignored). Numbers keep their order of the JSON object's sorted
// keys and their units from the detail cell. A missing file is no findings. Errors: the file
// cannot be read or parsed, or a numbers cell is not a JSON object (named with its line).
func ReadFindings(path string) ([]Finding, error) {
	var out []Finding
	line := 1
	err := readCSV(path, func(r Row) error {
		line++
		f := Finding{Plugin: r["plugin"], Severity: r["severity"], Title: r["title"], FirstStep: -1, LastStep: -1}
		if v, ok := r.Int("first_step"); ok {
			f.FirstStep = v
		}
		if v, ok := r.Int("last_step"); ok {
			f.LastStep = v
		}
		units := map[string]string{}
		for _, part := range strings.Split(r["detail"], "; ") {
			if h, ok := strings.CutPrefix(part, "hosts: "); ok {
				f.Hosts = strings.Split(h, "|")
			}
			if u, ok := strings.CutPrefix(part, "units: "); ok {
				for _, nu := range strings.Split(u, ", ") {
					if name, unit, ok := strings.Cut(nu, " "); ok {
						units[name] = unit
					}
				}
			}
		}
		if c := r["numbers"]; c != "" {
			var m map[string]float64
			if err := json.Unmarshal([]byte(c), &m); err != nil {
				return fmt.Errorf("%s line %d: numbers: %w", path, line, err)
			}
			names := make([]string, 0, len(m))
			for k := range m {
				names = append(names, k)
			}
			sort.Strings(names)
			for _, k := range names {
				f.Numbers = append(f.Numbers, Number{Name: k, Value: m[k], Unit: units[k]})
			}
		}
		for _, s := range strings.Split(r["ranks"], "|") {
			if v, err := strconv.ParseInt(s, 10, 64); err == nil {
				f.Ranks = append(f.Ranks, v)
			}
		}
		out = append(out, f)
		return nil
	})
	return out, err
}

// Round rounds to 4 decimals, the precision findings and derived tables carry.
func Round(v float64) float64 { return math.Round(v*1e4) / 1e4 }

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
	Name        string
	Description string   // one line
	Components  []string // vLLM components read: engine_core, worker
	Kinds       []string // event kinds consumed (proto.Kind*)
	Inputs      []string // tables read (proto/tables)
	Outputs     []*Table // derived tables emitted: name and columns, no rows
	Run         func(Source) (*Result, error)
}

// All lists the analyses: straggler, moe_balance, kv_pressure, cudagraph_coverage.
func All() []Analysis {
	return []Analysis{
		{Name: StragglerName, Description: "slowest worker rank: ratio to the median rank, share of steps, one host or not",
			Components: []string{"worker"}, Kinds: []string{proto.KindForwardPass, proto.KindCPUTiming},
			Inputs:  []string{"forward_pass_timing", "cpu_operations_timing"},
			Outputs: []*Table{{Name: StragglerRanksTable, Columns: stragglerColumns}},
			Run:     func(s Source) (*Result, error) { return Straggler(s, StragglerOptions{}) }},
		{Name: MoEBalanceName, Description: "MoE expert load per layer: max/mean, CV, hot and cold experts, EPLB-style rebalance gain",
			Components: []string{"worker"}, Kinds: []string{proto.KindMoEExpert},
			Inputs:  []string{"moe_expert_selection"},
			Outputs: []*Table{{Name: MoEBalanceTable, Columns: moeColumns}},
			Run:     func(s Source) (*Result, error) { return MoEBalance(s, MoEOptions{}) }},
		{Name: KVPressureName, Description: "KV cache pressure: preemptions per 1,000 steps, recomputed tokens, evictions, the KV size that avoids the preemptions",
			Components: []string{"engine_core"}, Kinds: []string{proto.KindKVCache, proto.KindPreemption, proto.KindBatchUtil},
			Inputs:  []string{"kv_cache_usage", "kv_cache_evictions", "preemption_events", "batch_utilization"},
			Outputs: []*Table{{Name: KVPressureTable, Columns: kvColumns}},
			Run:     func(s Source) (*Result, error) { return KVPressure(s, KVOptions{}) }},
		{Name: CUDAGraphCoverageName, Description: "CUDA graph coverage: eager and padded steps and tokens, padding waste, capture sizes to add",
			Components: []string{"worker", "engine_core"}, Kinds: []string{proto.KindCudaGraph},
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
