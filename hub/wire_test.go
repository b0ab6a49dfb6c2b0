package hub

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

func wireProcess(session, host string, pid int64, rank int32) *pmpb.Process {
	return &pmpb.Process{Session: session, Host: host, Pid: pid, Role: proto.RoleWorker, Dp: 0, Pp: 0, Tp: rank, Ep: -1, Rank: rank, Python: "3.12.1", Vllm: "0.16.0"}
}

func kvEventBatch(session, host string, pid int64, first uint64, n int) *pmpb.EventBatch {
	eb := proto.Stamp(&pmpb.EventBatch{Process: wireProcess(session, host, pid, 0)})
	for i := 0; i < n; i++ {
		s := first + uint64(i)
		eb.Events = append(eb.Events, &pmpb.Event{Kind: proto.KindKVCache, Table: "kv_cache_usage", Seq: s, Step: int64(s), TsNs: 1_700_000_000_000_000_000 + int64(s),
			Cols: map[string]*pmpb.Value{}})
	}
	return eb
}

func mustMarshal(t testing.TB, m gproto.Message) []byte {
	b, err := gproto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWireDecode(t *testing.T) {
	ws, err := newWireSchema()
	if err != nil {
		t.Fatal(err)
	}
	subj := proto.EventSubject("S1", "host.a", "w0", proto.KindKVCache)
	good := kvEventBatch("S1", "host.a", 7, 1, 2)
	own := ws.own["kv_cache_usage"]
	good.Events[0].Cols[own[0]] = &pmpb.Value{V: &pmpb.Value_D{D: 0.5}}
	good.Events[0].Cols["column_from_a_newer_minor"] = &pmpb.Value{V: &pmpb.Value_I{I: 1}}
	older := kvEventBatch("S1", "host.a", 7, 1, 1)
	older.SchemaMinor = 0
	newerMinor := kvEventBatch("S1", "host.a", 7, 1, 1)
	newerMinor.SchemaMinor = proto.SchemaMinor + 5
	newerMajor := kvEventBatch("S1", "host.a", 7, 1, 1)
	newerMajor.SchemaMajor = proto.SchemaMajor + 1
	wrongTable := kvEventBatch("S1", "host.a", 7, 1, 2)
	wrongTable.Events[0].Table = "forward_pass_timing"
	otherSession := kvEventBatch("S2", "host.a", 7, 1, 1)
	stringInFloat := kvEventBatch("S1", "host.a", 7, 1, 3)
	stringInFloat.Events[1].Cols["usage"] = &pmpb.Value{V: &pmpb.Value_S{S: "lots"}}
	noVersion := kvEventBatch("S1", "host.a", 7, 1, 1)
	noVersion.SchemaMajor = 0

	tests := []struct {
		name     string
		subject  string
		data     []byte
		reason   string // "" = accepted; "newer" = ErrNewerMajor
		rejected string // accepted, with one event refused for this reason
	}{
		{"good batch", subj, mustMarshal(t, good), "", ""},
		{"older minor", subj, mustMarshal(t, older), "", ""},
		{"newer minor", subj, mustMarshal(t, newerMinor), "", ""},
		{"newer major", subj, mustMarshal(t, newerMajor), "newer", ""},
		{"empty payload", subj, nil, ReasonDecode, ""},
		{"no schema version", subj, mustMarshal(t, noVersion), ReasonDecode, ""},
		{"table of another kind", subj, mustMarshal(t, wrongTable), "", proto.ReasonUnknownTable},
		{"string in a float column", subj, mustMarshal(t, stringInFloat), "", proto.ReasonBadValue},
		{"legacy kind spelling", "pm.v1.ev.S1.host_2ea.w0.kv_5fcache", mustMarshal(t, good), "", ""},
		{"unknown kind", proto.EventSubject("S1", "host.a", "w0", "telepathy"), mustMarshal(t, good), ReasonUnknownKind, ""},
		{"body and subject disagree", subj, mustMarshal(t, otherSession), ReasonDecode, ""},
		{"garbage", subj, []byte{0xff, 0xff, 0xff}, ReasonDecode, ""},
		{"foreign subject", "pm.v1.other.x", mustMarshal(t, good), ReasonSubject, ""},
		{"heartbeat", proto.HeartbeatSubject("host.a"), mustMarshal(t, proto.Stamp(&pmpb.Heartbeat{Host: "host.a", ClockOffsetNs: 5, ClockUncertaintyNs: 1})), "", ""},
		{"bye", proto.LifeSubject("S1", "host.a", "w0"), mustMarshal(t, proto.Stamp(&pmpb.Lifecycle{Process: wireProcess("S1", "host.a", 7, 0), Record: &pmpb.Lifecycle_Bye_{Bye: &pmpb.Lifecycle_Bye{LastSeq: 2}}})), "", ""},
	}
	sf, _ := proto.ParseEventSubject(subj)
	if _, _, ok := ws.fastBatch(mustMarshal(t, good), sf); !ok {
		t.Error("fast reader declined the agent's canonical encoding")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := ws.Decode(tt.subject, tt.data)
			switch {
			case tt.reason == "" && err != nil:
				t.Fatalf("got error %v, want accepted", err)
			case tt.reason == "newer" && !errors.Is(err, ErrNewerMajor):
				t.Fatalf("got %v, want ErrNewerMajor", err)
			case tt.reason != "" && tt.reason != "newer" && reasonOf(err) != tt.reason:
				t.Fatalf("got %v (reason %q), want reason %q", err, reasonOf(err), tt.reason)
			}
			if b, ok := v.(*Batch); ok && tt.rejected != "" {
				if len(b.Rejected) != 1 || b.Rejected[0].Reason != tt.rejected || len(b.Events) == 0 {
					t.Errorf("kept %d events, refused %v; want the others kept and one refused as %s", len(b.Events), b.Rejected, tt.rejected)
				}
			} else if ok && len(b.Rejected) > 0 {
				t.Errorf("refused %v", b.Rejected)
			}
			if b, ok := v.(*Batch); ok && tt.name == "good batch" {
				if b.Host != "host.a" || b.PID != 7 || len(b.Events) != 2 || b.Events[0].Cols[0] != "0.5" || len(b.Events[0].Cols) != len(own) {
					t.Errorf("decoded %+v", b)
				}
				if b.Events[1].Cols[0] != "" {
					t.Errorf("absent column = %q, want empty", b.Events[1].Cols[0])
				}
			}
			if l, ok := v.(*Life); ok && (l.Type != LifeBye || l.LastSeq != 2) {
				t.Errorf("decoded %+v", l)
			}
			if h, ok := v.(*Heartbeat); ok && (!h.Measured || h.OffsetNS != 5) {
				t.Errorf("decoded %+v", h)
			}
		})
	}
}

type fuzzSeed struct {
	subject string
	data    []byte
}

// fuzzSeeds are valid messages of every type; the stored corpus in testdata/fuzz/FuzzDecode adds
// the bad ones.
func fuzzSeeds(t testing.TB) []fuzzSeed {
	eb := kvEventBatch("S1", "h", 7, 1, 3)
	eb.Events[0].Cols["usage"] = &pmpb.Value{V: &pmpb.Value_D{D: 0.25}}
	return []fuzzSeed{
		{proto.EventSubject("S1", "h", "w0", proto.KindKVCache), mustMarshal(t, eb)},
		{proto.LifeSubject("S1", "h", "w0"), mustMarshal(t, proto.Stamp(&pmpb.Lifecycle{Process: wireProcess("S1", "h", 7, 0), Record: &pmpb.Lifecycle_Hello_{Hello: &pmpb.Lifecycle_Hello{}}}))},
		{proto.HeartbeatSubject("h"), mustMarshal(t, proto.Stamp(&pmpb.Heartbeat{Host: "h", ClockOffsetNs: -3, ClockUncertaintyNs: 2}))},
	}
}

// TestFuzzCorpusKept makes sure the stored corpus of bad inputs is there (go test runs it as part
// of FuzzDecode).
func TestFuzzCorpusKept(t *testing.T) {
	ents, err := os.ReadDir(filepath.Join("testdata", "fuzz", "FuzzDecode"))
	if err != nil || len(ents) == 0 {
		t.Fatalf("fuzz corpus missing: %v", err)
	}
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzDecode", e.Name()))
		if !strings.HasPrefix(string(b), "go test fuzz v1") {
			t.Errorf("%s is not a fuzz corpus file", e.Name())
		}
	}
}

// TestDeclaredKindDecodes: a kind declared at run time (what a plugin emits at the hub) is read
// like a built-in one, with its own columns in schema order; its tables have headers.
func TestDeclaredKindDecodes(t *testing.T) {
	reg, err := proto.NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	ws, err := newWireSchemaFor(reg)
	if err != nil {
		t.Fatal(err)
	}
	subj := proto.EventSubject("S1", "h", "w0", "straggler")
	eb := proto.Stamp(&pmpb.EventBatch{Process: wireProcess("S1", "h", 7, 0), Events: []*pmpb.Event{
		{Kind: "straggler", Table: "straggler_scores", Seq: 1, Step: 4, Cols: map[string]*pmpb.Value{
			"score": {V: &pmpb.Value_D{D: 2.5}}, "rank": {V: &pmpb.Value_I{I: 3}}}}}})
	if _, err := ws.Decode(subj, mustMarshal(t, eb)); reasonOf(err) != ReasonUnknownKind {
		t.Fatalf("undeclared kind: %v", err)
	}
	err = reg.Declare(proto.Kind{Kind: "straggler", Meaning: "ranks slower than their peers"}, proto.Schema{
		Table: "straggler_scores", Columns: []proto.Column{
			{Name: "rank", Type: proto.TypeInt, Meaning: "global rank"},
			{Name: "score", Type: proto.TypeFloat, Unit: "sigma", Meaning: "step time above the median"}}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := ws.Decode(subj, mustMarshal(t, eb))
	if err != nil {
		t.Fatal(err)
	}
	b := v.(*Batch)
	if len(b.Events) != 1 || b.Events[0].Table != "straggler_scores" || b.Events[0].Cols[0] != "3" || b.Events[0].Cols[1] != "2.5" {
		t.Errorf("decoded %+v", b)
	}
	if h, ok := ws.Header("straggler_scores"); !ok || h[len(h)-1] != "score" {
		t.Errorf("header %v %v", h, ok)
	}
	if proto.IsKind("straggler") {
		t.Error("a kind declared in one registry leaked into Default")
	}
}
