package agent

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/profilemate/profilemate/internal/testkit"
)

// burstLine is one batch line of n kv_cache/forward_pass events from seq on, with the ident's tp.
func burstLine(pid, tp int, seq uint64, n int) []byte {
	var evs []map[string]any
	for i := 0; i < n; i++ {
		s := seq + uint64(i)
		kind, table, cols := "kv_cache", "kv_cache_usage", map[string]any{"usage": 0.5}
		if s%2 == 0 {
			kind, table, cols = "forward_pass", "forward_pass_timing", map[string]any{"cpu_ms": 1.5, "tokens": 8}
		}
		evs = append(evs, map[string]any{"kind": kind, "table": table, "seq": s, "step": s, "ts_ns": 1, "cols": cols})
	}
	b, _ := json.Marshal(map[string]any{"t": "batch", "v": 1, "pid": pid,
		"ident": map[string]any{"role": "worker", "dp": 0, "pp": 0, "tp": tp, "ep": -1, "rank": 0}, "events": evs})
	return append(b, '\n')
}

// readAcks reads the agent's acknowledgements until one names seq (bounded).
func readAcks(t *testing.T, s *fakeShim, seq uint64) {
	t.Helper()
	_ = s.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	want := `"op":"ack","seq":` + strconv.FormatUint(seq, 10) + "}"
	for {
		line, err := s.r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("no ack of seq %d: %v", seq, err)
		}
		if strings.Contains(string(line), want) {
			return
		}
	}
}

// TestBurstLeavesAsFewMessages: lines that arrive together leave as one message per process and
// kind (not one per line and kind), every event once and in order, the head of each message the
// one its events were accepted under (ranks that changed mid-burst start a new message), and the
// last line acknowledged.
func TestBurstLeavesAsFewMessages(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()})
	s := dialShim(t, a.Socket(), 101, 0, "s1")
	const lines, per = 20, 10
	var burst bytes.Buffer
	for i := 0; i < lines; i++ {
		tp := 0
		if i >= lines/2 {
			tp = 1 // the worker learnt its ranks half way
		}
		burst.Write(burstLine(101, tp, uint64(i*per+1), per))
	}
	if _, err := s.c.Write(burst.Bytes()); err != nil {
		t.Fatal(err)
	}
	readAcks(t, s, lines*per)
	waitFor(t, "every event", func() bool { return countEvents(t, ns.ClientURL()) >= lines*per })
	msgs := streamMsgs(t, ns.ClientURL())
	checkExactlyOnce(t, seqsByPID(t, msgs), map[int]uint64{101: lines * per})
	n := 0
	for _, m := range msgs {
		if !strings.HasPrefix(m.Subject, "pm.v1.ev.") {
			continue
		}
		n++
		b := decodePB(t, m)
		for i, e := range b.Events {
			wantTP := int32(0)
			if e.Seq > lines/2*per {
				wantTP = 1
			}
			if b.Process.GetTp() != wantTP {
				t.Fatalf("%s: event seq %d under tp %d, its line said %d", m.Subject, e.Seq, b.Process.GetTp(), wantTP)
			}
			if i > 0 && e.Seq <= b.Events[i-1].Seq {
				t.Fatalf("%s: seq %d after %d", m.Subject, e.Seq, b.Events[i-1].Seq)
			}
		}
	}
	// One line per message and kind would be 2*lines; a burst read at once is 2 per head.
	if n >= lines {
		t.Fatalf("%d event messages for %d lines read together, want fewer than one per line", n, lines)
	}
}

// TestLoneLineNotHeld: a line with nothing behind it is published and acknowledged without
// waiting for another one.
func TestLoneLineNotHeld(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()})
	s := dialShim(t, a.Socket(), 102, 0, "s1")
	if _, err := s.c.Write(burstLine(102, 0, 1, 5)); err != nil {
		t.Fatal(err)
	}
	readAcks(t, s, 5)
	waitFor(t, "the line's events", func() bool { return countEvents(t, ns.ClientURL()) == 5 })
	if got := a.Status().Events; got != 5 {
		t.Fatalf("status counts %d events, want 5", got)
	}
}
