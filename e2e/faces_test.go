package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto/pmpb"
)

// TestTailReadsPreemptionWhileSimulatorPaused: the simulator stops right after its first
// preemption and waits for a file; the test creates that file only once `pmhub tail --kind
// preemption --json` has shown the preemption, so the event must have travelled shim → agent →
// NATS → tail live. A plain nats.go subscriber decodes the same events with only the generated
// .proto types.
func TestTailReadsPreemptionWhileSimulatorPaused(t *testing.T) {
	data := t.TempDir()
	h := startHub(t, data, freeAddr(t))

	// Plain NATS client: subscribe to the documented subject, decode with the .proto alone.
	nc, err := nats.Connect(h.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	plain := make(chan *nats.Msg, 1<<16)
	if _, err := nc.ChanSubscribe("pm.v1.ev.>", plain); err != nil {
		t.Fatal(err)
	}

	tail := exec.Command(bin(t, "pmhub"), "tail", "--nats", h.url, "--kind", "preemption", "--json")
	stdout, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := tail.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if tail.ProcessState == nil {
			tail.Process.Kill()
			tail.Wait()
		}
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "subscribed to") {
				close(ready)
			}
		}
	}()
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("pmhub tail did not subscribe")
	}

	pause := filepath.Join(t.TempDir(), "continue")
	py, env, _ := agSim(t, "PMSIM_PAUSE_FILE="+pause)
	args := append([]string{"run", "--nats", h.url, "--host", "tail-host", "--session", "tail-s", "--spool-dir", t.TempDir()}, agSimArgs(py)...)
	p := agStart(t, env, args...)

	var ev struct {
		Session, Host, Role, Kind, Table string
		Cols                             map[string]any
	}
	select {
	case line, ok := <-lines:
		if !ok {
			t.Fatal("pmhub tail ended before any event")
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("tail --json line %q: %v", line, err)
		}
	case err := <-p.done:
		p.done <- err
		t.Fatalf("the simulator ended before tail showed a preemption: %v\n%s", err, p.output())
	case <-time.After(2 * time.Minute):
		t.Fatalf("no preemption from tail within 2 minutes\n%s", p.output())
	}
	if ev.Kind != "preemption" || ev.Table != "preemption_events" || ev.Session != "tail-s" || ev.Host != "tail-host" || ev.Role != "engine_core" {
		t.Fatalf("tail event %+v, want a preemption_events row of engine_core in tail-s on tail-host", ev)
	}
	if _, ok := ev.Cols["request_id"]; !ok {
		t.Fatalf("preemption without request_id: %v", ev.Cols)
	}
	// The simulator must still be waiting: it wrote its marker and has not finished.
	if _, err := os.Stat(pause + ".waiting"); err != nil {
		t.Fatalf("simulator is not paused at its first preemption: %v", err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		t.Fatalf("simulator finished before the pause file existed: %v", err)
	default:
	}
	if err := os.WriteFile(pause, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 4*time.Minute); err != nil {
		t.Fatalf("pmagent run: %v\n%s", err, p.output())
	}

	kinds := map[string]int{}
	for n := len(plain); n > 0; n-- {
		m := <-plain
		var b pmpb.EventBatch
		if err := gproto.Unmarshal(m.Data, &b); err != nil {
			t.Fatalf("plain decode of %s: %v", m.Subject, err)
		}
		for _, e := range b.Events {
			// Kinds appear in subjects as written (only session and host are escaped).
			if !strings.HasSuffix(m.Subject, "."+e.Kind) {
				t.Fatalf("event of kind %s on subject %s", e.Kind, m.Subject)
			}
			kinds[e.Kind]++
		}
	}
	for _, k := range []string{"preemption", "kv_cache", "cuda_graph", "forward_pass"} {
		if kinds[k] == 0 {
			t.Errorf("plain subscriber saw no %s events (saw %v)", k, kinds)
		}
	}

	// Ctrl-C ends tail cleanly: exit status 0.
	if err := tail.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for range lines { // drain what it still printed until its stdout closes
	}
	if err := tail.Wait(); err != nil {
		t.Fatalf("pmhub tail after Ctrl-C: %v", err)
	}
}

// TestMetricsPerRankDuringRun scrapes the hub's /metrics while a run is held at its first
// preemption and finds per-rank series for every worker and the engine.
func TestMetricsPerRankDuringRun(t *testing.T) {
	httpAddr := freeAddr(t)
	h := startHub(t, t.TempDir(), freeAddr(t), "--http", httpAddr)
	pause := filepath.Join(t.TempDir(), "continue")
	py, env, _ := agSim(t, "PMSIM_PAUSE_FILE="+pause)
	args := append([]string{"run", "--nats", h.url, "--host", "metrics-host", "--session", "metrics-s", "--spool-dir", t.TempDir()}, agSimArgs(py)...)
	p := agStart(t, env, args...)
	defer os.WriteFile(pause, nil, 0o644)

	want := []string{`profilemate_kv_cache_usage_ratio{host="metrics-host",instance_key="",node_rank="",proc="eng0",rank="",session="metrics-s"}`,
		`profilemate_preemptions_total{host="metrics-host",instance_key="",node_rank="",proc="eng0",rank="",session="metrics-s"}`}
	for w := 0; w < agWorkers(); w++ {
		want = append(want, fmt.Sprintf(`profilemate_step_wall_seconds_count{host="metrics-host",instance_key="",node_rank="",proc="w%d",rank="%d",session="metrics-s"}`, w, w))
	}
	var body string
	deadline := time.Now().Add(2 * time.Minute)
	for {
		body = scrape(t, "http://"+httpAddr+"/metrics")
		missing := ""
		for _, s := range want {
			if !strings.Contains(body, s) {
				missing = s
				break
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no series %s in /metrics:\n%s\nagent:\n%s", missing, body, p.output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(body, "profilemate_hub_rows_total") || !strings.Contains(body, "profilemate_hub_consumer_pending_messages") {
		t.Fatalf("hub health series missing:\n%s", body)
	}
	if err := os.WriteFile(pause, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 4*time.Minute); err != nil {
		t.Fatalf("pmagent run: %v", err)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDemo runs `pmhub demo` as the README does (pmagent beside pmhub, python3 on PATH) and checks
// that its summary shows one instance over both hosts (API server, EngineCore and ranks 0-3 on
// hostA, ranks 4-7 on hostB) and that the session's files are where it says.
func TestDemo(t *testing.T) {
	bin(t, "pmagent")
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("no python3 on PATH")
	}
	data := t.TempDir()
	out, err := exec.Command(bin(t, "pmhub"), "demo", "--dir", data).CombinedOutput()
	if err != nil {
		t.Fatalf("pmhub demo: %v\n%s", err, out)
	}
	text := string(out)
	for i, want := range []string{"host hostA: api0 eng0 w0 w1 w2 w3", "host hostB: w4 w5 w6 w7"} {
		if !strings.Contains(text, want) {
			t.Errorf("summary lacks %q", want)
		}
		host := []string{"hostA", "hostB"}[i]
		for w := 4 * i; w < 4*i+4; w++ {
			if !strings.Contains(text, fmt.Sprintf("%s  w%d ", host, w)) {
				t.Errorf("no step time of %s w%d", host, w)
			}
		}
	}
	for _, want := range []string{"rank grid: TP 8 x PP 1 x DP 1 = 8 ranks (sizes from the command line)",
		"hostA (node 0): w0(tp0 pp0 dp0) w1(tp1 pp0 dp0) w2(tp2 pp0 dp0) w3(tp3 pp0 dp0)",
		"hostB (node 1): w4(tp4 pp0 dp0) w5(tp5 pp0 dp0) w6(tp6 pp0 dp0) w7(tp7 pp0 dp0)",
		// each host's part of the one instance (docs/multinode.md)
		"(4 workers: ranks 0-3 of TP 8 x PP 1 x DP 1)", "(4 workers: ranks 4-7 of TP 8 x PP 1 x DP 1)"} {
		if !strings.Contains(text, want) {
			t.Errorf("summary lacks the rank grid line %q", want)
		}
	}
	// The one DP replica spans both hosts: its per-DP findings come once, naming both.
	if strings.Contains(text, "] hostB dp 0") || !strings.Contains(text, "] hostA+hostB dp 0 ") {
		t.Errorf("per-DP findings not once for the replica spanning hostA and hostB")
	}
	if strings.Contains(text, "never joined") {
		t.Errorf("a rank of the demo never joined")
	}
	if strings.Contains(text, "hostB/eng") {
		t.Errorf("an EngineCore on hostB: the demo's instance has one, on hostA")
	}
	_, dir, ok := strings.Cut(text, "session files: ")
	if !ok {
		t.Fatalf("demo did not say where the session's files are:\n%s", text)
	}
	dir, _, _ = strings.Cut(dir, "\n")
	// The four in-tree profiler plugins were hot-added while the session ran: their derived tables
	// and findings are in its folder and the summary lists a finding of each.
	if !strings.Contains(text, "plugins: hot-added straggler, moe_balance, kv_pressure, cudagraph_coverage while session") {
		t.Errorf("demo did not hot-add the plugins")
	}
	for _, p := range []string{"(straggler)", "(moe_balance)", "(kv_pressure)", "(cudagraph_coverage)"} {
		if !strings.Contains(text, p) {
			t.Errorf("no finding of %s in the summary", p)
		}
	}
	for _, f := range []string{"metadata.json", "forward_pass_timing.csv", "kv_cache_usage.csv", "cuda_graph_usage.csv",
		"findings.csv", "straggler_ranks.csv", "moe_balance.csv", "kv_pressure.csv", "cudagraph_coverage.csv"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("session file %s: %v", f, err)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", text)
	}
}
