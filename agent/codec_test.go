package agent

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	pmproto "github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

func TestEventCols(t *testing.T) {
	tests := []struct {
		name, kind, table, in string
		want                  map[string]*pmpb.Value
		bad                   bool
	}{
		{name: "types", kind: "forward_pass", table: "forward_pass_timing",
			in: ` { "cpu_ms" : 1, "tokens":3.0,"runtime_mode":"F\"U\u00e9","gpu_ms":"", "gpu_status": "pending" }`,
			want: map[string]*pmpb.Value{
				"cpu_ms": {V: &pmpb.Value_D{D: 1}}, "tokens": {V: &pmpb.Value_I{I: 3}},
				"runtime_mode": {V: &pmpb.Value_S{S: "F\"Ué"}}, "gpu_status": {V: &pmpb.Value_S{S: "pending"}},
			}},
		{name: "empty", kind: "kv_cache", table: "kv_cache_usage", in: `{}`, want: map[string]*pmpb.Value{}},
		{name: "nested", kind: "kv_cache", table: "kv_cache_usage", in: `{"usage":{"b":1}}`, bad: true},
		{name: "array", kind: "kv_cache", table: "kv_cache_usage", in: `[1]`, bad: true},
		{name: "unterminated", kind: "kv_cache", table: "kv_cache_usage", in: `{"usage":1`, bad: true},
		{name: "bad number", kind: "kv_cache", table: "kv_cache_usage", in: `{"usage":1-2}`, bad: true},
		{name: "fractional int", kind: "kv_cache", table: "kv_cache_usage", in: `{"free_blocks":1.5}`, bad: true},
		{name: "string for float", kind: "kv_cache", table: "kv_cache_usage", in: `{"usage":"1"}`, bad: true},
		{name: "unknown column", kind: "kv_cache", table: "kv_cache_usage", in: `{"nope":1}`, bad: true},
		{name: "unknown table", kind: "kv_cache", table: "nope", in: `{}`, bad: true},
		{name: "table of another kind", kind: "kv_cache", table: "forward_pass_timing", in: `{}`, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := eventCols(&Event{Kind: tt.kind, Table: tt.table, Cols: []byte(tt.in)})
			if tt.bad {
				if err == nil {
					t.Fatalf("got %v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for k, w := range tt.want {
				if !proto.Equal(got[k], w) {
					t.Errorf("%s: got %v, want %v", k, got[k], w)
				}
			}
		})
	}
}

func TestEncodeBatchRoundTrip(t *testing.T) {
	h := &BatchHead{Session: "s", Host: "h", Proc: "w1", PID: 7, Kind: "kv_cache", Ident: Ident{Role: "worker", DP: 0, PP: 0, TP: 1, EP: -1, Rank: 1}, Dropped: 3}
	evs := []Event{{Kind: "kv_cache", Table: "kv_cache_usage", Seq: 4, Step: 2, TsNS: 9, Cols: []byte(`{"usage":0.25}`)},
		{Kind: "kv_cache", Table: "kv_cache_usage", Seq: 6, Step: 3, TsNS: 10, Cols: []byte(`{"usage":1,"free_blocks":3}`)}}
	data, err := PBEncoder{}.EncodeBatch(h, evs)
	if err != nil {
		t.Fatal(err)
	}
	var b pmpb.EventBatch
	if err := proto.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	if b.BatchId != "s/h/7/kv_cache/4-6" || b.Dropped != 3 || b.Process.GetRank() != 1 || b.Process.GetEp() != -1 || b.SchemaMajor != 1 {
		t.Errorf("batch %v", &b)
	}
	if len(b.Events) != 2 || b.Events[0].Cols["usage"].GetD() != 0.25 || b.Events[1].Seq != 6 || b.Events[1].Cols["free_blocks"].GetI() != 3 {
		t.Errorf("events %v", b.Events)
	}
	if _, err := (PBEncoder{}).EncodeBatch(h, []Event{{Kind: "kv_cache", Table: "kv_cache_usage", Cols: []byte(`{"usage":[1]}`)}}); err == nil {
		t.Error("nested cols encoded, want an error")
	}
}

func TestWireEncoderMatchesPBEncoder(t *testing.T) {
	heads := []*BatchHead{
		{Session: "20261126_120000_abcdef", Host: "gpu-7", Proc: "w3", PID: 4242, Kind: "forward_pass", Ident: Ident{Role: "worker", DP: 0, PP: 1, TP: 3, EP: -1, Rank: 3}, Dropped: 12},
		{Session: "s", Host: "h", PID: 1, Kind: "forward_pass", Ident: Ident{Role: "", DP: -1, PP: -1, TP: -1, EP: -1, Rank: -1}},
	}
	evs := []Event{
		{Kind: "forward_pass", Table: "forward_pass_timing", Seq: 1, Step: -1, TsNS: 1700000000000000000, Cols: []byte(`{"cpu_ms":1.5,"tokens":3.0,"runtime_mode":"FULL","gpu_ms":null,"gpu_status":"p\u00e9nding"}`)},
		{Kind: "forward_pass", Table: "forward_pass_timing", Seq: 9, Step: 4, TsNS: 2, Cols: []byte(`{}`)},
		{Kind: "forward_pass", Table: "forward_pass_timing", Seq: 10, Step: 0, TsNS: -5, Cols: []byte(`{"cpu_ms":-0.0,"tokens":-7}`)},
	}
	for _, h := range heads {
		want, err := PBEncoder{}.EncodeBatch(h, evs)
		if err != nil {
			t.Fatal(err)
		}
		got, err := WireEncoder{}.EncodeBatch(h, evs)
		if err != nil {
			t.Fatal(err)
		}
		var w, g pmpb.EventBatch
		if err := proto.Unmarshal(want, &w); err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(got, &g); err != nil {
			t.Fatalf("wire encoding does not decode: %v", err)
		}
		if !proto.Equal(&w, &g) {
			t.Errorf("wire encoding decodes to\n%v\nwant\n%v", &g, &w)
		}
	}
	bad := []Event{{Kind: "forward_pass", Table: "forward_pass_timing", Seq: 1, Cols: []byte(`{"tokens":1.5}`)}}
	if _, err := (WireEncoder{}).EncodeBatch(heads[0], bad); err == nil {
		t.Error("fractional int encoded, want an error")
	}
}

// TestGoldenBatches encodes every golden fixture of proto/testdata/batches and checks the result
// against proto's own conversion of the same JSON.
func TestGoldenBatches(t *testing.T) {
	files, err := filepath.Glob("../proto/testdata/batches/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden batches (%v)", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, raw); err != nil {
				t.Fatal(err)
			}
			l, err := decodeLine(compact.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			b, err := l.batch()
			if err != nil {
				t.Fatal(err)
			}
			h := &BatchHead{Session: "s", Host: "h", PID: b.PID, Ident: *b.Ident, Dropped: b.Dropped}
			var want pmproto.Batch
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatal(err)
			}
			ref, err := pmproto.ToEventBatch(&pmpb.Process{Session: "s", Host: "h", Pid: int64(b.PID)}, &want)
			if err != nil {
				t.Fatal(err)
			}
			for _, part := range pmproto.BatchesByKind(ref) {
				var evs []Event
				for _, e := range b.Events {
					if e.Kind == part.Events[0].Kind {
						evs = append(evs, e)
					}
				}
				hk := *h
				hk.Kind = part.Events[0].Kind
				data, err := WireEncoder{}.EncodeBatch(&hk, evs)
				if err != nil {
					t.Fatal(err)
				}
				var got pmpb.EventBatch
				if err := proto.Unmarshal(data, &got); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(&got, part) {
					t.Errorf("kind %s:\n got %v\nwant %v", hk.Kind, &got, part)
				}
			}
		})
	}
}
