package host

import (
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/profilemate/profilemate/hub"
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
}
