package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
	"github.com/profilemate/profilemate/report"
)

// rotatedSession runs a real hub with rotation by size and publishes, for two workers, one
// forward_pass_timing row a minute for 30 minutes from t0 (cpu_ms = the minute), through the wire
// contract; it returns once every row is on disk, in several segments.
func rotatedSession(t *testing.T) (h *hub.Server, data string, t0 time.Time) {
	t.Helper()
	data = t.TempDir()
	var err error
	h, err = hub.New(hub.Config{DataDir: data, Listen: "127.0.0.1:-1", SessionIdle: time.Hour, RotateBytes: 1500})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := h.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; h.Close() })
	nc, err := nats.Connect(h.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	t0 = time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	for i := 0; i < 30; i++ {
		for rank := int32(0); rank < 2; rank++ {
			p := &pmpb.Process{Session: "LONG", Host: "h1", Pid: 100 + int64(rank), Role: proto.RoleWorker, Tp: rank, Ep: -1, Rank: rank}
			eb := proto.Stamp(&pmpb.EventBatch{Process: p, Events: []*pmpb.Event{{Kind: proto.KindForwardPass, Table: "forward_pass_timing",
				Seq: uint64(i + 1), Step: int64(i + 1), TsNs: t0.Add(time.Duration(i) * time.Minute).UnixNano(),
				Cols: map[string]*pmpb.Value{"cpu_ms": dv(float64(i))}}}})
			b, err := gproto.Marshal(eb)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := nc.Request(proto.EventSubject("LONG", "h1", fmt.Sprintf("w%d", rank), proto.KindForwardPass), b, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var rows int64
		dirs, _ := hub.Segments(data, "LONG")
		for _, d := range dirs {
			if m, err := hub.ReadMetadata(d); err == nil {
				rows += m.Rows["forward_pass_timing"]
			}
		}
		if rows == 60 {
			if len(dirs) < 3 {
				t.Fatalf("%d segments, want several", len(dirs))
			}
			return h, data, t0
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 60 rows on disk", rows)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func windowApp(out *bytes.Buffer) *cli.App {
	app := &cli.App{Name: "pmhub", Commands: []*cli.Command{sessionsCommand(), showCommand(), reportCommand(), exportCommand()},
		ExitErrHandler: func(*cli.Context, error) {}}
	app.Writer, app.ErrWriter = out, out
	return app
}

// TestShowReportExportTimeRangeAcrossSegments: a rotated session is one line in `pmhub sessions`
// with its segment count and all its rows; show, report and export read every segment, and
// --since/--until select exactly the rows of that range of the aligned clock across segments.
func TestShowReportExportTimeRangeAcrossSegments(t *testing.T) {
	h, data, t0 := rotatedSession(t)
	dirs, _ := hub.Segments(data, "LONG")
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := windowApp(&out).Run(append([]string{"pmhub"}, args...)); err != nil {
			t.Fatalf("pmhub %v: %v\n%s", args, err, out.String())
		}
		return out.String()
	}

	var list []struct {
		Session  string           `json:"session"`
		Rows     map[string]int64 `json:"rows"`
		Segments int              `json:"segments"`
	}
	if err := json.Unmarshal([]byte(run("sessions", "--data", data, "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Session != "LONG" || list[0].Segments != len(dirs) || list[0].Rows["forward_pass_timing"] != 60 {
		t.Fatalf("sessions --json: %+v, want LONG once with %d segments and 60 rows", list, len(dirs))
	}
	if out := run("sessions", "--data", data); strings.Count(out, "LONG") != 1 || !strings.Contains(out, "SEGMENTS") {
		t.Fatalf("sessions:\n%s", out)
	}

	show := func(args ...string) Summary {
		t.Helper()
		var s Summary
		if err := json.Unmarshal([]byte(run(append([]string{"show", "--data", data, "--json"}, args...)...)), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	all := show("LONG")
	if all.Steps["h1/w0"] != 30 || all.Steps["h1/w1"] != 30 || all.Segments != len(dirs) || all.Dir != hub.SessionDir(data, "LONG") {
		t.Fatalf("show over all segments: steps %v segments %d dir %s", all.Steps, all.Segments, all.Dir)
	}
	since, until := t0.Add(10*time.Minute).Format(time.RFC3339), t0.Add(20*time.Minute).Format(time.RFC3339)
	part := show("--since", since, "--until", until, "LONG")
	if part.Steps["h1/w0"] != 10 || part.Steps["h1/w1"] != 10 {
		t.Fatalf("show %s..%s: steps %v, want 10 per worker (minutes 10-19)", since, until, part.Steps)
	}
	if len(part.StepTimes) != 2 || part.StepTimes[0].MedianCPUMs != 14.5 {
		t.Fatalf("show %s..%s: step times %+v, want median 14.5 ms", since, until, part.StepTimes)
	}
	if !strings.Contains(part.Window, "segments") || strings.HasPrefix(part.Window, fmt.Sprintf("%d of", len(dirs))) {
		t.Errorf("show window %q: want fewer segments read than the session's %d", part.Window, len(dirs))
	}
	if open := show("--since", t0.Add(25*time.Minute).Format(time.RFC3339), "LONG"); open.Steps["h1/w0"] != 5 {
		t.Errorf("--since alone: steps %v, want 5 per worker", open.Steps)
	}
	if out := run("show", "--data", data, "--until", since, "LONG"); !strings.Contains(out, "read: ") {
		t.Errorf("show with a range does not say what it read:\n%s", out)
	}

	// report: the same range, by the page's own counts; and the command end to end.
	view, err := openView(data, "LONG", hub.Window{Since: t0.Add(10 * time.Minute), Until: t0.Add(20 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := report.Build(view.Dir, report.Options{SkipAnalysis: true})
	view.Close()
	if err != nil {
		t.Fatal(err)
	}
	if rep.Stats.Rows["forward_pass_timing"] != 20 {
		t.Errorf("report over the range: %d step rows, want 20", rep.Stats.Rows["forward_pass_timing"])
	}
	if _, err := os.Stat(view.Dir); !os.IsNotExist(err) {
		t.Errorf("temporary folder %s left behind", view.Dir)
	}
	page := filepath.Join(t.TempDir(), "r.html")
	run("report", "--data", data, "-o", page, "--since", since, "--until", until, "--no-analysis", "LONG")
	if b, err := os.ReadFile(page); err != nil || !bytes.Contains(b, []byte(`id="step-time"`)) {
		t.Errorf("report page: %v", err)
	}

	// export: parquet of the range has exactly its rows.
	pq := filepath.Join(t.TempDir(), "pq")
	if out := run("export", "--data", data, "--format", "parquet", "-o", pq, "--since", since, "--until", until, "LONG"); !strings.Contains(out, "forward_pass_timing.parquet\t20 rows") {
		t.Errorf("export --since/--until:\n%s", out)
	}
	if out := run("export", "--data", data, "--format", "parquet", "-o", pq+"2", "LONG"); !strings.Contains(out, "forward_pass_timing.parquet\t60 rows") {
		t.Errorf("export of all segments:\n%s", out)
	}

	// The served page takes the range as query parameters; a bad one is a 400 naming it.
	mux := http.NewServeMux()
	reportHTTP(mux, h)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, tt := range []struct {
		query string
		code  int
		want  string
	}{
		{"?since=" + url.QueryEscape(since) + "&until=" + url.QueryEscape(until), 200, `id="step-time"`},
		{"?since=yesterday", 400, "RFC 3339"},
	} {
		resp, err := http.Get(srv.URL + "/report/LONG" + tt.query)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code || !bytes.Contains(body, []byte(tt.want)) {
			t.Errorf("GET /report/LONG%s: %d, want %d with %q", tt.query, resp.StatusCode, tt.code, tt.want)
		}
	}

	// Bad ranges are refused with both forms named.
	for _, args := range [][]string{{"--since", "yesterday"}, {"--since", until, "--until", since}} {
		var out bytes.Buffer
		err := windowApp(&out).Run(append(append([]string{"pmhub", "show", "--data", data}, args...), "LONG"))
		if err == nil {
			t.Errorf("show %v: accepted", args)
		} else if ec, ok := err.(cli.ExitCoder); !ok || ec.ExitCode() != 2 {
			t.Errorf("show %v: %v, want exit code 2", args, err)
		}
	}
}

// TestParseWhen: RFC 3339 times as given, durations back from now, anything else refused.
func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{"", time.Time{}, false},
		{"2026-11-30T08:00:00Z", time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC), false},
		{"2026-11-30T09:00:00.5+01:00", time.Date(2026, 11, 30, 8, 0, 0, 5e8, time.UTC), false},
		{"3h", now.Add(-3 * time.Hour), false},
		{"90s", now.Add(-90 * time.Second), false},
		{"-3h", time.Time{}, true},
		{"2026-11-30", time.Time{}, true},
		{"yesterday", time.Time{}, true},
	} {
		got, err := parseWhen("since", tt.in, now)
		if tt.bad {
			if err == nil || !strings.Contains(err.Error(), "RFC 3339") || !strings.Contains(err.Error(), "duration") {
				t.Errorf("%q: got %v, %v; want an error naming both forms", tt.in, got, err)
			}
			continue
		}
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("%q: got %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// TestShowEmptyRangeAndRetentionNotice: a range after every row says there are no rows in it (with
// when the session's rows are) instead of printing an empty graph-mode line, a 0% KV peak and
// "1 of N segments"; after retention removed the oldest segment (its folder gone, as the hub's
// housekeeping leaves it), a range reaching before the oldest row left says so, and one starting
// later does not.
func TestShowEmptyRangeAndRetentionNotice(t *testing.T) {
	_, data, t0 := rotatedSession(t)
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := windowApp(&out).Run(append([]string{"pmhub", "show", "--data", data}, args...)); err != nil {
			t.Fatalf("pmhub show %v: %v\n%s", args, err, out.String())
		}
		return out.String()
	}
	future := run("--since", t0.Add(2*time.Hour).Format(time.RFC3339), "LONG")
	for _, want := range []string{"no rows in this range", "read: no rows from 2026-11-30T10:00:00Z to -; the session's rows are from 2026-11-30T08:00:00Z to 2026-11-30T08:29:00Z"} {
		if !strings.Contains(future, want) {
			t.Errorf("show of a range after every row lacks %q:\n%s", want, future)
		}
	}
	for _, bad := range []string{"CUDA graph modes", "KV cache usage peak", " segments"} {
		if strings.Contains(future, bad) {
			t.Errorf("show of a range after every row says %q:\n%s", bad, future)
		}
	}
	if all := run("LONG"); strings.Contains(all, "retention") {
		t.Errorf("note about retention before any segment was removed:\n%s", all)
	}

	dirs, _ := hub.Segments(data, "LONG")
	if err := os.RemoveAll(dirs[0]); err != nil {
		t.Fatal(err)
	}
	next, err := hub.ReadMetadata(dirs[1])
	if err != nil {
		t.Fatal(err)
	}
	kept := time.Unix(0, next.Segment.FirstAlignedNS).UTC().Format(time.RFC3339)
	want := "note: segment 0 was removed by retention: no rows before " + kept
	for _, args := range [][]string{{"LONG"}, {"--since", t0.Format(time.RFC3339), "LONG"}} {
		if out := run(args...); !strings.Contains(out, want) {
			t.Errorf("show %v lacks %q:\n%s", args, want, out)
		}
	}
	if out := run("--since", t0.Add(25*time.Minute).Format(time.RFC3339), "LONG"); strings.Contains(out, "retention") {
		t.Errorf("a range after the removed segment notes retention:\n%s", out)
	}
}
