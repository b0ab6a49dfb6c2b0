package host

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/plugins/pluginpb"
	"github.com/profilemate/profilemate/plugins/sdk"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// rotateEveryMessage makes the hub close the live segment before every message with new rows, so
// a run crosses a segment boundary between any two of its batches.
func rotateEveryMessage(c *hub.Config) { c.RotateBytes = 1 }

// segmentRows reads a table over every segment of the session, oldest first: its header and rows.
func (s *session) segmentRows(t *testing.T, table string) (hdr []string, rows [][]string) {
	t.Helper()
	dirs, err := hub.Segments(s.r.data, s.id)
	if err != nil {
		return nil, nil
	}
	for _, d := range dirs {
		h, rs := readRows(t, filepath.Join(d, table+".csv"))
		if h != nil {
			hdr = h
		}
		rows = append(rows, rs...)
	}
	return hdr, rows
}

func (s *session) segmentCount(t *testing.T, table string) int {
	_, rows := s.segmentRows(t, table)
	return len(rows)
}

// checkExactlyOnceAcrossSegments is checkExactlyOnce over the union of the session's segments:
// one example_batches row per input message, no key or seq twice, the events add up, and the
// final totals count every event once.
func (s *session) checkExactlyOnceAcrossSegments(t *testing.T) {
	t.Helper()
	hdr, rows := s.segmentRows(t, "example_batches")
	if hdr == nil {
		t.Fatal("no example_batches rows in any segment")
	}
	in, ev, sq := col(t, hdr, "input_seq"), col(t, hdr, "events"), col(t, hdr, "seq")
	keys, seqs := map[string]int{}, map[string]int{}
	total := 0
	for _, r := range rows {
		keys[r[in]]++
		seqs[r[sq]]++
		n, _ := strconv.Atoi(r[ev])
		total += n
	}
	for k, n := range keys {
		if n > 1 {
			t.Errorf("input_seq %s written %d times across segments", k, n)
		}
	}
	for k, n := range seqs {
		if n > 1 {
			t.Errorf("seq %s given %d times across segments", k, n)
		}
	}
	if len(rows) != s.msgs {
		t.Errorf("example_batches has %d rows over all segments, want one per input message: %d", len(rows), s.msgs)
	}
	if total != s.events {
		t.Errorf("example_batches counts %d events over all segments, the input had %d", total, s.events)
	}
	th, tot := s.segmentRows(t, "example_totals")
	sum := 0
	for _, row := range tot {
		n, _ := strconv.Atoi(row[col(t, th, "events")])
		sum += n
	}
	if sum != s.events || len(tot) != s.nw {
		t.Errorf("example_totals: %d rows counting %d events, want %d rows counting %d", len(tot), sum, s.nw, s.events)
	}
	if _, f := s.segmentRows(t, "findings"); len(f) != 1 {
		t.Errorf("%d findings over all segments, want 1", len(f))
	}
}

// TestRestartAfterRotationExactlyOnce: the session rotates between batches; the plugin is killed
// and later the whole host restarts, each right after rotations. Both replay the session from its
// first event, and rows whose first copy moved into a closed segment are not written again.
func TestRestartAfterRotationExactlyOnce(t *testing.T) {
	r := newRigWith(t, rotateEveryMessage)
	r.startHost(nil)
	r.install("example", "example")
	waitFor(t, "plugin running", func() bool { return r.status("example").State == StateRunning })
	s := r.newSession("20261130_070000_a1b2c3", 2)
	s.batches(4, 2)
	waitFor(t, "rows before the kill", func() bool { return s.segmentCount(t, "example_batches") >= s.msgs })
	if dirs, _ := hub.Segments(r.data, s.id); len(dirs) < 3 {
		t.Fatalf("the session did not rotate: segments %v", dirs)
	}
	pid := r.status("example").PID
	if pid <= 0 {
		t.Fatalf("no plugin pid in status: %+v", r.status("example"))
	}
	if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.batches(4, 2)
	waitFor(t, "a restart", func() bool { st := r.status("example"); return st.Restarts >= 1 && st.State == StateRunning })
	waitFor(t, "rows after the plugin restart", func() bool { return s.segmentCount(t, "example_batches") >= s.msgs })
	r.stopHost()
	s.batches(4, 2)
	waitFor(t, "the hub's rows", func() bool { return s.segmentCount(t, "forward_pass_timing") == s.events })
	r.startHost(nil)
	waitFor(t, "rows after the host restart", func() bool { return s.segmentCount(t, "example_batches") >= s.msgs })
	s.end()
	s.waitClosed(t)
	s.checkExactlyOnceAcrossSegments(t)
	if st := r.status("example"); st.Failed != 0 {
		t.Errorf("the host counted %d failed writes: %+v", st.Failed, st)
	}
	// pmhub plugins run over the rotated session writes only what is missing: nothing.
	r.stopHost()
	h, err := New(Config{Dir: t.TempDir(), StateDir: t.TempDir(), DataDir: r.data, Conn: r.nc, HostName: "hubhost"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if st, err := h.RunSession(ctx, bins["example"], s.id); err != nil {
		t.Fatalf("plugins run: %v (%+v)", err, st)
	}
	s.checkExactlyOnceAcrossSegments(t)
}

// TestWriteDuringRotationWaitsForNextSegment: a plugin's append that comes while the hub is
// between moving the live folder to its closed name and writing the next segment's metadata (the
// hub holds the rotation lock exclusively for exactly that) waits, then lands in the new live
// folder once: no error, nothing in the closed segment, no live folder made ahead of the hub.
func TestWriteDuringRotationWaitsForNextSegment(t *testing.T) {
	data := t.TempDir()
	live := hub.SessionDir(data, "s")
	if err := os.MkdirAll(live, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(live, hub.MetadataFile), []byte("{}\n"), 0o644)
	info := sdk.Info{Name: "p", Version: "1", Kinds: []string{"forward_pass"}, Tables: []sdk.Table{{Table: "p_rows", Kind: "p_row",
		Columns: []sdk.Column{{Name: "v", Type: sdk.TypeInt}}}}}
	w, err := newSessionWriter(data, "s", info, "h")
	if err != nil {
		t.Fatal(err)
	}
	row := func(in uint64) []*pluginpb.Row {
		return []*pluginpb.Row{{Table: "p_rows", InputSeq: in, Cols: map[string]*pmpb.Value{"v": {V: &pmpb.Value_I{I: int64(in)}}}}}
	}
	if _, err := w.write(row(1), 1); err != nil {
		t.Fatal(err)
	}
	// The hub's rotation: lock, move the live folder, make the next one with its metadata, unlock.
	unlock, err := hub.LockRotation(data, true)
	if err != nil {
		t.Fatal(err)
	}
	closed := filepath.Join(filepath.Dir(live), "s@000000")
	if err := os.Rename(live, closed); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := w.write(row(2), 2); done <- err }()
	if err := os.MkdirAll(live, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(filepath.Join(live, hub.MetadataFile), []byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		unlock()
		t.Fatalf("the append finished while the rotation held the lock (err %v)", err)
	default:
	}
	if _, err := os.Stat(filepath.Join(live, "p_rows.csv")); err == nil {
		t.Fatal("the plugin wrote into the live folder before the hub finished making it")
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatalf("append during a rotation: %v", err)
	}
	_, old := readRows(t, filepath.Join(closed, "p_rows.csv"))
	_, cur := readRows(t, filepath.Join(live, "p_rows.csv"))
	if len(old) != 1 || old[0][13] != "1" || len(cur) != 1 || cur[0][13] != "2" || cur[0][8] != "2" {
		t.Fatalf("closed segment rows %v, live rows %v; want input 1 in the closed one, input 2 (seq 2) in the live one", old, cur)
	}
	// A writer opened afterwards (a restart) knows both rows: a replay writes nothing.
	w2, err := newSessionWriter(data, "s", info, "h")
	if err != nil {
		t.Fatal(err)
	}
	out, err := w2.write(append(row(1), row(2)...), 3)
	if err != nil || len(out) != 0 {
		t.Fatalf("replay after the rotation wrote %v (err %v), want nothing", out, err)
	}
}

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPluginWritesAcrossManyRotations: the hub rotates before every message while the plugin
// writes its rows; every rotation is a normal one, so the host logs no warning, restarts nothing,
// fails nothing, and the rows over all segments are exactly once.
func TestPluginWritesAcrossManyRotations(t *testing.T) {
	r := newRigWith(t, rotateEveryMessage)
	var logs lockedBuffer
	r.startHost(func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	r.install("example", "example")
	waitFor(t, "plugin running", func() bool { return r.status("example").State == StateRunning })
	s := r.newSession("20261130_070100_a1b2c3", 3)
	for i := 0; i < 10; i++ {
		s.batches(4, 1)
		waitFor(t, "rows of this round", func() bool { return s.segmentCount(t, "example_batches") >= s.msgs })
	}
	s.end()
	s.waitClosed(t)
	s.checkExactlyOnceAcrossSegments(t)
	if sp, _ := ReadSessionPlugins(s.dir()); sp["example"].Rows["example_batches"] != int64(s.msgs) || sp["example"].Findings != 1 {
		t.Errorf("plugins.json of the live segment %+v, want %d example_batches rows and 1 finding over all segments", sp["example"], s.msgs)
	}
	if dirs, _ := hub.Segments(r.data, s.id); len(dirs) < 20 {
		t.Errorf("only %d segments: the run did not cross many boundaries", len(dirs))
	}
	if st := r.status("example"); st.Failed != 0 || st.Restarts != 0 {
		t.Errorf("normal rotations made the plugin fail or restart: %+v", st)
	}
	if l := logs.String(); l != "" {
		t.Errorf("normal rotations logged warnings:\n%s", l)
	}
}
