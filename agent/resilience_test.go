package agent

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/profilemate/profilemate/internal/testkit"
)

// checkOrdered checks that each process's events of one kind arrive in increasing seq order.
func checkOrdered(t *testing.T, msgs []*nats.Msg) {
	t.Helper()
	got := map[string][]uint64{}
	for _, m := range msgs {
		if !strings.HasPrefix(m.Subject, "pm.v1.ev.") {
			continue
		}
		b := decodePB(t, m)
		for _, e := range b.Events {
			k := fmt.Sprint(b.Process.GetPid(), "/", e.Kind)
			got[k] = append(got[k], e.Seq)
		}
	}
	for pid, seqs := range got {
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				t.Fatalf("%s: seq %d after %d", pid, seqs[i], seqs[i-1])
			}
		}
	}
}

func TestNATSRestartLosesNothing(t *testing.T) {
	store := t.TempDir()
	ns := testkit.StartNATS(t, testkit.Store(store))
	url := ns.ClientURL()
	port := ns.Addr().(*net.TCPAddr).Port
	createStream(t, url)
	// A small memory queue so the outage goes through the disk spool.
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: url}, SpoolDir: t.TempDir(), MemMax: 4 << 10})
	s := dialShim(t, a.Socket(), 401, 0, "r1")
	for i := 0; i < 10; i++ {
		s.batch(10)
	}
	waitFor(t, "first events", func() bool { return countEvents(t, url) == 100 })
	ns.Shutdown()
	ns.WaitForShutdown()
	for i := 0; i < 50; i++ {
		s.batch(10)
	}
	waitFor(t, "events spooled", func() bool { return a.Status().Events == 600 && a.Status().Spool.Batches > 0 })
	ns2 := testkit.StartNATS(t, testkit.Store(store), testkit.Port(port))
	s.batch(10)
	s.bye()
	waitFor(t, "every event", func() bool { return countEvents(t, ns2.ClientURL()) >= 610 })
	msgs := streamMsgs(t, ns2.ClientURL())
	got := seqsByPID(t, msgs)
	checkExactlyOnce(t, got, map[int]uint64{401: 610})
	checkOrdered(t, msgs)
	if st := a.Status(); st.Dropped != 0 {
		t.Errorf("dropped %d, want 0", st.Dropped)
	}
}

func TestAgentBeforeStream(t *testing.T) {
	ns := testkit.StartNATS(t)
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()})
	s := dialShim(t, a.Socket(), 501, 0, "b1")
	for i := 0; i < 5; i++ {
		s.batch(10)
	}
	waitFor(t, "publish attempts fail", func() bool { return a.Status().NATS.Error != "" })
	createStream(t, ns.ClientURL())
	s.batch(10)
	waitFor(t, "every event", func() bool { return countEvents(t, ns.ClientURL()) >= 60 })
	msgs := streamMsgs(t, ns.ClientURL())
	got := seqsByPID(t, msgs)
	checkExactlyOnce(t, got, map[int]uint64{501: 60})
	checkOrdered(t, msgs)
}

func TestSpoolSurvivesRestartWithoutNATS(t *testing.T) {
	spoolDir := t.TempDir()
	a := newTestAgent(t, Config{SpoolDir: spoolDir, MemMax: 1 << 10})
	s := dialShim(t, a.Socket(), 601, 0, "p1")
	for i := 0; i < 20; i++ {
		s.batch(5)
	}
	s.bye()
	waitFor(t, "ingested", func() bool { return a.Status().Events == 100 })
	// Shut down with nothing reachable: memory is written in front of the spool.
	rep, err := a.Shutdown(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Spooled == 0 || rep.Dropped != 0 {
		t.Fatalf("report %+v, want spooled messages and no drops", rep)
	}
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: spoolDir})
	waitFor(t, "replayed", func() bool { return countEvents(t, ns.ClientURL()) >= 100 })
	msgs := streamMsgs(t, ns.ClientURL())
	got := seqsByPID(t, msgs)
	checkExactlyOnce(t, got, map[int]uint64{601: 100})
	checkOrdered(t, msgs)
}

func TestSpoolFullCountsDrops(t *testing.T) {
	a := newTestAgent(t, Config{SpoolDir: t.TempDir(), MemMax: 1 << 10, SpoolMax: 8 << 10})
	s := dialShim(t, a.Socket(), 701, 0, "f1")
	for i := 0; i < 100; i++ {
		s.batch(5)
	}
	waitFor(t, "ingested", func() bool { return a.Status().Events == 500 })
	st := a.Status()
	if st.Dropped == 0 || st.Spool.Bytes > 8<<10 {
		t.Fatalf("dropped %d spool %d bytes, want drops and at most 8 KiB", st.Dropped, st.Spool.Bytes)
	}
}

func TestBadInputKeepsOtherConnections(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, MaxLine: 1 << 20})
	good := dialShim(t, a.Socket(), 801, 0, "g1")
	bad := []string{
		"garbage\n",
		`{"t":"batch","v":1,"pid":5,"events":[{"kind":"kv_cache"` + "\n", // truncated
		`{"t":"batch","v":2,"pid":5,"events":[]}` + "\n",                 // wrong version
		`{"t":"batch","v":1,"pid":5,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"cols":3}]}` + "\n",
		`{"t":"nope","v":1}` + "\n",
		`{"t":"batch","v":1,"pid":5,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"cols":{"a":[1]}}]}` + "\n",
		`{"t":"batch","v":1,"pid":5,"events":[{"kind":"x","table":"y","seq":1,"cols":{"a":"` + strings.Repeat("x", 10<<20) + "\"}}]}\n",
	}
	// One bad connection sends everything, including a 10 MB line, then a good line after it.
	bc, err := net.Dial("unix", a.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	done := make(chan error, 1)
	go func() {
		var buf bytes.Buffer
		for _, l := range bad {
			buf.WriteString(l)
		}
		fmt.Fprintf(&buf, `{"t":"hello","v":1,"pid":802,"role":"worker","rank":1,"dp":0,"pp":0,"tp":1,"ep":-1}`+"\n")
		fmt.Fprintf(&buf, `{"t":"batch","v":1,"pid":802,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"cols":{"usage":1}}]}`+"\n")
		_, err := bc.Write(buf.Bytes())
		done <- err
	}()
	for i := 0; i < 30; i++ {
		good.batch(10)
	}
	good.bye()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "good events", func() bool { return countEvents(t, ns.ClientURL()) >= 301 })
	msgs := streamMsgs(t, ns.ClientURL())
	got := seqsByPID(t, msgs)
	checkExactlyOnce(t, got, map[int]uint64{801: 300, 802: 1})
	if n := a.Status().BadLines; n != int64(len(bad)) {
		t.Errorf("bad lines %d, want %d", n, len(bad))
	}
	for _, p := range a.Status().Processes {
		if p.Pid == 5 {
			t.Errorf("a rejected batch registered process %+v", p)
		}
	}
	// A final line without a newline is a truncated line.
	bc.Write([]byte(`{"t":"batch","v":1`))
	bc.(*net.UnixConn).CloseWrite()
	waitFor(t, "truncated line rejected", func() bool { return a.Status().BadLines == int64(len(bad))+1 })
}
