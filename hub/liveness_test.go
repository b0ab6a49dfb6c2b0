package hub

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/profilemate/profilemate/internal/testkit"
)

// TestConsumerDeletedIsRecreated: deleting the hub's durable consumer from another client no
// longer stops ingest silently: the hub notices, recreates it from the last stream sequence it
// applied, counts it, and the next messages are written exactly once (before: nothing more was
// written while /healthz said ok).
func TestConsumerDeletedIsRecreated(t *testing.T) {
	data := t.TempDir()
	s := startHub(t, data)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 1, 2)})
	waitFor(t, "first rows", func() bool { return s.Counters().Rows == 2 })
	js, _ := jetstream.New(nc)
	if err := js.DeleteConsumer(context.Background(), streamConfig().Name, DefaultConsumer); err != nil {
		t.Fatal(err)
	}
	publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 3, 4)})
	waitFor(t, "rows after the consumer was deleted", func() bool { return s.Counters().Rows == 4 })
	if c := s.Counters(); c.ConsumerRecreated != 1 || c.Duplicates != 0 {
		t.Errorf("recreated %d, duplicates %d; want 1 and 0 (restarted from the last applied sequence)", c.ConsumerRecreated, c.Duplicates)
	}
	h := s.Health(context.Background())
	if !h.OK || h.AppliedSeq < 2 || h.LastApplyNS == 0 {
		t.Errorf("health after recovery: %+v", h)
	}
}

// TestConsumerMissingAtStart: a consumer deleted while the hub was down is recreated at start
// from ingest.json's applied sequence: the new messages are written, the old ones are not
// delivered again (before: a new consumer replayed the whole stream).
func TestConsumerMissingAtStart(t *testing.T) {
	data := t.TempDir()
	s, stop := startHubCfg(t, Config{DataDir: data})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 1, 2)})
	publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 3)})
	waitFor(t, "three rows", func() bool { return s.Counters().Rows == 3 })
	nc.Close()
	stop()
	saved, err := readIngest(data)
	if err != nil || saved.AppliedSeq != 2 {
		t.Fatalf("ingest.json: %+v, %v; want applied_seq 2", saved, err)
	}

	// While the hub is down: its consumer is deleted and one more message arrives. Replayed old
	// messages would show up as duplicates.
	ns := testkit.StartNATS(t, testkit.Store(filepath.Join(data, "jetstream")))
	nc2 := testkit.Connect(t, ns.ClientURL())
	js, _ := jetstream.New(nc2)
	if err := js.DeleteConsumer(context.Background(), streamConfig().Name, DefaultConsumer); err != nil {
		t.Fatal(err)
	}
	publish(t, nc2, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 4)})
	nc2.Close()
	ns.Shutdown()
	ns.WaitForShutdown()

	s, _ = startHubCfg(t, Config{DataDir: data})
	waitFor(t, "the new row", func() bool { return s.Counters().Rows == 1 })
	if c := s.Counters(); c.Duplicates != 0 || c.ConsumerRecreated != 1 {
		t.Errorf("duplicates %d (old messages replayed), recreated %d; want 0 and 1", c.Duplicates, c.ConsumerRecreated)
	}
}

// TestHealthReportsStall: an idle hub with its consumer is healthy and reports what it applied;
// with messages waiting and nothing applied for stallAfter it is not, and says why.
func TestHealthReportsStall(t *testing.T) {
	s, _ := startHubCfg(t, Config{DataDir: t.TempDir()})
	h := s.Health(context.Background())
	if !h.OK || h.Lag != 0 || h.Consumer != DefaultConsumer {
		t.Errorf("idle hub: %+v", h)
	}
	nc := testkit.Connect(t, s.ClientURL())
	publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 1)})
	waitFor(t, "applied", func() bool { h = s.Health(context.Background()); return h.AppliedSeq >= 1 && h.LastApplyNS > 0 })
	s.ing.mu.Lock()
	s.ing.lastApply = s.cfg.Now().Add(-2 * stallAfter)
	s.ing.mu.Unlock()
	s.ing.mu.Lock()
	s.ing.pending = 5
	s.ing.mu.Unlock()
	if h := s.healthFromState(); h.OK || h.Error == "" {
		t.Errorf("stalled hub reported healthy: %+v", h)
	}
}
