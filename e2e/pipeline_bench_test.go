package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/proto"
)

// Pipeline benchmark shape: 8 ranks (socket connections, as 8 shims) of one host, each writing
// pipeRanksBatches batch lines of pipePer events (kv_cache_usage and forward_pass_timing
// alternating, the real columns).
const (
	pipeRanks   = 8
	pipeBatches = 800
	pipePer     = 64
)

// pipeBatchLine is one shim batch line for rank r (pid 2000+r) holding seq .. seq+n-1.
func pipeBatchLine(r int, seq uint64, n int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, `{"t":"batch","v":1,"pid":%d,"ident":{"role":"worker","dp":0,"pp":0,"tp":%d,"ep":-1,"rank":%d},"events":[`, 2000+r, r, r)
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

// procCPU is the user + system CPU time of process pid so far (all its threads), from
// /proc/<pid>/stat, in clock ticks of 10 ms.
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start at state (field 3).
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// pipeCSVLines counts the data rows of the session's two tables (whole lines only, headers off).
func pipeCSVLines(dir string) int {
	n := 0
	for _, table := range []string{"kv_cache_usage", "forward_pass_timing"} {
		b, err := os.ReadFile(filepath.Join(dir, table+".csv"))
		if err != nil {
			continue
		}
		if l := bytes.Count(b, []byte{'\n'}); l > 0 {
			n += l - 1
		}
	}
	return n
}

// BenchmarkPipeline measures the whole pipeline with the real binaries on loopback: Go clients
// write shim batch lines to `pmagent serve` over its Unix socket (and read its acknowledgements,
// as a shim does), the agent publishes to the JetStream of `pmhub serve` (its embedded
// nats-server), and the hub writes the session's CSV files. The clock runs from the first line
// written to the last row on disk; then every event is checked to be written exactly once with
// every cell as its line gave it (checkPipelineRows), or the benchmark fails. In the same run, a
// plain JetStream consumer (ordered, fetch, no processing) reads the same stream, for the ratio
// to plain consume.
// Metrics: events/s (end to end, wall), agent_events/cpu-s and hub+nats_events/cpu-s (each
// process's user + system CPU time), cpu_us/event (both together), two_core_events/s (2 cores /
// cpu_us/event: the rate two cores given to the two processes alone would carry),
// plain_consume_events/s, ratio_e2e_to_plain, events/msg, loadavg (the machine's, at the end).
// Run: scripts/benchmarks.sh pipeline (go test -run '^$' -bench '^BenchmarkPipeline$' -benchtime 1x ./e2e/).
func BenchmarkPipeline(b *testing.B) {
	for i := 0; i < b.N; i++ {
		runPipeline(b)
	}
}

func runPipeline(b *testing.B) {
	b.StopTimer()
	data := b.TempDir()
	h := startHub(b, data, freeAddr(b))
	sock := filepath.Join(b.TempDir(), "agent.sock")
	ag := agStart(b, nil, "serve", "--socket", sock, "--nats", h.url, "--host", "pipe-host", "--spool-dir", b.TempDir(), "--gpu-interval", "0")
	deadline := time.Now().Add(time.Minute)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("agent socket did not appear")
		}
		time.Sleep(20 * time.Millisecond)
	}
	const session = "pipe"
	lines := make([][][]byte, pipeRanks)
	conns := make([]net.Conn, pipeRanks)
	for r := range lines {
		for i := 0; i < pipeBatches; i++ {
			lines[r] = append(lines[r], pipeBatchLine(r, uint64(i*pipePer+1), pipePer))
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		// A shim reads what the agent sends back (acknowledgements); so do these clients, or the
		// socket's buffer fills and the agent's replies wait on it.
		go func() { _, _ = io.Copy(io.Discard, c) }()
		fmt.Fprintf(c, `{"t":"hello","v":1,"session":%q,"pid":%d,"role":"worker","dp":0,"pp":0,"tp":%d,"ep":-1,"rank":%d}`+"\n", session, 2000+r, r, r)
		conns[r] = c
	}
	total := pipeRanks * pipeBatches * pipePer
	dir := hub.SessionDir(data, session)

	agCPU0, hubCPU0 := procCPU(b, ag.cmd.Process.Pid), procCPU(b, h.cmd.Process.Pid)
	b.StartTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for r, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := bufio.NewWriterSize(c, 1<<16)
			for _, l := range lines[r] {
				w.Write(l)
			}
			w.Flush()
		}()
	}
	wg.Wait()
	deadline = time.Now().Add(10 * time.Minute)
	for pipeCSVLines(dir) < total {
		if time.Now().After(deadline) {
			b.Fatalf("rows %d of %d after 10 minutes", pipeCSVLines(dir), total)
		}
		time.Sleep(5 * time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	agCPU, hubCPU := procCPU(b, ag.cmd.Process.Pid)-agCPU0, procCPU(b, h.cmd.Process.Pid)-hubCPU0

	// Exactly once, every event, every cell as the shim line gave it.
	checkPipelineRows(b, dir, session)
	b.ReportMetric(float64(total)/el.Seconds(), "events/s")
	// CPU time per process: robust on a shared machine where wall time is mostly waiting.
	b.ReportMetric(float64(total)/agCPU.Seconds(), "agent_events/cpu-s")
	b.ReportMetric(float64(total)/hubCPU.Seconds(), "hub+nats_events/cpu-s")
	perEvent := (agCPU + hubCPU).Seconds() / float64(total)
	b.ReportMetric(perEvent*1e6, "cpu_us/event")
	// What two cores given to the two processes alone would carry at this CPU cost per event.
	b.ReportMetric(2/perEvent, "two_core_events/s")
	b.ReportMetric(loadAverage(b), "loadavg")

	// Plain JetStream consume of the same messages, same server, same run.
	nc, err := nats.Connect(h.url)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	cons, err := js.OrderedConsumer(ctx, proto.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: []string{proto.EventPrefix + ".>"}})
	if err != nil {
		b.Fatal(err)
	}
	// The stream holds every batch already: fetch without waiting until every event message
	// (NumPending when the consumer was made) arrived; the clock stops at the last one.
	info, err := cons.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	want := int(info.NumPending)
	var msgs int
	pstart := time.Now()
	plast := pstart
	for msgs < want {
		if time.Since(pstart) > time.Minute {
			b.Fatalf("plain consumer read %d of %d messages in a minute", msgs, want)
		}
		batch, err := cons.FetchNoWait(512)
		if err != nil {
			b.Fatal(err)
		}
		for m := range batch.Messages() {
			msgs++
			_ = m.Data()
		}
		plast = time.Now()
	}
	pel := plast.Sub(pstart)
	if msgs == 0 {
		b.Fatal("plain consumer read no messages")
	}
	plain := float64(total) / pel.Seconds()
	b.ReportMetric(plain, "plain_consume_events/s")
	b.ReportMetric(float64(total)/el.Seconds()/plain, "ratio_e2e_to_plain")
	b.ReportMetric(float64(total)/float64(msgs), "events/msg")
}

// pipeExpected is what each table's own columns hold in the benchmark's lines (others empty).
var pipeExpected = map[string]map[string]string{
	"kv_cache_usage":      {"usage": "0.5", "free_blocks": "12", "total_blocks": "1024"},
	"forward_pass_timing": {"cpu_ms": "1.25", "tokens": "512", "runtime_mode": "FULL", "gpu_status": "pending"},
}

// checkPipelineRows fails the benchmark unless every event of every rank is in the session's
// CSV exactly once, in the table of its kind, with every cell as its line gave it: the common
// columns (session, host, pid, role, ranks, seq, step, ts_ns), the table's own columns (absent
// ones empty) and ts_aligned_ns = ts_ns + the host's clock offset (under a second here).
func checkPipelineRows(b *testing.B, dir, session string) {
	seen := make(map[[2]int]int, pipeRanks*pipeBatches*pipePer)
	for table, cols := range pipeExpected {
		raw, err := os.ReadFile(filepath.Join(dir, table+".csv"))
		if err != nil {
			b.Fatal(err)
		}
		recs, err := csv.NewReader(bytes.NewReader(raw)).ReadAll()
		if err != nil {
			b.Fatalf("%s: %v", table, err)
		}
		want, _ := proto.Default().Table(table)
		hdr := append(want.Header(), hub.AlignedColumn)
		if strings.Join(recs[0], ",") != strings.Join(hdr, ",") {
			b.Fatalf("%s header %v, want %v", table, recs[0], hdr)
		}
		for _, rec := range recs[1:] {
			var pid, seq int
			fmt.Sscan(rec[2], &pid)
			fmt.Sscan(rec[8], &seq)
			r := pid - 2000
			if (seq%2 == 0) != (table == "kv_cache_usage") {
				b.Fatalf("%s: event seq %d of the other kind: %v", table, seq, rec)
			}
			exp := []string{session, "pipe-host", strconv.Itoa(pid), "worker", "0", "0", strconv.Itoa(r), "-1",
				strconv.Itoa(seq), strconv.Itoa(seq), "1700000000000000000"}
			for _, c := range want.Columns {
				exp = append(exp, cols[c.Name])
			}
			got := rec[:len(rec)-1]
			if r < 0 || r >= pipeRanks || strings.Join(got, ",") != strings.Join(exp, ",") {
				b.Fatalf("%s row %v, want %v", table, got, exp)
			}
			aligned, err := strconv.ParseInt(rec[len(rec)-1], 10, 64)
			if off := aligned - 1700000000000000000; err != nil || off < -1e9 || off > 1e9 {
				b.Fatalf("%s row %v: ts_aligned_ns %q is not ts_ns + a clock offset under a second", table, rec, rec[len(rec)-1])
			}
			seen[[2]int{pid, seq}]++
		}
	}
	for r := 0; r < pipeRanks; r++ {
		for s := 1; s <= pipeBatches*pipePer; s++ {
			if n := seen[[2]int{2000 + r, s}]; n != 1 {
				b.Fatalf("event pid %d seq %d written %d times, want 1", 2000+r, s, n)
			}
		}
	}
	if len(seen) != pipeRanks*pipeBatches*pipePer {
		b.Fatalf("%d distinct events written, want %d", len(seen), pipeRanks*pipeBatches*pipePer)
	}
}

// loadAverage is the machine's 1-minute load average (/proc/loadavg): how many runnable
// processes shared its cores during the run.
func loadAverage(b *testing.B) float64 {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		b.Fatal(err)
	}
	var l float64
	fmt.Sscan(string(raw), &l)
	return l
}
