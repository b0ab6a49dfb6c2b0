// Package sdkplugin turns one analysis of package analysis into a ProfileMate profiler plugin
// (plugins/sdk): it keeps the events of the analysis's input tables per session in memory and,
// when the session closes, runs the analysis and returns its derived tables and findings as rows.
// plugins/straggler, plugins/moe_balance, plugins/kv_pressure and plugins/cudagraph_coverage are
// each one line around it:
//
//	func main() { sdk.Serve(sdkplugin.MustNew(analysis.StragglerName)) }
package sdkplugin

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"

	"github.com/profilemate/profilemate/analysis"
	"github.com/profilemate/profilemate/plugins/sdk"
)

// Version is the plugins' version; it changes whenever an analysis's output changes, so the
// hub keys their rows anew. History: 1.0.0 first; 1.1.0 ranks by (host, rank), replicas by
// (host, dp), rounded numbers, victims among the KV holders, block size 16 unless the hits say
// otherwise (docs/plugins.md "Rules that keep rows exactly once").
const Version = "1.1.0"

// rowFields are derived-table columns that go into the row's own fields instead of its columns
// (the host writes them among the common columns).
var rowFields = map[string]bool{"dp": true, "pp": true, "tp": true, "ep": true}

// Plugin is an sdk.Profiler running one analysis.
type Plugin struct {
	a        analysis.Analysis
	inputs   map[string]bool
	mu       sync.Mutex
	sessions map[string]*session
}

// session is one open session's rows. Strings repeat on every row (host, role, layer names,
// modes): one copy of each is kept.
type session struct {
	tables *analysis.Tables
	strs   map[string]string
}

func (s *session) intern(v string) string {
	if c, ok := s.strs[v]; ok {
		return c
	}
	s.strs[v] = v
	return v
}

var _ sdk.Profiler = (*Plugin)(nil)

// New returns the plugin of the named analysis (analysis.All). Errors: no such analysis.
func New(name string) (*Plugin, error) {
	a, ok := analysis.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("sdkplugin: no analysis named %q", name)
	}
	p := &Plugin{a: a, inputs: map[string]bool{}, sessions: map[string]*session{}}
	for _, t := range a.Inputs {
		p.inputs[t] = true
	}
	return p, nil
}

// MustNew is New for a plugin's main; it panics on an unknown name.
func MustNew(name string) *Plugin {
	p, err := New(name)
	if err != nil {
		panic(err)
	}
	return p
}

// Describe names the plugin after its analysis, with the analysis's kinds and derived tables.
func (p *Plugin) Describe() sdk.Info {
	in := sdk.Info{Name: p.a.Name, Version: Version, Description: p.a.Description,
		Components: p.a.Components, Kinds: p.a.Kinds}
	for _, t := range p.a.Outputs {
		st := sdk.Table{Table: t.Name, Kind: t.Name, Since: Version}
		for _, c := range t.Columns {
			if rowFields[c.Name] {
				continue
			}
			st.Columns = append(st.Columns, sdk.Column{Name: c.Name, Type: c.Type, Unit: c.Unit, Meaning: c.Meaning})
		}
		in.Tables = append(in.Tables, st)
	}
	return in
}

// OpenSession starts an empty in-memory session with the processes the hub knows.
func (p *Plugin) OpenSession(_ context.Context, s sdk.Session) error {
	t := analysis.NewTables()
	for _, pr := range s.Processes {
		t.AddProcess(process(pr))
	}
	p.mu.Lock()
	p.sessions[s.ID] = &session{tables: t, strs: map[string]string{}}
	p.mu.Unlock()
	return nil
}

func process(pr sdk.Process) analysis.Process {
	return analysis.Process{Host: pr.Host, PID: pr.PID, Role: pr.Role, Rank: int64(pr.Rank),
		DP: int64(pr.DP), PP: int64(pr.PP), TP: int64(pr.TP), EP: int64(pr.EP), InstanceKey: pr.InstanceKey}
}

// Consume keeps the batch's events of the analysis's input tables; it returns no rows (the
// analysis needs the whole session). Errors: the session was not opened.
func (p *Plugin) Consume(_ context.Context, b sdk.Batch) ([]sdk.Row, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ss := p.sessions[b.Session]
	if ss == nil {
		return nil, fmt.Errorf("session %s was not opened", b.Session)
	}
	t := ss.tables
	pr := b.Process
	if pr.Rank >= 0 {
		t.AddProcess(process(pr))
	}
	common := analysis.Row{"session": ss.intern(b.Session), "host": ss.intern(pr.Host), "pid": i64(pr.PID), "role": ss.intern(pr.Role),
		"dp": i64(int64(pr.DP)), "pp": i64(int64(pr.PP)), "tp": i64(int64(pr.TP)), "ep": i64(int64(pr.EP))}
	for _, ev := range b.Events {
		if !p.inputs[ev.Table] {
			continue
		}
		r := make(analysis.Row, len(common)+len(ev.Cols)+3)
		for k, v := range common {
			r[k] = v
		}
		r["seq"] = strconv.FormatUint(ev.Seq, 10)
		r["step"] = i64(ev.Step)
		r["ts_ns"] = i64(ev.TSNS)
		for k, v := range ev.Cols {
			if sv, ok := v.(string); ok {
				r[k] = ss.intern(sv)
			} else {
				r[k] = cell(v)
			}
		}
		t.Add(ev.Table, r)
	}
	return nil, nil
}

// CloseSession runs the analysis on the session's events and returns its derived rows, then its
// findings. Errors: the analysis failed (the session's events are dropped either way).
func (p *Plugin) CloseSession(_ context.Context, session string) ([]sdk.Row, error) {
	p.mu.Lock()
	ss := p.sessions[session]
	delete(p.sessions, session)
	p.mu.Unlock()
	if ss == nil {
		return nil, nil
	}
	res, err := p.a.Run(ss.tables)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.a.Name, err)
	}
	return Rows(res), nil
}

// Rows converts an analysis result to plugin rows: every derived row (cells typed by their
// column; dp/pp/tp/ep into the row's fields, first_step/last_step's end into Step when present),
// then one findings row per finding.
func Rows(res *analysis.Result) []sdk.Row {
	var out []sdk.Row
	for _, t := range res.Tables {
		for _, cells := range t.Rows {
			r := sdk.NewRow(t.Name, map[string]any{})
			for i, c := range t.Columns {
				if i >= len(cells) || cells[i] == "" {
					continue
				}
				v, ok := typed(c.Type, cells[i])
				if !ok {
					continue
				}
				switch c.Name {
				case "dp":
					r.DP = int32(v.(int64))
					continue
				case "pp":
					r.PP = int32(v.(int64))
					continue
				case "tp":
					r.TP = int32(v.(int64))
					continue
				case "ep":
					r.EP = int32(v.(int64))
					continue
				case "last_step":
					r.Step = v.(int64)
				}
				r.Cols[c.Name] = v
			}
			out = append(out, r)
		}
	}
	for _, f := range res.Findings {
		nums := make(map[string]float64, len(f.Numbers))
		for _, n := range f.Numbers {
			nums[n.Name] = analysis.Round(n.Value)
		}
		ranks := make([]int, len(f.Ranks))
		for i, r := range f.Ranks {
			ranks[i] = int(r)
		}
		sort.Ints(ranks)
		row := sdk.Finding{Severity: f.Severity, Title: f.Title, Numbers: nums, Ranks: ranks,
			FirstStep: f.FirstStep, LastStep: f.LastStep, Detail: f.Detail()}.Row()
		out = append(out, row)
	}
	return out
}

func typed(typ, s string) (any, bool) {
	switch typ {
	case sdk.TypeInt:
		v, err := strconv.ParseInt(s, 10, 64)
		return v, err == nil
	case sdk.TypeFloat:
		v, err := strconv.ParseFloat(s, 64)
		return v, err == nil
	case sdk.TypeBool:
		v, err := strconv.ParseBool(s)
		return v, err == nil
	}
	return s, true
}

func i64(v int64) string { return strconv.FormatInt(v, 10) }

// cell formats an event column the way the CSV holds it.
func cell(v any) string {
	switch x := v.(type) {
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	case string:
		return x
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}
