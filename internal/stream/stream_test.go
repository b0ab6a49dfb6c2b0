package stream

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/internal/testkit"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

func TestStreamConfigDefaultsAndOptions(t *testing.T) {
	c := Config()
	if c.Name != "PROFILEMATE" || c.Storage != jetstream.FileStorage || c.Duplicates <= 0 ||
		c.MaxBytes <= 0 || c.MaxAge <= 0 || c.Discard != jetstream.DiscardOld || len(c.Subjects) != 3 {
		t.Errorf("defaults: %+v", c)
	}
	c = Config(WithMemoryStorage(), WithMaxBytes(1<<20), WithMaxAge(time.Hour), WithMaxMsgs(10),
		WithMaxMsgSize(1024), WithDuplicates(time.Second), WithReplicas(3))
	if c.Storage != jetstream.MemoryStorage || c.MaxBytes != 1<<20 || c.MaxAge != time.Hour || c.MaxMsgs != 10 ||
		c.MaxMsgSize != 1024 || c.Duplicates != time.Second || c.Replicas != 3 {
		t.Errorf("options not applied: %+v", c)
	}
}

// TestStreamOnRealServer creates the stream on an embedded nats-server, publishes a converted
// fixture batch twice with its message id (stored once), and reads it back through a filter.
func TestStreamOnRealServer(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.CreateStream(ctx, Config(WithMaxBytes(64<<20)))
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}

	h := &proto.Hello{Session: "20261126_205500_a1b2c3", Host: "gpu.node.7", PID: 77, Role: proto.RoleEngineCore, DP: 1, Rank: -1}
	l, err := proto.DecodeLine([]byte(`{"t":"batch","v":1,"pid":77,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"step":1,"ts_ns":5,"cols":{"usage":0.25}},{"kind":"kv_cache","table":"kv_cache_evictions","seq":2,"step":1,"ts_ns":6,"cols":{"evictions":1}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	eb, err := proto.ToEventBatch(h.Process(), l.Batch)
	if err != nil {
		t.Fatal(err)
	}
	part := proto.BatchesByKind(eb)[0]
	body, err := gproto.Marshal(part)
	if err != nil {
		t.Fatal(err)
	}
	subj := proto.BatchSubject(part)
	for i := 0; i < 2; i++ {
		ack, err := js.Publish(ctx, subj, body, jetstream.WithMsgID(part.BatchId))
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if ack.Duplicate != (i == 1) {
			t.Errorf("publish %d: duplicate = %v", i, ack.Duplicate)
		}
	}
	// Another host's heartbeat and a lifecycle record land in the same stream.
	hb, _ := gproto.Marshal(proto.Stamp(&pmpb.Heartbeat{Host: h.Host}))
	if _, err := js.Publish(ctx, proto.HeartbeatSubject(h.Host), hb); err != nil {
		t.Fatal(err)
	}
	lc, _ := gproto.Marshal(proto.Stamp(&pmpb.Lifecycle{Process: part.Process, Record: &pmpb.Lifecycle_Hello_{Hello: &pmpb.Lifecycle_Hello{}}}))
	if _, err := js.Publish(ctx, proto.LifeSubject(h.Session, h.Host, "eng1"), lc); err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 3 {
		t.Errorf("stream holds %d messages, want 3 (one batch deduped)", info.State.Msgs)
	}

	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{proto.EventFilter(h.Session, h.Host, "", "")}})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	f, err := proto.ParseEventSubject(msg.Subject())
	if err != nil || f.Host != "gpu.node.7" || f.Proc != "eng1" || f.Kind != "kv_cache" {
		t.Fatalf("subject %s: %+v %v", msg.Subject(), f, err)
	}
	got, err := proto.DecodeEventBatch(msg.Data())
	if err != nil {
		t.Fatal(err)
	}
	if !gproto.Equal(got, part) || got.Events[0].Cols["usage"].GetD() != 0.25 {
		t.Fatalf("read back %v, sent %v", got, part)
	}
}
