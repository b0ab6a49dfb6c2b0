package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/profilemate/profilemate/internal/testkit"
	"github.com/profilemate/profilemate/testbed"
)

// agStatus asks a running agent for its status over its socket.
func agStatus(t *testing.T, socket string) map[string]any {
	t.Helper()
	c, err := net.DialTimeout("unix", socket, 2*time.Second)
	if err != nil {
		return nil
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, `{"t":"admin","v":1,"op":"status"}`)
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return nil
	}
	var st map[string]any
	if err := json.Unmarshal(line, &st); err != nil {
		t.Fatalf("status %q: %v", line, err)
	}
	return st
}

func agNum(st map[string]any, path ...string) float64 {
	var v any = st
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return 0
		}
		v = m[p]
	}
	f, _ := v.(float64)
	return f
}

// agSim prepares the vLLM-shaped tree and returns the interpreter, the environment that puts
// the simulator (4 workers) on PYTHONPATH, and the ground truth path.
func agSim(t testing.TB, extra ...string) (py string, env []string, truth string) {
	t.Helper()
	pys := testkit.Interpreters(t)
	if len(pys) == 0 {
		t.Skip("no Python interpreter")
	}
	py = pys[len(pys)-1].Path
	dir := t.TempDir()
	tb := filepath.Join(dir, "testbed")
	if err := testbed.Unpack(tb); err != nil {
		t.Fatal(err)
	}
	truth = filepath.Join(dir, "truth.json")
	env = append([]string{
		"PYTHONPATH=" + filepath.Join(tb, "eras", "v0_16_0") + string(os.PathListSeparator) + tb,
		"PMSIM_TP=" + fmt.Sprint(agWorkers()), "PMSIM_GROUND_TRUTH=" + truth, "PMSIM_STEP_WORK_MS=1",
		"PROFILEMATE_CACHE=" + filepath.Join(dir, "cache"),
		"PROFILEMATE_OUTPUT_DIR=" + filepath.Join(dir, "standalone"),
	}, extra...)
	return py, env, truth
}

// agWorkers is the simulated tensor-parallel size: 4, or PM_E2E_WORKERS to narrow down a failure.
func agWorkers() int {
	var n int
	if _, err := fmt.Sscan(os.Getenv("PM_E2E_WORKERS"), &n); err == nil && n > 0 {
		return n
	}
	return 4
}

type agTruth struct {
	Processes []struct {
		Role string `json:"role"`
		Rank int    `json:"rank"`
		PID  int64  `json:"pid"`
		// ExpertCountsByStep: per runner step (entry s-1 for the shim's step s), the routed rows'
		// [layer, expert, count] (padding rows included, as the device counter sees them).
		ExpertCountsByStep [][][3]int `json:"expert_counts_by_step"`
	} `json:"processes"`
}

func agReadTruth(t *testing.T, path string) agTruth {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("ground truth: %v", err)
	}
	var tr agTruth
	if err := json.Unmarshal(b, &tr); err != nil {
		t.Fatal(err)
	}
	return tr
}

// checkComplete checks the stream against the shims' own accounts and the simulator's ground
// truth: every process the simulator ran reported, with its role and rank, and every event a
// shim says it emitted (seq 1..last_seq of its bye, no drops) arrived exactly once, in order.
func checkComplete(t *testing.T, s *agStream, truthPath string) {
	t.Helper()
	per := s.checkExactlyOnceInOrder(t)
	byes := s.byes()
	tr := agReadTruth(t, truthPath)
	workers := map[int]bool{}
	for _, p := range tr.Processes {
		if p.Role == "worker" {
			workers[p.Rank] = true
		}
	}
	// With one GPU vLLM runs the model inside EngineCore: there is no worker process.
	if agWorkers() > 1 && len(workers) != agWorkers() {
		t.Errorf("ground truth has workers %v, want %d", workers, agWorkers())
	}
	procs := map[int64]bool{}
	for _, b := range s.batches {
		p := b.GetProcess()
		procs[p.Pid] = true
		for _, tp := range tr.Processes {
			if tp.PID != p.Pid {
				continue
			}
			if p.Role != tp.Role || (tp.Role == "worker" && int(p.Rank) != tp.Rank) {
				t.Fatalf("pid %d published as %s rank %d, ground truth %s rank %d", p.Pid, p.Role, p.Rank, tp.Role, tp.Rank)
			}
		}
	}
	for _, tp := range tr.Processes {
		if tp.Role == "worker" && !procs[tp.PID] {
			t.Errorf("worker rank %d (pid %d) published nothing", tp.Rank, tp.PID)
		}
	}
	for pid, seqs := range per {
		bye, ok := byes[pid]
		if !ok {
			t.Errorf("pid %d: no clean bye on the stream", pid)
			continue
		}
		if bye.Dropped != 0 {
			t.Errorf("pid %d: shim dropped %d events", pid, bye.Dropped)
		}
		if uint64(len(seqs)) != bye.LastSeq || seqs[0] != 1 || seqs[len(seqs)-1] != bye.LastSeq {
			t.Errorf("pid %d: %d events (seq %d..%d), shim's bye says last_seq %d", pid, len(seqs), seqs[0], seqs[len(seqs)-1], bye.LastSeq)
		}
	}
}

func agSimArgs(py string) []string {
	return []string{"--", py, "-m", "vllm.entrypoints.openai.api_server", "--model", "pm-e2e-model"}
}

func TestAgentRunSimulator(t *testing.T) {
	ns := agStartNATS(t)
	ns.createStream()
	py, env, truth := agSim(t, "PMSIM_REQUESTS=16")
	args := append([]string{"run", "--nats", ns.url(), "--host", "e2e-host", "--session", "sim-a", "--spool-dir", t.TempDir()}, agSimArgs(py)...)
	p := agStart(t, env, args...)
	if err := p.wait(t, 4*time.Minute); err != nil {
		t.Fatalf("pmagent run: %v", err)
	}
	s := ns.read()
	if s.events() == 0 {
		t.Fatal("no events on the stream")
	}
	checkComplete(t, s, truth)
	for _, b := range s.batches {
		if b.Process.Session != "sim-a" || b.Process.Host != "e2e-host" {
			t.Fatalf("batch of session %q host %q, want sim-a on e2e-host", b.Process.Session, b.Process.Host)
		}
	}
	if !strings.Contains(p.output(), "all events delivered") {
		t.Errorf("pmagent did not report a full flush")
	}
}

func TestAgentNATSOutage(t *testing.T) {
	ns := agStartNATS(t)
	ns.createStream()
	py, env, truth := agSim(t, "PMSIM_REQUESTS=64", "PMSIM_STEP_WORK_MS=20")
	sock := filepath.Join(agShortDir(t), "a.sock")
	args := append([]string{"run", "--nats", ns.url(), "--host", "e2e-host", "--socket", sock, "--spool-dir", t.TempDir(),
		"--queue-max-bytes", "65536", "--flush-timeout", "2m"}, agSimArgs(py)...)
	p := agStart(t, env, args...)
	agWaitFor(t, 2*time.Minute, "first events on the stream", func() bool { return ns.read().events() > 0 })
	ns.stop()
	var before float64
	agWaitFor(t, time.Minute, "the agent to notice the outage", func() bool {
		st := agStatus(t, sock)
		before = agNum(st, "events")
		return st != nil && st["nats"].(map[string]any)["connected"] == false
	})
	// Keep NATS down until the agent ingested a good share more (or the command ended).
	agWaitFor(t, 2*time.Minute, "events ingested during the outage", func() bool {
		st := agStatus(t, sock)
		return st == nil || agNum(st, "events") >= before+200
	})
	ns.start()
	if err := p.wait(t, 4*time.Minute); err != nil {
		t.Fatalf("pmagent run: %v", err)
	}
	checkComplete(t, ns.read(), truth)
}

func TestAgentBeforeStream(t *testing.T) {
	ns := agStartNATS(t)
	py, env, truth := agSim(t, "PMSIM_REQUESTS=16", "PMSIM_STEP_WORK_MS=3")
	sock := filepath.Join(agShortDir(t), "a.sock")
	args := append([]string{"run", "--nats", ns.url(), "--host", "e2e-host", "--socket", sock, "--spool-dir", t.TempDir(),
		"--flush-timeout", "2m"}, agSimArgs(py)...)
	p := agStart(t, env, args...)
	agWaitFor(t, 2*time.Minute, "events queued while the stream is missing", func() bool {
		st := agStatus(t, sock)
		return st == nil || (agNum(st, "events") > 0 && agNum(st, "spool", "mem_batches")+agNum(st, "spool", "batches") > 0)
	})
	ns.createStream()
	if err := p.wait(t, 4*time.Minute); err != nil {
		t.Fatalf("pmagent run: %v", err)
	}
	checkComplete(t, ns.read(), truth)
}

func TestAgentBadInputOnSocket(t *testing.T) {
	ns := agStartNATS(t)
	ns.createStream()
	sock := filepath.Join(agShortDir(t), "a.sock")
	p := agStart(t, nil, "serve", "--socket", sock, "--nats", ns.url(), "--host", "e2e-host", "--spool-dir", t.TempDir())
	agWaitFor(t, time.Minute, "the agent's socket", func() bool { return agStatus(t, sock) != nil })

	good, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	fmt.Fprintln(good, `{"t":"hello","v":1,"session":"bad-input","pid":4242,"ppid":1,"role":"worker","dp":0,"pp":0,"tp":1,"ep":-1,"rank":1}`)
	const batches, per = 200, 10
	sent := make(chan error, 1)
	go func() {
		w := bufio.NewWriter(good)
		seq := 0
		for i := 0; i < batches; i++ {
			var evs []string
			for j := 0; j < per; j++ {
				seq++
				evs = append(evs, fmt.Sprintf(`{"kind":"kv_cache","table":"kv_cache_usage","seq":%d,"step":%d,"ts_ns":%d,"cols":{"usage":0.5,"free_blocks":%d}}`, seq, seq, time.Now().UnixNano(), seq))
			}
			fmt.Fprintf(w, `{"t":"batch","v":1,"pid":4242,"events":[%s],"dropped":0}`+"\n", strings.Join(evs, ","))
			if i%20 == 0 {
				w.Flush()
			}
		}
		fmt.Fprintf(w, `{"t":"bye","v":1,"pid":4242,"dropped":0,"last_seq":%d,"end_ns":0}`+"\n", seq)
		sent <- w.Flush()
	}()

	bad := []string{
		"garbage that is not JSON\n",
		`{"t":"batch","v":1,"pid":77,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"cols":{"usage":` + "\n", // truncated
		`{"t":"batch","v":9,"pid":77,"events":[]}` + "\n",                                                                   // wrong version
		`{"t":"batch","v":1,"pid":77,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"cols":{"usage":"high"}}]}` + "\n",
		`{"t":"batch","v":1,"pid":77,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"cols":{"usage":"` + strings.Repeat("z", 10<<20) + `"}}]}` + "\n",
	}
	for _, l := range bad {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(l)); err != nil {
			t.Fatalf("write bad line: %v", err)
		}
		c.Close()
	}
	// One more connection sends a final line without its newline: a truncated batch.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte(`{"t":"batch","v":1,"pid":78,"events":[`))
	c.Close()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	agWaitFor(t, time.Minute, "every good event", func() bool { return ns.read().events() >= batches*per })
	s := ns.read()
	per4242 := s.checkExactlyOnceInOrder(t)[4242]
	if len(per4242) != batches*per || len(s.checkExactlyOnceInOrder(t)) != 1 {
		t.Fatalf("stream holds %d events of the good process and processes %v, want %d of pid 4242 only", len(per4242), s.checkExactlyOnceInOrder(t), batches*per)
	}
	agWaitFor(t, time.Minute, "bad lines counted", func() bool { return agNum(agStatus(t, sock), "bad_lines") == float64(len(bad)+1) })
	if !strings.Contains(p.output(), "rejected socket line") {
		t.Errorf("no log line about rejected input")
	}
}
