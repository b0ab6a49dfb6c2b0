package report

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Options tune a report. The zero value uses the defaults.
type Options struct {
	// MaxPoints is the most points one series is drawn with; a longer series is downsampled into
	// MaxPoints time buckets (default 2000).
	MaxPoints int
	// SampleSize is how many step times per rank the distribution plot keeps (uniform reservoir
	// sample, default 20000); smaller ranks keep every value.
	SampleSize int
	// Analyzer computes findings for a session whose folder has no findings table; nil: Library
	// (the in-tree analyses).
	Analyzer Analyzer
	// SkipAnalysis leaves the analyses out for a session without a findings table (on large
	// sessions they cost more than the plots; docs/BENCHMARKS.md).
	SkipAnalysis bool
}

func (o Options) withDefaults() Options {
	if o.MaxPoints <= 0 {
		o.MaxPoints = 2000
	}
	if o.SampleSize <= 0 {
		o.SampleSize = 20000
	}
	return o
}

// Stats are the session's headline numbers, compared by Compare.
type Stats struct {
	// StepMedianMs is each worker's median forward-pass CPU time (ms) by "host/proc";
	// StepCount its steps.
	StepMedianMs map[string]float64
	StepCount    map[string]int64
	// Straggler is the worker with the highest median step time ("" with fewer than two workers).
	Straggler string
	// KVPeak is the highest KV cache usage of any engine (0..1); -1 when no kv_cache_usage rows.
	KVPeak      float64
	Preemptions int64
	// GraphCoverage is the share of worker steps that ran a CUDA graph (PIECEWISE or FULL), 0..1;
	// -1 when no cuda_graph_usage rows. PaddingWaste: padded-but-unused tokens over padded tokens.
	GraphCoverage float64
	PaddingWaste  float64
	// ExpertCV is the mean over MoE layers of the coefficient of variation (std/mean) of the
	// experts' selection counts; 0 = perfectly balanced; -1 when no counted rows.
	ExpertCV float64
	// Rows is the row count per table from metadata.json.
	Rows map[string]int64
}

// Report is a rendered session: figures, findings, metadata and headline numbers.
type Report struct {
	Session  *Session
	Figures  []*Figure
	Findings *Findings
	Stats    Stats
	Options  Options

	stepSample *workerSteps
	graph      *graphModes
}

// Build reads the session folder dir and renders every figure. Errors: unreadable metadata or a
// malformed CSV file (named with its line).
func Build(dir string, opt Options) (*Report, error) {
	s, err := Open(dir)
	if err != nil {
		return nil, err
	}
	opt = opt.withDefaults()
	r := &Report{Session: s, Options: opt, Stats: Stats{KVPeak: -1, GraphCoverage: -1, ExpertCV: -1, Rows: s.Meta.Rows}}
	for _, f := range []func() (*Figure, error){
		r.kvFigure, r.stepTimeFigure, r.stepDistFigure, r.graphModeFigure, r.paddingFigure,
		r.expertFigure,
		func() (*Figure, error) { return r.gpuFigure("util") }, func() (*Figure, error) { return r.gpuFigure("mem") },
		func() (*Figure, error) { return r.batchFigure("tokens") }, func() (*Figure, error) { return r.batchFigure("reqs") },
	} {
		fig, err := f()
		if err != nil {
			return nil, err
		}
		r.Figures = append(r.Figures, fig)
	}
	if r.Findings, err = readFindings(s, opt.Analyzer, opt.SkipAnalysis); err != nil {
		return nil, err
	}
	return r, nil
}

// Figure returns the figure with the given id, nil when none.
func (r *Report) Figure(id string) *Figure {
	for _, f := range r.Figures {
		if f.ID == id {
			return f
		}
	}
	return nil
}

const (
	lineW, lineH = 10 * vg.Inch, 3.4 * vg.Inch
	timeAxis     = "seconds since session start (aligned clock)"
)

// sortKeys orders "host/proc" keys by host, then proc kind, then number (w2 before w10).
func sortKeys(keys []string) {
	sort.SliceStable(keys, func(i, j int) bool { return naturalLess(keys[i], keys[j]) })
}

func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitsPrefix(a), digitsPrefix(b)
		if da != "" && db != "" {
			na, _ := strconv.ParseUint(da, 10, 64)
			nb, _ := strconv.ParseUint(db, 10, 64)
			if na != nb {
				return na < nb
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitsPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

func empty(id, title, caption, source, why string) *Figure {
	return &Figure{ID: id, Title: title, Caption: caption, Source: source, Empty: why}
}

// kvFigure: KV cache usage per engine over time, preemptions marked at the usage they happened at.
func (r *Report) kvFigure() (*Figure, error) {
	s := r.Session
	const id, title = "kv-usage", "KV cache usage per engine"
	caption := "Share of KV cache blocks in use after each scheduler step, one line per engine; ▲ marks a preemption at the KV usage it happened at."
	source := "kv_cache_usage.usage, preemption_events.kv_usage"
	ls, err := collectLines(s, "kv_cache_usage", s.Origin, r.Options.MaxPoints, AggMax, func(row *Rows, emit emitFunc, first bool) error {
		ts, ok1 := row.TS()
		u, ok2 := row.Float("usage")
		if ok1 && ok2 {
			emit(s.ProcKey(row), ts, u)
			r.Stats.KVPeak = max(r.Stats.KVPeak, u)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var marks plotter.XYs
	var preempt int64
	if err := s.Scan("preemption_events", func(row *Rows) error {
		preempt++
		ts, ok := row.TS()
		if !ok || len(marks) >= r.Options.MaxPoints {
			return nil
		}
		u, _ := row.Float("kv_usage") // no usage recorded: marked on the time axis
		marks = append(marks, plotter.XY{X: secs(ts, s.Origin), Y: u})
		return nil
	}); err != nil {
		return nil, err
	}
	r.Stats.Preemptions = preempt
	if len(ls.Order) == 0 && preempt == 0 {
		return empty(id, title, caption, source, "no kv_cache_usage or preemption_events rows in this session"), nil
	}
	p := newPlot(timeAxis, "KV blocks in use (fraction)")
	p.Y.Min, p.Y.Max = 0, 1
	fig := &Figure{ID: id, Title: title, Caption: caption, Source: source}
	keys := append([]string(nil), ls.Order...)
	sortKeys(keys)
	for i, k := range keys {
		li, err := addLine(p, k, ls.Series[k], seriesColor(i), 1.2, false, false)
		if err != nil {
			return nil, err
		}
		fig.Legend = append(fig.Legend, li)
	}
	if err := addMarkers(p, marks, colorMarker); err != nil {
		return nil, err
	}
	fig.Legend = append(fig.Legend, LegendItem{Name: "▲ preemption", Color: colorMarker, Mark: MarkFill, Points: len(marks), Rows: preempt})
	if n := ls.note(); n != "" {
		fig.Notes = append(fig.Notes, n)
	}
	if int64(len(marks)) < preempt {
		fig.Notes = append(fig.Notes, fmt.Sprintf("Only the first %d of %d preemptions are marked.", len(marks), preempt))
	}
	fig.Notes = append(fig.Notes, fmt.Sprintf("Peak usage %.1f%%, %d preemptions.", 100*max(r.Stats.KVPeak, 0), preempt))
	if err = fig.render(p, lineW, lineH); err != nil {
		return nil, err
	}
	return fig, nil
}

// workerSteps is the per-rank step-time sample shared by the two step-time figures.
type workerSteps struct {
	keys     []string
	sample   map[string][]float64
	n        map[string]int64
	measured int64 // rows whose GPU time was measured
}

func (r *Report) steps() (*workerSteps, error) {
	s := r.Session
	ws := &workerSteps{sample: map[string][]float64{}, n: map[string]int64{}}
	rng := rand.New(rand.NewPCG(1, 2)) // fixed seed: the same session renders the same page
	err := s.Scan("forward_pass_timing", func(row *Rows) error {
		v, ok := row.Float("cpu_ms")
		if !ok {
			return nil
		}
		if row.Str("gpu_status") == "measured" {
			ws.measured++
		}
		k := s.ProcKey(row)
		if _, seen := ws.n[k]; !seen {
			ws.keys = append(ws.keys, k)
		}
		ws.n[k]++
		// Reservoir sampling (Vitter's algorithm R) keeps a uniform sample of SampleSize values.
		if len(ws.sample[k]) < r.Options.SampleSize {
			ws.sample[k] = append(ws.sample[k], v)
		} else if j := rng.Int64N(ws.n[k]); j < int64(r.Options.SampleSize) {
			ws.sample[k][j] = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sortKeys(ws.keys)
	r.Stats.StepMedianMs, r.Stats.StepCount = map[string]float64{}, map[string]int64{}
	hi := -1.0
	for _, k := range ws.keys {
		m := median(ws.sample[k])
		r.Stats.StepMedianMs[k], r.Stats.StepCount[k] = m, ws.n[k]
		if m > hi {
			hi, r.Stats.Straggler = m, k
		}
	}
	if len(ws.keys) < 2 {
		r.Stats.Straggler = ""
	}
	return ws, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

const stepCaption = "Host wall time of each worker's execute_model call (perf_counter_ns): launch time, not GPU time. Log scale; times under 0.001 ms are drawn at 0.001 ms."

// minLogMs is the floor of the step-time log axes (ms).
const minLogMs = 1e-3

// stepTimeFigure: per-rank step time over time, the straggler drawn thick in red.
func (r *Report) stepTimeFigure() (*Figure, error) {
	s := r.Session
	const id, title = "step-time", "Step time per rank over time"
	source := "forward_pass_timing.cpu_ms"
	ws, err := r.steps()
	if err != nil {
		return nil, err
	}
	if len(ws.keys) == 0 {
		return empty(id, title, stepCaption, source, "no forward_pass_timing rows in this session"), nil
	}
	ls, err := collectLines(s, "forward_pass_timing", s.Origin, r.Options.MaxPoints, AggMean, func(row *Rows, emit emitFunc, first bool) error {
		ts, ok1 := row.TS()
		v, ok2 := row.Float("cpu_ms")
		if ok1 && ok2 {
			// The log axis has no zero: a non-positive time is drawn at its floor.
			emit(s.ProcKey(row), ts, max(v, minLogMs))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	p := newPlot(timeAxis, "step time (ms, CPU, log scale)")
	logY(p)
	fig := &Figure{ID: id, Title: title, Caption: stepCaption + " The rank with the highest median is drawn thick in red.", Source: source}
	ci := 0
	for _, k := range ws.keys {
		col, w, hl := "", 0.8, k == r.Stats.Straggler
		if hl {
			col, w = colorHighlight, 2
		} else {
			col = seriesColor(ci)
			ci++
		}
		li, err := addLine(p, k, ls.Series[k], col, w, false, hl)
		if err != nil {
			return nil, err
		}
		fig.Legend = append(fig.Legend, li)
	}
	if n := ls.note(); n != "" {
		fig.Notes = append(fig.Notes, n)
	}
	if r.Stats.Straggler != "" {
		fig.Notes = append(fig.Notes, fmt.Sprintf("Slowest median: %s at %.3f ms.", r.Stats.Straggler, r.Stats.StepMedianMs[r.Stats.Straggler]))
	}
	if ws.measured > 0 {
		fig.Notes = append(fig.Notes, fmt.Sprintf("%d rows also carry measured GPU time (gpu_ms); this plot shows CPU time.", ws.measured))
	}
	if err = fig.render(p, lineW, lineH); err != nil {
		return nil, err
	}
	// Keep the sample for the distribution figure without a second scan.
	r.stepSample = ws
	return fig, nil
}

// stepDistFigure: one box per rank (median, quartiles, 1.5 IQR whiskers, outliers).
func (r *Report) stepDistFigure() (*Figure, error) {
	const id, title = "step-dist", "Step time distribution per rank"
	source := "forward_pass_timing.cpu_ms"
	ws := r.stepSample
	caption := stepCaption + " Box: quartiles and median; whiskers: 1.5 × IQR; circles: outliers."
	if ws == nil || len(ws.keys) == 0 {
		return empty(id, title, caption, source, "no forward_pass_timing rows in this session"), nil
	}
	p := newPlot("rank (host/proc)", "step time (ms, CPU, log scale)")
	logY(p)
	fig := &Figure{ID: id, Title: title, Caption: caption, Source: source}
	w := vg.Points(max(6, min(28, 420/float64(len(ws.keys)))))
	sampled := 0
	ci := 0
	for i, k := range ws.keys {
		vals := make(plotter.Values, len(ws.sample[k]))
		for j, v := range ws.sample[k] {
			vals[j] = max(v, minLogMs)
		}
		b, err := plotter.NewBoxPlot(w, float64(i), vals)
		if err != nil {
			return nil, fmt.Errorf("box %s: %w", k, err)
		}
		col, hl := "", k == r.Stats.Straggler
		if hl {
			col = colorHighlight
		} else {
			col = seriesColor(ci)
			ci++
		}
		b.FillColor = parseColor(col)
		p.Add(b)
		fig.Legend = append(fig.Legend, LegendItem{Name: k, Color: col, Mark: MarkFill, Points: 1, Rows: ws.n[k], Highlight: hl})
		if int64(len(ws.sample[k])) < ws.n[k] {
			sampled++
		}
	}
	nominalX(p, ws.keys)
	if sampled > 0 {
		fig.Notes = append(fig.Notes, fmt.Sprintf("Sampled: %d ranks have more than %d steps; their boxes come from a uniform random sample (reservoir, fixed seed) of %d steps each.",
			sampled, r.Options.SampleSize, r.Options.SampleSize))
	}
	var err error
	if err = fig.render(p, lineW, lineH); err != nil {
		return nil, err
	}
	return fig, nil
}

// graphModes holds cuda_graph_usage aggregated per worker and mode.
type graphModes struct {
	keys   []string
	modes  []string
	steps  map[string]map[string]int64 // key -> mode -> steps
	padded map[string]int64            // mode -> padded tokens
	unpad  map[string]int64
	rows   int64
}

func (r *Report) graphData() (*graphModes, error) {
	if r.graph != nil {
		return r.graph, nil
	}
	s := r.Session
	g := &graphModes{steps: map[string]map[string]int64{}, padded: map[string]int64{}, unpad: map[string]int64{}}
	seenMode := map[string]bool{}
	if err := s.Scan("cuda_graph_usage", func(row *Rows) error {
		k, m := s.ProcKey(row), row.Str("runtime_mode")
		if m == "" {
			m = "unknown"
		}
		if g.steps[k] == nil {
			g.steps[k] = map[string]int64{}
			g.keys = append(g.keys, k)
		}
		g.steps[k][m]++
		if !seenMode[m] {
			seenMode[m] = true
			g.modes = append(g.modes, m)
		}
		pt, ok1 := row.Int("padded_tokens")
		ut, ok2 := row.Int("unpadded_tokens")
		if ok1 && ok2 {
			g.padded[m] += pt
			g.unpad[m] += ut
		}
		g.rows++
		return nil
	}); err != nil {
		return nil, err
	}
	sortKeys(g.keys)
	order := map[string]int{"NONE": 0, "PIECEWISE": 1, "FULL": 2}
	sort.SliceStable(g.modes, func(i, j int) bool {
		oi, ok1 := order[g.modes[i]]
		oj, ok2 := order[g.modes[j]]
		if ok1 && ok2 {
			return oi < oj
		}
		if ok1 != ok2 {
			return ok1
		}
		return g.modes[i] < g.modes[j]
	})
	if g.rows > 0 {
		var graphed, pad, unpad int64
		for _, k := range g.keys {
			for m, n := range g.steps[k] {
				if m == "PIECEWISE" || m == "FULL" {
					graphed += n
				}
			}
		}
		for m := range g.padded {
			pad += g.padded[m]
			unpad += g.unpad[m]
		}
		r.Stats.GraphCoverage = float64(graphed) / float64(g.rows)
		if pad > 0 {
			r.Stats.PaddingWaste = float64(pad-unpad) / float64(pad)
		}
	}
	r.graph = g
	return g, nil
}

var modeColors = map[string]string{"NONE": "#7F7F7F", "PIECEWISE": "#FF7F0E", "FULL": "#1F77B4"}

func modeColor(m string, i int) string {
	if c, ok := modeColors[m]; ok {
		return c
	}
	return basePalette[(i+1)%len(basePalette)]
}

// graphModeFigure: per rank, the share of its steps per CUDA-graph mode, stacked.
func (r *Report) graphModeFigure() (*Figure, error) {
	const id, title = "graph-modes", "CUDA graph mode share per rank"
	caption := "Share of each worker's steps that ran eagerly (NONE) or replayed a PIECEWISE or FULL CUDA graph, from the per-step dispatch decision."
	source := "cuda_graph_usage.runtime_mode"
	g, err := r.graphData()
	if err != nil {
		return nil, err
	}
	if g.rows == 0 {
		return empty(id, title, caption, source, "no cuda_graph_usage rows in this session"), nil
	}
	p := newPlot("rank (host/proc)", "share of steps")
	p.Y.Min, p.Y.Max = 0, 1
	fig := &Figure{ID: id, Title: title, Caption: caption, Source: source}
	w := vg.Points(max(6, min(28, 420/float64(len(g.keys)))))
	var below *plotter.BarChart
	for i, m := range g.modes {
		vals := make(plotter.Values, len(g.keys))
		var rows int64
		for j, k := range g.keys {
			var tot int64
			for _, n := range g.steps[k] {
				tot += n
			}
			vals[j] = float64(g.steps[k][m]) / float64(tot)
			rows += g.steps[k][m]
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return nil, fmt.Errorf("bars %s: %w", m, err)
		}
		col := modeColor(m, i)
		b.Color = parseColor(col)
		b.LineStyle.Width = 0
		if below != nil {
			b.StackOn(below)
		}
		below = b
		p.Add(b)
		fig.Legend = append(fig.Legend, LegendItem{Name: m, Color: col, Mark: MarkFill, Points: len(vals), Rows: rows})
	}
	nominalX(p, g.keys)
	fig.Notes = append(fig.Notes, fmt.Sprintf("%.1f%% of %d worker steps ran a CUDA graph.", 100*r.Stats.GraphCoverage, g.rows))
	if err = fig.render(p, lineW, lineH); err != nil {
		return nil, err
	}
	return fig, nil
}

// paddingFigure: share of padded tokens that were padding, per mode.
func (r *Report) paddingFigure() (*Figure, error) {
	const id, title = "padding", "CUDA graph padding waste per mode"
	caption := "Padding tokens (padded_tokens − unpadded_tokens) over padded tokens, summed over all worker steps of each mode: compute spent on batch slots no request used."
	source := "cuda_graph_usage.padded_tokens, unpadded_tokens"
	g, err := r.graphData()
	if err != nil {
		return nil, err
	}
	if g.rows == 0 {
		return empty(id, title, caption, source, "no cuda_graph_usage rows in this session"), nil
	}
	p := newPlot("CUDA graph mode", "padding / padded tokens")
	fig := &Figure{ID: id, Title: title, Caption: caption, Source: source}
	var names []string
	for i, m := range g.modes {
		v := 0.0
		if g.padded[m] > 0 {
			v = float64(g.padded[m]-g.unpad[m]) / float64(g.padded[m])
		}
		b, err := plotter.NewBarChart(plotter.Values{v}, vg.Points(40))
		if err != nil {
			return nil, fmt.Errorf("bars %s: %w", m, err)
		}
		b.XMin = float64(i)
		col := modeColor(m, i)
		b.Color = parseColor(col)
		b.LineStyle.Width = 0
		p.Add(b)
		var rows int64
		for _, k := range g.keys {
			rows += g.steps[k][m]
		}
		fig.Legend = append(fig.Legend, LegendItem{Name: m, Detail: fmt.Sprintf("%.1f%% (%d of %d tokens)", 100*v, g.padded[m]-g.unpad[m], g.padded[m]),
			Color: col, Mark: MarkFill, Points: 1, Rows: rows})
		names = append(names, m)
	}
	nominalX(p, names)
	p.Y.Min = 0
	if err = fig.render(p, 5*vg.Inch, lineH); err != nil {
		return nil, err
	}
	return fig, nil
}

// expertGrid is the layer × expert heat map's data: Z is the share of the layer's selections, NaN
// for an expert never counted in that layer.
type expertGrid struct {
	layers, experts []int64
	z               [][]float64 // [expert][layer]
}

func (g *expertGrid) Dims() (c, r int)   { return len(g.experts), len(g.layers) }
func (g *expertGrid) Z(c, r int) float64 { return g.z[c][r] }
func (g *expertGrid) X(c int) float64    { return float64(g.experts[c]) }
func (g *expertGrid) Y(r int) float64    { return float64(g.layers[r]) }

// expertFigure: heat map of each layer's expert load.
func (r *Report) expertFigure() (*Figure, error) {
	s := r.Session
	const id, title = "expert-load", "MoE expert load (layer × expert)"
	caption := "Token-to-expert selections counted on the device, summed over ranks and intervals; colour: the expert's share of its layer's selections."
	source := "moe_expert_selection.count (status counted)"
	counts := map[[2]int64]int64{}
	layerIdx := map[string]int64{}
	var rows, unobservable int64
	if err := s.Scan("moe_expert_selection", func(row *Rows) error {
		if row.Str("status") != "counted" {
			unobservable++
			return nil
		}
		e, ok1 := row.Int("expert")
		n, ok2 := row.Int("count")
		if !ok1 || !ok2 || e < 0 {
			return nil
		}
		li, ok := row.Int("layer_index")
		if !ok || li < 0 {
			// A layer without a number gets the next one after the numbered ones, by name.
			name := row.Str("layer")
			if v, seen := layerIdx[name]; seen {
				li = v
			} else {
				li = 100000 + int64(len(layerIdx))
				layerIdx[name] = li
			}
		}
		counts[[2]int64{li, e}] += n
		rows++
		return nil
	}); err != nil {
		return nil, err
	}
	if len(counts) == 0 {
		why := "no moe_expert_selection rows in this session (not a MoE model, or the profiler was off)"
		if unobservable > 0 {
			why = fmt.Sprintf("all %d moe_expert_selection rows are unobservable (counts could not be taken without bias)", unobservable)
		}
		return empty(id, title, caption, source, why), nil
	}
	lset, eset := map[int64]bool{}, map[int64]bool{}
	layerTot := map[int64]int64{}
	for k, n := range counts {
		lset[k[0]], eset[k[1]] = true, true
		layerTot[k[0]] += n
	}
	g := &expertGrid{}
	for l := range lset {
		g.layers = append(g.layers, l)
	}
	for e := range eset {
		g.experts = append(g.experts, e)
	}
	sort.Slice(g.layers, func(i, j int) bool { return g.layers[i] < g.layers[j] })
	sort.Slice(g.experts, func(i, j int) bool { return g.experts[i] < g.experts[j] })
	zmax := 0.0
	var cvSum float64
	for _, l := range g.layers {
		var vals []float64
		for _, e := range g.experts {
			if n, ok := counts[[2]int64{l, e}]; ok {
				vals = append(vals, float64(n))
			}
		}
		cvSum += cv(vals)
	}
	r.Stats.ExpertCV = cvSum / float64(len(g.layers))
	g.z = make([][]float64, len(g.experts))
	for c, e := range g.experts {
		g.z[c] = make([]float64, len(g.layers))
		for rr, l := range g.layers {
			n, ok := counts[[2]int64{l, e}]
			if !ok || layerTot[l] == 0 {
				g.z[c][rr] = math.NaN()
				continue
			}
			g.z[c][rr] = float64(n) / float64(layerTot[l])
			zmax = max(zmax, g.z[c][rr])
		}
	}
	pal := heatPalette()
	hm := plotter.NewHeatMap(g, pal)
	hm.Min, hm.Max = 0, max(zmax, 1e-12)
	p := newPlot("expert", "layer")
	p.Add(hm)
	p.X.Tick.Marker, p.Y.Tick.Marker = intTicks{}, intTicks{}
	h := vg.Length(max(2.2, min(8, 0.22*float64(len(g.layers))+1))) * vg.Inch
	fig := &Figure{ID: id, Title: title, Caption: caption, Source: source,
		Legend: []LegendItem{{Name: "layer × expert", Detail: fmt.Sprintf("%d layers × %d experts", len(g.layers), len(g.experts)), Mark: MarkCell, Points: len(counts), Rows: rows}},
		Scale:  &ColorScale{Gradient: cssGradient(pal.Colors()), Lo: "0%", Hi: fmt.Sprintf("%.1f%% of the layer's selections", 100*zmax)}}
	fig.Notes = append(fig.Notes, fmt.Sprintf("Expert imbalance: mean coefficient of variation over layers %.3f (0 = balanced).", r.Stats.ExpertCV))
	if unobservable > 0 {
		fig.Notes = append(fig.Notes, fmt.Sprintf("%d rows were unobservable and are not counted.", unobservable))
	}
	if len(counts) < len(g.layers)*len(g.experts) {
		fig.Notes = append(fig.Notes, fmt.Sprintf("%d of %d cells have no counted row and stay blank.", len(g.layers)*len(g.experts)-len(counts), len(g.layers)*len(g.experts)))
	}
	var err error
	if err = fig.render(p, lineW, h); err != nil {
		return nil, err
	}
	return fig, nil
}

func cv(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var sum float64
	for _, x := range v {
		sum += x
	}
	mean := sum / float64(len(v))
	if mean == 0 {
		return 0
	}
	var ss float64
	for _, x := range v {
		ss += (x - mean) * (x - mean)
	}
	return math.Sqrt(ss/float64(len(v))) / mean
}

// gpuFigure: per GPU utilisation ("util") or memory in use ("mem") over time.
func (r *Report) gpuFigure(what string) (*Figure, error) {
	s := r.Session
	id, title, ylabel := "gpu-util", "GPU utilisation per GPU", "kernel busy (%)"
	caption := "NVML utilisation.gpu per GPU as each host's agent sampled it: share of the sample period a kernel ran."
	source := "gpu_metrics.util_gpu"
	if what == "mem" {
		id, title, ylabel = "gpu-mem", "GPU memory in use per GPU", "memory used (% of installed)"
		caption = "NVML memory in use per GPU over installed memory, as each host's agent sampled it."
		source = "gpu_metrics.mem_used_bytes / mem_total_bytes"
	}
	ls, err := collectLines(s, "gpu_metrics", s.Origin, r.Options.MaxPoints, AggMean, func(row *Rows, emit emitFunc, first bool) error {
		ts, ok := row.TS()
		if !ok {
			return nil
		}
		key := row.Str("host") + "/gpu" + row.Str("gpu_index")
		if rk, ok := row.Int("rank"); ok && rk >= 0 {
			key += fmt.Sprintf(" (w%d)", rk)
		}
		if what == "mem" {
			u, ok1 := row.Int("mem_used_bytes")
			t, ok2 := row.Int("mem_total_bytes")
			if ok1 && ok2 && t > 0 {
				emit(key, ts, 100*float64(u)/float64(t))
			}
			return nil
		}
		if u, ok := row.Float("util_gpu"); ok {
			emit(key, ts, u)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(ls.Order) == 0 {
		return empty(id, title, caption, source, "no gpu_metrics rows in this session: the hosts' agents sampled no GPU (no NVIDIA driver, or sampling off)"), nil
	}
	p := newPlot(timeAxis, ylabel)
	p.Y.Min, p.Y.Max = 0, 100
	fig := &Figure{ID: id, Title: title, Caption: caption, Source: source}
	keys := append([]string(nil), ls.Order...)
	sortKeys(keys)
	for i, k := range keys {
		li, err := addLine(p, k, ls.Series[k], seriesColor(i), 1, false, false)
		if err != nil {
			return nil, err
		}
		fig.Legend = append(fig.Legend, li)
	}
	if n := ls.note(); n != "" {
		fig.Notes = append(fig.Notes, n)
	}
	if err = fig.render(p, lineW, lineH); err != nil {
		return nil, err
	}
	return fig, nil
}

// batchFigure: scheduled tokens ("tokens") or running requests ("reqs") per engine against the
// scheduler's budget where the budget is known.
func (r *Report) batchFigure(what string) (*Figure, error) {
	s := r.Session
	id, title, ylabel := "batch-tokens", "Batch utilisation: scheduled tokens vs token budget", "tokens per step"
	valCol, budCol, budName := "scheduled_tokens", "token_budget", "max_num_batched_tokens"
	if what == "reqs" {
		id, title, ylabel = "batch-reqs", "Batch utilisation: running requests vs request limit", "requests per step"
		valCol, budCol, budName = "running_reqs", "max_running_reqs", "max_num_seqs"
	}
	caption := fmt.Sprintf("Per engine, %s of each scheduler step (solid) and the scheduler's %s (%s, dashed) where the hub knows it.", valCol, budCol, budName)
	source := "batch_utilization." + valCol + ", " + budCol
	var rows, unknown int64
	ls, err := collectLines(s, "batch_utilization", s.Origin, r.Options.MaxPoints, AggMean, func(row *Rows, emit emitFunc, first bool) error {
		ts, ok := row.TS()
		if !ok {
			return nil
		}
		k := s.ProcKey(row)
		if v, ok := row.Int(valCol); ok {
			emit(k, ts, float64(v))
			if first {
				rows++
			}
		}
		// An empty or zero budget means vLLM did not tell it: no budget line, counted below.
		if b, ok := row.Int(budCol); ok && b > 0 {
			emit(k+" "+budCol, ts, float64(b))
		} else if first {
			unknown++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(ls.Order) == 0 {
		return empty(id, title, caption, source, "no batch_utilization rows in this session"), nil
	}
	p := newPlot(timeAxis, ylabel)
	p.Y.Min = 0
	fig := &Figure{ID: id, Title: title, Caption: caption, Source: source}
	keys := append([]string(nil), ls.Order...)
	sortKeys(keys)
	for i, k := range keys {
		li, err := addLine(p, k, ls.Series[k], seriesColor(i), 1.1, strings.HasSuffix(k, " "+budCol), false)
		if err != nil {
			return nil, err
		}
		fig.Legend = append(fig.Legend, li)
	}
	if unknown > 0 {
		fig.Notes = append(fig.Notes, fmt.Sprintf("Budget unknown: %s is empty or 0 in %d of %d rows, so those steps have no budget line; utilisation against the budget cannot be computed for them.",
			budCol, unknown, rows))
	}
	if n := ls.note(); n != "" {
		fig.Notes = append(fig.Notes, n)
	}
	if err = fig.render(p, lineW, lineH); err != nil {
		return nil, err
	}
	return fig, nil
}
