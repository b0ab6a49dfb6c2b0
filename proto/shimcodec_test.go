package proto

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto/pmpb"
)

// sameCodec checks one batch line through both paths: ReadLine + EncodeEvents + AppendEventBatch
// (the agent's) and DecodeLine + EventProto + proto.Marshal (the reference). Both must accept or
// refuse the line, keep the same events (refusing the others for the same reason) and give
// messages that decode to equal EventBatches.
func sameCodec(t testing.TB, line []byte) {
	ref, rerr := DecodeLine(line)
	fast, ferr := ReadLine(line)
	if (rerr == nil) != (ferr == nil) {
		t.Fatalf("line verdicts differ: reference %v, fast %v", rerr, ferr)
	}
	if rerr != nil || ref.Batch == nil {
		return
	}
	good, bad := EncodeEvents(fast.Batch.Events)
	if len(bad) != len(ref.Rejected) || len(good) != len(ref.Batch.Events) {
		t.Fatalf("fast kept %d refused %v; reference kept %d refused %v", len(good), bad, len(ref.Batch.Events), ref.Rejected)
	}
	for i := range bad {
		if bad[i].Index != ref.Rejected[i].Index || bad[i].Reason != ref.Rejected[i].Reason {
			t.Fatalf("refusal %d: fast %v, reference %v", i, bad[i], ref.Rejected[i])
		}
	}
	head := &BatchHead{Session: "20261126_120000_abcdef", Host: "gpu-7", PID: int64(fast.Batch.PID), Dropped: fast.Batch.Dropped,
		Ident: Ident{Role: RoleWorker, DP: 0, PP: 1, TP: 3, EP: -1, Rank: 3}, BatchID: "id"}
	p := &pmpb.Process{Session: head.Session, Host: head.Host, Pid: head.PID, Role: head.Ident.Role,
		Dp: int32(head.Ident.DP), Pp: int32(head.Ident.PP), Tp: int32(head.Ident.TP), Ep: int32(head.Ident.EP), Rank: int32(head.Ident.Rank)}
	want := Stamp(&pmpb.EventBatch{Process: p, Dropped: head.Dropped, BatchId: head.BatchID})
	for i := range ref.Batch.Events {
		e, err := Default().EventProto(&ref.Batch.Events[i])
		if err != nil {
			t.Fatalf("reference refuses an event it kept: %v", err)
		}
		want.Events = append(want.Events, e)
		var g pmpb.Event
		if err := gproto.Unmarshal(good[i].Data, &g); err != nil {
			t.Fatalf("fast event %d does not decode: %v", i, err)
		}
		if !gproto.Equal(&g, e) {
			t.Fatalf("event %d: fast %v, reference %v", i, &g, e)
		}
	}
	var got pmpb.EventBatch
	if err := gproto.Unmarshal(AppendEventBatch(nil, head, good), &got); err != nil {
		t.Fatalf("fast batch does not decode: %v", err)
	}
	if !gproto.Equal(&got, want) {
		t.Fatalf("batch: fast %v, reference %v", &got, want)
	}
	if _, err := gproto.Marshal(want); err != nil {
		t.Fatalf("reference batch does not encode: %v", err)
	}
}

// codecSeeds are the golden fixtures plus the odd cases of both decoders' history.
func codecSeeds(t testing.TB) [][]byte {
	var out [][]byte
	files, _ := filepath.Glob("testdata/batches/*.json")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			t.Fatal(err)
		}
		out = append(out, c.Bytes())
	}
	batch := func(evs ...string) []byte {
		s := `{"t":"batch","v":1,"pid":7,"dropped":2,"events":[`
		for i, e := range evs {
			if i > 0 {
				s += ","
			}
			s += e
		}
		return []byte(s + `]}`)
	}
	fp := func(cols string) string {
		return `{"kind":"forward_pass","table":"forward_pass_timing","seq":1,"step":-1,"ts_ns":1700000000000000000,"cols":` + cols + `}`
	}
	for _, cols := range []string{
		` { "cpu_ms" : 1, "tokens":3.0,"runtime_mode":"F\"U\u00e9","gpu_ms":"", "gpu_status": "pending" }`,
		`{}`, `null`, `{"cpu_ms":-0.0,"tokens":-7}`, `{"cpu_ms":null,"gpu_ms":""}`,
		`{"cpu_ms":{"b":[1,"]"]}}`, `[1]`, `"x"`, `{"tokens":1.5}`, `{"cpu_ms":"1"}`, `{"nope":1}`,
		`{"cpu_ms":1,"cpu_ms":2}`, `{"tokens":9007199254740993.0}`, `{"tokens":-9223372036854775808}`,
		`{"runtime_mode":"\ud800"}`, "{\"runtime_mode\":\"\xff\xfe\"}", `{"cpu_ms":1e400}`, `{"cpu_ms":1E-5}`,
		`{"runtime_mode":""}`, `{"tokens":true}`,
	} {
		out = append(out, batch(fp(cols)))
	}
	out = append(out, batch(fp(`{"cpu_ms":1}`), `{"kind":"gpu","table":"forward_pass_timing"}`, fp(`{"tokens":2}`)),
		batch(`{"kind":"forward_pass","table":"forward_pass_timing"}`),
		[]byte(`{"t":"hello","v":1,"pid":3,"session":"a b"}`), []byte(`{"t":"batch","v":1,"pid":3}`))
	return out
}

func TestFastPathMatchesReference(t *testing.T) {
	for _, line := range codecSeeds(t) {
		t.Run(string(line[:min(len(line), 60)]), func(t *testing.T) { sameCodec(t, line) })
	}
}

// FuzzShimCodec: on any line the fast path and the reference decoder agree on the line, on which
// events they keep and why they refuse the others, and on the messages they build; `make fuzz`
// runs it for a bounded time beside the hub's FuzzDecode.
func FuzzShimCodec(f *testing.F) {
	for _, s := range codecSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line []byte) { sameCodec(t, line) })
}

// BenchmarkEncode compares the reference path (protobuf structs, proto.Marshal) with the fast path
// (protowire straight from the line's bytes) on one 32-event kv_cache batch (the agent's
// benchmark line: usage, free_blocks, total_blocks).
func BenchmarkEncode(b *testing.B) {
	var evs []string
	for i := 0; i < 32; i++ {
		evs = append(evs, `{"kind":"kv_cache","table":"kv_cache_usage","seq":`+itoa(int32(i+1))+`,"step":`+itoa(int32(i))+
			`,"ts_ns":1700000000000000000,"cols":{"usage":0.5,"free_blocks":12,"total_blocks":1024}}`)
	}
	line := []byte(`{"t":"batch","v":1,"pid":7,"events":[` + join(evs) + `]}`)
	l, err := ReadLine(line)
	if err != nil {
		b.Fatal(err)
	}
	head := &BatchHead{Session: "20261126_120000_abcdef", Host: "gpu-1", PID: 7, Ident: Ident{Role: RoleWorker, Rank: 1, EP: -1}, BatchID: "x"}
	p := &pmpb.Process{Session: head.Session, Host: head.Host, Pid: 7, Role: RoleWorker, Rank: 1, Ep: -1}
	b.Run("reference", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			eb := Stamp(&pmpb.EventBatch{Process: p, BatchId: head.BatchID})
			for j := range l.Batch.Events {
				e, err := Default().EventProto(&l.Batch.Events[j])
				if err != nil {
					b.Fatal(err)
				}
				eb.Events = append(eb.Events, e)
			}
			if _, err := gproto.Marshal(eb); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*len(l.Batch.Events))/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			good, bad := EncodeEvents(l.Batch.Events)
			if len(bad) > 0 {
				b.Fatal(bad[0])
			}
			_ = AppendEventBatch(make([]byte, 0, 4096), head, good)
		}
		b.ReportMetric(float64(b.N*len(l.Batch.Events))/b.Elapsed().Seconds(), "events/s")
	})
}

func join(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(x)
	}
	return b.String()
}
