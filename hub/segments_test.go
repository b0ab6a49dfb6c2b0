package hub

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// testClock is a hub clock the test moves by hand.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *testClock) now() time.Time           { return time.Unix(0, c.ns.Load()) }
func (c *testClock) add(d time.Duration)      { c.ns.Add(int64(d)) }
func (c *testClock) at(d time.Duration) int64 { return c.ns.Load() + int64(d) }

// procBatch is a kv_cache batch of session S1 from host/pid (worker rank r) with the given seqs.
func procBatch(host string, pid int64, r int64, seqs ...uint64) *Batch {
	b := kvBatch(host, pid, seqs...)
	b.Proc = "w" + strconv.FormatInt(r, 10)
	b.Ident.Rank, b.Ident.TP = r, r
	return b
}

// segmentRows reads every row of every segment of session S1: (host/pid/seq) -> the segment
// indexes it was found in.
func segmentRows(t *testing.T, data string) (map[string][]int, []*Metadata) {
	t.Helper()
	dirs, err := Segments(data, "S1")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]int{}
	var metas []*Metadata
	for i, d := range dirs {
		m, err := ReadMetadata(d)
		if err != nil {
			t.Fatalf("segment %s: %v", d, err)
		}
		metas = append(metas, m)
		p := filepath.Join(d, "kv_cache_usage.csv")
		if _, err := os.Stat(p); err != nil {
			continue
		}
		recs := readCSV(t, p)
		for _, r := range recs[1:] {
			k := r[1] + "/" + r[2] + "/" + r[8]
			rows[k] = append(rows[k], i)
		}
	}
	return rows, metas
}

// rowCount is the rows the metadata of S1's segments count (0 while there is none), for polls.
func rowCount(data string) int {
	dirs, _ := Segments(data, "S1")
	n := int64(0)
	for _, d := range dirs {
		if m, err := ReadMetadata(d); err == nil {
			n += m.Rows["kv_cache_usage"]
		}
	}
	return int(n)
}

// checkChain checks the segments' records: consecutive indexes, each naming the one before, every
// closed one ended by rotation with its time range, and metadata rows equal to the CSV rows.
func checkChain(t *testing.T, data string, metas []*Metadata) {
	t.Helper()
	dirs, _ := Segments(data, "S1")
	for i, m := range metas {
		g := m.Segment
		if g == nil {
			t.Fatalf("segment %d (%s) has no segment record", i, dirs[i])
		}
		if g.Index != i {
			t.Errorf("segment %d has index %d", i, g.Index)
		}
		if m.Session != "S1" {
			t.Errorf("segment %d names session %q", i, m.Session)
		}
		if i > 0 && g.Previous != filepath.Base(dirs[i-1]) {
			t.Errorf("segment %d: previous %q, want %q", i, g.Previous, filepath.Base(dirs[i-1]))
		}
		if i < len(metas)-1 {
			if m.Status != StatusEnded || m.EndReason != EndRotated || g.EndNS == 0 || g.Rotated == "" {
				t.Errorf("closed segment %d: status %s/%s end %d rotated %q", i, m.Status, m.EndReason, g.EndNS, g.Rotated)
			}
			if filepath.Base(dirs[i]) != segmentFolderName("S1", i) {
				t.Errorf("closed segment %d in %s", i, dirs[i])
			}
		} else if filepath.Base(dirs[i]) != "S1" {
			t.Errorf("live segment in %s, want the session's own folder", dirs[i])
		}
		if g.FirstAlignedNS > g.LastAlignedNS {
			t.Errorf("segment %d: aligned range %d..%d", i, g.FirstAlignedNS, g.LastAlignedNS)
		}
	}
}

// TestRotationBySizeUnionIsExactlyOnce: three processes publish interleaved batches, with
// overlapping re-sends (as an agent's spool replay or a redelivery makes them) that straddle
// rotation boundaries, and the hub restarts in the middle. The session is cut into several
// segments by size; the union of the segments holds every event exactly once, each process's
// recorded boundary (earlier_seqs) is exactly what earlier segments hold, and Sessions() lists
// the session once with its segment count and all its rows.
func TestRotationBySizeUnionIsExactlyOnce(t *testing.T) {
	data := t.TempDir()
	cfg := Config{DataDir: data, RotateBytes: 400}
	s, stop := startHubCfg(t, cfg)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	type pk struct {
		host string
		pid  int64
		rank int64
	}
	procs := []pk{{"hostA", 10, 0}, {"hostA", 11, 1}, {"hostB", 10, 2}}
	want := map[string]bool{}
	next := map[pk]uint64{}
	send := func(nc *nats.Conn, p pk, from, to uint64) {
		var seqs []uint64
		for q := from; q <= to; q++ {
			seqs = append(seqs, q)
			want[fmt.Sprintf("%s/%d/%d", p.host, p.pid, q)] = true
		}
		publish(t, nc, fmt.Sprintf("pm.v1.ev.S1.%s.w%d.kv_cache", p.host, p.rank), jsonMsg{Batch: procBatch(p.host, p.pid, p.rank, seqs...)})
	}
	for _, p := range procs {
		publish(t, nc, fmt.Sprintf("pm.v1.life.S1.%s.w%d", p.host, p.rank), jsonMsg{Life: &Life{Session: "S1", Host: p.host, PID: p.pid, Type: LifeHello, Ident: Ident{Role: "worker", Rank: p.rank}}})
	}
	round := func(nc *nats.Conn, n int) {
		for i := 0; i < n; i++ {
			for _, p := range procs {
				from := next[p] + 1
				send(nc, p, from, from+2)
				// Every other batch re-sends the one before it as well.
				if i%2 == 1 && from > 3 {
					send(nc, p, from-3, from+2)
				}
				next[p] = from + 2
			}
		}
	}
	// A reader of the live folder (the plugin host closes a session whose metadata says ended)
	// must never see the session ended while it only rotates.
	watch, watched := make(chan struct{}), make(chan string, 1)
	go func() {
		seen := ""
		for {
			select {
			case <-watch:
				watched <- seen
				return
			default:
			}
			if m, err := ReadMetadata(SessionDir(data, "S1")); err == nil && m.Status == StatusEnded && seen == "" {
				seen = m.EndReason
			}
		}
	}()
	round(nc, 6)
	waitFor(t, "two rotations", func() bool { d, _ := Segments(data, "S1"); return len(d) >= 3 })
	close(watch)
	if r := <-watched; r != "" {
		t.Errorf("the live folder's metadata said ended (%s) during rotations", r)
	}
	nc.Close()
	stop()

	// A restart: the live segment's seen-state is rebuilt from its CSVs and earlier_seqs.
	s, _ = startHubCfg(t, cfg)
	nc, err = nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, p := range procs {
		send(nc, p, 1, next[p]) // everything again: all duplicates
	}
	round(nc, 6)
	for _, p := range procs {
		publish(t, nc, fmt.Sprintf("pm.v1.life.S1.%s.w%d", p.host, p.rank), jsonMsg{Life: &Life{Session: "S1", Host: p.host, PID: p.pid, Type: LifeBye, LastSeq: next[p]}})
	}
	waitFor(t, "session ended", func() bool {
		m, err := ReadMetadata(SessionDir(data, "S1"))
		return err == nil && m.Status == StatusEnded && m.EndReason == EndAllProcessesEnded
	})

	rows, metas := segmentRows(t, data)
	if len(metas) < 4 {
		t.Fatalf("%d segments, want at least 4 (rotation by size)", len(metas))
	}
	checkChain(t, data, metas)
	for k, segs := range rows {
		if !want[k] {
			t.Errorf("row %s was never sent", k)
		}
		if len(segs) != 1 {
			t.Errorf("row %s written %d times (segments %v)", k, len(segs), segs)
		}
	}
	for k := range want {
		if rows[k] == nil {
			t.Errorf("row %s lost", k)
		}
	}
	// Each segment's per-process boundary names exactly the rows earlier segments hold.
	var total int64
	for i, m := range metas {
		total += m.Rows["kv_cache_usage"]
		if m.Segment.Rotated != "" && m.Segment.Rotated != "bytes" {
			t.Errorf("segment %d rotated by %q, want bytes", i, m.Segment.Rotated)
		}
		for _, p := range m.Processes {
			var earlier seqSet
			earlier.addRanges(p.EarlierSeqs)
			for q := uint64(1); q <= next[pk{p.Host, p.PID, p.Rank}]; q++ {
				segs := rows[fmt.Sprintf("%s/%d/%d", p.Host, p.PID, q)]
				if len(segs) == 1 && earlier.has(q) != (segs[0] < i) {
					t.Errorf("segment %d: %s/%d seq %d in earlier_seqs %v, but written in segment %d", i, p.Host, p.PID, q, earlier.has(q), segs[0])
				}
			}
		}
	}
	if total != int64(len(want)) {
		t.Errorf("metadata rows over all segments %d, want %d", total, len(want))
	}
	var info *SessionInfo
	for _, si := range s.Sessions() {
		if si.Session == "S1" {
			if info != nil {
				t.Fatalf("S1 listed twice by Sessions()")
			}
			info = &si
		}
	}
	if info == nil || info.Segments != len(metas) || info.Rows["kv_cache_usage"] != int64(len(want)) || info.Dir != SessionDir(data, "S1") {
		t.Errorf("Sessions() entry %+v, want %d segments, %d rows, dir %s", info, len(metas), len(want), SessionDir(data, "S1"))
	}
}

// TestRotationByAgeOnTheHubClock: with RotateEvery an hour on a test clock, a session fed once per
// (test) half hour is cut every second batch; each segment's time range is the clock's, an empty
// segment is never closed, and a session with rotation off keeps the layout of before (no
// segment record, no other folders).
func TestRotationByAgeOnTheHubClock(t *testing.T) {
	data := t.TempDir()
	clk := newTestClock()
	start := clk.now().UnixNano()
	s, _ := startHubCfg(t, Config{DataDir: data, RotateEvery: time.Hour, Now: clk.now})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i := uint64(1); i <= 8; i++ {
		publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, i)})
		waitFor(t, fmt.Sprintf("row %d", i), func() bool { return rowCount(data) == int(i) })
		clk.add(30 * time.Minute)
	}
	rows, metas := segmentRows(t, data)
	checkChain(t, data, metas)
	if len(metas) != 4 {
		t.Fatalf("%d segments, want 4 (8 batches half an hour apart, an hour per segment)", len(metas))
	}
	for i, m := range metas {
		g := m.Segment
		if g.StartNS != start+int64(i)*int64(time.Hour) {
			t.Errorf("segment %d opened at %d, want %d", i, g.StartNS, start+int64(i)*int64(time.Hour))
		}
		if i < 3 && (g.EndNS != g.StartNS+int64(time.Hour) || g.Rotated != "age") {
			t.Errorf("segment %d closed at %d by %q, want an hour after its start by age", i, g.EndNS, g.Rotated)
		}
		if m.Rows["kv_cache_usage"] != 2 {
			t.Errorf("segment %d holds %d rows, want 2", i, m.Rows["kv_cache_usage"])
		}
	}
	for k, segs := range rows {
		if len(segs) != 1 {
			t.Errorf("row %s in segments %v", k, segs)
		}
	}
	// Hours pass without new rows: nothing rotates (no empty segments).
	clk.add(5 * time.Hour)
	publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 8)}) // a duplicate only
	waitFor(t, "the duplicate counted", func() bool {
		m, err := ReadMetadata(SessionDir(data, "S1"))
		return err == nil && m.Duplicates == 1
	})
	if d, _ := Segments(data, "S1"); len(d) != 4 {
		t.Errorf("%d segments after hours without rows, want 4", len(d))
	}

	// Rotation off: the folder of before, no segment record.
	plain := t.TempDir()
	p, stopP := startHubCfg(t, Config{DataDir: plain, Now: clk.now})
	nc2, err := nats.Connect(p.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	for i := uint64(1); i <= 3; i++ {
		publish(t, nc2, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, i)})
		clk.add(2 * time.Hour)
	}
	waitFor(t, "rows without rotation", func() bool {
		m, err := ReadMetadata(SessionDir(plain, "S1"))
		return err == nil && m.Rows["kv_cache_usage"] == 3
	})
	m, _ := ReadMetadata(SessionDir(plain, "S1"))
	ents, _ := os.ReadDir(sessionsDir(plain))
	if m.Segment != nil || len(ents) != 1 {
		t.Errorf("without rotation: segment %+v, %d folders", m.Segment, len(ents))
	}

	// Rotation turned on at a restart: the running session becomes segment 0 from now, and its
	// aligned range covers the rows written before (what a time range selects segments by).
	nc2.Close()
	stopP()
	p, _ = startHubCfg(t, Config{DataDir: plain, RotateEvery: time.Hour, Now: clk.now})
	nc3, err := nats.Connect(p.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc3.Close()
	publish(t, nc3, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 4)})
	waitFor(t, "row 4 with a segment record", func() bool {
		m, err := ReadMetadata(SessionDir(plain, "S1"))
		return err == nil && m.Rows["kv_cache_usage"] == 4 && m.Segment != nil
	})
	m, _ = ReadMetadata(SessionDir(plain, "S1"))
	if g := m.Segment; g.Index != 0 || g.FirstAlignedNS != 1001 || g.LastAlignedNS != 1004 {
		t.Errorf("segment record after turning rotation on: %+v, want index 0 over ts_aligned_ns 1001..1004", g)
	}
}

// closeLiveByHand leaves data as a hub that stopped half-way through closing S1's live segment
// would: moved to its closed name and/or marked ended by rotation; with next, the next segment's
// folder made but its metadata not yet written (a torn temporary file in it).
func closeLiveByHand(t *testing.T, data string, move, mark bool) (closed string) {
	t.Helper()
	live := SessionDir(data, "S1")
	m, err := ReadMetadata(live)
	if err != nil {
		t.Fatal(err)
	}
	m.Segment.Rotated = "bytes" // the last commit before the move records why
	if mark {
		m.Status, m.EndReason, m.EndNS = StatusEnded, EndRotated, time.Now().UnixNano()
		m.Segment.EndNS = m.EndNS
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(live, MetadataFile), b, 0o640); err != nil {
		t.Fatal(err)
	}
	closed = filepath.Join(sessionsDir(data), segmentFolderName("S1", m.Segment.Index))
	if move {
		if err := os.Rename(live, closed); err != nil {
			t.Fatal(err)
		}
	}
	return closed
}

// TestRotationInterruptedFinishes: a hub that stopped half-way through a rotation (the live
// segment moved to its closed name but not yet recorded as ended; moved and recorded but the next
// one not opened; recorded but not moved) finishes it: at start a moved segment is recorded as
// ended at once, and the session's next message opens the next segment. Nothing is written twice:
// the re-sent events are recognised from the closed segments.
func TestRotationInterruptedFinishes(t *testing.T) {
	data := t.TempDir()
	cfg := Config{DataDir: data, RotateBytes: 200}
	s, stop := startHubCfg(t, cfg)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 12; i += 3 {
		publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, i, i+1, i+2)})
	}
	waitFor(t, "12 rows", func() bool { return rowCount(data) == 12 })
	nc.Close()
	stop()
	next := uint64(13)
	for _, st := range []struct {
		name             string
		move, mark, next bool
	}{
		{"moved, not recorded", true, false, false},
		{"moved and recorded", true, true, false},
		{"recorded, not moved", false, true, false},
		{"next folder made, its metadata not written", true, true, true},
	} {
		before, _ := Segments(data, "S1")
		closed := closeLiveByHand(t, data, st.move, st.mark)
		if st.next {
			live := SessionDir(data, "S1")
			if err := os.MkdirAll(live, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(live, MetadataFile+".tmp"), []byte(`{"sess`), 0o640); err != nil {
				t.Fatal(err)
			}
		}
		s, stop := startHubCfg(t, cfg)
		if st.move {
			if m, err := ReadMetadata(closed); err != nil || m.Status != StatusEnded || m.EndReason != EndRotated {
				t.Errorf("%s: after start the closed segment is %+v (%v), want ended by rotation", st.name, m, err)
			}
		}
		nc, err := nats.Connect(s.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 1, 2, 3, next-1, next)}) // all but one again
		waitFor(t, fmt.Sprintf("row %d", next), func() bool { return rowCount(data) == int(next) })
		nc.Close()
		stop()
		rows, metas := segmentRows(t, data)
		checkChain(t, data, metas)
		if len(metas) != len(before)+1 {
			t.Errorf("%s: %d segments, want %d", st.name, len(metas), len(before)+1)
		}
		for k, segs := range rows {
			if len(segs) != 1 {
				t.Errorf("%s: row %s in segments %v", st.name, k, segs)
			}
		}
		if got := metas[len(metas)-1].Rows["kv_cache_usage"]; got != 1 {
			t.Errorf("%s: the new live segment holds %d rows, want 1 (row %d)", st.name, got, next)
		}
		next++
	}
}

// TestSegmentRetentionByAge: closed segments that closed more than SegmentsMaxAge ago (hub clock)
// are removed, the younger ones and the live one stay.
func TestSegmentRetentionByAge(t *testing.T) {
	data := t.TempDir()
	clk := newTestClock()
	s, _ := startHubCfg(t, Config{DataDir: data, RotateEvery: time.Hour, SegmentsMaxAge: 2 * time.Hour, Now: clk.now})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// One row an hour: segment i closes at hour i+1.
	for i := uint64(1); i <= 5; i++ {
		publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, i)})
		waitFor(t, fmt.Sprintf("row %d", i), func() bool {
			m, err := ReadMetadata(SessionDir(data, "S1"))
			return err == nil && m.Segment != nil && m.Segment.Index == int(i-1) && m.Rows["kv_cache_usage"] == 1
		})
		if i < 5 {
			clk.add(time.Hour)
		}
	}
	// Now is hour 4: segment 0 closed at hour 1 (3 h ago: removed), segment 1 at hour 2 (2 h ago:
	// kept, not older than the limit), 2 and 3 later, 4 is live.
	gone := filepath.Join(sessionsDir(data), segmentFolderName("S1", 0))
	waitFor(t, "segment 0 removed", func() bool { _, err := os.Stat(gone); return os.IsNotExist(err) })
	dirs, _ := Segments(data, "S1")
	var names []string
	for _, d := range dirs {
		names = append(names, filepath.Base(d))
	}
	want := []string{segmentFolderName("S1", 1), segmentFolderName("S1", 2), segmentFolderName("S1", 3), "S1"}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("segments %v, want %v", names, want)
	}
}

// TestSegmentRetentionBySize: while a session's segments together hold more than
// SegmentsMaxBytes on disk, its oldest closed segments are removed, never the live one; what stays
// is the newest run of segments.
func TestSegmentRetentionBySize(t *testing.T) {
	data := t.TempDir()
	const maxBytes = 6000 // a closed segment here is about 1.8 kB on disk, the live one 1.5 kB
	clk := newTestClock()
	s, _ := startHubCfg(t, Config{DataDir: data, RotateBytes: 300, SegmentsMaxBytes: maxBytes, Now: clk.now})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i := uint64(1); i <= 60; i += 4 {
		publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, i, i+1, i+2, i+3)})
	}
	size := func() (int64, []string) {
		dirs, _ := Segments(data, "S1")
		var n int64
		var names []string
		for _, d := range dirs {
			n += dirSize(d)
			names = append(names, filepath.Base(d))
		}
		return n, names
	}
	waitFor(t, "all rows", func() bool {
		m, err := ReadMetadata(SessionDir(data, "S1"))
		return err == nil && m.Rows["kv_cache_usage"] > 0 && rowsOf(t, SessionDir(data, "S1"), "h/1/60")
	})
	// The last rows may have grown the live segment after the last rotation's retention pass:
	// the periodic pass (once a minute of hub time) covers that.
	clk.add(2 * time.Minute)
	waitFor(t, "segments within the limit", func() bool { n, _ := size(); return n <= maxBytes })
	n, names := size()
	m, _ := ReadMetadata(SessionDir(data, "S1"))
	if names[len(names)-1] != "S1" {
		t.Fatalf("live segment removed: %v", names)
	}
	// The kept closed segments are the newest ones, consecutive up to the live one.
	for i, name := range names[:len(names)-1] {
		if want := segmentFolderName("S1", m.Segment.Index-(len(names)-1)+i); name != want {
			t.Errorf("kept %v, want the newest consecutive segments (%s at %d)", names, want, i)
		}
	}
	// And no more were removed than needed: about 1.8 kB each, two closed ones fit beside the live one.
	if len(names) < 3 || n > maxBytes {
		t.Errorf("kept %v (%d bytes), want the live segment and two or more closed ones within %d", names, n, maxBytes)
	}
}

// rowsOf reports whether the folder's kv_cache_usage.csv holds the row host/pid/seq.
func rowsOf(t *testing.T, dir, key string) bool {
	if _, err := os.Stat(filepath.Join(dir, "kv_cache_usage.csv")); err != nil {
		return false
	}
	for _, r := range readCSV(t, filepath.Join(dir, "kv_cache_usage.csv"))[1:] {
		if r[1]+"/"+r[2]+"/"+r[8] == key {
			return true
		}
	}
	return false
}
