package hub

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeSegment makes a segment folder: metadata m and CSV files by name (header line first).
func writeSegment(t *testing.T, dir string, m *Metadata, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, MetadataFile), b, 0o640); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCopyWindow: rows are kept by ts_aligned_ns in [since, until) (ts_ns for tables without it),
// headers that differ between segments are merged by column name, segments outside the range are
// not read, counts are recomputed, findings are left out with a range and concatenated without,
// and start_ns follows the first segment read.
func TestCopyWindow(t *testing.T) {
	root := t.TempDir()
	proc := func(rows map[string]int64) []*ProcMeta {
		return []*ProcMeta{{Host: "h", PID: 1, Proc: "w0", Rows: rows, EarlierSeqs: [][2]uint64{{1, 2}}}}
	}
	hdr := "session,host,pid,role,dp,pp,tp,ep,seq,step,ts_ns,usage," + AlignedColumn + "\n"
	row := func(seq, ts string) string {
		return "S,h,1,worker,0,0,0,-1," + seq + "," + seq + "," + ts + ",0.5," + ts + "\n"
	}
	seg0 := filepath.Join(root, "S@000000")
	writeSegment(t, seg0, &Metadata{Session: "S", Status: StatusEnded, EndReason: EndRotated, StartNS: 50, Rows: map[string]int64{"kv_cache_usage": 2},
		Duplicates: 1, Processes: proc(map[string]int64{"kv_cache_usage": 2}),
		Segment: &SegmentMeta{Index: 0, FirstAlignedNS: 100, LastAlignedNS: 200}},
		map[string]string{"kv_cache_usage.csv": hdr + row("1", "100") + row("2", "200"), "findings.csv": "plugin,text\np,early\n"})
	seg1 := filepath.Join(root, "S@000001")
	// A later hub added a column: rows are merged by name, the older segment's cells left empty.
	writeSegment(t, seg1, &Metadata{Session: "S", Status: StatusEnded, EndReason: EndRotated, StartNS: 50, Rows: map[string]int64{"kv_cache_usage": 2},
		Duplicates: 2, Processes: proc(map[string]int64{"kv_cache_usage": 2}),
		Segment: &SegmentMeta{Index: 1, Previous: "S@000000", FirstAlignedNS: 300, LastAlignedNS: 400}},
		map[string]string{"kv_cache_usage.csv": strings.Replace(hdr, ",usage,", ",usage,free_blocks,", 1) +
			"S,h,1,worker,0,0,0,-1,3,3,300,0.5,7,300\nS,h,1,worker,0,0,0,-1,4,4,400,0.5,8,400\n"})
	live := filepath.Join(root, "S")
	writeSegment(t, live, &Metadata{Session: "S", Status: StatusActive, StartNS: 50, Rows: map[string]int64{"kv_cache_usage": 1},
		Processes: proc(map[string]int64{"kv_cache_usage": 1}), Segment: &SegmentMeta{Index: 2, Previous: "S@000001", FirstAlignedNS: 500, LastAlignedNS: 500}},
		map[string]string{"kv_cache_usage.csv": hdr + row("5", "500"), "findings.csv": "plugin,text\np,late\n",
			"straggler_ranks.csv": "session,host,pid,ts_ns,ratio\nS,hub,9,150,1.1\nS,hub,9,450,1.2\n", pluginsFile: `{"p":1}`})
	dirs, err := segmentsIn(root, "S")
	if err != nil || len(dirs) != 3 || dirs[2] != live {
		t.Fatalf("segments %v, %v", dirs, err)
	}
	read := func(dir, name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return string(b)
	}

	// Everything.
	all := filepath.Join(t.TempDir(), "all")
	m, err := CopyWindow(dirs, Window{}, all)
	if err != nil {
		t.Fatal(err)
	}
	kv := read(all, "kv_cache_usage.csv")
	if got := strings.Count(kv, "\n"); got != 6 || !strings.HasPrefix(kv, strings.TrimSuffix(hdr, AlignedColumn+"\n")+AlignedColumn+",free_blocks\n") {
		t.Errorf("all rows: %d lines\n%s", got, kv)
	}
	if !strings.Contains(kv, "S,h,1,worker,0,0,0,-1,3,3,300,0.5,300,7\n") {
		t.Errorf("a row of the segment with another header was not remapped by name:\n%s", kv)
	}
	if m.Rows["kv_cache_usage"] != 5 || m.Duplicates != 3 || m.Processes[0].Rows["kv_cache_usage"] != 5 || m.Processes[0].EarlierSeqs != nil {
		t.Errorf("metadata rows %v duplicates %d process %+v", m.Rows, m.Duplicates, m.Processes[0])
	}
	if m.Segment != nil || m.Window == nil || len(m.Window.Segments) != 3 || m.StartNS != 50 {
		t.Errorf("segment %+v window %+v start %d", m.Segment, m.Window, m.StartNS)
	}
	if f := read(all, "findings.csv"); f != "plugin,text\np,early\np,late\n" || read(all, pluginsFile) != `{"p":1}` {
		t.Errorf("findings %q, plugins.json %q", f, read(all, pluginsFile))
	}

	// [200, 501): rows 2-5 of the hub's table; every segment's aligned range meets the range, so
	// all are read; the derived table is filtered by ts_ns.
	part := filepath.Join(t.TempDir(), "part")
	m, err = CopyWindow(dirs, Window{Since: time.Unix(0, 200), Until: time.Unix(0, 501)}, part)
	if err != nil {
		t.Fatal(err)
	}
	kv = read(part, "kv_cache_usage.csv")
	for _, want := range []string{",2,2,200,", ",3,3,300,", ",4,4,400,", ",5,5,500,"} {
		if !strings.Contains(kv, want) {
			t.Errorf("range [200,501) lacks row %s:\n%s", want, kv)
		}
	}
	if strings.Contains(kv, ",1,1,100,") || m.Rows["kv_cache_usage"] != 4 || m.Processes[0].Rows["kv_cache_usage"] != 4 {
		t.Errorf("range [200,501): rows %v\n%s", m.Rows, kv)
	}
	if d := read(part, "straggler_ranks.csv"); strings.Count(d, "\n") != 2 || !strings.Contains(d, ",450,") {
		t.Errorf("derived table by ts_ns:\n%s", d)
	}
	if _, err := os.Stat(filepath.Join(part, "findings.csv")); !os.IsNotExist(err) {
		t.Error("findings.csv kept with a range")
	}
	if m.StartNS != 200 || m.Window.SinceNS != 200 || m.Window.UntilNS != 501 {
		t.Errorf("start %d window %+v, want both from 200", m.StartNS, m.Window)
	}

	// [0, 300): until is exclusive (row 3 at 300 is out): segment 1 is not read, the live one
	// always is (its metadata may lag its rows).
	early := filepath.Join(t.TempDir(), "early")
	if m, err = CopyWindow(dirs, Window{Until: time.Unix(0, 300)}, early); err != nil {
		t.Fatal(err)
	}
	if len(m.Window.Segments) != 2 || m.Window.Segments[1] != "S" || m.Rows["kv_cache_usage"] != 2 || strings.Contains(read(early, "kv_cache_usage.csv"), ",3,3,300,") {
		t.Errorf("[0,300): read %v, rows %v", m.Window.Segments, m.Rows)
	}

	// [450, ∞): only the live segment is read; start_ns is the range's start.
	late := filepath.Join(t.TempDir(), "late")
	if m, err = CopyWindow(dirs, Window{Since: time.Unix(0, 450)}, late); err != nil {
		t.Fatal(err)
	}
	if len(m.Window.Segments) != 1 || m.Window.Segments[0] != "S" || m.Rows["kv_cache_usage"] != 1 || m.Duplicates != 0 {
		t.Errorf("[450,): read %v, rows %v, duplicates %d", m.Window.Segments, m.Rows, m.Duplicates)
	}

	// Segment 0 removed by retention: the copy starts at segment 1's first row.
	if err := os.RemoveAll(seg0); err != nil {
		t.Fatal(err)
	}
	dirs, _ = segmentsIn(root, "S")
	if m, err = CopyWindow(dirs, Window{}, filepath.Join(t.TempDir(), "rest")); err != nil {
		t.Fatal(err)
	}
	if m.StartNS != 300 {
		t.Errorf("start %d without the first segment, want 300 (its first row)", m.StartNS)
	}
}
