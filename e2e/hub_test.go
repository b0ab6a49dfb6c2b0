package e2e

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/hub"
)

// crashProcs are the simulated processes of the crash test: 2 hosts × 2 workers.
var crashProcs = []wireProc{
	{Host: "hostA", PID: 101, Rank: 0, TP: 0},
	{Host: "hostA", PID: 102, Rank: 1, TP: 1},
	{Host: "hostB", PID: 101, Rank: 2, TP: 0}, // same pid as on hostA: hosts keep them apart
	{Host: "hostB", PID: 202, Rank: 3, TP: 1},
}

// publishRange publishes batches [from, to) of every process, each batch of per events split over
// two tables of one kind, through JetStream with message ids, and waits for the stream's acks.
func publishRange(t *testing.T, js jetstream.JetStream, session string, from, to, per int) {
	t.Helper()
	for b := from; b < to; b++ {
		for _, p := range crashProcs {
			first := uint64(b*per + 1)
			subj, data, id := encodeKVBatch(t, session, p, first, per)
			if _, err := js.PublishAsync(subj, data, jetstream.WithMsgID(id)); err != nil {
				t.Fatalf("publish: %v", err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		t.Fatal("publishes not acknowledged")
	}
}

// sessionRows is the rows metadata counts in a session's folder and, when it rotated, in its
// closed segments beside it.
func sessionRows(dir string) int64 {
	dirs, err := hub.Segments(filepath.Dir(filepath.Dir(dir)), filepath.Base(dir))
	if err != nil {
		return 0
	}
	var n int64
	for _, d := range dirs {
		if m, err := hub.ReadMetadata(d); err == nil {
			for _, v := range m.Rows {
				n += v
			}
		}
	}
	return n
}

// TestHubSIGKILLExactlyOnce kills the hub with SIGKILL while it merges, restarts it on the same
// data folder and checks that every event is in the session exactly once.
func TestHubSIGKILLExactlyOnce(t *testing.T) { hubSIGKILLExactlyOnce(t) }

// TestHubSIGKILLExactlyOnceRotating is the same with the session rotating by size: the kill and
// the redelivered and republished events fall across segment boundaries, and every event is in
// exactly one segment.
func TestHubSIGKILLExactlyOnceRotating(t *testing.T) {
	hubSIGKILLExactlyOnce(t, "--rotate-bytes", "1048576")
}

func hubSIGKILLExactlyOnce(t *testing.T, serveArgs ...string) {
	data := t.TempDir()
	listen := freeAddr(t)
	session := "20261126_120000_abc123"
	const batches, per = 600, 50
	total := int64(len(crashProcs) * batches * per)

	h := startHub(t, data, listen, serveArgs...)
	nc, err := nats.Connect(h.url)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	for _, p := range crashProcs {
		subj, payload := encodeHello(t, session, p)
		if _, err := js.Publish(context.Background(), subj, payload); err != nil {
			t.Fatal(err)
		}
	}
	publishRange(t, js, session, 0, batches/2, per)
	dir := hub.SessionDir(data, session)
	deadline := time.Now().Add(60 * time.Second)
	// Rotating, the kill comes after the first boundary, so redeliveries straddle one.
	written := func() bool {
		if len(serveArgs) > 0 {
			d, _ := hub.Segments(data, session)
			return len(d) >= 2
		}
		return sessionRows(dir) > 0
	}
	for !written() {
		if time.Now().After(deadline) {
			t.Fatal("hub wrote nothing")
		}
		time.Sleep(time.Millisecond)
	}
	nc.Close()
	if err := h.stop(syscall.SIGKILL); err == nil {
		t.Fatal("hub exited cleanly; it should have been killed")
	}
	t.Logf("killed the hub with %d of %d rows in metadata", sessionRows(dir), total/2)

	h2 := startHub(t, data, listen, serveArgs...)
	nc2, err := nats.Connect(h2.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	js2, _ := jetstream.New(nc2)
	// Some of the first half again (an agent republishing after a reconnect), then the rest.
	publishRange(t, js2, session, batches/2-10, batches, per)
	for _, p := range crashProcs {
		subj, payload := encodeBye(t, session, p, uint64(batches*per))
		if _, err := js2.Publish(context.Background(), subj, payload); err != nil {
			t.Fatal(err)
		}
	}
	deadline = time.Now().Add(120 * time.Second)
	for {
		m, err := hub.ReadMetadata(dir)
		if err == nil && m.Status == hub.StatusEnded {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session not ended; rows %d of %d", sessionRows(dir), total)
		}
		time.Sleep(20 * time.Millisecond)
	}

	seen := map[string]int{}
	var rows int64
	dirs, err := hub.Segments(data, session)
	if err != nil {
		t.Fatal(err)
	}
	if rotating := len(serveArgs) > 0; rotating && len(dirs) < 3 {
		t.Fatalf("%d segments, want several", len(dirs))
	}
	t.Logf("%d segments", len(dirs))
	for _, seg := range dirs {
		for _, table := range kvTables {
			b, err := os.ReadFile(filepath.Join(seg, table+".csv"))
			if err != nil {
				t.Fatal(err)
			}
			recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
			if err != nil {
				t.Fatalf("%s: %v", table, err)
			}
			col := map[string]int{}
			for i, c := range recs[0] {
				col[c] = i
			}
			for _, r := range recs[1:] {
				seen[fmt.Sprintf("%s/%s/%s", r[col["host"]], r[col["pid"]], r[col["seq"]])]++
				rows++
			}
		}
	}
	if rows != total {
		t.Errorf("rows %d, want %d", rows, total)
	}
	for _, p := range crashProcs {
		for s := 1; s <= batches*per; s++ {
			k := fmt.Sprintf("%s/%d/%d", p.Host, p.PID, s)
			if seen[k] != 1 {
				t.Fatalf("event %s written %d times, want 1", k, seen[k])
			}
		}
	}
	m, _ := hub.ReadMetadata(dir)
	if m.EndReason != hub.EndAllProcessesEnded || len(m.Processes) != len(crashProcs) || len(m.Hosts) != 2 {
		t.Errorf("metadata: end %q, %d processes, %d hosts", m.EndReason, len(m.Processes), len(m.Hosts))
	}
	for _, p := range m.Processes {
		if len(p.Gaps) != 0 {
			t.Errorf("%s/%d: gaps %v", p.Host, p.PID, p.Gaps)
		}
	}
}
