package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	pmproto "github.com/profilemate/profilemate/proto"
)

// startNATSPayload is startNATS with the server's max_payload set.
func startNATSPayload(t *testing.T, maxPayload int32) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, JetStream: true,
		StoreDir: t.TempDir(), MaxPayload: maxPayload})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

func createStreamOpts(t *testing.T, url string, opts ...pmproto.StreamOption) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(context.Background(), pmproto.StreamConfig(opts...)); err != nil {
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
	createStreamOpts(t, url, pmproto.WithMaxMsgSize(64<<10))
	spoolDir := t.TempDir()

	long := Msg{Subject: eventSubject(strings.Repeat("a", 4100), "h1", "w0", "kv_cache"), ID: "long", Data: []byte("x")}
	good := func(i int) Msg {
		return Msg{Subject: lifeSubject("s1", "h1", "w0"), ID: fmt.Sprint("good-", i), Data: []byte{byte(i)}}
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
