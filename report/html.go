package report

import (
	"embed"
	"fmt"
	"html/template"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/proto"
)

//go:embed assets/report.html.tmpl assets/report.css
var assets embed.FS

var page = template.Must(template.New("report.html.tmpl").Funcs(template.FuncMap{
	"stamp":   stamp,
	"pct":     func(f float64) string { return pctOr(f, "—") },
	"ms":      func(f float64) string { return fmt.Sprintf("%.3f", f) },
	"targets": targets,
	"ranks":   ranks,
	"gaps":    gaps,
	"join":    strings.Join,
	"css":     func() template.CSS { b, _ := assets.ReadFile("assets/report.css"); return template.CSS(b) },
	"delta":   deltaText,
	"cells":   gridCells,
	"node":    gridNode,
}).ParseFS(assets, "assets/report.html.tmpl"))

// view is what the template renders: one report, or two side by side with their deltas.
type view struct {
	Title   string
	Reports []*reportView
	// Rows pairs the reports' figures by id, in figure order.
	Rows   [][]*Figure
	Deltas []Delta
}

type reportView struct {
	*Report
	Meta   *hub.Metadata
	Tables []tableStatus
	Hosts  []string
	// Grid is the workers as one instance's rank grid per host, with the ranks that never joined
	// (hub.NewRankGrid); nil without workers.
	Grid *hub.RankGrid
}

type tableStatus struct {
	Table, Kind string
	Rows        int64
	Has         bool
}

func newReportView(r *Report) *reportView {
	v := &reportView{Report: r, Meta: r.Session.Meta, Grid: hub.NewRankGrid(r.Session.Meta.Processes)}
	for _, t := range proto.Default().Tables() {
		n, ok := r.Session.Meta.Rows[t.Table]
		v.Tables = append(v.Tables, tableStatus{Table: t.Table, Kind: t.Kind, Rows: n, Has: ok && n > 0})
	}
	for h := range r.Session.Meta.Hosts {
		v.Hosts = append(v.Hosts, h)
	}
	sort.Strings(v.Hosts)
	return v
}

// WriteHTML writes the report as one self-contained HTML page: inline CSS and SVG, no script, no
// external reference, so it opens offline and makes no network request.
func (r *Report) WriteHTML(w io.Writer) error {
	v := &view{Title: "ProfileMate report " + r.Session.Meta.Session, Reports: []*reportView{newReportView(r)}}
	for _, f := range r.Figures {
		v.Rows = append(v.Rows, []*Figure{f})
	}
	if err := page.Execute(w, v); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// gridCells is host h's global ranks with their group ranks: "w0(tp0 pp0 dp0) w1(tp1 pp0 dp0)".
func gridCells(g *hub.RankGrid, h string) string {
	var cells []string
	for _, r := range g.Hosts[h] {
		cells = append(cells, g.Cell(r))
	}
	return strings.Join(cells, " ")
}

// gridNode is host h's node rank in the instance, "—" when unknown.
func gridNode(g *hub.RankGrid, h string) string {
	if n, ok := g.Nodes[h]; ok {
		return fmt.Sprint(n)
	}
	return "—"
}

func stamp(ns int64) string {
	if ns <= 0 {
		return "—"
	}
	return time.Unix(0, ns).UTC().Format("2006-01-02 15:04:05.000 UTC")
}

func pctOr(f float64, none string) string {
	if f < 0 {
		return none
	}
	return fmt.Sprintf("%.1f%%", 100*f)
}

// targets summarises a process's patch status: "patched: a, b · failed: c (why)".
func targets(ts []hub.Target) string {
	by := map[string][]string{}
	var order []string
	for _, t := range ts {
		if _, ok := by[t.Status]; !ok {
			order = append(order, t.Status)
		}
		s := t.Target
		if t.Reason != "" {
			s += " (" + t.Reason + ")"
		}
		by[t.Status] = append(by[t.Status], s)
	}
	var parts []string
	for _, st := range order {
		parts = append(parts, st+": "+strings.Join(by[st], ", "))
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, " · ")
}

func ranks(p *hub.ProcMeta) string {
	var parts []string
	for _, x := range []struct {
		n string
		v int64
	}{{"dp", p.DP}, {"pp", p.PP}, {"tp", p.TP}, {"ep", p.EP}} {
		if x.v >= 0 {
			parts = append(parts, fmt.Sprintf("%s%d", x.n, x.v))
		}
	}
	if p.Role == proto.RoleWorker && p.Rank >= 0 {
		parts = append([]string{fmt.Sprintf("rank %d", p.Rank)}, parts...)
	}
	return strings.Join(parts, " ")
}

func gaps(g [][2]uint64) string {
	if len(g) == 0 {
		return "none"
	}
	var n uint64
	var parts []string
	for _, r := range g {
		n += r[1] - r[0] + 1
		if len(parts) < 4 {
			parts = append(parts, fmt.Sprintf("%d–%d", r[0], r[1]))
		}
	}
	s := strings.Join(parts, ", ")
	if len(g) > 4 {
		s += ", …"
	}
	return fmt.Sprintf("%d seq missing (%s)", n, s)
}
