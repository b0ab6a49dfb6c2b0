package sdk

import (
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto/pmpb"
)

func sampleBatches() []*pmpb.EventBatch {
	full := &pmpb.EventBatch{SchemaMajor: 1, SchemaMinor: 3, Dropped: 7, BatchId: "x",
		Process: &pmpb.Process{Session: "s", Host: "h.a", Pid: 42, Ppid: 1, Role: "worker", Dp: 0, Pp: -1, Tp: 3, Ep: -1, Rank: 3, Argv: []string{"a"}},
		Events: []*pmpb.Event{
			{Kind: "forward_pass", Table: "forward_pass_timing", Seq: 1, Step: -1, TsNs: -5, Cols: map[string]*pmpb.Value{
				"cpu_ms": {V: &pmpb.Value_D{D: 1.5}}, "tokens": {V: &pmpb.Value_I{I: -256}}, "mode": {V: &pmpb.Value_S{S: "FULL"}},
				"ok": {V: &pmpb.Value_B{B: true}}, "no": {V: &pmpb.Value_B{B: false}}, "empty": {}, "zero": {V: &pmpb.Value_I{I: 0}}}},
			{Kind: "forward_pass", Table: "forward_pass_timing", Seq: 2},
		}}
	return []*pmpb.EventBatch{
		full,
		{SchemaMajor: 1},
		{SchemaMajor: 1, Process: &pmpb.Process{}},
		{SchemaMajor: 2, Process: &pmpb.Process{Host: "x"}},
		{SchemaMajor: 1, Events: []*pmpb.Event{{}}},
	}
}

// norm makes the two readers' equivalent spellings of "nothing" equal.
func norm(b Batch) Batch {
	if len(b.Events) == 0 {
		b.Events = nil
	}
	return b
}

func TestFastDecoderMatchesGenerated(t *testing.T) {
	for i, eb := range sampleBatches() {
		data, err := proto.Marshal(eb)
		if err != nil {
			t.Fatal(err)
		}
		var d decoder
		fast, ferr := d.decodeBatch("S", 9, data)
		slow, serr := decodeGeneric("S", 9, data)
		if (ferr == nil) != (serr == nil) || !reflect.DeepEqual(norm(fast), norm(slow)) {
			t.Errorf("batch %d: fast %+v %v, generated %+v %v", i, fast, ferr, slow, serr)
		}
	}
}

func TestFastDecoderRefusesWhatGeneratedRefuses(t *testing.T) {
	data, _ := proto.Marshal(&pmpb.EventBatch{SchemaMajor: 1, Process: &pmpb.Process{Host: "ok"}})
	bad := []byte(strings.Replace(string(data), "ok", "o\xff", 1))
	var d decoder
	if _, err := d.decodeBatch("S", 1, bad); err == nil || !strings.Contains(err.Error(), "decode") {
		t.Fatalf("invalid UTF-8 host: got %v, want the generated decoder's error", err)
	}
	if _, err := d.decodeBatch("S", 1, data[:len(data)-1]); err == nil {
		t.Fatal("a truncated batch decoded")
	}
}

// FuzzDecode: whatever the generated decoder accepts, the fast reader reads the same way.
func FuzzDecode(f *testing.F) {
	for _, eb := range sampleBatches() {
		data, _ := proto.Marshal(eb)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var d decoder
		fast, ferr := d.decodeBatch("S", 1, data)
		slow, serr := decodeGeneric("S", 1, data)
		if serr != nil {
			return // the fast path falls back to the generated decoder's error
		}
		if ferr != nil || !reflect.DeepEqual(norm(fast), norm(slow)) {
			t.Fatalf("fast %+v %v, generated %+v", fast, ferr, slow)
		}
	})
}
