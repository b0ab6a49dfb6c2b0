package export_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/export"
	"github.com/profilemate/profilemate/export/perfettopb"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/report/reporttest"
)

// sessions are the folders every export test reads: the demo session (a real two-host run of the
// simulated vLLM, kept in report/testdata) and a synthetic one with GPUs.
func sessions(t *testing.T) map[string]string {
	t.Helper()
	synth := filepath.Join(t.TempDir(), "synthetic")
	if err := reporttest.Write(synth, reporttest.Small()); err != nil {
		t.Fatal(err)
	}
	demo, _ := filepath.Abs("../report/testdata/demo")
	return map[string]string{"demo": demo, "synthetic": synth}
}

// csvRows reads a session table with encoding/csv; nil when the session has none.
func csvRows(t *testing.T, dir, table string) (header []string, rows [][]string) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, table+".csv"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	all, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return all[0], all[1:]
}

func countWhere(t *testing.T, dir, table, col string) int {
	h, rows := csvRows(t, dir, table)
	if col == "" {
		return len(rows)
	}
	i := -1
	for j, c := range h {
		if c == col {
			i = j
		}
	}
	n := 0
	for _, r := range rows {
		if i >= 0 && r[i] != "" {
			n++
		}
	}
	return n
}

// want is what the timeline must hold per event kind and category (source table), from the CSVs.
func want(t *testing.T, dir string) map[string]map[string]int {
	w := map[string]map[string]int{
		export.Slice: {"forward_pass_timing": countWhere(t, dir, "forward_pass_timing", ""), "cpu_operations_timing": countWhere(t, dir, "cpu_operations_timing", ""),
			"batch_utilization": countWhere(t, dir, "batch_utilization", "")},
		export.Instant: {"preemption_events": countWhere(t, dir, "preemption_events", ""), "cuda_graph_captures": countWhere(t, dir, "cuda_graph_captures", "")},
		export.Counter: {"KV cache usage": countWhere(t, dir, "kv_cache_usage", "usage"), "GPU utilisation": countWhere(t, dir, "gpu_metrics", "util_gpu")},
	}
	for _, m := range w {
		for k, v := range m {
			if v == 0 {
				delete(m, k)
			}
		}
	}
	return w
}

// readPerfetto decodes a trace with the protoc-generated reader and checks its structure: every
// event on a declared track whose parent is a process track, per track non-decreasing timestamps,
// every END closing an open slice, nothing left open. It returns counts per kind and category
// (counters by track name without the GPU index and unit).
func readPerfetto(t *testing.T, b []byte) (map[string]map[string]int, int) {
	t.Helper()
	var tr perfettopb.Trace
	if err := gproto.Unmarshal(b, &tr); err != nil {
		t.Fatalf("perfetto trace does not decode: %v", err)
	}
	procs := map[uint64]bool{}
	tracks := map[uint64]*perfettopb.TrackDescriptor{}
	got := map[string]map[string]int{export.Slice: {}, export.Instant: {}, export.Counter: {}}
	type state struct {
		last int64
		open []string
	}
	st := map[uint64]*state{}
	for i, p := range tr.Packet {
		if p.GetTrustedPacketSequenceId() == 0 {
			t.Fatalf("packet %d has no sequence id", i)
		}
		if d := p.GetTrackDescriptor(); d != nil {
			if d.Process != nil {
				procs[d.GetUuid()] = true
			} else if !procs[d.GetParentUuid()] {
				t.Errorf("track %q has parent %d, not a process track", d.GetName(), d.GetParentUuid())
			}
			tracks[d.GetUuid()] = d
			continue
		}
		ev := p.GetTrackEvent()
		if ev == nil {
			t.Fatalf("packet %d is neither a descriptor nor a track event", i)
		}
		d := tracks[ev.GetTrackUuid()]
		if d == nil {
			t.Fatalf("packet %d on undeclared track %d", i, ev.GetTrackUuid())
		}
		s := st[ev.GetTrackUuid()]
		if s == nil {
			s = &state{}
			st[ev.GetTrackUuid()] = s
		}
		ts := int64(p.GetTimestamp())
		if ts < s.last {
			t.Fatalf("track %q goes back in time at packet %d: %d < %d", d.GetName(), i, ts, s.last)
		}
		s.last = ts
		cat := strings.Join(ev.GetCategories(), ",")
		switch ev.GetType() {
		case perfettopb.TrackEvent_TYPE_SLICE_BEGIN:
			if d.Counter != nil {
				t.Errorf("slice on counter track %q", d.GetName())
			}
			s.open = append(s.open, ev.GetName())
			got[export.Slice][cat]++
		case perfettopb.TrackEvent_TYPE_SLICE_END:
			if len(s.open) == 0 {
				t.Fatalf("track %q: END at packet %d with no open slice", d.GetName(), i)
			}
			s.open = s.open[:len(s.open)-1]
		case perfettopb.TrackEvent_TYPE_INSTANT:
			got[export.Instant][cat]++
		case perfettopb.TrackEvent_TYPE_COUNTER:
			if d.Counter == nil {
				t.Errorf("counter value on non-counter track %q", d.GetName())
			}
			if ev.DoubleCounterValue == nil || math.IsNaN(ev.GetDoubleCounterValue()) {
				t.Errorf("counter on %q has no value", d.GetName())
			}
			name := d.GetName()
			if strings.HasPrefix(name, "GPU ") {
				name = "GPU utilisation"
			}
			name, _, _ = strings.Cut(name, " (")
			got[export.Counter][name]++
		default:
			t.Fatalf("packet %d: event type %v", i, ev.GetType())
		}
	}
	for u, s := range st {
		if len(s.open) > 0 {
			t.Errorf("track %q ends with %d open slices", tracks[u].GetName(), len(s.open))
		}
	}
	for _, m := range got {
		for k, v := range m {
			if v == 0 {
				delete(m, k)
			}
		}
	}
	return got, len(procs)
}

func processes(t *testing.T, dir string) int {
	seen := map[string]bool{}
	for _, table := range []string{"forward_pass_timing", "cpu_operations_timing", "batch_utilization", "preemption_events", "cuda_graph_captures", "kv_cache_usage", "gpu_metrics"} {
		h, rows := csvRows(t, dir, table)
		hi, pi := -1, -1
		for j, c := range h {
			switch c {
			case "host":
				hi = j
			case "pid":
				pi = j
			}
		}
		for _, r := range rows {
			seen[r[hi]+"/"+r[pi]] = true
		}
	}
	return len(seen)
}

// TestPerfettoReadBack exports the demo and synthetic sessions and reads the traces back with the
// generated decoder: slice, instant and counter counts equal the CSV rows per table, one process
// track per process, every slice closed and every track in time order.
func TestPerfettoReadBack(t *testing.T) {
	for name, dir := range sessions(t) {
		t.Run(name, func(t *testing.T) {
			tl, err := export.Build(dir)
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			if err := tl.WritePerfetto(&b); err != nil {
				t.Fatal(err)
			}
			got, procs := readPerfetto(t, b.Bytes())
			w := want(t, dir)
			for kind, m := range w {
				for cat, n := range m {
					if got[kind][cat] != n {
						t.Errorf("%s %s: %d in the trace, want %d from the CSV", kind, cat, got[kind][cat], n)
					}
				}
				if len(got[kind]) != len(m) {
					t.Errorf("%s categories %v, want %v", kind, got[kind], m)
				}
			}
			if want := processes(t, dir); procs != want {
				t.Errorf("%d process tracks, want %d (one per host/pid)", procs, want)
			}
		})
	}
}

// TestChromeJSONReadBack checks the JSON export: complete events per table equal the CSV rows,
// instants and counters too, every duration non-negative, no partial overlap within a thread.
func TestChromeJSONReadBack(t *testing.T) {
	for name, dir := range sessions(t) {
		t.Run(name, func(t *testing.T) {
			tl, err := export.Build(dir)
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			if err := tl.WriteChromeJSON(&b); err != nil {
				t.Fatal(err)
			}
			var doc struct {
				TraceEvents []struct {
					Name, Cat, Ph string
					TS            float64
					Dur           *float64
					PID, TID      int
				}
			}
			if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
				t.Fatalf("not JSON: %v", err)
			}
			got := map[string]map[string]int{export.Slice: {}, export.Instant: {}, export.Counter: {}}
			type span struct{ s, e float64 }
			lanes := map[[2]int][]span{}
			for _, e := range doc.TraceEvents {
				switch e.Ph {
				case "X":
					if e.Dur == nil || *e.Dur < 0 {
						t.Fatalf("slice %q without a non-negative dur", e.Name)
					}
					got[export.Slice][e.Cat]++
					lanes[[2]int{e.PID, e.TID}] = append(lanes[[2]int{e.PID, e.TID}], span{e.TS, e.TS + *e.Dur})
				case "i":
					got[export.Instant][e.Cat]++
				case "C":
					n := e.Name
					if strings.HasPrefix(n, "GPU ") {
						n = "GPU utilisation"
					}
					got[export.Counter][n]++
				}
			}
			for kind, m := range want(t, dir) {
				for cat, n := range m {
					if got[kind][cat] != n {
						t.Errorf("%s %s: %d, want %d", kind, cat, got[kind][cat], n)
					}
				}
			}
			for lane, sp := range lanes {
				sort.Slice(sp, func(i, j int) bool { return sp[i].s < sp[j].s || (sp[i].s == sp[j].s && sp[i].e > sp[j].e) })
				var stack []float64
				for _, s := range sp {
					for len(stack) > 0 && stack[len(stack)-1] <= s.s+1e-3 {
						stack = stack[:len(stack)-1]
					}
					if len(stack) > 0 && s.e > stack[len(stack)-1]+1e-3 {
						t.Fatalf("pid %d tid %d: slice %v overlaps its enclosing slice partly", lane[0], lane[1], s)
					}
					stack = append(stack, s.e)
				}
			}
		})
	}
}

// TestOverlappingSlicesGetLanes writes forward passes that overlap partly (pipelined steps): the
// second goes to its own lane track and the trace stays well nested.
func TestOverlappingSlicesGetLanes(t *testing.T) {
	dir := t.TempDir()
	meta := `{"schema_version":"1.0","session":"S","status":"ended","start_ns":0,"hosts":{},"processes":[{"host":"h","pid":7,"proc":"w0","role":"worker","dp":0,"pp":0,"tp":0,"ep":-1,"rank":0}],"rows":{}}`
	csvText := "session,host,pid,role,dp,pp,tp,ep,seq,step,ts_ns,cpu_ms,gpu_ms,gpu_status,tokens,runtime_mode,ts_aligned_ns\n" +
		"S,h,7,worker,0,0,0,-1,1,1,10000000,10,,unavailable,8,FULL,10000000\n" + // 0..10 ms
		"S,h,7,worker,0,0,0,-1,2,2,15000000,10,,unavailable,8,FULL,15000000\n" + // 5..15 ms: partial overlap
		"S,h,7,worker,0,0,0,-1,3,3,30000000,10,,unavailable,8,FULL,30000000\n" // 20..30 ms
	os.WriteFile(filepath.Join(dir, "metadata.json"), []byte(meta), 0o644)
	os.WriteFile(filepath.Join(dir, "forward_pass_timing.csv"), []byte(csvText), 0o644)
	tl, err := export.Build(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tr := range tl.Tracks {
		names = append(names, tr.Name)
	}
	sort.Strings(names)
	if strings.Join(names, "|") != "forward passes|forward passes #2" {
		t.Errorf("tracks %q, want the base track and one lane", names)
	}
	var b bytes.Buffer
	if err := tl.WritePerfetto(&b); err != nil {
		t.Fatal(err)
	}
	got, _ := readPerfetto(t, b.Bytes())
	if got[export.Slice]["forward_pass_timing"] != 3 {
		t.Errorf("slices %v, want 3", got[export.Slice])
	}
}

// TestParquetReadBack writes every table as Parquet and reads it back: column types as
// proto/tables says, the same number of rows and the same values (empty cells as nulls).
func TestParquetReadBack(t *testing.T) {
	for name, dir := range sessions(t) {
		t.Run(name, func(t *testing.T) {
			out := t.TempDir()
			files, err := export.WriteParquet(dir, out)
			if err != nil {
				t.Fatal(err)
			}
			tables := 0
			for _, table := range export.ParquetTables() {
				header, rows := csvRows(t, dir, table)
				if header == nil {
					continue
				}
				tables++
				path := filepath.Join(out, table+".parquet")
				if files[path] != int64(len(rows)) {
					t.Errorf("%s: reported %d rows, want %d", table, files[path], len(rows))
				}
				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				st, _ := f.Stat()
				pf, err := parquet.OpenFile(f, st.Size())
				if err != nil {
					t.Fatalf("%s: %v", table, err)
				}
				if pf.NumRows() != int64(len(rows)) {
					t.Errorf("%s: %d rows, want %d", table, pf.NumRows(), len(rows))
				}
				cols := pf.Schema().Columns()
				idx := map[string]int{}
				for i, c := range cols {
					idx[c[0]] = i
					typ, _ := export.ColumnType(table, c[0])
					kind := pf.Schema().Fields()[i].Type().Kind()
					wantKind := map[string]parquet.Kind{proto.TypeInt: parquet.Int64, proto.TypeFloat: parquet.Double, proto.TypeBool: parquet.Boolean, proto.TypeString: parquet.ByteArray}[typ]
					if kind != wantKind {
						t.Errorf("%s.%s: parquet %v, want %v (%s)", table, c[0], kind, wantKind, typ)
					}
				}
				if len(cols) != len(header) {
					t.Errorf("%s: %d columns, want %d", table, len(cols), len(header))
				}
				r := parquet.NewReader(f)
				buf := make([]parquet.Row, 256)
				line := 0
				for {
					n, err := r.ReadRows(buf)
					for _, row := range buf[:n] {
						for j, h := range header {
							cell, v := rows[line][j], row[idx[h]]
							if cell == "" {
								if !v.IsNull() {
									t.Fatalf("%s line %d %s: %v, want null", table, line+2, h, v)
								}
								continue
							}
							typ, _ := export.ColumnType(table, h)
							var got string
							switch typ {
							case proto.TypeInt:
								got = strconv.FormatInt(v.Int64(), 10)
							case proto.TypeFloat:
								want, _ := strconv.ParseFloat(cell, 64)
								if v.Double() != want {
									t.Fatalf("%s line %d %s: %v, want %v", table, line+2, h, v.Double(), want)
								}
								got = cell
							case proto.TypeBool:
								got = strconv.FormatBool(v.Boolean())
							default:
								got = string(v.ByteArray())
							}
							if got != cell {
								t.Fatalf("%s line %d %s: %q, want %q", table, line+2, h, got, cell)
							}
						}
						line++
					}
					if err == io.EOF || n == 0 {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
				}
				if line != len(rows) {
					t.Errorf("%s: read %d rows, want %d", table, line, len(rows))
				}
				f.Close()
			}
			if len(files) != tables {
				t.Errorf("%d files, want one per table with a CSV (%d)", len(files), tables)
			}
		})
	}
}

// TestParquetBadCell: a cell that is not its column's type is an error naming file, line and
// column, and leaves no half-written file.
func TestParquetBadCell(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "metadata.json"), []byte(`{"session":"S","hosts":{},"processes":[],"rows":{}}`), 0o644)
	os.WriteFile(filepath.Join(dir, "kv_cache_usage.csv"), []byte("session,host,pid,role,dp,pp,tp,ep,seq,step,ts_ns,usage,ts_aligned_ns\nS,h,notanint,engine_core,0,-1,-1,-1,1,1,5,0.5,5\n"), 0o644)
	out := t.TempDir()
	_, err := export.WriteParquet(dir, out)
	if err == nil || !strings.Contains(err.Error(), "kv_cache_usage.csv line 2 column pid") {
		t.Fatalf("got %v, want an error naming kv_cache_usage.csv line 2 column pid", err)
	}
	if _, err := os.Stat(filepath.Join(out, "kv_cache_usage.parquet")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("half-written parquet file left behind: %v", err)
	}
}
