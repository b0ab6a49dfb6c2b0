package proto

import (
	"bytes"
	"testing"
)

// sameLine checks LineReader.Read against ReadLine on one line: the same verdict and, for a
// batch, the same pid, ident, drops and events (Cols byte for byte). r is reused across lines,
// so state one line leaves behind cannot leak into the next.
func sameLine(t testing.TB, r *LineReader, line []byte) {
	want, werr := ReadLine(line)
	got, gerr := r.Read(line)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("verdicts differ on %q: ReadLine %v, LineReader %v", line, werr, gerr)
	}
	if werr != nil {
		return
	}
	if got.T != want.T || got.V != want.V || (got.Batch == nil) != (want.Batch == nil) {
		t.Fatalf("line %q: got %+v, want %+v", line, got, want)
	}
	if want.Batch == nil {
		return
	}
	gb, wb := got.Batch, want.Batch
	if gb.PID != wb.PID || gb.Dropped != wb.Dropped || (gb.Ident == nil) != (wb.Ident == nil) ||
		gb.Ident != nil && *gb.Ident != *wb.Ident || len(gb.Events) != len(wb.Events) {
		t.Fatalf("batch %q: got %+v, want %+v", line, gb, wb)
	}
	for i := range wb.Events {
		g, w := gb.Events[i], wb.Events[i]
		if g.Kind != w.Kind || g.Table != w.Table || g.Seq != w.Seq || g.Step != w.Step || g.TsNS != w.TsNS ||
			!bytes.Equal(g.Cols, w.Cols) {
			t.Fatalf("batch %q event %d: got %+v (cols %s), want %+v (cols %s)", line, i, g, g.Cols, w, w.Cols)
		}
	}
}

// lineSeeds are the codec seeds plus lines at the edges of the fast path's grammar.
func lineSeeds(t testing.TB) [][]byte {
	out := codecSeeds(t)
	ev := `{"kind":"kv_cache","table":"kv_cache_usage","seq":3,"step":-2,"ts_ns":1700000000000000000,"cols":{"usage":0.5,"free_blocks":12}}`
	for _, l := range []string{
		`{"t":"batch","v":1,"pid":7,"ident":{"role":"worker","dp":0,"pp":0,"tp":1,"ep":-1,"rank":1},"events":[` + ev + `,` + ev + `],"dropped":0}`,
		` { "t" : "batch" , "v" : 1 , "pid" : 7 , "events" : [ ` + ev + ` ] } `,
		`{"t":"batch","v":1,"pid":7,"events":[]}`, `{"t":"batch","v":1,"pid":7,"events":null}`,
		`{"t":"batch","v":1,"pid":7,"ident":null,"events":[]}`, `{"t":"batch","v":1,"pid":7,"ident":{},"events":[{}]}`,
		`{"t":"batch","v":1,"pid":7,"ident":{"role":"nope"}}`, `{"t":"batch","v":1,"pid":7,"ident":{"rank":1,"rank":2}}`,
		`{"t":"batch","v":1,"pid":7,"T":"hello"}`, `{"t":"batch","v":1,"PID":7}`, `{"t":"batch","v":1,"pid":7,"pid":8}`,
		`{"t":"batch","v":2,"pid":7}`, `{"t":"batch","v":1,"pid":0}`, `{"t":"batch","v":1,"pid":-7}`, `{"t":"batch","v":1,"pid":7.0}`,
		`{"t":"batch","v":1,"pid":07}`, `{"t":"batch","v":1,"pid":99999999999}`, `{"t":"batch","v":1,"pid":7,"dropped":-1}`,
		`{"t":"batch","v":1,"pid":7,"dropped":18446744073709551616}`, `{"t":"batch","v":1,"pid":7}x`, `{"t":"batch","v":1,"pid":7`,
		`{"t":"batch","v":1,"pid":7,"events":[{"seq":1,"cols":{"a":1e5,"b":-0.5E-3,"c":"x","d":true,"e":false,"f":null}}]}`,
		`{"t":"batch","v":1,"pid":7,"events":[{"seq":1,"cols":{"a":01}}]}`, `{"t":"batch","v":1,"pid":7,"events":[{"seq":1,"cols":{"a":1.}}]}`,
		`{"t":"batch","v":1,"pid":7,"events":[{"seq":1,"cols":{"a":-}}]}`, `{"t":"batch","v":1,"pid":7,"events":[{"seq":1,"cols":{"a":NaN}}]}`,
		`{"t":"batch","v":1,"pid":7,"events":[{"seq":1,"cols":{"a":[1]}}]}`, `{"t":"batch","v":1,"pid":7,"events":[{"seq":1,"cols":"x"}]}`,
		`{"t":"batch","v":1,"pid":7,"events":[{"seq":1,"step":-9223372036854775808,"ts_ns":9223372036854775808}]}`,
		`{"t":"batch","v":1,"pid":7,"events":[{"seq":1,"extra":2}]}`, `{"t":"batch","v":1,"pid":7,"events":[{"seq":1,"seq":2}]}`,
		`{"t":"batch","v":1,"pid":7,"events":[{"kind":"kv_cach\u0065","seq":1}]}`, "{\"t\":\"batch\",\"v\":1,\"pid\":7,\"events\":[{\"kind\":\"\xc3\xa9\"}]}",
		"{\"t\":\"batch\",\"v\":1,\"pid\":7,\"events\":[{\"cols\":{\"a\":\"\t\"}}]}", `{"t":"batch","v":1,"pid":7,"events":[,]}`,
		`{"t":"batch","v":1,"pid":7,"events":[{"seq":1},]}`, `{"t":"bye","v":1,"pid":7}`, `{"v":1,"pid":7,"t":"batch"}`,
	} {
		out = append(out, []byte(l))
	}
	return out
}

func TestLineReaderMatchesReadLine(t *testing.T) {
	var r LineReader
	for _, line := range lineSeeds(t) {
		t.Run(string(line[:min(len(line), 60)]), func(t *testing.T) { sameLine(t, &r, line) })
	}
}

// TestLineReaderFastPath: the lines the shim writes take the scanner, not ReadLine.
func TestLineReaderFastPath(t *testing.T) {
	var r LineReader
	for _, l := range []string{
		`{"t":"batch","v":1,"pid":7,"ident":{"role":"worker","dp":0,"pp":0,"tp":1,"ep":-1,"rank":1},"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":3,"step":2,"ts_ns":1,"cols":{"usage":0.5,"free_blocks":12}}],"dropped":0}`,
		`{"t":"batch","v":1,"pid":7,"events":[]}`,
	} {
		if _, ok := r.scanBatch([]byte(l)); !ok {
			t.Errorf("not scanned: %s", l)
		}
	}
}

// FuzzLineReader: on any line LineReader.Read and ReadLine agree (`make fuzz` runs it).
func FuzzLineReader(f *testing.F) {
	for _, s := range lineSeeds(f) {
		f.Add(s)
	}
	var r LineReader
	f.Fuzz(func(t *testing.T, line []byte) { sameLine(t, &r, line) })
}

// BenchmarkReadLine compares ReadLine with LineReader.Read on a 64-event batch line as the shim
// writes it.
func BenchmarkReadLine(b *testing.B) {
	var evs []string
	for i := 0; i < 64; i++ {
		evs = append(evs, `{"kind":"kv_cache","table":"kv_cache_usage","seq":`+itoa(int32(i+1))+`,"step":`+itoa(int32(i))+
			`,"ts_ns":1700000000000000000,"cols":{"usage":0.5,"free_blocks":12,"total_blocks":1024}}`)
	}
	line := []byte(`{"t":"batch","v":1,"pid":7,"ident":{"role":"worker","dp":0,"pp":0,"tp":1,"ep":-1,"rank":1},"events":[` + join(evs) + `],"dropped":0}`)
	b.Run("ReadLine", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := ReadLine(line); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*64)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("LineReader", func(b *testing.B) {
		b.ReportAllocs()
		var r LineReader
		for i := 0; i < b.N; i++ {
			if _, err := r.Read(line); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*64)/b.Elapsed().Seconds(), "events/s")
	})
}
