package hub

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/profilemate/profilemate/proto"
)

// benchSharedSessions is how many sessions the shared benchmark's stream holds: enough that
// rendezvous hashing gives every one of 3 hubs some.
const benchSharedSessions = 12

// BenchmarkSharedHubs measures 1, 2 and 3 hubs in shared mode (cluster.go) on one stream, every
// hub in this process against one nats-server: events/s from a pre-filled stream of
// benchSharedSessions sessions (the BenchmarkConsumeWrite batches, spread over them) to every row
// written, claims and per-session consumers included.
func BenchmarkSharedHubs(b *testing.B) {
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer slog.SetDefault(prev)
	enc, dec := benchCodec()
	subs, pays := benchPayloads(b, enc)
	// The same batches, session i%benchSharedSessions each (seqs stay dense per process and session).
	for i := range subs {
		s := fmt.Sprintf("BENCH%02d", i%benchSharedSessions)
		subs[i] = strings.Replace(subs[i], ".BENCH.", "."+proto.Escape(s)+".", 1)
	}
	pays = repayload(pays, subs, enc)
	total := int64(benchBatches * benchEvents)
	for _, hubs := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("hubs=%d", hubs), func(b *testing.B) {
			var d time.Duration
			for i := 0; i < b.N; i++ {
				ns, nc, js := benchServer(b, b.TempDir())
				prefill(b, js, subs, pays)
				var servers []*Server
				ctx, cancel := context.WithCancel(context.Background())
				var dones []chan error
				for h := 0; h < hubs; h++ {
					s, err := New(Config{DataDir: b.TempDir(), NATSURL: ns.ClientURL(), Schema: benchSchema(), Decoder: dec,
						SessionIdle: time.Hour, SessionMaxBytes: -1, Shared: true, HubID: fmt.Sprintf("bench%d", h)})
					if err != nil {
						b.Fatal(err)
					}
					if err := s.Start(ctx); err != nil {
						b.Fatal(err)
					}
					servers = append(servers, s)
				}
				start := time.Now()
				for _, s := range servers {
					done := make(chan error, 1)
					go func(s *Server) { done <- s.Run(ctx) }(s)
					dones = append(dones, done)
				}
				deadline := time.Now().Add(5 * time.Minute)
				for {
					var rows int64
					for _, s := range servers {
						rows += s.Counters().Rows
					}
					if rows >= total {
						break
					}
					if time.Now().After(deadline) {
						b.Fatalf("%d of %d rows after 5 minutes", rows, total)
					}
					time.Sleep(time.Millisecond)
				}
				d += time.Since(start)
				cancel()
				for _, done := range dones {
					<-done
				}
				for _, s := range servers {
					s.Close()
				}
				nc.Close()
				ns.Shutdown()
			}
			b.ReportMetric(float64(total)*float64(b.N)/d.Seconds(), "events/s")
		})
	}
}

// repayload re-encodes each batch with the session its subject names (the decoder checks the
// body against the subject).
func repayload(pays [][]byte, subs []string, enc func(*Batch) []byte) [][]byte {
	ws, _ := newWireSchema()
	out := make([][]byte, len(pays))
	for i, p := range pays {
		v, err := ws.Decode(strings.Replace(subs[i], "."+strings.Split(subs[i], ".")[3]+".", ".BENCH.", 1), p)
		if err != nil {
			panic(err)
		}
		bt := v.(*Batch)
		bt.Session, _ = proto.Unescape(strings.Split(subs[i], ".")[3])
		out[i] = enc(bt)
	}
	return out
}
