package host

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/plugins/pluginpb"
	"github.com/profilemate/profilemate/plugins/sdk"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

var bins = map[string]string{} // example, hang → built binary

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pmplugins")
	if err != nil {
		panic(err)
	}
	for name, pkg := range map[string]string{"example": "../example", "hang": "./testdata/hang", "slow": "./testdata/slow"} {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			os.Exit(1)
		}
		bins[name] = out
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type rig struct {
	t    *testing.T
	data string
	dir  string
	hub  *hub.Server
	nc   *nats.Conn
	js   jetstream.JetStream
	host *Host
	stop context.CancelFunc
	done chan error
}

func newRig(t *testing.T) *rig { t.Helper(); return newRigWith(t, nil) }

// newRigWith starts a real hub whose Config edit adjusts (rotation, say).
func newRigWith(t *testing.T, edit func(*hub.Config)) *rig {
	t.Helper()
	data := t.TempDir()
	cfg := hub.Config{DataDir: data, Listen: "127.0.0.1:-1", SessionIdle: time.Hour}
	if edit != nil {
		edit(&cfg)
	}
	h, err := hub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := h.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; h.Close() })
	nc, err := nats.Connect(h.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return &rig{t: t, data: data, dir: filepath.Join(data, "plugins"), hub: h, nc: nc, js: js}
}

// startHost runs the plugin host on the hub's connection; edit adjusts its Config.
func (r *rig) startHost(edit func(*Config)) {
	r.t.Helper()
	cfg := Config{Dir: r.dir, StateDir: filepath.Join(r.data, "plugins-state"), DataDir: r.data, Conn: r.hub.Conn(),
		HostName: "hubhost", Settle: 100 * time.Millisecond, BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second,
		CallTimeout: 10 * time.Second, Poll: 100 * time.Millisecond}
	if edit != nil {
		edit(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.host, r.stop, r.done = h, cancel, make(chan error, 1)
	go func() { r.done <- h.Run(ctx) }()
	r.t.Cleanup(r.stopHost)
}

func (r *rig) stopHost() {
	if r.stop != nil {
		r.stop()
		<-r.done
		r.stop = nil
	}
}

// install copies a built plugin into the folder the way an atomic writer does: a hidden file
// renamed in.
func (r *rig) install(bin, as string) {
	r.t.Helper()
	b, err := os.ReadFile(bins[bin])
	if err != nil {
		r.t.Fatal(err)
	}
	tmp := filepath.Join(r.dir, "."+as)
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(r.dir, as)); err != nil {
		r.t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *rig) status(file string) Status {
	for _, s := range r.host.Status() {
		if s.File == file {
			return s
		}
	}
	return Status{}
}

// session publishes like one agent with nw workers: start, batches of forward passes, end.
type session struct {
	r      *rig
	id     string
	host   string
	nw     int
	seq    []uint64 // last seq per worker
	events int
	msgs   int
}

func (r *rig) newSession(id string, nw int) *session {
	s := &session{r: r, id: id, host: "hostA", nw: nw, seq: make([]uint64, nw)}
	s.life(proto.ProcAgent, &pmpb.Process{Session: id, Host: s.host, Role: proto.RoleAgent, Dp: -1, Pp: -1, Tp: -1, Ep: -1, Rank: -1},
		"start", &pmpb.Lifecycle{Record: &pmpb.Lifecycle_Start{Start: &pmpb.Lifecycle_SessionStart{StartNs: time.Now().UnixNano()}}})
	return s
}

func (s *session) life(proc string, p *pmpb.Process, rec string, lc *pmpb.Lifecycle) {
	s.r.t.Helper()
	lc.SchemaMajor, lc.SchemaMinor, lc.Process, lc.TsNs = proto.SchemaMajor, proto.SchemaMinor, p, time.Now().UnixNano()
	data, _ := gproto.Marshal(lc)
	msg := nats.NewMsg(proto.LifeSubject(s.id, s.host, proc))
	msg.Data = data
	msg.Header.Set(nats.MsgIdHdr, proto.LifeMsgID(s.id, s.host, p.Pid, "", rec, 0))
	if _, err := s.r.js.PublishMsg(context.Background(), msg); err != nil {
		s.r.t.Fatal(err)
	}
}

func (s *session) worker(w int) *pmpb.Process {
	return &pmpb.Process{Session: s.id, Host: s.host, Pid: int64(1000 + w), Role: proto.RoleWorker, Dp: 0, Pp: 0, Tp: int32(w), Ep: -1, Rank: int32(w)}
}

// batches publishes n batches per worker of k forward passes each.
func (s *session) batches(n, k int) {
	s.r.t.Helper()
	for i := 0; i < n; i++ {
		for w := 0; w < s.nw; w++ {
			p := s.worker(w)
			eb := &pmpb.EventBatch{SchemaMajor: proto.SchemaMajor, SchemaMinor: proto.SchemaMinor, Process: p}
			first := s.seq[w] + 1
			for j := 0; j < k; j++ {
				s.seq[w]++
				eb.Events = append(eb.Events, &pmpb.Event{Kind: proto.KindForwardPass, Table: "forward_pass_timing", Seq: s.seq[w],
					Step: int64(s.seq[w]), TsNs: time.Now().UnixNano(), Cols: map[string]*pmpb.Value{
						"cpu_ms": {V: &pmpb.Value_D{D: float64(w + 1)}}, "tokens": {V: &pmpb.Value_I{I: 8}},
						"runtime_mode": {V: &pmpb.Value_S{S: "NONE"}}, "gpu_status": {V: &pmpb.Value_S{S: "unavailable"}}}})
			}
			eb.BatchId = proto.MsgID(s.id, s.host, p.Pid, "", proto.KindForwardPass, first, s.seq[w])
			data, _ := gproto.Marshal(eb)
			msg := nats.NewMsg(proto.EventSubject(s.id, s.host, proto.ProcToken(p.Role, 0, int(p.Rank), int(p.Pid)), proto.KindForwardPass))
			msg.Data = data
			msg.Header.Set(nats.MsgIdHdr, eb.BatchId)
			if _, err := s.r.js.PublishMsg(context.Background(), msg); err != nil {
				s.r.t.Fatal(err)
			}
			s.events += k
			s.msgs++
		}
	}
}

func (s *session) end() {
	s.life(proto.ProcAgent, &pmpb.Process{Session: s.id, Host: s.host, Role: proto.RoleAgent, Dp: -1, Pp: -1, Tp: -1, Ep: -1, Rank: -1},
		"end", &pmpb.Lifecycle{Record: &pmpb.Lifecycle_End{End: &pmpb.Lifecycle_SessionEnd{EndNs: time.Now().UnixNano(), Reason: "test"}}})
}

func (s *session) dir() string { return hub.SessionDir(s.r.data, s.id) }

// waitClosed waits until the example plugin closed the session (its final rows are all written).
func (s *session) waitClosed(t *testing.T) {
	t.Helper()
	waitFor(t, "the plugin to close the session", func() bool {
		sp, _ := ReadSessionPlugins(s.dir())
		return sp["example"].Closed
	})
}

func readRows(t *testing.T, path string) (hdr []string, rows [][]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		t.Fatal(err)
	}
	// Files are read while they grow: take whole lines only.
	b = b[:bytes.LastIndexByte(b, '\n')+1]
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(recs) == 0 {
		return nil, nil
	}
	return recs[0], recs[1:]
}

func col(t *testing.T, hdr []string, name string) int {
	t.Helper()
	for i, h := range hdr {
		if h == name {
			return i
		}
	}
	t.Fatalf("no column %s in %v", name, hdr)
	return -1
}

// checkExactlyOnce: one example_batches row per input message, no key twice, events add up.
func (s *session) checkExactlyOnce(t *testing.T) {
	t.Helper()
	hdr, rows := readRows(t, filepath.Join(s.dir(), "example_batches.csv"))
	if len(rows) != s.msgs {
		t.Fatalf("example_batches has %d rows, want one per input message: %d", len(rows), s.msgs)
	}
	in, ev, sq := col(t, hdr, "input_seq"), col(t, hdr, "events"), col(t, hdr, "seq")
	keys, seqs := map[string]bool{}, map[string]bool{}
	total := 0
	for _, r := range rows {
		if keys[r[in]] {
			t.Errorf("input_seq %s written twice", r[in])
		}
		if seqs[r[sq]] {
			t.Errorf("seq %s given twice", r[sq])
		}
		keys[r[in]], seqs[r[sq]] = true, true
		n, _ := strconv.Atoi(r[ev])
		total += n
	}
	if total != s.events {
		t.Errorf("example_batches counts %d events, the input had %d", total, s.events)
	}
}

func rowsIn(t *testing.T, path string) int {
	_, rows := readRows(t, path)
	return len(rows)
}

// TestHotAddBackfillsAndCloses: a plugin copied in mid-session gets the whole session, live rows
// after it, and its final rows when the session ends; plugins.json counts them.
func TestHotAddBackfillsAndCloses(t *testing.T) {
	r := newRig(t)
	r.startHost(nil)
	s := r.newSession("20261130_060000_a1b2c3", 4)
	s.batches(5, 3)
	waitFor(t, "the hub to write the session", func() bool { return rowsIn(t, filepath.Join(s.dir(), "forward_pass_timing.csv")) == s.events })
	r.install("example", "example")
	waitFor(t, "back-filled rows", func() bool { return rowsIn(t, filepath.Join(s.dir(), "example_batches.csv")) == s.msgs })
	s.batches(5, 2)
	waitFor(t, "live rows", func() bool { return rowsIn(t, filepath.Join(s.dir(), "example_batches.csv")) == s.msgs })
	s.end()
	var sp map[string]SessionPlugin
	waitFor(t, "plugins.json closed", func() bool {
		sp, _ = ReadSessionPlugins(s.dir())
		return sp["example"].Closed
	})
	s.checkExactlyOnce(t)
	hdr, tot := readRows(t, filepath.Join(s.dir(), "example_totals.csv"))
	evc := col(t, hdr, "events")
	sum := 0
	for _, row := range tot {
		n, _ := strconv.Atoi(row[evc])
		sum += n
	}
	if sum != s.events {
		t.Errorf("totals count %d events, want %d", sum, s.events)
	}
	fh, f := readRows(t, filepath.Join(s.dir(), "findings.csv"))
	if len(f) != 1 || f[0][col(t, fh, "plugin")] != "example" || f[0][col(t, fh, "role")] != proto.RolePlugin || f[0][col(t, fh, "host")] != "hubhost" {
		t.Fatalf("findings %v %v", fh, f)
	}
	if !strings.Contains(f[0][col(t, fh, "title")], "rank 3") {
		t.Errorf("finding %q should name rank 3 (cpu_ms 4)", f[0][col(t, fh, "title")])
	}
	if e := sp["example"]; e.Version != "1.0.0" || e.Rows["example_batches"] != int64(s.msgs) || e.Rows["example_totals"] != 4 || e.Findings != 1 {
		t.Errorf("plugins.json entry %+v", e)
	}
	st := r.status("example")
	if st.State != StateRunning || st.Name != "example" || st.Restarts != 0 || st.Rows != int64(s.msgs+5) {
		t.Errorf("status %+v", st)
	}
}

// TestKill9ExactlyOnce: the plugin process is killed; the hub keeps writing, the plugin restarts,
// rebuilds its state from the session's first event, and every row is there once.
func TestKill9ExactlyOnce(t *testing.T) {
	r := newRig(t)
	r.startHost(nil)
	r.install("example", "example")
	waitFor(t, "plugin running", func() bool { return r.status("example").State == StateRunning })
	s := r.newSession("20261130_060100_a1b2c3", 2)
	s.batches(10, 2)
	waitFor(t, "rows before the kill", func() bool { return rowsIn(t, filepath.Join(s.dir(), "example_batches.csv")) == s.msgs })
	pid := r.status("example").PID
	if pid <= 0 {
		t.Fatalf("no plugin pid in status: %+v", r.status("example"))
	}
	if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.batches(10, 2)
	waitFor(t, "the hub's rows after the kill", func() bool { return rowsIn(t, filepath.Join(s.dir(), "forward_pass_timing.csv")) == s.events })
	waitFor(t, "a restart", func() bool { st := r.status("example"); return st.Restarts >= 1 && st.State == StateRunning })
	waitFor(t, "rows after the restart", func() bool { return rowsIn(t, filepath.Join(s.dir(), "example_batches.csv")) == s.msgs })
	s.end()
	s.waitClosed(t)
	s.checkExactlyOnce(t)
	hdr, tot := readRows(t, filepath.Join(s.dir(), "example_totals.csv"))
	sum := 0
	for _, row := range tot {
		n, _ := strconv.Atoi(row[col(t, hdr, "events")])
		sum += n
	}
	if sum != s.events {
		t.Errorf("totals after a restart count %d events, want %d (state rebuilt from the session's start)", sum, s.events)
	}
	if le := r.status("example").LastError; !strings.Contains(le, "exited") && !strings.Contains(le, "Unavailable") {
		t.Errorf("last error %q does not say the process died", le)
	}
}

// TestHangingPluginTimedOut: a Consume that never returns misses the deadline, the plugin is
// killed and restarted; the hub's own rows keep landing.
func TestHangingPluginTimedOut(t *testing.T) {
	r := newRig(t)
	r.startHost(func(c *Config) { c.CallTimeout = 500 * time.Millisecond })
	r.install("hang", "hang")
	s := r.newSession("20261130_060200_a1b2c3", 1)
	s.batches(3, 1)
	waitFor(t, "a timed-out restart", func() bool {
		st := r.status("hang")
		return st.Restarts >= 1 && strings.Contains(st.LastError, "missed the 500ms deadline")
	})
	s.batches(3, 1)
	waitFor(t, "the hub's rows", func() bool { return rowsIn(t, filepath.Join(s.dir(), "forward_pass_timing.csv")) == s.events })
}

// TestAllowlist: a binary whose sha256 is not on the list is refused with a reason; a listed one runs.
func TestAllowlist(t *testing.T) {
	r := newRig(t)
	sum, err := fileSHA256(bins["example"])
	if err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(t.TempDir(), "allow")
	os.WriteFile(list, []byte("# plugins we run\n"+sum+"  example\n"), 0o644)
	allow, err := ReadAllowlist(list)
	if err != nil {
		t.Fatal(err)
	}
	r.startHost(func(c *Config) { c.Allow = allow })
	r.install("hang", "hang")
	r.install("example", "example")
	waitFor(t, "hang refused", func() bool {
		st := r.status("hang")
		return st.State == StateRefused && strings.Contains(st.Reason, "allowlist")
	})
	waitFor(t, "example running", func() bool { return r.status("example").State == StateRunning })
	if st := r.status("hang"); st.PID != 0 || st.Name != "" {
		t.Errorf("a refused binary was started: %+v", st)
	}
	if _, err := ReadAllowlist(writeTemp(t, "nothex  x\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad allowlist: got %v, want an error naming line 1", err)
	}
}

func writeTemp(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte(s), 0o644)
	return p
}

// TestHalfWrittenNotStarted: an executable that is only half there waits; the rest makes it start.
func TestHalfWrittenNotStarted(t *testing.T) {
	r := newRig(t)
	r.startHost(nil)
	b, err := os.ReadFile(bins["example"])
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(r.dir, "example")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(b[:len(b)/2])
	waitFor(t, "incomplete binary noticed", func() bool {
		st := r.status("example")
		return st.State == StateWaiting && strings.HasPrefix(st.Reason, "incomplete binary")
	})
	if st := r.status("example"); st.PID != 0 {
		t.Fatalf("a half-written binary was started: %+v", st)
	}
	f.Write(b[len(b)/2:])
	f.Close()
	waitFor(t, "the complete binary to start", func() bool { return r.status("example").State == StateRunning })
}

// TestRemoveStops: removing the binary stops the plugin process and drops it from the list.
func TestRemoveStops(t *testing.T) {
	r := newRig(t)
	r.startHost(nil)
	r.install("example", "example")
	waitFor(t, "plugin running", func() bool { return r.status("example").State == StateRunning })
	pid := int(r.status("example").PID)
	os.Remove(filepath.Join(r.dir, "example"))
	waitFor(t, "plugin gone from the list", func() bool { return r.status("example").File == "" })
	waitFor(t, "plugin process gone", func() bool {
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		return syscall.Kill(pid, 0) != nil
	})
}

// TestEndedSessionOnlyOnRequest: a session that ended before the plugin came is not replayed;
// RunSession (pmhub plugins run) computes it, and a second run adds nothing.
func TestEndedSessionOnlyOnRequest(t *testing.T) {
	r := newRig(t)
	s := r.newSession("20261130_060300_a1b2c3", 2)
	s.batches(4, 2)
	s.end()
	waitFor(t, "session ended", func() bool {
		m, err := hub.ReadMetadata(s.dir())
		return err == nil && m.Status == hub.StatusEnded
	})
	r.startHost(nil)
	r.install("example", "example")
	live := r.newSession("20261130_060301_a1b2c3", 1)
	live.batches(2, 1)
	waitFor(t, "the live session's rows", func() bool { return rowsIn(t, filepath.Join(live.dir(), "example_batches.csv")) == live.msgs })
	if n := rowsIn(t, filepath.Join(s.dir(), "example_batches.csv")); n != 0 {
		t.Fatalf("the ended session got %d rows without being asked", n)
	}
	r.stopHost()
	h, err := New(Config{Dir: t.TempDir(), StateDir: t.TempDir(), DataDir: r.data, Conn: r.nc, HostName: "hubhost"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		st, err := h.RunSession(ctx, bins["example"], s.id)
		cancel()
		if err != nil {
			t.Fatalf("run %d: %v (%+v)", i, err, st)
		}
		s.checkExactlyOnce(t)
		if n := rowsIn(t, filepath.Join(s.dir(), "example_totals.csv")); n != 2 {
			t.Fatalf("run %d: %d totals rows, want 2", i, n)
		}
	}
}

// Derived rows go out on pm.v1.dv.…, which the stream (and so the hub's ingest) does not hold.
func TestDerivedOnNATS(t *testing.T) {
	r := newRig(t)
	sub, err := r.nc.SubscribeSync(proto.DerivedFilter("", "hubhost", proto.PluginProcToken("example"), "example_batch"))
	if err != nil {
		t.Fatal(err)
	}
	r.startHost(nil)
	r.install("example", "example")
	s := r.newSession("20261130_060400_a1b2c3", 1)
	s.batches(1, 4)
	m, err := sub.NextMsg(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var eb pmpb.EventBatch
	if err := gproto.Unmarshal(m.Data, &eb); err != nil {
		t.Fatal(err)
	}
	if eb.GetProcess().GetRole() != proto.RolePlugin || len(eb.GetEvents()) != 1 || eb.GetEvents()[0].GetCols()["events"].GetI() != 4 {
		t.Fatalf("derived batch %v", &eb)
	}
	for _, subj := range proto.StreamSubjects() {
		if strings.HasPrefix(proto.DerivedPrefix+".x", strings.TrimSuffix(subj, ">")) {
			t.Fatalf("stream subject %s would take derived rows back in", subj)
		}
	}
	if c := r.hub.Counters(); len(c.Bad) != 0 {
		t.Errorf("the hub counted bad messages: %v", c.Bad)
	}
}

// TestHostRestartResumes: the whole host (as when pmhub restarts) stops mid-session and starts
// again with the same state folder; the session's rows continue exactly once and the final
// totals count every event.
func TestHostRestartResumes(t *testing.T) {
	r := newRig(t)
	r.startHost(nil)
	r.install("example", "example")
	s := r.newSession("20261130_060500_a1b2c3", 2)
	s.batches(6, 2)
	waitFor(t, "rows before the stop", func() bool { return rowsIn(t, filepath.Join(s.dir(), "example_batches.csv")) == s.msgs })
	r.stopHost()
	s.batches(6, 2)
	r.startHost(nil)
	waitFor(t, "rows after the restart", func() bool { return rowsIn(t, filepath.Join(s.dir(), "example_batches.csv")) == s.msgs })
	s.end()
	s.waitClosed(t)
	s.checkExactlyOnce(t)
	hdr, tot := readRows(t, filepath.Join(s.dir(), "example_totals.csv"))
	sum := 0
	for _, row := range tot {
		n, _ := strconv.Atoi(row[col(t, hdr, "events")])
		sum += n
	}
	if sum != s.events {
		t.Errorf("totals after a host restart count %d events, want %d", sum, s.events)
	}
}

// TestTornLineAndForeignRows: a derived file that ends in half a line (a crash mid-write) is cut
// back, and rows of another plugin version in the same file do not hide this version's rows.
func TestTornLineAndForeignRows(t *testing.T) {
	data := t.TempDir()
	dir := hub.SessionDir(data, "s")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, hub.MetadataFile), []byte("{}\n"), 0o644)
	info := sdk.Info{Name: "p", Version: "2", Kinds: []string{"forward_pass"}, Tables: []sdk.Table{{Table: "p_rows", Kind: "p_row",
		Columns: []sdk.Column{{Name: "v", Type: sdk.TypeFloat}}}}}
	hdr := strings.Join(derivedHeader(info.Tables[0]), ",")
	old := "s,h,1,plugin,-1,-1,-1,-1,1,-1,5,p,1,900,0,1.0\n" // version 1, far ahead
	mine := "s,h,1,plugin,-1,-1,-1,-1,2,-1,5,p,2,10,0,2.0\n" // version 2, input 10
	torn := "s,h,1,plugin,-1,-1,-1,-1,3,-1,5,p,2,11,0,3"     // version 2, input 11, no newline
	path := filepath.Join(dir, "p_rows.csv")
	os.WriteFile(path, []byte(hdr+"\n"+old+mine+torn), 0o644)
	w, err := newSessionWriter(data, "s", info, "h")
	if err != nil {
		t.Fatal(err)
	}
	rows := []*pluginpb.Row{
		{Table: "p_rows", InputSeq: 10, Cols: map[string]*pmpb.Value{"v": {V: &pmpb.Value_I{I: 2}}}},
		{Table: "p_rows", InputSeq: 11, Cols: map[string]*pmpb.Value{"v": {V: &pmpb.Value_I{I: 3}}}},
		{Table: "p_rows", InputSeq: 12, Cols: map[string]*pmpb.Value{"v": {V: &pmpb.Value_D{D: 4}}}},
	}
	if _, err := w.write(rows, 7); err != nil {
		t.Fatal(err)
	}
	_, got := readRows(t, path)
	var keys []string
	for _, r := range got {
		keys = append(keys, r[12]+"/"+r[13]+"="+r[15]+" seq "+r[8])
	}
	want := []string{"1/900=1.0 seq 1", "2/10=2.0 seq 2", "2/11=3.0 seq 3", "2/12=4.0 seq 4"}
	if strings.Join(keys, ";") != strings.Join(want, ";") {
		t.Fatalf("rows %v, want %v", keys, want)
	}
	if _, err := w.write([]*pluginpb.Row{{Table: "nope", InputSeq: 13}}, 7); err == nil {
		t.Error("a row of an undeclared table was written")
	}
	if _, err := w.write([]*pluginpb.Row{{Table: "p_rows", InputSeq: 13, Cols: map[string]*pmpb.Value{"v": {V: &pmpb.Value_S{S: "x"}}}}}, 7); err == nil {
		t.Error("a string in a float column was written")
	}
}

// TestReplaceBinary: another binary renamed over a running one replaces it: the old process
// stops, the new one runs under the same file name.
func TestReplaceBinary(t *testing.T) {
	r := newRig(t)
	r.startHost(nil)
	r.install("example", "p")
	waitFor(t, "example running", func() bool { st := r.status("p"); return st.State == StateRunning && st.PID > 0 })
	old := r.status("p")
	r.install("slow", "p")
	waitFor(t, "the replacement running", func() bool {
		st := r.status("p")
		return st.State == StateRunning && st.Name == "slow" && st.PID > 0
	})
	if st := r.status("p"); st.SHA256 == old.SHA256 || st.PID == old.PID {
		t.Fatalf("not replaced: %+v (was %+v)", st, old)
	}
	waitFor(t, "the old process gone", func() bool {
		var ws syscall.WaitStatus
		syscall.Wait4(int(old.PID), &ws, syscall.WNOHANG, nil)
		return syscall.Kill(int(old.PID), 0) != nil
	})
}

// TestPluginNeedSwitchesOnPersonOffWins: a session reports forward_pass switched off; the example
// plugin needs it, so the host asks the session's agent to switch it on. A person's "off" then
// reaches the plugin (its finding says so); removing the plugin switches the kind off again.
func TestPluginNeedSwitchesOnPersonOffWins(t *testing.T) {
	r := newRig(t)
	ctl := make(chan *nats.Msg, 64)
	if _, err := r.nc.ChanSubscribe(proto.ControlSubject("hostA"), ctl); err != nil {
		t.Fatal(err)
	}
	r.startHost(nil)
	s := r.newSession("20261130_060600_a1b2c3", 1)
	w := s.worker(0)
	s.life("w0", w, "status", &pmpb.Lifecycle{Record: &pmpb.Lifecycle_Status_{Status: &pmpb.Lifecycle_Status{Targets: []*pmpb.TargetStatus{
		{Target: "gpu_model_runner", Status: "disabled", Reason: "profiler switched off: forward_pass,cpu_timing"}}}}})
	s.batches(1, 1)
	waitFor(t, "the hub to record the disabled target", func() bool {
		m, err := hub.ReadMetadata(s.dir())
		return err == nil && len(m.Processes) > 0 && len(m.Processes[0].Targets) == 1
	})
	r.install("example", "example")
	next := func(want bool) {
		t.Helper()
		deadline := time.After(time.Minute)
		for {
			select {
			case m := <-ctl:
				c, err := proto.DecodeControl(m.Data)
				if err != nil {
					t.Fatal(err)
				}
				if p := c.GetProfiler(); p != nil && p.GetName() == "forward_pass" && p.GetEnabled() == want && c.GetSession() == s.id {
					return
				}
			case <-deadline:
				t.Fatalf("no control forward_pass enabled=%v for %s", want, s.id)
			}
		}
	}
	next(true)
	if err := RecordChoice(context.Background(), r.js, s.id, "forward_pass", false, "test"); err != nil {
		t.Fatal(err)
	}
	s.batches(1, 1)
	s.end()
	s.waitClosed(t)
	fh, f := readRows(t, filepath.Join(s.dir(), "findings.csv"))
	found := false
	for _, row := range f {
		if strings.Contains(row[col(t, fh, "title")], "input off: forward_pass switched off by a person") {
			found = true
		}
	}
	if !found {
		t.Fatalf("the plugin was not told of the person's off: %v", f)
	}
	os.Remove(filepath.Join(r.dir, "example"))
	next(false)
}
