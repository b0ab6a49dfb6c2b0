package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/internal/stream"
	"github.com/profilemate/profilemate/internal/testkit"
	pmproto "github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// startNATSPayload starts a test server with its max_payload set.
func startNATSPayload(t *testing.T, maxPayload int32) *server.Server {
	t.Helper()
	return testkit.StartNATS(t, func(o *server.Options) { o.MaxPayload = maxPayload })
}

func createStreamOpts(t *testing.T, url string, opts ...stream.Option) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(context.Background(), stream.Config(opts...)); err != nil {
		t.Fatal(err)
	}
}

// subjectsOnStream lists the subjects of every message on the stream.
func subjectsOnStream(t *testing.T, url string) map[string]int {
	out := map[string]int{}
	for _, m := range streamMsgs(t, url) {
		out[m.Subject]++
	}
	return out
}

// TestPoisonMessagesSetAside: messages NATS refuses whatever happens — a subject longer than the
// server's control line (also one left in the spool by an earlier run), a payload over the
// server's max_payload, a message over the stream's max message size — are set aside in the
// dead-letter file and counted; everything behind them is delivered, and a restart does not
// send them again.
func TestPoisonMessagesSetAside(t *testing.T) {
	ns := startNATSPayload(t, 256<<10)
	url := ns.ClientURL()
	createStreamOpts(t, url, stream.WithMaxMsgSize(64<<10))
	spoolDir := t.TempDir()

	long := Msg{Subject: pmproto.EventSubject(strings.Repeat("a", 4100), "h1", "w0", "kv_cache"), ID: "long", Data: []byte("x")}
	good := func(i int) Msg {
		return Msg{Subject: pmproto.LifeSubject("s1", "h1", "w0"), ID: fmt.Sprint("good-", i), Data: []byte{byte(i)}}
	}
	// An earlier run left the poisoned message in front of the spool.
	sp, err := openSpool(spoolDir, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []Msg{long, good(1), good(2)} {
		if _, err := sp.push(&m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sp.close(nil); err != nil {
		t.Fatal(err)
	}

	a := newTestAgent(t, Config{NATS: NATSConfig{URL: url}, SpoolDir: spoolDir})
	waitFor(t, "the spooled good messages", func() bool { return subjectsOnStream(t, url)[good(1).Subject] == 2 })
	tooBigForServer := Msg{Subject: good(0).Subject, ID: "payload", Data: make([]byte, 300<<10)}
	tooBigForStream := Msg{Subject: good(0).Subject, ID: "stream", Data: make([]byte, 100<<10)}
	a.q.push(tooBigForServer)
	a.q.push(good(3))
	a.q.push(tooBigForStream)
	a.q.push(long)
	a.q.push(good(4))
	s := dialShim(t, a.Socket(), 901, 0, "poison")
	s.batch(10)
	waitFor(t, "messages behind the refused ones", func() bool {
		return subjectsOnStream(t, url)[good(1).Subject] == 4 && countEvents(t, url) == 10
	})
	waitFor(t, "dead letters counted", func() bool { return a.Status().Spool.DeadLetter.Messages == 4 })
	st := a.Status().Spool.DeadLetter
	if st.Kept != 4 || st.File != filepath.Join(spoolDir, deadLetterFile) {
		t.Errorf("dead letters %+v, want 4 kept in %s", st, filepath.Join(spoolDir, deadLetterFile))
	}
	data, err := os.ReadFile(st.File)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := decodeSegment(data)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range kept {
		ids = append(ids, m.ID)
	}
	if got := strings.Join(ids, ","); got != "long,payload,stream,long" {
		t.Errorf("dead letters %s, want long,payload,stream,long", got)
	}
	if st := a.Status(); st.Dropped != 0 || st.Spool.Batches != 0 || st.Spool.MemBatches != 0 {
		t.Errorf("status %+v: want nothing dropped or waiting", st.Spool)
	}
	rep, err := a.Shutdown(t.Context())
	if err != nil || rep.Spooled != 0 {
		t.Fatalf("shutdown %+v %v: want nothing left in the spool", rep, err)
	}
	// A restart finds nothing to retry; the dead-letter file keeps its count.
	a2 := newTestAgent(t, Config{NATS: NATSConfig{URL: url}, SpoolDir: spoolDir})
	if st := a2.Status().Spool; st.Batches != 0 || st.DeadLetter.Kept != 4 || st.DeadLetter.Messages != 0 {
		t.Errorf("after restart %+v, want an empty spool and 4 kept dead letters", st)
	}
}

// TestDeadLettersCapped: beyond the cap refused messages are counted, not written.
func TestDeadLettersCapped(t *testing.T) {
	dir := t.TempDir()
	d := newDeadLetters(dir, 1<<20, 3)
	for i := 0; i < 10; i++ {
		first := d.add(&Msg{Subject: "x y", ID: fmt.Sprint(i), Data: make([]byte, 100)}, "invalid subject")
		if first != (i == 0) {
			t.Errorf("add %d: first %v", i, first)
		}
	}
	st := d.status()
	if st.Messages != 10 || st.Kept != 3 {
		t.Errorf("status %+v, want 10 counted, 3 kept", st)
	}
	d = newDeadLetters(dir, 500, 100)
	for i := 0; i < 10; i++ {
		d.add(&Msg{Subject: "x y", ID: fmt.Sprint(i), Data: make([]byte, 100)}, "invalid subject")
	}
	if st := d.status(); st.Bytes > 500 || st.Kept != 3 {
		t.Errorf("status %+v, want the 3 of the first round and at most 500 bytes", st)
	}
}

// TestSpoolReadsOlderFormat: a segment written by an agent before the versioned format (bare
// records) is replayed by this one, and a segment of a newer format is left alone.
func TestSpoolReadsOlderFormat(t *testing.T) {
	dir := t.TempDir()
	var old []byte
	for i := 0; i < 3; i++ {
		m := Msg{Subject: "pm.v1.ev.s.h.w0.kv_cache", ID: fmt.Sprint("old-", i), Data: []byte{byte(i)}}
		var body []byte
		body = appendUvarintField(body, m.Subject)
		body = appendUvarintField(body, m.ID)
		body = appendUvarintField(body, string(m.Data))
		old = append(old, byte(len(body)), 0, 0, 0)
		old = append(old, body...)
	}
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seg-%020d.spool", segFirst)), old, 0o640); err != nil {
		t.Fatal(err)
	}
	newer := append([]byte(spoolMagic), spoolFormat+1, 1, 2, 3)
	newerPath := filepath.Join(dir, fmt.Sprintf("seg-%020d.spool", segFirst+5))
	if err := os.WriteFile(newerPath, newer, 0o640); err != nil {
		t.Fatal(err)
	}
	s, err := openSpool(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.push(&Msg{Subject: "pm.v1.ev.s.h.w0.kv_cache", ID: "new-0", Data: []byte("n")}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for {
		msgs, err := s.peek(10)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			break
		}
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
		s.pop(len(msgs))
	}
	if got := strings.Join(ids, ","); got != "old-0,old-1,old-2,new-0" {
		t.Errorf("replayed %s, want old-0,old-1,old-2,new-0", got)
	}
	if b, err := os.ReadFile(newerPath); err != nil || string(b) != string(newer) {
		t.Errorf("newer segment changed: %q %v", b, err)
	}
}

func appendUvarintField(b []byte, s string) []byte {
	b = append(b, byte(len(s))) // short fields: one uvarint byte
	return append(b, s...)
}

// pySend runs a separate Python process that connects to sock and sends lines: another process
// than the test's own, as an attacker on the host would be.
func pySend(t *testing.T, sock string, lines ...string) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	script := "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(sys.argv[2].encode())\ns.close()\n"
	out, err := exec.Command(py, "-c", script, sock, strings.Join(lines, "\n")+"\n").CombinedOutput()
	if err != nil {
		t.Fatalf("python client: %v\n%s", err, out)
	}
}

// TestSocketIdentityBoundToConnection: a pid label belongs to the connection (the process) that
// said hello with it. Another process cannot send events under it (a seq of 2^64-1 would make
// every later event of the victim look like a duplicate), say hello or bye for it; the victim's
// own reconnect can; a reported pid that is not the peer's (a container) is accepted.
func TestSocketIdentityBoundToConnection(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}})
	victim := dialShim(t, a.Socket(), 901, 0, "ident")
	victim.batch(10)
	waitFor(t, "victim's first events", func() bool { return a.Status().Events == 10 })
	pySend(t, a.Socket(),
		`{"t":"batch","v":1,"pid":901,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":18446744073709551615,"step":1,"ts_ns":1,"cols":{"usage":1}}]}`,
		`{"t":"hello","v":1,"session":"other","pid":901,"ppid":1,"role":"worker","dp":0,"pp":0,"tp":0,"ep":-1,"rank":0}`,
		`{"t":"status","v":1,"pid":901,"targets":[]}`,
		`{"t":"bye","v":1,"pid":901,"last_seq":1}`)
	waitFor(t, "the other process's lines refused", func() bool { return a.Status().BadLines == 4 })
	victim.batch(10)
	waitFor(t, "victim's later events", func() bool { return a.Status().Events == 20 })
	// The victim's own new connection (same process) takes its label over.
	again := dialShim(t, a.Socket(), 901, 0, "ident")
	again.seq = victim.seq
	again.batch(10)
	again.bye()
	waitFor(t, "every victim event", func() bool { return countEvents(t, ns.ClientURL()) >= 30 })
	checkExactlyOnce(t, seqsByPID(t, streamMsgs(t, ns.ClientURL())), map[int]uint64{901: 30})
	st := a.Status()
	if st.Dupes != 0 || len(st.Processes) != 1 || st.Processes[0].PeerPID != os.Getpid() || !st.Processes[0].Gone {
		t.Errorf("status %+v, %d duplicates, %d events: want one process bound to pid %d, ended by its own bye, no duplicates", st.Processes, st.Dupes, st.Events, os.Getpid())
	}
}

// TestConnectionLimit: connections beyond --max-connections are closed at once and counted.
func TestConnectionLimit(t *testing.T) {
	a := newTestAgent(t, Config{MaxConns: 2})
	dialShim(t, a.Socket(), 11, 0, "lim")
	dialShim(t, a.Socket(), 12, 1, "lim")
	waitFor(t, "two connections", func() bool { return a.Status().Socket.Connections == 2 })
	c, err := net.Dial("unix", a.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("third connection read %d, %v: want it closed", n, err)
	}
	if st := a.Status().Socket; st.RefusedConnections != 1 || st.Connections != 2 {
		t.Errorf("socket %+v, want 1 refused and 2 open", st)
	}
}

// TestLineBudget: incomplete long lines of all connections together hold at most the budget; a
// line beyond it is discarded, the others still arrive, and the budget is back to 0 afterwards.
func TestLineBudget(t *testing.T) {
	in := strings.Repeat("x", 300<<10) + "\nok\n"
	b := &byteBudget{max: 200 << 10}
	lr := newLineReader(strings.NewReader(in), 1<<20)
	lr.budget = b
	if _, err := lr.next(); !errors.Is(err, errLineOverBudget) {
		t.Fatalf("long line: %v, want errLineOverBudget", err)
	}
	if l, err := lr.next(); err != nil || string(l) != "ok" {
		t.Fatalf("next line %q %v, want ok", l, err)
	}
	if b.used.Load() != 0 {
		t.Errorf("budget in use %d after the line, want 0", b.used.Load())
	}
	b.max = 1 << 20
	lr = newLineReader(strings.NewReader(in), 1<<20)
	lr.budget = b
	if l, err := lr.next(); err != nil || len(l) != 300<<10 {
		t.Fatalf("long line within the budget: %d bytes, %v", len(l), err)
	}
	lr.close()
	if b.used.Load() != 0 {
		t.Errorf("budget in use %d after close, want 0", b.used.Load())
	}
}

// TestSocketCandidates: the places a shim searches, in order, and the one serve listens on.
func TestSocketCandidates(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"bare", nil, []string{RootSocket, "/tmp/profilemate-1000/agent.sock"}},
		{"tmpdir", map[string]string{"TMPDIR": "/scratch"}, []string{RootSocket, "/scratch/profilemate-1000/agent.sock"}},
		{"xdg", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"},
			[]string{RootSocket, "/run/user/1000/profilemate/agent.sock", "/tmp/profilemate-1000/agent.sock"}},
		{"systemd", map[string]string{"RUNTIME_DIRECTORY": "/run/pm:/run/other", "XDG_RUNTIME_DIR": "/run/user/1000"},
			[]string{RootSocket, "/run/pm/agent.sock", "/run/user/1000/profilemate/agent.sock", "/tmp/profilemate-1000/agent.sock"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SocketCandidates(func(k string) string { return tt.env[k] }, 1000)
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestSocketCandidatesMatchShim runs the shim's own discovery (profilemate.sinks.socket_candidates)
// in a real interpreter under several environments and compares it with SocketCandidates.
func TestSocketCandidatesMatchShim(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	shimDir := filepath.Join(testkit.RepoRoot(t), "shim")
	probe := exec.Command(py, "-c", "import profilemate.sinks as s; s.socket_candidates")
	probe.Env = append(os.Environ(), "PYTHONPATH="+shimDir)
	if out, err := probe.CombinedOutput(); err != nil {
		t.Skipf("the shim has no profilemate.sinks.socket_candidates() yet: %s", strings.TrimSpace(string(out)))
	}
	envs := []map[string]string{
		{},
		{"TMPDIR": "/scratch"},
		{"XDG_RUNTIME_DIR": "/run/user/77"},
		{"RUNTIME_DIRECTORY": "/run/pm", "XDG_RUNTIME_DIR": "/run/user/77", "TMPDIR": "/scratch"},
	}
	for _, env := range envs {
		cmd := exec.Command(py, "-c", "import json, profilemate.sinks as s; print(json.dumps(s.socket_candidates()))")
		cmd.Env = []string{"PYTHONPATH=" + shimDir, "PATH=" + os.Getenv("PATH")}
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v", env, err)
		}
		var got []string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%v: shim printed %q: %v", env, out, err)
		}
		want := SocketCandidates(func(k string) string { return env[k] }, os.Getuid())
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%v: shim searches %v, agent %v", env, got, want)
		}
	}
}

// TestSocketFolderRefused: a socket folder another user could use to swap the socket — made by
// someone else, writable by others, or a symbolic link — is refused with the reason; a missing
// one is created 0755.
func TestSocketFolderRefused(t *testing.T) {
	root := shortTemp(t)
	loose := filepath.Join(root, "loose")
	if err := os.Mkdir(loose, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(loose, 0o777)
	other := filepath.Join(root, "other")
	os.Mkdir(other, 0o755)
	link := filepath.Join(root, "link")
	os.Symlink(other, link)
	cases := map[string]string{"mode 0777": loose, "a link": link}
	if os.Geteuid() == 0 {
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cases["another owner"] = other
	}
	for name, dir := range cases {
		t.Run(name, func(t *testing.T) {
			a, err := New(Config{Host: "h1", Socket: filepath.Join(dir, "a.sock"), Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			err = a.Start(t.Context())
			if !errors.Is(err, errSocketFolder) {
				t.Fatalf("start: %v, want errSocketFolder", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "a.sock")); err == nil {
				t.Errorf("a socket was created in the refused folder")
			}
		})
	}
	fresh := filepath.Join(root, "fresh", "pm")
	a := newTestAgent(t, Config{Socket: filepath.Join(fresh, "a.sock")})
	info, err := os.Stat(fresh)
	if err != nil || info.Mode().Perm() != 0o755 {
		t.Fatalf("created folder %v %v, want mode 0755", info.Mode(), err)
	}
	if st, err := os.Stat(a.Socket()); err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("socket %v %v, want mode 0660", st.Mode(), err)
	}
}

// TestByeEndStates: a shim's bye carries its own end (clean, or killed with the signal's name
// when a signal's default action ended it after its last flush) into the bye record; a process
// gone without a bye is lost.
func TestByeEndStates(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}})
	clean := dialShim(t, a.Socket(), 931, 0, "ends")
	killed := dialShim(t, a.Socket(), 932, 1, "ends")
	clean.line(map[string]any{"t": "bye", "v": 1, "pid": 931, "last_seq": 0, "end_state": "clean"})
	killed.line(map[string]any{"t": "bye", "v": 1, "pid": 932, "last_seq": 0, "end_state": "killed", "end_signal": "SIGTERM"})
	waitFor(t, "two bye records", func() bool {
		n := 0
		for _, m := range streamMsgs(t, ns.ClientURL()) {
			var l pmpb.Lifecycle
			if strings.HasPrefix(m.Subject, "pm.v1.life.") && proto.Unmarshal(m.Data, &l) == nil && l.GetBye() != nil {
				n++
			}
		}
		return n == 2
	})
	got := map[int64]string{}
	for _, m := range streamMsgs(t, ns.ClientURL()) {
		var l pmpb.Lifecycle
		if strings.HasPrefix(m.Subject, "pm.v1.life.") && proto.Unmarshal(m.Data, &l) == nil && l.GetBye() != nil {
			got[l.GetProcess().GetPid()] = l.GetBye().GetEndState() + "/" + l.GetBye().GetEndSignal()
		}
	}
	if got[931] != "clean/" || got[932] != "killed/SIGTERM" {
		t.Errorf("bye records %v, want 931 clean, 932 killed/SIGTERM", got)
	}
	for _, p := range a.Status().Processes {
		if want := map[int]string{931: "clean", 932: "killed"}[p.Pid]; p.EndState != want {
			t.Errorf("pid %d end state %q, want %q", p.Pid, p.EndState, want)
		}
	}
	if name := signalName(syscall.SIGKILL); name != "SIGKILL" {
		t.Errorf("signalName(SIGKILL) = %q", name)
	}
}

// TestLargeBatchSplit: a shim batch whose encoding is over the server's max_payload is published
// as several messages, in order, none refused.
func TestLargeBatchSplit(t *testing.T) {
	ns := startNATSPayload(t, 700<<10)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}})
	s := dialShim(t, a.Socket(), 941, 0, "big")
	var evs []map[string]any
	pad := strings.Repeat("x", 1000)
	for i := 1; i <= 2000; i++ {
		evs = append(evs, map[string]any{"kind": "cpu_timing", "table": "cpu_operations_timing", "seq": i, "step": i, "ts_ns": 1,
			"cols": map[string]any{"operation": pad, "cpu_ms": 1.0}})
	}
	s.line(map[string]any{"t": "batch", "v": 1, "pid": 941, "events": evs})
	waitFor(t, "every event of the 2 MB batch", func() bool { return countEvents(t, ns.ClientURL()) >= 2000 })
	msgs := streamMsgs(t, ns.ClientURL())
	checkExactlyOnce(t, seqsByPID(t, msgs), map[int]uint64{941: 2000})
	checkOrdered(t, msgs)
	if st := a.Status(); st.Spool.DeadLetter.Messages != 0 {
		t.Errorf("%d messages set aside, want 0", st.Spool.DeadLetter.Messages)
	}
}
