package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/report/reporttest"
)

func reportApp(out io.Writer) *cli.App {
	app := &cli.App{Name: "pmhub", Commands: []*cli.Command{reportCommand(), exportCommand()}, ExitErrHandler: func(*cli.Context, error) {}}
	app.Writer, app.ErrWriter = out, out
	return app
}

// synthData writes two synthetic sessions into a hub data folder and returns it.
func synthData(t *testing.T) (data string, a, b string) {
	t.Helper()
	data = t.TempDir()
	sa, sb := reporttest.Small(), reporttest.Small()
	sb.Session, sb.WorkersPerHost = "20260101_000100_d4e5f6", 2
	for _, s := range []reporttest.Spec{sa, sb} {
		if err := reporttest.Write(hub.SessionDir(data, s.Session), s); err != nil {
			t.Fatal(err)
		}
	}
	return data, sa.Session, sb.Session
}

// TestReportCommand runs `pmhub report` and `--compare` on sessions in a data folder and by folder
// path, and checks the usage errors.
func TestReportCommand(t *testing.T) {
	data, a, b := synthData(t)
	out := filepath.Join(t.TempDir(), "r.html")
	var log bytes.Buffer
	if err := reportApp(&log).Run([]string{"pmhub", "report", "--data", data, "-o", out, a}); err != nil {
		t.Fatalf("report: %v\n%s", err, log.String())
	}
	page, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"kv-usage", "step-time", "step-dist", "graph-modes", "padding", "expert-load", "gpu-util", "gpu-mem", "batch-tokens", "batch-reqs", "findings", "metadata"} {
		if !bytes.Contains(page, []byte(`id="`+id+`"`)) {
			t.Errorf("report has no %s section", id)
		}
	}
	// (SVG namespace URIs are names, not requests; the browser test watches the network itself.)
	for _, bad := range []string{"<script", "<link", "src=", `href="http`, "url(", "@import", "ZgotmplZ"} {
		if bytes.Contains(page, []byte(bad)) {
			t.Errorf("report contains %q: it must be self-contained", bad)
		}
	}
	// By folder path, compared with the second session.
	cmp := filepath.Join(t.TempDir(), "c.html")
	if err := reportApp(&log).Run([]string{"pmhub", "report", "-o", cmp, "--compare", b, "--data", data, hub.SessionDir(data, a)}); err != nil {
		t.Fatalf("report --compare: %v\n%s", err, log.String())
	}
	page, _ = os.ReadFile(cmp)
	if !bytes.Contains(page, []byte(`id="deltas"`)) || !bytes.Contains(page, []byte(`id="b-kv-usage"`)) {
		t.Error("comparison page lacks the delta table or B's plots")
	}
	// Flags may follow SESSION.
	after := filepath.Join(t.TempDir(), "after.html")
	if err := reportApp(&log).Run([]string{"pmhub", "report", "--data", data, a, "-o", after}); err != nil {
		t.Fatalf("report SESSION -o: %v\n%s", err, log.String())
	}
	if _, err := os.Stat(after); err != nil {
		t.Errorf("-o after SESSION: %v", err)
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no session", []string{"report", "--data", data}, "give one SESSION"},
		{"unknown session", []string{"report", "--data", data, "nope"}, `no session "nope"`},
		{"unknown compare", []string{"report", "--data", data, "--compare", "nope", a}, `--compare: no session "nope"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := reportApp(io.Discard).Run(append([]string{"pmhub"}, tt.args...))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// TestReportServed starts a real hub over a data folder with a finished session and serves its
// report through the handler `pmhub serve` registers.
func TestReportServed(t *testing.T) {
	data, a, b := synthData(t)
	h, err := hub.New(hub.Config{DataDir: data, Listen: "127.0.0.1:-1", SessionIdle: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mux := http.NewServeMux()
	for _, add := range HTTPHandlers {
		add(mux, h)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/report/"); code != 200 || !strings.Contains(body, a) {
		t.Errorf("GET /report/: %d, lists %q: %v", code, a, strings.Contains(body, a))
	}
	code, body := get("/report/" + a)
	if code != 200 || !strings.Contains(body, `id="expert-load"`) || !strings.Contains(body, "<svg") {
		t.Errorf("GET /report/%s: %d, no plots", a, code)
	}
	if code, body := get("/report/" + a + "?compare=" + b); code != 200 || !strings.Contains(body, `id="deltas"`) {
		t.Errorf("GET /report/%s?compare=%s: %d, no delta table", a, b, code)
	}
	if code, _ := get("/report/" + a + "?compare=20990101_000000_ffffff"); code != 404 {
		t.Errorf("compare with an unknown session: %d, want 404", code)
	}
	if code, body := get("/report/20990101_000000_ffffff"); code != 404 || !strings.Contains(body, "no session") {
		t.Errorf("unknown session: %d %q, want 404", code, body)
	}
}
