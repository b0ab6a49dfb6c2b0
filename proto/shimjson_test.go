package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto/pmpb"
)

func loadHellos(t *testing.T) map[int]*Hello {
	t.Helper()
	b, err := os.ReadFile("testdata/hellos.json")
	if err != nil {
		t.Fatal(err)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	out := map[int]*Hello{}
	for _, r := range raw {
		l, err := DecodeLine(r)
		if err != nil {
			t.Fatalf("hello fixture: %v", err)
		}
		out[l.Hello.PID] = l.Hello
	}
	return out
}

// generic parses a fixture as plain JSON, numbers kept as written, to check the protobuf
// conversion against values it did not compute itself.
func generic(t *testing.T, b []byte) map[string]any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func num(t *testing.T, v any) json.Number {
	t.Helper()
	n, ok := v.(json.Number)
	if !ok {
		t.Fatalf("%v is not a number", v)
	}
	return n
}

func TestGoldenFixtures(t *testing.T) {
	hellos := loadHellos(t)
	files, _ := filepath.Glob("testdata/batches/*.json")
	seen := map[string]bool{}
	for _, f := range files {
		kind := strings.TrimSuffix(filepath.Base(f), ".json")
		seen[kind] = true
		t.Run(kind, func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			l, err := DecodeLine(b)
			if err != nil {
				t.Fatal(err)
			}
			h := hellos[l.Batch.PID]
			if h == nil {
				t.Fatalf("no hello for pid %d", l.Batch.PID)
			}
			eb, err := ToEventBatch(h.Process(), l.Batch)
			if err != nil {
				t.Fatal(err)
			}
			g := generic(t, b)
			checkBatch(t, g, h, eb)
			tablesSeen := map[string]bool{}
			for _, e := range eb.Events {
				tablesSeen[e.Table] = true
				if e.Kind != kind {
					t.Errorf("fixture %s holds an event of kind %s", kind, e.Kind)
				}
			}
			for _, tb := range KindTables(kind) {
				if !tablesSeen[tb] {
					t.Errorf("fixture %s has no event of table %s", kind, tb)
				}
			}

			// protobuf round trip: same message, same CSV rows.
			wire, err := gproto.Marshal(eb)
			if err != nil {
				t.Fatal(err)
			}
			back, err := DecodeEventBatch(wire)
			if err != nil {
				t.Fatal(err)
			}
			if !gproto.Equal(eb, back) {
				t.Fatalf("round trip changed the batch:\n%v\n%v", eb, back)
			}
			checkBatch(t, g, h, back)
			for i, e := range eb.Events {
				r1, err := Row(eb.Process, e)
				if err != nil {
					t.Fatal(err)
				}
				r2, err := Row(back.Process, back.Events[i])
				if err != nil {
					t.Fatal(err)
				}
				if strings.Join(r1, "\x00") != strings.Join(r2, "\x00") {
					t.Errorf("event %d: rows differ after round trip: %q vs %q", i, r1, r2)
				}
				// CSV row → event gives the same columns back.
				_, pe, err := ParseRow(e.Table, Header(e.Table), r1)
				if err != nil {
					t.Fatal(err)
				}
				pe.Kind = e.Kind
				if !gproto.Equal(pe, e) {
					t.Errorf("event %d: CSV round trip:\n%v\n%v", i, e, pe)
				}
			}
		})
	}
	for _, k := range Kinds() {
		if !seen[k] {
			t.Errorf("no golden fixture for kind %s", k)
		}
	}
}

// checkBatch compares an EventBatch with the fixture's plain JSON, field for field.
func checkBatch(t *testing.T, g map[string]any, h *Hello, eb *pmpb.EventBatch) {
	t.Helper()
	if eb.SchemaMajor != SchemaMajor || eb.SchemaMinor != SchemaMinor {
		t.Errorf("schema %d.%d", eb.SchemaMajor, eb.SchemaMinor)
	}
	p := eb.Process
	if p.Session != h.Session || p.Host != h.Host || p.Pid != int64(h.PID) || p.Ppid != int64(h.PPID) ||
		p.Python != h.Python || p.Vllm != h.VLLM || p.GpuUuid != h.GPUUUID || p.Title != h.Title ||
		p.StartNs != h.StartNS || strings.Join(p.Argv, " ") != strings.Join(h.Argv, " ") {
		t.Errorf("process %v does not carry hello %+v", p, h)
	}
	id := g["ident"].(map[string]any)
	if p.Role != id["role"] || num(t, id["dp"]).String() != itoa(p.Dp) || num(t, id["pp"]).String() != itoa(p.Pp) ||
		num(t, id["tp"]).String() != itoa(p.Tp) || num(t, id["ep"]).String() != itoa(p.Ep) || num(t, id["rank"]).String() != itoa(p.Rank) {
		t.Errorf("process ranks %v, batch ident %v", p, id)
	}
	if num(t, g["dropped"]).String() != uitoa(eb.Dropped) {
		t.Errorf("dropped %d, fixture %v", eb.Dropped, g["dropped"])
	}
	evs := g["events"].([]any)
	if len(evs) != len(eb.Events) {
		t.Fatalf("%d events, fixture %d", len(eb.Events), len(evs))
	}
	for i, ge := range evs {
		ge := ge.(map[string]any)
		e := eb.Events[i]
		if e.Kind != ge["kind"] || e.Table != ge["table"] || uitoa(e.Seq) != num(t, ge["seq"]).String() ||
			i64toa(e.Step) != num(t, ge["step"]).String() || i64toa(e.TsNs) != num(t, ge["ts_ns"]).String() {
			t.Errorf("event %d header %v, fixture %v", i, e, ge)
		}
		cols := ge["cols"].(map[string]any)
		s, _ := Table(e.Table)
		nonNull := 0
		for name, gv := range cols {
			v, has := e.Cols[name]
			if gv == nil {
				if has {
					t.Errorf("event %d %s: null became %v", i, name, v)
				}
				continue
			}
			nonNull++
			c, _ := s.Col(name)
			switch c.Type {
			case TypeInt:
				if x, ok := v.GetV().(*pmpb.Value_I); !ok || i64toa(x.I) != num(t, gv).String() {
					t.Errorf("event %d %s: %v, fixture %v", i, name, v, gv)
				}
			case TypeFloat:
				f, _ := num(t, gv).Float64()
				if x, ok := v.GetV().(*pmpb.Value_D); !ok || x.D != f {
					t.Errorf("event %d %s: %v, fixture %v", i, name, v, gv)
				}
			case TypeString:
				if x, ok := v.GetV().(*pmpb.Value_S); !ok || x.S != gv {
					t.Errorf("event %d %s: %v, fixture %v", i, name, v, gv)
				}
			case TypeBool:
				if x, ok := v.GetV().(*pmpb.Value_B); !ok || x.B != gv {
					t.Errorf("event %d %s: %v, fixture %v", i, name, v, gv)
				}
			}
		}
		if nonNull != len(e.Cols) {
			t.Errorf("event %d: %d columns, fixture %d non-null", i, len(e.Cols), nonNull)
		}
	}
}

func itoa(n int32) string   { return i64toa(int64(n)) }
func i64toa(n int64) string { return json.Number(strings.TrimSpace(string(mustJSON(n)))).String() }
func uitoa(n uint64) string { return string(mustJSON(n)) }
func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

func TestBatchesByKindAndSubjects(t *testing.T) {
	h := &Hello{Session: "20261126_205500_a1b2c3", Host: "node.a", PID: 9, Role: RoleWorker, Rank: 3, DP: 0}
	line := `{"t":"batch","v":1,"pid":9,"events":[
	 {"kind":"forward_pass","table":"forward_pass_timing","seq":4,"step":1,"ts_ns":1,"cols":{"cpu_ms":1}},
	 {"kind":"cpu_timing","table":"cpu_operations_timing","seq":5,"step":1,"ts_ns":2,"cols":{"operation":"x","cpu_ms":0.5}},
	 {"kind":"forward_pass","table":"forward_pass_timing","seq":7,"step":2,"ts_ns":3,"cols":{}}],"dropped":1}`
	l, err := DecodeLine([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	eb, err := ToEventBatch(h.Process(), l.Batch)
	if err != nil {
		t.Fatal(err)
	}
	if x := eb.Events[0].Cols["cpu_ms"].GetV().(*pmpb.Value_D); x.D != 1 {
		t.Errorf("int literal in a float column: %v", x)
	}
	if _, err := ToEventBatch((&Hello{PID: 10}).Process(), l.Batch); err == nil || !errors.Is(err, ErrBadLine) {
		t.Errorf("batch of another pid converted: %v", err)
	}
	parts := BatchesByKind(eb)
	if len(parts) != 2 || parts[0].Events[0].Kind != "forward_pass" || len(parts[0].Events) != 2 {
		t.Fatalf("split: %v", parts)
	}
	if parts[0].BatchId != "20261126_205500_a1b2c3/node.a/9/forward_pass/4-7" || parts[1].BatchId != "20261126_205500_a1b2c3/node.a/9/cpu_timing/5-5" {
		t.Errorf("ids %q %q", parts[0].BatchId, parts[1].BatchId)
	}
	if got := BatchSubject(parts[1]); got != "pm.v1.ev.20261126_5f205500_5fa1b2c3.node_2ea.w3.cpu_timing" {
		t.Errorf("subject %s", got)
	}
	f, err := ParseEventSubject(BatchSubject(parts[0]))
	if err != nil || f.Session != h.Session || f.Host != h.Host || f.Proc != "w3" || f.Kind != "forward_pass" {
		t.Errorf("parsed %+v %v", f, err)
	}
}

func TestDecodeLineRejects(t *testing.T) {
	ok := func(cols string) string {
		return `{"t":"batch","v":1,"pid":3,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"step":1,"ts_ns":1,"cols":` + cols + `}]}`
	}
	if _, err := DecodeLine([]byte(ok(`{"usage":0.5,"free_blocks":3.0,"alloc_failures":null}`))); err != nil {
		t.Fatalf("valid line: %v", err)
	}
	cases := map[string]string{
		"":                                "not a JSON object",
		"garbage":                         "not a JSON object",
		`{"t":"hello"`:                    "bad line",
		`[1,2]`:                           "not a JSON object",
		`{"v":1}`:                         `no "t"`,
		`{"t":"hello"}`:                   `without "v"`,
		`{"t":"hello","v":2,"pid":1}`:     "wire version 2",
		`{"t":"nope","v":1}`:              `unknown line type "nope"`,
		`{"t":"hello","v":1}`:             "positive pid",
		`{"t":"bye","v":1,"pid":-4}`:      "positive pid",
		`{"t":"ctl","v":1,"op":"reboot"}`: `unknown op "reboot"`,
		`{"t":"hello","v":1,"pid":"12"}`:  "pid",
		`{"t":"hello","v":1,"pid":3,"role":"boss"}`:                      `unknown role "boss"`,
		`{"t":"batch","v":1,"pid":3,"ident":{"role":"wrk"},"events":[]}`: `unknown role "wrk"`,
		`{"t":"hello","v":1,"pid":3,"session":"my run"}`:                 `session "my run"`,
		`{"t":"hello","v":1,"pid":3,"session":"exp/1"}`:                  `session "exp/1"`,
		`{"t":"hello","v":1,"pid":3,"host":"x:y"}`:                       `host "x:y"`,
	}
	for in, want := range cases {
		_, err := DecodeLine([]byte(in))
		if err == nil || !errors.Is(err, ErrBadLine) || !strings.Contains(err.Error(), want) {
			t.Errorf("DecodeLine(%s) = %v, want ErrBadLine with %q", in, err, want)
		}
	}
}

// TestBadEventsKeepTheirBatch: each bad event is refused with its reason; the good events of the
// same batch are kept (one bad value never costs a batch).
func TestBadEventsKeepTheirBatch(t *testing.T) {
	good := `{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"step":1,"ts_ns":1,"cols":{"usage":0.5,"free_blocks":"","alloc_failures":null}}`
	ev := func(kind, table, cols string) string {
		return `{"kind":"` + kind + `","table":"` + table + `","seq":2,"step":1,"ts_ns":1,"cols":` + cols + `}`
	}
	cases := []struct{ event, reason, text string }{
		{ev("nope", "kv_cache_usage", "{}"), ReasonUnknownKind, `unknown kind "nope"`},
		{ev("", "kv_cache_usage", "{}"), ReasonUnknownKind, `unknown kind ""`},
		{ev("kv_cache", "nope", "{}"), ReasonUnknownTable, `unknown table "nope"`},
		{ev("gpu", "kv_cache_usage", "{}"), ReasonUnknownTable, "belongs to kind kv_cache"},
		{ev("kv_cache", "kv_cache_usage", "[1]"), ReasonBadCols, "not"},
		{ev("kv_cache", "kv_cache_usage", `"x"`), ReasonBadCols, "not"},
		{ev("kv_cache", "kv_cache_usage", `{"usage":1,"usage":2}`), ReasonBadCols, `column "usage" twice`},
		{ev("kv_cache", "kv_cache_usage", `{"usage":"0.5"}`), ReasonBadValue, "usage: want float"},
		{ev("kv_cache", "kv_cache_usage", `{"usage":"x"}`), ReasonBadValue, "usage: want float"},
		{ev("kv_cache", "kv_cache_usage", `{"usage":true}`), ReasonBadValue, "usage: want float"},
		{ev("kv_cache", "kv_cache_usage", `{"usage":{"a":1}}`), ReasonBadValue, "usage: want float"},
		{ev("kv_cache", "kv_cache_usage", `{"usage":1e400}`), ReasonBadValue, "usage: want float"},
		{ev("kv_cache", "kv_cache_usage", `{"free_blocks":1.5}`), ReasonBadValue, "free_blocks: want int"},
		{ev("kv_cache", "kv_cache_usage", `{"free_blocks":"12"}`), ReasonBadValue, "free_blocks: want int"},
		{ev("kv_cache", "kv_cache_usage", `{"free_blocks":1e300}`), ReasonBadValue, "free_blocks: want int"},
		{ev("kv_cache", "kv_cache_usage", `{"nope":1}`), ReasonUnknownColumn, `no column "nope"`},
		{ev("preemption", "preemption_events", `{"request_id":5}`), ReasonBadValue, "request_id: want string"},
		{ev("cuda_graph", "cuda_graph_usage", `{"eager_fallback":1}`), ReasonBadValue, "eager_fallback: want bool"},
	}
	for _, c := range cases {
		line := []byte(`{"t":"batch","v":1,"pid":3,"events":[` + good + `,` + c.event + `,` + good + `]}`)
		l, err := DecodeLine(line)
		if err != nil {
			t.Errorf("%s: line refused: %v", c.event, err)
			continue
		}
		if len(l.Batch.Events) != 2 || len(l.Rejected) != 1 {
			t.Errorf("%s: kept %d, refused %d; want 2 and 1", c.event, len(l.Batch.Events), len(l.Rejected))
			continue
		}
		r := l.Rejected[0]
		if r.Index != 1 || r.Reason != c.reason || !strings.Contains(r.Error(), c.text) {
			t.Errorf("%s: refused as %d %s %q; want 1 %s %q", c.event, r.Index, r.Reason, r.Error(), c.reason, c.text)
		}
		// The fast path agrees: same events kept, same reason.
		fl, err := ReadLine(line)
		if err != nil {
			t.Fatal(err)
		}
		g, bad := EncodeEvents(fl.Batch.Events)
		if len(g) != 2 || len(bad) != 1 || bad[0].Index != 1 || bad[0].Reason != c.reason || !strings.Contains(bad[0].Error(), c.text) {
			t.Errorf("%s: fast path kept %d, refused %v; want 2 and %s %q", c.event, len(g), bad, c.reason, c.text)
		}
	}
}

func TestDecodeControlLines(t *testing.T) {
	l, err := DecodeLine([]byte(`{"t":"ctl","v":1,"op":"profiler","name":"moe_expert","enabled":false}`))
	if err != nil || l.Ctl.Name != "moe_expert" || l.Ctl.Enabled == nil || *l.Ctl.Enabled {
		t.Fatalf("ctl: %+v %v", l, err)
	}
	l, err = DecodeLine([]byte(`{"t":"admin","v":1,"op":"status"}`))
	if err != nil || l.Admin.Op != "status" {
		t.Fatalf("admin: %+v %v", l, err)
	}
	l, err = DecodeLine([]byte(`{"t":"hello","v":1,"pid":7,"role":"api_server"}`))
	if err != nil || l.Hello.Rank != -1 || l.Hello.DP != -1 {
		t.Fatalf("hello without ranks must read them as unknown (-1): %+v %v", l.Hello, err)
	}
	l, err = DecodeLine([]byte(`{"t":"status","v":1,"pid":7,"targets":[{"target":"scheduler","status":"patched","reason":""}]}`))
	if err != nil || len(l.Status.Targets) != 1 || l.Status.Targets[0].Status != "patched" {
		t.Fatalf("status: %+v %v", l, err)
	}
}

func TestVersionCheck(t *testing.T) {
	future := &pmpb.EventBatch{SchemaMajor: SchemaMajor + 1, SchemaMinor: 0}
	b, _ := gproto.Marshal(future)
	_, err := DecodeEventBatch(b)
	var ve *VersionError
	if !errors.As(err, &ve) || ve.Major != SchemaMajor+1 {
		t.Fatalf("newer major: %v", err)
	}
	newerMinor := Stamp(&pmpb.Heartbeat{Host: "h"})
	newerMinor.SchemaMinor = SchemaMinor + 5
	b, _ = gproto.Marshal(newerMinor)
	if hb, err := DecodeHeartbeat(b); err != nil || hb.Host != "h" {
		t.Fatalf("newer minor of our major must read: %v", err)
	}
	if _, err := DecodeLifecycle([]byte{0xff, 0xff}); err == nil || errors.As(err, &ve) {
		t.Fatalf("garbage: %v", err)
	}
	b, _ = gproto.Marshal(Stamp(&pmpb.Control{Host: "h", Op: &pmpb.Control_Profiler_{Profiler: &pmpb.Control_Profiler{Name: "moe_expert"}}}))
	if c, err := DecodeControl(b); err != nil || c.GetProfiler().GetName() != "moe_expert" {
		t.Fatalf("control: %v %v", c, err)
	}
}

// The hello's instance and the status line's per-table statuses survive decoding.
func TestReadLineInstanceAndTables(t *testing.T) {
	l, err := ReadLine([]byte(`{"t":"hello","v":1,"pid":7,"ppid":1,"role":"worker","dp":0,"pp":0,"tp":0,"ep":-1,"rank":0,"instance":"0123456789abcdef","reconnects":2}`))
	if err != nil {
		t.Fatal(err)
	}
	if l.Hello.Instance != "0123456789abcdef" || l.Hello.Reconnects != 2 || l.Hello.Process().GetInstance() != "0123456789abcdef" {
		t.Errorf("hello %+v lost its instance or reconnects", l.Hello)
	}
	l, err = ReadLine([]byte(`{"t":"status","v":1,"pid":7,"targets":[],"tables":[{"table":"moe_expert_timing","status":"unavailable: needs CUDA events"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Status.Tables) != 1 || l.Status.Tables[0] != (TableStatus{"moe_expert_timing", "unavailable: needs CUDA events"}) {
		t.Errorf("status tables %+v", l.Status.Tables)
	}
}
