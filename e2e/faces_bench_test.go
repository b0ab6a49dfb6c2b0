package e2e

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// BenchmarkEmitToTail measures how long an event takes from the moment the shim records it
// (its ts_ns) to the moment `pmhub tail` prints it, under the demo's load (simulated vLLM, 4
// workers on each of two hosts, shim → agent → NATS → tail), and the events/s tail sees. Run:
// go test -run '^$' -bench EmitToTail -benchtime 1x ./e2e/
func BenchmarkEmitToTail(b *testing.B) {
	for i := 0; i < b.N; i++ {
		runEmitToTail(b)
	}
}

// barrierSession is the session of the event runEmitToTail publishes last.
const barrierSession = "bench-barrier"

func runEmitToTail(b *testing.B) {
	h := startHub(b, b.TempDir(), freeAddr(b))
	tail := exec.Command(bin(b, "pmhub"), "tail", "--nats", h.url, "--json")
	stdout, _ := tail.StdoutPipe()
	stderr, _ := tail.StderrPipe()
	if err := tail.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { tail.Process.Kill(); tail.Wait() }()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "subscribed to") {
				close(ready)
			}
		}
	}()
	<-ready
	var lat []float64
	done := make(chan struct{})
	barrier := make(chan struct{}) // closed when tail printed the barrier event (after every other)
	var first, last time.Time
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			now := time.Now()
			var ev struct {
				Session string `json:"session"`
				TsNS    int64  `json:"ts_ns"`
			}
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Session == barrierSession {
				close(barrier)
				continue
			}
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.TsNS > 0 {
				if first.IsZero() {
					first = now
				}
				last = now
				lat = append(lat, float64(now.UnixNano()-ev.TsNS)/1e6)
			}
		}
	}()
	// Two agents on two host names into one session, as `pmhub demo` runs them.
	var procs []*agProc
	for _, host := range []string{"hostA", "hostB"} {
		py, env, _ := agSim(b, "PMSIM_STEP_WORK_MS=2")
		args := append([]string{"run", "--nats", h.url, "--host", host, "--session", "bench-s", "--spool-dir", b.TempDir()}, agSimArgs(py)...)
		procs = append(procs, agStart(b, env, args...))
	}
	for _, p := range procs {
		if err := p.wait(b, 4*time.Minute); err != nil {
			b.Fatalf("pmagent run: %v", err)
		}
	}
	// The agents' events were all acknowledged before they exited; one published now reaches the
	// tail after all of them (one server, one subscriber): once tail prints it, it printed them.
	nc, err := nats.Connect(h.url)
	if err != nil {
		b.Fatal(err)
	}
	subj, data, _ := encodeKVBatch(b, barrierSession, wireProc{Host: "barrier", PID: 1}, 1, 1)
	if err := nc.Publish(subj, data); err != nil {
		b.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	nc.Close()
	select {
	case <-barrier:
	case <-done:
		b.Fatal("tail ended before it printed the barrier event")
	case <-time.After(time.Minute):
		b.Fatal("tail did not print the barrier event within a minute")
	}
	tail.Process.Kill()
	<-done
	if len(lat) == 0 {
		b.Fatal("tail printed no events")
	}
	sort.Float64s(lat)
	q := func(p float64) float64 { return lat[int(p*float64(len(lat)-1))] }
	b.ReportMetric(q(0.5), "p50_ms")
	b.ReportMetric(q(0.99), "p99_ms")
	b.ReportMetric(float64(len(lat)), "events")
	if d := last.Sub(first).Seconds(); d > 0 {
		b.ReportMetric(float64(len(lat))/d, "events/s")
	}
}
