package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/profilemate/profilemate/internal/testkit"
)

// benchBatchLine is one shim batch line of n kv_cache/forward_pass events starting at seq.

// benchBound is how long a benchmark waits for its condition before it fails (a stuck pipeline
// fails the run instead of hanging it).
const benchBound = 5 * time.Minute

func benchBatchLine(pid int, rank int, seq uint64, n int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, `{"t":"batch","v":1,"pid":%d,"ident":{"role":"worker","dp":0,"pp":0,"tp":%d,"ep":-1,"rank":%d},"events":[`, pid, rank, rank)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		s := seq + uint64(i)
		if s%2 == 0 {
			fmt.Fprintf(&b, `{"kind":"kv_cache","table":"kv_cache_usage","seq":%d,"step":%d,"ts_ns":1700000000000000000,"cols":{"usage":0.5,"free_blocks":12,"total_blocks":1024}}`, s, s)
		} else {
			fmt.Fprintf(&b, `{"kind":"forward_pass","table":"forward_pass_timing","seq":%d,"step":%d,"ts_ns":1700000000000000000,"cols":{"cpu_ms":1.25,"tokens":512,"runtime_mode":"FULL","gpu_status":"pending"}}`, s, s)
		}
	}
	b.WriteString(`],"dropped":0}` + "\n")
	return []byte(b.String())
}

// BenchmarkIngestPublish measures socket ingest through JetStream acknowledgements with 8
// simulated ranks writing 64-event batches; events/s is per process (GOMAXPROCS cores).
func BenchmarkIngestPublish(b *testing.B) {
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil))) // the clock's warnings, no hub here
	defer slog.SetDefault(prev)
	for _, ranks := range []int{1, 8} {
		b.Run(fmt.Sprintf("ranks=%d", ranks), func(b *testing.B) {
			ns := startNATSB(b)
			createStreamB(b, ns)
			dir, _ := os.MkdirTemp("", "pmab")
			defer os.RemoveAll(dir)
			a, err := New(Config{Host: "h1", Socket: dir + "/a.sock", NATS: NATSConfig{URL: ns}, Logger: testLogger(nil)})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := a.Start(ctx); err != nil {
				b.Fatal(err)
			}
			const per = 64
			batches := b.N/per + 1
			conns := make([]net.Conn, ranks)
			for r := range conns {
				c, err := net.Dial("unix", a.Socket())
				if err != nil {
					b.Fatal(err)
				}
				// Like a shim, read the acknowledgements, or the socket's buffer fills and the
				// agent's replies wait on it.
				go func() { _, _ = io.Copy(io.Discard, c) }()
				fmt.Fprintf(c, `{"t":"hello","v":1,"session":"bench","pid":%d,"role":"worker","dp":0,"pp":0,"tp":%d,"ep":-1,"rank":%d}`+"\n", 1000+r, r, r)
				conns[r] = c
			}
			lines := make([][][]byte, ranks)
			for r := range lines {
				for i := 0; i < batches/ranks+1; i++ {
					lines[r] = append(lines[r], benchBatchLine(1000+r, r, uint64(i*per+1), per))
				}
			}
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for r, c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					w := bufio.NewWriter(c)
					for _, l := range lines[r] {
						w.Write(l)
					}
					w.Flush()
				}()
			}
			wg.Wait()
			total := int64(len(lines[0]) * per * ranks)
			for deadline := time.Now().Add(benchBound); a.Status().NATS.Published == 0 || a.q.pending() > 0 || a.Status().Events < total; {
				if time.Now().After(deadline) {
					b.Fatalf("not delivered within %s: %d of %d events, %d batches pending", benchBound, a.Status().Events, total, a.q.pending())
				}
				time.Sleep(time.Millisecond)
			}
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(total)/el.Seconds(), "events/s")
			b.ReportMetric(float64(total)/el.Seconds()/float64(runtime.GOMAXPROCS(0)), "events/s/core")
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.HeapInuse)/(1<<20), "heap-MiB")
			for _, c := range conns {
				c.Close()
			}
			_, _ = a.Shutdown(context.Background())
		})
	}
}

func startNATSB(b *testing.B) string {
	dir, _ := os.MkdirTemp("", "pmns")
	b.Cleanup(func() { os.RemoveAll(dir) })
	ns, err := testkit.NewNATS(testkit.NATSOptions(dir))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ns.Shutdown)
	return ns.ClientURL()
}

func createStreamB(b *testing.B, url string) {
	if err := createStreamURL(url); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRSS8Ranks streams 8 simulated ranks through an agent publishing to a JetStream server
// in another process and reports this process's resident memory (agent, clients, test harness).
func BenchmarkRSS8Ranks(b *testing.B) {
	store, _ := os.MkdirTemp("", "pmns")
	defer os.RemoveAll(store)
	srv := exec.Command(os.Args[0])
	srv.Env = append(os.Environ(), benchNATSEnv+"="+store)
	out, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = srv.Process.Signal(os.Interrupt); _ = srv.Wait() }()
	url, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	url = strings.TrimSpace(url)
	createStreamB(b, url)
	dir, _ := os.MkdirTemp("", "pmab")
	defer os.RemoveAll(dir)
	a, err := New(Config{Host: "h1", Socket: dir + "/a.sock", NATS: NATSConfig{URL: url}, SpoolDir: dir + "/spool", Logger: testLogger(nil)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.Start(ctx); err != nil {
		b.Fatal(err)
	}
	const ranks, per = 8, 64
	perRank := b.N/(ranks*per) + 1
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for r := 0; r < ranks; r++ {
		c, err := net.Dial("unix", a.Socket())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		go func() { _, _ = io.Copy(io.Discard, c) }()
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := bufio.NewWriter(c)
			fmt.Fprintf(w, `{"t":"hello","v":1,"session":"rss","pid":%d,"role":"worker","dp":0,"pp":0,"tp":%d,"ep":-1,"rank":%d}`+"\n", 2000+r, r, r)
			for i := 0; i < perRank; i++ {
				w.Write(benchBatchLine(2000+r, r, uint64(i*per+1), per))
			}
			w.Flush()
		}()
	}
	wg.Wait()
	total := int64(perRank * per * ranks)
	for deadline := time.Now().Add(benchBound); a.Status().Events < total || a.q.pending() > 0; {
		if time.Now().After(deadline) {
			b.Fatalf("not delivered within %s: %d of %d events, %d batches pending", benchBound, a.Status().Events, total, a.q.pending())
		}
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(total)/el.Seconds(), "events/s")
	b.ReportMetric(vmRSSMiB(), "RSS-MiB")
	_, _ = a.Shutdown(context.Background())
}

// vmRSSMiB reads this process's resident set size.
func vmRSSMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			var kb float64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(l, "VmRSS:"), "kB")), &kb)
			return kb / 1024
		}
	}
	return 0
}
