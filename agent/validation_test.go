package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/profilemate/profilemate/agent/gpu"
	"github.com/profilemate/profilemate/internal/testkit"
	pmproto "github.com/profilemate/profilemate/proto"
)

// TestOneBadEventKeepsItsBatch: a string in a float column, a column the table lacks and an
// unknown kind each cost only their own event; the batch's good events are published, the bad
// ones counted by reason, and the line is not a bad line.
func TestOneBadEventKeepsItsBatch(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}})
	s := dialShim(t, a.Socket(), 901, 0, "s1")
	ev := func(seq int, kind, table string, cols any) map[string]any {
		return map[string]any{"kind": kind, "table": table, "seq": seq, "step": seq, "ts_ns": 1, "cols": cols}
	}
	s.line(map[string]any{"t": "batch", "v": 1, "pid": 901, "events": []any{
		ev(1, "kv_cache", "kv_cache_usage", map[string]any{"usage": 0.5}),
		ev(2, "kv_cache", "kv_cache_usage", map[string]any{"usage": "lots"}),
		ev(3, "forward_pass", "forward_pass_timing", map[string]any{"cpu_ms": 1.5, "gpu_ms": ""}),
		ev(4, "kv_cache", "kv_cache_usage", map[string]any{"no_such_column": 1}),
		ev(5, "telepathy", "kv_cache_usage", map[string]any{}),
		ev(6, "kv_cache", "kv_cache_usage", map[string]any{"usage": nil}),
	}})
	waitFor(t, "3 good events", func() bool { return countEvents(t, ns.ClientURL()) >= 3 })
	got := seqsByPID(t, streamMsgs(t, ns.ClientURL()))[901]
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	if len(got) != 3 || got[0] != 1 || got[1] != 3 || got[2] != 6 {
		t.Errorf("published seqs %v, want [1 3 6]", got)
	}
	st := a.Status()
	want := map[string]int64{pmproto.ReasonBadValue: 1, pmproto.ReasonUnknownColumn: 1, pmproto.ReasonUnknownKind: 1}
	for r, n := range want {
		if st.RejectedEvents[r] != n {
			t.Errorf("rejected %s = %d, want %d (all: %v)", r, st.RejectedEvents[r], n, st.RejectedEvents)
		}
	}
	if st.BadLines != 0 {
		t.Errorf("bad lines %d: a batch with good events is not a bad line", st.BadLines)
	}
}

// TestHelloNamesChecked: a hello naming a session or host outside proto's grammar is refused at
// the socket with the rule in the log, and registers nothing; a good hello on the same
// connection still works.
func TestHelloNamesChecked(t *testing.T) {
	a := newTestAgent(t, Config{})
	c, err := net.Dial("unix", a.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bad := []string{"my run", "exp/1", "x:y", "résumé", strings.Repeat("a", 129)}
	for _, s := range bad {
		b, _ := json.Marshal(map[string]any{"t": "hello", "v": 1, "pid": 700, "session": s, "role": "worker"})
		c.Write(append(b, '\n'))
	}
	b, _ := json.Marshal(map[string]any{"t": "hello", "v": 1, "pid": 701, "host": "node a", "role": "worker"})
	c.Write(append(b, '\n'))
	c.Write([]byte(`{"t":"hello","v":1,"pid":702,"session":"exp-1","role":"worker"}` + "\n"))
	waitFor(t, "good hello", func() bool {
		for _, p := range a.Status().Processes {
			if p.Pid == 702 {
				return true
			}
		}
		return false
	})
	st := a.Status()
	if st.BadLines != int64(len(bad)+1) {
		t.Errorf("bad lines %d, want %d", st.BadLines, len(bad)+1)
	}
	for _, p := range st.Processes {
		if p.Pid == 700 || p.Pid == 701 {
			t.Errorf("a refused hello registered %+v", p)
		}
	}
}

// docPatternRE finds the NATS subjects and filters the docs print: `pm.v1.…` in backquotes.
var docPatternRE = regexp.MustCompile("`(pm\\.v1\\.[^`\\s]*)`")

// TestDocumentedSubjectsReceiveEvents subscribes with nats.go to every subject pattern printed in
// README.md, proto/README.md and docs/*.md (placeholders like <session> become this run's tokens,
// or * for <proc> and <kind>) and checks each receives a message while a real agent publishes every
// golden fixture's kinds, GPU samples, lifecycle records, heartbeats and clock requests.
// pm.v1.ctl.<host> is the hub's channel to agents; it is checked by publishing Control on it.
func TestDocumentedSubjectsReceiveEvents(t *testing.T) {
	root := testkit.RepoRoot(t)
	files, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	files = append(files, filepath.Join(root, "README.md"), filepath.Join(root, "proto", "README.md"))
	const session, host = "20261126_205500_a1b2c3", "gpu-node-7.dc1.example"
	fill := strings.NewReplacer("<session>", pmproto.Escape(session), "<host>", pmproto.Escape(host),
		"<proc>", "*", "<kind>", "*", "<id>", pmproto.Escape(session))
	patterns := map[string]string{} // pattern → where it is printed
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range docPatternRE.FindAllStringSubmatch(string(b), -1) {
			p := strings.TrimRight(fill.Replace(m[1]), ".,;:")
			if strings.Contains(p, "<") || strings.HasSuffix(p, ".") {
				t.Errorf("%s prints %q: a placeholder this test does not know", filepath.Base(f), m[1])
				continue
			}
			if patterns[p] == "" {
				patterns[p] = filepath.Base(f)
			}
		}
	}
	for _, must := range []string{"pm.v1.ev.*.*.*.kv_cache", "pm.v1.ev.>"} {
		if patterns[must] == "" {
			t.Errorf("the docs no longer print %s", must)
		}
	}

	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	nc := testkit.Connect(t, ns.ClientURL())
	got := map[string]chan *nats.Msg{}
	for p := range patterns {
		ch := make(chan *nats.Msg, 1024)
		if _, err := nc.ChanSubscribe(p, ch); err != nil {
			t.Fatalf("subscribe %s (%s): %v", p, patterns[p], err)
		}
		got[p] = ch
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{NATS: NATSConfig{URL: ns.ClientURL()}, Heartbeat: 200 * time.Millisecond, Host: host,
		Socket: filepath.Join(shortTemp(t), "a.sock"), Logger: testLogger(t)})
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

	// Every golden fixture through the socket, after its process's hello.
	c, err := net.Dial("unix", a.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hb, _ := os.ReadFile(filepath.Join(root, "proto", "testdata", "hellos.json"))
	var hellos []json.RawMessage
	if err := json.Unmarshal(hb, &hellos); err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(c)
	for _, h := range hellos {
		var cb bytes.Buffer
		json.Compact(&cb, h)
		w.Write(append(cb.Bytes(), '\n'))
	}
	// In seq order per process, as a shim sends them (the agent drops seqs it has seen).
	fixtures, _ := filepath.Glob(filepath.Join(root, "proto", "testdata", "batches", "*.json"))
	var lines [][]byte
	first := map[string]uint64{}
	for _, f := range fixtures {
		if strings.HasSuffix(f, "gpu.json") {
			continue // the agent's own kind: sampled below
		}
		b, _ := os.ReadFile(f)
		var cb bytes.Buffer
		json.Compact(&cb, b)
		l, err := pmproto.ReadLine(cb.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		first[cb.String()] = l.Batch.Events[0].Seq
		lines = append(lines, cb.Bytes())
	}
	sort.Slice(lines, func(i, j int) bool { return first[string(lines[i])] < first[string(lines[j])] })
	for _, l := range lines {
		w.Write(append(l, '\n'))
	}
	w.Flush()
	rank0 := dialShim(t, a.Socket(), 41300, 0, session) // a worker of global rank 0 (w0)
	rank0.batch(2)
	waitFor(t, "the fixtures' processes", func() bool { return len(a.Status().Processes) >= len(hellos) })
	a.publishGPU([]gpu.Row{{Seq: 1, TsNS: time.Now().UnixNano(), Cols: map[string]any{"gpu_index": 0, "util_gpu": 50.0}}})
	// The hub's side of the other core-NATS subjects: control, and a plugin's derived rows.
	if err := nc.Publish(pmproto.ControlSubject(host), []byte{}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(pmproto.DerivedSubject(session, host, pmproto.PluginProcToken("straggler"), "straggler"), []byte{}); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Request(pmproto.ClockSubject, nil, 50*time.Millisecond); err != nil {
		t.Logf("clock request unanswered (no hub): %v", err)
	}
	for p, ch := range got {
		select {
		case m := <-ch:
			t.Logf("%s (%s): %s", p, patterns[p], m.Subject)
		case <-time.After(30 * time.Second):
			t.Errorf("%s, printed in %s, received nothing", p, patterns[p])
		}
	}
}
