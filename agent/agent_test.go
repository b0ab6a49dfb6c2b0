package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/internal/stream"
	"github.com/profilemate/profilemate/internal/testkit"
	pmproto "github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

func createStreamURL(url string) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	_, err = js.CreateStream(context.Background(), stream.Config())
	return err
}

func createStream(t *testing.T, url string) jetstream.Stream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	s, err := js.CreateStream(context.Background(), stream.Config())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// streamMsgs returns every message in the stream, in stream order.
func streamMsgs(t *testing.T, url string) []*nats.Msg {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	s, err := js.Stream(context.Background(), StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []*nats.Msg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(context.Background(), seq)
		if err != nil {
			continue
		}
		out = append(out, &nats.Msg{Subject: m.Subject, Data: m.Data, Header: m.Header})
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newTestAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(shortTemp(t), "a.sock")
	}
	cfg.Host = "h1"
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_, _ = a.Shutdown(sctx)
	})
	return a
}

// shortTemp is a temp folder with a path short enough for a Unix socket.
func shortTemp(t *testing.T) string {
	d, err := os.MkdirTemp("", "pma")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// fakeShim is a Go client speaking the shim's side of the socket protocol.
type fakeShim struct {
	t    *testing.T
	c    net.Conn
	r    *bufio.Reader
	pid  int
	rank int
	seq  uint64
}

func dialShim(t *testing.T, sock string, pid, rank int, session string) *fakeShim {
	t.Helper()
	s := dialShimRaw(t, sock, pid)
	s.rank = rank
	s.line(map[string]any{"t": "hello", "v": 1, "session": session, "pid": pid, "ppid": 1, "role": "worker",
		"dp": 0, "pp": 0, "tp": rank, "ep": -1, "rank": rank, "python": "3.12", "vllm": "0.16.0"})
	return s
}

// dialShimRaw connects without saying hello.
func dialShimRaw(t *testing.T, sock string, pid int) *fakeShim {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fakeShim{t: t, c: c, r: bufio.NewReader(c), pid: pid}
}

// next reads the agent's next line to the shim that is not a batch acknowledgement.
func (s *fakeShim) next() ([]byte, error) {
	for {
		line, err := s.r.ReadBytes('\n')
		if err != nil || !strings.Contains(string(line), `"op":"ack"`) {
			return line, err
		}
	}
}

func (s *fakeShim) line(v any) {
	s.t.Helper()
	b, _ := json.Marshal(v)
	if _, err := s.c.Write(append(b, '\n')); err != nil {
		s.t.Fatal(err)
	}
}

// batch sends n events alternating between two kinds.
func (s *fakeShim) batch(n int) {
	var evs []map[string]any
	for i := 0; i < n; i++ {
		s.seq++
		kind, table, cols := "kv_cache", "kv_cache_usage", map[string]any{"usage": 0.5}
		if s.seq%2 == 0 {
			kind, table, cols = "forward_pass", "forward_pass_timing", map[string]any{"cpu_ms": 1.5, "tokens": 8, "runtime_mode": "NONE"}
		}
		evs = append(evs, map[string]any{"kind": kind, "table": table, "seq": s.seq, "step": s.seq, "ts_ns": 1, "cols": cols})
	}
	s.line(map[string]any{"t": "batch", "v": 1, "pid": s.pid, "ident": map[string]any{"role": "worker", "dp": 0, "pp": 0, "tp": s.rank, "ep": -1, "rank": s.rank}, "events": evs})
}

func (s *fakeShim) bye() {
	s.line(map[string]any{"t": "bye", "v": 1, "pid": s.pid, "last_seq": s.seq})
}

func decodePB(t *testing.T, m *nats.Msg) *pmpb.EventBatch {
	t.Helper()
	var b pmpb.EventBatch
	if err := proto.Unmarshal(m.Data, &b); err != nil {
		t.Fatalf("%s: %v", m.Subject, err)
	}
	if len(b.Events) == 0 {
		t.Fatalf("%s: empty batch", m.Subject)
	}
	return &b
}

// seqsByPID decodes the JSON-encoded event batches of the stream into per-pid sequences.
func seqsByPID(t *testing.T, msgs []*nats.Msg) map[int][]uint64 {
	t.Helper()
	out := map[int][]uint64{}
	for _, m := range msgs {
		if !strings.HasPrefix(m.Subject, "pm.v1.ev.") {
			continue
		}
		b := decodePB(t, m)
		pr := b.GetProcess()
		if want := pmproto.MsgID(pr.GetSession(), pr.GetHost(), pr.GetPid(), pr.GetInstance(), b.Events[0].Kind, b.Events[0].Seq, b.Events[len(b.Events)-1].Seq); m.Header.Get(nats.MsgIdHdr) != want || b.BatchId != want {
			t.Errorf("msg id %q, batch id %q, want %q", m.Header.Get(nats.MsgIdHdr), b.BatchId, want)
		}
		for _, e := range b.Events {
			out[int(pr.GetPid())] = append(out[int(pr.GetPid())], e.Seq)
		}
	}
	return out
}

// checkExactlyOnce checks every pid got 1..n exactly once; ordered also checks per-kind order.
func checkExactlyOnce(t *testing.T, got map[int][]uint64, want map[int]uint64) {
	t.Helper()
	for pid, n := range want {
		seen := map[uint64]int{}
		for _, s := range got[pid] {
			seen[s]++
		}
		for s := uint64(1); s <= n; s++ {
			if seen[s] != 1 {
				t.Fatalf("pid %d seq %d arrived %d times, want 1", pid, s, seen[s])
			}
		}
		if len(got[pid]) != int(n) {
			t.Fatalf("pid %d: %d events, want %d", pid, len(got[pid]), n)
		}
	}
}

func countEvents(t *testing.T, url string) int {
	n := 0
	for _, s := range seqsByPID(t, streamMsgs(t, url)) {
		n += len(s)
	}
	return n
}

func TestIngestPublishesEveryEventOnce(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()})
	shims := []*fakeShim{dialShim(t, a.Socket(), 101, 0, "s1"), dialShim(t, a.Socket(), 102, 1, "s1")}
	for i := 0; i < 20; i++ {
		for _, s := range shims {
			s.batch(7)
		}
	}
	for _, s := range shims {
		s.bye()
	}
	waitFor(t, "280 events", func() bool { return countEvents(t, ns.ClientURL()) >= 280 })
	msgs := streamMsgs(t, ns.ClientURL())
	checkExactlyOnce(t, seqsByPID(t, msgs), map[int]uint64{101: 140, 102: 140})
	subj := map[string]bool{}
	for _, m := range msgs {
		subj[m.Subject] = true
	}
	for _, want := range []string{"pm.v1.ev.s1.h1.w0.kv_cache", "pm.v1.ev.s1.h1.w1.forward_pass", "pm.v1.life.s1.h1.w0"} {
		if !subj[want] {
			t.Errorf("no message on %s; got %v", want, subj)
		}
	}
}

func TestStatusOverSocket(t *testing.T) {
	a := newTestAgent(t, Config{})
	s := dialShim(t, a.Socket(), 201, 3, "")
	s.batch(4)
	waitFor(t, "events counted", func() bool { return a.Status().Events == 4 })
	RegisterStatus(func(st *Status) { st.Extra = map[string]any{"gpu_sampling": "off: test"} })
	c, err := net.Dial("unix", a.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintln(c, `{"t":"admin","v":1,"op":"status"}`)
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Processes []ProcStatus `json:"processes"`
		GPU       string       `json:"gpu_sampling"`
		Spool     SpoolStatus  `json:"spool"`
	}
	if err := json.Unmarshal(line, &st); err != nil {
		t.Fatalf("status %q: %v", line, err)
	}
	if len(st.Processes) != 1 || st.Processes[0].Pid != 201 || st.Processes[0].Rank != 3 || st.Processes[0].Events != 4 {
		t.Errorf("processes %+v, want pid 201 rank 3 with 4 events", st.Processes)
	}
	if !strings.HasPrefix(st.Processes[0].Session, time.Now().UTC().Format("20060102_")) {
		t.Errorf("session %q, want a generated id", st.Processes[0].Session)
	}
	if st.GPU != "off: test" {
		t.Errorf("gpu_sampling %q from the provider, want %q", st.GPU, "off: test")
	}
}

func TestEndedSessionNameGetsNewID(t *testing.T) {
	a := newTestAgent(t, Config{})
	s1 := dialShim(t, a.Socket(), 301, 0, "bench")
	s1.bye()
	waitFor(t, "bye", func() bool { return len(a.Status().Sessions) == 1 && a.Status().Sessions[0].Live == 0 })
	a.EndSession("bench")
	s2 := dialShim(t, a.Socket(), 302, 0, "bench")
	line, err := s2.r.ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var ctl pmproto.Ctl
	if err := json.Unmarshal(line, &ctl); err != nil || ctl.Op != "session" || ctl.Session == "bench" || ctl.Session == "" {
		t.Fatalf("ctl %q (%v), want a session change to a new id", line, err)
	}
	if len(ctl.Session) != len("20060102_150405_abcdef") {
		t.Errorf("new id %q is not YYYYMMDD_HHMMSS_<6hex>", ctl.Session)
	}
}

func TestControlSessionChangeMovesProcesses(t *testing.T) {
	a := newTestAgent(t, Config{})
	s := dialShim(t, a.Socket(), 901, 2, "old")
	waitFor(t, "hello", func() bool { return len(a.Status().Processes) == 1 })
	if n := a.Control(pmproto.Ctl{Op: "session", Session: "new"}, "old"); n != 1 {
		t.Fatalf("control reached %d shims, want 1", n)
	}
	line, err := s.r.ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var ctl pmproto.Ctl
	if err := json.Unmarshal(line, &ctl); err != nil || ctl.Op != "session" || ctl.Session != "new" {
		t.Fatalf("shim got %q, want a session change to new", line)
	}
	s.batch(2)
	waitFor(t, "events", func() bool { return a.Status().Events == 2 })
	if got := a.Status().Processes[0].Session; got != "new" {
		t.Errorf("process session %q, want new", got)
	}
	off := false
	if n := a.Control(pmproto.Ctl{Op: "profiler", Name: "moe_expert", Enabled: &off}, ""); n != 1 {
		t.Fatalf("profiler control reached %d shims, want 1", n)
	}
	line, _ = s.next()
	if string(line) != `{"t":"ctl","v":1,"op":"profiler","name":"moe_expert","enabled":false}`+"\n" {
		t.Errorf("shim got %q", line)
	}
}

func TestNATSControlAndHeartbeat(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, Heartbeat: 20 * time.Millisecond})
	s := dialShim(t, a.Socket(), 1001, 0, "c1")
	s.batch(3)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hbs := make(chan *nats.Msg, 64)
	if _, err := nc.ChanSubscribe("pm.v1.hb.h1", hbs); err != nil {
		t.Fatal(err)
	}
	var hb *pmpb.Heartbeat
	waitFor(t, "a heartbeat naming session c1", func() bool {
		select {
		case m := <-hbs:
			hb = &pmpb.Heartbeat{}
			if err := proto.Unmarshal(m.Data, hb); err != nil {
				t.Fatal(err)
			}
			return hb.Processes == 1 && len(hb.Sessions) == 1 && hb.Sessions[0] == "c1"
		default:
			return false
		}
	})
	ctl, _ := proto.Marshal(&pmpb.Control{SchemaMajor: 1, Host: "h1",
		Op: &pmpb.Control_Profiler_{Profiler: &pmpb.Control_Profiler{Name: "kv_cache", Enabled: false}}})
	waitFor(t, "control subscription", func() bool {
		_ = nc.Publish("pm.v1.ctl.h1", ctl)
		_ = s.c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		line, err := s.next()
		if err != nil {
			return false
		}
		if string(line) != `{"t":"ctl","v":1,"op":"profiler","name":"kv_cache","enabled":false}`+"\n" {
			t.Fatalf("shim got %q", line)
		}
		return true
	})
}

func TestSessionEndsAfterLinger(t *testing.T) {
	a := newTestAgent(t, Config{SessionLinger: 50 * time.Millisecond})
	s := dialShim(t, a.Socket(), 1101, 0, "linger")
	s.batch(1)
	s.bye()
	waitFor(t, "session end", func() bool {
		st := a.Status()
		return len(st.Sessions) == 1 && st.Sessions[0].Ended
	})
	// The name ended: a new process naming it gets a fresh id.
	s2 := dialShim(t, a.Socket(), 1102, 0, "linger")
	line, err := s2.r.ReadBytes('\n')
	if err != nil || !strings.Contains(string(line), `"op":"session"`) || strings.Contains(string(line), `"linger"`) {
		t.Fatalf("got %q (%v), want a session change to a new id", line, err)
	}
}
