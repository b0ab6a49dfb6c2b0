package report_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/profilemate/profilemate/report"
	"github.com/profilemate/profilemate/report/reporttest"
)

var update = flag.Bool("update", false, "rewrite docs/report-screenshot.png from the synthetic session's report")

// chromiumPath finds Debian's chromium (scripts/setup.sh installs it); PROFILEMATE_CHROMIUM
// overrides. Without one the browser tests skip, except under CI where they fail.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PROFILEMATE_CHROMIUM"); p != "" {
		return p
	}
	for _, n := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium on PATH: run scripts/setup.sh")
	}
	t.Skip("no chromium on PATH (scripts/setup.sh installs it)")
	return ""
}

// page is what the browser saw of one report page.
type page struct {
	// counts: figure element id -> series name -> drawn points/marks/cells, read from the SVG.
	counts map[string]map[string]int
	// declared: the same from the legend's data-points (what the page claims).
	declared  map[string]map[string]int
	highlight map[string]string // figure id -> highlighted series
	deltas    int
	findings  []finding
	console   []string
	requests  []string
	shot      []byte
}

// finding is one row of a findings table as the page shows it: its plugin and the figure it links.
type finding struct {
	Plugin, Link string
	Target       bool
}

// countJS reads every figure's SVG: a "line" series is the vertices (M and L commands) of the
// stroked, unfilled paths in its colour; a "fill" series the filled paths in its colour; a "cell"
// series every filled path of the SVG but the first (the background).
const countJS = `(() => {
  const out = [];
  for (const f of document.querySelectorAll('figure.plot')) {
    const paths = [...f.querySelectorAll('svg path')].map(p => ({d: p.getAttribute('d') || '', s: (p.getAttribute('style') || '').toUpperCase()}));
    for (const li of f.querySelectorAll('ul.legend li')) {
      const col = (li.dataset.color || '').toUpperCase(), mark = li.dataset.mark;
      let n = 0;
      for (const [i, p] of paths.entries()) {
        const filled = /FILL:#/.test(p.s), stroked = p.s.includes('STROKE:' + col);
        if (mark === 'line' && !filled && stroked) n += (p.d.match(/[ML]/g) || []).length;
        if (mark === 'fill' && p.s.includes('FILL:' + col + ';') || mark === 'fill' && p.s.endsWith('FILL:' + col)) n++;
        if (mark === 'cell' && filled && i > 0) n++;
      }
      out.push({fig: f.id, series: li.dataset.series, drawn: n, declared: +li.dataset.points, hl: li.classList.contains('highlight')});
    }
  }
  const findings = [...document.querySelectorAll('section.findings tbody tr')].map(tr => {
    const a = tr.querySelector('a'); const id = a ? a.getAttribute('href').slice(1) : '';
    return {plugin: tr.cells[0].textContent, link: id, target: id ? !!document.getElementById(id) : false};
  });
  return JSON.stringify({series: out, deltas: document.querySelectorAll('table.deltas tbody tr').length, findings});
})()`

// render opens file in headless chromium with the flags a locked-down CI needs, records console
// errors and every network request, reads the figures and takes a 1280-wide screenshot of the top.
func render(t *testing.T, file string) *page {
	t.Helper()
	exe := chromiumPath(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 1800),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	if err := chromedp.Do(bctx); err != nil { // start the browser and open the tab
		t.Fatalf("start chromium: %v", err)
	}
	var mu sync.Mutex
	pg := &page{counts: map[string]map[string]int{}, declared: map[string]map[string]int{}, highlight: map[string]string{}}
	url := "file://" + file
	if err := chromedp.Listen(bctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *network.EventRequestWillBeSent:
			if e.Request != nil && e.Request.URL != url {
				pg.requests = append(pg.requests, e.Request.URL)
			}
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError || e.Type == runtime.ConsoleAPICalledTypeWarning {
				pg.console = append(pg.console, fmt.Sprintf("console.%s: %v", e.Type, e.Args))
			}
		case *runtime.EventExceptionThrown:
			pg.console = append(pg.console, "exception: "+e.ExceptionDetails.Text)
		case *cdplog.EventEntryAdded:
			if e.Entry.Level == cdplog.EntryLevelError || e.Entry.Level == cdplog.EntryLevelWarning {
				pg.console = append(pg.console, fmt.Sprintf("%s %s: %s %s", e.Entry.Source, e.Entry.Level, e.Entry.Text, e.Entry.URL))
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(1280, 1800), chromedp.Navigate(url)); err != nil {
		t.Fatalf("open %s: %v", file, err)
	}
	raw, err := chromedp.Run(bctx, chromedp.Evaluate[string](countJS))
	if err != nil {
		t.Fatalf("read figures: %v", err)
	}
	if pg.shot, err = chromedp.Run(bctx, chromedp.CaptureScreenshot()); err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	var got struct {
		Series []struct {
			Fig, Series     string
			Drawn, Declared int
			HL              bool
		}
		Deltas   int
		Findings []finding
	}
	if err := json.Unmarshal([]byte(raw), &got); err != nil {
		t.Fatalf("figures: %v in %s", err, raw)
	}
	for _, s := range got.Series {
		if pg.counts[s.Fig] == nil {
			pg.counts[s.Fig], pg.declared[s.Fig] = map[string]int{}, map[string]int{}
		}
		pg.counts[s.Fig][s.Series] += s.Drawn
		pg.declared[s.Fig][s.Series] += s.Declared
		if s.HL {
			pg.highlight[s.Fig] = s.Series
		}
	}
	pg.deltas, pg.findings = got.Deltas, got.Findings
	mu.Lock()
	defer mu.Unlock()
	return pg
}

func writeReport(t *testing.T, dir string, opt report.Options) (*report.Report, string) {
	t.Helper()
	r, err := report.Build(dir, opt)
	if err != nil {
		t.Fatalf("build report of %s: %v", dir, err)
	}
	out := filepath.Join(t.TempDir(), "report.html")
	var b bytes.Buffer
	if err := r.WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return r, out
}

// checkPage compares what the browser drew with what the CSVs give (expected, computed by the
// independent reader in expect_test.go) and checks the page stayed offline and quiet.
func checkPage(t *testing.T, pg *page, want map[string]map[string]int, wantHL map[string]string, prefix string) {
	t.Helper()
	if len(pg.console) > 0 {
		t.Errorf("console errors/warnings: %q", pg.console)
	}
	if len(pg.requests) > 0 {
		t.Errorf("the page made network requests: %q", pg.requests)
	}
	for fig, series := range want {
		id := prefix + fig
		got := pg.counts[id]
		if len(series) == 0 {
			if len(got) != 0 {
				t.Errorf("%s: drawn %v, want no plot", id, got)
			}
			continue
		}
		if len(got) != len(series) {
			t.Errorf("%s: series %v, want %v", id, keys(got), keys(series))
		}
		for name, n := range series {
			if got[name] != n {
				t.Errorf("%s %q: %d points/cells drawn, want %d from the CSVs", id, name, got[name], n)
			}
			if d := pg.declared[id][name]; d != n {
				t.Errorf("%s %q: legend says %d, want %d", id, name, d, n)
			}
		}
	}
	for fig, name := range wantHL {
		if pg.highlight[prefix+fig] != name {
			t.Errorf("%s: highlighted %q, want the straggler %q", prefix+fig, pg.highlight[prefix+fig], name)
		}
	}
}

func keys[V any](m map[string]V) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

// TestReportInChromium renders the demo session (a real two-host run of the simulated vLLM under
// two agents, kept in testdata/demo) and a synthetic one with GPUs and known budgets, with and
// without downsampling, in headless chromium.
func TestReportInChromium(t *testing.T) {
	synth := filepath.Join(t.TempDir(), "synthetic")
	if err := reporttest.Write(synth, reporttest.Small()); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		dir  string
		opt  report.Options
	}{
		{"demo", "testdata/demo", report.Options{}},
		{"synthetic", synth, report.Options{}},
		{"synthetic downsampled", synth, report.Options{MaxPoints: 25, SampleSize: 30}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir, _ := filepath.Abs(tt.dir)
			_, file := writeReport(t, dir, tt.opt)
			pg := render(t, file)
			want, hl := expected(t, dir, tt.opt)
			t.Logf("drawn %v", pg.counts)
			checkPage(t, pg, want, hl, "")
			// Every finding that links a plot links one on the page; the synthetic straggler is found.
			straggler := false
			for _, f := range pg.findings {
				if f.Link != "" && !f.Target {
					t.Errorf("finding %s links #%s, which is not on the page", f.Plugin, f.Link)
				}
				straggler = straggler || (f.Plugin == "straggler" && f.Link == "step-time")
			}
			if strings.HasPrefix(tt.name, "synthetic") && !straggler {
				t.Errorf("no straggler finding linked to the step-time plot in %v", pg.findings)
			}
			if img, err := png.Decode(bytes.NewReader(pg.shot)); err != nil {
				t.Errorf("screenshot is no PNG: %v", err)
			} else if img.Bounds().Dx() != 1280 {
				t.Errorf("screenshot %v wide, want 1280", img.Bounds().Dx())
			}
			if tt.name == "synthetic" && *update {
				if err := os.WriteFile("../docs/report-screenshot.png", pg.shot, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestCompareInChromium renders the demo session against the synthetic one: both columns hold
// each session's own counts and the delta table has a row per rank plus the five session metrics.
func TestCompareInChromium(t *testing.T) {
	synth := filepath.Join(t.TempDir(), "synthetic")
	if err := reporttest.Write(synth, reporttest.Small()); err != nil {
		t.Fatal(err)
	}
	demo, _ := filepath.Abs("testdata/demo")
	a, err := report.Build(demo, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := report.Build(synth, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := report.WriteCompareHTML(&buf, a, b); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "compare.html")
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	pg := render(t, file)
	wa, hla := expected(t, demo, report.Options{})
	wb, hlb := expected(t, synth, report.Options{})
	checkPage(t, pg, wa, hla, "a-")
	checkPage(t, pg, wb, hlb, "b-")
	ranks := map[string]bool{}
	for k := range a.Stats.StepMedianMs {
		ranks[k] = true
	}
	for k := range b.Stats.StepMedianMs {
		ranks[k] = true
	}
	if want := len(ranks) + 5; pg.deltas != want {
		t.Errorf("delta table has %d rows, want %d (%d ranks + 5 metrics)", pg.deltas, want, len(ranks))
	}
	if !strings.Contains(buf.String(), "A (before)") {
		t.Error("comparison page does not name A and B")
	}
}

// TestRenderSeesRequests checks the checker: a page that loads a remote image must show up as a
// network request or a console error (CSP refusal), so a clean result above means something.
func TestRenderSeesRequests(t *testing.T) {
	file := filepath.Join(t.TempDir(), "leaky.html")
	html := `<!DOCTYPE html><html><head><title>x</title></head><body><img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script></body></html>`
	if err := os.WriteFile(file, []byte(html), 0o644); err != nil {
		t.Fatal(err)
	}
	pg := render(t, file)
	if len(pg.requests) == 0 {
		t.Errorf("no network request seen for a remote image")
	}
	if len(pg.console) == 0 {
		t.Errorf("no console error seen for console.error")
	}
}
