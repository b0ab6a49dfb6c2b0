package hub

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// flood publishes n messages of a newer wire major (dead-letter material) through JetStream.
func flood(t *testing.T, url string, n int, payload int) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	pad := make([]byte, payload)
	for i := range pad {
		pad[i] = 'x'
	}
	var futs []jetstream.PubAckFuture
	for i := 0; i < n; i++ {
		b := kvBatch("h", 1, uint64(i+1))
		b.Events[0].Cols[1] = string(pad)
		data, _ := json.Marshal(jsonMsg{V: 2, Batch: b})
		f, err := js.PublishAsync("pm.v1.ev.J.h.w0.kv_cache", data)
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, f)
	}
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		}
	}
}

func deadFiles(t *testing.T, data string) (n int, bytes int64) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(data, "deadletter"))
	for _, e := range ents {
		info, err := e.Info()
		if err == nil {
			n++
			bytes += info.Size()
		}
	}
	return n, bytes
}

// TestDeadLettersCapped: a flood of 2,000 junk messages keeps at most the configured number of
// dead letters (two files each) and counts the rest; the cap holds across a restart; a byte cap
// holds too. Before: every message made two files (2,000 messages, 4,000 files).
func TestDeadLettersCapped(t *testing.T) {
	data := t.TempDir()
	s, stop := startHubCfg(t, Config{DataDir: data, DeadLetterMaxCount: 25})
	flood(t, s.ClientURL(), 2000, 10)
	waitFor(t, "2,000 messages handled", func() bool { return s.Counters().Messages >= 2000 })
	c := s.Counters()
	if c.DeadLettered != 25 || c.DeadLetterSkipped != 1975 || c.Bad[ReasonNewerMajor] != 2000 {
		t.Errorf("kept %d, skipped %d, counted %d; want 25, 1975, 2000", c.DeadLettered, c.DeadLetterSkipped, c.Bad[ReasonNewerMajor])
	}
	if n, _ := deadFiles(t, data); n != 50 {
		t.Errorf("%d dead-letter files, want 50", n)
	}
	stop()

	s, stop = startHubCfg(t, Config{DataDir: data, DeadLetterMaxCount: 25})
	flood(t, s.ClientURL(), 10, 10)
	waitFor(t, "10 more handled", func() bool { return s.Counters().Messages >= 10 })
	if n, _ := deadFiles(t, data); n != 50 || s.Counters().DeadLetterSkipped != 10 {
		t.Errorf("after restart: %d files, %d skipped; want 50 and 10", n, s.Counters().DeadLetterSkipped)
	}
	stop()

	data2 := t.TempDir()
	s, _ = startHubCfg(t, Config{DataDir: data2, DeadLetterMaxBytes: 20 << 10})
	flood(t, s.ClientURL(), 200, 1000)
	waitFor(t, "200 handled", func() bool { return s.Counters().Messages >= 200 })
	if _, b := deadFiles(t, data2); b > 20<<10 || b == 0 {
		t.Errorf("dead-letter bytes %d, want 1..%d", b, 20<<10)
	}
	if c := s.Counters(); c.DeadLettered+c.DeadLetterSkipped != 200 || c.DeadLetterSkipped == 0 {
		t.Errorf("kept %d skipped %d, want 200 in all, some skipped", c.DeadLettered, c.DeadLetterSkipped)
	}
}
