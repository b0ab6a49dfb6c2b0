package deploy

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

var (
	metricRE = regexp.MustCompile(`\bprofilemate_[a-z0-9_]+`)
	// matcherRE finds a series selector's label matchers: metric{label=~"...",...}.
	matcherRE = regexp.MustCompile(`(profilemate_[a-z0-9_]+)\{([^}]*)\}`)
	labelRE   = regexp.MustCompile(`([a-z_]+)\s*=~`)
)

// dashboardLabels returns, per metric, the label names the dashboard's selectors match on.
func dashboardLabels(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile("grafana/profilemate.json")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, m := range matcherRE.FindAllStringSubmatch(strings.ReplaceAll(string(b), `\"`, `"`), -1) {
		for _, l := range labelRE.FindAllStringSubmatch(m[2], -1) {
			out[m[1]] = append(out[m[1]], l[1])
		}
	}
	return out
}

// dashboardMetrics returns every metric name the Grafana dashboard's queries and variables use.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("grafana/profilemate.json")
	if err != nil {
		t.Fatal(err)
	}
	var any map[string]any
	if err := json.Unmarshal(b, &any); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	set := map[string]bool{}
	for _, m := range metricRE.FindAllString(string(b), -1) {
		set[m] = true
	}
	var out []string
	for m := range set {
		out = append(out, m)
	}
	sort.Strings(out)
	if len(out) < 8 {
		t.Fatalf("dashboard queries only %v", out)
	}
	return out
}

// sampleValue is a plausible value for a column of the given type, so that every table yields
// every series the hub derives from it.
func sampleValue(c proto.Column) *pmpb.Value {
	switch c.Type {
	case proto.TypeInt:
		return &pmpb.Value{V: &pmpb.Value_I{I: 1}}
	case proto.TypeFloat:
		return &pmpb.Value{V: &pmpb.Value_D{D: 0.5}}
	case proto.TypeBool:
		return &pmpb.Value{V: &pmpb.Value_B{B: true}}
	}
	if strings.Contains(c.Name, "mode") {
		return &pmpb.Value{V: &pmpb.Value_S{S: "FULL"}}
	}
	return &pmpb.Value{V: &pmpb.Value_S{S: "x"}}
}

// TestDashboardMetricsExist runs a real hub with its /metrics, publishes one row of every table
// over NATS as an agent would, and checks that every metric the dashboard queries is exported.
func TestDashboardMetricsExist(t *testing.T) {
	want := dashboardMetrics(t)
	wantLabels := dashboardLabels(t)
	if len(wantLabels["profilemate_kv_cache_usage_ratio"]) == 0 {
		t.Fatalf("no label matchers found in the dashboard: %v", wantLabels)
	}
	m := hub.NewMetrics()
	s, err := hub.New(hub.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:-1", Observe: m.Observe})
	if err != nil {
		t.Fatal(err)
	}
	m.Attach(s)
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	now := time.Now().UnixNano()
	procs := map[string]*pmpb.Process{
		proto.RoleWorker:     {Session: "dash", Host: "gpu-1", Pid: 11, Role: proto.RoleWorker, Dp: 0, Pp: 0, Tp: 1, Ep: -1, Rank: 1},
		proto.RoleEngineCore: {Session: "dash", Host: "gpu-1", Pid: 10, Role: proto.RoleEngineCore, Dp: 0, Pp: -1, Tp: -1, Ep: -1, Rank: -1},
		proto.RoleAgent:      {Session: "dash", Host: "gpu-1", Pid: 9, Role: proto.RoleAgent, Dp: -1, Pp: -1, Tp: -1, Ep: -1, Rank: -1},
	}
	// The agent's hellos place the worker and the engine in a multi-node instance (node rank 1).
	node := int32(1)
	for _, p := range []*pmpb.Process{procs[proto.RoleWorker], procs[proto.RoleEngineCore]} {
		lp := gproto.Clone(p).(*pmpb.Process)
		lp.InstanceKey, lp.NodeRank = "mp:10.0.0.1:29500", &node
		b, err := gproto.Marshal(proto.Stamp(&pmpb.Lifecycle{Process: lp, TsNs: now,
			Record: &pmpb.Lifecycle_Hello_{Hello: &pmpb.Lifecycle_Hello{}}}))
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(proto.LifeSubject("dash", "gpu-1", proto.ProcToken(p.Role, int(p.Dp), int(p.Rank), int(p.Pid))), b); err != nil {
			t.Fatal(err)
		}
	}
	seq := uint64(0)
	for _, tab := range proto.Tables() {
		p := procs[proto.RoleWorker]
		switch tab.Kind {
		case proto.KindKVCache, proto.KindBatchUtil, proto.KindPreemption:
			p = procs[proto.RoleEngineCore]
		case proto.KindGPU:
			p = procs[proto.RoleAgent]
		}
		cols := map[string]*pmpb.Value{}
		for _, c := range tab.Columns {
			cols[c.Name] = sampleValue(c)
		}
		seq++
		ev := &pmpb.Event{Kind: tab.Kind, Table: tab.Table, Seq: seq, Step: 1, TsNs: now, Cols: cols}
		b, err := gproto.Marshal(proto.Stamp(&pmpb.EventBatch{Process: p, Events: []*pmpb.Event{ev}}))
		if err != nil {
			t.Fatal(err)
		}
		proc := proto.ProcToken(p.Role, int(p.Dp), int(p.Rank), int(p.Pid))
		if err := nc.Publish(proto.EventSubject("dash", "gpu-1", proc, tab.Kind), b); err != nil {
			t.Fatal(err)
		}
	}

	// One message the hub cannot decode, so the bad-message counter has a series too.
	if err := nc.Publish(proto.EventSubject("dash", "gpu-1", "w1", proto.KindKVCache), []byte("not protobuf")); err != nil {
		t.Fatal(err)
	}

	h := m.Handler()
	var missing []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(rec.Body)
		if err != nil {
			t.Fatalf("/metrics does not parse: %v", err)
		}
		names := map[string]bool{}
		labels := map[string]bool{} // metric/label with a non-empty value on some series
		for name, f := range fams {
			if len(f.GetMetric()) == 0 {
				continue
			}
			names[name] = true
			for _, m := range f.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetValue() != "" {
						labels[name+"/"+lp.GetName()] = true
						labels[name+"_bucket/"+lp.GetName()] = true
					}
				}
			}
			// A histogram's samples are queried by their suffixed names.
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				names[name+suf] = true
			}
		}
		missing = missing[:0]
		for _, w := range want {
			if !names[w] {
				missing = append(missing, w)
			}
		}
		for metric, ls := range wantLabels {
			for _, l := range ls {
				if !labels[metric+"/"+l] {
					missing = append(missing, metric+"{"+l+"}")
				}
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dashboard queries metrics a live hub does not export: %v", missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
