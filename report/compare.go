package report

import (
	"fmt"
	"io"
	"math"
	"sort"
)

// Delta is one row of the comparison table: a metric in A and in B. A or B is NaN when that
// session lacks the data; Unit says how the values print ("ms", "%", "count", "cv").
type Delta struct {
	Metric string
	A, B   float64
	Unit   string
	// LowerIsBetter says which direction is an improvement (all of ours are).
	LowerIsBetter bool
}

// Deltas lists the metrics compared between a (before) and b (after): per-rank median step time
// (ranks matched by host/proc), KV usage peak, preemptions, CUDA-graph coverage, padding waste and
// expert imbalance (CV).
func Deltas(a, b *Report) []Delta {
	var d []Delta
	keys := map[string]bool{}
	for k := range a.Stats.StepMedianMs {
		keys[k] = true
	}
	for k := range b.Stats.StepMedianMs {
		keys[k] = true
	}
	var ks []string
	for k := range keys {
		ks = append(ks, k)
	}
	sortKeys(ks)
	get := func(m map[string]float64, k string) float64 {
		if v, ok := m[k]; ok {
			return v
		}
		return math.NaN()
	}
	for _, k := range ks {
		d = append(d, Delta{Metric: "median step time " + k, A: get(a.Stats.StepMedianMs, k), B: get(b.Stats.StepMedianMs, k), Unit: "ms", LowerIsBetter: true})
	}
	nan := func(v float64) float64 {
		if v < 0 {
			return math.NaN()
		}
		return v
	}
	d = append(d,
		Delta{Metric: "KV cache usage peak", A: nan(a.Stats.KVPeak), B: nan(b.Stats.KVPeak), Unit: "%", LowerIsBetter: true},
		Delta{Metric: "preemptions", A: float64(a.Stats.Preemptions), B: float64(b.Stats.Preemptions), Unit: "count", LowerIsBetter: true},
		Delta{Metric: "CUDA graph coverage (share of worker steps)", A: nan(a.Stats.GraphCoverage), B: nan(b.Stats.GraphCoverage), Unit: "%"},
		Delta{Metric: "CUDA graph padding waste", A: nan(a.Stats.PaddingWaste), B: nan(b.Stats.PaddingWaste), Unit: "%", LowerIsBetter: true},
		Delta{Metric: "expert imbalance (mean CV over layers)", A: nan(a.Stats.ExpertCV), B: nan(b.Stats.ExpertCV), Unit: "cv", LowerIsBetter: true},
	)
	return d
}

// deltaText renders a delta's three cells: A, B and the change ("+12.0%", "−3", "n/a").
func deltaText(d Delta) [3]string {
	f := func(v float64) string {
		if math.IsNaN(v) {
			return "—"
		}
		switch d.Unit {
		case "ms":
			return fmt.Sprintf("%.3f ms", v)
		case "%":
			return fmt.Sprintf("%.1f%%", 100*v)
		case "count":
			return fmt.Sprintf("%.0f", v)
		default:
			return fmt.Sprintf("%.3f", v)
		}
	}
	ch := "n/a"
	if !math.IsNaN(d.A) && !math.IsNaN(d.B) {
		switch d.Unit {
		case "%":
			ch = fmt.Sprintf("%+.1f pt", 100*(d.B-d.A))
		case "count":
			ch = fmt.Sprintf("%+.0f", d.B-d.A)
		default:
			ch = fmt.Sprintf("%+.3f", d.B-d.A)
			if d.A != 0 {
				ch += fmt.Sprintf(" (%+.1f%%)", 100*(d.B-d.A)/d.A)
			}
		}
	}
	return [3]string{f(d.A), f(d.B), ch}
}

// WriteCompareHTML writes a and b side by side, figure by figure, with the table of Deltas(a, b)
// first: a is "before", b "after". Paired plots share their value axis (and time axis), so a and b
// are re-rendered: write a report once, either alone or in one comparison. The page is as
// self-contained as WriteHTML's.
func WriteCompareHTML(w io.Writer, a, b *Report) error {
	v := &view{Title: fmt.Sprintf("ProfileMate comparison %s → %s", a.Session.Meta.Session, b.Session.Meta.Session),
		Reports: []*reportView{newReportView(a), newReportView(b)}, Deltas: Deltas(a, b)}
	ids := map[string]bool{}
	var order []string
	for _, r := range []*Report{a, b} {
		for _, f := range r.Figures {
			if !ids[f.ID] {
				ids[f.ID] = true
				order = append(order, f.ID)
			}
		}
	}
	pos := map[string]int{}
	for i, id := range order {
		pos[id] = i
	}
	sort.SliceStable(order, func(i, j int) bool { return pos[order[i]] < pos[order[j]] })
	for _, id := range order {
		row := []*Figure{a.Figure(id), b.Figure(id)}
		if err := alignAxes(row[0], row[1]); err != nil {
			return fmt.Errorf("write comparison: %w", err)
		}
		for i, f := range row {
			if f == nil {
				row[i] = &Figure{ID: id, Empty: "no such plot for this session"}
			}
		}
		v.Rows = append(v.Rows, row)
	}
	if err := page.Execute(w, v); err != nil {
		return fmt.Errorf("write comparison: %w", err)
	}
	return nil
}
