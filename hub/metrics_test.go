package hub

import (
	"bytes"
	"io"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// TestMetricsPerRankSeriesLiveThenDropped runs a real hub on the wire contract with the metrics
// hook, publishes a worker's step times and the engine's KV usage, and checks the per-rank series
// and the health series on /metrics; once the session ends (idle, by the hub's clock) its series
// are gone.
func TestMetricsPerRankSeriesLiveThenDropped(t *testing.T) {
	var skew atomic.Int64 // the hub's clock runs ahead by this much
	m := NewMetrics()
	s, _ := runHub(t, Config{DataDir: t.TempDir(), SessionIdle: time.Minute, Observe: m.Observe,
		Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
	m.Attach(s)

	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pub := func(proc, kind string, p *pmpb.Process, evs ...*pmpb.Event) {
		b, err := gproto.Marshal(proto.Stamp(&pmpb.EventBatch{Process: p, Events: evs}))
		if err != nil {
			t.Fatal(err)
		}
		// A request gets JetStream's ack: the stream holds the batch before the test goes on.
		if _, err := nc.Request(proto.EventSubject("S1", "host-a", proc, kind), b, 10*time.Second); err != nil {
			t.Fatalf("publish %s %s: %v", proc, kind, err)
		}
	}
	now := time.Now().UnixNano()
	worker := &pmpb.Process{Session: "S1", Host: "host-a", Pid: 11, Role: proto.RoleWorker, Tp: 2, Ep: -1, Rank: 2}
	// The worker's agent places it in a multi-node instance, on node rank 1: its series carry both.
	node := int32(1)
	hello := gproto.Clone(worker).(*pmpb.Process)
	hello.InstanceKey, hello.NodeRank = "mp:10.0.0.1:29500", &node
	hb, err := gproto.Marshal(proto.Stamp(&pmpb.Lifecycle{Process: hello, TsNs: now, Record: &pmpb.Lifecycle_Hello_{Hello: &pmpb.Lifecycle_Hello{}}}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Request(proto.LifeSubject("S1", "host-a", "w2"), hb, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	engine := &pmpb.Process{Session: "S1", Host: "host-a", Pid: 10, Role: proto.RoleEngineCore, Dp: 0, Pp: -1, Tp: -1, Ep: -1, Rank: -1}
	pub("w2", proto.KindForwardPass, worker,
		&pmpb.Event{Kind: proto.KindForwardPass, Table: "forward_pass_timing", Seq: 1, Step: 1, TsNs: now, Cols: map[string]*pmpb.Value{"cpu_ms": {V: &pmpb.Value_D{D: 3}}}},
		&pmpb.Event{Kind: proto.KindForwardPass, Table: "forward_pass_timing", Seq: 2, Step: 2, TsNs: now + 1, Cols: map[string]*pmpb.Value{"cpu_ms": {V: &pmpb.Value_D{D: 5}}}})
	pub("eng0", proto.KindKVCache, engine,
		&pmpb.Event{Kind: proto.KindKVCache, Table: "kv_cache_usage", Seq: 1, Step: 1, TsNs: now, Cols: map[string]*pmpb.Value{"usage": {V: &pmpb.Value_D{D: 0.75}}}})
	// eng0 does not know its token budget (token_util an empty cell), eng1 does: only eng1 has the gauge.
	engine1 := &pmpb.Process{Session: "S1", Host: "host-a", Pid: 12, Role: proto.RoleEngineCore, Dp: 1, Pp: -1, Tp: -1, Ep: -1, Rank: -1}
	pub("eng0", proto.KindBatchUtil, engine,
		&pmpb.Event{Kind: proto.KindBatchUtil, Table: "batch_utilization", Seq: 2, Step: 1, TsNs: now, Cols: map[string]*pmpb.Value{"scheduled_tokens": {V: &pmpb.Value_I{I: 40}}}})
	pub("eng1", proto.KindBatchUtil, engine1,
		&pmpb.Event{Kind: proto.KindBatchUtil, Table: "batch_utilization", Seq: 1, Step: 1, TsNs: now, Cols: map[string]*pmpb.Value{"scheduled_tokens": {V: &pmpb.Value_I{I: 64}}, "token_budget": {V: &pmpb.Value_I{I: 128}}, "token_util": {V: &pmpb.Value_D{D: 0.5}}}})
	agent := &pmpb.Process{Session: "S1", Host: "host-a", Pid: 9, Role: proto.RoleAgent, Dp: -1, Pp: -1, Tp: -1, Ep: -1, Rank: -1}
	pub(proto.ProcAgent, proto.KindGPU, agent,
		&pmpb.Event{Kind: proto.KindGPU, Table: "gpu_metrics", Seq: 1, Step: -1, TsNs: now, Cols: map[string]*pmpb.Value{"gpu_index": {V: &pmpb.Value_I{I: 0}}, "util_gpu": {V: &pmpb.Value_D{D: 37}}}})

	h := m.Handler()
	scrape := func() string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		return string(b)
	}
	want := []string{
		`profilemate_step_wall_seconds_count{host="host-a",instance_key="mp:10.0.0.1:29500",node_rank="1",proc="w2",rank="2",session="S1"} 2`,
		`profilemate_step_wall_seconds_sum{host="host-a",instance_key="mp:10.0.0.1:29500",node_rank="1",proc="w2",rank="2",session="S1"} 0.008`,
		`profilemate_kv_cache_usage_ratio{host="host-a",instance_key="",node_rank="",proc="eng0",rank="",session="S1"} 0.75`,
		`profilemate_batch_token_utilization_ratio{host="host-a",instance_key="",node_rank="",proc="eng1",rank="",session="S1"} 0.5`,
		`profilemate_gpu_utilization_ratio{gpu="0",host="host-a",session="S1"} 0.37`,
		// The health series: rows are counted once their round is committed, after the batch
		// was observed, so they are polled for together with the per-rank series.
		"profilemate_hub_rows_total 6", "profilemate_hub_sessions 1", "profilemate_hub_consumer_pending_messages 0",
	}
	var body, missing string
	defer func() {
		if t.Failed() && missing != "" {
			t.Logf("last scrape lacked %q:\n%s", missing, body)
		}
	}()
	waitFor(t, "per-rank series", func() bool {
		body = scrape()
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing = w
				return false
			}
		}
		missing = ""
		return true
	})
	if strings.Contains(body, `profilemate_batch_token_utilization_ratio{host="host-a",instance_key="",node_rank="",proc="eng0"`) {
		t.Fatalf("token utilisation exported for an engine whose budget is unknown:\n%s", body)
	}
	promtoolCheck(t, body)

	skew.Store(int64(time.Hour)) // idle for an hour by the hub's clock: the session ends
	waitFor(t, "session end", func() bool {
		for _, si := range s.Sessions() {
			if si.Session == "S1" && si.Status != StatusActive {
				return true
			}
		}
		return false
	})
	body = scrape()
	if strings.Contains(body, `session="S1"`) {
		t.Fatalf("series of the ended session still exported:\n%s", body)
	}
}

// promtoolCheck runs Prometheus's own linter (`promtool check metrics`, Debian package prometheus,
// installed by scripts/setup.sh) on an exposition body and fails on any finding.
func promtoolCheck(t *testing.T, body string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found (scripts/setup.sh installs the Debian package prometheus): %v", err)
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s\n--- /metrics:\n%s", err, out, body)
	}
}

func TestRankOf(t *testing.T) {
	for tok, want := range map[string]string{"w0": "0", "w13": "13", "eng0": "", "api1": "", "p4242": "", "agent": ""} {
		if got := rankOf(tok); got != want {
			t.Errorf("rankOf(%q) = %q, want %q", tok, got, want)
		}
	}
}

// Every column the series read exists in the contract (bound by name through proto.OwnIndex),
// and a column the contract lacks is an error naming it.
func TestMetricColumnsBind(t *testing.T) {
	if _, err := bindColumns(proto.OwnIndex); err != nil {
		t.Fatal(err)
	}
	metricColumns["kv_cache_usage"] = append(metricColumns["kv_cache_usage"], "no_such_column")
	defer func() { metricColumns["kv_cache_usage"] = metricColumns["kv_cache_usage"][:1] }()
	if _, err := bindColumns(proto.OwnIndex); err == nil || !strings.Contains(err.Error(), "kv_cache_usage.no_such_column") {
		t.Fatalf("binding a missing column: %v, want an error naming it", err)
	}
}
