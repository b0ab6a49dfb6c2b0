package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

func dv(f float64) *pmpb.Value { return &pmpb.Value{V: &pmpb.Value_D{D: f}} }
func iv(i int64) *pmpb.Value   { return &pmpb.Value{V: &pmpb.Value_I{I: i}} }
func sv(s string) *pmpb.Value  { return &pmpb.Value{V: &pmpb.Value_S{S: s}} }

// TestSummaryFromHubSession writes a session through a real hub (embedded NATS, wire contract) and
// checks show's figures against the values sent: medians, skew, graph-mode shares, KV peak,
// preemptions, expert ranking (unobservable rows left out); a session with one table only
// summarises without error.
func TestSummaryFromHubSession(t *testing.T) {
	data := t.TempDir()
	h, err := hub.New(hub.Config{DataDir: data, Listen: "127.0.0.1:-1", SessionIdle: time.Hour})
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

	now := time.Now().UnixNano()
	seq := map[string]uint64{}
	pub := func(session string, p *pmpb.Process, proc, kind, table string, cols ...map[string]*pmpb.Value) {
		eb := proto.Stamp(&pmpb.EventBatch{Process: p})
		for _, c := range cols {
			// A process numbers all its events in one sequence, whatever their kind.
			k := session + "/" + proc
			seq[k]++
			eb.Events = append(eb.Events, &pmpb.Event{Kind: kind, Table: table, Seq: seq[k], Step: int64(seq[k]), TsNs: now + int64(seq[k]), Cols: c})
		}
		b, err := gproto.Marshal(eb)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(proto.EventSubject(session, p.Host, proc, kind), b); err != nil {
			t.Fatal(err)
		}
	}
	worker := func(session string, rank int32) *pmpb.Process {
		return &pmpb.Process{Session: session, Host: "h1", Pid: 100 + int64(rank), Role: proto.RoleWorker, Tp: rank, Ep: -1, Rank: rank}
	}
	engine := &pmpb.Process{Session: "S", Host: "h1", Pid: 99, Role: proto.RoleEngineCore, Pp: -1, Tp: -1, Ep: -1, Rank: -1}
	cpu := func(ms float64) map[string]*pmpb.Value { return map[string]*pmpb.Value{"cpu_ms": dv(ms)} }
	mode := func(m string) map[string]*pmpb.Value { return map[string]*pmpb.Value{"runtime_mode": sv(m)} }
	pub("S", worker("S", 0), "w0", proto.KindForwardPass, "forward_pass_timing", cpu(1), cpu(3), cpu(2))
	pub("S", worker("S", 1), "w1", proto.KindForwardPass, "forward_pass_timing", cpu(4), cpu(6))
	pub("S", worker("S", 0), "w0", proto.KindCudaGraph, "cuda_graph_usage", mode("FULL"), mode("FULL"), mode("NONE"))
	pub("S", worker("S", 1), "w1", proto.KindCudaGraph, "cuda_graph_usage", mode("FULL"))
	pub("S", engine, "eng0", proto.KindKVCache, "kv_cache_usage",
		map[string]*pmpb.Value{"usage": dv(0.2)}, map[string]*pmpb.Value{"usage": dv(0.9)}, map[string]*pmpb.Value{"usage": dv(0.5)})
	pub("S", engine, "eng0", proto.KindPreemption, "preemption_events",
		map[string]*pmpb.Value{"request_id": sv("r1")}, map[string]*pmpb.Value{"request_id": sv("r2")})
	pub("S", worker("S", 0), "w0", proto.KindMoEExpert, "moe_expert_selection",
		map[string]*pmpb.Value{"expert": iv(7), "count": iv(30), "status": sv("counted")},
		map[string]*pmpb.Value{"expert": iv(3), "count": iv(10), "status": sv("counted")},
		map[string]*pmpb.Value{"expert": iv(-1), "status": sv("unobservable")})
	pub("only-kv", &pmpb.Process{Session: "only-kv", Host: "h2", Pid: 5, Role: proto.RoleEngineCore, Pp: -1, Tp: -1, Ep: -1, Rank: -1},
		"eng0", proto.KindKVCache, "kv_cache_usage", map[string]*pmpb.Value{"usage": dv(0.3)})

	waitRows := func(session string, n int64) {
		deadline := time.Now().Add(time.Minute)
		for {
			m, err := hub.ReadMetadata(hub.SessionDir(data, session))
			if err == nil {
				var rows int64
				for _, r := range m.Rows {
					rows += r
				}
				if rows == n {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("session %s did not reach %d rows: %v", session, n, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitRows("S", 17)
	waitRows("only-kv", 1)

	s, err := summarize(hub.SessionDir(data, "S"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Hosts["h1"], " "); len(s.Hosts) != 1 || !strings.Contains(got, "w0") || !strings.Contains(got, "w1") || !strings.Contains(got, "eng0") {
		t.Fatalf("hosts %v", s.Hosts)
	}
	if s.Layout["h1"] != "2 workers: TP 2, PP 1, DP 1" || len(s.Ranks) != 2 || s.Ranks[1].Proc != "w1" || s.Ranks[1].TP != 1 {
		t.Fatalf("layout %v ranks %+v", s.Layout, s.Ranks)
	}
	if s.Steps["h1/w0"] != 3 {
		t.Fatalf("steps %v", s.Steps)
	}
	if len(s.StepTimes) != 2 || s.StepTimes[0].Proc != "w0" || s.StepTimes[0].MedianCPUMs != 2 || s.StepTimes[0].Steps != 3 ||
		s.StepTimes[1].Proc != "w1" || s.StepTimes[1].MedianCPUMs != 5 {
		t.Fatalf("step times %+v, want w0 median 2 over 3 steps, w1 median 5", s.StepTimes)
	}
	if s.StepSkew != 2.5 {
		t.Fatalf("skew %v, want 2.5", s.StepSkew)
	}
	if s.GraphModes["FULL"] != 0.75 || s.GraphModes["NONE"] != 0.25 {
		t.Fatalf("graph modes %v", s.GraphModes)
	}
	if s.KVPeak != 0.9 || s.Preemptions != 2 {
		t.Fatalf("KV peak %v preemptions %d", s.KVPeak, s.Preemptions)
	}
	if len(s.TopExperts) != 2 || s.TopExperts[0].Expert != 7 || math.Abs(s.TopExperts[0].Share-0.75) > 1e-9 || s.TopExperts[1].Expert != 3 {
		t.Fatalf("experts %+v", s.TopExperts)
	}
	var buf bytes.Buffer
	s.print(&buf)
	for _, w := range []string{"FULL 75%", "KV cache usage peak: 90.0%", "preemptions: 2", "#7 75.0%", "skew slowest/fastest 2.50"} {
		if !strings.Contains(buf.String(), w) {
			t.Fatalf("show output lacks %q:\n%s", w, buf.String())
		}
	}

	only, err := summarize(hub.SessionDir(data, "only-kv"))
	if err != nil {
		t.Fatalf("session with one table: %v", err)
	}
	if only.KVPeak != 0.3 || only.Preemptions != 0 || len(only.StepTimes) != 0 || len(only.TopExperts) != 0 {
		t.Fatalf("one-table summary %+v", only)
	}
	buf.Reset()
	only.print(&buf) // must not fail on empty sections
	if _, err := summarize(filepath.Join(data, "nope")); err == nil {
		t.Fatal("summary of a missing session did not fail")
	}

	// The list, through the command itself.
	out := runApp(t, "sessions", "--data", data, "--json")
	var metas []hub.Metadata
	if err := json.Unmarshal([]byte(out), &metas); err != nil || len(metas) != 2 {
		t.Fatalf("sessions --json: %v\n%s", err, out)
	}
	if out := runApp(t, "sessions", "--data", data); !strings.Contains(out, "only-kv") || !strings.Contains(out, "active") {
		t.Fatalf("sessions list:\n%s", out)
	}
}

// runApp runs pmhub's command line in-process and returns its standard output.
func runApp(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	app := &cli.App{Name: "pmhub", Commands: []*cli.Command{sessionsCommand(), showCommand(), tailCommand()}}
	app.Writer, app.ErrWriter = &out, &out
	if err := app.Run(append([]string{"pmhub"}, args...)); err != nil {
		t.Fatalf("pmhub %v: %v\n%s", args, err, out.String())
	}
	return out.String()
}

// TestShowColumnsExist: every column pmhub show reads is bound by name to proto's schema; renaming
// one in a copy of the tables makes the binding fail, naming the column.
func TestShowColumnsExist(t *testing.T) {
	if err := bindColumns(proto.Default()); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join("..", "..", "proto", "tables")
	files, _ := filepath.Glob(filepath.Join(root, "*.json"))
	m := fstest.MapFS{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "kv_cache_usage.json" {
			b = bytes.Replace(b, []byte(`"name": "usage"`), []byte(`"name": "usage_ratio"`), 1)
		}
		m[filepath.Base(f)] = &fstest.MapFile{Data: b}
	}
	reg, err := proto.Load(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := bindColumns(reg); err == nil || !strings.Contains(err.Error(), `no column "usage"`) {
		t.Errorf("renamed column bound: %v", err)
	}
}
