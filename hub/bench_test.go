package hub

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/testkit"
	"github.com/profilemate/profilemate/proto"
)

const (
	benchBatches = 2000
	benchEvents  = 100 // events per batch, about what the agent packs per flush
)

// benchPayloads builds the pre-filled stream's messages: 8 processes on 2 hosts.
func benchPayloads(b *testing.B, enc func(*Batch) []byte) ([]string, [][]byte) {
	subs := make([]string, 0, benchBatches)
	pays := make([][]byte, 0, benchBatches)
	next := map[int]uint64{}
	for i := 0; i < benchBatches; i++ {
		p := i % 8
		host := fmt.Sprintf("host%d", p/4)
		bt := &Batch{Session: "BENCH", Host: host, PID: int64(1000 + p), Proc: fmt.Sprintf("w%d", p), Kind: "kv_cache",
			Ident: Ident{Role: "worker", TP: int64(p % 4), EP: -1, Rank: int64(p)}}
		for e := 0; e < benchEvents; e++ {
			next[p]++
			s := next[p]
			bt.Events = append(bt.Events, Event{Table: "kv_cache_usage", Seq: s, Step: int64(s), TsNS: 1_700_000_000_000_000_000 + int64(s)*1000, Cols: []string{"0.4375", "1234"}})
		}
		subs = append(subs, proto.EventSubject("BENCH", host, fmt.Sprintf("w%d", p), "kv_cache"))
		pays = append(pays, enc(bt))
	}
	return subs, pays
}

func benchServer(b *testing.B, dir string) (*server.Server, *nats.Conn, jetstream.JetStream) {
	opts := testkit.NATSOptions(dir)
	opts.MaxPayload = DefaultMaxMsgBytes
	ns, err := testkit.NewNATS(opts)
	if err != nil {
		b.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	return ns, nc, js
}

func prefill(b *testing.B, js jetstream.JetStream, subs []string, pays [][]byte) time.Duration {
	ctx := context.Background()
	cfg := streamConfig()
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	var futs []jetstream.PubAckFuture
	for i := range pays {
		f, err := js.PublishAsync(subs[i], pays[i])
		if err != nil {
			b.Fatal(err)
		}
		futs = append(futs, f)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		b.Fatal("publish did not complete")
	}
	for _, f := range futs {
		select {
		case err := <-f.Err():
			b.Fatal(err)
		default:
		}
	}
	return time.Since(start)
}

// BenchmarkPlainJetStream is the yardstick: publish the same messages, then fetch and ack them with
// a durable pull consumer doing nothing else.
func BenchmarkPlainJetStream(b *testing.B) {
	enc, _ := benchCodec()
	subs, pays := benchPayloads(b, enc)
	total := float64(benchBatches * benchEvents)
	var pubD, conD, conCPU time.Duration
	for i := 0; i < b.N; i++ {
		ns, nc, js := benchServer(b, b.TempDir())
		pubD += prefill(b, js, subs, pays)
		ctx := context.Background()
		cons, err := js.CreateOrUpdateConsumer(ctx, "PROFILEMATE", jetstream.ConsumerConfig{Durable: "plain", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 64 * DefaultFetch})
		if err != nil {
			b.Fatal(err)
		}
		start, cpu0 := time.Now(), processCPU(b)
		got := 0
		for got < benchBatches {
			batch, err := cons.FetchNoWait(DefaultFetch)
			if err != nil {
				b.Fatal(err)
			}
			for m := range batch.Messages() {
				_ = m.Ack()
				got++
			}
		}
		conD += time.Since(start)
		conCPU += processCPU(b) - cpu0
		nc.Close()
		ns.Shutdown()
	}
	b.ReportMetric(total*float64(b.N)/pubD.Seconds(), "pub_events/s")
	b.ReportMetric(total*float64(b.N)/conD.Seconds(), "consume_events/s")
	b.ReportMetric(total*float64(b.N)/conCPU.Seconds(), "consume_events/cpu-s")
}

// processCPU is this process's user + system CPU time so far (every thread: the benchmark, the
// hub or the plain consumer, and the nats-server they share the process with).
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkConsumeWrite measures the hub: from a pre-filled stream to rows written and synced.
func BenchmarkConsumeWrite(b *testing.B) {
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer slog.SetDefault(prev)
	enc, dec := benchCodec()
	subs, pays := benchPayloads(b, enc)
	total := int64(benchBatches * benchEvents)
	var d, cpu time.Duration
	for i := 0; i < b.N; i++ {
		ns, nc, js := benchServer(b, b.TempDir())
		prefill(b, js, subs, pays)
		h, err := New(Config{DataDir: b.TempDir(), NATSURL: ns.ClientURL(), Schema: benchSchema(), Decoder: dec, SessionIdle: time.Hour, SessionMaxBytes: -1})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if err := h.Start(ctx); err != nil {
			b.Fatal(err)
		}
		start, cpu0 := time.Now(), processCPU(b)
		done := make(chan error, 1)
		go func() { done <- h.Run(ctx) }()
		for deadline := time.Now().Add(5 * time.Minute); h.Counters().Rows < total; {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d rows after 5 minutes", h.Counters().Rows, total)
			}
			time.Sleep(time.Millisecond)
		}
		d += time.Since(start)
		cpu += processCPU(b) - cpu0
		cancel()
		<-done
		h.Close()
		nc.Close()
		ns.Shutdown()
	}
	b.ReportMetric(float64(total)*float64(b.N)/d.Seconds(), "events/s")
	b.ReportMetric(float64(total)*float64(b.N)/cpu.Seconds(), "events/cpu-s")
}
