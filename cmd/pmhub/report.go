package main

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/internal/cliapp"
	"github.com/profilemate/profilemate/report"
)

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:      "report",
		Usage:     "write one self-contained HTML page of a session: plots, findings, metadata (--compare: two sessions side by side)",
		ArgsUsage: "SESSION",
		Description: "SESSION is a session id under --data or a session folder; a rotated session is read across all its\n" +
			"segments, --since/--until narrow it to a time range. The page embeds everything it shows\n" +
			"(SVG plots, CSS; no script, no network) and opens offline. Series longer than --max-points are\n" +
			"downsampled into time buckets, and each plot says so.",
		Flags: []cli.Flag{
			dataFlag(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, EnvVars: []string{"PROFILEMATE_REPORT_OUTPUT"}, Usage: "HTML file to write (default: report-SESSION.html, or compare-A-B.html)"},
			&cli.StringFlag{Name: "compare", EnvVars: []string{"PROFILEMATE_REPORT_COMPARE"}, Usage: "a second SESSION (after) to compare SESSION (before) with"},
			&cli.IntFlag{Name: "max-points", Value: 2000, EnvVars: []string{"PROFILEMATE_REPORT_MAX_POINTS"}, Usage: "most points per plotted series before downsampling"},
			&cli.BoolFlag{Name: "no-analysis", EnvVars: []string{"PROFILEMATE_REPORT_NO_ANALYSIS"}, Usage: "do not run the in-tree analyses for a session without a findings table (large sessions: they cost more than the plots)"},
			&cli.IntFlag{Name: "sample-size", Value: 20000, EnvVars: []string{"PROFILEMATE_REPORT_SAMPLE_SIZE"}, Usage: "step times per rank kept for the distribution plot"},
			windowFlags()[0], windowFlags()[1],
		},
		Action: runReport,
	}
}

func runReport(c *cli.Context) error {
	arg, err := sessionArg(c)
	if err != nil {
		return err
	}
	for _, f := range []string{"max-points", "sample-size"} {
		if v := c.Int(f); v < 1 {
			return cliapp.Usage("--%s %d: must be positive", f, v)
		}
	}
	opt := report.Options{MaxPoints: c.Int("max-points"), SampleSize: c.Int("sample-size"), Analyzer: reportAnalyzer, SkipAnalysis: c.Bool("no-analysis")}
	w, err := window(c)
	if err != nil {
		return cliapp.AsUsage(err)
	}
	build := func(arg string) (*report.Report, error) {
		view, err := openViewOfLinked(c, arg, w, true)
		if err != nil {
			return nil, err
		}
		defer view.Close()
		return report.Build(view.Dir, opt)
	}
	a, err := build(arg)
	if err != nil {
		return err
	}
	out := c.String("output")
	var b *report.Report
	if cmp := c.String("compare"); cmp != "" {
		if b, err = build(cmp); err != nil {
			return fmt.Errorf("--compare: %w", err)
		}
		if out == "" {
			out = fmt.Sprintf("compare-%s-%s.html", a.Session.Meta.Session, b.Session.Meta.Session)
		}
	} else if out == "" {
		out = "report-" + a.Session.Meta.Session + ".html"
	}
	f, err := os.Create(out)
	if err != nil {
		return cli.Exit("pmhub report: "+err.Error(), 1)
	}
	if b != nil {
		err = report.WriteCompareHTML(f, a, b)
	} else {
		err = a.WriteHTML(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return cli.Exit("pmhub report: "+err.Error(), 1)
	}
	fmt.Fprintln(c.App.Writer, out)
	return nil
}

// reportAnalyzer computes findings for sessions without a findings table: the in-tree analyses.
var reportAnalyzer report.Analyzer = report.Library{}

// The hub's HTTP listener serves each session's report page: GET /report/ lists the sessions,
// GET /report/{session} renders that session's page as `pmhub report` writes it, and
// GET /report/{a}?compare={b} the comparison of a (before) with b (after).
func init() { HTTPHandlers = append(HTTPHandlers, reportHTTP) }

func reportHTTP(mux *http.ServeMux, h *hub.Server) {
	mux.HandleFunc("GET /report/{$}", func(w http.ResponseWriter, _ *http.Request) {
		list := h.Sessions()
		sort.Slice(list, func(i, j int) bool { return list[i].Session > list[j].Session })
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>ProfileMate sessions</title></head><body><h1>Sessions</h1><ul>")
		for _, s := range list {
			fmt.Fprintf(w, "<li><a href=\"%s\">%s</a> %s, hosts %s</li>", url.PathEscape(s.Session), html.EscapeString(s.Session),
				html.EscapeString(s.Status), html.EscapeString(strings.Join(s.Hosts, ", ")))
		}
		fmt.Fprint(w, "</ul></body></html>")
	})
	mux.HandleFunc("GET /report/{session}", func(w http.ResponseWriter, r *http.Request) {
		// ?since=&until= (as the command's flags) reads that range across a rotated session's
		// segments; without them the page shows the session's own folder (its live segment).
		q := r.URL.Query()
		now := time.Now()
		since, err1 := parseWhen("since", q.Get("since"), now)
		until, err2 := parseWhen("until", q.Get("until"), now)
		if err := errors.Join(err1, err2); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		win := hub.Window{Since: since, Until: until}
		build := func(id string) (*report.Report, int, error) {
			// Shared hubs serve every session: one this hub has no current copy of comes from its
			// checkpoint (hub.SessionFolder).
			dir, err := h.SessionFolder(r.Context(), id)
			if errors.Is(err, hub.ErrNoSession) {
				return nil, http.StatusNotFound, fmt.Errorf("no session %q on this hub (see /report/)", id)
			}
			if err != nil {
				return nil, http.StatusInternalServerError, fmt.Errorf("report: %w", err)
			}
			if !win.IsZero() {
				// dir is <root>/sessions/<id>.
				view, err := openView(filepath.Dir(filepath.Dir(dir)), id, win)
				if err != nil {
					return nil, http.StatusInternalServerError, fmt.Errorf("report: %w", err)
				}
				defer view.Close()
				dir = view.Dir
			}
			rep, err := report.Build(dir, report.Options{Analyzer: reportAnalyzer})
			if err != nil {
				return nil, http.StatusInternalServerError, fmt.Errorf("report: %w", err)
			}
			return rep, 0, nil
		}
		rep, code, err := build(r.PathValue("session"))
		if err != nil {
			http.Error(w, err.Error(), code)
			return
		}
		var b bytes.Buffer
		if other := r.URL.Query().Get("compare"); other != "" {
			var repB *report.Report
			if repB, code, err = build(other); err != nil {
				http.Error(w, "compare: "+err.Error(), code)
				return
			}
			err = report.WriteCompareHTML(&b, rep, repB)
		} else {
			err = rep.WriteHTML(&b)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		_, _ = w.Write(b.Bytes())
	})
}
