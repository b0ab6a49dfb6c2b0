package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/internal/cliapp"
	"github.com/profilemate/profilemate/internal/natsclient"
	"github.com/profilemate/profilemate/plugins/host"
	"github.com/profilemate/profilemate/proto"
)

func sessionsCommand() *cli.Command {
	return &cli.Command{
		Name:   "sessions",
		Usage:  "list the sessions in the hub's data folder",
		Flags:  []cli.Flag{dataFlag(), &cli.BoolFlag{Name: "json", Usage: "print the list as JSON", EnvVars: []string{"PROFILEMATE_JSON"}}},
		Action: listSessions,
	}
}

func showCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "summarise one session: hosts, ranks, steps, graph modes, KV peak, preemptions, experts, step times",
		ArgsUsage: "SESSION",
		Flags:     append([]cli.Flag{dataFlag(), &cli.BoolFlag{Name: "json", Usage: "print the summary as JSON", EnvVars: []string{"PROFILEMATE_JSON"}}}, windowFlags()...),
		Action: func(c *cli.Context) error {
			arg, err := sessionArg(c)
			if err != nil {
				return err
			}
			w, err := window(c)
			if err != nil {
				return cli.Exit("pmhub show: "+err.Error(), 2)
			}
			view, err := openViewOf(c, arg, w)
			if err != nil {
				return err
			}
			// The summary is read whole before anything is printed: the temporary copy is gone
			// before output that a closed pipe (pmhub show | head) could cut short.
			sum, err := summarize(view.Dir)
			view.Close()
			if err != nil {
				return cli.Exit("pmhub show: "+err.Error(), 1)
			}
			sum.Dir, sum.Segments, sum.Window = view.Home, len(view.Segments), view.describe(sum.total())
			sum.Notes = view.notes(w)
			if c.Bool("json") {
				return json.NewEncoder(c.App.Writer).Encode(sum)
			}
			sum.print(c.App.Writer)
			return nil
		},
	}
}

func listSessions(c *cli.Context) error {
	root := filepath.Dir(hub.SessionDir(c.String("data"), "x"))
	entries, err := sessionFolders(c.String("data"))
	if err != nil && c.String(natsclient.FlagURL) == "" {
		return cliapp.AsUsage(err)
	} // with --nats a data folder without sessions still lists the cluster's
	// A rotated session is listed once: its newest segment's metadata, with rows and bytes
	// summed over its segments (folders are listed in name order: a session's own folder, the
	// live segment, sorts before its closed segments "<session>@<index>").
	type listed struct {
		*hub.Metadata
		Segments int `json:"segments"`
	}
	var list []*listed
	byID := map[string]*listed{}
	for _, name := range entries {
		m, err := hub.ReadMetadata(filepath.Join(root, name))
		if err != nil {
			continue
		}
		_, _, closed := hub.SplitSegmentFolder(name)
		l := byID[m.Session]
		if l == nil {
			l = &listed{Metadata: m}
			byID[m.Session] = l
			list = append(list, l)
		} else {
			if !closed {
				m.Rows, m.Bytes, l.Metadata = mergeRows(l.Rows, m.Rows), l.Bytes+m.Bytes, m
			} else {
				l.Rows, l.Bytes = mergeRows(l.Rows, m.Rows), l.Bytes+m.Bytes
			}
			l.StartNS = min(l.StartNS, m.StartNS)
		}
		l.Segments++
	}
	// With --nats: the sessions of the cluster's index too (shared hubs, docs/SCALING.md).
	metas := make([]*hub.Metadata, len(list))
	for i, l := range list {
		metas[i] = l.Metadata
	}
	if metas, err = withIndex(c, metas); err != nil {
		return err
	}
	for i, m := range metas {
		if i < len(list) {
			list[i].Metadata = m
		} else {
			list = append(list, &listed{Metadata: m, Segments: 1})
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].StartNS < list[j].StartNS })
	if c.Bool("json") {
		return json.NewEncoder(c.App.Writer).Encode(list)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tSTATUS\tHOSTS\tPROCESSES\tSTART\tEND\tROWS\tSEGMENTS")
	for _, m := range list {
		var rows int64
		for _, n := range m.Rows {
			rows += n
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\n", m.Session, m.Status, strings.Join(sortedKeys(m.Hosts), ","),
			len(m.Processes), stamp(m.StartNS), stamp(m.EndNS), rows, m.Segments)
	}
	return tw.Flush()
}

// mergeRows adds b's per-table rows to a copy of a.
func mergeRows(a, b map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(a)+len(b))
	for k, v := range a {
		out[k] += v
	}
	for k, v := range b {
		out[k] += v
	}
	return out
}

// hostLayouts describes each host's workers: with a rank grid (one instance, possibly spanning
// hosts), a host holding every rank of the grid gets its sizes ("4 workers: TP 4, PP 1, DP 1")
// and a host holding part of it gets its global ranks within the grid's sizes ("4 workers: ranks
// 4-7 of TP 8 x PP 1 x DP 1"); without a grid, the host's own largest group ranks when they
// account for every worker, else just the count. size is host -> largest tp, pp, dp + 1.
func hostLayouts(ranks []RankInfo, size map[string]*[3]int64, g *RankGrid) map[string]string {
	out := map[string]string{}
	workers := map[string]int64{}
	for _, r := range ranks {
		workers[r.Host]++
	}
	for h, z := range size {
		n := workers[h]
		if g != nil && len(g.Hosts[h]) > 0 {
			total := g.TP * g.PP * g.DP
			if int64(len(g.Hosts[h])) == total && n == total {
				out[h] = fmt.Sprintf("%d workers: TP %d, PP %d, DP %d", n, g.TP, g.PP, g.DP)
			} else {
				out[h] = fmt.Sprintf("%d workers: ranks %s of TP %d x PP %d x DP %d", n, rankRanges(g.Hosts[h]), g.TP, g.PP, g.DP)
			}
			continue
		}
		tp, pp, dp := max(z[0], 1), max(z[1], 1), max(z[2], 1)
		// The layout is only claimed when the reported ranks account for every worker.
		if tp*pp*dp == n {
			out[h] = fmt.Sprintf("%d workers: TP %d, PP %d, DP %d", n, tp, pp, dp)
		} else {
			out[h] = fmt.Sprintf("%d workers", n)
		}
	}
	return out
}

// rankRanges writes ascending ranks as ranges: [0 1 2 5 7 8] -> "0-2,5,7-8".
func rankRanges(rs []int64) string {
	var parts []string
	for i := 0; i < len(rs); {
		j := i
		for j+1 < len(rs) && rs[j+1] == rs[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", rs[i], rs[j]))
		} else {
			parts = append(parts, strconv.FormatInt(rs[i], 10))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// stamp formats a metadata time (ns since the epoch, 0 when unknown) for the session list.
func stamp(ns int64) string {
	if ns <= 0 {
		return "-"
	}
	return time.Unix(0, ns).UTC().Format("2006-01-02 15:04:05")
}

// Summary is what `pmhub show` prints, computed from the session's CSV files and metadata.json.
type Summary struct {
	Session   string              `json:"session"`
	Status    string              `json:"status"`
	EndReason string              `json:"end_reason,omitempty"`
	Hosts     map[string][]string `json:"hosts"` // host -> process tokens
	// Layout is each host's worker count with its place in the instance (hostLayouts): "4 workers:
	// TP 4, PP 1, DP 1" for a host holding every rank, "4 workers: ranks 4-7 of TP 8 x PP 1 x DP 1"
	// for a host holding part of an instance spanning hosts.
	Layout map[string]string `json:"layout,omitempty"`
	// Ranks is every worker's place in the deployment, host then proc order.
	Ranks       []RankInfo         `json:"ranks"`
	Steps       map[string]int     `json:"steps"` // host/proc -> steps recorded in forward_pass_timing (workers) or batch_utilization (engines)
	GraphModes  map[string]float64 `json:"graph_mode_shares"`
	KVPeak      float64            `json:"kv_usage_peak"`
	Preemptions int                `json:"preemptions"`
	TopExperts  []ExpertLoad       `json:"top_experts"`
	StepTimes   []RankStepTime     `json:"step_times"`
	// StepSkew is the slowest rank's median CPU step time over the fastest's (1 = balanced).
	StepSkew float64          `json:"step_time_skew"`
	Rows     map[string]int64 `json:"rows"`
	// Ends is how each process ended, by host/proc: clean, lost, "killed (SIGKILL)", or running.
	Ends map[string]string `json:"end_states"`
	// Tables is each table's status over the session's processes (the most telling one a process
	// reported: recorded, failed: ..., no events, unavailable: needs CUDA events, disabled, not in
	// this vLLM era, not in this process); absent for shims that report none.
	Tables map[string]string `json:"table_status,omitempty"`
	Dir    string            `json:"dir"`
	// Findings are the plugins' findings (findings.csv), most severe first; without that file,
	// those package analysis computes from the tables (plugin_version "computed"). Plugins is what
	// each plugin did with the session (plugins.json).
	Findings []Finding                     `json:"findings,omitempty"`
	Plugins  map[string]host.SessionPlugin `json:"plugins,omitempty"`
	// Grid is the workers as one instance's rank grid, with the ranks that never joined (rankgrid.go).
	Grid *RankGrid `json:"rank_grid,omitempty"`
	// Segments is how many segment folders the session has on disk (1 unless it rotated); Window
	// says which of them and which time range (--since/--until) the summary covers ("" for all of
	// a one-segment session).
	Segments int    `json:"segments"`
	Window   string `json:"window,omitempty"`
	// Notes say what the summary cannot show (sessionView.notes): segments removed by retention
	// that the range reaches into.
	Notes []string `json:"notes,omitempty"`
}

// total is the rows the summary read, all tables.
func (s *Summary) total() int64 {
	var n int64
	for _, r := range s.Rows {
		n += r
	}
	return n
}

// RankInfo is one worker process and its ranks.
type RankInfo struct {
	Host string `json:"host"`
	Proc string `json:"proc"`
	PID  int64  `json:"pid"`
	hub.Ident
}

// ExpertLoad is one expert's selections summed over layers and ranks.
type ExpertLoad struct {
	Expert int64   `json:"expert"`
	Count  int64   `json:"count"`
	Share  float64 `json:"share"`
}

// RankStepTime is one worker's median CPU step time.
type RankStepTime struct {
	Host        string  `json:"host"`
	Proc        string  `json:"proc"`
	Steps       int     `json:"steps"`
	MedianCPUMs float64 `json:"median_cpu_ms"`
}

// summarize reads a session folder's metadata and CSVs into its Summary. Errors: the columns it
// reads are not in the schema (bindColumns), unreadable metadata or CSV.
func summarize(dir string) (*Summary, error) {
	if err := bindColumns(proto.Default()); err != nil {
		return nil, err
	}
	m, err := hub.ReadMetadata(dir)
	if err != nil {
		return nil, err
	}
	s := &Summary{Session: m.Session, Status: m.Status, EndReason: m.EndReason, Hosts: map[string][]string{},
		Layout: map[string]string{}, Steps: map[string]int{}, GraphModes: map[string]float64{}, Rows: m.Rows, Dir: dir,
		Ends: map[string]string{}, Tables: map[string]string{}}
	procOf := map[string]string{}  // host/pid -> token
	size := map[string]*[3]int64{} // host -> max tp, pp, dp + 1
	for _, p := range m.Processes {
		s.Hosts[p.Host] = append(s.Hosts[p.Host], p.Proc)
		s.Ends[p.Host+"/"+p.Proc] = endState(p)
		for _, t := range p.Tables {
			if tableRank(t.Status) > tableRank(s.Tables[t.Table]) {
				s.Tables[t.Table] = t.Status
			}
		}
		procOf[p.Host+"/"+strconv.FormatInt(p.PID, 10)] = p.Proc
		if p.Role != proto.RoleWorker {
			continue
		}
		s.Ranks = append(s.Ranks, RankInfo{Host: p.Host, Proc: p.Proc, PID: p.PID, Ident: p.Ident})
		if size[p.Host] == nil {
			size[p.Host] = &[3]int64{}
		}
		z := size[p.Host]
		z[0], z[1], z[2] = max(z[0], p.TP+1), max(z[1], p.PP+1), max(z[2], p.DP+1)
	}
	s.Grid = rankGrid(m.Processes)
	s.Layout = hostLayouts(s.Ranks, size, s.Grid)
	sort.Slice(s.Ranks, func(i, j int) bool {
		a, b := s.Ranks[i], s.Ranks[j]
		return a.Host < b.Host || (a.Host == b.Host && a.Rank < b.Rank)
	})
	key := func(r csvRow) string { return r.get(colHost) + "/" + procOf[r.get(colHost)+"/"+r.get(colPID)] }

	modes := map[string]int{}
	total := 0
	if err := eachRow(dir, "cuda_graph_usage", func(r csvRow) {
		modes[r.get(colRuntimeMode)]++
		total++
	}); err != nil {
		return nil, err
	}
	for mode, n := range modes {
		s.GraphModes[mode] = float64(n) / float64(total)
	}
	if err := eachRow(dir, "kv_cache_usage", func(r csvRow) {
		if u, err := strconv.ParseFloat(r.get(colKVUsage), 64); err == nil && u > s.KVPeak {
			s.KVPeak = u
		}
	}); err != nil {
		return nil, err
	}
	if err := eachRow(dir, "batch_utilization", func(r csvRow) { s.Steps[key(r)]++ }); err != nil {
		return nil, err
	}
	if err := eachRow(dir, "preemption_events", func(csvRow) { s.Preemptions++ }); err != nil {
		return nil, err
	}
	experts := map[int64]int64{}
	var expertTotal int64
	if err := eachRow(dir, "moe_expert_selection", func(r csvRow) {
		e, err1 := strconv.ParseInt(r.get(colExpert), 10, 64)
		n, err2 := strconv.ParseInt(r.get(colExpertCount), 10, 64)
		if err1 == nil && err2 == nil && r.get(colExpertStatus) == "counted" {
			experts[e] += n
			expertTotal += n
		}
	}); err != nil {
		return nil, err
	}
	for e, n := range experts {
		s.TopExperts = append(s.TopExperts, ExpertLoad{Expert: e, Count: n, Share: float64(n) / float64(expertTotal)})
	}
	sort.Slice(s.TopExperts, func(i, j int) bool {
		a, b := s.TopExperts[i], s.TopExperts[j]
		return a.Count > b.Count || (a.Count == b.Count && a.Expert < b.Expert)
	})
	if len(s.TopExperts) > 5 {
		s.TopExperts = s.TopExperts[:5]
	}
	times := map[string][]float64{}
	if err := eachRow(dir, "forward_pass_timing", func(r csvRow) {
		if v, err := strconv.ParseFloat(r.get(colStepCPU), 64); err == nil {
			times[key(r)] = append(times[key(r)], v)
		}
		s.Steps[key(r)]++
	}); err != nil {
		return nil, err
	}
	lo, hi := 0.0, 0.0
	for _, k := range sortedKeys(times) {
		host, proc, _ := strings.Cut(k, "/")
		med := median(times[k])
		s.StepTimes = append(s.StepTimes, RankStepTime{Host: host, Proc: proc, Steps: len(times[k]), MedianCPUMs: med})
		if lo == 0 || med < lo {
			lo = med
		}
		hi = max(hi, med)
	}
	if lo > 0 {
		s.StepSkew = hi / lo
	}
	if s.Findings, err = readFindings(dir); err != nil {
		return nil, err
	}
	if s.Plugins, err = host.ReadSessionPlugins(dir); err != nil {
		return nil, err
	}
	if len(s.Findings) == 0 {
		if s.Findings, err = computedFindings(dir); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Columns show reads, bound by name to proto's schema (bindColumns, TestShowColumnsExist): a
// column renamed or removed in proto/tables fails there instead of reading as blank cells.
type column struct{ Table, Name string }

var (
	colHost          = column{"", "host"} // common columns: every table has them
	colPID           = column{"", "pid"}
	colRuntimeMode   = column{"cuda_graph_usage", "runtime_mode"}
	colKVUsage       = column{"kv_cache_usage", "usage"}
	colExpert        = column{"moe_expert_selection", "expert"}
	colExpertCount   = column{"moe_expert_selection", "count"}
	colExpertStatus  = column{"moe_expert_selection", "status"}
	colStepCPU       = column{"forward_pass_timing", "cpu_ms"}
	showTables       = []string{"cuda_graph_usage", "kv_cache_usage", "batch_utilization", "preemption_events", "moe_expert_selection", "forward_pass_timing"}
	showColumns      = []column{colRuntimeMode, colKVUsage, colExpert, colExpertCount, colExpertStatus, colStepCPU}
	showCommonColumn = []column{colHost, colPID}
)

// bindColumns checks every column show reads against reg's schema: each table exists, has the
// common columns and its own bound columns. Errors name the first missing one.
func bindColumns(reg *proto.Registry) error {
	for _, t := range showTables {
		for _, c := range showCommonColumn {
			if _, _, err := reg.ColumnIndex(t, c.Name); err != nil {
				return err
			}
		}
	}
	for _, c := range showColumns {
		if _, _, err := reg.ColumnIndex(c.Table, c.Name); err != nil {
			return err
		}
	}
	return nil
}

// csvRow is one record of a session CSV with its file's header positions.
type csvRow struct {
	rec []string
	pos map[string]int
}

// get returns the row's cell of a bound column ("" when this file has no such column, e.g. one
// written before the column existed).
func (r csvRow) get(c column) string {
	if i, ok := r.pos[c.Name]; ok && i < len(r.rec) {
		return r.rec[i]
	}
	return ""
}

// field returns the cell of a column by name, for tables outside proto's schema (the plugin host's
// findings table, whose header sdk defines); "" when the file has no such column.
func (r csvRow) field(name string) string { return r.get(column{Name: name}) }

// eachRow calls fn for every row of the session's table; a table the session has no file for has
// no rows.
func eachRow(dir, table string, fn func(csvRow)) error {
	f, err := os.Open(filepath.Join(dir, table+".csv"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", table, err)
	}
	row := csvRow{pos: make(map[string]int, len(header))}
	for i, h := range header {
		row.pos[h] = i
	}
	for {
		rec, err := r.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", table, err)
		}
		row.rec = rec
		fn(row)
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// endState is a process's end as show prints it.
func endState(p *hub.ProcMeta) string {
	switch {
	case !p.Ended:
		return "running"
	case p.EndState == hub.EndKilled && p.EndSignal != "":
		return fmt.Sprintf("killed (%s)", p.EndSignal)
	case p.EndState == "":
		return hub.EndLost
	}
	return p.EndState
}

// tableRank orders table statuses by how much they tell about a session: a table recorded by one
// process is recorded; otherwise a failure, then a hooked table that saw nothing, then why it
// cannot be recorded here. Unknown statuses rank just above "not in this process".
func tableRank(status string) int {
	switch {
	case status == "":
		return 0
	case status == "recorded":
		return 8
	case strings.HasPrefix(status, "failed"):
		return 7
	case status == "no events":
		return 6
	case strings.HasPrefix(status, "unavailable"):
		return 5
	case status == "disabled":
		return 4
	case status == "not in this vLLM era":
		return 3
	case status == "not in this process":
		return 1
	}
	return 2
}

func (s *Summary) print(w io.Writer) {
	fmt.Fprintf(w, "session %s: %s", s.Session, s.Status)
	if s.EndReason != "" {
		fmt.Fprintf(w, " (%s)", s.EndReason)
	}
	fmt.Fprintln(w)
	if s.Window != "" {
		fmt.Fprintf(w, "  read: %s\n", s.Window)
	}
	for _, n := range s.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	for _, h := range sortedKeys(s.Hosts) {
		fmt.Fprintf(w, "  host %s: %s", h, strings.Join(s.Hosts[h], " "))
		if l := s.Layout[h]; l != "" {
			fmt.Fprintf(w, " (%s)", l)
		}
		fmt.Fprintln(w)
		var ends []string
		for _, p := range s.Hosts[h] {
			ends = append(ends, p+" "+s.Ends[h+"/"+p])
		}
		fmt.Fprintf(w, "    ended: %s\n", strings.Join(ends, ", "))
	}
	if s.Grid != nil {
		for _, l := range s.Grid.Lines() {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	var steps []string
	for _, k := range sortedKeys(s.Steps) {
		if _, proc, _ := strings.Cut(k, "/"); !strings.HasPrefix(proc, "w") {
			steps = append(steps, fmt.Sprintf("%s %d", k, s.Steps[k]))
		}
	}
	if len(steps) > 0 {
		fmt.Fprintf(w, "  engine steps: %s\n", strings.Join(steps, ", "))
	}
	var modes []string
	for _, m := range sortedKeys(s.GraphModes) {
		modes = append(modes, fmt.Sprintf("%s %.0f%%", m, 100*s.GraphModes[m]))
	}
	if s.total() == 0 {
		// Nothing to summarise: say so rather than print empty graph modes and a 0% peak.
		if s.Window != "" {
			fmt.Fprintln(w, "  no rows in this range")
		} else {
			fmt.Fprintln(w, "  no rows recorded")
		}
	} else {
		if len(modes) > 0 {
			fmt.Fprintf(w, "  CUDA graph modes (share of worker steps): %s\n", strings.Join(modes, ", "))
		}
		fmt.Fprintf(w, "  KV cache usage peak: %.1f%%   preemptions: %d\n", 100*s.KVPeak, s.Preemptions)
	}
	if len(s.TopExperts) > 0 {
		var ex []string
		for _, e := range s.TopExperts {
			ex = append(ex, fmt.Sprintf("#%d %.1f%%", e.Expert, 100*e.Share))
		}
		fmt.Fprintf(w, "  top-loaded experts (all layers): %s\n", strings.Join(ex, ", "))
	}
	if len(s.StepTimes) > 0 {
		fmt.Fprintf(w, "  per-rank step time (median CPU ms; skew slowest/fastest %.2f):\n", s.StepSkew)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, r := range s.StepTimes {
			fmt.Fprintf(tw, "    %s\t%s\t%d steps\t%.3f ms\n", r.Host, r.Proc, r.Steps, r.MedianCPUMs)
		}
		tw.Flush()
	}
	printPluginWork(w, s.Plugins)
	printFindings(w, s.Findings)
	noteComputed(w, s.Findings)
	fmt.Fprintln(w, "  rows per table:")
	for _, t := range sortedKeys(s.Rows) {
		fmt.Fprintf(w, "    %-24s %d\n", t, s.Rows[t])
	}
	if len(s.Tables) > 0 {
		fmt.Fprintln(w, "  table status:")
		for _, t := range sortedKeys(s.Tables) {
			fmt.Fprintf(w, "    %-24s %s\n", t, s.Tables[t])
		}
	}
}
