package report

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"math"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/palette"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Marks say how a legend entry is drawn, so a reader (and the browser test) can find its elements
// in the SVG: "line" is one stroked path whose vertices are the points, "fill" is one filled shape
// per point (bar, box, marker, heat-map cell).
const (
	MarkLine = "line"
	MarkFill = "fill"
	// MarkCell is a heat map: every filled shape of the SVG but its background is one cell.
	MarkCell = "cell"
)

// LegendItem is one series of a figure. Color is the exact "#RRGGBB" the SVG uses for it; Points is
// how many points, bars, boxes or cells were drawn; Rows how many CSV rows they summarise.
type LegendItem struct {
	Name      string
	Color     string
	Mark      string
	Points    int
	Rows      int64
	Highlight bool
	Dashed    bool
	// Detail is shown after the name (the numbers behind a bar).
	Detail string
}

// Figure is one plot of the report.
type Figure struct {
	ID      string
	Title   string
	Caption string
	// Source names the tables and columns drawn.
	Source string
	Notes  []string
	SVG    template.HTML
	Legend []LegendItem
	// Scale is an optional colour scale (heat maps): CSS gradient and its ends.
	Scale *ColorScale
	// Empty says why there is no plot (no rows, no such table); SVG is empty then.
	Empty string

	plot *plot.Plot // what SVG was rendered from, kept so Compare can align axes and re-render
	w, h vg.Length
}

// render draws p into the figure's SVG and keeps p for re-rendering.
func (f *Figure) render(p *plot.Plot, w, h vg.Length) error {
	f.plot, f.w, f.h = p, w, h
	svg, err := svgOf(p, w, h)
	f.SVG = svg
	return err
}

// alignAxes gives two figures of the same plot the same value axis — and, for plots over time, the
// same time axis — so side by side they read alike; no point falls outside either range. Heat maps
// keep their own axes (their colour scales differ anyway).
func alignAxes(a, b *Figure) error {
	if a == nil || b == nil || a.plot == nil || b.plot == nil || a.Scale != nil || b.Scale != nil {
		return nil
	}
	pa, pb := a.plot, b.plot
	lo, hi := math.Min(pa.Y.Min, pb.Y.Min), math.Max(pa.Y.Max, pb.Y.Max)
	pa.Y.Min, pa.Y.Max, pb.Y.Min, pb.Y.Max = lo, hi, lo, hi
	if pa.X.Label.Text == timeAxis && pb.X.Label.Text == timeAxis {
		lo, hi = math.Min(pa.X.Min, pb.X.Min), math.Max(pa.X.Max, pb.X.Max)
		pa.X.Min, pa.X.Max, pb.X.Min, pb.X.Max = lo, hi, lo, hi
	}
	if err := a.render(pa, a.w, a.h); err != nil {
		return err
	}
	return b.render(pb, b.w, b.h)
}

// ColorScale is a heat map's colour legend.
type ColorScale struct {
	// Gradient is a CSS background value built here from palette colours (never from input).
	Gradient template.CSS
	Lo, Hi   string
}

// straggler and marker colours are kept out of the series palette so they stay findable.
const (
	colorHighlight = "#D62728"
	colorMarker    = "#D62728"
)

var basePalette = []string{
	"#1F77B4", "#2CA02C", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF",
	"#FF7F0E", "#393B79", "#637939", "#8C6D31", "#843C39", "#7B4173", "#3182BD", "#31A354",
}

// seriesColor gives series i of n a colour unique within its figure: the base palette, then evenly
// spaced hues (never the highlight red).
func seriesColor(i int) string {
	if i < len(basePalette) {
		return basePalette[i]
	}
	// Golden-angle hues with varied lightness stay distinct for hundreds of series.
	for k := 0; ; k++ {
		h := math.Mod(float64(i+k)*137.508, 360)
		if h < 15 || h > 345 {
			continue
		}
		l := 0.35 + 0.1*float64((i+k)%3)
		c := hsl(h, 0.65, l)
		if c != colorHighlight {
			return c
		}
	}
}

func hsl(h, s, l float64) string {
	c := (1 - math.Abs(2*l-1)) * s
	x := c * (1 - math.Abs(math.Mod(h/60, 2)-1))
	m := l - c/2
	var r, g, b float64
	switch {
	case h < 60:
		r, g = c, x
	case h < 120:
		r, g = x, c
	case h < 180:
		g, b = c, x
	case h < 240:
		g, b = x, c
	case h < 300:
		r, b = x, c
	default:
		r, b = c, x
	}
	return fmt.Sprintf("#%02X%02X%02X", int(math.Round((r+m)*255)), int(math.Round((g+m)*255)), int(math.Round((b+m)*255)))
}

func parseColor(s string) color.Color {
	var r, g, b uint8
	fmt.Sscanf(s, "#%02X%02X%02X", &r, &g, &b)
	return color.RGBA{R: r, G: g, B: b, A: 255}
}

var sans = font.Font{Typeface: "Liberation", Variant: "Sans"}

func newPlot(xLabel, yLabel string) *plot.Plot {
	p := plot.New()
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = sans
		a.Label.TextStyle.Font.Size = vg.Points(10)
		a.Tick.Label.Font = sans
		a.Tick.Label.Font.Size = vg.Points(9)
	}
	p.X.Label.Text, p.Y.Label.Text = xLabel, yLabel
	p.Add(plotter.NewGrid())
	return p
}

// svgOf renders p as an inline SVG element (no XML prologue), w×h points.
func svgOf(p *plot.Plot, w, h vg.Length) (template.HTML, error) {
	wt, err := p.WriterTo(w, h, "svg")
	if err != nil {
		return "", fmt.Errorf("render svg: %w", err)
	}
	var b bytes.Buffer
	if _, err := wt.WriteTo(&b); err != nil {
		return "", fmt.Errorf("render svg: %w", err)
	}
	s := b.String()
	if i := strings.Index(s, "<svg"); i >= 0 {
		s = s[i:]
	}
	// The page's CSS sizes the figure; the viewBox keeps the aspect.
	s = strings.Replace(s, "<svg ", fmt.Sprintf(`<svg role="img" preserveAspectRatio="xMidYMid meet" style="max-width:%.0fpx" `, w.Points()*4/3), 1)
	return template.HTML(s), nil // #nosec: produced by gonum from numbers and our own labels
}

// addLine draws one series as a polyline and returns its legend entry.
func addLine(p *plot.Plot, name string, s *Series, col string, width float64, dashed, highlight bool) (LegendItem, error) {
	xy := make(plotter.XYs, len(s.X))
	for i := range s.X {
		xy[i] = plotter.XY{X: s.X[i], Y: s.Y[i]}
	}
	l, err := plotter.NewLine(xy)
	if err != nil {
		return LegendItem{}, fmt.Errorf("line %s: %w", name, err)
	}
	l.LineStyle.Color = parseColor(col)
	l.LineStyle.Width = vg.Points(width)
	if dashed {
		l.LineStyle.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	}
	p.Add(l)
	return LegendItem{Name: name, Color: col, Mark: MarkLine, Points: len(xy), Rows: s.Rows, Highlight: highlight, Dashed: dashed}, nil
}

// addMarkers draws filled triangles (one filled path each).
func addMarkers(p *plot.Plot, xy plotter.XYs, col string) error {
	if len(xy) == 0 {
		return nil
	}
	sc, err := plotter.NewScatter(xy)
	if err != nil {
		return fmt.Errorf("markers: %w", err)
	}
	sc.GlyphStyle = draw.GlyphStyle{Color: parseColor(col), Radius: vg.Points(4), Shape: draw.PyramidGlyph{}}
	p.Add(sc)
	return nil
}

// heatPalette is the heat map's colour ramp: Moreland's smooth blue-red (cold experts blue, hot
// ones red); neither end is white, so a blank cell (never counted) stays distinct from any load.
func heatPalette() palette.Palette { return moreland.SmoothBlueRed().Palette(64) }

func cssGradient(cols []color.Color) template.CSS {
	var parts []string
	for i := 0; i < len(cols); i += 8 {
		r, g, b, _ := cols[i].RGBA()
		parts = append(parts, fmt.Sprintf("#%02X%02X%02X", r>>8, g>>8, b>>8))
	}
	r, g, b, _ := cols[len(cols)-1].RGBA()
	parts = append(parts, fmt.Sprintf("#%02X%02X%02X", r>>8, g>>8, b>>8))
	return template.CSS("linear-gradient(to right, " + strings.Join(parts, ", ") + ")") // #nosec: our own colour list
}

// intTicks labels whole numbers only (layers, experts), at most about ten of them.
type intTicks struct{}

func (intTicks) Ticks(lo, hi float64) []plot.Tick {
	step := math.Max(1, math.Ceil((hi-lo)/10))
	var t []plot.Tick
	for v := math.Ceil(lo); v <= hi; v += step {
		if v == 0 {
			v = 0 // not -0
		}
		t = append(t, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', 0, 64)})
	}
	return t
}

// logY puts the y axis on a log scale (step times: spikes and the bulk both stay readable).
func logY(p *plot.Plot) {
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = logTicks{}
}

// logTicks labels a log axis at 1, 2 and 5 times the powers of ten inside the range, so a range
// narrower than a decade still gets labels.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	if lo <= 0 || hi <= lo {
		return nil
	}
	var t []plot.Tick
	mant := []float64{1, 2, 5}
	if hi/lo < 10 {
		mant = []float64{1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9}
	}
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range mant {
			v := m * math.Pow(10, e)
			if v >= lo && v <= hi {
				t = append(t, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', 3, 64)})
			}
		}
	}
	if len(t) < 2 {
		t = append(t, plot.Tick{Value: lo, Label: strconv.FormatFloat(lo, 'g', 3, 64)}, plot.Tick{Value: hi, Label: strconv.FormatFloat(hi, 'g', 3, 64)})
		sort.Slice(t, func(i, j int) bool { return t[i].Value < t[j].Value })
	}
	return t
}

// nominalX names categories 0..n-1 on the x axis with half a slot of room at both ends.
func nominalX(p *plot.Plot, names []string) {
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.5, float64(len(names))-0.5
	if len(names) > 16 {
		p.X.Tick.Label.Rotation = math.Pi / 2
		p.X.Tick.Label.XAlign, p.X.Tick.Label.YAlign = -1, -0.5
	}
}
