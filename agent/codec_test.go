package agent

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto/pmpb"
)

func TestParseCols(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]*pmpb.Value
		bad      bool
	}{
		{name: "types", in: ` { "a" : 1, "b":-2.5e3,"c":"x\"y\u00e9","d":true,"e":false,"f":null, "g": 9223372036854775808 }`,
			want: map[string]*pmpb.Value{
				"a": {V: &pmpb.Value_I{I: 1}}, "b": {V: &pmpb.Value_D{D: -2500}}, "c": {V: &pmpb.Value_S{S: "x\"yé"}},
				"d": {V: &pmpb.Value_B{B: true}}, "e": {V: &pmpb.Value_B{B: false}}, "g": {V: &pmpb.Value_D{D: 9223372036854775808}},
			}},
		{name: "empty", in: `{}`, want: map[string]*pmpb.Value{}},
		{name: "nested", in: `{"a":{"b":1}}`, bad: true},
		{name: "array", in: `[1]`, bad: true},
		{name: "unterminated", in: `{"a":1`, bad: true},
		{name: "bad number", in: `{"a":1-2}`, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCols([]byte(tt.in))
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
		{Kind: "kv_cache", Table: "kv_cache_usage", Seq: 6, Step: 3, TsNS: 10, Cols: []byte(`{"usage":1}`)}}
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
	if len(b.Events) != 2 || b.Events[0].Cols["usage"].GetD() != 0.25 || b.Events[1].Seq != 6 {
		t.Errorf("events %v", b.Events)
	}
	if _, err := (PBEncoder{}).EncodeBatch(h, []Event{{Kind: "k", Table: "t", Cols: []byte(`{"a":[1]}`)}}); err == nil {
		t.Error("nested cols encoded, want an error")
	}
}
