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
	wrongTable := kvEventBatch("S1", "host.a", 7, 1, 1)
	wrongTable.Events[0].Table = "forward_pass_timing"
	otherSession := kvEventBatch("S2", "host.a", 7, 1, 1)

	tests := []struct {
		name    string
		subject string
		data    []byte
		reason  string // "" = accepted; "newer" = ErrNewerMajor
	}{
		{"good batch", subj, mustMarshal(t, good), ""},
		{"older minor", subj, mustMarshal(t, older), ""},
		{"newer minor", subj, mustMarshal(t, newerMinor), ""},
		{"newer major", subj, mustMarshal(t, newerMajor), "newer"},
		{"table of another kind", subj, mustMarshal(t, wrongTable), ReasonUnknownTable},
		{"unknown kind", proto.EventSubject("S1", "host.a", "w0", "telepathy"), mustMarshal(t, good), ReasonUnknownKind},
		{"body and subject disagree", subj, mustMarshal(t, otherSession), ReasonDecode},
		{"garbage", subj, []byte{0xff, 0xff, 0xff}, ReasonDecode},
		{"foreign subject", "pm.v1.other.x", mustMarshal(t, good), ReasonSubject},
		{"heartbeat", proto.HeartbeatSubject("host.a"), mustMarshal(t, proto.Stamp(&pmpb.Heartbeat{Host: "host.a", ClockOffsetNs: 5, ClockUncertaintyNs: 1})), ""},
		{"bye", proto.LifeSubject("S1", "host.a", "w0"), mustMarshal(t, proto.Stamp(&pmpb.Lifecycle{Process: wireProcess("S1", "host.a", 7, 0), Record: &pmpb.Lifecycle_Bye_{Bye: &pmpb.Lifecycle_Bye{LastSeq: 2}}})), ""},
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
