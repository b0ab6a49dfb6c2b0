package hub

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// testSchema and jsonDecoder stand in for the protobuf contract at the Decoder seam: they let the
// writer and the consumer loop be tested with hand-made messages.
type testSchema struct{}

var common = []string{"session", "host", "pid", "role", "dp", "pp", "tp", "ep", "seq", "step", "ts_ns"}

func (testSchema) Header(t string) ([]string, bool) {
	switch t {
	case "kv_cache_usage":
		return append(append([]string{}, common...), "usage", "free_blocks"), true
	case "forward_pass_timing":
		return append(append([]string{}, common...), "ms"), true
	}
	return nil, false
}
func (testSchema) Tables() []string { return []string{"kv_cache_usage", "forward_pass_timing"} }
func (testSchema) Version() string  { return "1.0" }

type jsonMsg struct {
	V     int        `json:"v"`
	Batch *Batch     `json:"batch"`
	Life  *Life      `json:"life"`
	HB    *Heartbeat `json:"hb"`
}

type jsonDecoder struct{}

func (jsonDecoder) Decode(subject string, data []byte) (any, error) {
	var m jsonMsg
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, bad(ReasonDecode, err)
	}
	if m.V > 1 {
		return nil, fmt.Errorf("v%d: %w", m.V, ErrNewerMajor)
	}
	switch {
	case m.Batch != nil:
		return m.Batch, nil
	case m.Life != nil:
		return m.Life, nil
	case m.HB != nil:
		return m.HB, nil
	}
	return nil, bad(ReasonUnknownKind, fmt.Errorf("empty message"))
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

func publish(t *testing.T, nc *nats.Conn, subj string, m jsonMsg) {
	t.Helper()
	b, _ := json.Marshal(m)
	if _, err := nc.Request(subj, b, 5*time.Second); err != nil { // JetStream acks the publish
		t.Fatalf("publish %s: %v", subj, err)
	}
}

func kvBatch(host string, pid int64, seqs ...uint64) *Batch {
	b := &Batch{Session: "S1", Host: host, PID: pid, Proc: "w0", Kind: "kv_cache",
		Ident: Ident{Role: "worker", DP: 0, PP: 0, TP: 0, EP: -1, Rank: 0}}
	for _, s := range seqs {
		b.Events = append(b.Events, Event{Table: "kv_cache_usage", Seq: s, Step: int64(s), TsNS: 1000 + int64(s), Cols: []string{"0.5", "12"}})
	}
	return b
}

func readCSV(t *testing.T, path string) [][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return recs
}

func TestMergeExactlyOnceAlignedAndEnded(t *testing.T) {
	data := t.TempDir()
	s := startHub(t, data)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	publish(t, nc, "pm.v1.hb.hostB", jsonMsg{HB: &Heartbeat{Host: "hostB", OffsetNS: 500, UncertaintyNS: 7, Measured: true}})
	publish(t, nc, "pm.v1.life.S1.hostA.w0", jsonMsg{Life: &Life{Session: "S1", Host: "hostA", PID: 10, Type: LifeHello, Ident: Ident{Role: "worker", Rank: 0}, Python: "3.12.1", VLLM: "0.16.0"}})
	publish(t, nc, "pm.v1.ev.S1.hostA.w0.kv_cache", jsonMsg{Batch: kvBatch("hostA", 10, 1, 2, 3)})
	publish(t, nc, "pm.v1.ev.S1.hostA.w0.kv_cache", jsonMsg{Batch: kvBatch("hostA", 10, 2, 3, 4)}) // overlaps: 2,3 again
	publish(t, nc, "pm.v1.ev.S1.hostB.w0.kv_cache", jsonMsg{Batch: kvBatch("hostB", 10, 1, 2)})    // same pid, other host
	publish(t, nc, "pm.v1.ev.S1.hostB.w0.kv_cache", jsonMsg{Batch: kvBatch("hostB", 10, 6)})       // 3..5 never arrive
	publish(t, nc, "pm.v1.life.S1.hostA.w0", jsonMsg{Life: &Life{Session: "S1", Host: "hostA", PID: 10, Type: LifeBye, LastSeq: 4}})
	publish(t, nc, "pm.v1.life.S1.hostB.w0", jsonMsg{Life: &Life{Session: "S1", Host: "hostB", PID: 10, Type: LifeBye, LastSeq: 6}})

	dir := SessionDir(data, "S1")
	waitFor(t, "session ended", func() bool {
		m, err := ReadMetadata(dir)
		return err == nil && m.Status == StatusEnded
	})
	m, _ := ReadMetadata(dir)
	if m.EndReason != EndAllProcessesEnded {
		t.Errorf("end reason %q, want %q", m.EndReason, EndAllProcessesEnded)
	}
	recs := readCSV(t, filepath.Join(dir, "kv_cache_usage.csv"))
	if got, want := strings.Join(recs[0], ","), strings.Join(common, ",")+",usage,free_blocks,"+AlignedColumn; got != want {
		t.Errorf("header %q, want %q", got, want)
	}
	rows := recs[1:]
	if len(rows) != 7 {
		t.Fatalf("got %d rows, want 7 (4 from hostA, 3 from hostB): %v", len(rows), rows)
	}
	seen := map[string]bool{}
	for _, r := range rows {
		k := r[1] + "/" + r[2] + "/" + r[8]
		if seen[k] {
			t.Errorf("row %s written twice", k)
		}
		seen[k] = true
		wantAligned := r[10]
		if r[1] == "hostB" {
			var ts int64
			fmt.Sscan(r[10], &ts)
			wantAligned = fmt.Sprint(ts + 500)
		}
		if r[len(r)-1] != wantAligned {
			t.Errorf("%s: aligned %s, want %s", k, r[len(r)-1], wantAligned)
		}
	}
	if m.Rows["kv_cache_usage"] != 7 || m.Duplicates != 2 {
		t.Errorf("metadata rows %v duplicates %d, want 7 and 2", m.Rows, m.Duplicates)
	}
	if len(m.Hosts) != 2 || !m.Hosts["hostB"].Measured || m.Hosts["hostB"].OffsetNS != 500 {
		t.Errorf("hosts %+v", m.Hosts)
	}
	var pb *ProcMeta
	for _, p := range m.Processes {
		if p.Host == "hostB" {
			pb = p
		}
		if p.Host == "hostA" && (p.Python != "3.12.1" || p.VLLM != "0.16.0") {
			t.Errorf("hostA process %+v lost its hello", p)
		}
	}
	if pb == nil || len(pb.Gaps) != 1 || pb.Gaps[0] != [2]uint64{3, 5} {
		t.Errorf("hostB gaps: %+v", pb)
	}
}

func TestBadInputCountedAndDeadLettered(t *testing.T) {
	data := t.TempDir()
	s := startHub(t, data)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Request("pm.v1.ev.S2.h.w0.kv_cache", []byte("\x00garbage"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	publish(t, nc, "pm.v1.ev.S2.h.w0.kv_cache", jsonMsg{V: 2, Batch: kvBatch("h", 1, 1)})
	b := kvBatch("h", 1, 1)
	b.Events[0].Table = "no_such_table"
	publish(t, nc, "pm.v1.ev.S2.h.w0.kv_cache", jsonMsg{Batch: b})
	b = kvBatch("h", 1, 2)
	b.Session = "../escape"
	publish(t, nc, "pm.v1.ev.S2.h.w0.kv_cache", jsonMsg{Batch: b})
	publish(t, nc, "pm.v1.ev.S2.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 3)}) // still flows
	waitFor(t, "good row after bad ones", func() bool {
		m, err := ReadMetadata(SessionDir(data, "S1"))
		return err == nil && m.Rows["kv_cache_usage"] == 1
	})
	c := s.Counters()
	if c.Bad[ReasonDecode] != 1 || c.Bad[ReasonNewerMajor] != 1 || c.Bad[ReasonSession] != 1 || c.DeadLettered != 1 {
		t.Errorf("counters %+v", c)
	}
	if c.Bad[ReasonUnknownTable] != 1 || c.Bad[ReasonWrite] != 0 {
		t.Errorf("unknown table counted %d, write failures %d, want 1 and 0", c.Bad[ReasonUnknownTable], c.Bad[ReasonWrite])
	}
	ents, _ := filepath.Glob(filepath.Join(data, "deadletter", "*.bin"))
	notes, _ := filepath.Glob(filepath.Join(data, "deadletter", "*.json"))
	if len(ents) != 1 || len(notes) != 1 {
		t.Errorf("dead letters %v %v, want one .bin and one .json", ents, notes)
	}
}

func TestRecoveryTruncatesTornLineAndSkipsRedelivery(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "S1")
	now := time.Now()
	ss := newSession(dir, "S1", testSchema{}, 0, now)
	if _, err := ss.writeBatch(kvBatch("hostA", 10, 1, 2, 3), now); err != nil {
		t.Fatal(err)
	}
	if err := ss.commit(); err != nil {
		t.Fatal(err)
	}
	ss.closeFiles()
	path := filepath.Join(dir, "kv_cache_usage.csv")
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("S1,hostA,10,worker,0,0,0,-1,4,4,10") // crash mid-line
	f.Close()

	re, err := loadSession(dir, "S1", testSchema{}, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	n, err := re.writeBatch(kvBatch("hostA", 10, 2, 3, 4, 5), now)
	if err != nil || n != 2 {
		t.Fatalf("rewrite after recovery wrote %d rows (%v), want 2 (seq 4 and 5)", n, err)
	}
	if err := re.commit(); err != nil {
		t.Fatal(err)
	}
	re.closeFiles()
	recs := readCSV(t, path)
	var seqs []string
	for _, r := range recs[1:] {
		seqs = append(seqs, r[8])
	}
	if got := strings.Join(seqs, " "); got != "1 2 3 4 5" {
		t.Errorf("seqs %q, want \"1 2 3 4 5\"", got)
	}
}

func TestSessionCapCountsDropped(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "S1")
	now := time.Now()
	ss := newSession(dir, "S1", testSchema{}, 300, now)
	if _, err := ss.writeBatch(kvBatch("h", 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10), now); err != nil {
		t.Fatal(err)
	}
	if err := ss.commit(); err != nil {
		t.Fatal(err)
	}
	m, _ := ReadMetadata(dir)
	if m.DroppedByCap == 0 || m.Rows["kv_cache_usage"]+m.DroppedByCap != 10 || m.Bytes > 300 {
		t.Errorf("rows %v dropped %d bytes %d, want rows+dropped = 10 within 300 bytes", m.Rows, m.DroppedByCap, m.Bytes)
	}
}

func TestIdleEndAndRetention(t *testing.T) {
	data := t.TempDir()
	// An old ended session that retention must remove, and one it must keep.
	for id, age := range map[string]time.Duration{"OLD": 48 * time.Hour, "NEW": time.Minute} {
		dir := SessionDir(data, id)
		os.MkdirAll(dir, 0o755)
		b, _ := json.Marshal(Metadata{Session: id, Status: StatusEnded, EndNS: time.Now().Add(-age).UnixNano()})
		os.WriteFile(filepath.Join(dir, MetadataFile), b, 0o644)
	}
	s, err := New(Config{DataDir: data, Listen: "127.0.0.1:-1", Schema: testSchema{}, Decoder: jsonDecoder{},
		SessionIdle: 200 * time.Millisecond, Retention: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done; s.Close() }()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 1)})
	waitFor(t, "idle end", func() bool {
		m, err := ReadMetadata(SessionDir(data, "S1"))
		return err == nil && m.Status == StatusEnded && m.EndReason == EndIdle
	})
	waitFor(t, "retention", func() bool {
		_, err := os.Stat(SessionDir(data, "OLD"))
		return os.IsNotExist(err)
	})
	if _, err := os.Stat(SessionDir(data, "NEW")); err != nil {
		t.Errorf("recent session removed: %v", err)
	}
	if got := len(s.Sessions()); got != 2 {
		t.Errorf("Sessions() lists %d, want 2 (S1, NEW)", got)
	}
}

func TestSessionEndsWhenEveryAgentClosedIt(t *testing.T) {
	data := t.TempDir()
	s := startHub(t, data)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	life := func(host string, pid int64, typ string) {
		publish(t, nc, "pm.v1.life.S1."+host+".w0", jsonMsg{Life: &Life{Session: "S1", Host: host, PID: pid, Type: typ}})
	}
	status := func() string {
		m, err := ReadMetadata(SessionDir(data, "S1"))
		if err != nil {
			return ""
		}
		return m.Status + "/" + m.EndReason
	}
	life("hostA", 0, LifeStart)
	life("hostB", 0, LifeStart)
	life("hostA", 1, LifeHello)
	publish(t, nc, "pm.v1.ev.S1.hostA.w0.kv_cache", jsonMsg{Batch: kvBatch("hostA", 1, 1, 2)})
	life("hostA", 0, LifeEnd) // hostA done, hostB still open: the session goes on
	publish(t, nc, "pm.v1.ev.S1.hostB.w0.kv_cache", jsonMsg{Batch: kvBatch("hostB", 2, 1)})
	waitFor(t, "hostB's row", func() bool {
		m, err := ReadMetadata(SessionDir(data, "S1"))
		return err == nil && m.Rows["kv_cache_usage"] == 3
	})
	if got := status(); got != StatusActive+"/" {
		t.Fatalf("status %q while hostB is open, want active", got)
	}
	life("hostB", 0, LifeEnd)
	waitFor(t, "end", func() bool { return status() == StatusEnded+"/"+EndAllProcessesEnded })
	// A late host reopens it.
	life("hostC", 0, LifeStart)
	waitFor(t, "reopened", func() bool { return status() == StatusActive+"/" })
}

func TestUnwritableSessionFolderDoesNotStopOthers(t *testing.T) {
	data := t.TempDir()
	s := startHub(t, data)
	// A plain file where the session's folder should be: every write to it fails, even as root.
	if err := os.WriteFile(SessionDir(data, "BROKEN"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	b := kvBatch("h", 1, 1)
	b.Session = "BROKEN"
	publish(t, nc, "pm.v1.ev.BROKEN.h.w0.kv_cache", jsonMsg{Batch: b})
	publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 1)})
	waitFor(t, "the good session written and the bad one counted", func() bool {
		m, err := ReadMetadata(SessionDir(data, "S1"))
		return err == nil && m.Rows["kv_cache_usage"] == 1 && s.Counters().Bad[ReasonWrite] >= 1
	})
}
